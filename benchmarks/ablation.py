"""The paper's Table 4 ablation on SynthGym: B, B+TE, B+TE+IF-FC, B+TE+TAT, Full.

    python -m benchmarks.ablation [--seeds 3] [--epochs 4] [--train 800] [--test 400] [--propagation]

Each row trains the tiny R(2+1)D with the corresponding TAG-Head switches on SynthGym (16 classes
in 4 groups, 16x64x64) from scratch, for ``--seeds`` seeds, and reports test Top-1 and mean class
accuracy (classes present in the ground truth) as mean +/- std, with the wall time.
``--propagation`` adds rows with GCN / GAT stacks instead of APPNP and a K / alpha sweep.
The default run is sized for 2 CPU cores (about 15-20 minutes): fewer clips and epochs than
the SynthGym benchmark, so absolute accuracies are lower; compare rows with each other. SynthGym
is not FineGym: the ranking of rows here says nothing certain about the paper's datasets.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from taggnn.data.synthgym import SynthGym
from taggnn.engine.metrics import ClassificationMeter

from ._common import describe_environment, environment, format_table, write_json
from .synthgym import render_all, train_and_test

ROWS = {
    "B": dict(use_transformer=False, intra=False, temporal=False),
    "B+TE": dict(use_transformer=True, intra=False, temporal=False),
    "B+TE+IF-FC": dict(use_transformer=True, intra=True, temporal=False),
    "B+TE+TAT": dict(use_transformer=True, intra=False, temporal=True),
    "Full (APPNP K=2, a=0.1)": dict(use_transformer=True, intra=True, temporal=True),
}
PROPAGATION_ROWS = {
    "Full, GCN x2": dict(propagation="gcn", num_graph_layers=2),
    "Full, GAT x2": dict(propagation="gat", num_graph_layers=2, graph_heads=4),
    "Full, APPNP K=10": dict(K=10),
    "Full, APPNP a=0.2": dict(alpha=0.2),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--propagation", action="store_true", help="also GCN/GAT stacks and K/alpha variants")
    parser.add_argument("--full", action="store_true", help="1600/640 clips, 6 epochs, propagation rows")
    parser.add_argument("--out", type=Path, default=Path("results/ablation.json"))
    args = parser.parse_args(argv)
    if args.full:
        args.train, args.test, args.epochs, args.propagation = 1600, 640, 6, True
    env = environment(torch.device("cpu"))
    train_set, test_set = SynthGym("train", length=args.train), SynthGym("test", length=args.test)
    train_clips, test_clips = render_all(train_set), render_all(test_set)
    train_labels, test_labels = torch.tensor(train_set.labels), torch.tensor(test_set.labels)

    rows_to_run = dict(ROWS)
    if args.propagation:
        rows_to_run.update({name: dict(ROWS["Full (APPNP K=2, a=0.1)"], **opts) for name, opts in PROPAGATION_ROWS.items()})
    table, raw = [], []
    for name, options in rows_to_run.items():
        top1, mca, seconds = [], [], []
        for seed in range(args.seeds):
            start = time.perf_counter()
            logits, _ = train_and_test(train_clips, train_labels, test_clips, test_labels, static=False,
                                       epochs=args.epochs, batch_size=args.batch_size, seed=seed, **options)
            meter = ClassificationMeter(16)
            meter.update(logits, test_labels)
            result = meter.compute("present")
            top1.append(result["top1"])
            mca.append(result["mca"])
            seconds.append(time.perf_counter() - start)
            raw.append({"row": name, "seed": seed, "top1": result["top1"], "mca": result["mca"],
                        "seconds": seconds[-1], "options": options})
        spread = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        table.append({"row": name, "top1": f"{100 * statistics.mean(top1):.1f} +/- {100 * spread(top1):.1f}",
                      "mca": f"{100 * statistics.mean(mca):.1f} +/- {100 * spread(mca):.1f}",
                      "seconds_per_run": statistics.mean(seconds)})
        print(f"{name}: done", flush=True)
    print(describe_environment(env))
    print(f"SynthGym 16 classes, train {args.train} / test {args.test} clips, {args.epochs} epochs, "
          f"{args.seeds} seeds, tiny R(2+1)D from scratch; Top-1 and MCA (present) in %, mean +/- std")
    print(format_table(table, ["row", "top1", "mca", "seconds_per_run"]))
    path = write_json(args.out, {"benchmark": "ablation", "environment": env, "settings": {
        "train": args.train, "test": args.test, "epochs": args.epochs, "seeds": args.seeds,
        "batch_size": args.batch_size}, "rows": table, "runs": raw})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
