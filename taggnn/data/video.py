r"""Video decoding with PyAV and frame sampling.

:func:`load_clip` decodes a file once and keeps only the sampled frames:
frames that are not needed are decoded (inter-frame codecs require it) but
never converted to RGB, so sampling costs about one decode of the clip. For
long videos sampled sparsely it seeks to the key frame before each sampled
frame instead of decoding everything in between.

Sampling (``sampling=``):

* ``"uniform"``: the paper's UniView, ``num_frames`` indices spread evenly
  over the whole clip at segment centres,
  :math:`i_k = \lfloor (k + \tfrac12) n / T \rfloor`;
* ``"random"``: the training-time variant, one random frame inside each of
  the :math:`T` equal segments, :math:`i_k = \lfloor (k + u_k) n / T \rfloor`;
* ``"linspace"``: the authors' code, ``torch.linspace(0, n - 1, T).long()``
  (float32 positions, truncated).

A clip shorter than ``num_frames`` repeats frames (a 9-frame HAA500 clip
sampled to 32 works). A header (or ``TotalFrames``) that over-counts is
resampled on the frames that decode, with a warning, for single and
multi-view (:func:`load_views`) sampling alike. Frames come out as the video
is shown: a display matrix rotating by a multiple of 90 degrees (phone
videos) is applied, and a stream whose resolution changes part-way is resized
to its first frame's size (with a warning). Every failure (missing, empty,
corrupt, truncated, audio-only) raises :class:`VideoError` naming the file
and the cause.
"""
from __future__ import annotations

import logging
import math
import os
from fractions import Fraction
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import TaggnnError, VideoError  # noqa: F401  (re-exported)
from . import decoders
from .decoders import open_pyav
from .sampling import SAMPLINGS, sample_indices, view_indices  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

def count_frames(path: Union[str, os.PathLike]) -> int:
    """Number of video frames, from the container header or by demuxing packets."""
    path = str(path)
    container = open_pyav(path)
    try:
        stream = container.streams.video[0]
        if stream.frames and stream.frames > 0:
            return int(stream.frames)
        return _count_packets(path, container, stream)
    finally:
        container.close()


def _count_packets(path, container, stream) -> int:
    import av

    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size > 0:
                count += 1
    except av.FFmpegError as error:
        raise VideoError(path, f"is corrupt or truncated ({error})") from error
    return count


def _frame_index(frame, stream, start_pts: int, rate: Fraction) -> int:
    return int(round(float((frame.pts - start_pts) * stream.time_base * rate)))


def load_clip(path: Union[str, os.PathLike], num_frames: int, *, sampling: str = "uniform",
              generator: Optional[torch.Generator] = None, seek_threshold: int = 64,
              indices: Optional[Sequence[int]] = None, total_frames: Optional[int] = None,
              threads: int = 0, decoder: str = "pyav") -> Tensor:
    """Decodes ``num_frames`` sampled frames of a video.

    Frames come out as the video is meant to be shown: a display matrix (the rotation
    side data of phone videos, FFmpeg's ``rotate``) rotating by a multiple of 90 degrees
    is applied, and a stream whose resolution changes part-way is resized to the size of
    its first decoded frame (with a warning).

    Args:
        path: The video file.
        num_frames (int): Frames to return :math:`T`.
        sampling (str, optional): ``"uniform"``, ``"random"`` or
            ``"linspace"`` (see the module docstring). (default: ``"uniform"``)
        generator (torch.Generator, optional): For ``"random"`` sampling.
        seek_threshold (int, optional): Seek instead of decoding through when
            sampled frames are on average more than this many frames apart.
            (default: ``64``)
        indices (sequence of int, optional): Explicit frame indices (overrides
            ``sampling``).
        total_frames (int, optional): The clip's frame count when known (e.g. the
            ``TotalFrames`` column of the authors' CSVs): indices are sampled over it
            instead of the count read from the file. If fewer frames decode, the
            clip is resampled on what is there, as for a header that over-counts.
        threads (int, optional): Decoding threads (``0``: FFmpeg's automatic
            choice). (default: ``0``)
        decoder (str, optional): ``"pyav"`` or ``"torchcodec"`` (see
            :mod:`taggnn.data.decoders`: the same frames). (default: ``"pyav"``)

    Returns:
        A ``torch.uint8`` tensor of shape ``(T, H, W, 3)`` (RGB).
    """
    if decoder != "pyav":
        decoders.check_decoder(decoder)
        return decoders.load_clip_torchcodec(path, num_frames, sampling=sampling, generator=generator, indices=indices,
                                    total_frames=total_frames, threads=threads)
    if indices is not None:
        fixed = list(indices)
        frames, wanted = _load(str(path), lambda n: fixed, total_frames=total_frames, threads=threads,
                               seek_threshold=seek_threshold, resample=False)
    else:
        def choose(n: int) -> List[int]:
            return sample_indices(n, num_frames, sampling, generator=generator)

        frames, wanted = _load(str(path), choose, total_frames=total_frames, threads=threads,
                               seek_threshold=seek_threshold)
    return torch.from_numpy(np.stack([frames[i] for i in wanted]))  # (T, H, W, 3)


