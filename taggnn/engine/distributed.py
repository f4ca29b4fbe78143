"""PyTorch DDP helpers: process-group set-up from torchrun's environment, samplers, reductions.

``torchrun --nproc_per_node=N -m taggnn train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_distributed` then joins the group (NCCL on CUDA, gloo on CPU).
Training shards a seeded permutation like :class:`~torch.utils.data.DistributedSampler`
(padding to equal shards); evaluation shards without padding, and metrics are summed as
integer counts, so no sample is counted twice.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


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


def init_distributed(device_type: str) -> DistributedContext:
    """Joins the process group when launched by torchrun (no-op otherwise)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        # CPU tensors (confusion matrices, flags) go through gloo even when the model is on CUDA.
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


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
