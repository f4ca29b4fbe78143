"""Experiment tracking: one small class per backend behind a common interface.

``train.loggers`` lists the backends a run reports to. The JSON-lines log (``log.jsonl``) is
always written; the others are asked for by name:

* ``"jsonl"``: ``log.jsonl`` in the run folder, one JSON record per line (always on);
* ``"csv"``: ``log.csv`` (one row per record, a column per key; the file is rewritten
  atomically when a record brings a new column) and ``params.csv`` (``key,value``);
* ``"tensorboard"``: event files in ``<run>/tensorboard`` (extra ``tensorboard``);
* ``"wandb"``: a Weights & Biases run (extra ``wandb``), configured by W&B's own variables
  (``WANDB_PROJECT``, ``WANDB_MODE=offline``, ``WANDB_DIR``; files go to the run folder
  unless ``WANDB_DIR`` is set);
* ``"mlflow"``: an MLflow run (extra ``mlflow``) in the tracking store of
  ``MLFLOW_TRACKING_URI`` and the experiment ``MLFLOW_EXPERIMENT_NAME`` (default
  ``taggnn``).

Every backend receives the whole config, flattened to ``section.key`` names
(:meth:`RunLogger.log_params`), each training and epoch record
(:meth:`RunLogger.log_metrics`) and the final test metrics (:meth:`RunLogger.log_final`).
A backend that is asked for but not installed is a :class:`~taggnn.errors.ConfigError`
naming the extra to install, raised when the config is loaded.
"""
from __future__ import annotations

import csv
import importlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from ..errors import ConfigError

logger = logging.getLogger(__name__)

#: Every backend ``train.loggers`` may name.
LOGGERS = ("jsonl", "csv", "tensorboard", "wandb", "mlflow")