def load_views(path: Union[str, os.PathLike], num_frames: int, num_views: int, *,
               total_frames: Optional[int] = None, threads: int = 0, seek_threshold: int = 64,
               decoder: str = "pyav") -> Tensor:
    """Decodes the ``num_views`` temporal views of a video (see :mod:`taggnn.data.views`) in one pass.

    Like :func:`load_clip`, the views are placed over the frames that decode: when fewer
    frames decode than ``total_frames`` (or the header) says, every view is resampled on
    the decodable ones, with a warning.

    Returns:
        A ``torch.uint8`` tensor of shape ``(num_views, T, H, W, 3)``.
    """
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    if decoder != "pyav":  # the views' frames in one call of the other decoder
        decoders.check_decoder(decoder)
        total = int(total_frames) if total_frames else count_frames(path)
        indices = [i for view in range(num_views) for i in view_indices(total, num_frames, view, num_views)]
        clip = decoders.load_clip_torchcodec(path, num_views * num_frames, indices=indices, total_frames=total,
                                    threads=threads)
        return clip.view(num_views, num_frames, *clip.shape[1:])  # (V, T, H, W, 3)

    def choose(n: int) -> List[int]:
        return [i for view in range(num_views) for i in view_indices(n, num_frames, view, num_views)]

    frames, wanted = _load(str(path), choose, total_frames=total_frames, threads=threads,
                           seek_threshold=seek_threshold, what=f"{num_views} views")
    clip = np.stack([frames[i] for i in wanted])
    return torch.from_numpy(clip).view(num_views, num_frames, *clip.shape[1:])


def _load(path: str, choose: Callable[[int], List[int]], *, total_frames: Optional[int], threads: int,
          seek_threshold: int, resample: bool = True, what: str = "the clip"):
    """Decodes the frames ``choose(n)`` of a video of ``n`` frames: ``(frames by index, wanted)``.

    ``n`` is ``total_frames``, or the header's count, or the number of packets; when fewer
    frames decode, ``choose`` is asked again with the decodable count (``resample``) or the
    clip is refused.
    """
    import av

    container = open_pyav(path)
    try:
        stream = _video_stream(container, threads)
        convert = _FrameConverter(path, stream)
        total = int(total_frames) if total_frames else int(stream.frames or 0)
        if total <= 0:
            total = _count_packets(path, container, stream)
            container.close()  # start again from the first frame (raw streams cannot seek back)
            container = open_pyav(path)
            stream = _video_stream(container, threads)
        if total <= 0:
            raise VideoError(path, "has a video stream with no frames")
        wanted = choose(total)
        if not resample and (not wanted or min(wanted) < 0 or max(wanted) >= total):
            raise VideoError(path, f"has {total} frames; frame indices must be in [0, {total - 1}], "
                                   f"got {min(wanted, default=None)}..{max(wanted, default=None)}")
        rate = stream.average_rate or stream.guessed_rate
        sparse = rate is not None and stream.time_base is not None and total / max(len(set(wanted)), 1) > seek_threshold
        try:
            frames = _decode_by_seeking(container, stream, wanted, Fraction(rate)) if sparse else None
            if frames is None:
                if sparse:  # seeking failed part-way: decode again from the very first frame
                    container.close()
                    container = open_pyav(path)
                    stream = _video_stream(container, threads)
                frames, decoded = _decode_sequentially(container, stream, wanted)
                if decoded < total and max(wanted) >= decoded:
                    # The header over-counted (or the file is truncated): resample on what is there.
                    if decoded == 0:
                        raise VideoError(path, "is truncated or corrupt: no frame could be decoded")
                    if not resample:
                        raise VideoError(path, f"has {decoded} decodable frames, index {max(wanted)} requested")
                    logger.warning("%s: %d frames expected (header or TotalFrames), %d decodable; resampling %s "
                                   "on the %d decodable frames", path, total, decoded, what, decoded)
                    wanted = choose(decoded)
                    container.close()
                    container = open_pyav(path)
                    stream = _video_stream(container, threads)
                    frames, _ = _decode_sequentially(container, stream, wanted)
            frames = {index: convert(frames[index]) for index in sorted(frames)}  # RGB, in display order
        except av.FFmpegError as error:
            raise VideoError(path, f"is corrupt or truncated ({error})") from error
    finally:
        container.close()
    return frames, wanted


