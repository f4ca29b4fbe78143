"""Everything that needs a GPU, in one call (``make bench-cuda``), within 8 minutes.

    python -m benchmarks.cuda [--out results/cuda] [--budget 480] [--steps NAME ...]

On a machine with a CUDA GPU it runs, writing every table and JSON under ``--out`` (default
``$OUT`` when set, else ``results/cuda``):

1. ``pytest -m cuda``: back-end equality with PyG APPNP on CUDA, a bf16 and an fp16 training step,
   an NCCL process group running every trainer collective;
2. ``benchmarks.propagation --device cuda`` (back-ends vs the authors' path);
3. ``benchmarks.oversmoothing --device cuda`` (APPNP vs GCN/GAT latency on CUDA);
4. ``benchmarks.training --device cuda``: R(2+1)D-34 + TAG-Head at the paper's setting (batch 8,
   64x112x112) per graph path, in fp32, bf16, bf16 + channels_last_3d and bf16 + torch.compile.

Each step gets a share of the time budget and is stopped when it overruns (its log says so);
the summary lists what finished. ``--steps`` runs some of them (by name), sharing the budget.
Without CUDA it says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STEPS = [
    ("pytest -m cuda", ["-m", "pytest", "-q", "-m", "cuda", "tests/cuda"], 90),
    ("propagation", ["-m", "benchmarks.propagation", "--device", "cuda", "--quick"], 45),
    ("oversmoothing", ["-m", "benchmarks.oversmoothing", "--device", "cuda"], 90),
    ("training fp32", ["-m", "benchmarks.training", "--device", "cuda", "--models", "r2plus1d_34"], 75),
    ("training bf16", ["-m", "benchmarks.training", "--device", "cuda", "--models", "r2plus1d_34", "--amp", "bf16"],
     60),
    ("training bf16 channels_last", ["-m", "benchmarks.training", "--device", "cuda", "--models", "r2plus1d_34",
                                     "--amp", "bf16", "--channels-last", "--paths", "default (PyG APPNP, csr)"], 40),
    ("training bf16 compile", ["-m", "benchmarks.training", "--device", "cuda", "--models", "r2plus1d_34", "--amp",
                               "bf16", "--compile", "--paths", "default (PyG APPNP, csr)"], 160),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "results/cuda"))
    parser.add_argument("--budget", type=float, default=480, help="seconds for everything (default: 8 minutes)")
    parser.add_argument("--steps", nargs="+", choices=[name for name, _, _ in STEPS], metavar="NAME",
                        help="run only these steps (default: all): " + ", ".join(repr(n) for n, _, _ in STEPS))
    args = parser.parse_args(argv)
    steps = [step for step in STEPS if args.steps is None or step[0] in args.steps]
    import torch

    if not torch.cuda.is_available():
        print("benchmarks.cuda: no CUDA GPU is present on this machine: nothing to run (exit 0)")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    scale = args.budget / sum(limit for _, _, limit in steps)
    summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": []}
    print(f"GPU: {summary['device']}, budget {args.budget:.0f} s", flush=True)
    started = time.perf_counter()
    for name, command, limit in steps:
        slug = name.replace(" ", "_")
        extra = [] if name.startswith("pytest") else ["--out", str(args.out / f"{slug}.json")]
        log = args.out / f"{slug}.log"
        step_start = time.perf_counter()
        with open(log, "w") as handle:
            try:
                result = subprocess.run([sys.executable, *command, *extra], stdout=handle, stderr=subprocess.STDOUT,
                                        timeout=limit * scale)
                status = "ok" if result.returncode == 0 else f"exit {result.returncode}"
            except subprocess.TimeoutExpired:
                status = f"stopped after {limit * scale:.0f} s"
                handle.write(f"\n[benchmarks.cuda] {status}\n")
        seconds = time.perf_counter() - step_start
        summary["steps"].append({"step": name, "status": status, "seconds": seconds, "log": str(log)})
        print(f"{name}: {status} ({seconds:.0f} s) -> {log}", flush=True)
        tail = log.read_text().splitlines()[-25:]
        print("\n".join(f"    {line}" for line in tail), flush=True)
    summary["total_seconds"] = time.perf_counter() - started
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out / 'summary.json'} ({summary['total_seconds']:.0f} s)")
    return 0 if all(step["status"] == "ok" for step in summary["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
