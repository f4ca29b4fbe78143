r"""Clip transforms: uint8 ``(T, H, W, 3)`` frames to normalised float ``(3, T, H, W)``.

Built from :mod:`torchvision.transforms.v2`, which treats the leading frame
dimension of a ``(T, 3, H, W)`` tensor as a batch, so one random crop or
flip is drawn per clip and applied to all its frames.

Presets:

* paper (Sec. 4): train = short side 126, random crop 112, random
  horizontal flip; test = short side 126, centre crop 112;
* authors' code: train = short side 128, flip, then ``RandomResizedCrop(112,
  scale=(0.5, 1), aspect_ratio=(1, 1))`` (square crops); test = short side 128,
  centre crop 112;

each followed by normalisation with the backbone's mean/std.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from .constants import NORMALIZATIONS, RESIZE_RATIOS, STYLES


class ToFrames(nn.Module):
    """A clip ``(T, H, W, 3)`` (as decoded) or ``(T, 3, H, W)`` to float ``(T, 3, H, W)``.

    uint8 input is scaled to ``[0, 1]``; float input is taken as already in ``[0, 1]``.
    """

    def forward(self, clip: Tensor) -> Tensor:
        if clip.dim() == 4 and clip.shape[-1] == 3:
            frames = clip.permute(0, 3, 1, 2)  # (T, 3, H, W)
        elif clip.dim() == 4 and clip.shape[1] == 3:
            frames = clip
        else:
            raise ValueError(f"expected a clip of shape (T, H, W, 3) or (T, 3, H, W), got {tuple(clip.shape)}")
        return frames.float().div_(255) if clip.dtype == torch.uint8 else frames.float()


class ToClip(nn.Module):
    """``(T, 3, H, W)`` to the backbone layout ``(3, T, H, W)``."""

    def forward(self, frames: Tensor) -> Tensor:
        return frames.transpose(0, 1).contiguous()  # (3, T, H, W)


class ShortSideResize(nn.Module):
    """Resizes so that the shorter side is ``size`` (aspect kept), antialiased."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, frames: Tensor) -> Tensor:
        return v2.functional.resize(frames, [self.size], antialias=True)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def _normalization(normalization) -> Tuple[Sequence[float], Sequence[float]]:
    if isinstance(normalization, str):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)} or (mean, std), "
                             f"got {normalization!r}")
        return NORMALIZATIONS[normalization]
    mean, std = normalization
    return tuple(mean), tuple(std)


def train_transform(crop_size: int = 112, *, short_side: int = None, style: str = "paper",
                    normalization="ig65m", flip: bool = True) -> nn.Sequential:
    """Training transform for clips from :func:`~taggnn.data.load_clip`."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    mean, std = _normalization(normalization)
    short_side = short_side or round(crop_size * RESIZE_RATIOS[style])
    steps = [ToFrames(), ShortSideResize(short_side)]
    if style == "paper":
        steps.append(v2.RandomCrop(crop_size))
        if flip:
            steps.append(v2.RandomHorizontalFlip())
    else:  # the authors' order: flip, then a square RandomResizedCrop of 50-100% of the area
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        steps.append(v2.RandomResizedCrop(crop_size, scale=(0.5, 1.0), ratio=(1.0, 1.0), antialias=True))
    steps += [v2.Normalize(mean, std), ToClip()]
    return nn.Sequential(*steps)


def eval_transform(crop_size: int = 112, *, short_side: int = None, style: str = "paper",
                   normalization="ig65m") -> nn.Sequential:
    """Deterministic test transform: short-side resize and centre crop."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    mean, std = _normalization(normalization)
    short_side = short_side or round(crop_size * RESIZE_RATIOS[style])
    return nn.Sequential(ToFrames(), ShortSideResize(short_side), v2.CenterCrop(crop_size),
                         v2.Normalize(mean, std), ToClip())
