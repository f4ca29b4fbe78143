"""Loading the authors' released TAG-Head checkpoints into :class:`TAGNet`.

The authors' code (ImtiazUlHassan/Tag-Head) differs from the paper in ways
that matter for reproducing their numbers: post-norm Transformer layers,
dropout 0.5, APPNP K=2 / alpha=0.1, a LayerNorm before the classifier, an FFN
width per dataset, inputs normalised with mean 0.45 / std 0.225, and a
positional table ``randn(1, N, 512)`` over a fixed token count. Their
checkpoints store

========================================  ======================================
theirs                                    taggnn
========================================  ======================================
``backbone.0.*`` (or ``csnmodel.0.*``)    ``backbone.stem.*``
``backbone.<i>.*``, i = 1..4              ``backbone.layer<i>.*``
``pos_embedding`` ``(1, N, 512)``         ``head.pos_embed.weight`` ``(T', 7, 7, 512)``
``transformer.layers.<i>.*``              ``head.transformer.layers.<i>.*``
``classifier.0.*`` (or ``mlp_head.0``)    ``head.norm.*`` (LayerNorm)
``classifier.1.*`` (or ``mlp_head.1``)    ``head.classifier.*`` (Linear)
========================================  ======================================

Tokens are assumed flattened from ``(B, C, T', H', W')`` in ``(t, y, x)``
order, which is taggnn's node order as well.

Two file layouts are accepted, like their ``evaluate.py``: a bare ``model.state_dict()``
(their ``best_model.pth``, the released ``*_best.pth``) and the training dict of their
``train.py``'s ``last_checkpoint.pth`` (``model_state_dict``, ``optimizer_state_dict``,
``scheduler_state_dict``, ``epoch``, ``best_val_acc``), of which only the model's weights are
used.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..utils.identify import describe_file
from .tagnet import TAGNet, build_model
from .weights import PathLike, WeightsError, fetch, load_into

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceSetup:
    """The authors' configuration for one released checkpoint."""

    dataset: str
    file_name: str
    num_classes: int
    num_frames: int
    ffn_dim: int
    mean: Tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: Tuple[float, float, float] = (0.225, 0.225, 0.225)
    crop_size: int = 112


REFERENCE_SETUPS: Dict[str, ReferenceSetup] = {
    "haa500": ReferenceSetup("haa500", "haa500_best.pth", 500, 32, 512),
    "gym99": ReferenceSetup("gym99", "gym99_best.pth", 99, 64, 1024),
    "gym288": ReferenceSetup("gym288", "gym288_last.pth", 288, 64, 2048),
}


def reference_model(dataset: str) -> TAGNet:
    """An untrained TAGNet configured like the authors' code for ``dataset``."""
    setup = _setup(dataset)
    model = build_model(
        "r2plus1d_34", setup.num_classes, num_frames=setup.num_frames, crop_size=setup.crop_size,
        ffn_dim=setup.ffn_dim, num_layers=2, num_heads=8, dropout=0.5, norm_first=False,
        K=2, alpha=0.1, pre_classifier_norm=True, pos_init_std=1.0, pos_init="normal",
    )
    for module in model.backbone.modules():  # the IG-65M port's BatchNorm: eps 1e-3, momentum 0.9
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps, module.momentum = 1e-3, 0.9
    return model


def _setup(dataset: str) -> ReferenceSetup:
    if dataset not in REFERENCE_SETUPS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(REFERENCE_SETUPS)}")
    return REFERENCE_SETUPS[dataset]


def convert_reference_state_dict(state: Mapping[str, Tensor], grid: Tuple[int, int, int]) -> Dict[str, Tensor]:
    """Renames the authors' keys to taggnn's (see the module docstring)."""
    converted: Dict[str, Tensor] = {}
    stage_names = {"0": "stem", "1": "layer1", "2": "layer2", "3": "layer3", "4": "layer4"}
    for key, value in state.items():
        prefix, _, rest = key.partition(".")
        if key == "edge_index" or key.endswith(".edge_index"):
            # the first revision of their model.py registered the (fixed) graph as a buffer
            logger.info("skipping the saved graph buffer %r (taggnn builds the graph itself)", key)
            continue
        if prefix in ("backbone", "csnmodel"):
            index, _, tail = rest.partition(".")
            if index not in stage_names:
                raise WeightsError(f"unexpected backbone key {key!r} (expected {prefix}.0-4.*)")
            converted[f"backbone.{stage_names[index]}.{tail}"] = value
        elif key == "pos_embedding":
            T, H, W = grid
            if value.dim() != 3 or value.shape[1] != T * H * W:
                raise WeightsError(
                    f"pos_embedding has shape {tuple(value.shape)}, expected (1, {T * H * W}, C) "
                    f"for a {T}x{H}x{W} token grid"
                )
            converted["head.pos_embed.weight"] = value.reshape(T, H, W, -1)  # (T', H', W', C)
        elif prefix == "transformer":
            converted[f"head.transformer.{rest}"] = value
        elif prefix in ("classifier", "mlp_head"):
            index, _, tail = rest.partition(".")
            target = {"0": "head.norm", "1": "head.classifier"}.get(index)
            if target is None:
                raise WeightsError(f"unexpected classifier key {key!r} (expected {prefix}.0 or {prefix}.1)")
            converted[f"{target}.{tail}"] = value
        else:
            raise WeightsError(f"unexpected key {key!r} in a TAG-Head reference checkpoint")
    return converted


