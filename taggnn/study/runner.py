"""Runs a study: every (row, seed) as an ordinary taggnn run folder, resumable.

The study folder ``DIR``:

- ``study.json``: the study file's text and each row's resolved config (what a later command
  compares against: a changed row or base is refused, naming the difference; new rows and seeds
  extend the study);
- ``runs/<row>/seed-<k>/``: one run folder each, written by
  :func:`taggnn.engine.trainer.train` (its lock, manifest, ``last.pt``, ``best.pt``, metrics);
- ``features/<key>/``: head-only studies: the backbone's features (``taggnn features``), one
  folder per distinct backbone and data setting, shared by every row and seed that uses it;
- ``state.json`` (the failures and their causes) and ``records.json`` (one record per run).

Running the same study again skips finished runs, continues interrupted ones from their
``last.pt`` exactly (as ``taggnn train --resume``) and runs failed ones once more. The folder has
its own lock (``.taggnn-study.lock``): one driver at a time.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from tqdm import tqdm

from ..engine.config import Config, flatten
from ..engine.data import build_dataset
from ..engine.features import extract_features, feature_settings
from ..engine.runfolder import LOCK_NAME, RunLock, clear_run_folder, read_manifest, record_outputs
from ..engine.trainer import eval_autocast_dtype, evaluate, load_trained, resume_config, train
from ..errors import ConfigError, TrainingError
from ..utils.lockfile import LockFile, process_alive, process_identity
from ..utils.outputs import write_text_atomic
from .executors import LocalExecutor
from .spec import StudySpec, config_hash, parse_spec

logger = logging.getLogger(__name__)

__all__ = ["RunTask", "run_task", "run_study", "study_status", "read_study", "plan_runs", "STUDY_FILE",
           "RECORDS_FILE", "STUDY_LOCK", "selected_metrics"]

STUDY_FILE = "study.json"
STATE_FILE = "state.json"
RECORDS_FILE = "records.json"
STUDY_LOCK = ".taggnn-study.lock"
LAST_TAG = "last"  # metrics_<test split>_last.json: the last epoch's model on the test split


@dataclass
class RunTask:
    """One (row, seed) run: what a worker needs (picklable)."""

    name: str
    row: str
    seed: int
    folder: str
    config: Dict[str, Any]
    select: str


# ------------------------------------------------------------------------ one run (in a worker)


def _finished(out: Path, config: Config, select: str) -> bool:
    split = config.data.test_split
    if not (out / "summary.json").is_file() or not (out / f"metrics_{split}.json").is_file():
        return False
    return select == "best" or (out / f"metrics_{split}_{LAST_TAG}.json").is_file()


def _write_last(out: Path, split: str, metrics: Dict[str, Any], num_classes: int) -> None:
    name = f"metrics_{split}_{LAST_TAG}.json"
    metrics = dict(metrics, split=split, checkpoint=str(out / "last.pt"), num_classes=num_classes)
    record_outputs(out, [name])
    write_text_atomic(out / name, json.dumps(metrics, indent=2))


def _evaluate_last(out: Path, config: Config) -> None:
    """The model of the last epoch (``last.pt``) on the test split: ``metrics_<split>_last.json``
    (the metrics alone: no per-class table or confusion plot, which cost a head-only run more
    than its test pass). A run trained by :func:`run_task` tests its last epoch in the same pass
    (``train(test_last=True)``); this reads ``last.pt`` for runs finished before."""

    split = config.data.test_split
    device = torch.device(config.train.device if config.train.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    with RunLock(out):
        model, trained, names = load_trained(out / "last.pt", device)
        dataset = build_dataset(trained, split, train=False, classes=names)
        meter = evaluate(model, dataset, batch_size=trained.train.eval_batch_size, device=device,
                         num_classes=model.num_classes, amp_dtype=eval_autocast_dtype(trained, device),
                         config=trained, progress=False)
        _write_last(out, split, meter.compute(trained.train.mca), model.num_classes)


def selected_metrics(out: Path, config: Config, select: str) -> Optional[Dict[str, Any]]:
    """Top-1, Top-5 and MCA in percent of a finished run's selected model, and its number of
    classes; ``None`` when the run has not finished."""
    if not _finished(out, config, select):
        return None
    split = config.data.test_split
    name = f"metrics_{split}_{LAST_TAG}.json" if select == "last" else f"metrics_{split}.json"
    try:
        values = json.loads((out / name).read_text())
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    classes = values.get("num_classes") or summary.get("test", {}).get("num_classes") or config.data.num_classes
    return {"metrics": {key: 100.0 * float(values[key]) for key in ("top1", "top5", "mca")},
            "num_classes": int(classes)}


def run_task(task: RunTask) -> Dict[str, Any]:
    """Trains (or continues) one run and returns its selected metrics (in a worker process), with
    its wall and CPU seconds (``wall_s``, ``cpu_s``: this process's, its torch threads included)."""
    started, cpu = time.perf_counter(), time.process_time()
    config = Config.from_dict(task.config, source=f"study run {task.name}")
    device = os.environ.get("TAGGNN_STUDY_DEVICE")
    if device and config.train.device == "auto":
        config.train.device = device
    out = Path(task.folder)
    if not _finished(out, config, task.select):
        last, summary = out / "last.pt", {}
        # the last epoch tested in the run's own pass (the single-view test split, as _evaluate_last)
        test_last = task.select == "last" and config.eval.num_clips == 1 and config.eval.num_crops == 1
        if not (out / "summary.json").is_file() or not (out / f"metrics_{config.data.test_split}.json").is_file():
            if last.is_file():
                summary = train(resume_config(last), out, resume=last, progress=False, plots=False,
                                test_last=test_last)
            else:  # a run stopped before its first checkpoint starts over (only the files it listed go)
                out.mkdir(parents=True, exist_ok=True)
                summary = train(config, out, progress=False, overwrite=bool(read_manifest(out)), plots=False,
                                test_last=test_last)
        if task.select == "last":
            if "test_last" in summary:
                metrics = dict(summary["test_last"])
                _write_last(out, config.data.test_split, metrics, metrics.pop("num_classes"))
            else:
                _evaluate_last(out, config)
    result = selected_metrics(out, config, task.select)
    if result is None:
        raise TrainingError(f"{out}: the run ended without its test results")
    result["wall_s"] = time.perf_counter() - started
    result["cpu_s"] = time.process_time() - cpu
    return result


# ------------------------------------------------------------------------ the study folder


def _run_folder(study: Path, spec: StudySpec, row: str, seed: int) -> Path:
    return study / "runs" / spec.slug(row) / f"seed-{seed}"


def _file_hash(path: str) -> Optional[str]:
    if path is None or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def features_key(config: Config) -> str:
    """What determines a row's cached features: the data and backbone settings, the weights
    file's content, and (random weights) the seed that initialises the backbone."""
    settings = feature_settings(config)
    settings["weights sha256"] = _file_hash(config.model.weights)
    if config.model.weights is None:
        settings["initialisation seed"] = config.train.seed
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _definitions(spec: StudySpec) -> Dict[str, Dict[str, Any]]:
    return {row: flatten(config.to_dict()) for row, config in spec.configs.items()}


def read_study(study: Path) -> Dict[str, Any]:
    """The ``study.json`` of a study folder (raises :class:`ConfigError` without one)."""
    path = Path(study) / STUDY_FILE
    try:
        return json.loads(path.read_text())
    except OSError:
        raise ConfigError(f"{study} is not a study folder (no {STUDY_FILE}); start one with: taggnn study run SPEC "
                          f"--out {study}") from None
    except ValueError as error:
        raise ConfigError(f"{path} is not readable JSON ({error})") from None


def _differences(recorded: Dict[str, Any], spec: StudySpec) -> List[str]:
    problems = []
    if recorded.get("base") != spec.base or recorded.get("set") != spec.overrides:
        problems.append(f"base/set: {recorded.get('base')} {recorded.get('set')} -> {spec.base} {spec.overrides}")
    for key in ("select", "head_only"):
        if recorded.get(key) != getattr(spec, key):
            problems.append(f"{key}: {recorded.get(key)!r} -> {getattr(spec, key)!r}")
    mine = _definitions(spec)
    for row, values in recorded.get("definitions", {}).items():
        if row in mine and values != mine[row]:
            changed = [f"{key}: {values.get(key)!r} -> {mine[row].get(key)!r}"
                       for key in sorted(set(values) | set(mine[row])) if values.get(key) != mine[row].get(key)]
            problems.append(f"row {row}: {'; '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}")
    return problems


def _clear_study(study: Path) -> None:
    """Removes what taggnn wrote in a study folder (runs' manifest-listed files, cached features,
    the study's own files); anything else stays."""
    for folder in sorted((study / "runs").glob("*/seed-*")):
        if folder.is_dir():
            clear_run_folder(folder)
            for name in (".taggnn-manifest.json",):
                (folder / name).unlink(missing_ok=True)
            _remove_if_empty(folder)
            _remove_if_empty(folder.parent)
    _remove_if_empty(study / "runs")
    for folder in sorted((study / "features").glob("*")):
        info = folder / "info.json"
        if folder.is_dir() and info.is_file():
            try:
                splits = json.loads(info.read_text()).get("splits", {})
            except ValueError:
                splits = {}
            for split in splits:
                (folder / f"{split}.pt").unlink(missing_ok=True)
            info.unlink()
            _remove_if_empty(folder)
    _remove_if_empty(study / "features")
    for name in (STUDY_FILE, STATE_FILE, RECORDS_FILE):
        (study / name).unlink(missing_ok=True)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _write_json(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=1, default=str) + "\n")


