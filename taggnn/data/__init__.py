"""Video data: PyAV decoding with uniform sampling, transforms, FineGym, HAA500, CSV/folder datasets, SynthGym,
the dataset registry and the cached-features format.

Every module of this package is imported with it, so a dataset module dropped here registers
itself (:func:`register_dataset`) without being named anywhere else."""
import importlib as _importlib
import pkgutil as _pkgutil

from .clips import ClipBatch, SkippedClip, clip_loader, collate_clips
from .datasets import (
    HAA500,
    AnnotationError,
    FineGym,
    VideoClipDataset,
    VideoCSV,
    VideoFolder,
    read_finegym_categories,
    read_split_file,
)
from .features import FeatureCacheError, FeatureDataset
from .registry import DatasetInfo, dataset_info, list_datasets, register_dataset, video_options
from .seeding import EpochSeeded, item_seed
from .synthgym import SynthGym
from .transforms import NORMALIZATIONS, eval_transform, train_transform
from .video import SAMPLINGS, TaggnnError, VideoError, count_frames, load_clip, sample_indices, write_video

for _module in sorted(_pkgutil.iter_modules(__path__), key=lambda module: module.name):
    _importlib.import_module(f"{__name__}.{_module.name}")  # registers the datasets of added modules

__all__ = [
    "load_clip", "count_frames", "sample_indices", "write_video", "SAMPLINGS", "VideoError", "TaggnnError",
    "train_transform", "eval_transform", "NORMALIZATIONS",
    "VideoClipDataset", "SkippedClip", "ClipBatch", "collate_clips", "clip_loader", "FineGym", "HAA500", "VideoCSV",
    "VideoFolder", "AnnotationError",
    "read_finegym_categories", "read_split_file", "SynthGym",
    "register_dataset", "list_datasets", "dataset_info", "DatasetInfo", "video_options",
    "EpochSeeded", "item_seed", "FeatureDataset", "FeatureCacheError",
]
