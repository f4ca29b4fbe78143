"""Which frames of a video a clip keeps: single-clip sampling and the temporal views of
multi-view testing (pure index arithmetic, no decoding)."""
from __future__ import annotations

from typing import List, Optional

import torch

SAMPLINGS = ("uniform", "random", "linspace")


def sample_indices(num_available: int, num_frames: int, sampling: str = "uniform", *,
                   generator: Optional[torch.Generator] = None) -> List[int]:
    """Frame indices to keep from a clip of ``num_available`` frames.

    Returns ``num_frames`` non-decreasing indices in ``[0, num_available)``.
    """
    if num_available < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_available}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    n, T = num_available, num_frames
    if sampling == "uniform":
        return [min(n - 1, int((k + 0.5) * n / T)) for k in range(T)]
    if sampling == "linspace":  # exactly the authors' torch.linspace(0, n - 1, T).long() (truncation)
        return torch.linspace(0, n - 1, T).long().tolist()
    offsets = torch.rand(T, generator=generator).tolist()
    return [min(n - 1, int((k + u) * n / T)) for k, u in enumerate(offsets)]


def view_indices(num_available: int, num_frames: int, view: int, num_views: int) -> List[int]:
    """Frame indices of temporal view ``view`` of ``num_views`` (see the module docstring)."""
    if not 0 <= view < num_views:
        raise ValueError(f"view must be in [0, {num_views}), got {view}")
    n, T = num_available, num_frames
    offset = (view + 0.5) / num_views
    return [min(n - 1, int((k + offset) * n / T)) for k in range(T)]
