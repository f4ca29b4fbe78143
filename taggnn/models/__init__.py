"""Backbones, weights, TAGNet and the authors' checkpoint compatibility; parameter, FLOP and latency
accounting (:mod:`~taggnn.models.complexity`), export (:mod:`~taggnn.models.export`) and shared models
(:mod:`~taggnn.models.hub`)."""
from .backbones import (
    BackboneInfo,
    TinyR2Plus1D,
    VideoBackbone,
    backbone_info,
    build_backbone,
    list_backbones,
    r2plus1d_34,
    register_backbone,
)
from .reference import REFERENCE_SETUPS, convert_reference_state_dict, load_reference_checkpoint, reference_model
from .tagnet import (
    HeadOnly,
    TAGNet,
    build_head_only,
    build_model,
    build_model_from_config,
    head_options,
    load_pretrained,
)
from .weights import WeightsEntry, WeightsError, fetch, load_state_dict

__all__ = [
    "VideoBackbone", "TinyR2Plus1D", "BackboneInfo", "build_backbone", "list_backbones", "backbone_info",
    "register_backbone", "r2plus1d_34", "TAGNet", "HeadOnly", "build_model", "build_model_from_config", "head_options",
    "build_head_only", "load_pretrained",
    "WeightsEntry", "WeightsError", "fetch", "load_state_dict", "load_reference_checkpoint", "reference_model",
    "convert_reference_state_dict", "REFERENCE_SETUPS",
]
