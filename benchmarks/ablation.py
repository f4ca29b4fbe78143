"""Table 4 ablation (and issue [F]'s graph stages) on SynthGym, with paired seeds and 95% CIs.

    python -m benchmarks.ablation --protocol frozen   [--seeds 5] [--rows B B+TE Full ...]
    python -m benchmarks.ablation --protocol finetune [--seeds 3] [--pretrained runs/synthgym_pretrain/backbone.pt]
    python -m benchmarks.ablation --protocol scratch  [--seeds 3]

Protocols (the tiny R(2+1)D on SynthGym, 16 classes in 4 groups, 16x64x64):

* ``scratch``: backbone and head trained from scratch on the fine classes (preset synthgym_tiny);
* ``finetune``: the backbone pretrained on SynthGym's coarse labels (preset synthgym_pretrain, on
  disjoint clips) is fine-tuned with the head trained from scratch, the paper's setting
  (preset synthgym_finetune: backbone at 0.1x the head's learning rate);
* ``frozen``: the same pretrained backbone, frozen: its token grids are computed once and only the
  head trains (preset synthgym_frozen; what ``taggnn features`` + ``data.features`` do).

Every row runs with the same seeds (paired): a seed changes the model initialisation and the data
order, never the dataset (``data.seed`` stays 0). The model after the last epoch is tested (no model
selection). For each row: Top-1 and mean class accuracy as mean, std and 95% confidence interval
(Student t), and the paired difference to B and to B+TE with its interval; a difference whose
interval contains 0 is reported as "no difference". The "(Holm)" column adjusts the verdicts against
B+TE for the number of rows compared (Holm's step-down procedure, 5% family-wise error rate): with
ten rows, one per-comparison 95% interval in two excludes 0 by chance somewhere in the table.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from taggnn.analysis import holm_adjust, paired_difference, summarize
from taggnn.data.synthgym import SynthGym
from taggnn.engine.config import Config, load_config, set_value
from taggnn.engine.metrics import ClassificationMeter
from taggnn.engine.trainer import build_optimizer, build_scheduler
from taggnn.models import HeadOnly, build_model_from_config, head_options
from taggnn.nn import TAGHead

from ._common import describe_environment, environment, format_table, pick_device, write_json
from .synthgym import render_all, to_input

TABLE4 = {
    "B": dict(use_transformer=False, intra=False, temporal=False),
    "B+TE": dict(intra=False, temporal=False),
    "B+TE+IF-FC": dict(intra=True, temporal=False),
    "B+TE+TAT": dict(intra=False, temporal=True),
    "Full": dict(),
}
STAGES = {  # issue [F]: graph stages whose effect survives the readout
    "Full+attention": dict(readout="attention"),
    "Full+max": dict(readout="max"),
    "Full+ffn": dict(post_graph="ffn"),
    "Full+learned-w": dict(edge_weights="learned"),
    "Full+RGCN": dict(propagation="RGCNConv", num_graph_layers=1, graph_residual=True),
    "Full+GCNx2": dict(propagation="gcn", num_graph_layers=2),
    "Full (LS=0)": dict(layer_scale=0.0),  # issue [G]: a head that starts as the identity
    "B+TE (LS=0)": dict(intra=False, temporal=False, layer_scale=0.0),
}
ROWS = {**TABLE4, **STAGES}
DEFAULT_ROWS = list(TABLE4) + ["Full+attention", "Full+ffn", "Full+learned-w", "Full+RGCN", "Full (LS=0)"]
PRESETS = {"scratch": "synthgym_tiny", "finetune": "synthgym_finetune", "frozen": "synthgym_frozen"}
# Sized for 2 CPU cores (<= 15 min each): frozen runs only the head (~25 s a run on one thread),
# the others the whole model (~45-55 s a run at 400 clips x 3 epochs). The README's tables add rows
# and seeds.
DEFAULTS = {"frozen": dict(train=1600, test=640, seeds=4, epochs=None, rows=list(TABLE4)),
            "finetune": dict(train=400, test=400, seeds=3, epochs=3, rows=list(TABLE4)),
            "scratch": dict(train=400, test=400, seeds=3, epochs=3, rows=list(TABLE4))}


def row_config(protocol: str, options: Dict[str, object], *, epochs: Optional[int],
               pretrained: Optional[Path]) -> Config:
    config = load_config(PRESETS[protocol], [] if protocol == "scratch" else [f"model.weights={pretrained}"])
    for key, value in options.items():
        set_value(config, f"model.{key}", value)
    if epochs is not None:
        config.train.epochs = epochs
    return config


def fit_and_test(config: Config, model: torch.nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
                 test_x: torch.Tensor, test_y: torch.Tensor, *, seed: int, clips: bool,
                 device: torch.device) -> Tuple[Dict[str, float], float]:
    """Trains ``model`` with the config's optimiser, schedule and loss; tests the last epoch."""
    t, o = config.train, config.optim
    model.to(device)
    optimizer = build_optimizer(config, model)
    steps_per_epoch = math.ceil(len(train_x) / t.batch_size)
    scheduler = build_scheduler(config, optimizer, steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    prepare = (lambda x: to_input(x).to(device)) if clips else (lambda x: x.float().to(device))
    start = time.perf_counter()
    model.train()
    for _ in range(t.epochs):
        order = torch.randperm(len(train_x), generator=generator)
        for i in range(0, len(order), t.batch_size):
            index = order[i:i + t.batch_size]
            loss = F.cross_entropy(model(prepare(train_x[index])), train_y[index].to(device),
                                   label_smoothing=o.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if o.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            optimizer.step()
            scheduler.step()
    seconds = time.perf_counter() - start
    model.eval()
    meter = ClassificationMeter(16)
    with torch.no_grad():
        for i in range(0, len(test_x), 64):
            meter.update(model(prepare(test_x[i:i + 64])).float().cpu(), test_y[i:i + 64])
    return meter.compute("present"), seconds


@torch.no_grad()
def backbone_features(config: Config, clips: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Token grids of the (frozen, pretrained) backbone for pre-rendered clips."""
    backbone = build_model_from_config(config, 16).backbone.to(device).eval()
    return torch.cat([backbone(to_input(clips[i:i + 64]).to(device)).cpu() for i in range(0, len(clips), 64)])


def run_protocol(protocol: str, rows: Union[List[str], Dict[str, Dict[str, object]]], seeds: int, *, train: int,
                 test: int, epochs: Optional[int], pretrained: Optional[Path], device: torch.device,
                 log=print) -> Dict[str, object]:
    """Trains and tests every row (a name of :data:`ROWS`, or a mapping name -> model options) with
    seeds ``0 .. seeds-1``; returns the runs and the table of :func:`tabulate`."""
    rows = {row: ROWS[row] for row in rows} if not isinstance(rows, dict) else rows
    train_set, test_set = SynthGym("train", length=train), SynthGym("test", length=test)
    train_clips, test_clips = render_all(train_set), render_all(test_set)
    train_y, test_y = torch.tensor(train_set.labels), torch.tensor(test_set.labels)
    features = None
    if protocol == "frozen":
        base = row_config("frozen", {}, epochs=epochs, pretrained=pretrained)
        features = (backbone_features(base, train_clips, device), backbone_features(base, test_clips, device))
    runs = []
    for row, options in rows.items():
        for seed in range(seeds):
            config = row_config(protocol, options, epochs=epochs, pretrained=pretrained)
            config.train.seed = seed
            torch.manual_seed(seed)
            if protocol == "frozen":
                train_f, test_f = features
                model = HeadOnly(TAGHead(train_f.shape[1], 16, tuple(train_f.shape[2:]), **head_options(config.model)))
                result, seconds = fit_and_test(config, model, train_f, train_y, test_f, test_y, seed=seed,
                                               clips=False, device=device)
            else:
                model = build_model_from_config(config, 16)
                result, seconds = fit_and_test(config, model, train_clips, train_y, test_clips, test_y, seed=seed,
                                               clips=True, device=device)
            runs.append({"row": row, "seed": seed, "top1": result["top1"], "mca": result["mca"], "seconds": seconds})
            log(f"{protocol} {row} seed {seed}: top-1 {100 * result['top1']:.1f}%, {seconds:.0f} s")
    return {"runs": runs, "table": tabulate(runs, list(rows), seeds)}


def tabulate(runs: List[Dict[str, object]], rows: List[str], seeds: int) -> List[Dict[str, object]]:
    def values(row, metric):
        by_seed = {r["seed"]: r[metric] for r in runs if r["row"] == row}
        return [100 * by_seed[s] for s in range(seeds)]

    def interval(s):
        return f"{s['mean']:.1f} [{s['ci_low']:.1f}, {s['ci_high']:.1f}]"

    table = []
    for row in rows:
        top1, mca = summarize(values(row, "top1")), summarize(values(row, "mca"))
        entry = {"row": row, "top1 [95% CI]": interval(top1), "top1 std": top1["std"],
                 "mca [95% CI]": interval(mca), "summary_top1": top1, "summary_mca": mca,
                 "s/run": sum(r["seconds"] for r in runs if r["row"] == row) / seeds}
        for ref in ("B", "B+TE"):
            if ref in rows and ref != row:
                d = paired_difference(values(row, "top1"), values(ref, "top1"))
                entry[f"vs {ref}"] = f"{d['mean']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}] {d['verdict']}"
                entry[f"diff_{ref}"] = d
        table.append(entry)
    # Holm's adjustment over each family (every row against the same reference): the verdict
    # that holds with a 5% family-wise error rate however many rows the table has.
    for ref in ("B", "B+TE"):
        members = [entry for entry in table if f"diff_{ref}" in entry]
        for entry, adjusted in zip(members, holm_adjust([e[f"diff_{ref}"]["p"] for e in members])):
            d = entry[f"diff_{ref}"]
            d["p_holm"] = adjusted
            verdict = "no difference" if not adjusted < 0.05 else ("higher" if d["mean"] > 0 else "lower")
            entry[f"vs {ref} (Holm)"] = f"{verdict} (p {adjusted:.2g})"
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=sorted(PRESETS), default="frozen")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per row (default: per protocol)")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=None, metavar="ROW",
                        help=f"rows to run (default: per protocol); choices: {', '.join(ROWS)}")
    parser.add_argument("--all-rows", action="store_true", help="every row above")
    parser.add_argument("--train", type=int, default=None, help="training clips (default: per protocol)")
    parser.add_argument("--test", type=int, default=None, help="test clips (default: per protocol)")
    parser.add_argument("--epochs", type=int, default=None, help="default: per protocol (frozen: the preset's 6)")
    parser.add_argument("--merge", type=Path, nargs="+", default=[],
                        help="JSON files of earlier runs of this protocol with the same seeds and settings: their "
                             "rows join the table (runs are deterministic per seed, so they stay paired)")
    parser.add_argument("--pretrained", type=Path, default=Path("runs/synthgym_pretrain/backbone.pt"),
                        help="backbone weights of synthgym_pretrain (finetune and frozen)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when present)")
    parser.add_argument("--out", type=Path, default=None, help="default: results/ablation_<protocol>.json")
    args = parser.parse_args(argv)
    defaults = DEFAULTS[args.protocol]
    rows = list(ROWS) if args.all_rows else (args.rows or defaults["rows"])
    seeds, train, test = args.seeds or defaults["seeds"], args.train or defaults["train"], args.test or defaults["test"]
    for name, value in (("--seeds", seeds), ("--train", train), ("--test", test), ("--epochs", args.epochs)):
        if value is not None and value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    if args.protocol != "scratch" and not args.pretrained.is_file():
        parser.error(f"--pretrained {args.pretrained} not found: run `taggnn train --config synthgym_pretrain "
                     f"--out runs/synthgym_pretrain` first (it writes backbone.pt)")
    device = pick_device(args.device)
    env = environment(device)
    epochs = args.epochs or defaults["epochs"] or load_config(PRESETS[args.protocol]).train.epochs
    result = run_protocol(args.protocol, rows, seeds, train=train, test=test, epochs=epochs,
                          pretrained=args.pretrained, device=device)
    for path in args.merge:
        earlier = json.loads(Path(path).read_text())
        keep = [r for r in earlier["runs"] if r["row"] not in rows]
        order = list(dict.fromkeys([r["row"] for r in keep])) + list(rows)
        known = list(ROWS)  # the table in the canonical row order, however the runs were split
        order.sort(key=lambda row: known.index(row) if row in known else len(known))
        result = {"runs": keep + result["runs"], "table": None}
        result["table"] = tabulate(result["runs"], order, seeds)
        rows = {row: ROWS.get(row, earlier["settings"]["rows"].get(row, {})) for row in order}
    print(describe_environment(env))
    print(f"protocol {args.protocol} (preset {PRESETS[args.protocol]}), SynthGym 16 classes, train {train} / test "
          f"{test} clips, {epochs} epochs, {seeds} paired seeds; Top-1 / MCA in %, mean [95% CI]; paired "
          f"differences of Top-1 in points; (Holm): verdict with Holm-adjusted p-values over all rows "
          f"compared to the same reference (5% family-wise)")
    columns = ["row", "top1 [95% CI]", "top1 std", "mca [95% CI]", "vs B", "vs B+TE", "vs B+TE (Holm)", "s/run"]
    print(format_table(result["table"], columns))
    out = args.out or Path(f"results/ablation_{args.protocol}.json")
    path = write_json(out, {"benchmark": "ablation", "environment": env, "settings": {
        "protocol": args.protocol, "preset": PRESETS[args.protocol], "train": train, "test": test, "epochs": epochs,
        "seeds": seeds, "rows": {row: ROWS[row] for row in rows}, "pretrained": str(args.pretrained)},
        "table": result["table"], "runs": result["runs"]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
