"""Datasets and loaders for a run, built from a :class:`~taggnn.engine.config.Config`."""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import HAA500, FineGym, SynthGym, VideoCSV, VideoFolder, collate_clips, eval_transform, train_transform
from ..errors import TaggnnError
from .config import Config, ConfigError
from .distributed import DistributedContext, ResumableSampler


class EpochSeeded(Dataset):
    """Makes every random draw of sample ``i`` in epoch ``e`` a function of (seed, e, i).

    Transforms and random frame sampling then give the same clip whatever the number of
    workers or processes, and a resumed run sees exactly the clips it would have seen.
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
        if not getattr(self.dataset, "stochastic", True):  # e.g. cached features: nothing to seed
            return self.dataset[index]
        # Seeds only torch's CPU generator (all a transform draws from) and restores it after:
        # torch.manual_seed would also reseed every accelerator generator (the dropout streams
        # of a num_workers=0 CUDA run) and, through fork_rng, costs ~50x more per sample.
        state = torch.random.get_rng_state()
        torch.random.default_generator.manual_seed(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
                                                   % (2**63))
        try:
            return self.dataset[index]
        finally:
            torch.random.set_rng_state(state)

    def __getattr__(self, name):  # classes, samples, targets, ... of the wrapped dataset
        if name in ("dataset", "seed", "epoch"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


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
    e, d = config.eval, config.data
    if views and not train and (e.num_clips > 1 or e.num_crops > 1):
        from ..data.views import MultiCropTransform, MultiViewClips

        if not hasattr(dataset, "load_views"):
            raise ConfigError(f"eval.num_clips / eval.num_crops need decoded videos; data.dataset={d.dataset!r}"
                              f"{' with data.features' if d.features else ''} has none")
        transform = MultiCropTransform(d.crop_size, short_side=d.short_side, style=d.transform_style,
                                       normalization=d.normalization, num_crops=e.num_crops)
        dataset = MultiViewClips(dataset, transform, e.num_clips)
    return dataset


def _build_dataset(config: Config, split: str, *, train: bool, classes: Optional[Sequence[str]]) -> Dataset:
    d = config.data
    if d.features is not None:  # cached backbone features: the head trains alone
        from .features import FeatureDataset

        return FeatureDataset(d.features, split, config)
    if train:
        transform = train_transform(d.crop_size, short_side=d.short_side, style=d.transform_style,
                                    normalization=d.normalization, flip=d.flip)
    else:
        transform = eval_transform(d.crop_size, short_side=d.short_side, style=d.transform_style,
                                   normalization=d.normalization)
    sampling = d.train_sampling if train else d.sampling
    common = dict(num_frames=d.num_frames, transform=transform)
    if d.dataset == "synthgym":
        sizes = {"train": d.synth_train, "val": d.synth_val, "test": d.synth_test}
        if split not in sizes:
            raise ConfigError(f"SynthGym has splits {sorted(sizes)}, got {split!r}")
        pretrain = d.synth_task == "pretrain"  # disjoint clips, coarse (group) labels
        return SynthGym(f"pretrain_{split}" if pretrain else split, size=d.synth_size, num_classes=d.num_classes,
                        seed=d.seed, length=sizes[split], long_tail=d.synth_long_tail,
                        labels="coarse" if pretrain else "fine", **common)
    if d.root is None:
        raise ConfigError(f"data.root must be set for dataset {d.dataset!r} (e.g. --set data.root=/data/...)")
    video = dict(common, sampling=sampling, on_error=d.on_error, seed=config.train.seed,
                 decode_threads=d.decode_threads, decoder=d.decoder)
    if d.dataset == "finegym":
        return FineGym(d.root, split, num_classes=d.num_classes, version=d.version, holdout=d.holdout,
                       holdout_seed=d.seed, holdout_min_clips=d.holdout_min_clips, **video)
    if d.dataset == "haa500":
        return HAA500(d.root, split, **video)
    if d.dataset == "csv":
        csv_path = {"train": d.train_csv, "val": d.val_csv, "test": d.test_csv}.get(split)
        if csv_path is None:
            raise ConfigError(f"data.{split}_csv must be set for dataset 'csv'")
        return VideoCSV(csv_path, d.root, classes=classes, layout=d.csv_layout, **video)
    if d.dataset == "folder":
        import os

        return VideoFolder(os.path.join(d.root, split), classes=classes, **video)
    raise ConfigError(f"unknown dataset {d.dataset!r}")  # pragma: no cover (validated by the config)


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
    """A ``DataLoader`` over ``dataset`` (collated by :func:`~taggnn.data.collate_clips`) whose
    workers' errors reach the caller as they were raised: with ``num_workers > 0`` an unreadable
    clip (``on_error="raise"``) stops the loop with its own :class:`~taggnn.errors.VideoError`,
    one line, not PyTorch's re-raised worker traceback. ``kwargs`` go to ``DataLoader``."""
    if num_workers > 0:
        return ClipLoader(_CatchErrors(dataset), num_workers=num_workers, collate_fn=_collate, **kwargs)
    return DataLoader(dataset, num_workers=0, collate_fn=collate_clips, **kwargs)


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