def _read_state(study: Path) -> Dict[str, Any]:
    try:
        state = json.loads((study / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {"failures": {}}
    return state if isinstance(state, dict) and isinstance(state.get("failures"), dict) else {"failures": {}}


def _lock_owner_alive(folder: Path) -> bool:
    try:
        owner = json.loads((folder / LOCK_NAME).read_text())
        pid = int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    identity = owner.get("identity")
    return process_alive(pid) and (identity is None or process_identity(pid) == identity)


# ------------------------------------------------------------------------ planning and running


def _record(row: str, seed: int, folder: str, config: Config) -> Dict[str, Any]:
    return {"row": row, "seed": seed, "status": "pending", "folder": folder, "config_hash": config_hash(config),
            "num_classes": config.data.num_classes, "metrics": {}, "error": None, "wall_s": None}


def plan_runs(study: Path, spec: StudySpec, features: Optional[Dict[str, str]] = None) -> List[RunTask]:
    """One task per (row, seed), in row then seed order."""
    tasks = []
    for row in spec.rows:
        for seed in spec.seeds:
            config = spec.row_config(row, seed)
            if features is not None:
                config.data.features = features[row]
            folder = _run_folder(study, spec, row, seed)
            tasks.append(RunTask(name=f"{spec.slug(row)}/seed-{seed}", row=row, seed=seed, folder=str(folder),
                                 config=config.to_dict(), select=spec.select))
    return tasks


def _cache_features(study: Path, spec: StudySpec, progress: bool) -> Dict[str, str]:
    """Extracts every distinct backbone/data setting's features once; returns row -> folder."""
    folders: Dict[str, str] = {}
    done: Dict[str, Path] = {}
    for row in spec.rows:
        config = spec.row_config(row)
        key = features_key(config)
        folder = (study / "features" / key).resolve()
        if key not in done:
            device = config.train.device
            device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                  "cpu" if device == "auto" else device)
            logger.info("features of row %s (and every row with its backbone and data) -> %s", row, folder)
            extract_features(config, folder, device=device, progress=progress)
            done[key] = folder
        folders[row] = str(folder)
    return folders


def _prepare(study: Path, spec: StudySpec, overwrite: bool) -> None:
    if (study / STUDY_FILE).is_file():
        recorded = read_study(study)
        problems = _differences(recorded, spec)
        if problems and not overwrite:
            raise ConfigError(
                f"{study} holds a study with other definitions: {' | '.join(problems)}; new rows and seeds extend a "
                f"study, a changed row or base does not: add --overwrite to start over (it removes only the files "
                f"taggnn wrote there), or choose another --out")
        if problems:
            logger.warning("--overwrite: removing the previous study in %s", study)
            _clear_study(study)
            recorded = {}
        definitions = dict(recorded.get("definitions", {}))
    else:
        leftovers = [p.name for p in study.iterdir() if p.name not in (STUDY_LOCK,)] if study.is_dir() else []
        if leftovers and not overwrite:
            raise ConfigError(f"--out {study} holds files but no study ({', '.join(sorted(leftovers)[:4])}); choose "
                              f"an empty or new folder")
        definitions = {}
    definitions.update(_definitions(spec))
    _write_json(study / STUDY_FILE, {"format": 1, "base": spec.base, "set": spec.overrides, "select": spec.select,
                                     "head_only": spec.head_only, "description": spec.describe(),
                                     "slugs": {row: spec.slug(row) for row in spec.rows},
                                     "definitions": definitions})


def collect_records(study: Path, spec: StudySpec, tasks: List[RunTask]) -> List[Dict[str, Any]]:
    """The record of every task from its run folder and the study's failures."""
    state = _read_state(study)
    failures, walls = state["failures"], state.get("wall_s", {})
    records = []
    for task in tasks:
        config = Config.from_dict(task.config, source=task.name)
        folder = Path(task.folder)
        record = _record(task.row, task.seed, str(folder.relative_to(study)), config)
        result = selected_metrics(folder, config, task.select)
        if result is not None:
            record.update(status="done", metrics=result["metrics"], num_classes=result["num_classes"])
            record["wall_s"] = walls.get(task.name)
        elif folder.is_dir() and _lock_owner_alive(folder):
            record["status"] = "running"
        elif task.name in failures:
            record.update(status="failed", error=failures[task.name])
        records.append(record)
    return records


def run_study(spec: StudySpec, study: Path, *, executor=None, overwrite: bool = False, progress: bool = True,
              on_record: Optional[Callable[[Dict[str, Any]], None]] = None) -> List[Dict[str, Any]]:
    """Runs every (row, seed) of ``spec`` not yet finished in ``study``; returns the records.

    Args:
        spec: The study (:func:`~taggnn.study.spec.load_spec`).
        study: The study folder.
        executor: An :class:`~taggnn.study.executors.Executor` (default: one local worker).
        overwrite: Start over when ``study`` holds a study with other definitions.
        progress: A progress bar over the runs.
        on_record: Called with each record as its run ends.
    """
    study = Path(study)
    study.mkdir(parents=True, exist_ok=True)
    with LockFile(study / STUDY_LOCK, error=TrainingError, what=f"the study folder {study}"):
        _prepare(study, spec, overwrite)
        started, cpu = time.perf_counter(), time.process_time()
        features = _cache_features(study, spec, progress) if spec.head_only else None
        tasks = plan_runs(study, spec, features)
        state = _read_state(study)
        if spec.head_only:  # this command's time on the feature cache (nearly nothing when it was there)
            state["features_s"] = {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu}
        todo = []
        for task in tasks:
            config = Config.from_dict(task.config, source=task.name)
            if selected_metrics(Path(task.folder), config, task.select) is None:
                todo.append(task)
        logger.info("study %s: %d runs, %d finished, %d to run", study, len(tasks), len(tasks) - len(todo),
                    len(todo))
        own = executor is None
        executor = executor or LocalExecutor(1)
        try:
            bar = tqdm(total=len(todo), desc="study", unit="run", disable=not progress)
            for task, result in executor.map(run_task, todo):
                bar.update(1)
                if isinstance(result, BaseException):
                    message = " ".join(str(result).split()) or type(result).__name__
                    state["failures"][task.name] = f"{type(result).__name__}: {message}"[:500]
                    logger.error("%s failed: %s", task.name, state["failures"][task.name])
                else:
                    state["failures"].pop(task.name, None)
                    state.setdefault("wall_s", {})[task.name] = result["wall_s"]
                    state.setdefault("cpu_s", {})[task.name] = result["cpu_s"]
                _write_json(study / STATE_FILE, state)
                if on_record is not None:
                    on_record({"row": task.row, "seed": task.seed, "ok": not isinstance(result, BaseException)})
            bar.close()
        finally:
            if own:
                executor.close()
        records = collect_records(study, spec, tasks)
        _write_json(study / RECORDS_FILE, records)
    return records


def spec_of_study(study: Path) -> StudySpec:
    """The study file recorded in a study folder, read again."""
    recorded = read_study(study)
    return parse_spec(recorded["description"]["spec"], source=str(Path(study) / STUDY_FILE))


def study_status(study: Path) -> List[Dict[str, Any]]:
    """The record of every run of the study in ``study`` (done / running / failed / pending)."""
    study = Path(study)
    spec = spec_of_study(study)
    features = None
    if spec.head_only:
        features = {row: str((study / "features" / features_key(spec.row_config(row))).resolve()) for row in spec.rows}
    return collect_records(study, spec, plan_runs(study, spec, features))
