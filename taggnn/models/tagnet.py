r"""TAGNet: a 3D backbone with TAG-Head on top."""
from __future__ import annotations

import inspect
from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..nn import TAGHead
from .backbones import VideoBackbone, build_backbone
from .weights import PathLike, WeightsEntry


class TAGNet(nn.Module):
    r"""Backbone + :class:`~taggnn.nn.TAGHead`: clips in, logits out.

    Args:
        backbone (VideoBackbone): Feature extractor, ``(B, 3, T, H, W)`` to
            ``(B, C, T', H', W')``.
        head (TAGHead): Head whose ``in_channels`` and ``grid`` match the
            backbone's output for the clip size used.
        freeze_backbone (bool, optional): Transfer-learning mode: the backbone
            gets no gradients and stays in eval mode (BatchNorm statistics
            frozen) even when the model is in training mode. (default: :obj:`False`)

    **Shapes:**
        - **input:** :math:`(B, 3, T, H, W)`
        - **output:** :math:`(B, \text{num\_classes})`
    """

    def __init__(self, backbone: VideoBackbone, head: TAGHead, *, freeze_backbone: bool = False):
        super().__init__()
        if head.in_channels != backbone.out_channels:
            raise ValueError(
                f"head.in_channels ({head.in_channels}) must equal backbone.out_channels "
                f"({backbone.out_channels})"
            )
        self.backbone = backbone
        self.head = head
        self.backbone_frozen = False
        self.freeze_backbone(freeze_backbone)

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Switches between transfer learning (frozen) and fine-tuning."""
        self.backbone_frozen = bool(frozen)
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(not frozen)
        if frozen:
            self.backbone.eval()

    def train(self, mode: bool = True) -> "TAGNet":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def _features(self, video: Tensor) -> Tensor:
        if self.backbone_frozen and not video.requires_grad:
            with torch.no_grad():  # nothing to differentiate: keep no activations
                return self.backbone(video)
        return self.backbone(video)

    def forward_backbone(self, video: Tensor) -> Tensor:
        """Backbone features ``(B, C, T', H', W')``."""
        return self._features(video)

    def forward_features(self, video: Tensor) -> Tensor:
        """The pooled clip embedding ``(B, C)`` after TAG-Head's refinement."""
        return self.head.forward_features(self._features(video))

    def forward_head(self, pooled: Tensor) -> Tensor:
        return self.head.forward_head(pooled)

    def forward(self, video: Tensor) -> Tensor:
        return self.head(self._features(video))

    def reset_classifier(self, num_classes: int) -> None:
        self.head.reset_classifier(num_classes)


def build_model(
    backbone: str = "r2plus1d_34",
    num_classes: int = 99,
    *,
    num_frames: int = 32,
    crop_size: Union[int, Tuple[int, int]] = 112,
    weights: Optional[Union[str, PathLike, WeightsEntry]] = None,
    freeze_backbone: bool = False,
    backbone_options: Optional[dict] = None,
    **head_options,
) -> TAGNet:
    """Builds backbone and head, sizing the head's token grid from the clip size.

    Args:
        backbone (str): A name from :func:`~taggnn.models.list_backbones`.
        num_classes (int): Output classes.
        num_frames (int): Frames per clip (32 for HAA500, 64 for FineGym).
        crop_size (int or (int, int)): Input crop (112 in the paper).
        weights (optional): Backbone weights (entry name, path or URL).
        freeze_backbone (bool): Transfer-learning mode.
        backbone_options (dict, optional): Builder options of the backbone.
        **head_options: :class:`~taggnn.nn.TAGHead` options (``ffn_dim``,
            ``intra``, ``temporal``, ``K``, ...).
    """
    height, width = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    feature_extractor = build_backbone(backbone, weights=weights, **(backbone_options or {}))
    grid = feature_extractor.feature_grid(num_frames, height, width)
    head = TAGHead(feature_extractor.out_channels, num_classes, grid, **head_options)
    return TAGNet(feature_extractor, head, freeze_backbone=freeze_backbone)


class HeadOnly(nn.Module):
    r"""A :class:`~taggnn.nn.TAGHead` trained on cached backbone features: :class:`TAGNet`'s
    interface without the backbone (``forward_backbone`` is the identity).

    **Shapes:**
        - **input:** :math:`(B, C, T', H', W')` backbone features
        - **output:** :math:`(B, \text{num\_classes})`
    """

    def __init__(self, head: TAGHead):
        super().__init__()
        self.head = head

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward_backbone(self, features: Tensor) -> Tensor:
        return features

    def forward_features(self, features: Tensor) -> Tensor:
        return self.head.forward_features(features)

    def forward_head(self, pooled: Tensor) -> Tensor:
        return self.head.forward_head(pooled)

    def forward(self, features: Tensor) -> Tensor:
        return self.head(features)


def head_options(model_config: Any) -> dict:
    """The :class:`~taggnn.nn.TAGHead` keyword options held by a ``ModelConfig``-like object:
    every field whose name is a keyword parameter of ``TAGHead`` (the head's signature is the
    one list of its options)."""
    parameters = inspect.signature(TAGHead.__init__).parameters
    names = [name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return {name: getattr(model_config, name) for name in names if hasattr(model_config, name)}


def build_model_from_config(config: Any, num_classes: int, *, load_weights: bool = True) -> TAGNet:
    """The model of a :class:`~taggnn.engine.config.Config`.

    ``load_weights=False`` builds the architecture without reading ``model.weights`` (for a
    checkpoint, which holds every weight itself).
    """
    m, d = config.model, config.data
    if d.features is not None:  # the head alone, on cached features
        from ..engine.features import read_info

        info = read_info(d.features)
        return HeadOnly(TAGHead(info["channels"], num_classes, tuple(info["grid"]), **head_options(m)))
    model = build_model(
        m.backbone, num_classes, num_frames=d.num_frames, crop_size=d.crop_size,
        weights=m.weights if load_weights else None, freeze_backbone=m.freeze_backbone,
        **head_options(m),
    )
    for module in model.backbone.modules():  # e.g. the authors' IG-65M port: momentum 0.9, eps 1e-3
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if m.bn_momentum is not None:
                module.momentum = m.bn_momentum
            if m.bn_eps is not None:
                module.eps = m.bn_eps
    return model
