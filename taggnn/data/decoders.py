"""Video decoders: PyAV (the default, always installed) or TorchCodec.

``data.decoder`` chooses the library :func:`~taggnn.data.load_clip` decodes with:

* ``"pyav"``: PyAV, with the FFmpeg it ships (see :mod:`taggnn.data.video`);
* ``"torchcodec"``: `TorchCodec <https://github.com/pytorch/torchcodec>`_'s
  ``VideoDecoder`` (extra ``torchcodec``), which needs FFmpeg's shared libraries on the
  system (``apt-get install ffmpeg``, or ``conda install ffmpeg``). It scans the file once
  (``seek_mode="exact"``) and then decodes only what the sampled frames need, by seeking.

Both return the same frames for the same arguments: the same sampled indices (the count in
the container header first, resampled on the decodable frames when the header over-counts),
decoded to the same RGB values, with the same :class:`~taggnn.errors.VideoError` for a file
that cannot be read.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError, VideoError
from .sampling import sample_indices

logger = logging.getLogger(__name__)

#: The decoders ``data.decoder`` may name.
DECODERS = ("pyav", "torchcodec")


@functools.lru_cache(maxsize=None)
def torchcodec_problem() -> Optional[str]:
    """Why TorchCodec cannot decode here (None when it can): the package is missing, or it
    cannot load FFmpeg's shared libraries."""
    try:
        import torchcodec.decoders  # noqa: F401  (loads the FFmpeg libraries)
    except (ImportError, OSError, RuntimeError) as error:
        return str(error).strip().splitlines()[0]
    return None


def open_pyav(path: str):
    """The PyAV container of the video at ``path``; raises a :class:`~taggnn.errors.VideoError`
    that says what is wrong (missing, a folder, empty, not a video, no video stream)."""
    import av

    if not os.path.exists(path):
        raise VideoError(path, "file does not exist")
    if os.path.isdir(path):
        raise VideoError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "file is empty (0 bytes)")
    try:
        container = av.open(path)
    except av.FFmpegError as error:
        raise VideoError(path, f"cannot be opened as a video ({error})") from error
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoError(path, f"has no video stream (streams: {', '.join(kinds)})")
    return container


def check_decoder(name: str) -> None:
    """Raises :class:`ConfigError` when decoder ``name`` is unknown or cannot run here."""
    if name not in DECODERS:
        raise ConfigError(f"data.decoder={name!r} is not one of {', '.join(DECODERS)}")
    if name == "torchcodec" and torchcodec_problem() is not None:
        raise ConfigError(
            f"data.decoder=torchcodec cannot run here ({torchcodec_problem()}): it needs pip install "
            f"'taggnn[torchcodec]' and FFmpeg's shared libraries on the system (apt-get install ffmpeg, or conda "
            f"install ffmpeg); or set data.decoder=pyav")


def load_clip_torchcodec(path: str, num_frames: int, *, sampling: str = "uniform",
                         generator: Optional[torch.Generator] = None, indices: Optional[Sequence[int]] = None,
                         total_frames: Optional[int] = None, threads: int = 0) -> Tensor:
    """:func:`~taggnn.data.load_clip` with TorchCodec: the same arguments (but
    ``seek_threshold``: TorchCodec always seeks to the key frame before a sampled frame when
    that is shorter than decoding through), the same frames.

    Returns:
        A ``torch.uint8`` tensor of shape ``(T, H, W, 3)`` (RGB).
    """
    check_decoder("torchcodec")
    from torchcodec.decoders import VideoDecoder

    path = str(path)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        open_pyav(path).close()  # raises the VideoError that says what is wrong with the path
    try:
        decoder = VideoDecoder(path, dimension_order="NHWC", seek_mode="exact", num_ffmpeg_threads=threads)
    except (RuntimeError, ValueError) as error:
        open_pyav(path).close()  # PyAV's diagnosis (no video stream, not a video) when it has one
        raise VideoError(path, f"cannot be opened by torchcodec ({str(error).strip().splitlines()[-1]})") from error
    metadata = decoder.metadata
    decodable = int(metadata.num_frames_from_content or 0)
    total = int(total_frames) if total_frames else int(metadata.num_frames_from_header or 0) or decodable
    if total <= 0:
        raise VideoError(path, "has a video stream with no frames")
    wanted = list(indices) if indices is not None else sample_indices(total, num_frames, sampling,
                                                                      generator=generator)
    if indices is not None and (not wanted or min(wanted) < 0 or max(wanted) >= total):
        raise VideoError(path, f"has {total} frames; frame indices must be in [0, {total - 1}], "
                               f"got {min(wanted, default=None)}..{max(wanted, default=None)}")
    if max(wanted) >= decodable:  # the header over-counted (or the file is truncated): resample on what is there
        if decodable == 0:
            raise VideoError(path, "is truncated or corrupt: no frame could be decoded")
        logger.warning("%s: header says %d frames, %d decodable; resampling", path, total, decodable)
        if indices is not None:
            raise VideoError(path, f"has {decodable} decodable frames, index {max(wanted)} requested")
        wanted = sample_indices(decodable, num_frames, sampling, generator=generator)
    unique = sorted(set(wanted))
    try:
        frames = decoder.get_frames_at(unique).data  # (N, H, W, 3)
    except RuntimeError as error:
        raise VideoError(path, f"is corrupt or truncated ({str(error).strip().splitlines()[-1]})") from error
    position = {index: i for i, index in enumerate(unique)}
    return frames[[position[index] for index in wanted]].contiguous()
