"""Cached backbone features for head-only studies.

``taggnn features --config C [--checkpoint X] --out DIR`` runs the backbone once over the
train, validation and test splits (the evaluation transform: no augmentation) and writes
``DIR/<split>.pt``: the token grids ``(N_clips, C, T', H', W')`` (float16 by default), the
labels, the class names and the settings that made them. ``taggnn train --set
data.features=DIR`` then trains the head alone on them, with the same configs, metrics and
checkpoints; a config whose data or backbone settings differ from the recorded ones is refused.
The files load with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from .config import Config, flatten

logger = logging.getLogger(__name__)

FEATURES_VERSION = 1

#: Settings that determine the cached features; a training config must agree on all of them.
FEATURE_KEYS = (
    "data.dataset", "data.root", "data.train_csv", "data.val_csv", "data.test_csv", "data.num_classes",
    "data.version", "data.holdout", "data.num_frames", "data.crop_size", "data.short_side", "data.transform_style",
    "data.normalization", "data.sampling", "data.synth_train", "data.synth_val", "data.synth_test", "data.synth_size",
    "data.synth_long_tail", "data.synth_task", "data.seed", "model.backbone",
)


def feature_settings(config: Config) -> Dict[str, Any]:
    flat = flatten(config.to_dict())
    return {key: flat[key] for key in FEATURE_KEYS}


@torch.no_grad()
def extract_features(config: Config, out: Path, *, checkpoint: Optional[Path] = None,
                     splits: Optional[Sequence[str]] = None, dtype: torch.dtype = torch.float16,
                     device: Optional[torch.device] = None, progress: bool = True) -> Dict[str, Path]:
    """Writes ``out/<split>.pt`` for every split; returns the paths.

    The backbone is the config's (``model.backbone`` with ``model.weights``), or the backbone
    of a taggnn ``checkpoint`` (e.g. a fine-tuned model).
    """
    from tqdm import tqdm

    from ..models import build_model_from_config
    from .checkpoint import load_checkpoint
    from .data import build_dataset, class_names, collate_clips

    device = device or torch.device("cpu")
    source = str(config.model.weights) if config.model.weights else "random initialisation"
    train_set = build_dataset(config, "train", train=False)
    names = class_names(train_set)
    num_classes = len(names) if names else config.data.num_classes
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        model = build_model_from_config(config, state["num_classes"], load_weights=False)
        model.load_state_dict(state["model"])
        source = f"checkpoint {checkpoint}"
    else:
        model = build_model_from_config(config, num_classes)
    backbone = model.backbone.to(device).eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = list(splits or ["train", config.data.val_split, config.data.test_split])
    grid = backbone.feature_grid(config.data.num_frames, config.data.crop_size, config.data.crop_size)
    info = {"channels": backbone.out_channels, "grid": list(grid), "settings": feature_settings(config),
            "backbone_source": source, "version": FEATURES_VERSION}
    (out / "info.json").write_text(json.dumps(info, indent=2))
    written = {}
    for split in dict.fromkeys(splits):
        dataset = train_set if split == "train" else build_dataset(config, split, train=False, classes=names)
        loader = torch.utils.data.DataLoader(dataset, batch_size=config.train.eval_batch_size,
                                             num_workers=config.data.num_workers, collate_fn=collate_clips)
        features, labels, skipped = [], [], []
        for clips, batch_labels, batch_skipped in tqdm(loader, desc=f"features {split}", unit="batch",
                                                       disable=not progress):
            skipped += batch_skipped
            if clips is None:
                continue
            features.append(backbone(clips.to(device)).to("cpu", dtype))  # (B, C, T', H', W')
            labels.append(batch_labels)
        payload = {
            "features": torch.cat(features), "labels": torch.cat(labels), "classes": names or [],
            "skipped": skipped, "settings": feature_settings(config), "backbone_source": source,
            "version": FEATURES_VERSION,
        }
        path = out / f"{split}.pt"
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        written[split] = path
        logger.info("%s: %d clips, features %s (%s)%s", path, len(payload["labels"]),
                    tuple(payload["features"].shape[1:]), dtype, f", {len(skipped)} unreadable skipped"
                    if skipped else "")
    return written


class FeatureDataset(Dataset):
    """``(features, label)`` pairs of one split written by :func:`extract_features`.

    Args:
        folder: The features folder.
        split (str): The split.
        config (Config, optional): Checked against the recorded settings (a mismatch raises
            :class:`~taggnn.errors.ConfigError` listing every difference).
    """

    #: Items draw no random numbers (no augmentation), so :class:`~taggnn.engine.data.EpochSeeded`
    #: need not seed anything per item.
    stochastic = False

    def __init__(self, folder, split: str, config: Optional[Config] = None):
        path = Path(folder) / f"{split}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"no cached features for split {split!r}: {path} does not exist "
                                    f"(write them with: taggnn features --config ... --out {folder})")
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or "features" not in data or "settings" not in data:
            raise ConfigError(f"{path} is not a features file written by `taggnn features`")
        if config is not None:
            check_settings(data["settings"], config, path)
        self.path = path
        self.features: torch.Tensor = data["features"]
        self.labels: torch.Tensor = data["labels"]
        self.classes: List[str] = list(data["classes"])
        self.settings: Dict[str, Any] = data["settings"]
        self.backbone_source: str = data.get("backbone_source", "")

    @property
    def grid(self):
        return tuple(self.features.shape[2:])

    @property
    def channels(self) -> int:
        return int(self.features.shape[1])

    @property
    def targets(self) -> List[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.features[index].float(), int(self.labels[index])


def read_info(folder) -> Dict[str, Any]:
    """``channels``, ``grid`` and ``settings`` of a features folder (its ``info.json``)."""
    path = Path(folder) / "info.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a features folder ({path} missing); write one with "
                                f"taggnn features --config ... --out {folder}")
    return json.loads(path.read_text())


def check_settings(recorded: Dict[str, Any], config: Config, path: Path) -> None:
    current = feature_settings(config)
    differences = [f"{key}: {recorded.get(key)!r} (features) vs {current[key]!r} (config)"
                   for key in FEATURE_KEYS if recorded.get(key) != current[key]]
    if differences:
        raise ConfigError(f"{path} was made with other settings: " + "; ".join(differences)
                          + "; write the features again for this config, or use the features' settings")
