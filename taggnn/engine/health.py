"""The blow-up rule: when weights (and the training loss before them) can continue a run, and
what a run that diverged, or a checkpoint that cannot continue one, tells its user to do.

A checkpoint can continue a run when every weight is finite, no parameter's magnitude exceeds
:data:`MAX_HEALTHY_WEIGHT` and the mean training loss since the previous checkpoint is at most
:func:`loss_limit`. The trainer stops a run at the first checkpoint that breaks the rule (keeping
the previous ``last.pt``), and ``--resume`` refuses such a checkpoint; both messages name a
checkpoint that can continue the run and a command that continues it with a 10x lower learning
rate.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import torch

from ..errors import CheckpointError
from .checkpoint import load_checkpoint
from .runfolder import _quote, read_manifest

__all__ = ["MAX_HEALTHY_WEIGHT", "BLOWUP_LOSS_FACTOR", "HEALTH_RULE", "non_finite_parameters", "loss_limit",
           "checkpoint_problem", "cannot_continue_message", "diverged_message"]


def non_finite_parameters(state: Dict[str, Any]) -> List[str]:
    """Names of the floating-point tensors of a state dict holding NaN or infinity."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


#: The blow-up rule. A checkpoint can continue a run when (1) every weight is finite, (2) no
#: parameter's magnitude exceeds ``MAX_HEALTHY_WEIGHT`` and (3) the mean training loss of the steps
#: since the previous checkpoint is finite and at most ``BLOWUP_LOSS_FACTOR`` times the loss of a
#: uniform guess, ln(number of classes). A run is stopped at the first checkpoint that breaks it
#: (``last.pt`` keeps the previous one), and ``--resume`` refuses such a checkpoint.
MAX_HEALTHY_WEIGHT = 1e4
BLOWUP_LOSS_FACTOR = 10.0
HEALTH_RULE = (f"finite weights, every |w| <= {MAX_HEALTHY_WEIGHT:g} and a training loss of at most "
               f"{BLOWUP_LOSS_FACTOR:g} x ln(classes)")


def loss_limit(num_classes: int) -> float:
    """The highest mean training loss of a checkpoint that can continue a run (the blow-up rule)."""
    return BLOWUP_LOSS_FACTOR * math.log(max(num_classes, 2))


def _readable(value: float) -> str:
    """``value`` with one decimal (``2395.1``), or in scientific notation when very large."""
    return f"{value:.1f}" if abs(value) < 1e6 else f"{value:.3g}"


def checkpoint_problem(state: Dict[str, Any], parameter_names: Iterable[str], loss: Optional[float],
                       num_classes: int) -> Optional[str]:
    """Why weights ``state`` (with the mean training ``loss`` before them, if known) cannot
    continue a run under the blow-up rule (:data:`MAX_HEALTHY_WEIGHT`), or ``None`` when they can.

    Only the model's parameters (``parameter_names``) count towards the magnitude limit, not
    buffers such as BatchNorm's running variance.
    """
    bad = non_finite_parameters(state)
    if bad:
        return f"{len(bad)} weight tensors hold NaN or infinity (first: {', '.join(bad[:3])})"
    largest = max((float(state[k].detach().abs().max()) for k in parameter_names
                   if k in state and torch.is_tensor(state[k]) and state[k].is_floating_point() and state[k].numel()),
                  default=0.0)
    if largest > MAX_HEALTHY_WEIGHT:
        return f"the weights exploded (max |w| = {largest:.3g} > {MAX_HEALTHY_WEIGHT:g})"
    limit = loss_limit(num_classes)
    if loss is not None and not loss <= limit:  # also NaN
        return (f"the mean training loss {_readable(loss)} since the previous checkpoint exceeds the blow-up limit "
                f"{BLOWUP_LOSS_FACTOR:g} x ln({num_classes} classes) = {limit:.1f}")
    return None


def _lower_lr(lr: float) -> str:
    return f"{lr / 10:g}"


def _start_over(folder: Path, lr: float) -> str:
    """A command that starts the run in ``folder`` over with a 10x lower learning rate in a new
    folder beside it (its config.yaml, an input, is never a file the new run writes), when the
    folder has the run's config.yaml and manifest; else the advice in words."""
    if (folder / "config.yaml").is_file() and read_manifest(folder) is not None:
        lower = _lower_lr(lr)
        return (f"start over with a 10x lower learning rate: taggnn train --config "
                f"{_quote(folder / 'config.yaml')} --out {_quote(folder.parent / f'{folder.name}_lr{lower}')} "
                f"--set optim.lr={lower}")
    return f"start a new run with a lower optim.lr (e.g. {_lower_lr(lr)})"


def cannot_continue_message(path: Path, problem: str, *, out: Path, parameter_names: Iterable[str],
                            num_classes: int, lr: float) -> str:
    """The refusal of a checkpoint ``path`` that cannot continue a run (because of ``problem``),
    naming the newest checkpoint of its folder that can and a command that continues it into
    ``out`` with a 10x lower learning rate than ``lr``."""
    parameter_names = list(parameter_names)
    candidates = []
    for name in ("last.pt", "best.pt"):
        other = path.parent / name
        if not other.is_file() or other.resolve() == path.resolve():
            continue
        try:
            checkpoint = load_checkpoint(other)
        except (CheckpointError, OSError):
            continue
        if checkpoint_problem(checkpoint["model"], parameter_names, checkpoint.get("train_loss"), num_classes) is None:
            candidates.append((int(checkpoint.get("step", 0)), other))
    if candidates:
        step, other = max(candidates, key=lambda item: item[0])
        into = "" if other.parent.resolve() == out.resolve() else f" --out {_quote(out)}"
        if into and read_manifest(out):
            into += " --overwrite"
        advice = (f"{other} (step {step}) can; continue it with a 10x lower learning rate: taggnn train --resume "
                  f"{_quote(other)}{into} --set optim.lr={_lower_lr(lr)}")
    else:
        advice = f"no other checkpoint in {path.parent} can; {_start_over(path.parent, lr)}"
    return f"{path} cannot continue the run: {problem} (a checkpoint that can has {HEALTH_RULE}); {advice}"


def diverged_message(what: str, *, out: Path, last_good: Optional[Dict[str, Any]], lr: float) -> str:
    """The message of a run in ``out`` that diverged (``what`` happened): the last checkpoint that
    can continue it (``last_good``: its ``path``, ``epoch``, ``batches_done`` and ``step``) and a
    command that continues it with a 10x lower learning rate than ``lr`` (or starts over with one)."""
    if last_good is None:
        kept = f"no checkpoint was written before it; {_start_over(out, lr)}"
    else:
        path = Path(last_good["path"])
        into = "" if path.parent.resolve() == out.resolve() else f" --out {_quote(out)} --overwrite"
        kept = (f"kept the last good checkpoint {path} from step {last_good['step']} (epoch {last_good['epoch'] + 1}, "
                f"batch {last_good['batches_done']}), the last one with {HEALTH_RULE}; continue it with a 10x lower "
                f"learning rate: taggnn train --resume {_quote(path)}{into} --set optim.lr={_lower_lr(lr)}")
    return f"{what}; {kept} (or set optim.grad_clip, or check the data)"
