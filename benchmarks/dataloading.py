"""Clip loading throughput: uniform sampling vs decoding every frame, and DataLoader workers.

    python -m benchmarks.dataloading [--clips 12] [--height 256] [--width 456]

Writes ``--clips`` H.264 clips of 25-150 frames (FineGym element clips are mostly 25-140
frames) at a FineGym-like resolution into a temporary folder, then measures

* full decode: every frame decoded and converted to RGB (what a naive loader does);
* ``load_clip`` uniform sampling of 32 and 64 frames (decodes once, converts only the kept
  frames); target: at most 1.2x the time of one full decode;
* a ``VideoFolder`` + eval transform (112 crop) through ``DataLoader`` with 0, 1 and 2 workers;
* the same loader on 16-frame 64x64 clips (the CPU demo's input size) and, for reference, the
  training step of the CPU demo model (tiny R(2+1)D + TAG-Head, 16x64x64, batch 8): the loader
  should deliver clips at least that fast.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch
from torch.utils.data import DataLoader

from taggnn.data import VideoFolder, eval_transform, load_clip, write_video

from ._common import describe_environment, environment, format_table, pick_device, write_json


def make_clips(folder: Path, count: int, height: int, width: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = np.linspace(25, 150, count).round().astype(int)
    paths = []
    (folder / "class_a").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    for i, length in enumerate(lengths):
        # a moving textured blob over noise: realistic enough for the codec to work
        background = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        frames = np.empty((length, height, width, 3), np.uint8)
        for t in range(length):
            cx, cy = width * (0.2 + 0.6 * t / length), height * 0.5
            mask = ((xx - cx) ** 2 + (yy - cy) ** 2) < (height / 5) ** 2
            frame = np.roll(background, t * 2, axis=1)
            frame[mask] = (200, 80 + t % 100, 40)
            frames[t] = frame
        path = folder / "class_a" / f"clip_{i:03d}.mp4"
        write_video(path, frames, fps=25)
        paths.append(path)
    return paths, lengths


def full_decode(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for frame in container.decode(stream) if frame.to_ndarray(format="rgb24") is not None)


def clips_per_second(methods: Dict[str, Callable], items, repeats: int = 3) -> Dict[str, float]:
    """Clips per second of each method over ``items``: the best of ``repeats`` passes, the
    methods interleaved within each pass so that a slow spell of a shared machine does not
    land on one method only."""
    best = {name: float("inf") for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            for item in items:
                fn(item)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: len(items) / seconds for name, seconds in best.items()}


def loader_rate(dataset, workers: int, batch_size: int = 4) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, persistent_workers=False)
    start = time.perf_counter()
    count = sum(batch[0].shape[0] for batch in loader)
    return count / (time.perf_counter() - start)


def demo_step_rate(batch_size: int = 8, steps: int = 5, device: torch.device = torch.device("cpu")) -> float:
    from taggnn.models import build_model

    torch.manual_seed(0)
    model = build_model("r2plus1d_tiny", 12, num_frames=16, crop_size=64, num_heads=4, ffn_dim=256).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    video = torch.randn(batch_size, 3, 16, 64, 64, device=device)
    labels = torch.randint(12, (batch_size,), device=device)

    def step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(video), labels).backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=456)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the clips (the best counts)")
    parser.add_argument("--out", type=Path, default=Path("results/dataloading.json"))
    parser.add_argument("--device", default="cpu", help="where the demo training step (the consumer) runs")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    env = environment(device)
    with tempfile.TemporaryDirectory() as tmp:
        paths, lengths = make_clips(Path(tmp), args.clips, args.height, args.width)
        rates = clips_per_second({"full": full_decode, 32: lambda p: load_clip(p, 32),
                                  64: lambda p: load_clip(p, 64)}, paths, repeats=args.repeats)
        full = rates["full"]
        rows = [{"method": "full decode (every frame to RGB)", "clips_per_s": full, "time_vs_full_decode": 1.0}]
        for frames in (32, 64):
            rows.append({"method": f"load_clip uniform {frames}", "clips_per_s": rates[frames],
                         "time_vs_full_decode": full / rates[frames]})
        grid = []
        for workers in (0, 1, 2, 4):
            for threads in (1, 2, 0):
                dataset = VideoFolder(tmp, num_frames=32, transform=eval_transform(112), decode_threads=threads)
                rate = loader_rate(dataset, workers)
                grid.append((rate, workers, threads))
                rows.append({"method": f"DataLoader 32 frames + transform, workers={workers}, "
                                       f"decode_threads={threads or 'auto'}", "clips_per_s": rate,
                             "time_vs_full_decode": full / rate})
        best = max(grid)
        # The CPU demo's own input: 16 frames of 64x64 (SynthGym written to mp4).
        small = Path(tmp) / "small"
        make_clips(small, args.clips, 64, 64, seed=1)
        for workers in (0, 1, 2):
            dataset = VideoFolder(small, num_frames=16, transform=eval_transform(64, short_side=64))
            rate = loader_rate(dataset, workers, batch_size=8)
            rows.append({"method": f"DataLoader 16x64x64 (demo input), workers={workers}", "clips_per_s": rate})
        demo = demo_step_rate(device=device)
        rows.append({"method": "CPU demo training step (consumer), batch 8", "clips_per_s": demo})
    print(describe_environment(env))
    print(f"{args.clips} clips of {lengths.min()}-{lengths.max()} frames at {args.width}x{args.height}, H.264")
    print(format_table(rows, ["method", "clips_per_s", "time_vs_full_decode"]))
    print(f"best on this machine ({os.cpu_count()} cores): data.num_workers={best[1]} "
          f"data.decode_threads={best[2]} ({best[0]:.1f} clips/s of 32 frames at {args.width}x{args.height})")
    path = write_json(args.out, {"benchmark": "dataloading", "environment": env,
                                 "settings": {"clips": args.clips, "repeats": args.repeats,
                                              "frames": [int(lengths.min()), int(lengths.max())],
                                              "resolution": [args.width, args.height]}, "rows": rows,
                                 "best": {"num_workers": best[1], "decode_threads": best[2], "clips_per_s": best[0]}})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
