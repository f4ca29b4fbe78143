"""Per-clip seeding: every random draw made for clip ``i`` in epoch ``e`` is a function of
(seed, e, i) only.

A clip then comes out the same whatever the number of ``DataLoader`` workers or processes,
and a resumed run sees exactly the clips it would have seen. One rule serves every dataset:

* a :class:`~taggnn.data.VideoClipDataset` built with ``seed`` seeds itself with
  :func:`seeded_draws` (its random frame offsets and its transform's crops and flips);
* :class:`EpochSeeded` wraps any other dataset (SynthGym, a dataset of your own) and does the
  same around its ``__getitem__``; it leaves alone a dataset that seeds itself or draws
  nothing (``stochastic = False``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch.utils.data import Dataset

__all__ = ["item_seed", "seeded_draws", "EpochSeeded"]


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of clip ``index`` in ``epoch`` of a run seeded with ``seed``."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63)


@contextmanager
def seeded_draws(seed: int, epoch: int, index: int) -> Iterator[torch.Generator]:
    """Seeds torch's CPU generator (all a transform draws from) with :func:`item_seed` and
    yields a generator of the same seed for the frame offsets; restores the CPU generator after.

    Only the CPU generator: ``torch.manual_seed`` would also reseed every accelerator generator
    (the dropout streams of a ``num_workers=0`` CUDA run) and, through ``fork_rng``, costs about
    50 times more per clip.
    """
    value = item_seed(seed, epoch, index)
    state = torch.random.get_rng_state()
    torch.random.default_generator.manual_seed(value)
    try:
        yield torch.Generator().manual_seed(value)
    finally:
        torch.random.set_rng_state(state)


class EpochSeeded(Dataset):
    """Makes every random draw of sample ``i`` in epoch ``e`` a function of (seed, e, i).

    Args:
        dataset: Any map-style dataset. One with ``stochastic = False`` (it seeds itself, as a
            :class:`~taggnn.data.VideoClipDataset` with ``seed`` does, or draws nothing, as
            cached features) is read as it is.
        seed (int): The run's seed.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if not getattr(self.dataset, "stochastic", True):  # seeds itself, or nothing to seed
            return self.dataset[index]
        with seeded_draws(self.seed, self.epoch, index):
            return self.dataset[index]

    def __getattr__(self, name):  # classes, samples, targets, ... of the wrapped dataset
        if name in ("dataset", "seed", "epoch"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
