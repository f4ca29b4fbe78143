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
from typing import Any, Dict, Mapping, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..data.constants import NORMALIZATIONS
from ..utils.identify import describe_file
from .tagnet import TAGNet, build_model
from .weights import PathLike, WeightsError, fetch, load_into

logger = logging.getLogger(__name__)


#: The authors' setup (github.com/ImtiazUlHassan/Tag-Head, MIT) as config values, the keys every
#: dataset shares. With :data:`AUTHORS_DATASETS` it is the one table of their setup: the
#: ``*_authors`` presets (``authors: <dataset>``), :func:`reference_model` and
#: :data:`REFERENCE_SETUPS` are read from it.
AUTHORS_COMMON: Dict[str, Any] = {
    "data.crop_size": 112,
    "data.transform_style": "authors",  # short side 128, flip, RandomResizedCrop(112, scale 0.5-1)
    "data.normalization": "slowfast",  # mean/std 0.45/0.225
    "data.keep_normalization": True,  # ... on IG-65M weights trained with other statistics
    "data.sampling": "linspace",  # frame indices torch.linspace(0, n-1, T).long()
    "data.train_sampling": "linspace",
    "model.backbone": "r2plus1d_34",
    "model.weights": "IG65M_CLIP32",
    "model.num_layers": 2,
    "model.num_heads": 8,
    "model.norm_first": False,  # post-norm nn.TransformerEncoder
    "model.dropout": 0.5,
    "model.K": 2,
    "model.alpha": 0.1,
    "model.pre_classifier_norm": True,
    "model.pos_init_std": 1.0,  # torch.randn, not truncated
    "model.pos_init": "normal",
    "model.bn_momentum": 0.9,  # the IG-65M port's BatchNorm
    "model.bn_eps": 1.0e-3,
    "optim.schedule_unit": "epoch",  # CosineAnnealingLR(T_max=epochs), stepped once per epoch
    "optim.warmup_epochs": 0.0,
    "train.seed": 42,
    "train.amp": "off",  # float32 throughout
    "train.eval_amp": "off",
}

#: Each dataset's own values of the authors' setup (``file``: their released checkpoint). Their
#: FineGym runs selected the model on the reported split (val), without a hold-out.
AUTHORS_DATASETS: Dict[str, Dict[str, Any]] = {
    "haa500": {"file": "haa500_best.pth", "data.dataset": "haa500", "data.num_classes": 500,
               "data.num_frames": 32, "model.ffn_dim": 512},
    "gym99": {"file": "gym99_best.pth", "data.dataset": "finegym", "data.num_classes": 99, "data.num_frames": 64,
              "model.ffn_dim": 1024, "data.holdout": 0.0, "data.val_split": "val"},
    "gym288": {"file": "gym288_last.pth", "data.dataset": "finegym", "data.num_classes": 288, "data.num_frames": 64,
               "model.ffn_dim": 2048, "data.holdout": 0.0, "data.val_split": "val", "data.version": "v1.1"},
}


def authors_setup(dataset: str) -> Dict[str, Any]:
    """The authors' setup for ``dataset`` as ``{"section.key": value}`` config values."""
    if dataset not in AUTHORS_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(AUTHORS_DATASETS)}")
    own = {key: value for key, value in AUTHORS_DATASETS[dataset].items() if key != "file"}
    return {**AUTHORS_COMMON, **own}


@dataclass(frozen=True)
class ReferenceSetup:
    """The authors' configuration for one released checkpoint (read from :func:`authors_setup`)."""

    dataset: str
    file_name: str
    num_classes: int
    num_frames: int
    ffn_dim: int
    mean: Tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: Tuple[float, float, float] = (0.225, 0.225, 0.225)
    crop_size: int = 112


def _reference_setup(dataset: str) -> ReferenceSetup:
    values = authors_setup(dataset)
    mean, std = NORMALIZATIONS[values["data.normalization"]]
    return ReferenceSetup(dataset, AUTHORS_DATASETS[dataset]["file"], values["data.num_classes"],
                          values["data.num_frames"], values["model.ffn_dim"], tuple(mean), tuple(std),
                          values["data.crop_size"])


REFERENCE_SETUPS: Dict[str, ReferenceSetup] = {dataset: _reference_setup(dataset) for dataset in AUTHORS_DATASETS}

#: Keys of the authors' setup that are not options of the head.
_NOT_HEAD_OPTIONS = ("model.backbone", "model.weights", "model.bn_momentum", "model.bn_eps")


def reference_model(dataset: str) -> TAGNet:
    """An untrained TAGNet configured like the authors' code for ``dataset`` (:func:`authors_setup`)."""
    values = authors_setup(dataset)
    head = {key.split(".", 1)[1]: value for key, value in values.items()
            if key.startswith("model.") and key not in _NOT_HEAD_OPTIONS}
    model = build_model(values["model.backbone"], values["data.num_classes"], num_frames=values["data.num_frames"],
                        crop_size=values["data.crop_size"], **head)
    for module in model.backbone.modules():  # the IG-65M port's BatchNorm: eps 1e-3, momentum 0.9
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps, module.momentum = values["model.bn_eps"], values["model.bn_momentum"]
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
