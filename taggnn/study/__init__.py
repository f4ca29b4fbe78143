"""Ablation studies: rows of config overrides times seeds, each an ordinary taggnn run.

``taggnn study run SPEC --out DIR`` (see :mod:`taggnn.study.spec` for the file,
:mod:`taggnn.study.runner` for the folder and its resumption, :mod:`taggnn.study.executors` for
the worker processes, :mod:`taggnn.study.ray_executor` for Ray, :mod:`taggnn.study.rows` for the named
rows, :mod:`taggnn.study.report` for the tables and paired differences).
"""
from .executors import Executor, LocalExecutor, WorkerDied, WorkerLostError
from .rows import ALIASES, ROWS, STAGES, TABLE4
from .runner import RunTask, run_study, run_task, study_status
from .spec import StudySpec, load_spec, parse_spec

__all__ = ["ALIASES", "ROWS", "STAGES", "TABLE4", "Executor", "LocalExecutor", "WorkerDied", "WorkerLostError",
           "RunTask", "StudySpec", "load_spec", "parse_spec", "run_study", "run_task", "study_status"]
