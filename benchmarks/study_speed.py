"""Wall and CPU time of a study, from cold, against bare ``train()`` runs of the same configs.

    python -m benchmarks.study_speed benchmarks/studies/frozen_table4.yaml --out DIR [--workers 2 --threads 1]

runs ``taggnn study run SPEC --out DIR/study --workers W --threads T --no-progress`` in a fresh
process (DIR/study is removed first: imports, the feature cache of a head-only study, every run,
the report) and prints its wall time and CPU time (user + system of the command and its workers).
Then, in one fresh process with ``T`` torch threads, it trains every row of the study once more with
seed 0 as a bare :func:`taggnn.engine.trainer.train` call (no study machinery, no plot) on the same
cached features, after one warm-up run (a study's workers are warm after their first run too).

The per-run overhead of the study machinery is the study's mean run time of each row (``state.json``:
the worker's wall and CPU seconds of the whole task: the run, its tests, its files) over the bare
run's, summed over the rows. The first task of each worker (the first ``W`` of the study, in row
then seed order) also warms its worker up (imports, first-call caches) and is left out of the
means where its row has other runs; ``--keep-features`` reuses the feature cache of an earlier
run of the study (the runs still start cold). Wall times of a shared machine are noisy; the CPU
times are the steadier figure. The JSON (``--json``, default ``DIR/study_speed.json``) holds
every figure and the environment.

``--floor`` trains each row once more under :mod:`torch.profiler` and sums the self CPU time of its
matrix products (``aten::mm``, ``addmm``, ``bmm``, ...: the float32 work that no change of the
machinery, the loops or the copies can remove, only fewer or cheaper products), and states the
study's **matrix-product floor**: the feature cache's wall time plus every run's products spread
evenly over ``W x T`` threads, the wall time the study could not beat with zero overhead.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ._common import describe_environment, environment, format_table, write_json


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(command: List[str]) -> Dict[str, float]:
    cpu, started = _children_cpu(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed (exit {done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return {"wall_s": wall, "cpu_s": _children_cpu() - cpu, "stdout": done.stdout}


MATRIX_PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation",
                   "aten::addbmm", "aten::mkldnn_convolution", "aten::convolution_backward")


def matrix_product_seconds(run) -> float:
    """Self CPU seconds of the matrix products (:data:`MATRIX_PRODUCTS`) while ``run()`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run()
    return sum(event.self_cpu_time_total for event in profiler.key_averages() if event.key in MATRIX_PRODUCTS) / 1e6


def bare_runs(spec_path: Path, study: Path, out: Path, threads: int, warmup: bool = True,
              floor: bool = False) -> Dict[str, Dict]:
    """Trains each row of the study (seed 0) as a bare ``train()`` in this process; returns
    row -> {"wall_s", "cpu_s"} (and "products_s" with ``floor``: a second, profiled run's matrix
    products, :func:`matrix_product_seconds`) (run in a fresh process by :func:`main`)."""
    from taggnn.engine.trainer import train
    from taggnn.study.runner import features_key
    from taggnn.study.spec import load_spec

    torch.set_num_threads(threads)
    spec = load_spec(spec_path)
    configs = {}
    for row in spec.rows:
        config = spec.row_config(row, spec.seeds[0])
        if spec.head_only:
            config.data.features = str((study / "features" / features_key(spec.row_config(row))).resolve())
        configs[row] = config
    if warmup:
        train(next(iter(configs.values())), out / "warm-up", progress=False, plots=False)
    times = {}
    for index, (row, config) in enumerate(configs.items()):
        cpu, started = time.process_time(), time.perf_counter()
        train(config, out / f"row-{index}", progress=False, plots=False)
        times[row] = {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu}
        if floor:
            times[row]["products_s"] = matrix_product_seconds(
                lambda: train(config, out / f"row-{index}-profiled", progress=False, plots=False))
    return times


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", type=Path, help="the study file (YAML)")
    parser.add_argument("--out", type=Path, required=True,
                        help="working folder: DIR/study (removed first) and DIR/bare are written there")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (and of the bare runs)")
    parser.add_argument("--no-bare", action="store_true", help="time the study only")
    parser.add_argument("--keep-features", action="store_true",
                        help="keep DIR/study/features of an earlier run of the same study (the runs start cold, "
                             "the feature cache is reused)")
    parser.add_argument("--floor", action="store_true",
                        help="also profile each row's bare run: the study's matrix-product floor (see above)")
    parser.add_argument("--json", type=Path, default=None, help="default: DIR/study_speed.json")
    parser.add_argument("--bare-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    study, bare = args.out / "study", args.out / "bare"
    if args.bare_worker:  # the fresh process of the bare runs
        print(json.dumps(bare_runs(args.spec, study, bare, args.threads, floor=args.floor)))
        return {}

    keep = ("features",) if args.keep_features else ()
    for path in [*(study.iterdir() if study.is_dir() else []), bare]:
        if path.name in keep and path.parent == study:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    python = [sys.executable, "-m"]
    whole = _timed(python + ["taggnn", "study", "run", str(args.spec), "--out", str(study), "--workers",
                             str(args.workers), "--threads", str(args.threads), "--no-progress"]
                    + (["--overwrite"] if args.keep_features else []))  # a folder holding features only
    state = json.loads((study / "state.json").read_text())
    runs = sorted(state.get("wall_s", {}))
    run_wall = [state["wall_s"][name] for name in runs]
    run_cpu = [state.get("cpu_s", {}).get(name, float("nan")) for name in runs]
    features = state.get("features_s", {})
    result: Dict[str, object] = {
        "spec": str(args.spec), "workers": args.workers, "threads": args.threads,
        "study_wall_s": whole["wall_s"], "study_cpu_s": whole["cpu_s"], "runs": len(runs),
        "features_wall_s": features.get("wall_s"), "features_cpu_s": features.get("cpu_s"),
        "run_wall_s_mean": sum(run_wall) / max(len(runs), 1), "run_cpu_s_mean": sum(run_cpu) / max(len(runs), 1),
        "run_wall_s": dict(zip(runs, run_wall)), "run_cpu_s": dict(zip(runs, run_cpu)),
    }
    table = [{"what": "study (cold, all)", "wall_s": whole["wall_s"], "cpu_s": whole["cpu_s"]},
             {"what": "  feature cache", "wall_s": features.get("wall_s"), "cpu_s": features.get("cpu_s")},
             {"what": f"  mean of {len(runs)} runs", "wall_s": result["run_wall_s_mean"],
              "cpu_s": result["run_cpu_s_mean"]}]
    if not args.no_bare:
        command = python + ["benchmarks.study_speed", str(args.spec), "--out", str(args.out), "--threads",
                            str(args.threads), "--bare-worker"] + (["--floor"] if args.floor else [])
        measured = _timed(command)
        times = json.loads(measured["stdout"].strip().splitlines()[-1])
        from taggnn.study.spec import load_spec

        spec = load_spec(args.spec)
        # the first task of each worker also warms the worker up (imports, first-call caches): runs of a
        # row after those are compared with the bare run (a row run only by cold workers: all its runs)
        order = [f"{spec.slug(row)}/seed-{seed}" for row in spec.rows for seed in spec.seeds]
        cold = set(order[:args.workers])
        compared: Dict[str, List[str]] = {}
        for row in times:
            names = [f"{spec.slug(row)}/seed-{seed}" for seed in spec.seeds]
            names = [name for name in names if name in state.get("wall_s", {})]
            compared[row] = [name for name in names if name not in cold] or names
        bare_wall = sum(times[row]["wall_s"] for row, names in compared.items() if names)
        bare_cpu = sum(times[row]["cpu_s"] for row, names in compared.items() if names)
        study_wall = sum(sum(state["wall_s"][n] for n in names) / len(names) for names in compared.values() if names)
        study_cpu = sum(sum(state["cpu_s"][n] for n in names) / len(names) for names in compared.values() if names)
        result.update(bare=times, compared=compared, overhead_wall=study_wall / bare_wall - 1 if bare_wall else None,
                      overhead_cpu=study_cpu / bare_cpu - 1 if bare_cpu else None)
        for row, names in compared.items():
            if not names:
                continue
            table.append({"what": f"  {row}: study run (mean of {len(names)}{', cold' if cold & set(names) else ''})",
                          "wall_s": sum(state["wall_s"][n] for n in names) / len(names),
                          "cpu_s": sum(state["cpu_s"][n] for n in names) / len(names)})
            table.append({"what": f"  {row}: bare train() (seed {spec.seeds[0]})", "wall_s": times[row]["wall_s"],
                          "cpu_s": times[row]["cpu_s"]})
            if args.floor:
                table.append({"what": f"  {row}: its matrix products", "wall_s": None,
                              "cpu_s": times[row]["products_s"]})
        if args.floor:
            products = sum(times[row]["products_s"] * len(spec.seeds) for row in times)
            result.update(products_s=products, floor_wall_s=(features.get("wall_s") or 0.0)
                          + products / (args.workers * args.threads))
            table.append({"what": f"matrix-product floor ({args.workers} x {args.threads} threads)",
                          "wall_s": result["floor_wall_s"], "cpu_s": products})
    result["environment"] = environment(torch.device("cpu"))
    print(format_table(table, ["what", "wall_s", "cpu_s"]))
    if "overhead_cpu" in result:
        print(f"per-run overhead of the study over bare train(): {100 * result['overhead_wall']:+.1f}% wall, "
              f"{100 * result['overhead_cpu']:+.1f}% CPU")
    print(describe_environment(result["environment"]))
    write_json(args.json or args.out / "study_speed.json", result)
    return result


if __name__ == "__main__":
    main()
