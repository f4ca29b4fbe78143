"""The dataset registry: a dataset is its module (a class and one ``register_dataset`` call)
plus a preset YAML; the config, the feature cache and the trainer need nothing else."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from taggnn.data import registry
from taggnn.data.registry import dataset_info, feature_keys, list_datasets, register_dataset
from taggnn.engine.config import DATASETS, load_config
from taggnn.engine.data import build_dataset
from taggnn.engine.features import feature_settings
from taggnn.engine.trainer import train
from taggnn.errors import ConfigError

# ---------------------------------------------------------------- what a new dataset module holds


class Stripes(Dataset):
    """Clips of ``num_classes`` kinds: stripes that move ``label`` pixels per frame."""

    def __init__(self, split: str, *, num_classes: int, num_frames: int, size: int = 16, transform=None):
        self.classes = [f"speed {c}" for c in range(num_classes)]
        self.length = {"train": 8, "val": 4, "test": 4}[split]
        self.offset = {"train": 0, "val": 1000, "test": 2000}[split]
        self.num_frames, self.size, self.transform = num_frames, size, transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        label = index % len(self.classes)
        phase = (self.offset + index) * 3
        t = torch.arange(self.num_frames).view(-1, 1, 1)
        x = torch.arange(self.size).view(1, 1, -1)
        frames = (((x + phase + label * t) // 2) % 2 * 255).to(torch.uint8)  # (T, 1, W)
        clip = frames.expand(self.num_frames, self.size, self.size).unsqueeze(-1).repeat(1, 1, 1, 3)  # (T, H, W, 3)
        return (self.transform(clip) if self.transform else clip), label


def _stripes_problems(config):
    if not 2 <= config.data.num_classes <= 4:
        return [f"data.num_classes={config.data.num_classes} does not fit stripes: use 2 to 4"]
    return []


def _build_stripes(config, split, *, train, classes, transform):
    return Stripes(split, num_classes=config.data.num_classes, num_frames=config.data.num_frames,
                   transform=transform)


PRESET = """\
name: stripes_tiny
data:
  dataset: stripes
  num_classes: 2
  num_frames: 8
  crop_size: 16
  short_side: 16
  normalization: slowfast
  flip: false
model:
  backbone: r2plus1d_tiny
  num_heads: 4
  ffn_dim: 16
  num_layers: 1
train:
  epochs: 1
  batch_size: 8
  eval_batch_size: 8
  deterministic: true
