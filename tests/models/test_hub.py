"""Sharing models: model.safetensors + config.json (+ model card), from_pretrained / save_pretrained /
push_to_hub, taggnn export --format safetensors, and eval / predict on shared models and Hub ids.

Everything is offline: Hub ids resolve from a Hub cache the tests write, or through a
``snapshot_download`` replaced by one that returns a local folder.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("safetensors", reason="the hub extra (pip install 'taggnn[hub]') is not installed")
huggingface_hub = pytest.importorskip("huggingface_hub",
                                      reason="the hub extra (pip install 'taggnn[hub]') is not installed")

from taggnn.cli import main  # noqa: E402
from taggnn.engine import load_config, train  # noqa: E402
from taggnn.engine.checkpoint import save_checkpoint  # noqa: E402
from taggnn.engine.features import FEATURES_FORMAT, FEATURES_VERSION  # noqa: E402
from taggnn.engine.trainer import load_trained  # noqa: E402
from taggnn.errors import CheckpointError, ConfigError  # noqa: E402
from taggnn.models import HeadOnly, TAGNet, build_backbone, build_head_only, build_model, load_pretrained  # noqa: E402
from taggnn.models.hub import CONFIG_NAME, WEIGHTS_NAME, model_card  # noqa: E402
from taggnn.nn import TAGHead  # noqa: E402

from ..engine.test_trainer import SMALL  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def tiny_model(**options):
    torch.manual_seed(0)
    return build_model("r2plus1d_tiny", 5, num_frames=8, crop_size=32, num_heads=2, ffn_dim=16, **options).eval()


def clip(batch=2, frames=8):
    return torch.randn(batch, 3, frames, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(load_config("synthgym_tiny", SMALL + ["train.epochs=1", "data.synth_train=16"]), out, progress=False)
    return out


@pytest.fixture(scope="module")
def shared(run, tmp_path_factory):
    """``taggnn export --format safetensors`` of the tiny run's best.pt."""
    out = tmp_path_factory.mktemp("shared") / "tiny"
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--format", "safetensors", "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------- Python API


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = tiny_model()
    x = clip()
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    header_size = int.from_bytes((tmp_path / WEIGHTS_NAME).read_bytes()[:8], "little")  # safetensors, no pickle
    header = json.loads((tmp_path / WEIGHTS_NAME).read_bytes()[8:8 + header_size])
    assert set(header) - {"__metadata__"} == set(model.state_dict())
    loaded = TAGNet.from_pretrained(tmp_path)
    assert isinstance(loaded, TAGNet) and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["model_type"] == "TAGNet" and config["num_classes"] == 5 and config["library_name"] == "taggnn"
    assert config["architecture"]["backbone"] == "r2plus1d_tiny" and config["architecture"]["grid"] == [2, 2, 2]
    assert config["preprocessing"]["num_frames"] == 8 and config["preprocessing"]["crop_size"] == 32
    assert config["taggnn_version"] == __import__("taggnn").__version__


def test_round_trip_after_set_grid_and_with_the_model_safetensors_path(tmp_path):
    model = tiny_model(backend="structured")
    model.head.set_grid((4, 2, 2))  # 16-frame clips: the positional table was interpolated
    x = clip(frames=16)
    model.save_pretrained(tmp_path)
    loaded = TAGNet.from_pretrained(tmp_path / WEIGHTS_NAME)
    assert loaded.head.grid == (4, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-6, rtol=0)


def test_head_only_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_head_only(16, 3, (2, 2, 2), num_heads=2, ffn_dim=8, readout="attention").eval()
    features = torch.randn(2, 16, 2, 2, 2)
    model.save_pretrained(tmp_path)
    loaded = HeadOnly.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(features), model(features))
    assert isinstance(load_pretrained(tmp_path), HeadOnly)
    with pytest.raises(CheckpointError, match="holds a HeadOnly model .*no backbone.*HeadOnly.from_pretrained"):
        TAGNet.from_pretrained(tmp_path)


def test_a_model_that_does_not_record_its_architecture_is_refused(tmp_path):
    backbone = build_backbone("r2plus1d_tiny")
    model = TAGNet(backbone, TAGHead(backbone.out_channels, 3, (2, 2, 2), num_heads=2, ffn_dim=8))
    with pytest.raises(ConfigError, match="does not record how it was built.*build_model"):
        model.save_pretrained(tmp_path)


