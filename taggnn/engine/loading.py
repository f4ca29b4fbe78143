"""Trained models for evaluation, prediction and export: a taggnn checkpoint (``best.pt``,
``last.pt``) or a shared model (a ``taggnn export --format safetensors`` folder, its
``model.safetensors``, or a Hub id), with the config it was trained with and its class names."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..errors import CheckpointError
from ..models import build_model_from_config
from ..models.hub import is_pretrained_source, read_config, resolve_pretrained
from ..models.tagnet import load_pretrained, record_config
from .checkpoint import load_checkpoint
from .config import Config, ConfigError
from .features import read_info
from .health import non_finite_parameters

__all__ = ["trained_config", "load_trained"]


def trained_config(source: Path) -> Config:
    """The config a taggnn checkpoint or a shared model (see :func:`load_trained`) was trained with."""
    if is_pretrained_source(source):
        return _shared_model_config(read_config(resolve_pretrained(source)), source)
    checkpoint = load_checkpoint(source)
    return Config.from_dict(checkpoint["config"], source=str(source))


def _shared_model_config(shared: Dict[str, Any], source) -> Config:
    """A shared model's training config, or (a model saved without one) the defaults with its
    preprocessing, backbone and number of classes."""
    if shared.get("training_config"):
        return Config.from_dict(shared["training_config"], source=f"{source} (config.json)")
    pre = shared.get("preprocessing") or {}
    data = {key: pre[key] for key in ("num_frames", "crop_size", "short_side", "transform_style", "normalization",
                                      "sampling") if pre.get(key) is not None}
    values: Dict[str, Any] = {"data": dict(data, num_classes=shared["num_classes"])}
    if shared["architecture"].get("backbone"):
        values["model"] = {"backbone": shared["architecture"]["backbone"]}
    return Config.from_dict(values, source=f"{source} (config.json, no training config)")


def _recorded_metrics(checkpoint_path: Path, checkpoint: Dict[str, Any], config: Config) -> Dict[str, Any]:
    """The validation score of a checkpoint and, when the run's final test evaluated this very file,
    its test metrics."""
    metrics: Dict[str, Any] = {}
    best = checkpoint.get("best") or {}
    if best.get("epoch", -1) >= 0:
        metrics[config.data.val_split] = {key: best[key] for key in ("top1", "mca", "epoch") if key in best}
    test_file = Path(checkpoint_path).parent / f"metrics_{config.data.test_split}.json"
    if test_file.is_file():
        try:
            test = json.loads(test_file.read_text())
        except ValueError:
            test = {}
        if Path(str(test.get("checkpoint", ""))).name == Path(checkpoint_path).name:
            metrics[config.data.test_split] = {key: test[key] for key in (
                "top1", "top5", "mca", "mca_present", "mca_union", "count") if key in test}
    return metrics


def load_trained(checkpoint_path: Path, device: torch.device, overrides: Optional[Config] = None):
    """Model (eval mode), config and class names from a taggnn checkpoint or a shared model.

    A shared model is a folder written by ``taggnn export --format safetensors`` (or
    ``save_pretrained``), its ``model.safetensors``, or a Hub id ``owner/name``
    (:func:`taggnn.models.load_pretrained`); its ``config.json`` gives the config and classes.
    The checkpoint holds every weight: ``model.weights`` is never read again (the file may
    have moved, or be a URL). Non-finite weights are refused. The returned model records its
    config, classes and known metrics, so that ``save_pretrained`` can share it.
    """
    if is_pretrained_source(checkpoint_path):
        model = load_pretrained(checkpoint_path)
        bad = non_finite_parameters(model.state_dict())
        if bad:
            raise CheckpointError(f"{checkpoint_path}: {len(bad)} weight tensors hold NaN or infinity "
                                  f"(first: {', '.join(bad[:3])}); this model cannot give meaningful scores")
        config = overrides or _shared_model_config(model.pretrained_metadata, checkpoint_path)
        return model.to(device).eval(), config, model.pretrained_metadata.get("class_names")
    checkpoint = load_checkpoint(checkpoint_path)
    bad = non_finite_parameters(checkpoint["model"])
    if bad:
        raise CheckpointError(f"{checkpoint_path}: {len(bad)} weight tensors hold NaN or infinity "
                              f"(first: {', '.join(bad[:3])}); this model cannot give meaningful scores")
    config = overrides or Config.from_dict(checkpoint["config"], source=str(checkpoint_path))
    model = build_model_from_config(config, checkpoint["num_classes"], load_weights=False)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        saved = Config.from_dict(checkpoint["config"], source=str(checkpoint_path))
        raise ConfigError(f"{checkpoint_path} does not fit this config; differences (checkpoint -> now): "
                          + "; ".join(saved.diff(config)) + f" ({error})") from error
    features = None
    if config.data.features is not None:
        try:
            features = read_info(config.data.features)
        except FileNotFoundError:
            features = None
    record_config(model, config, class_names=checkpoint.get("classes"),
                  metrics=_recorded_metrics(checkpoint_path, checkpoint, config), features=features)
    return model.to(device).eval(), config, checkpoint.get("classes")
