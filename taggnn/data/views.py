r"""Multi-view testing: several temporal clips x spatial crops per video, scores averaged.

A video is tested on ``num_clips`` temporal views times ``num_crops`` spatial crops (the
"10 x 3" protocol of mmaction2 and PySlowFast):

* temporal view :math:`v` of :math:`V` samples frame :math:`i_k = \lfloor (k + (v + \tfrac12)/V)
  \, n / T \rfloor` of segment :math:`k`: evenly spaced offsets inside the :math:`T` equal segments
  (:math:`V = 1` is the paper's uniform sampling at segment centres);
* ``num_crops=1`` is the centre crop; ``num_crops=3`` takes three square crops along the long side
  (start, centre, end) after the short-side resize, as mmaction2's ``ThreeCrop``.

:class:`MultiViewClips` wraps a :class:`~taggnn.data.VideoClipDataset` and returns the views of a
video stacked as ``(num_clips * num_crops, 3, T, S, S)``; the evaluator averages the views' softmax
probabilities (or their logits) into one video-level score.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .clips import SkippedClip
from .constants import CROP_COUNTS, RESIZE_RATIOS
from .sampling import view_indices  # noqa: F401  (re-exported)
from .transforms import ShortSideResize, ToClip, ToFrames, _normalization


class SpatialCrops(nn.Module):
    """``num_crops`` square crops of frames ``(T, 3, H, W)``: the centre (1) or start / centre /
    end along the long side (3); returns ``(num_crops, T, 3, S, S)``."""

    def __init__(self, size: int, num_crops: int = 1):
        super().__init__()
        if num_crops not in CROP_COUNTS:
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
        self.size, self.num_crops = size, num_crops

    def forward(self, frames: Tensor) -> Tensor:
        H, W = frames.shape[-2:]
        S = self.size
        if min(H, W) < S:
            raise ValueError(f"frames of {H}x{W} are smaller than the crop {S}")
        if self.num_crops == 1:
            return v2.functional.center_crop(frames, [S, S]).unsqueeze(0)
        long_side, along_width = (W, True) if W >= H else (H, False)
        starts = [0, (long_side - S) // 2, long_side - S]
        centre = ((H if along_width else W) - S) // 2
        crops = []
        for start in starts:
            top, left = (centre, start) if along_width else (start, centre)
            crops.append(frames[..., top:top + S, left:left + S])
        return torch.stack(crops)  # (3, T, 3, S, S)

    def extra_repr(self) -> str:
        return f"size={self.size}, num_crops={self.num_crops}"


class MultiCropTransform(nn.Module):
    """Test transform with ``num_crops`` crops: uint8 ``(T, H, W, 3)`` to ``(num_crops, 3, T, S, S)``."""

    def __init__(self, crop_size: int, *, short_side: int = None, style: str = "paper", normalization="ig65m",
                 num_crops: int = 1):
        super().__init__()
        mean, std = _normalization(normalization)
        self.frames = nn.Sequential(ToFrames(), ShortSideResize(short_side or round(crop_size * RESIZE_RATIOS[style])))
        self.crops = SpatialCrops(crop_size, num_crops)
        self.normalize = v2.Normalize(mean, std)
        self.to_clip = ToClip()

    def forward(self, clip: Tensor) -> Tensor:
        crops = self.crops(self.frames(clip))  # (num_crops, T, 3, S, S)
        return torch.stack([self.to_clip(self.normalize(c)) for c in crops])  # (num_crops, 3, T, S, S)


class MultiViewClips(Dataset):
    """The ``num_clips x num_crops`` views of every video of a dataset, ``(V, 3, T, S, S)``.

    Args:
        dataset: A :class:`~taggnn.data.VideoClipDataset` (its transform is not used).
        transform (MultiCropTransform): The crops' transform.
        num_clips (int): Temporal views per video.
    """

    def __init__(self, dataset, transform: MultiCropTransform, num_clips: int = 1):
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")
        if not hasattr(dataset, "load_views"):
            raise ValueError(f"multi-view testing needs a video dataset, got {type(dataset).__name__}")
        self.dataset, self.transform, self.num_clips = dataset, transform, num_clips

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # classes, samples, targets, failures, ... of the wrapped dataset
        if name in ("dataset", "transform", "num_clips"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        views: List[Tensor] = []
        sample = self.dataset.load_views(index, self.num_clips)
        if isinstance(sample, SkippedClip):
            return sample
        clips, label = sample
        for clip in clips:
            views.extend(self.transform(clip))
        return torch.stack(views), label  # (num_clips * num_crops, 3, T, S, S)


def average_views(logits: Tensor, average: str = "prob") -> Tensor:
    """Video-level scores from per-view logits ``(B, V, C)``: mean softmax probability (``"prob"``)
    or mean logit (``"logits"``); ``(B, C)``."""
    if average == "prob":
        return logits.float().softmax(-1).mean(1)
    if average == "logits":
        return logits.float().mean(1)
    raise ValueError(f"average must be 'prob' or 'logits', got {average!r}")


__all__: Sequence[str] = ["view_indices", "SpatialCrops", "MultiCropTransform", "MultiViewClips", "average_views"]
