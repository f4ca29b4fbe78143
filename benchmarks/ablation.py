"""Table 4 ablation (and further graph stages) on SynthGym, with paired seeds and 95% CIs: the
studies of ``benchmarks/studies/`` run through ``taggnn study run``.

    python -m benchmarks.ablation --protocol frozen   [--seeds 5] [--rows B B+TE Full ...] [--out DIR]
    python -m benchmarks.ablation --protocol finetune [--seeds 3] [--pretrained runs/synthgym_pretrain/backbone.pt]
    python -m benchmarks.ablation --protocol scratch  [--seeds 3]

is ``taggnn study run benchmarks/studies/<protocol>.yaml --out DIR`` with the rows, seeds and sizes
given here, followed by this table. Protocols (the tiny R(2+1)D on SynthGym, 16 classes in 4
groups, 16x64x64):

* ``scratch``: backbone and head trained from scratch on the fine classes (preset synthgym_tiny);
* ``finetune``: the backbone pretrained on SynthGym's coarse labels (preset synthgym_pretrain, on
  disjoint clips) is fine-tuned with the head trained from scratch, the paper's setting
  (preset synthgym_finetune: backbone at 0.1x the head's learning rate);
* ``frozen``: the same pretrained backbone, frozen: its token grids are computed once and only the
  head trains (preset synthgym_frozen, ``head_only: true``).

Every row runs with the same seeds (paired): a seed is ``train.seed`` (the model initialisation and
the data order), never the dataset (``data.seed`` stays 0). Each run is an ordinary ``taggnn train``
run (validation every epoch); the model after the last epoch is tested (``select: last``). For each
row: Top-1 and mean class accuracy as mean, std and 95% confidence interval (Student t), and the
paired difference to B and to B+TE with its interval; a difference whose interval contains 0 is
reported as "no difference". The "(Holm)" column adjusts the verdicts against B+TE for the number
of rows compared (Holm's step-down procedure, 5% family-wise error rate).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from taggnn.analysis import holm_adjust, paired_difference, summarize
from taggnn.study.rows import ROWS, STAGES, TABLE4, canonical_row  # noqa: F401  (re-exported)

from ._common import describe_environment, environment, format_table, pick_device, write_json

STUDIES = Path(__file__).parent / "studies"
PROTOCOLS = {"scratch": "scratch.yaml", "finetune": "finetune.yaml", "frozen": "frozen_table4.yaml"}
PRESETS = {"scratch": "synthgym_tiny", "finetune": "synthgym_finetune", "frozen": "synthgym_frozen"}


def study_text(protocol: str, *, rows: Optional[List[str]] = None, seeds: Optional[int] = None,
               train: Optional[int] = None, test: Optional[int] = None, epochs: Optional[int] = None,
               pretrained: Optional[Path] = None, overrides: List[str] = ()) -> str:
    """The study file of ``protocol`` (benchmarks/studies/) with the given changes."""
    spec = yaml.safe_load((STUDIES / PROTOCOLS[protocol]).read_text())
    sets = list(spec.get("set", []))

    def put(key: str, value) -> None:
        sets[:] = [item for item in sets if item.split("=", 1)[0] != key] + [f"{key}={value}"]

    if pretrained is not None and protocol != "scratch":
        put("model.weights", pretrained)
    for key, value in (("data.synth_train", train), ("data.synth_test", test), ("train.epochs", epochs)):
        if value is not None:
            put(key, value)
    for item in overrides:
        put(item.split("=", 1)[0], item.split("=", 1)[1])
    spec["set"] = sets
    if seeds is not None:
        spec["seeds"] = seeds
    if rows is not None:
        spec["rows"] = [canonical_row(row) for row in rows]
        spec.pop("extra_rows", None)
        if spec.get("reference") not in spec["rows"]:
            spec["reference"] = spec["rows"][0]
    return yaml.safe_dump(spec, sort_keys=False)


def runs_of(records: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """The finished records as :func:`tabulate` reads them (fractions, like the meters)."""
    return [{"row": r["row"], "seed": r["seed"], "top1": r["metrics"]["top1"] / 100, "mca": r["metrics"]["mca"] / 100,
             "seconds": r["wall_s"] or 0.0} for r in records if r["status"] == "done"]


def tabulate(runs: List[Dict[str, object]], rows: List[str], seeds) -> List[Dict[str, object]]:
    """Per row: mean [95% CI] of Top-1 and MCA, and paired differences to B and B+TE (with Holm's
    adjustment per reference); ``seeds`` is a count (0..n-1) or a list."""
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)

    def values(row, metric):
        by_seed = {r["seed"]: r[metric] for r in runs if r["row"] == row}
        return [100 * by_seed[s] for s in seeds]

    def interval(s):
        return f"{s['mean']:.1f} [{s['ci_low']:.1f}, {s['ci_high']:.1f}]"

    table = []
    for row in rows:
        top1, mca = summarize(values(row, "top1")), summarize(values(row, "mca"))
        entry = {"row": row, "top1 [95% CI]": interval(top1), "top1 std": top1["std"],
                 "mca [95% CI]": interval(mca), "summary_top1": top1, "summary_mca": mca,
                 "s/run": sum(r["seconds"] for r in runs if r["row"] == row) / len(seeds)}
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


def run_rows(protocol: str, rows: Dict[str, List[str]], seeds: int, *, study: Path, pretrained: Optional[Path],
             device, train: Optional[int] = None, test: Optional[int] = None, epochs: Optional[int] = None,
             workers: Optional[int] = None, overrides: List[str] = ()) -> Dict[str, object]:
    """Runs rows given as name -> overrides under a protocol's study file (seeds 0..seeds-1, the
    first row the reference); returns the finished runs, their table and the records."""
    from taggnn.study.executors import LocalExecutor, cpu_count
    from taggnn.study.runner import run_study
    from taggnn.study.spec import parse_spec

    spec = yaml.safe_load(study_text(protocol, seeds=seeds, train=train, test=test, epochs=epochs,
                                     pretrained=pretrained, overrides=[*overrides, f"train.device={device}"]))
    spec.update(rows=[], extra_rows=dict(rows), reference=next(iter(rows)))
    text = yaml.safe_dump(spec, sort_keys=False)
    workers = workers or cpu_count()
    with LocalExecutor(workers, threads=max(1, cpu_count() // workers)) as executor:
        records = run_study(parse_spec(text, source=f"{protocol} study"), study, executor=executor)
    runs = runs_of(records)
    return {"runs": runs, "table": tabulate(runs, list(rows), seeds), "records": records}


def main(argv=None) -> None:
    from taggnn.study.executors import LocalExecutor, cpu_count
    from taggnn.study.runner import run_study
    from taggnn.study.spec import parse_spec

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="frozen")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per row (default: the study file's)")
    parser.add_argument("--rows", nargs="+", default=None, metavar="ROW",
                        help=f"rows to run (default: the study file's); names or aliases of: {', '.join(ROWS)}")
    parser.add_argument("--all-rows", action="store_true", help="every named row")
    parser.add_argument("--train", type=int, default=None, help="training clips (default: the study file's)")
    parser.add_argument("--test", type=int, default=None, help="test clips (default: the study file's)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the study file's")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="further overrides of every run")
    parser.add_argument("--pretrained", type=Path, default=Path("runs/synthgym_pretrain/backbone.pt"),
                        help="backbone weights of synthgym_pretrain (finetune and frozen)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when present)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    parser.add_argument("--study", type=Path, default=None,
                        help="the study folder (default: runs/ablation_<protocol>); run again to resume")
    parser.add_argument("--out", type=Path, default=None, help="default: results/ablation_<protocol>.json")
    args = parser.parse_args(argv)
    for name, value in (("--seeds", args.seeds), ("--train", args.train), ("--test", args.test),
                        ("--epochs", args.epochs), ("--workers", args.workers)):
        if value is not None and value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    if args.protocol != "scratch" and not args.pretrained.is_file():
        parser.error(f"--pretrained {args.pretrained} not found: run `taggnn train --config synthgym_pretrain "
                     f"--out runs/synthgym_pretrain` first (it writes backbone.pt; synthgym_pretrain_quick in a few "
                     f"minutes)")
    device = pick_device(args.device)
    rows = list(ROWS) if args.all_rows else args.rows
    overrides = list(args.overrides) + [f"train.device={device}"]
    text = study_text(args.protocol, rows=rows, seeds=args.seeds, train=args.train, test=args.test,
                      epochs=args.epochs, pretrained=args.pretrained, overrides=overrides)
    spec = parse_spec(text, source=f"benchmarks/studies/{PROTOCOLS[args.protocol]}")
    workers = args.workers or cpu_count()
    with LocalExecutor(workers, threads=max(1, cpu_count() // workers)) as executor:
        records = run_study(spec, args.study or Path(f"runs/ablation_{args.protocol}"), executor=executor)
    runs = runs_of(records)
    table = tabulate(runs, list(spec.rows), spec.seeds)
    env = environment(device)
    config = spec.row_config(spec.reference)
    print(describe_environment(env))
    print(f"protocol {args.protocol} (preset {PRESETS[args.protocol]}), SynthGym 16 classes, train "
          f"{config.data.synth_train} / test {config.data.synth_test} clips, {config.train.epochs} epochs, "
          f"{len(spec.seeds)} paired seeds; Top-1 / MCA in %, mean [95% CI]; paired differences of Top-1 in points; "
          f"(Holm): verdict with Holm-adjusted p-values over all rows compared to the same reference (5% "
          f"family-wise)")
    columns = ["row", "top1 [95% CI]", "top1 std", "mca [95% CI]", "vs B", "vs B+TE", "vs B+TE (Holm)", "s/run"]
    print(format_table(table, columns))
    out = args.out or Path(f"results/ablation_{args.protocol}.json")
    path = write_json(out, {"benchmark": "ablation", "environment": env, "settings": {
        "protocol": args.protocol, "study": text, "rows": {row: spec.rows[row] for row in spec.rows}},
        "table": table, "runs": runs, "records": records})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
