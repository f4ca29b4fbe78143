"""Optimisation set-up of a training run: the device, mixed precision, parameter groups, the
optimiser and the learning-rate schedule (the paper's recipe: Adam with per-step cosine annealing
and an optional linear warm-up)."""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .config import Config, ConfigError
from .distributed import DistributedContext

logger = logging.getLogger(__name__)

__all__ = ["resolve_device", "autocast_dtype", "eval_autocast_dtype", "parameter_groups", "fused_optimizer_supported",
           "build_optimizer", "build_scheduler"]


def resolve_device(name: str, context: DistributedContext) -> torch.device:
    """The device of ``train.device``: ``auto`` is CUDA when available, a plain ``cuda`` this
    rank's GPU (``context.local_rank``); a CUDA device that does not exist is a :class:`ConfigError`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device is {name!r} but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device is {name!r} but this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s) (cuda:0 ... cuda:{torch.cuda.device_count() - 1})")
        if device.index is None:
            device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    return device


def autocast_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``train.amp`` on ``device`` (``None``: float32). Mixed precision runs
    on CUDA only: elsewhere every mode is float32, and an explicit ``bf16`` / ``fp16`` says so."""
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp != "auto":
            logger.warning("mixed precision %s runs on CUDA only: this %s run computes in float32", amp,
                           device.type)
        return None
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16  # "auto" and "bf16"


def parameter_groups(config: Config, model: nn.Module) -> List[Dict[str, Any]]:
    """Trainable parameters in groups: backbone vs head (``optim.backbone_lr_mult``), and with
    ``optim.no_decay_norm_bias`` the parameters that take no weight decay (timm's convention:
    biases, normalisation weights, every 1-D parameter, plus the positional table and anything a
    module lists in ``no_weight_decay()``)."""
    o = config.optim
    skip = set()
    for module_name, module in model.named_modules():
        if hasattr(module, "no_weight_decay"):
            skip |= {f"{module_name}.{n}" if module_name else n for n in module.no_weight_decay()}
    groups: Dict[Tuple[bool, bool], List[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        in_backbone = name.startswith("backbone.")
        no_decay = o.no_decay_norm_bias and (parameter.ndim <= 1 or name.endswith(".bias") or name in skip)
        groups.setdefault((in_backbone, no_decay), []).append(parameter)
    return [{"params": params, "lr": o.lr * (o.backbone_lr_mult if in_backbone else 1.0),
             "weight_decay": 0.0 if no_decay else o.weight_decay, "name": f"{'backbone' if in_backbone else 'head'}"
             f"{', no decay' if no_decay else ''}"}
            for (in_backbone, no_decay), params in sorted(groups.items())]


def fused_optimizer_supported(groups: List[Dict[str, Any]]) -> bool:
    """Whether PyTorch's fused Adam/AdamW kernel takes these parameters (floating point, on
    CPU or CUDA): one kernel per step instead of ~10 small ops per tensor, 3x faster on a
    TAG-Head's ~30 tensors on CPU; the update is the same algorithm (to float rounding)."""
    params = [p for group in groups for p in group["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    o = config.optim
    groups = parameter_groups(config, model)
    if o.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if o.optimizer == "adam" else torch.optim.AdamW
        return cls(groups, lr=o.lr, weight_decay=o.weight_decay, fused=fused_optimizer_supported(groups) or None)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def build_scheduler(config: Config, optimizer, steps_per_epoch: int):
    """Linear warm-up, then cosine annealing to ``min_lr`` (or constant); the schedule moves every
    optimiser step (``optim.schedule_unit=step``) or once per epoch (``epoch``, the authors'
    ``CosineAnnealingLR(T_max=epochs)``)."""
    o = config.optim
    total = max(1, config.train.epochs * steps_per_epoch)
    warmup = int(round(o.warmup_epochs * steps_per_epoch))
    floor = o.min_lr / o.lr if o.lr > 0 else 0.0

    if o.schedule_unit == "epoch":  # CosineAnnealingLR(T_max=epochs) stepped once per epoch
        total, warmup = max(1, config.train.epochs), int(round(o.warmup_epochs))

    def factor(step: int) -> float:
        if o.schedule_unit == "epoch":
            step = step // steps_per_epoch
        if warmup and step < warmup:
            return (step + 1) / warmup
        if o.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def eval_autocast_dtype(config: Config, device: torch.device) -> Optional[torch.dtype]:
    """Evaluation runs in float32 unless ``train.eval_amp`` asks for autocast."""
    mode = config.train.eval_amp
    return autocast_dtype(config.train.amp if mode == "train" else mode, device)
