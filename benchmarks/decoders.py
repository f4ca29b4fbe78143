"""Decoding time of ``load_clip`` with PyAV and with TorchCodec (``data.decoder``).

    python -m benchmarks.decoders [--frames 600] [--width 640] [--height 360] [--gops 12,60,250]

Writes one H.264 clip per GOP size (key frame every ``g`` frames; ``--frames`` frames of a
moving blob over noise at ``--width`` x ``--height``) into a temporary folder and times
:func:`~taggnn.data.load_clip` on it, file opening included, as a data loader calls it:

* ``sparse``: ``--sparse`` frames sampled uniformly over the clip (16: the paper's clip);
* ``dense``: ``--dense`` frames sampled uniformly (every few frames);
* ``window``: ``--window`` consecutive frames from the middle of the clip.

Both decode with ``--threads`` threads (0: FFmpeg's choice). The decoders alternate call by
call (PyAV, TorchCodec, PyAV, ...) so that a change in the machine's load hits both alike;
each figure is the best of ``--repeats`` calls. Each row also says whether both returned
identical frames. Without TorchCodec (or FFmpeg's shared
libraries) it times PyAV alone and says why.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from taggnn.data import load_clip
from taggnn.data.decoders import torchcodec_problem

from ._common import describe_environment, environment, format_table, write_json


def make_clip(path: Path, frames: int, height: int, width: int, gop: int, seed: int = 0) -> Path:
    """A clip of a moving textured blob over scrolling noise, key frame every ``gop`` frames."""
    import av

    rng = np.random.default_rng(seed)
    background = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast", "g": str(gop), "keyint_min": str(gop),
                          "sc_threshold": "0"}
        for t in range(frames):
            frame = np.roll(background, t * 2, axis=1)
            mask = ((xx - width * (0.1 + 0.8 * t / frames)) ** 2 + (yy - height / 2) ** 2) < (height / 5) ** 2
            frame[mask] = (200, 80 + t % 100, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def samplings(frames: int, sparse: int, dense: int, window: int) -> Dict[str, dict]:
    """``load_clip`` arguments of each sampling."""
    start = max(0, frames // 2 - window // 2)
    return {f"sparse {sparse} uniform": {"num_frames": sparse},
            f"dense {dense} uniform": {"num_frames": dense},
            f"window {window} consecutive": {"num_frames": window,
                                             "indices": list(range(start, min(frames, start + window)))}}


def best_times(path: Path, arguments: dict, decoders: Sequence[str], repeats: int) -> Dict[str, float]:
    """Best wall time (ms) of each decoder, the decoders interleaved call by call."""
    times: Dict[str, List[float]] = {decoder: [] for decoder in decoders}
    for decoder in decoders:  # warm-up: libraries loaded, file in the page cache
        load_clip(path, decoder=decoder, **arguments)
    for _ in range(repeats):
        for decoder in decoders:
            start = time.perf_counter()
            load_clip(path, decoder=decoder, **arguments)
            times[decoder].append((time.perf_counter() - start) * 1e3)
    return {decoder: min(values) for decoder, values in times.items()}


def versions() -> Dict[str, object]:
    import av

    info: Dict[str, object] = {"av": av.__version__, "av_ffmpeg": getattr(av, "ffmpeg_version_info", None)}
    if torchcodec_problem() is None:
        import torchcodec
        from torchcodec._core import get_ffmpeg_library_versions

        info["torchcodec"] = torchcodec.__version__
        info["torchcodec_ffmpeg"] = get_ffmpeg_library_versions().get("ffmpeg_version")
    else:
        info["torchcodec"] = None
        info["torchcodec_problem"] = torchcodec_problem()
    return info


def main(argv=None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--gops", default="12,60,250", help="key-frame intervals, one clip each")
    parser.add_argument("--sparse", type=int, default=16)
    parser.add_argument("--dense", type=int, default=128)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="calls per decoder and setting (the best counts)")
    parser.add_argument("--threads", type=int, default=0, help="decoding threads of both (0: FFmpeg's choice)")
    parser.add_argument("--out", type=Path, default=Path("results/decoders.json"))
    args = parser.parse_args(argv)
    gops = [int(g) for g in args.gops.split(",") if g.strip()]
    decoders = ["pyav"] + (["torchcodec"] if torchcodec_problem() is None else [])
    env = environment(torch.device("cpu"))
    env.update(versions())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for gop in gops:
            path = make_clip(Path(tmp) / f"gop{gop}.mp4", args.frames, args.height, args.width, gop)
            for name, arguments in samplings(args.frames, args.sparse, args.dense, args.window).items():
                arguments["threads"] = args.threads
                best = best_times(path, arguments, decoders, args.repeats)
                row = {"gop": gop, "sampling": name, "pyav_ms": best["pyav"]}
                if "torchcodec" in best:
                    same = torch.equal(load_clip(path, **arguments), load_clip(path, decoder="torchcodec", **arguments))
                    row.update(torchcodec_ms=best["torchcodec"], speedup=best["pyav"] / best["torchcodec"],
                               identical=same)
                rows.append(row)
    print(describe_environment(env))
    print(f"versions: PyAV {env['av']} (FFmpeg {env['av_ffmpeg']}), TorchCodec "
          + (f"{env['torchcodec']} (system FFmpeg {env['torchcodec_ffmpeg']})" if env["torchcodec"]
             else f"not usable ({env['torchcodec_problem']})"))
    print(f"one H.264 clip per GOP size: {args.frames} frames at {args.width}x{args.height}; best of "
          f"{args.repeats} interleaved calls of load_clip (open + decode + RGB), decode threads: "
          f"{args.threads or 'FFmpeg' + chr(39) + 's choice'}")
    print(format_table(rows, ["gop", "sampling", "pyav_ms", "torchcodec_ms", "speedup", "identical"]))
    path = write_json(args.out, {"benchmark": "decoders", "environment": env,
                                 "settings": {"frames": args.frames, "resolution": [args.width, args.height],
                                              "gops": gops, "sparse": args.sparse, "dense": args.dense,
                                              "window": args.window, "repeats": args.repeats,
                                              "codec": "libx264 crf 23 veryfast", "threads": args.threads or "auto"},
                                 "rows": rows})
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