#: The optional backends: the module each imports and the pip extra that installs it.
OPTIONAL_LOGGERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def _importable(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_loggers(names: Iterable[str]) -> List[str]:
    """The optional backends among ``names`` whose package is not installed."""
    return [name for name in dict.fromkeys(names) if name in OPTIONAL_LOGGERS and not _importable(name)]


def install_hint(name: str) -> str:
    return f"train.loggers asks for {name}, which is not installed: pip install 'taggnn[{OPTIONAL_LOGGERS[name]}]'"


def check_loggers(names: Sequence[str]) -> None:
    """Raises :class:`ConfigError` when a backend of ``names`` is unknown or not installed."""
    unknown = [name for name in names if name not in LOGGERS]
    if unknown:
        raise ConfigError(f"train.loggers: {', '.join(map(repr, unknown))} is not one of {', '.join(LOGGERS)}")
    missing = missing_loggers(names)
    if missing:
        raise ConfigError("; ".join(install_hint(name) for name in missing)
                          + " (or remove it from train.loggers)")


def _import(name: str, module: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(f"{install_hint(name)} ({error})") from error


def _numbers(record: Dict[str, Any], skip: Sequence[str] = ()) -> Dict[str, float]:
    """The finite-or-not numeric values of a record (booleans and strings left out)."""
    return {key: float(value) for key, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in skip}


def _param_value(value: Any) -> Any:
    """A config value as a tracker takes it: scalars as they are, lists and mappings as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


class RunLogger:
    """The interface of a tracking backend.

    A record is a flat dict with a ``kind`` (``"train"``: every ``train.log_every`` optimiser
    steps; ``"epoch"``: after each epoch, with the validation metrics), ``epoch``, ``step`` and
    numbers.
    """

    def log_params(self, params: Dict[str, Any]) -> None:
        """The run's hyper-parameters: the whole config, flattened (``{"optim.lr": 0.001, ...}``)."""

    def log_metrics(self, record: Dict[str, Any], step: int) -> None:
        """One training or epoch record at optimiser step ``step``."""

    def log_final(self, metrics: Dict[str, Any]) -> None:
        """The final test metrics (``metrics_test.json``'s values)."""

    def close(self, failed: bool = False) -> None:
        """Flushes and releases the backend; ``failed`` marks a run that stopped on an error."""


class JsonlLogger(RunLogger):
    """``log.jsonl``: each record as one JSON line (appended, so that a resumed run continues
    the same file); the parameters as a ``{"kind": "params"}`` record and the test metrics as
    a ``{"kind": "test"}`` record."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "a")

    def _write(self, record: Dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def log_params(self, params: Dict[str, Any]) -> None:
        self._write({"kind": "params", "params": params})

    def log_metrics(self, record: Dict[str, Any], step: int) -> None:
        self._write(record)

    def log_final(self, metrics: Dict[str, Any]) -> None:
        self._write({"kind": "test", **metrics})

    def close(self, failed: bool = False) -> None:
        self.file.close()


class CsvLogger(RunLogger):
    """``log.csv``: one row per record (the test metrics as a ``kind=test`` row with ``test_``
    columns), a column per key; ``params.csv``: ``key,value`` rows.

    A record with a key the file has no column for rewrites the file with the wider header
    (temporary file, then rename: the file is never half-written).
    """

    def __init__(self, path: Path, params_path: Path):
        self.path, self.params_path = Path(path), Path(params_path)
        self.columns: List[str] = []
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, newline="") as f:
                self.columns = next(csv.reader(f), [])

    def log_params(self, params: Dict[str, Any]) -> None:
        tmp = self.params_path.with_name(f".{self.params_path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["key", "value"])
            writer.writerows([key, "" if value is None else _param_value(value)] for key, value in params.items())
        tmp.replace(self.params_path)

    def _append(self, row: Dict[str, Any]) -> None:
        new = [key for key in row if key not in self.columns]
        if new or not self.path.exists():
            rows = []
            if self.path.exists() and self.columns:
                with open(self.path, newline="") as f:
                    rows = list(csv.DictReader(f))
            self.columns += new
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(rows + [row])
            tmp.replace(self.path)
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow(row)

    def log_metrics(self, record: Dict[str, Any], step: int) -> None:
        self._append(record)

    def log_final(self, metrics: Dict[str, Any]) -> None:
        self._append({"kind": "test", **{f"test_{key}": value for key, value in metrics.items()}})


class TensorBoardLogger(RunLogger):
    """TensorBoard scalars ``<kind>/<key>`` at each record's step, the config as text, and
    (at the end) the hyper-parameters with the test metrics for TensorBoard's HParams tab.

    Args:
        folder: Where the event files go (``<run>/tensorboard``).
    """

    def __init__(self, folder: Path):
        tensorboard = _import("tensorboard", "torch.utils.tensorboard")
        self.writer = tensorboard.SummaryWriter(str(folder))
        self.params: Dict[str, Any] = {}
        self.step = 0

    def log_params(self, params: Dict[str, Any]) -> None:
        self.params = {key: "None" if value is None else _param_value(value) for key, value in params.items()}
        table = "\n".join(f"| {key} | {value} |" for key, value in self.params.items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + table)

    def log_metrics(self, record: Dict[str, Any], step: int) -> None:
        self.step = step
        kind = record.get("kind", "train")
        for key, value in _numbers(record, skip=("step", "epoch")).items():
            self.writer.add_scalar(f"{kind}/{key}", value, step)

    def log_final(self, metrics: Dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        values = {f"test/{key}": value for key, value in _numbers(metrics, skip=("best_epoch",)).items()}
        for key, value in values.items():
            self.writer.add_scalar(key, value, self.step)
        for summary in hparams(self.params, values):
            self.writer.file_writer.add_summary(summary)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandbLogger(RunLogger):
    """A Weights & Biases run named after the config (``name``), in the project
    ``WANDB_PROJECT`` (default ``taggnn``); metrics ``<kind>/<key>`` at each record's step,
    the test metrics as ``test/<key>`` in the run's summary.

    Args:
        folder: The run folder: W&B's files go to ``<folder>/wandb`` unless ``WANDB_DIR`` is set.
        name: The run's display name.
    """

    def __init__(self, folder: Path, name: str):
        wandb = _import("wandb", "wandb")
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "taggnn", name=name,
                                  dir=os.environ.get("WANDB_DIR") or str(folder))
        except (wandb.errors.UsageError, wandb.errors.CommError) as error:
            raise ConfigError(f"train.loggers asks for wandb, which could not start a run ({error}); log in with "
                              f"`wandb login`, or set WANDB_MODE=offline") from error

    def log_params(self, params: Dict[str, Any]) -> None:
        self.run.config.update({key: _param_value(value) for key, value in params.items()}, allow_val_change=True)

    def log_metrics(self, record: Dict[str, Any], step: int) -> None:
        kind = record.get("kind", "train")
        values = {f"{kind}/{key}": value for key, value in _numbers(record, skip=("step", "epoch")).items()}
        if "epoch" in record:
            values["epoch"] = record["epoch"]
        self.run.log(values, step=step)

    def log_final(self, metrics: Dict[str, Any]) -> None:
        self.run.summary.update({f"test/{key}": value for key, value in metrics.items()
                                 if isinstance(value, (int, float, str))})

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class MlflowLogger(RunLogger):
    """An MLflow run named after the config, in the experiment ``MLFLOW_EXPERIMENT_NAME``
    (default ``taggnn``) of the tracking store ``MLFLOW_TRACKING_URI`` (MLflow's default
    otherwise); the config as parameters, metrics ``<kind>/<key>`` at each record's step,
    the test metrics as ``test/<key>``.

    Args:
        name: The run's name.
    """

    #: MLflow takes at most this many parameters in one call.
    BATCH = 100

    def __init__(self, name: str):
        mlflow = _import("mlflow", "mlflow")
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "taggnn")
        try:
            self.client = MlflowClient()
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        except (MlflowException, ImportError) as error:
            raise ConfigError(
                f"train.loggers asks for mlflow, which cannot open the tracking store {mlflow.get_tracking_uri()!r} "
                f"({str(error).splitlines()[0]}); set MLFLOW_TRACKING_URI to a tracking server (http://host:5000) "
                f"or a store this installation can write") from error
        self.step = 0

    def log_params(self, params: Dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(_param_value(value))) for key, value in params.items()]
        for start in range(0, len(items), self.BATCH):
            self.client.log_batch(self.run_id, params=items[start:start + self.BATCH])

    def _log(self, values: Dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items() if math.isfinite(value)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_metrics(self, record: Dict[str, Any], step: int) -> None:
        self.step = step
        kind = record.get("kind", "train")
        self._log({f"{kind}/{key}": value for key, value in _numbers(record, skip=("step", "epoch")).items()}, step)

    def log_final(self, metrics: Dict[str, Any]) -> None:
        self._log({f"test/{key}": value for key, value in _numbers(metrics).items()}, self.step)

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class RunLog:
    """The backends of one run behind one object, as a context manager: every call goes to
    each backend; :meth:`write` logs a record at its own ``step``. ``RunLog()`` (no backends)
    logs nothing: the processes other than the main one of a distributed run hold one.

    Args:
        loggers: The backends.
    """

    def __init__(self, loggers: Sequence[RunLogger] = ()):
        self.loggers = list(loggers)

    @classmethod
    def open(cls, folder: Optional[Path], names: Sequence[str] = (), *, run_name: str = "run") -> "RunLog":
        """The backends ``names`` (plus ``jsonl``, always) writing into ``folder``; none when
        ``folder`` is None."""
        if folder is None:
            return cls()
        folder = Path(folder)
        loggers: List[RunLogger] = [JsonlLogger(folder / "log.jsonl")]
        try:
            for name in dict.fromkeys(names):
                if name == "csv":
                    loggers.append(CsvLogger(folder / "log.csv", folder / "params.csv"))
                elif name == "tensorboard":
                    loggers.append(TensorBoardLogger(folder / "tensorboard"))
                elif name == "wandb":
                    loggers.append(WandbLogger(folder, run_name))
                elif name == "mlflow":
                    loggers.append(MlflowLogger(run_name))
                elif name != "jsonl":
                    raise ConfigError(f"train.loggers: {name!r} is not one of {', '.join(LOGGERS)}")
        except BaseException:
            cls(loggers).close(failed=True)
            raise
        return cls(loggers)

    def log_params(self, params: Dict[str, Any]) -> None:
        for backend in self.loggers:
            backend.log_params(params)

    def log_metrics(self, record: Dict[str, Any], step: int) -> None:
        for backend in self.loggers:
            backend.log_metrics(record, step)

    def write(self, record: Dict[str, Any]) -> None:
        """Logs a training or epoch record at its ``step``."""
        self.log_metrics(record, record.get("step", 0))

    def log_final(self, metrics: Dict[str, Any]) -> None:
        for backend in self.loggers:
            backend.log_final(metrics)

    def close(self, failed: bool = False) -> None:
        """Closes every backend (all of them, even when one fails; its error is raised after)."""
        error = None
        for backend in self.loggers:
            try:
                backend.close(failed)
            except BaseException as exc:  # re-raised below, once every backend is closed
                error = error or exc
        self.loggers = []
        if error is not None:
            raise error

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close(failed=exc_type is not None)