def test_wrong_weights_and_foreign_folders_are_refused(tmp_path):
    tiny_model().save_pretrained(tmp_path / "a")
    config = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    config["architecture"]["head_options"]["ffn_dim"] = 32
    (tmp_path / "a" / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape mismatch.*do not fit the model config.json describes"):
        TAGNet.from_pretrained(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    torch.save({}, tmp_path / "empty" / "best.pt")
    with pytest.raises(CheckpointError, match="it holds best.pt.*shared model's folder.*"
                                              "model.safetensors and config.json missing"):
        load_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_pretrained(tmp_path / "nowhere" / "model.pt")


# ---------------------------------------------------------------- Hub ids (offline)


def hub_cache(root: Path, repo_id: str, folder: Path) -> Path:
    """A Hugging Face cache holding ``folder`` as the ``main`` revision of ``repo_id``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    return root


def test_hub_id_through_snapshot_download(tmp_path, monkeypatch):
    model = tiny_model()
    model.save_pretrained(tmp_path / "published")
    calls = []

    def snapshot_download(repo_id, **options):
        calls.append((repo_id, options))
        return str(tmp_path / "published")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    loaded = TAGNet.from_pretrained("someone/tiny-tagnet", revision="v1")
    with torch.no_grad():
        assert torch.equal(loaded(clip()), model(clip()))
    (repo_id, options), = calls
    assert repo_id == "someone/tiny-tagnet" and options["revision"] == "v1"
    assert set(options["allow_patterns"]) == {WEIGHTS_NAME, CONFIG_NAME, "README.md"}


def test_hub_id_from_an_offline_cache(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "published")
    cache = hub_cache(tmp_path / "hf", "someone/tiny-tagnet", tmp_path / "published")
    loaded = TAGNet.from_pretrained("someone/tiny-tagnet", cache_dir=cache, local_files_only=True)
    with torch.no_grad():
        assert torch.equal(loaded(clip()), model(clip()))
    with pytest.raises(CheckpointError, match="the Hub model nobody/nothing could not be downloaded"):
        TAGNet.from_pretrained("nobody/nothing", cache_dir=cache, local_files_only=True)


def test_push_to_hub_uploads_the_shared_folder(tmp_path, monkeypatch):
    import huggingface_hub.hub_mixin as hub_mixin

    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, *, repo_id, folder_path, **options):
            uploaded["repo_id"] = repo_id
            uploaded["files"] = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            return "https://huggingface.co/someone/tiny-tagnet/commit/0"

    monkeypatch.setattr(hub_mixin, "HfApi", FakeApi)
    model = tiny_model()
    assert model.push_to_hub("someone/tiny-tagnet").endswith("/commit/0")
    assert uploaded["repo_id"] == "someone/tiny-tagnet"
    assert set(uploaded["files"]) == {WEIGHTS_NAME, CONFIG_NAME, "README.md"}
    assert json.loads(uploaded["files"][CONFIG_NAME])["model_type"] == "TAGNet"
    assert b"## Citation" in uploaded["files"]["README.md"]


# ---------------------------------------------------------------- the command line


def test_export_safetensors_writes_config_card_and_the_same_model(run, shared):
    assert sorted(os.listdir(shared)) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    config = json.loads((shared / CONFIG_NAME).read_text())
    assert config["num_classes"] == 16 and len(config["class_names"]) == 16 and config["dataset"] == "synthgym"
    pre = config["preprocessing"]
    assert (pre["num_frames"], pre["crop_size"], pre["short_side"]) == (8, 32, 32)
    assert pre["normalization"] == "slowfast" and pre["mean"] == [0.45] * 3 and pre["std"] == [0.225] * 3
    assert config["training_config"]["data"]["num_frames"] == 8
    test_metrics = json.loads((run / "metrics_test.json").read_text())
    assert config["metrics"]["test"]["top1"] == test_metrics["top1"] and config["metrics"]["val"]["epoch"] == 1
    card = (shared / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: taggnn\n")
    assert "TAG-Head: Time-Aligned Graph Head for Plug-and-Play" in card
    assert f"top1 {test_metrics['top1']:.4f}" in card and "synthgym" in card
    original, _, names = load_trained(run / "best.pt", torch.device("cpu"))
    for source in (shared, shared / WEIGHTS_NAME):
        model, loaded_config, loaded_names = load_trained(source, torch.device("cpu"))
        assert loaded_names == names and loaded_config.data.num_frames == 8
        with torch.no_grad():
            assert torch.equal(model(clip()), original(clip()))
    assert (run / "best.pt").stat().st_size > 2 * (shared / WEIGHTS_NAME).stat().st_size  # no optimizer state


def test_eval_and_predict_accept_the_shared_folder(run, shared, tmp_path, capsys):
    from taggnn.data.synthgym import write_split

    assert main(["eval", "--checkpoint", str(shared), "--split", "test", "--out", str(tmp_path / "eval"),
                 "--no-progress"]) == 0
    shared_metrics = json.loads((tmp_path / "eval" / f"metrics_test.{shared.name}-shared.json").read_text())
    run_metrics = json.loads((run / "metrics_test.json").read_text())
    assert shared_metrics["top1"] == run_metrics["top1"] and shared_metrics["count"] == run_metrics["count"]
    write_split(tmp_path / "videos", "test", count=1, num_frames=8, size=32)
    video = str(tmp_path / "videos" / "test" / "000000.mp4")
    predictions = []
    for source in (run / "best.pt", shared / WEIGHTS_NAME):
        capsys.readouterr()
        assert main(["predict", video, "--checkpoint", str(source), "--topk", "3", "--json"]) == 0
        predictions.append(json.loads(capsys.readouterr().out)[0]["predictions"])
    assert predictions[0] == predictions[1]


def test_eval_of_a_hub_id_offline_in_a_fresh_process(shared, tmp_path):
    cache = hub_cache(tmp_path / "hf", "someone/tiny-tagnet", shared)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "taggnn", "eval", "--checkpoint", "someone/tiny-tagnet", "--split", "val",
               "--out", str(tmp_path / "eval"), "--no-progress"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "eval" / "metrics_val.tiny-tagnet-shared.json").read_text())["count"] == 16


def test_a_hub_id_that_cannot_be_downloaded_is_one_line(tmp_path, monkeypatch, capsys):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id, **options):
        raise LocalEntryNotFoundError("Cannot find an appropriate cached snapshot folder for the specified revision "
                                      "on the local disk and outgoing traffic has been disabled.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert main(["eval", "--checkpoint", "nobody/nothing", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no such local file or folder, and the Hub model nobody/nothing could not be downloaded" in err
    assert "outgoing traffic has been disabled" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_eval_of_a_hub_id_needs_out(capsys):
    assert main(["eval", "--checkpoint", "someone/tiny-tagnet", "--no-progress"]) == 2
    assert "is a Hub model: give --out DIR" in capsys.readouterr().err


def test_head_only_checkpoint_exports_and_round_trips(tmp_path):
    features = tmp_path / "features"
    features.mkdir()
    (features / "info.json").write_text(json.dumps({  # a manifest as taggnn features writes it
        "format": FEATURES_FORMAT, "version": FEATURES_VERSION, "fingerprint": "0" * 64, "fields": {},
        "channels": 16, "grid": [2, 2, 2], "settings": {}, "splits": {}}))
    config = load_config("synthgym_tiny", SMALL + [f"data.features={features}", "data.num_classes=4"])
    torch.manual_seed(0)
    head = HeadOnly(TAGHead(16, 4, (2, 2, 2), num_heads=config.model.num_heads, ffn_dim=config.model.ffn_dim))
    save_checkpoint(tmp_path / "head.pt", {"model": head.state_dict(), "config": config.to_dict(),
                                           "num_classes": 4, "classes": ["a", "b", "c", "d"]})
    out = tmp_path / "shared"
    assert main(["export", "--checkpoint", str(tmp_path / "head.pt"), "--format", "safetensors",
                 "--out", str(out)]) == 0
    saved = json.loads((out / CONFIG_NAME).read_text())
    assert saved["model_type"] == "HeadOnly" and saved["features"]["channels"] == 16
    assert saved["class_names"] == ["a", "b", "c", "d"]
    model, _, names = load_trained(out, torch.device("cpu"))
    x = torch.randn(3, 16, 2, 2, 2)
    assert isinstance(model, HeadOnly) and names == ["a", "b", "c", "d"]
    with torch.no_grad():
        assert torch.equal(model(x), head.eval()(x))


def test_export_without_safetensors_is_one_line_naming_the_extra(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--format", "safetensors",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'taggnn[hub]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_without_huggingface_hub_local_folders_still_work(tmp_path):
    script = f"""
import sys
sys.modules["huggingface_hub"] = None  # as if the package were not installed
import torch
from taggnn.models import TAGNet, build_model
from taggnn.models.hub import LocalPretrainedMixin, MissingExtraError
assert issubclass(TAGNet, LocalPretrainedMixin)
torch.manual_seed(0)
model = build_model("r2plus1d_tiny", 3, num_frames=8, crop_size=32, num_heads=2, ffn_dim=8).eval()
model.save_pretrained({str(tmp_path)!r})
x = torch.randn(1, 3, 8, 32, 32)
assert torch.equal(TAGNet.from_pretrained({str(tmp_path)!r})(x), model(x))
for call in (lambda: model.push_to_hub("someone/x"), lambda: TAGNet.from_pretrained("someone/x")):
    try:
        call()
    except MissingExtraError as error:
        assert "pip install 'taggnn[hub]'" in str(error), error
    else:
        raise AssertionError("no error")
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(REPO)),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_model_card_without_metrics_says_so():
    config = {"model_type": "HeadOnly", "num_classes": 2, "class_names": ["x", "y"], "taggnn_version": "0",
              "architecture": {"in_channels": 4, "grid": [1, 1, 1], "head_options": {}}}
    card = model_card(config, repo_id="someone/head")
    assert "## Metrics\n\nNot recorded." in card and 'HeadOnly.from_pretrained("someone/head")' in card
    assert "@article{hassan2026taghead" in card and "x, y" in card
