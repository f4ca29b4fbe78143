"""Datasets and loaders for a run, built from a :class:`~taggnn.engine.config.Config`: each dataset
through its entry in the dataset registry (:mod:`taggnn.data.registry`), the config's transforms
around it, and the test split's views."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import VideoClipDataset, eval_transform, train_transform
from ..data.clips import ClipLoader, WorkerFailure, clip_loader  # noqa: F401  (re-exported)
from ..data.features import FeatureDataset
from ..data.registry import dataset_info
from ..data.seeding import EpochSeeded  # noqa: F401  (re-exported)
from ..data.views import MultiCropTransform, MultiViewClips
from .config import Config, ConfigError
from .distributed import DistributedContext, ResumableSampler


def build_dataset(config: Config, split: str, *, train: bool, classes: Optional[Sequence[str]] = None,
                  views: bool = False) -> Dataset:
    """The dataset of ``split`` with the train or test transform of the config.

    ``classes`` (the training split's class names, or a checkpoint's) fixes the label of
    every class name: a split whose classes disagree with them raises an error naming the
    class, never renumbers labels silently. ``views=True`` (testing) applies ``eval.num_clips`` x
    ``eval.num_crops``: each item is then ``(V, 3, T, S, S)``.
    """
    dataset = _build_dataset(config, split, train=train, classes=classes)
    if classes is not None:
        found = class_names(dataset)
        if found is not None and list(found) != list(classes):
            differ = [f"{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(classes, found)) if a != b][:3]
            raise ConfigError(
                f"split {split!r} of {config.data.dataset!r} has {len(found)} classes that do not match the "
                f"{len(classes)} expected (training split or checkpoint)"
                + (f"; first differences: {', '.join(differ)}" if differ else ""))
    if views and not train:
        dataset = with_test_views(dataset, config)
    return dataset


def with_test_views(dataset: Dataset, config: Config) -> Dataset:
    """``dataset`` (a test split) with ``eval.num_clips`` x ``eval.num_crops`` views per video
    (:class:`~taggnn.data.views.MultiViewClips`: items ``(V, 3, T, S, S)``), or as it is for
    a single view."""
    e, d = config.eval, config.data
    if e.num_clips == 1 and e.num_crops == 1:
        return dataset
    if not hasattr(dataset, "load_views"):
        raise ConfigError(f"eval.num_clips / eval.num_crops need decoded videos; data.dataset={d.dataset!r}"
                          f"{' with data.features' if d.features else ''} has none")
    transform = MultiCropTransform(d.crop_size, short_side=d.short_side, style=d.transform_style,
                                   normalization=d.normalization, num_crops=e.num_crops)
    return MultiViewClips(dataset, transform, e.num_clips)


def video_files(config: Config, paths: Sequence[str], classes: Optional[Sequence[str]] = None) -> Dataset:
    """The video files ``paths`` as a test dataset of ``config`` (``taggnn predict``): decoded,
    sampled (``data.sampling``, ``data.decoder``) and transformed as a test split is, with
    ``eval.num_clips`` x ``eval.num_crops`` views; item ``i`` is ``(views, 0)`` for video
    ``i``, ``views`` of shape ``(V, 3, T, S, S)`` (``V = 1`` for a single view).

    An unreadable video raises its :class:`~taggnn.errors.VideoError` when its item is read.
    """
    d = config.data
    transform = eval_transform(d.crop_size, short_side=d.short_side, style=d.transform_style,
                               normalization=d.normalization)
    dataset = VideoClipDataset([(str(path), 0) for path in paths], list(classes or []), num_frames=d.num_frames,
                               sampling=d.sampling, transform=transform, check_files=False,
                               decode_threads=d.decode_threads, decoder=d.decoder)
    views = with_test_views(dataset, config)
    return views if views is not dataset else _SingleView(dataset)


class _SingleView(Dataset):
    """Items ``(clip, label)`` as one view: ``(1, 3, T, S, S)``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        clip, label = self.dataset[index]
        return clip.unsqueeze(0), label


def _build_dataset(config: Config, split: str, *, train: bool, classes: Optional[Sequence[str]]) -> Dataset:
    d = config.data
    if d.features is not None:  # cached backbone features: the head trains alone
        return FeatureDataset(d.features, split, config)
    if train:
        transform = train_transform(d.crop_size, short_side=d.short_side, style=d.transform_style,
                                    normalization=d.normalization, flip=d.flip)
    else:
        transform = eval_transform(d.crop_size, short_side=d.short_side, style=d.transform_style,
                                   normalization=d.normalization)
    return dataset_info(d.dataset).build(config, split, train=train, classes=classes, transform=transform)


def make_loader(dataset: Dataset, sampler: ResumableSampler, batch_size: int, config: Config,
                device: torch.device, epoch: int = 0) -> DataLoader:
    """A loader whose own seed comes from (seed, epoch): creating it leaves the global RNG
    (dropout, ...) untouched, which an exact resume needs. Built by :func:`clip_loader`: with
    ``data.num_workers > 0`` an unreadable clip still stops the run with its own one-line error."""
    d = config.data
    workers = d.num_workers
    generator = torch.Generator().manual_seed(config.train.seed * 7919 + epoch)
    pin = device.type == "cuda" if d.pin_memory is None else d.pin_memory
    return clip_loader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin,
                       drop_last=False, generator=generator, persistent_workers=d.persistent_workers and workers > 0,
                       prefetch_factor=d.prefetch_factor if workers > 0 else None)


def eval_sampler(dataset: Dataset, context: DistributedContext) -> ResumableSampler:
    return ResumableSampler(len(dataset), shuffle=False, rank=context.rank, world_size=context.world_size,
                            pad=False)


def class_names(dataset: Dataset) -> Optional[list]:
    return list(getattr(dataset, "classes", []) or []) or None
