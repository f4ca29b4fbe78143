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
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Mapping, Tuple

from torch import Tensor, nn

from .tagnet import TAGNet, build_model
from .weights import PathLike, WeightsError, load_into, load_state_dict

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


def load_reference_checkpoint(path: PathLike, dataset: str) -> Tuple[TAGNet, ReferenceSetup]:
    """Loads ``haa500_best.pth``, ``gym99_best.pth`` or ``gym288_last.pth``.

    Returns the model (in eval mode) and its :class:`ReferenceSetup`, whose
    ``mean``/``std``/``num_frames`` the evaluation must use.
    """
    setup = _setup(dataset)
    model = reference_model(dataset)
    state = load_state_dict(path)
    converted = convert_reference_state_dict(state, model.head.grid)
    load_into(model, converted, strict=True, what=f"reference checkpoint {path}")
    logger.info("loaded the authors' %s checkpoint from %s", dataset, path)
    return model.eval(), setup
