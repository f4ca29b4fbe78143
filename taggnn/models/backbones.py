r"""3D video backbones that return token grids for TAG-Head.

Every backbone maps a clip :math:`(B, 3, T, H, W)` to features
:math:`(B, C, T', H', W')` (no pooling, no classifier), reports
:attr:`out_channels`, and tells the token grid for a clip size with
:meth:`VideoBackbone.feature_grid` (computed by a shape-only pass on the
``meta`` device, so it is exact for any architecture and costs no FLOPs).

Registry: :func:`build_backbone`, :func:`list_backbones`.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torchvision.models import video as tv_video

from ..data.constants import IG65M_MEAN, IG65M_STD, SLOWFAST_MEAN, SLOWFAST_STD
from ..errors import ConfigError
from ..utils.optional import require
from .weights import (
    PathLike,
    WeightsEntry,
    WeightsError,
    load_into,
    load_state_dict,
    strip_prefixes,
)


class VideoBackbone(nn.Module):
    """Base class: a feature extractor with a weights catalogue."""

    out_channels: int
    #: key prefixes of the pretraining classifier in release files
    classifier_prefixes: Tuple[str, ...] = ("fc.",)

    def check_input(self, video: Tensor) -> None:
        if not isinstance(video, Tensor) or video.dim() != 5 or video.size(1) != 3:
            shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
            raise ValueError(f"expected a video batch of shape (B, 3, T, H, W), got {shape}")

    @torch.no_grad()
    def output_shape(self, num_frames: int, height: int, width: int) -> Tuple[int, ...]:
        """Shape of the features of one clip, by a shape-only pass on the meta device."""
        meta_state = {
            name: torch.empty_like(t, device="meta")
            for name, t in list(self.named_parameters()) + list(self.named_buffers())
        }
        clip = torch.empty(1, 3, num_frames, height, width, device="meta")
        try:
            out = functional_call(self, meta_state, (clip,))
        except RuntimeError as error:
            raise ValueError(
                f"{type(self).__name__} cannot take clips of {num_frames}x{height}x{width}: {error}"
            ) from error
        return tuple(out.shape)

    def feature_grid(self, num_frames: int, height: int, width: int) -> Tuple[int, int, int]:
        """The token grid :math:`(T', H', W')` for clips of this size."""
        return self.output_shape(num_frames, height, width)[2:]

    def load_pretrained(self, source: Union[str, PathLike, WeightsEntry], *, strict: bool = True):
        """Loads pretraining weights (entry name, :class:`WeightsEntry`, path or URL).

        Classifier keys are stripped; other mismatches raise with the key names.
        """
        entry = source if isinstance(source, WeightsEntry) else self.weights_catalogue().get(str(source))
        if entry is not None:
            state = load_state_dict(entry.url, sha256_prefix=entry.sha256_prefix, state_key=entry.state_key)
            prefixes = entry.classifier_prefixes
        else:
            state = load_state_dict(source)
            prefixes = self.classifier_prefixes
        state = strip_prefixes(state, prefixes)
        return load_into(self, state, strict=strict, what=f"{type(self).__name__} weights from {source}")

    @classmethod
    def weights_catalogue(cls) -> Dict[str, WeightsEntry]:
        return {}


# --------------------------------------------------------------------------
# torchvision video ResNets and the IG-65M R(2+1)D-34


class VideoResNetBackbone(VideoBackbone):
    """``stem, layer1..layer4`` of a torchvision :class:`VideoResNet` (keys unchanged)."""

    def __init__(self, resnet: tv_video.VideoResNet, *, catalogue: Optional[Dict[str, WeightsEntry]] = None):
        super().__init__()
        self.stem = resnet.stem
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3
        self.layer4 = resnet.layer4
        self.out_channels = resnet.fc.in_features
        self._catalogue = catalogue or {}

    def weights_catalogue(self) -> Dict[str, WeightsEntry]:  # type: ignore[override]
        return self._catalogue

    def forward(self, video: Tensor) -> Tensor:
        self.check_input(video)
        x = self.stem(video)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)  # (B, C, T/8, H/16, W/16) for R(2+1)D


_IG65M_URL = "https://github.com/moabitcoin/ig65m-pytorch/releases/download/v1.0.0/"
IG65M_WEIGHTS: Dict[str, WeightsEntry] = {
    entry.name: entry
    for entry in [
        WeightsEntry("IG65M_CLIP8", _IG65M_URL + "r2plus1d_34_clip8_ig65m_from_scratch-9bae36ae.pth",
                     "9bae36ae", 487, 8, 112, IG65M_MEAN, IG65M_STD),
        WeightsEntry("IG65M_CLIP32", _IG65M_URL + "r2plus1d_34_clip32_ig65m_from_scratch-449a7af9.pth",
                     "449a7af9", 359, 32, 112, IG65M_MEAN, IG65M_STD),
        WeightsEntry("IG65M_KINETICS_CLIP8", _IG65M_URL + "r2plus1d_34_clip8_ft_kinetics_from_ig65m-0aa0550b.pth",
                     "0aa0550b", 400, 8, 112, IG65M_MEAN, IG65M_STD),
        WeightsEntry("IG65M_KINETICS_CLIP32", _IG65M_URL + "r2plus1d_34_clip32_ft_kinetics_from_ig65m-ade133f1.pth",
                     "ade133f1", 400, 32, 112, IG65M_MEAN, IG65M_STD),
    ]
}


def r2plus1d_34(*, bn_momentum: float = 0.1) -> VideoResNetBackbone:
    r"""R(2+1)D-34 exactly as released with IG-65M pretraining (the paper's backbone).

    torchvision's ``VideoResNet`` with layers ``[3, 4, 6, 3]``, then the
    Caffe2 mid-planes of the first block of stages 2-4 (288/576/1152 instead
    of torchvision's 230/460/921) and BatchNorm ``eps=1e-3``: 63,491,975
    parameters without ``fc`` (the paper's 63.49M). The upstream code also
    sets momentum 0.9, a Caffe2 value whose PyTorch equivalent is 0.1.
    """
    resnet = tv_video.VideoResNet(
        block=tv_video.resnet.BasicBlock,
        conv_makers=[tv_video.resnet.Conv2Plus1D] * 4,
        layers=[3, 4, 6, 3],
        stem=tv_video.resnet.R2Plus1dStem,
    )
    resnet.layer2[0].conv2[0] = tv_video.resnet.Conv2Plus1D(128, 128, 288)
    resnet.layer3[0].conv2[0] = tv_video.resnet.Conv2Plus1D(256, 256, 576)
    resnet.layer4[0].conv2[0] = tv_video.resnet.Conv2Plus1D(512, 512, 1152)
    for module in resnet.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.eps = 1e-3
            module.momentum = bn_momentum
    return VideoResNetBackbone(resnet, catalogue=IG65M_WEIGHTS)


def _torchvision_catalogue(weights_enum) -> Dict[str, WeightsEntry]:
    """Entries read from torchvision's own weights enum (URL, hash, transforms, meta)."""
    catalogue = {}
    for weights in weights_enum:
        transforms = weights.transforms()
        crop = transforms.crop_size[0] if isinstance(transforms.crop_size, Sequence) else transforms.crop_size
        entry = WeightsEntry(
            name=weights.name, url=weights.url, sha256_prefix=None,  # hash read from the file name
            num_classes=len(weights.meta["categories"]),
            num_frames=int(weights.meta.get("min_temporal_size", 16)),
            crop_size=int(crop), mean=tuple(transforms.mean), std=tuple(transforms.std),
            classifier_prefixes=("fc.", "classifier.", "head."),
            meta={"num_params": weights.meta.get("num_params"), "gflops": weights.meta.get("_ops")},
        )
        catalogue[weights.name] = entry
    return catalogue


def _torchvision_resnet(builder, weights_enum) -> VideoResNetBackbone:
    return VideoResNetBackbone(builder(weights=None), catalogue=_torchvision_catalogue(weights_enum))


class S3DBackbone(VideoBackbone):
    """torchvision S3D ``features`` (1024 channels, stride 8 in time, 32 in space)."""

    classifier_prefixes = ("classifier.",)

    def __init__(self):
        super().__init__()
        self.features = tv_video.s3d(weights=None).features
        self.out_channels = 1024

    @classmethod
    def weights_catalogue(cls):
        return _torchvision_catalogue(tv_video.S3D_Weights)

    def forward(self, video: Tensor) -> Tensor:
        self.check_input(video)
        return self.features(video)  # (B, 1024, T', H', W')


class Swin3DBackbone(VideoBackbone):
    """torchvision Video Swin Transformer up to its final norm, channels first."""

    classifier_prefixes = ("head.",)

    def __init__(self, builder, weights_enum):
        super().__init__()
        model = builder(weights=None)
        self.patch_embed, self.pos_drop = model.patch_embed, model.pos_drop
        self.features, self.norm = model.features, model.norm
        self.out_channels = model.num_features
        self._catalogue = _torchvision_catalogue(weights_enum)

    def weights_catalogue(self):  # type: ignore[override]
        return self._catalogue

    def forward(self, video: Tensor) -> Tensor:
        self.check_input(video)
        x = self.patch_embed(video)  # (B, T', H', W', C)
        x = self.norm(self.features(self.pos_drop(x)))
        return x.permute(0, 4, 1, 2, 3)  # (B, C, T', H', W')


# --------------------------------------------------------------------------
# A small R(2+1)D for CPU demos and tests


class _SeparableConv(nn.Sequential):
    """(2+1)D convolution: spatial ``1 x 3 x 3`` then temporal ``3 x 1 x 1``."""

    def __init__(self, in_channels: int, out_channels: int, stride: Tuple[int, int]):
        t_stride, s_stride = stride
        mid = max(out_channels, (in_channels + out_channels) // 2)
        super().__init__(
            nn.Conv3d(in_channels, mid, (1, 3, 3), (1, s_stride, s_stride), (0, 1, 1), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, out_channels, (3, 1, 1), (t_stride, 1, 1), (1, 0, 0), bias=False),
        )


class _TinyBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: Tuple[int, int]):
        super().__init__()
        self.conv1 = nn.Sequential(_SeparableConv(in_channels, out_channels, stride),
                                   nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(_SeparableConv(out_channels, out_channels, (1, 1)), nn.BatchNorm3d(out_channels))
        self.downsample = None
        if stride != (1, 1) or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, (stride[0], stride[1], stride[1]), bias=False),
                nn.BatchNorm3d(out_channels),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + residual)


class TinyR2Plus1D(VideoBackbone):
    r"""A narrow R(2+1)D (one block per stage) that trains on 2 CPU cores.

    Strides: stem :math:`(1, 2, 2)`, stages ``(1,1)``, ``(2,2)``, ``(2,2)``,
    ``(1,2)`` as (time, space): 16 frames of 64x64 give a :math:`4 \times 4
    \times 4` token grid of ``widths[-1]`` channels.

    Args:
        widths (sequence of int, optional): Stage widths. (default: ``(16, 32, 64, 128)``)
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128)):
        super().__init__()
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must be 4 positive integers, got {widths!r}")
        stem_mid = 24
        self.stem = nn.Sequential(
            nn.Conv3d(3, stem_mid, (1, 5, 5), (1, 2, 2), (0, 2, 2), bias=False),
            nn.BatchNorm3d(stem_mid), nn.ReLU(inplace=True),
            nn.Conv3d(stem_mid, widths[0], (3, 1, 1), 1, (1, 0, 0), bias=False),
            nn.BatchNorm3d(widths[0]), nn.ReLU(inplace=True),
        )
        strides = [(1, 1), (2, 2), (2, 2), (1, 2)]
        channels = [widths[0]] + list(widths)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            _TinyBlock(channels[i], channels[i + 1], strides[i]) for i in range(4)
        )
        self.out_channels = widths[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, video: Tensor) -> Tensor:
        self.check_input(video)
        x = self.stem(video)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
        return x


# --------------------------------------------------------------------------
# pytorchvideo model zoo (optional)


class PyTorchVideoBackbone(VideoBackbone):
    """A pytorchvideo hub model without its head (``blocks[:-1]``), zoo-file compatible."""

    def __init__(self, hub_name: str, zoo_file: str, num_frames: int, crop: int):
        super().__init__()
        hub = require("pytorchvideo.models.hub", extra="zoo", feature=f"backbone {hub_name!r}")
        model = getattr(hub, hub_name)(pretrained=False)
        head_index = len(model.blocks) - 1
        self.blocks = nn.ModuleList(list(model.blocks)[:-1])
        self.classifier_prefixes = (f"blocks.{head_index}.",)
        # The width of blocks[:-1] (X3D's head holds extra convolutions, so not proj.in_features).
        self.out_channels = self.output_shape(num_frames, crop, crop)[1]
        self._catalogue = {
            "KINETICS400": WeightsEntry(
                "KINETICS400", "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/" + zoo_file,
                None, 400, num_frames, crop, SLOWFAST_MEAN, SLOWFAST_STD,
                classifier_prefixes=self.classifier_prefixes, state_key="model_state",
            )
        }

    def weights_catalogue(self):  # type: ignore[override]
        return self._catalogue

    def forward(self, video: Tensor) -> Tensor:
        self.check_input(video)
        x = video
        for block in self.blocks:
            x = block(x)
        return x


# --------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    builder: Callable[..., VideoBackbone]
    description: str
    requires: Optional[str] = None  # an optional package
    default_clip: Tuple[int, int] = (16, 112)  # (frames, crop) it is usually run at


_REGISTRY: Dict[str, BackboneInfo] = {}


def register_backbone(name: str, builder: Callable[..., VideoBackbone], description: str,
                      requires: Optional[str] = None, default_clip: Tuple[int, int] = (16, 112)) -> None:
    """Adds a backbone to the registry (users can register their own)."""
    _REGISTRY[name] = BackboneInfo(name, builder, description, requires, default_clip)


register_backbone("r2plus1d_34", r2plus1d_34, "R(2+1)D-34, IG-65M release layout (paper backbone, 512 ch)",
                  default_clip=(32, 112))
register_backbone("r2plus1d_18", partial(_torchvision_resnet, tv_video.r2plus1d_18, tv_video.R2Plus1D_18_Weights),
                  "torchvision R(2+1)D-18 (512 ch)")
register_backbone("r3d_18", partial(_torchvision_resnet, tv_video.r3d_18, tv_video.R3D_18_Weights),
                  "torchvision R3D-18 (512 ch)")
register_backbone("mc3_18", partial(_torchvision_resnet, tv_video.mc3_18, tv_video.MC3_18_Weights),
                  "torchvision MC3-18 (512 ch)")
register_backbone("s3d", S3DBackbone, "torchvision S3D (1024 ch)", default_clip=(16, 224))
for _size in ("t", "s", "b"):
    _weights_name = {"t": "Swin3D_T_Weights", "s": "Swin3D_S_Weights", "b": "Swin3D_B_Weights"}[_size]
    register_backbone(f"swin3d_{_size}", partial(Swin3DBackbone, getattr(tv_video, f"swin3d_{_size}"),
                                                 getattr(tv_video, _weights_name)),
                      f"torchvision Video Swin-{_size.upper()}", default_clip=(16, 224))
register_backbone("r2plus1d_tiny", TinyR2Plus1D, "narrow R(2+1)D, 1 block/stage, for CPU demos (128 ch)",
                  default_clip=(16, 64))
for _name, _hub, _file, _frames, _crop, _desc in [
    ("slow_r50", "slow_r50", "SLOW_8x8_R50.pyth", 8, 224, "Slow-R50 (SlowFast slow pathway), 2048 ch"),
    ("i3d_r50", "i3d_r50", "I3D_8x8_R50.pyth", 8, 224, "I3D-R50, 2048 ch"),
    ("csn_r101", "csn_r101", "CSN_32x2_R101.pyth", 32, 224, "ir-CSN-R101, 2048 ch"),
    ("x3d_s", "x3d_s", "X3D_S.pyth", 13, 182, "X3D-S, 192 ch"),
    ("x3d_m", "x3d_m", "X3D_M.pyth", 16, 224, "X3D-M, 192 ch"),
]:
    register_backbone(_name, partial(PyTorchVideoBackbone, _hub, _file, _frames, _crop), _desc,
                      requires="pytorchvideo", default_clip=(_frames, _crop))


def list_backbones(*, available_only: bool = False) -> List[str]:
    """Registered backbone names (``available_only``: those whose optional package imports)."""
    names = sorted(_REGISTRY)
    if available_only:
        names = [n for n in names if _REGISTRY[n].requires is None
                 or importlib.util.find_spec(_REGISTRY[n].requires) is not None]
    return names


def backbone_info(name: str) -> BackboneInfo:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(list_backbones())}")
    return _REGISTRY[name]


def build_backbone(name: str, *, weights: Optional[Union[str, PathLike, WeightsEntry]] = None,
                   strict: bool = True, **kwargs) -> VideoBackbone:
    """Builds a registered backbone, optionally loading pretrained weights.

    Args:
        name (str): One of :func:`list_backbones`.
        weights (optional): A catalogue entry name of this backbone (e.g.
            ``"IG65M_CLIP32"``, ``"KINETICS400_V1"``), a torchvision weights enum,
            a :class:`WeightsEntry`, a local path or a URL.
        strict (bool, optional): Raise on missing/unexpected keys (shape
            mismatches always raise). (default: :obj:`True`)
        **kwargs: Builder options (e.g. ``widths`` for ``r2plus1d_tiny``).
    """
    info = backbone_info(name)
    backbone = info.builder(**kwargs)
    if weights is not None and not isinstance(weights, (str, WeightsEntry, os.PathLike)) and hasattr(weights, "url"):
        weights = weights.name  # a torchvision weights enum, e.g. R2Plus1D_18_Weights.KINETICS400_V1
    if weights is not None:
        catalogue = backbone.weights_catalogue()
        looks_like_name = isinstance(weights, str) and "/" not in weights and "." not in weights
        if looks_like_name and weights not in catalogue:
            raise WeightsError(
                f"unknown weights {weights!r} for backbone {name!r}; known: {sorted(catalogue)} "
                f"(or pass a local path / URL)"
            )
        backbone.load_pretrained(weights, strict=strict)
    return backbone
