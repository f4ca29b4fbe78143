"""Running a study's runs as Ray tasks: on this machine, or on an existing Ray cluster (needs the ``ray`` extra).

:class:`RayExecutor` has the study executors' interface (``map(fn, tasks)`` yielding
``(task, result)`` as each task completes, the result being the return value or the exception
the task raised, and ``close()``). Each task runs in a Ray worker process with the CPUs and GPUs
it asks for; Ray schedules as many at once as the machine or cluster holds. A task whose worker
process or node dies is run again, up to ``max_retries`` times, by Ray's task retries; then it
is yielded with a :class:`~taggnn.study.executors.WorkerDied` (also importable here as
``WorkerLostError``). Each task sets its worker's torch threads to the CPUs it reserves (at
least one), as :class:`~taggnn.study.executors.LocalExecutor` does for its workers, so a run
gives the same metrics under either executor.

With a cluster, every node reads and writes the study folder: it must be on storage all the
nodes share (the same path everywhere), and every node needs taggnn (the same version) and the
data installed.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple

import torch

from ..errors import ConfigError
from ..utils.optional import require
from .executors import Executor, WorkerDied, WorkerLostError, _name

__all__ = ["RayExecutor", "WorkerLostError", "WorkerDied"]

logger = logging.getLogger(__name__)


def _call_with_threads(fn: Callable[[Any], Any], threads: int, task: Any) -> Any:
    """``fn(task)`` with ``threads`` torch threads (in a Ray worker process, which may have run
    other tasks with other settings before)."""
    torch.set_num_threads(threads)
    return fn(task)


def _unwrap(error: BaseException, ray, task: Any, attempts: int) -> BaseException:
    """The exception to yield for a task that failed with ``error`` (raised by ``ray.get``)."""
    if isinstance(error, ray.exceptions.RayTaskError):  # the task raised: yield what it raised
        cause = getattr(error, "cause", None)
        return cause if isinstance(cause, BaseException) else error
    if isinstance(error, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                          ray.exceptions.OutOfMemoryError)):
        lost = WorkerDied(f"the worker process running {_name(task)} died on each of {attempts} attempt(s) "
                          f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
        lost.__cause__ = error
        return lost
    return error


class RayExecutor(Executor):
    """Runs ``fn(task)`` for each task as a Ray task and yields the results as they complete.

    Without :obj:`address` a Ray instance is started on this machine (no dashboard, Ray's own
    logging at WARNING and the workers' output not copied to this process: each run logs into
    its own folder) and stopped by :meth:`close`; with one, the executor connects to an existing
    cluster (``"auto"``: the cluster this node belongs to, e.g. started with ``ray start``;
    ``"ray://host:10001"``: a remote cluster through Ray Client), and :meth:`close` disconnects.
    If Ray is already initialised in this process, that instance is used and left running.

    With a cluster the study folder must be on storage that every node sees at the same path.

    Args:
        address (str, optional): The cluster to use, or ``None`` for a local instance.
        num_cpus (float): CPUs each task reserves (default: 1); the task runs with that many
            torch threads (rounded down, at least one).
        num_gpus (float, optional): GPUs each task reserves (a fraction shares a GPU); default:
            1 when the cluster has GPUs, else 0. Ray sets ``CUDA_VISIBLE_DEVICES`` in the task to
            the GPUs it got, so a run with ``train.device=auto`` trains on its own GPU; a task
            reserving none is not kept off the GPUs (recent Ray leaves ``CUDA_VISIBLE_DEVICES``
            alone for it), so 0 on a GPU cluster lets runs share GPU 0.
        max_retries (int): How many times a task whose worker process or node died is run
            again (default: 1). An exception raised by the task itself is not retried.
        local_cpus (int, optional): The CPUs of a local instance (default: all of this
            machine's); ignored with :obj:`address`.

    Raises:
        MissingExtraError: Ray is not installed (``pip install 'taggnn[ray]'``).
        ConfigError: A negative resource or retry count, or no Ray cluster at :obj:`address`.
    """

    def __init__(self, address: Optional[str] = None, num_cpus: float = 1, num_gpus: Optional[float] = None,
                 max_retries: int = 1, *, local_cpus: Optional[int] = None):
        for name, value in (("num_cpus", num_cpus), ("num_gpus", 0 if num_gpus is None else num_gpus)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"RayExecutor {name} must be a number >= 0; got {value!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"RayExecutor max_retries must be an integer >= 0; got {max_retries!r}")
        if local_cpus is not None and (isinstance(local_cpus, bool) or not isinstance(local_cpus, int)
                                       or local_cpus < 1):
            raise ConfigError(f"RayExecutor local_cpus must be a positive integer; got {local_cpus!r}")
        self.ray = require("ray", extra="ray", feature="the Ray executor (--executor ray)")
        self.address, self.num_cpus, self.num_gpus, self.max_retries = address, num_cpus, num_gpus, max_retries
        self._owns_ray = not self.ray.is_initialized()
        if self._owns_ray:
            if address is None:
                self.ray.init(num_cpus=local_cpus, include_dashboard=False, logging_level=logging.WARNING,
                              log_to_driver=False)
            else:
                try:
                    self.ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
                except (ConnectionError, RuntimeError, ValueError) as error:
                    raise ConfigError(
                        f"cannot connect to the Ray cluster at address {address!r}: {type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}; start one with `ray start --head` (and "
                        f"`ray start --address=HEAD:PORT` on the other nodes), or check the address; a cluster "
                        f"with token authentication needs its token here too (RAY_AUTH_TOKEN)") from None
            logger.info("Ray %s: %s", "connected to " + address if address else "started on this machine",
                        self.ray.cluster_resources())
        if num_gpus is None:
            self.num_gpus = 1 if self.ray.cluster_resources().get("GPU", 0) >= 1 else 0

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Tuple[Any, Any]]:
        """Submits ``fn(task)`` for every task and yields ``(task, result)`` as each completes, in
        completion order; ``result`` is what ``fn`` returned, the exception it raised, or a
        :class:`~taggnn.study.executors.WorkerDied` when its worker died on every attempt. ``fn``
        and the tasks must be picklable (a module-level function, dataclasses), and importable on
        every node. Each task runs with ``max(1, int(num_cpus))`` torch threads.

        Closing the iterator early cancels the tasks not yet finished."""
        ray = self.ray
        remote = ray.remote(_call_with_threads).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                                        max_retries=self.max_retries, retry_exceptions=False)
        threads = max(1, int(self.num_cpus))
        function = ray.put(fn)  # sent once, not with every task
        pending = {}
        for task in tasks:
            pending[remote.remote(function, threads, task)] = task
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as error:  # the task's failure is its result
                        result = _unwrap(error, ray, task, 1 + self.max_retries)
                    yield task, result
        finally:
            for ref in pending:  # abandoned early (an exception, or the caller stopped)
                ray.cancel(ref, force=True)

    def close(self) -> None:
        """Stops the local Ray instance (or disconnects from the cluster) if this executor started it."""
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns_ray = False