#: The keys of the training dict their ``train.py`` saves as ``last_checkpoint.pth``.
TRAINING_DICT_KEYS = ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "epoch", "best_val_acc")


def _numpy_scalar_globals() -> list:
    """What ``weights_only`` loading needs to rebuild a numpy scalar (their ``best_val_acc`` may
    be one): numpy's scalar constructor and dtype classes, nothing that runs code."""
    core = getattr(np, "_core", None) or np.core
    dtypes = {type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)}
    return [core.multiarray.scalar, np.dtype, *dtypes]


def read_reference_state(path: PathLike) -> Dict[str, Tensor]:
    """The model weights of an authors' checkpoint file, in their key names.

    Accepts a bare state dict and their training dict (``model_state_dict`` plus optimiser,
    scheduler, epoch and best accuracy, which are ignored with a log line); a DataParallel
    ``module.`` prefix is stripped. Loaded with ``weights_only=True`` (numpy scalars allowed).

    Raises:
        WeightsError: for a folder, a missing file, a taggnn checkpoint, or anything else, with
            a message saying what the file holds and what was expected.
    """
    if Path(path).is_dir():
        raise WeightsError(f"{path} is a folder; expected the authors' checkpoint file (haa500_best.pth, "
                           f"gym99_best.pth, gym288_last.pth, or their train.py's best_model.pth / "
                           f"last_checkpoint.pth)")
    file = fetch(path)
    what = describe_file(file)  # an export, a config, text: named before torch.load sees it
    if what is None:
        try:
            with torch.serialization.safe_globals(_numpy_scalar_globals()):  # e.g. best_val_acc = np.float64
                data = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:
            what = describe_file(file, error)
    if what is not None:
        raise WeightsError(f"{file}: not an authors' checkpoint: it is {what}; expected their .pth file (a state "
                           f"dict, or their train.py's dict with model_state_dict)")
    if isinstance(data, Mapping) and "model" in data and "config" in data:
        raise WeightsError(f"{file} is a taggnn checkpoint, not an authors' one: evaluate it with "
                           f"taggnn eval --checkpoint {file}")
    if isinstance(data, Mapping) and isinstance(data.get("model_state_dict"), Mapping):
        ignored = [str(k) for k in data if k != "model_state_dict"]
        logger.info("%s: the authors' training checkpoint (epoch %s, best val acc %s); using model_state_dict, "
                    "ignoring %s", file, data.get("epoch", "?"), data.get("best_val_acc", "?"),
                    ", ".join(ignored) or "nothing else")
        data = data["model_state_dict"]
    elif isinstance(data, Mapping):
        for key in ("state_dict", "model_state", "model"):
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not data or not all(isinstance(v, Tensor) for v in data.values()):
        found = (f"a mapping with keys {', '.join(str(k) for k in list(data)[:6])}" if isinstance(data, Mapping)
                 else f"a {type(data).__name__}")
        raise WeightsError(f"{file}: expected the authors' checkpoint, a state dict of tensors or their train.py's "
                           f"dict with {', '.join(TRAINING_DICT_KEYS)}; found {found}")
    state = dict(data)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_reference_checkpoint(path: PathLike, dataset: str) -> Tuple[TAGNet, ReferenceSetup]:
    """Loads ``haa500_best.pth``, ``gym99_best.pth`` or ``gym288_last.pth`` (or a file their
    ``train.py`` wrote: ``best_model.pth``, ``last_checkpoint.pth``).

    Returns the model (in eval mode) and its :class:`ReferenceSetup`, whose
    ``mean``/``std``/``num_frames`` the evaluation must use.
    """
    setup = _setup(dataset)
    model = reference_model(dataset)
    state = read_reference_state(path)
    converted = convert_reference_state_dict(state, model.head.grid)
    load_into(model, converted, strict=True, what=f"reference checkpoint {path}")
    logger.info("loaded the authors' %s checkpoint from %s", dataset, path)
    return model.eval(), setup
