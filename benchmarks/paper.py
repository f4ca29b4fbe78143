"""One command per table and figure of the paper: prints (``--dry-run``) or runs the exact commands.

    python -m benchmarks.paper --table all --dry-run --data-root /data
    python -m benchmarks.paper --table 4 --dataset haa500 --data-root /data/haa500
    python -m benchmarks.paper --figure 3 --dataset gym99 --data-root /data/finegym

The datasets (FineGym, HAA500) and the IG-65M / Kinetics weights must be present locally; see
``datasets/finegym/README.md`` and ``datasets/haa500/README.md``. Where the paper is silent the
commands say which value they choose (Table 3: the crop, frames and token grid of each backbone).
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from typing import Dict, List, Tuple

from taggnn.study.rows import TABLE4

TABLE4_ROWS = TABLE4  # the rows of Table 4 (taggnn.study.rows), as --set overrides
PRESETS = {"gym99": "gym99_r2plus1d34", "gym288": "gym288_r2plus1d34", "haa500": "haa500_r2plus1d34"}
# Table 3: Kinetics-400 backbones of the pytorchvideo zoo. The paper gives no crop or frame count for
# them; taggnn uses each zoo model's own training crop (224) and the dataset's frame count (64 FineGym,
# 32 HAA500), which gives token grids (measured with feature_grid) of 32x7x7 / 16x7x7 for I3D-R50
# (temporal stride 2), 64x7x7 / 32x7x7 for Slow-R50 (no temporal stride) and 8x7x7 / 4x7x7 for CSN-R101.
TABLE3_BACKBONES = {"i3d_r50": "KINETICS400", "slow_r50": "KINETICS400", "csn_r101": "KINETICS400"}


def _train(preset: str, out: str, root: str, extra: List[str]) -> str:
    sets = [f"data.root={root}", *extra]
    return "taggnn train --config " + preset + " --out " + out + "".join(f" --set {shlex.quote(s)}" for s in sets)


def commands(table: str, dataset: str, root: str, runs: str) -> List[Tuple[str, str]]:
    """(description, command) pairs for one table or figure. With ``dataset="all"`` the data root
    of each dataset is ``<root>/finegym`` or ``<root>/haa500``; else ``root`` itself."""
    out: List[Tuple[str, str]] = []

    def data_root(name: str) -> str:
        if dataset not in ("all", None):
            return root
        return f"{root}/{'haa500' if name == 'haa500' else 'finegym'}"

    if table == "1":
        for name, preset in PRESETS.items():
            out.append((f"Table 1, {name}: TAG-Head (R(2+1)D-34 IG-65M)",
                        _train(preset, f"{runs}/table1/{name}", data_root(name), [])))
    elif table == "2":
        for name in ("gym99", "haa500"):
            for ffn in (256, 512, 1024, 2048):
                out.append((f"Table 2, {name}: FFN width {ffn}",
                            _train(PRESETS[name], f"{runs}/table2/{name}_ffn{ffn}", data_root(name),
                                   [f"model.ffn_dim={ffn}"])))
    elif table == "3":
        for name in ("gym99", "haa500"):
            for backbone, weights in TABLE3_BACKBONES.items():
                base = [f"model.backbone={backbone}", f"model.weights={weights}", "data.crop_size=224",
                        "data.normalization=slowfast"]
                out.append((f"Table 3, {name}: {backbone} without head (B)",
                            _train(PRESETS[name], f"{runs}/table3/{name}_{backbone}_B", data_root(name),
                                   base + TABLE4_ROWS["B"])))
                out.append((f"Table 3, {name}: {backbone} + TAG-Head",
                            _train(PRESETS[name], f"{runs}/table3/{name}_{backbone}_tag", data_root(name), base)))
    elif table == "4":
        for name in ("haa500", "gym288"):
            for row, sets in TABLE4_ROWS.items():
                slug = row.replace("+", "_").replace("-", "")
                out.append((f"Table 4, {name}: {row}", _train(PRESETS[name], f"{runs}/table4/{name}_{slug}",
                                                              data_root(name), sets)))
    elif table == "5":
        out.append(("Table 5: parameters and multiply-adds (32 frames, FFN 2048: 63.49M / 6.41M / 69.90M)",
                    "taggnn profile --config gym99_r2plus1d34 --set data.num_frames=32 --set model.ffn_dim=2048 "
                    "--no-latency"))
    elif table == "fig3":
        name = dataset if dataset in PRESETS else "gym99"
        preset = PRESETS[name]
        base, root = f"{runs}/figure3/{name}", data_root(name)
        out += [
            ("Figure 3 (a) transfer learning: frozen backbone + B",
             _train(preset, f"{base}_transfer", root, ["model.freeze_backbone=true", *TABLE4_ROWS["B"]])),
            ("Figure 3 (b) fine-tuned backbone + B", _train(preset, f"{base}_finetuned", root, TABLE4_ROWS["B"])),
            ("Figure 3 (c) TAG-Head", _train(preset, f"{base}_tag", root, [])),
            ("Figure 3: t-SNE of the three (one row of panels each)",
             f"taggnn tsne --checkpoint {base}_transfer/best.pt --checkpoint {base}_finetuned/best.pt "
             f"--checkpoint {base}_tag/best.pt --out {base}_tsne.png"),
        ]
    else:
        raise ValueError(f"unknown table {table!r}")
    return out


def all_commands(tables: List[str], dataset: str, root: str, runs: str) -> Dict[str, List[Tuple[str, str]]]:
    return {table: commands(table, dataset, root, runs) for table in tables}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=["1", "2", "3", "4", "5", "all"], default=None)
    parser.add_argument("--figure", choices=["3"], default=None)
    parser.add_argument("--dataset", default="all", help="restrict to one dataset where a table has several")
    parser.add_argument("--data-root", default="<data root>")
    parser.add_argument("--runs", default="runs/paper", help="where the runs go")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--device", default=None, help="train.device of the runs (default: the presets' auto)")
    args = parser.parse_args(argv)
    if args.table is None and args.figure is None:
        parser.error("give --table N (or all) and/or --figure 3")
    tables = (["1", "2", "3", "4", "5"] if args.table == "all" else [args.table] if args.table else [])
    tables += ["fig3"] if args.figure or args.table == "all" else []
    plan = all_commands(tables, args.dataset, args.data_root, args.runs)
    for table, items in plan.items():
        for description, command in items:
            one_dataset = args.dataset not in ("all", None) and table in ("2", "3", "4")
            if one_dataset and f", {args.dataset}:" not in description:
                continue
            if args.device and command.startswith("taggnn train"):
                command += f" --set train.device={args.device}"
            print(f"# {description}\n{command}")
            if not args.dry_run:
                result = subprocess.run([sys.executable, "-m", "taggnn", *shlex.split(command)[1:]])
                if result.returncode != 0:
                    print(f"# failed with exit code {result.returncode}", file=sys.stderr)
                    return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())

