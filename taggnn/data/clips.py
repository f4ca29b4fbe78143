"""Batching clips: :class:`SkippedClip` (what a dataset returns for an unreadable clip), the
collate function that drops them with their labels, and a loader whose workers' errors reach
the caller as they were raised."""
from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..errors import TaggnnError


class SkippedClip(NamedTuple):
    """What a dataset with ``on_error="skip"`` returns for a clip it cannot read."""

    path: str
    cause: str


class ClipBatch(NamedTuple):
    """A collated batch: ``clips`` ``(B, ...)`` (``None`` when every clip was unreadable),
    ``labels`` ``(B,)`` and the ``skipped`` paths that dropped out of it."""

    clips: Optional[torch.Tensor]
    labels: torch.Tensor
    skipped: List[str]


def collate_clips(samples: Sequence[Any]) -> ClipBatch:
    """Collates ``(clip, label)`` samples, dropping :class:`SkippedClip` entries together
    with their labels (a ``DataLoader`` ``collate_fn``)."""
    kept = [s for s in samples if not isinstance(s, SkippedClip)]
    skipped = [s.path for s in samples if isinstance(s, SkippedClip)]
    if not kept:
        return ClipBatch(None, torch.empty(0, dtype=torch.long), skipped)
    clips, labels = default_collate(kept)
    return ClipBatch(clips, labels, skipped)


class WorkerFailure(NamedTuple):
    """What a ``DataLoader`` worker returns in place of a batch when loading raised one of
    taggnn's own errors (or an ``OSError``): the error itself, re-raised in the main process."""

    error: BaseException


class _CatchErrors(Dataset):
    """Returns a :class:`WorkerFailure` for a sample whose loading raised a user error.

    PyTorch re-raises a worker's exception as a new one built from its formatted traceback
    (a ``RuntimeError`` for errors whose constructor takes other arguments, such as
    :class:`~taggnn.errors.VideoError`); passing the error back as data keeps its type and
    its one-line message.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except (TaggnnError, OSError) as error:
            return WorkerFailure(error)

    def __getattr__(self, name):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _collate(samples):
    failure = next((s for s in samples if isinstance(s, WorkerFailure)), None)
    return failure if failure is not None else collate_clips(samples)


class ClipLoader(DataLoader):
    """A ``DataLoader`` whose workers' errors reach the caller as they were raised (type and
    message), not as PyTorch's re-raised traceback text."""

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, WorkerFailure):
                raise batch.error
            yield batch


def clip_loader(dataset: Dataset, *, num_workers: int = 0, **kwargs) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` (collated by :func:`collate_clips`) whose
    workers' errors reach the caller as they were raised: with ``num_workers > 0`` an unreadable
    clip (``on_error="raise"``) stops the loop with its own :class:`~taggnn.errors.VideoError`,
    one line, not PyTorch's re-raised worker traceback. ``kwargs`` go to ``DataLoader``."""
    if num_workers > 0:
        return ClipLoader(_CatchErrors(dataset), num_workers=num_workers, collate_fn=_collate, **kwargs)
    return DataLoader(dataset, num_workers=0, collate_fn=collate_clips, **kwargs)
