"""PyTorch DDP helpers: process-group set-up from torchrun's environment, samplers, reductions.

``torchrun --nproc_per_node=N -m taggnn train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` checks them
(:func:`launch_context`) and then joins the group (NCCL on CUDA, gloo on CPU), waiting at most
``TAGGNN_RENDEZVOUS_TIMEOUT`` seconds (default 600) for the other processes.
Training shards a seeded permutation like :class:`~torch.utils.data.DistributedSampler`
(padding to equal shards); evaluation shards without padding, and metrics are summed as
integer counts, so no sample is counted twice.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator, List, Mapping, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..errors import ConfigError, TrainingError

logger = logging.getLogger(__name__)

#: Seconds a process waits for the others to join the process group, unless the environment
#: variable ``TAGGNN_RENDEZVOUS_TIMEOUT`` says otherwise.
RENDEZVOUS_TIMEOUT = 600.0
RENDEZVOUS_TIMEOUT_VARIABLE = "TAGGNN_RENDEZVOUS_TIMEOUT"


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _integer(environ: Mapping[str, str], name: str, default: Optional[int] = None, *, low: int = 0,
             high: Optional[int] = None) -> int:
    value = environ.get(name, "")
    if value == "" and default is not None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"the environment variable {name}={value!r} is not an integer") from None
    if number < low or (high is not None and number > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"the environment variable {name}={number} is out of range (allowed: {allowed})")
    return number


def launch_context(environ: Optional[Mapping[str, str]] = None) -> DistributedContext:
    """Rank, world size and local rank from torchrun's environment variables, checked before
    any process group is joined: ``WORLD_SIZE`` > 1 needs ``RANK`` (in ``[0, WORLD_SIZE)``),
    ``MASTER_ADDR`` and ``MASTER_PORT``; a missing or malformed one raises a
    :class:`~taggnn.errors.ConfigError` that says how to launch the run."""
    environ = os.environ if environ is None else environ
    world_size = _integer(environ, "WORLD_SIZE", 1, low=1)
    if world_size == 1:
        return DistributedContext()
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not environ.get(name)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world_size} asks for {world_size} processes, but {', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not set: launch the run with torchrun "
                          f"(torchrun --nproc_per_node={world_size} -m taggnn train ...), which sets RANK, "
                          f"LOCAL_RANK, MASTER_ADDR and MASTER_PORT, or unset WORLD_SIZE to train in one process")
    rank = _integer(environ, "RANK", low=0, high=world_size - 1)
    local_rank = _integer(environ, "LOCAL_RANK", 0, low=0)
    _integer(environ, "MASTER_PORT", low=1, high=65535)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def rendezvous_timeout(environ: Optional[Mapping[str, str]] = None) -> float:
    """Seconds to wait for the other processes: ``TAGGNN_RENDEZVOUS_TIMEOUT`` or
    :data:`RENDEZVOUS_TIMEOUT`."""
    value = (os.environ if environ is None else environ).get(RENDEZVOUS_TIMEOUT_VARIABLE, "")
    if value == "":
        return RENDEZVOUS_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"the environment variable {RENDEZVOUS_TIMEOUT_VARIABLE}={value!r} is not a number of "
                          f"seconds > 0")
    return seconds


def init_distributed(device_type: str) -> DistributedContext:
    """Joins the process group when launched by torchrun (no-op otherwise).

    The environment is checked first (:func:`launch_context`). Joining waits at most
    :func:`rendezvous_timeout` seconds for the other processes, then raises a
    :class:`~taggnn.errors.TrainingError` (a process that was never started, a wrong
    ``MASTER_ADDR`` / ``MASTER_PORT``) instead of waiting forever; collectives keep
    PyTorch's default timeout.
    """
    context = launch_context()
    if not context.enabled or dist.is_initialized():
        return context
    seconds = rendezvous_timeout()
    address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    logger.info("rank %d of %d: joining the process group at %s (waiting up to %g s for the others; %s)",
                context.rank, context.world_size, address, seconds, RENDEZVOUS_TIMEOUT_VARIABLE)
    try:  # what init_process_group does for env://, with a timeout of its own
        store, _, _ = next(dist.rendezvous("env://", timeout=timedelta(seconds=seconds)))
    except (RuntimeError, ValueError) as error:  # DistStoreError, DistNetworkError: RuntimeErrors
        cause = " ".join(str(error).split())[:300]
        raise TrainingError(f"rank {context.rank} of {context.world_size} could not join the process group at "
                            f"{address} within {seconds:g} s ({cause}): start all {context.world_size} processes "
                            f"(torchrun starts them together), check MASTER_ADDR and MASTER_PORT, or wait longer "
                            f"with {RENDEZVOUS_TIMEOUT_VARIABLE}=<seconds>") from None
    store.set_timeout(dist.default_pg_timeout)
    store = dist.PrefixStore("default_pg", store)  # as init_process_group keys its own env:// store
    # CPU tensors (confusion matrices, flags) go through gloo even when the model is on CUDA.
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo", store=store,
                            rank=context.rank, world_size=context.world_size, timeout=dist.default_pg_timeout)
    return context


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    if context.enabled:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_flag(value: bool, context: DistributedContext) -> bool:
    """True on every rank when ``value`` is true on any (e.g. a non-finite loss)."""
    if not context.enabled:
        return value
    flag = torch.tensor([1 if value else 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def sample_weights(targets, mode: str) -> Optional[torch.Tensor]:
    """Per-sample weights of a class-aware sampler: ``"balanced"`` (each class equally likely,
    :math:`w_i = 1 / n_{c_i}`), ``"sqrt"`` (:math:`w_i = n_{c_i}^{-1/2}`, mmaction2's
    ``power=0.5``) or ``"random"`` (None: a plain permutation)."""
    if mode == "random":
        return None
    targets = torch.as_tensor(list(targets), dtype=torch.long)
    counts = torch.bincount(targets).double()
    power = {"balanced": 1.0, "sqrt": 0.5}[mode]
    return counts[targets].pow(-power)


def class_weights(targets, num_classes: int, mode: str, beta: float = 0.999) -> Optional[torch.Tensor]:
    r"""Loss weights per class, mean 1 over the classes with samples: ``"inverse"``
    (:math:`\propto 1 / n_c`), ``"effective_number"`` (Cui et al., CVPR 2019:
    :math:`\propto (1 - \beta) / (1 - \beta^{n_c})`), or ``"none"`` (None)."""
    if mode == "none":
        return None
    counts = torch.bincount(torch.as_tensor(list(targets), dtype=torch.long), minlength=num_classes).double()
    present = counts > 0
    if mode == "inverse":
        weights = torch.where(present, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    else:
        weights = torch.where(present, (1 - beta) / (1 - beta ** counts), torch.zeros_like(counts))
    return (weights / weights[present].mean()).float()


class ResumableSampler(Sampler[int]):
    r"""A seeded per-epoch permutation, sharded across ranks, that can start mid-epoch.

    Order of epoch ``e``: ``randperm(n, seed + e)`` (or ``range(n)`` without shuffling),
    padded by repetition to a multiple of ``world_size`` when ``pad``; rank ``r`` takes
    positions ``r, r + world_size, ...``. ``start`` skips the first samples of this rank's
    shard, so a resumed run continues with exactly the batches it had not seen.

    With ``weights`` (one per sample) an epoch is ``length`` draws with replacement,
    :math:`P(i) \propto w_i`, seeded by ``seed + epoch``: the class-balanced samplers of
    :func:`sample_weights`, resumable and sharded like the permutation.
    """

    def __init__(self, length: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, pad: bool = True, weights: Optional[torch.Tensor] = None):
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        if self.weights is not None and (self.weights.shape != (length,) or not bool((self.weights >= 0).all())):
            raise ValueError(f"weights must be {length} non-negative numbers, got shape {tuple(self.weights.shape)}")
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> List[int]:
        if self.weights is not None:  # class-balanced: draw with replacement, seeded per epoch
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.multinomial(self.weights, self.length, replacement=True, generator=generator).tolist()
        elif self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        if self.pad and self.world_size > 1:
            total = math.ceil(self.length / self.world_size) * self.world_size
            order += order[: total - len(order)]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return max(len(self.indices()) - self.start, 0)
