"""End-to-end training step: backbone + TAG-Head, per graph path (and precision / compile on CUDA).

    python -m benchmarks.training [--models demo r2plus1d_34] [--device cpu] [--batch 2] [--frames 32]
    python -m benchmarks.training --device cuda --amp bf16 --compile --channels-last   # on a GPU

One optimiser step (forward, cross-entropy, backward, Adam) of

* ``demo``: the tiny R(2+1)D + the synthgym_tiny head, 16x64x64 clips, batch 16;
* ``r2plus1d_34``: R(2+1)D-34 (IG-65M layout) + TAG-Head (FFN 1024, K=2, alpha 0.1), 112x112 crops,
  ``--frames`` frames (32 on CPU by default; the paper's FineGym setting is 64), batch ``--batch``;

with the head's graph stage run three ways: taggnn's default (PyG APPNP on the batch's cached sparse
adjacency), the structured O(N*C) propagation, and the authors' path (a per-forward
``Batch.from_data_list`` of per-clip ``Data`` objects + PyG APPNP on ``edge_index``). Reports the
median step time (the paths take turns within each repeat), clips/s, peak CUDA memory and each
path's time relative to the default.
"""
from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data
from torch_geometric.nn import APPNP

from taggnn.engine.trainer import fused_optimizer_supported
from taggnn.models import build_model

from ._common import (
    describe_environment,
    environment,
    format_table,
    peak_memory_mb,
    pick_device,
    synchronize,
    write_json,
)

MODELS = {
    "demo": dict(backbone="r2plus1d_tiny", classes=16, crop=64, frames=16, batch=16,
                 head=dict(num_heads=4, ffn_dim=256)),
    "r2plus1d_34": dict(backbone="r2plus1d_34", classes=99, crop=112, frames=32, batch=2,
                        head=dict(num_heads=8, ffn_dim=1024)),
}
PATHS = ("default (PyG APPNP, csr)", "structured", "authors (from_data_list + APPNP)")


class AuthorsRefiner(torch.nn.Module):
    """The authors' graph stage: per-forward ``Batch.from_data_list`` + PyG APPNP on ``edge_index``."""

    backend = "edge_index"  # the head attaches the edge list to its Batch
    is_linear = True

    def __init__(self, graph, K: int, alpha: float):
        super().__init__()
        self.graph = graph
        self.appnp = APPNP(K, alpha)

    def forward(self, batch: Batch) -> torch.Tensor:
        B, N = batch.num_graphs, self.graph.num_nodes
        x = batch.x.view(B, N, -1)
        edge_index = self.graph.edge_index_on(x.device)
        rebuilt = Batch.from_data_list([Data(x=x[b], edge_index=edge_index) for b in range(B)])
        return self.appnp(rebuilt.x, rebuilt.edge_index)


def make_model(name: str, path: str, frames: int, device: torch.device, channels_last: bool):
    spec = MODELS[name]
    backend = "structured" if path == "structured" else None
    model = build_model(spec["backbone"], spec["classes"], num_frames=frames, crop_size=spec["crop"],
                        backend=backend, **spec["head"])
    if path.startswith("authors"):
        refiner = model.head.refiner
        model.head.refiner = AuthorsRefiner(model.head.graph, refiner.K, refiner.alpha)
    model = model.to(device)
    if channels_last and device.type == "cuda":
        for module in model.modules():  # the 5-D convolution weights (other parameters have no such layout)
            if isinstance(module, torch.nn.Conv3d):
                module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last_3d)
    return model


def prepare(name: str, path: str, *, batch: int, frames: int, device: torch.device, amp: str, compile_: bool,
            channels_last: bool):
    """One training step of a model with the given graph path, as a callable (Adam as the trainer
    builds it: the fused kernel where the parameters allow it)."""
    spec = MODELS[name]
    torch.manual_seed(0)
    model = make_model(name, path, frames, device, channels_last)
    step_model = torch.compile(model) if compile_ else model
    groups = [{"params": list(model.parameters())}]
    optimizer = torch.optim.Adam(groups, lr=1e-4, fused=fused_optimizer_supported(groups) or None)
    video = torch.randn(batch, 3, frames, spec["crop"], spec["crop"], device=device)
    if channels_last and device.type == "cuda":
        video = video.contiguous(memory_format=torch.channels_last_3d)
    labels = torch.randint(spec["classes"], (batch,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            loss = F.cross_entropy(step_model(video).float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def measure_interleaved(steps: Dict[str, Callable[[], None]], device: torch.device, *, repeats: int,
                        warmup: int, max_seconds: float = 120.0) -> Dict[str, List[float]]:
    """Milliseconds per step of every path, the paths taking turns within each repeat so that a
    slow spell of a shared machine lands on all of them (not on whichever path ran then)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    synchronize(device)
    times: Dict[str, List[float]] = {path: [] for path in steps}
    spent = 0.0
    for _ in range(repeats):
        for path, step in steps.items():
            start = time.perf_counter()
            step()
            synchronize(device)
            elapsed = time.perf_counter() - start
            times[path].append(elapsed * 1e3)
            spent += elapsed
        if spent > max_seconds and len(next(iter(times.values()))) >= 3:
            break
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), metavar="PATH")
    parser.add_argument("--batch", type=int, default=None, help="R(2+1)D-34 batch (default: 2 on CPU, 8 on CUDA)")
    parser.add_argument("--frames", type=int, default=None, help="R(2+1)D-34 frames (default: 32 on CPU, 64 on CUDA)")
    parser.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--channels-last", action="store_true", help="channels_last_3d (CUDA)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when present)")
    parser.add_argument("--out", type=Path, default=Path("results/training.json"))
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    env = environment(device)
    rows: List[Dict[str, object]] = []
    for name in args.models:
        cuda = device.type == "cuda"
        batch = MODELS[name]["batch"] if name == "demo" else (args.batch or (8 if cuda else 2))
        frames = MODELS[name]["frames"] if name == "demo" else (args.frames or (64 if cuda else 32))
        steps = {path: prepare(name, path, batch=batch, frames=frames, device=device, amp=args.amp,
                               compile_=args.compile, channels_last=args.channels_last) for path in args.paths}
        times = measure_interleaved(steps, device, repeats=args.repeats, warmup=2 if args.compile else 1)
        default_ms = statistics.median(times[PATHS[0]]) if PATHS[0] in times else None
        for path in args.paths:
            ms = statistics.median(times[path])
            row = {"model": name, "path": path, "batch": batch, "frames": frames, "amp": args.amp,
                   "compile": args.compile, "ms_per_step": ms, "min_ms": min(times[path]),
                   "clips_per_s": batch / ms * 1e3, "vs_default": ms / default_ms if default_ms else None,
                   "peak_mem_mb": peak_memory_mb(steps[path], device), "runs": len(times[path])}
            rows.append(row)
            print(f"{name} / {path}: {ms:.0f} ms", flush=True)
    print(describe_environment(env))
    print(f"training step (forward + backward + Adam), amp {args.amp}, compile {args.compile}; "
          f"vs_default = step time / the default path's")
    print(format_table(rows, ["model", "path", "batch", "frames", "ms_per_step", "min_ms", "clips_per_s", "vs_default",
                              "peak_mem_mb"]))
    path = write_json(args.out, {"benchmark": "training", "environment": env, "settings": vars(args) | {
        "out": str(args.out)}, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
