"""Trim FineGym element clips from full-length videos with PyAV (no ffmpeg binary needed).

    python datasets/finegym/prepare.py \\
        --annotation finegym_annotation_info_v1.1.json \\
        --videos /data/finegym/videos --out /data/finegym [--short-side 128] [--only gym99_val_element.txt]

Recommended: ``--short-side 128``, the resolution the authors train from (their loader resizes the
short side to 128 before a 112 crop; the paper's 126 is within it). Decoding 128-pixel clips is
several times cheaper than full-resolution YouTube videos, which keeps GPU-sized jobs fed.

Reads the official annotation JSON
``{yt_id: {"E_...": {"event": int, "timestamps": [[s, e]], "segments": {"A_...": {"stages": n,
"timestamps": [[s, e], ...]}} or null}}}``; event times are seconds of the full video, element
times seconds relative to the event start; a multi-stage element (vault) spans its first start to
its last end. Writes ``OUT/subactions/<yt_id>_<E_...>_<A_...>.mp4``.

Resumable: finished clips are skipped, each clip is written to a temporary name and renamed when
complete, so an interrupted run never leaves a half-written clip. Source videos are looked up as
``VIDEOS/<yt_id>.<ext>``; missing ones are reported (count and first few) and their clips skipped.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from fractions import Fraction
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

logger = logging.getLogger("finegym.prepare")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")


def element_spans(annotation: Dict) -> Iterable[Tuple[str, str, float, float]]:
    """Yields ``(clip_id, yt_id, start_s, end_s)`` in absolute seconds of the full video."""
    for yt_id, events in annotation.items():
        for event_id, event in events.items():
            segments = event.get("segments") or {}
            event_start = float(event["timestamps"][0][0])
            for segment_id, segment in segments.items():
                stamps = segment["timestamps"]
                start = event_start + float(stamps[0][0])
                end = event_start + float(stamps[-1][1])
                yield f"{yt_id}_{event_id}_{segment_id}", yt_id, start, end


def find_source(videos: Path, yt_id: str) -> Optional[Path]:
    for ext in VIDEO_EXTENSIONS:
        candidate = videos / f"{yt_id}{ext}"
        if candidate.is_file():
            return candidate
    return None


def trim(source: Path, target: Path, start: float, end: float, short_side: Optional[int] = None) -> int:
    """Re-encodes the frames of ``source`` with timestamps in ``[start, end)``; returns the count."""
    import av

    tmp = target.with_name(target.name + ".partial.mp4")
    written = 0
    with av.open(str(source)) as src:
        stream = src.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        base = stream.time_base
        offset = float((stream.start_time or 0) * base)
        src.seek(int((start + offset) / base), stream=stream, backward=True, any_frame=False)
        with av.open(str(tmp), "w") as dst:
            out = None
            for frame in src.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * base) - offset
                if t < start - 1e-6:
                    continue
                if t >= end:
                    break
                image = frame.to_ndarray(format="rgb24")
                if short_side:
                    height, width = image.shape[:2]
                    scale = short_side / min(height, width)
                    new_w, new_h = max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)
                    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(width=new_w, height=new_h)
                    image = frame.to_ndarray(format="rgb24")
                if out is None:
                    out = dst.add_stream("libx264", rate=rate)
                    out.height, out.width = image.shape[0] - image.shape[0] % 2, image.shape[1] - image.shape[1] % 2
                    out.pix_fmt = "yuv420p"
                    out.options = {"crf": "18", "preset": "veryfast"}
                image = image[: out.height, : out.width]
                for packet in out.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    dst.mux(packet)
                written += 1
            if out is not None:
                for packet in out.encode():
                    dst.mux(packet)
    if written == 0:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{source}: no frames between {start:.2f}s and {end:.2f}s")
    os.replace(tmp, target)
    return written


def read_ids(paths: List[Path]) -> Optional[set]:
    if not paths:
        return None
    ids = set()
    for path in paths:
        with open(path) as f:
            ids.update(line.split()[0] for line in f if line.strip())
    return ids


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotation", type=Path, required=True, help="finegym_annotation_info_v1.x.json")
    parser.add_argument("--videos", type=Path, required=True, help="folder of full-length <yt_id>.mp4 videos")
    parser.add_argument("--out", type=Path, required=True, help="dataset root; clips go to OUT/subactions/")
    parser.add_argument("--only", type=Path, nargs="*", default=[], help="split files: trim only their clip ids")
    parser.add_argument("--short-side", type=int, default=None,
                        help="resize so the short side is this (recommended: 128, the authors' resolution)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with open(args.annotation) as f:
        annotation = json.load(f)
    wanted = read_ids(args.only)
    target_dir = args.out / "subactions"
    target_dir.mkdir(parents=True, exist_ok=True)
    spans = [s for s in element_spans(annotation) if wanted is None or s[0] in wanted]
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda x, **_: x  # noqa: E731
    done = skipped = failed = 0
    missing_sources: Dict[str, int] = {}
    for clip_id, yt_id, start, end in tqdm(spans, desc="trimming", unit="clip"):
        target = target_dir / f"{clip_id}.mp4"
        if target.exists():
            skipped += 1
            continue
        source = find_source(args.videos, yt_id)
        if source is None:
            missing_sources[yt_id] = missing_sources.get(yt_id, 0) + 1
            continue
        try:
            trim(source, target, start, end, args.short_side)
            done += 1
        except Exception as error:  # keep going; report at the end
            failed += 1
            logger.error("%s: %s", clip_id, error)
    logger.info("%d clips written, %d already there, %d failed", done, skipped, failed)
    if missing_sources:
        first = ", ".join(sorted(missing_sources)[:5])
        logger.warning("%d source videos missing (%d clips skipped), first: %s",
                       len(missing_sources), sum(missing_sources.values()), first)
    return 1 if failed or missing_sources else 0


if __name__ == "__main__":
    sys.exit(main())