"""


@pytest.fixture
def stripes():
    info = register_dataset("stripes", _build_stripes, check=_stripes_problems, splits=("train", "val", "test"),
                            feature_keys=("data.num_classes",), description="moving stripes (a test dataset)")
    try:
        yield info
    finally:
        registry._REGISTRY.pop("stripes", None)


@pytest.fixture
def preset(tmp_path):
    path = tmp_path / "stripes_tiny.yaml"
    path.write_text(PRESET)
    return str(path)


def test_a_registered_dataset_trains_through_the_trainer(stripes, preset, tmp_path):
    config = load_config(preset)
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["epochs_done"] == 1 and summary["steps"] == 1  # 8 clips, one batch
    assert (tmp_path / "run" / "best.pt").is_file()
    test_set = build_dataset(config, "test", train=False)
    assert isinstance(test_set, Stripes) and test_set.classes == ["speed 0", "speed 1"]
    assert test_set[0][0].shape == (3, 8, 16, 16)  # the config's eval transform was applied


def test_the_config_knows_a_registered_dataset(stripes, preset):
    assert "stripes" in DATASETS and "stripes" in list_datasets() and dataset_info("stripes") is stripes
    with pytest.raises(ConfigError, match="does not fit stripes: use 2 to 4"):
        load_config(preset, ["data.num_classes=9"])
    with pytest.raises(ConfigError, match=r"data.val_split='holdout' is not a split of stripes \(train, val, test\)"):
        load_config(preset, ["data.val_split=holdout"])


def test_without_its_module_the_dataset_is_unknown(preset):
    assert "stripes" not in DATASETS
    with pytest.raises(ConfigError, match=r"data.dataset='stripes' is not one of csv, finegym, folder, haa500, "
                                          r"synthgym"):
        load_config(preset)
    with pytest.raises(ConfigError, match="unknown dataset 'stripes'; choose one of"):
        dataset_info("stripes")


def test_feature_keys_come_from_the_registered_datasets(stripes, preset):
    keys = feature_keys()
    # the keys a features folder has always recorded, now declared by the datasets that read them
    assert set(keys) == {
        "data.dataset", "data.root", "data.train_csv", "data.val_csv", "data.test_csv", "data.csv_layout",
        "data.num_classes", "data.version", "data.holdout", "data.holdout_min_clips", "data.num_frames",
        "data.crop_size", "data.short_side", "data.transform_style", "data.normalization", "data.sampling",
        "data.synth_train", "data.synth_val", "data.synth_test", "data.synth_size", "data.synth_long_tail",
        "data.synth_task", "data.seed", "model.backbone", "model.weights", "model.bn_eps",
    }
    settings = feature_settings(load_config(preset))
    assert settings["data.dataset"] == "stripes" and settings["data.num_classes"] == 2
    register_dataset("stripes", _build_stripes, feature_keys=("data.decoder",))
    assert "data.decoder" in feature_keys()


def test_registration_is_checked():
    with pytest.raises(ValueError, match="letters, digits"):
        register_dataset("my data", _build_stripes)
    with pytest.raises(ValueError, match=r"data\.\* config keys, got 'train.seed'"):
        register_dataset("stripes2", _build_stripes, feature_keys=("train.seed",))
    assert "stripes2" not in list_datasets()


def test_feature_settings_accept_another_spelling_of_the_same_weights_file(tmp_path, monkeypatch):
    from taggnn.data.features import check_settings, feature_settings
    from taggnn.engine import load_config
    from taggnn.errors import ConfigError

    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "backbone.pt").write_bytes(b"weights")
    (tmp_path / "weights" / "other.pt").write_bytes(b"other weights")
    monkeypatch.chdir(tmp_path)
    recorded = feature_settings(load_config("synthgym_frozen", ["model.weights=weights/backbone.pt"]))
    same = load_config("synthgym_frozen", [f"model.weights={tmp_path / 'weights' / 'backbone.pt'}"])
    check_settings(recorded, same, tmp_path / "train.pt")  # relative vs absolute: one file
    other = load_config("synthgym_frozen", [f"model.weights={tmp_path / 'weights' / 'other.pt'}"])
    with pytest.raises(ConfigError, match="model.weights: 'weights/backbone.pt' \\(features\\) vs"):
        check_settings(recorded, other, tmp_path / "train.pt")
    missing = load_config("synthgym_frozen", ["model.weights=weights/gone.pt"])
    with pytest.raises(ConfigError, match="model.weights"):
        check_settings(recorded, missing, tmp_path / "train.pt")


def test_feature_settings_refuse_one_relative_path_naming_another_file(tmp_path, monkeypatch):
    from taggnn.data.features import check_settings, feature_settings, weights_file_setting
    from taggnn.engine import load_config
    from taggnn.errors import ConfigError

    for folder, content in (("made", b"weights"), ("elsewhere", b"other weights")):
        (tmp_path / folder / "weights").mkdir(parents=True)
        (tmp_path / folder / "weights" / "backbone.pt").write_bytes(content)
    monkeypatch.chdir(tmp_path / "made")
    made = load_config("synthgym_frozen", ["model.weights=weights/backbone.pt"])
    recorded = {**feature_settings(made), **weights_file_setting(made)}  # as taggnn features records them
    monkeypatch.chdir(tmp_path / "elsewhere")  # the same spelling names another file here
    with pytest.raises(ConfigError, match="model.weights: '.*made/weights/backbone.pt' \\(features\\) vs "
                                          "'.*elsewhere/weights/backbone.pt' \\(config\\)"):
        check_settings(recorded, load_config("synthgym_frozen", ["model.weights=weights/backbone.pt"]),
                       tmp_path / "train.pt")
    absolute = tmp_path / "made" / "weights" / "backbone.pt"
    check_settings(recorded, load_config("synthgym_frozen", [f"model.weights={absolute}"]), tmp_path / "train.pt")
    absolute.unlink()  # a recorded file gone (features moved to another machine): the spelling decides, as before
    check_settings(recorded, load_config("synthgym_frozen", ["model.weights=weights/backbone.pt"]),
                   tmp_path / "train.pt")
