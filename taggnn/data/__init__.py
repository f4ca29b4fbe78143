"""Video data: PyAV decoding with uniform sampling, transforms, FineGym, HAA500, CSV/folder datasets, SynthGym."""
from .datasets import (
    HAA500,
    AnnotationError,
    ClipBatch,
    FineGym,
    SkippedClip,
    VideoClipDataset,
    VideoCSV,
    VideoFolder,
    collate_clips,
    read_finegym_categories,
    read_split_file,
)
from .synthgym import SynthGym
from .transforms import NORMALIZATIONS, eval_transform, train_transform
from .video import SAMPLINGS, TaggnnError, VideoError, count_frames, load_clip, sample_indices, write_video

__all__ = [
    "load_clip", "count_frames", "sample_indices", "write_video", "SAMPLINGS", "VideoError", "TaggnnError",
    "train_transform", "eval_transform", "NORMALIZATIONS",
    "VideoClipDataset", "SkippedClip", "ClipBatch", "collate_clips", "FineGym", "HAA500", "VideoCSV", "VideoFolder",
    "AnnotationError",
    "read_finegym_categories", "read_split_file", "SynthGym",
]
