"""Wall time of a head-only training run on cached features, as a user runs it from the CLI.

    python -m benchmarks.headonly --features runs/features [--repeats 3] [--variants default torch-dropout]

Each run is a fresh process (``python -m taggnn train --config synthgym_frozen --set
data.features=DIR --no-progress``), so the figure includes start-up (imports, loading the
features), 6 epochs of training with a validation after each, the test and the written outputs:
the figure behind the target "a head-only SynthGym run in under 30 s on 2 cores". Variants run
interleaved (default, then each other variant, repeated), so that a slow spell of a shared
machine hits all of them. ``--features`` must hold ``taggnn features --config synthgym_frozen``
output (the pretrained backbone's tokens of 1600 / 320 / 640 clips).

Variants:

* ``default``: the preset as shipped;
* ``torch-dropout``: ``model.fast_cpu_dropout=false`` (PyTorch's CPU dropout masks);
* ``structured``: ``model.backend=structured`` (the O(N*C) propagation instead of PyG's APPNP).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

from ._common import describe_environment, environment, format_table, write_json

VARIANTS: Dict[str, List[str]] = {
    "default": [],
    "torch-dropout": ["model.fast_cpu_dropout=false"],
    "structured": ["model.backend=structured"],
}


ONE_SEED = ("test_top1: one seed's (every repeat trains with the same train.seed), a check that the run "
            "trained, not an accuracy figure: compare accuracies over seeds with benchmarks.ablation")


def run_once(features: Path, overrides: List[str], extra: List[str], out: Path) -> Dict[str, object]:
    command = [sys.executable, "-m", "taggnn", "train", "--config", "synthgym_frozen", "--set",
               f"data.features={features}", "--out", str(out), "--overwrite", "--no-progress"]
    for item in overrides + extra:
        command += ["--set", item]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"run failed (exit {done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    epochs = [record["epoch_s"] for record in summary["history"]]
    return {"wall_s": wall, "train_s": sum(epochs), "epochs": len(epochs), "test_top1": summary["test"]["top1"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, required=True,
                        help="a `taggnn features --config synthgym_frozen` folder")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every run (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("results/headonly.json"))
    args = parser.parse_args(argv)
    if not (args.features / "train.pt").is_file():
        raise SystemExit(f"{args.features} holds no cached features; write them with "
                         f"taggnn features --config synthgym_frozen --out {args.features}")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    env = environment(torch.device("cpu"))
    runs: Dict[str, List[Dict[str, object]]] = {name: [] for name in args.variants}
    scratch = Path(tempfile.mkdtemp(prefix="taggnn_headonly_"))
    try:
        for repeat in range(args.repeats):
            for name in args.variants:
                result = run_once(args.features, VARIANTS[name], args.overrides, scratch / name)
                runs[name].append(result)
                print(f"{name} run {repeat + 1}: {result['wall_s']:.1f} s wall, test top-1 "
                      f"{result['test_top1']:.4f}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = []
    for name, results in runs.items():
        walls = [r["wall_s"] for r in results]
        rows.append({"variant": name, "overrides": " ".join(VARIANTS[name]) or "(none)",
                     "wall_s_median": statistics.median(walls), "wall_s_min": min(walls), "wall_s_max": max(walls),
                     "train_s_median": statistics.median(r["train_s"] for r in results),
                     "test_top1": statistics.mean(r["test_top1"] for r in results), "runs": len(results)})
    print(describe_environment(env))
    print(f"head-only run from the CLI (synthgym_frozen on {args.features}, fresh process each, "
          f"{args.repeats} interleaved repeats); train_s = sum of epoch times (training only)")
    print(ONE_SEED)
    print(format_table(rows, ["variant", "overrides", "wall_s_median", "wall_s_min", "wall_s_max", "train_s_median",
                              "test_top1", "runs"]))
    path = write_json(args.out, {"benchmark": "headonly", "environment": env,
                                 "settings": {"features": str(args.features), "repeats": args.repeats,
                                              "variants": args.variants, "overrides": args.overrides},
                                 "note": ONE_SEED,
                                 "rows": rows, "runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
