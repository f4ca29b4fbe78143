"""Executors run a study's tasks: :class:`LocalExecutor` in persistent worker processes on this
machine, :class:`~taggnn.study.ray_executor.RayExecutor` as Ray tasks (on this machine or a cluster).

An executor maps a module-level function over picklable tasks and yields ``(task, result)`` as
each task completes; ``result`` is the function's return value or the exception it raised. A
task whose process dies (killed, out of memory) is run once more in a new process and then
yielded with a :class:`WorkerDied` naming what happened.
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from multiprocessing.connection import wait
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch

from ..errors import TaggnnError

logger = logging.getLogger(__name__)

__all__ = ["Executor", "LocalExecutor", "WorkerDied", "WorkerLostError", "default_workers", "cpu_count"]


class WorkerDied(TaggnnError, RuntimeError):
    """The process running a task (or its node) ended before the task did, on every attempt
    (killed, out of memory). Every executor yields this one class."""


#: The same class under the name the Ray executor first used.
WorkerLostError = WorkerDied


class Executor:
    """Runs ``fn(task)`` for every task; see the module's docstring.

    A subclass implements :meth:`map` (and :meth:`close` when it holds resources); the study
    runner needs nothing else. Every executor runs a task with the torch thread count it was
    given, so the same task gives the same result whichever executor runs it.
    """

    max_retries = 1

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Tuple[Any, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cpu_count() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers() -> int:
    """One worker per CUDA device, else one per core."""
    try:
        if torch.cuda.is_available():
            return torch.cuda.device_count()
    except ImportError:
        pass
    return cpu_count()


# ---------------------------------------------------------------------- the worker process


def _die_with_parent(parent: int) -> None:
    """Ends this process when the process that started it ends (a killed driver leaves no
    worker behind holding a run's lock)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # where prctl is missing

        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker_main(connection, parent: int, threads: int, device: Optional[str]) -> None:
    _die_with_parent(parent)
    if device is not None:
        os.environ["TAGGNN_STUDY_DEVICE"] = device

    if threads > 0:
        torch.set_num_threads(threads)
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        fn, task = message
        try:
            reply = ("ok", fn(task))
        except BaseException as error:  # sent back to the driver, which decides
            reply = ("error", _portable(error))
        try:
            connection.send(reply)
        except (OSError, ValueError):
            return


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling, else a RuntimeError with its one-line message."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        last = traceback.format_exception_only(type(error), error)[-1].strip()
        return RuntimeError(" ".join(last.split()))


class _Worker:
    def __init__(self, context, threads: int, device: Optional[str], index: int):
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, os.getpid(), threads, device),
                                       name=f"taggnn-study-{index}", daemon=True)
        self.process.start()
        child.close()
        self.task: Any = None
        self.index = index


class LocalExecutor(Executor):
    """``workers`` persistent processes (spawned: each imports torch once and runs many tasks)
    with ``threads`` torch threads each; ``devices`` gives worker ``i`` the device
    ``devices[i % len(devices)]`` (e.g. ``cuda:0``, ``cuda:1``)."""

    def __init__(self, workers: int, *, threads: int = 0, devices: Optional[List[str]] = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.size, self.threads, self.devices = workers, threads, devices or []
        self._context = multiprocessing.get_context("spawn")
        self._workers: Dict[int, _Worker] = {}

    def _start(self, slot: int) -> _Worker:
        device = self.devices[slot % len(self.devices)] if self.devices else None
        worker = _Worker(self._context, self.threads, device, slot)
        self._workers[slot] = worker
        return worker

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Tuple[Any, Any]]:
        queue = [(task, 0) for task in tasks]
        queue.reverse()  # popped from the end: in the given order
        busy: Dict[int, _Worker] = {}
        while queue or busy:
            for slot in range(self.size):
                if not queue:
                    break
                if slot in busy:
                    continue
                worker = self._workers.get(slot)
                if worker is None or not worker.process.is_alive():
                    worker = self._start(slot)
                task, tries = queue.pop()
                worker.task = (task, tries)
                try:
                    worker.connection.send((fn, task))
                except (OSError, ValueError):  # died before its first task: a new one takes it
                    queue.append((task, tries))
                    self._workers.pop(slot, None)
                    continue
                busy[slot] = worker
            if not busy:
                continue
            handles = {}
            for slot, worker in busy.items():
                handles[worker.connection] = slot
                handles[worker.process.sentinel] = slot
            for ready in wait(list(handles)):
                slot = handles[ready]
                worker = busy.get(slot)
                if worker is None:
                    continue
                task, tries = worker.task
                reply = None
                if ready is worker.connection or worker.connection.poll():
                    try:
                        reply = worker.connection.recv()
                    except (EOFError, OSError):
                        reply = None
                if reply is not None:
                    del busy[slot]
                    worker.task = None
                    yield task, reply[1]  # ("ok", value) or ("error", exception)
                    continue
                # the process ended without an answer
                worker.process.join(timeout=5)
                code = worker.process.exitcode
                del busy[slot]
                self._workers.pop(slot, None)
                how = (f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}")
                if tries < self.max_retries:
                    logger.warning("the worker running %s ended (%s): running it again", _name(task), how)
                    queue.append((task, tries + 1))
                else:
                    yield task, WorkerDied(f"the worker process running {_name(task)} ended ({how}) "
                                           f"{tries + 1} times")

    def close(self) -> None:
        for worker in self._workers.values():
            try:
                worker.connection.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._workers.values():
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        self._workers.clear()


def _name(task: Any) -> str:
    return getattr(task, "name", None) or repr(task)