def _video_stream(container, threads: int):
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    if threads:
        stream.thread_count = threads
    return stream


class _FrameConverter:
    """RGB arrays ``(H, W, 3)`` of decoded frames, as the video is meant to be shown.

    Every frame is converted at the size of the first frame converted (a stream whose
    resolution changes part-way is resized, with a warning, so that frames stack), then
    rotated as the frame's display matrix says (multiples of 90 degrees; other angles are
    left as decoded, with a warning).
    """

    def __init__(self, path: str, stream=None):
        self.path = path
        self.size: Optional[tuple] = None
        self.warned: set = set()
        # FFmpeg's older ``rotate`` tag (degrees clockwise), for files whose frames carry no display matrix
        metadata = getattr(stream, "metadata", None) or {}
        tag = next((value for key, value in metadata.items() if key.lower() == "rotate"), None)
        try:
            self.tag_rotation = -float(tag) if tag else 0.0
        except ValueError:
            self.tag_rotation = 0.0

    def _warn_once(self, kind: str, message: str, *args) -> None:
        if kind not in self.warned:
            self.warned.add(kind)
            logger.warning(message, self.path, *args)

    def __call__(self, frame) -> np.ndarray:
        size = (frame.width, frame.height)
        if self.size is None:
            self.size = size
        if size != self.size:
            self._warn_once("size", "%s: the resolution changes from %dx%d to %dx%d part-way; frames are resized to "
                            "%dx%d", *self.size, *size, *self.size)
            array = frame.to_ndarray(format="rgb24", width=self.size[0], height=self.size[1])
        else:
            array = frame.to_ndarray(format="rgb24")
        rotation = _rotation(frame) or self.tag_rotation
        if rotation % 90:
            self._warn_once("angle", "%s: display rotation of %g degrees is not a multiple of 90; frames are used "
                            "as decoded", rotation)
        elif rotation % 360:
            array = np.ascontiguousarray(np.rot90(array, k=int(rotation // 90) % 4))  # counter-clockwise
        return array


def _rotation(frame) -> float:
    """The counter-clockwise rotation (degrees) of a frame's display matrix; 0 without one."""
    try:
        rotation = frame.rotation
    except (AttributeError, ValueError):  # an older PyAV, or a malformed matrix
        return 0.0
    return float(rotation or 0)


def _decode_sequentially(container, stream, wanted: Sequence[int]):
    """Decodes from the start, keeping only the wanted frames (not yet converted to RGB)."""
    needed = set(wanted)
    last = max(wanted)
    frames = {}
    decoded = 0
    for index, frame in enumerate(container.decode(stream)):
        decoded = index + 1
        if index in needed:
            frames[index] = frame
        if index >= last:
            break
    return frames, decoded


def _decode_by_seeking(container, stream, wanted: Sequence[int], rate: Fraction):
    """Seeks to the key frame before each wanted frame; None if timestamps are unusable."""
    start_pts = stream.start_time or 0
    frames = {}
    for target in sorted(set(wanted)):
        if target in frames:
            continue
        target_pts = start_pts + int(math.floor(target / (rate * stream.time_base)))
        container.seek(target_pts, stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is None:
                return None
            index = _frame_index(frame, stream, start_pts, rate)
            if index > target:
                return None  # overshot: timestamps do not map to indices
            if index == target:
                frames[target] = frame
                break
        else:
            return None  # ran out of frames
    return frames


def write_video(path: Union[str, os.PathLike], frames: Union[Tensor, np.ndarray], *, fps: int = 25,
                codec: str = "libx264", crf: int = 18, rotation: int = 0) -> None:
    """Writes ``(T, H, W, 3)`` uint8 RGB frames as a video (H and W made even).

    ``rotation`` (degrees, counter-clockwise) is stored as the stream's display matrix, as
    phones do for portrait videos; the frames themselves are stored as given.
    """
    import av

    array = frames.numpy() if isinstance(frames, Tensor) else np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {array.dtype} {array.shape}")
    T, H, W, _ = array.shape
    array = array[:, : H - H % 2, : W - W % 2]
    tmp = f"{path}.partial{os.path.splitext(str(path))[1]}"
    with av.open(tmp, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = array.shape[2], array.shape[1]
        stream.pix_fmt = "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast"}
        for image in array:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
