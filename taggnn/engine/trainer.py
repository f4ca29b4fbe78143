"""Training and evaluation loops: the paper's recipe, checkpoints, exact resume, AMP, DDP.

:func:`train` runs a whole job described by a :class:`~taggnn.engine.config.Config`:
Adam (or AdamW/SGD) with per-step cosine annealing and optional linear warm-up,
cross-entropy (optional label smoothing), gradient accumulation and clipping, mixed
precision on CUDA. Model selection uses the validation split only; the test split is
evaluated once, at the end, with the best validation checkpoint. Every epoch (and every
``checkpoint_every_steps`` steps) ``last.pt`` is written atomically; ``--resume`` continues
exactly where it stopped, mid-epoch included.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm import tqdm

from ..data.features import read_info
from ..data.views import average_views
from ..errors import CheckpointError, TrainingError  # noqa: F401  (re-exported)
from ..models import build_model_from_config
from ..models.hub import is_pretrained_source, read_config, resolve_pretrained
from ..models.tagnet import load_pretrained, record_config
from ..utils.outputs import write_atomic
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import RESUMABLE_KEYS, Config, ConfigError, apply_override, flatten, load_config, set_value, validate
from .data import EpochSeeded, build_dataset, class_names, eval_sampler, make_loader
from .distributed import (
    DistributedContext,
    ResumableSampler,
    all_reduce_sum,
    barrier,
    broadcast_flag,
    class_weights,
    init_distributed,
    sample_weights,
)
from .loggers import RunLog
from .metrics import ClassificationMeter
from .plots import save_confusion_matrix
from .runfolder import (  # noqa: F401  (LOCK_NAME, RUN_FILES, RunLock, existing_run_files: re-exported)
    LOCK_NAME,
    MANIFEST_NAME,
    RUN_FILES,
    RunLock,
    _quote,
    check_run_folder,
    clear_run_folder,
    existing_run_files,
    read_manifest,
    record_outputs,
    remove_stale_temporaries,
    write_text_atomic,
)

logger = logging.getLogger(__name__)

#: Keys that may change between a run and its resumption without changing what is computed
#: (``resumable=True`` in their field's metadata, see :func:`taggnn.engine.config.option`).
RESUMABLE_CHANGES = set(RESUMABLE_KEYS)


# ------------------------------------------------------------------ building blocks


def resolve_device(name: str, context: DistributedContext) -> torch.device:
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
    if amp == "off" or device.type != "cuda":
        return None  # mixed precision is off on CPU
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


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def evaluate(model: nn.Module, dataset, *, batch_size: int, device: torch.device, num_classes: int,
             context: DistributedContext = DistributedContext(), amp_dtype: Optional[torch.dtype] = None,
             config: Optional[Config] = None, progress: bool = True, collect_logits: bool = False):
    """Runs ``model`` over ``dataset`` (sharded across ranks without padding).

    Returns a :class:`ClassificationMeter` holding counts summed over all ranks (and the
    logits of this rank when ``collect_logits``).
    """
    model = unwrap(model)
    was_training = model.training
    model.eval()
    meter = ClassificationMeter(num_classes)
    sampler = eval_sampler(dataset, context)
    cfg = config or Config()
    loader = make_loader(dataset, sampler, batch_size, cfg, device)
    logits_all, skipped = [], []
    iterator = tqdm(loader, desc="eval", unit="batch", leave=False, disable=not (progress and context.is_main))
    for clips, labels, batch_skipped in iterator:
        skipped += batch_skipped
        if clips is None:
            continue
        clips = clips.to(device, non_blocking=True)
        views = clips.dim() == 6  # (B, V, 3, T, H, W): multi-view testing
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            logits = model(clips.flatten(0, 1) if views else clips)
        if views:
            logits = average_views(logits.view(clips.size(0), clips.size(1), -1), cfg.eval.average)
        meter.update(logits.float(), labels)
        if collect_logits:
            logits_all.append(logits.float().cpu())
    confusion = all_reduce_sum(meter.confusion, context)
    hits = all_reduce_sum(meter.topk_hits, context)
    if context.enabled:  # unreadable clips of every rank
        gathered: List[Any] = [None] * context.world_size
        torch.distributed.all_gather_object(gathered, skipped)
        skipped = [path for part in gathered for path in part]
    meter.reset()
    meter.merge_(confusion, hits)
    meter.skipped = skipped
    if skipped and context.is_main:
        logger.warning("evaluation: %d unreadable clips were skipped and not scored (first: %s)", len(skipped),
                       ", ".join(skipped[:3]))
    model.train(was_training)
    if collect_logits:
        return meter, torch.cat(logits_all) if logits_all else torch.empty(0, num_classes)
    return meter


def write_evaluation(out: Path, split: str, meter: ClassificationMeter, names: Optional[List[str]],
                     mca: str, extra: Optional[Dict[str, Any]] = None, *, tag: Optional[str] = None) -> Dict[str, Any]:
    """metrics_<tag>.json, per_class_<tag>.csv, skipped_<tag>.txt (the unreadable clips, if any) and
    (with matplotlib) confusion_<tag>.png; ``tag`` defaults to the split's name.

    ``count`` in the metrics is the number of clips scored, ``skipped`` the number that could
    not be read (and were not scored).
    """
    tag = tag or split
    out.mkdir(parents=True, exist_ok=True)
    metrics = meter.compute(mca)
    metrics["mca_present"] = meter.mean_class_accuracy("present")
    metrics["mca_union"] = meter.mean_class_accuracy("union")
    metrics["split"] = split
    metrics.update(extra or {})
    (out / f"metrics_{tag}.json").write_text(json.dumps(metrics, indent=2))
    if meter.skipped:
        (out / f"skipped_{tag}.txt").write_text("\n".join(meter.skipped) + "\n")
    with open(out / f"per_class_{tag}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "name", "support", "correct", "accuracy"])
        writer.writeheader()
        writer.writerows(meter.per_class_rows(names))
    try:
        save_confusion_matrix(meter.confusion, names, out / f"confusion_{tag}.png", title=f"{tag}")
    except ImportError:
        logger.info("matplotlib not installed: no confusion-matrix PNG")
    return metrics


# ------------------------------------------------------------------------- train



def _check_resume_config(saved: Config, current: Config, path: Path) -> None:
    differences = [line for line in saved.diff(current) if line.split(":")[0] not in RESUMABLE_CHANGES]
    if differences:
        raise ConfigError(
            f"{path} was written by another config; these values differ (checkpoint -> now): "
            + "; ".join(differences) + ". Resume with the checkpoint's config or start a new run.")


def resume_config(checkpoint_path: Path, *, config: Optional[str] = None, overrides: Sequence[str] = (),
                  rerun_options: str = "") -> Config:
    """The config a resumed run continues with: the one saved in the checkpoint, changed only in
    the keys of :data:`RESUMABLE_CHANGES`. ``train.max_steps`` limits one invocation: it is not
    taken from the checkpoint (the resumed run goes on to ``train.epochs``) unless given again.

    Args:
        checkpoint_path: The checkpoint ``--resume`` continues.
        config: A preset or YAML file given explicitly (``--config``); its values of
            resumable keys are taken.
        overrides: ``key=value`` items (``--set``).
        rerun_options: Options to repeat in the suggested command (e.g. ``" --out B"``).

    Raises:
        ConfigError: A key that cannot change on resume is given a value other than the
            checkpoint's (the message names each such key and a command that resumes).
    """
    path = Path(checkpoint_path)
    saved = Config.from_dict(load_checkpoint(path)["config"], source=str(path))
    if config is not None:
        given, source = load_config(config, overrides), f"--config {config}" + (" with --set" if overrides else "")
    else:
        given, source = Config.from_dict(saved.to_dict(), source=str(path)), "--set"
        for item in overrides:  # read as every --set is
            apply_override(given, item, source="--set")
        validate(given)
    ours, theirs = flatten(saved.to_dict()), flatten(given.to_dict())
    changed = [key for key in sorted(ours) if ours[key] != theirs.get(key)]
    fixed = [key for key in changed if key not in RESUMABLE_CHANGES]
    if fixed:
        keep = [item for item in overrides if item.split("=", 1)[0].strip() in RESUMABLE_CHANGES]
        command = (f"taggnn train --resume {_quote(path)}" + "".join(f" --set {_quote(item)}" for item in keep)
                   + rerun_options)
        raise ConfigError(
            f"--resume {path} continues with the config saved in the checkpoint; {source} gives other values of "
            f"keys that cannot change on resume: "
            + "; ".join(f"{key}: {ours[key]!r} -> {theirs.get(key)!r}" for key in fixed)
            + f". Resume without them: {command} (keys that may change on resume: "
            f"{', '.join(sorted(RESUMABLE_CHANGES))}), or start a new run")
    resumed = Config.from_dict(saved.to_dict(), source=str(path))
    for key in changed:
        set_value(resumed, key, theirs[key], source=source)
        logger.info("resuming with %s = %r (the checkpoint has %r)", key, theirs[key], ours[key])
    given_keys = {item.split("=", 1)[0].strip() for item in overrides}
    if config is None and "train.max_steps" not in given_keys:
        resumed.train.max_steps = None  # a limit of one invocation: the resumed run goes on to train.epochs
    return validate(resumed)


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


class Trainer:
    """One training job, in named steps: :meth:`setup`, :meth:`resume`, :meth:`train_epoch`,
    :meth:`validate`, :meth:`final_test`; :func:`train` runs them in order.

    The position (``epoch``, ``batches_done``, ``step``), the best validation score and the
    best weights (kept in memory, so that every rank tests the same weights without reading a
    file another rank wrote) are the state a checkpoint saves.
    """

    def __init__(self, config: Config, out: Path, *, progress: bool = True):
        self.config, self.out, self.progress = config, Path(out), progress
        self.epoch = self.batches_done = self.step = 0
        self.best: Dict[str, Any] = {"top1": -1.0, "epoch": -1}
        self.best_state: Optional[Dict[str, torch.Tensor]] = None
        # the last checkpoint that can continue the run: its file and position
        self.last_good: Optional[Dict[str, Any]] = None
        self.loss_sum, self.loss_count = 0.0, 0  # training loss since the last checkpoint
        # this rank's sums over the current epoch so far (its record's train_loss and train_top1)
        self.running = {"loss": 0.0, "correct": 0, "count": 0}
        self.history: List[Dict[str, Any]] = []
        self.skipped_train: List[str] = []
        self.load_weights = True  # read model.weights (not when resuming: the checkpoint holds every weight)

    # ------------------------------------------------------------ set-up
    def setup(self) -> None:
        """:meth:`setup_context`, then :meth:`setup_run`."""
        self.setup_context()
        self.setup_run()

    def setup_context(self) -> None:
        """Joins the process group (under torchrun) and picks the device."""
        t = self.config.train
        cuda = t.device.startswith("cuda") or (t.device == "auto" and torch.cuda.is_available())
        self.context = init_distributed("cuda" if cuda else "cpu")
        self.device = resolve_device(t.device, self.context)

    def setup_run(self) -> None:
        """Datasets (train, validation and test: every split is checked before any step), model,
        optimiser, schedule and sampler."""
        config, t = self.config, self.config.train
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=self.device.type == "cuda")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not t.deterministic

        self.train_set = EpochSeeded(build_dataset(config, "train", train=True), t.seed)
        self.names = class_names(self.train_set)
        # the evaluation splits are built (and thereby checked) now, before the first step, not after training
        self.val_set = build_dataset(config, config.data.val_split, train=False, classes=self.names)
        self.test_set = build_dataset(config, config.data.test_split, train=False, classes=self.names, views=True)
        self.num_classes = len(self.names) if self.names else config.data.num_classes

        torch.manual_seed(t.seed)  # identical initial weights on every rank
        self.model = build_model_from_config(config, self.num_classes, load_weights=self.load_weights).to(self.device)
        torch.manual_seed(t.seed + 1_000 * self.context.rank)  # per-rank dropout streams
        self.ddp_model: nn.Module = self.model
        if self.context.enabled:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if t.compile:  # the compiled module shares the parameters; checkpoints store self.model's
            self.ddp_model = torch.compile(self.ddp_model)
        self.amp_dtype = autocast_dtype(t.amp, self.device)
        self.eval_dtype = eval_autocast_dtype(config, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        targets = getattr(self.train_set, "targets", None)
        needs_targets = config.data.sampler != "random" or config.optim.class_weights != "none"
        if needs_targets and targets is None:
            raise ConfigError("data.sampler / optim.class_weights need a dataset with class targets")
        self.sampler = ResumableSampler(len(self.train_set), seed=t.seed, shuffle=True, rank=self.context.rank,
                                        world_size=self.context.world_size,
                                        weights=sample_weights(targets, config.data.sampler) if needs_targets else None)
        weights = class_weights(targets, self.num_classes, config.optim.class_weights) if needs_targets else None
        self.loss_weights = None if weights is None else weights.to(self.device)
        self.batches_per_epoch = math.ceil(len(self.sampler.indices()) / t.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / config.optim.accumulate)
        self.optimizer = build_optimizer(config, self.model)
        self.scheduler = build_scheduler(config, self.optimizer, self.steps_per_epoch)

    # ------------------------------------------------------------ resume
    def resume(self, path: Path) -> None:
        """Restores every state of ``path`` (a ``last.pt``); a changed ``optim.lr`` rescales the
        schedule from the resumed step on (a documented resumable change).

        A checkpoint that breaks the blow-up rule (:data:`MAX_HEALTHY_WEIGHT`: non-finite or
        exploded weights, or a blown-up loss) is refused, naming a checkpoint of its folder that
        can continue the run, if there is one.
        """
        path = Path(path)
        checkpoint = load_checkpoint(path)
        saved = Config.from_dict(checkpoint["config"], source=str(path))
        _check_resume_config(saved, self.config, path)
        problem = checkpoint_problem(checkpoint["model"], self._parameter_names(), checkpoint.get("train_loss"),
                                     self.num_classes)
        if problem:
            raise TrainingError(self._cannot_continue(path, problem))
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        if self.config.optim.lr != saved.optim.lr:
            scale = self.config.optim.lr / saved.optim.lr
            self.scheduler.base_lrs = [lr * scale for lr in self.scheduler.base_lrs]
            for group in self.optimizer.param_groups:
                group["initial_lr"] = group.get("initial_lr", group["lr"]) * scale
                group["lr"] *= scale
            logger.info("resuming with optim.lr %g instead of %g: the schedule is scaled by %g from here",
                        self.config.optim.lr, saved.optim.lr, scale)
        self.epoch, self.batches_done, self.step = checkpoint["epoch"], checkpoint["batches_done"], checkpoint["step"]
        self.best = checkpoint.get("best", self.best)
        self.last_good = {"path": path, "epoch": self.epoch, "batches_done": self.batches_done, "step": self.step}
        set_rng_state(checkpoint["rng"][min(self.context.rank, len(checkpoint["rng"]) - 1)])
        running = checkpoint.get("epoch_running")  # absent in checkpoints of older versions
        if running and self.batches_done:
            self.running = dict(running[min(self.context.rank, len(running) - 1)])
        self.skipped_train = list(checkpoint.get("skipped_train", []))
        self.best_state = self._broadcast_best_state(path.parent / "best.pt")
        if self.context.is_main:
            logger.info("resumed from %s at epoch %d, batch %d, step %d", path, self.epoch, self.batches_done,
                        self.step)

    def _parameter_names(self) -> List[str]:
        return [name for name, _ in self.model.named_parameters()]

    def _lower_lr(self) -> str:
        return f"{self.config.optim.lr / 10:g}"

    def _start_over(self, folder: Path) -> str:
        """A command that starts the run in ``folder`` over with a 10x lower learning rate in a new
        folder beside it (its config.yaml, an input, is never a file the new run writes), when the
        folder has the run's config.yaml and manifest; else the advice in words."""
        if (folder / "config.yaml").is_file() and read_manifest(folder) is not None:
            lower = self._lower_lr()
            return (f"start over with a 10x lower learning rate: taggnn train --config "
                    f"{_quote(folder / 'config.yaml')} --out {_quote(folder.parent / f'{folder.name}_lr{lower}')} "
                    f"--set optim.lr={lower}")
        return f"start a new run with a lower optim.lr (e.g. {self._lower_lr()})"

    def _cannot_continue(self, path: Path, problem: str) -> str:
        """The refusal of a checkpoint that cannot continue a run, naming the newest checkpoint of
        its folder that can."""
        candidates = []
        for name in ("last.pt", "best.pt"):
            other = path.parent / name
            if not other.is_file() or other.resolve() == path.resolve():
                continue
            try:
                checkpoint = load_checkpoint(other)
            except (CheckpointError, OSError):
                continue
            if checkpoint_problem(checkpoint["model"], self._parameter_names(), checkpoint.get("train_loss"),
                                  self.num_classes) is None:
                candidates.append((int(checkpoint.get("step", 0)), other))
        if candidates:
            step, other = max(candidates, key=lambda item: item[0])
            into = "" if other.parent.resolve() == self.out.resolve() else f" --out {_quote(self.out)}"
            if into and read_manifest(self.out):
                into += " --overwrite"
            advice = (f"{other} (step {step}) can; continue it with a 10x lower learning rate: taggnn train --resume "
                      f"{_quote(other)}{into} --set optim.lr={self._lower_lr()}")
        else:
            advice = f"no other checkpoint in {path.parent} can; {self._start_over(path.parent)}"
        return f"{path} cannot continue the run: {problem} (a checkpoint that can has {HEALTH_RULE}); {advice}"

    def _broadcast_best_state(self, best_path: Path) -> Optional[Dict[str, torch.Tensor]]:
        """The best weights so far, read by the main rank and sent to the others."""
        state = [load_checkpoint(best_path)["model"] if self.context.is_main and best_path.exists() else None]
        if self.context.enabled:
            torch.distributed.broadcast_object_list(state, src=0)
        return state[0]

    # ------------------------------------------------------- checkpoints
    def payload(self, epoch: int, batches_done: int) -> Dict[str, Any]:
        states, running = [rng_state()], [dict(self.running)]
        if self.context.enabled:  # every rank's RNG state and sums, so that each resumes its own stream
            gathered: List[Any] = [None] * self.context.world_size
            torch.distributed.all_gather_object(gathered, (states[0], running[0]))
            states, running = [item[0] for item in gathered], [item[1] for item in gathered]
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": epoch,
                "batches_done": batches_done, "step": self.step, "rng": states, "best": self.best,
                "config": self.config.to_dict(), "classes": self.names, "num_classes": self.num_classes,
                "train_loss": self._loss_since_checkpoint(), "epoch_running": running,
                "skipped_train": list(self.skipped_train)}

    def _loss_since_checkpoint(self) -> Optional[float]:
        return self.loss_sum / self.loss_count if self.loss_count else None

    def require_healthy(self) -> None:
        """Stops the run (naming the last checkpoint that can continue it) when the weights break
        the blow-up rule (:data:`MAX_HEALTHY_WEIGHT`): non-finite, exploded, or a blown-up loss
        since the previous checkpoint."""
        state = self.model.state_dict()
        bad = non_finite_parameters(state)
        problem = (f"the weights became non-finite ({', '.join(bad[:3])})" if bad else
                   checkpoint_problem(state, self._parameter_names(), self._loss_since_checkpoint(), self.num_classes))
        if broadcast_flag(problem is not None, self.context):
            raise TrainingError(self._diverged(f"{problem or 'the run diverged on another rank'} at step {self.step}"))

    def save_last(self, epoch: int, batches_done: int) -> None:
        """Writes ``last.pt``, unless the weights break the blow-up rule (non-finite or exploded
        weights, or a blown-up loss; :data:`MAX_HEALTHY_WEIGHT`): then the previous ``last.pt``
        (the last one that can continue the run) is kept and the run stops saying how to go on."""
        self.require_healthy()
        data = self.payload(epoch, batches_done)
        if self.context.is_main:
            save_checkpoint(self.out / "last.pt", data)
        self.last_good = {"path": self.out / "last.pt", "epoch": epoch, "batches_done": batches_done,
                          "step": self.step}
        self.loss_sum, self.loss_count = 0.0, 0

    def _diverged(self, what: str) -> str:
        """The message of a run that diverged: the last checkpoint that can continue it and a
        command that continues it with a 10x lower learning rate (or starts over with one)."""
        if self.last_good is None:
            kept = f"no checkpoint was written before it; {self._start_over(self.out)}"
        else:
            good, path = self.last_good, Path(self.last_good["path"])
            into = "" if path.parent.resolve() == self.out.resolve() else f" --out {_quote(self.out)} --overwrite"
            kept = (f"kept the last good checkpoint {path} from step {good['step']} (epoch {good['epoch'] + 1}, "
                    f"batch {good['batches_done']}), the last one with {HEALTH_RULE}; continue it with a 10x lower "
                    f"learning rate: taggnn train --resume {_quote(path)}{into} --set optim.lr={self._lower_lr()}")
        return f"{what}; {kept} (or set optim.grad_clip, or check the data)"

    # ------------------------------------------------------------- epoch
    def train_epoch(self, log: RunLog) -> bool:
        """Trains until the end of the current epoch; returns False when ``train.max_steps``
        stopped it."""
        config, t, context = self.config, self.config.train, self.context
        self.train_set.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, start=self.batches_done * t.batch_size)
        loader = make_loader(self.train_set, self.sampler, t.batch_size, config, self.device, self.epoch)
        self.model.train()
        running = self.running
        started = time.perf_counter()
        iterator = tqdm(loader, desc=f"epoch {self.epoch + 1}/{t.epochs}", unit="batch",
                        total=self.batches_per_epoch, initial=self.batches_done,
                        disable=not (self.progress and context.is_main))
        for clips, labels, skipped in iterator:
            self.skipped_train += skipped
            last_of_step = ((self.batches_done + 1) % config.optim.accumulate == 0
                            or self.batches_done + 1 == self.batches_per_epoch)
            self.batches_done += 1
            if broadcast_flag(clips is None, context):  # every clip of a batch unreadable (on some rank)
                logger.warning("epoch %d, batch %d: no readable clip on some rank, batch skipped", self.epoch + 1,
                               self.batches_done)
            else:
                loss, correct = self._forward_backward(clips, labels, last_of_step)
                self.loss_sum += loss * labels.numel()
                self.loss_count += labels.numel()
                running["loss"] += loss * labels.numel()
                running["correct"] += correct
                running["count"] += labels.numel()
            if last_of_step:
                self._optimizer_step()
                elapsed = time.perf_counter() - started
                rate = running["count"] * context.world_size / max(elapsed, 1e-9)
                if running["count"]:
                    iterator.set_postfix(loss=f"{running['loss'] / running['count']:.3f}",
                                         acc=f"{running['correct'] / running['count']:.3f}", clips_s=f"{rate:.1f}")
                if context.is_main and self.step % t.log_every == 0:
                    log.write({"kind": "train", "epoch": self.epoch + 1, "step": self.step,
                               "loss": running["loss"] / max(running["count"], 1),
                               "lr": self.scheduler.get_last_lr()[0], "clips_per_s": rate})
                if t.checkpoint_every_steps and self.step % t.checkpoint_every_steps == 0:
                    self.save_last(self.epoch, self.batches_done)
                if t.max_steps is not None and self.step >= t.max_steps:
                    self.save_last(self.epoch, self.batches_done)
                    return False
        record = {"kind": "epoch", "epoch": self.epoch + 1, "step": self.step,
                  "train_loss": running["loss"] / max(running["count"], 1),
                  "train_top1": running["correct"] / max(running["count"], 1),
                  "epoch_s": time.perf_counter() - started}
        if self.skipped_train:
            record["skipped_clips"] = len(self.skipped_train)
            logger.warning("epoch %d: %d unreadable training clips skipped so far (first: %s)", self.epoch + 1,
                           len(self.skipped_train), ", ".join(self.skipped_train[:3]))
        self.epoch += 1
        self.batches_done = 0
        self.running = {"loss": 0.0, "correct": 0, "count": 0}
        self.history.append(record)
        return True

    def _forward_backward(self, clips: torch.Tensor, labels: torch.Tensor, last_of_step: bool):
        config, context = self.config, self.context
        clips = clips.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        sync = nullcontext() if (last_of_step or not context.enabled) else self.ddp_model.no_sync()
        with sync:
            with torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext():
                logits = self.ddp_model(clips)
                loss = F.cross_entropy(logits.float(), labels, weight=self.loss_weights,
                                       label_smoothing=config.optim.label_smoothing)
            if broadcast_flag(not torch.isfinite(loss).item(), context):
                raise TrainingError(self._diverged(
                    f"non-finite loss ({loss.item()}) at epoch {self.epoch + 1}, batch {self.batches_done}"))
            self.scaler.scale(loss / config.optim.accumulate).backward()
        return loss.item(), int((logits.argmax(1) == labels).sum())

    def _optimizer_step(self) -> None:
        o = self.config.optim
        if any(p.grad is not None for p in self.model.parameters()):
            if o.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    # -------------------------------------------------------- validation
    def validate(self, log: RunLog) -> None:
        """Validation after an epoch (every ``eval_every``), best weights, ``last.pt``."""
        t, record = self.config.train, self.history[-1]
        if self.epoch % t.eval_every == 0 or self.epoch == t.epochs:
            meter = evaluate(self.model, self.val_set, batch_size=t.eval_batch_size, device=self.device,
                             num_classes=self.num_classes, context=self.context, amp_dtype=self.eval_dtype,
                             config=self.config, progress=self.progress)
            metrics = meter.compute(t.mca)
            record.update({f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            if metrics["top1"] > self.best["top1"]:  # the same counts on every rank: all agree
                self.best = {"top1": metrics["top1"], "mca": metrics["mca"], "epoch": self.epoch}
                self.require_healthy()
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
                data = self.payload(self.epoch, 0)
                if self.context.is_main:
                    save_checkpoint(self.out / "best.pt", data)
        if self.context.is_main:
            log.write(record)
            logger.info("epoch %d: loss %.4f, train top-1 %.3f%s", self.epoch, record["train_loss"],
                        record["train_top1"], f", val top-1 {record['val_top1']:.3f}, val MCA {record['val_mca']:.3f}"
                        if "val_top1" in record else "")
        self.save_last(self.epoch, 0)

    def export_backbone(self, path: Path) -> None:
        """The best weights' backbone as a plain state dict, loadable with ``model.weights=<path>``
        (the same loading path and checks as released weights)."""
        if not hasattr(self.model, "backbone"):
            raise ConfigError("train.export_backbone needs a model with a backbone (not data.features)")
        state = {k[len("backbone."):]: v for k, v in self.best_state.items() if k.startswith("backbone.")}
        save_weights = {k: v.clone() for k, v in state.items()}
        write_atomic(path, lambda f: torch.save(save_weights, f))
        logger.info("wrote the backbone weights of the best epoch to %s (use --set model.weights=%s)", path, path)

    # -------------------------------------------------------- final test
    def final_test(self) -> Dict[str, Any]:
        """The test split, once, with the best validation weights (held in memory)."""
        t = self.config.train
        if self.best_state is None:
            return {}
        self.model.load_state_dict(self.best_state)
        meter = evaluate(self.model, self.test_set, batch_size=t.eval_batch_size, device=self.device,
                         num_classes=self.num_classes, context=self.context, amp_dtype=self.eval_dtype,
                         config=self.config, progress=self.progress)
        if not self.context.is_main:
            return {}
        metrics = write_evaluation(self.out, self.config.data.test_split, meter, self.names, t.mca,
                                   {"checkpoint": str(self.out / "best.pt"), "best_epoch": self.best["epoch"]})
        if t.export_backbone:
            self.export_backbone(self.out / "backbone.pt")
        logger.info("test (%s, best val epoch %d): top-1 %.4f, top-5 %.4f, MCA (%s) %.4f, %d clips%s",
                    self.config.data.test_split, self.best["epoch"], metrics["top1"], metrics["top5"], t.mca,
                    metrics["mca"], metrics["count"],
                    f", {metrics['skipped']} unreadable (skipped)" if metrics["skipped"] else "")
        return metrics


def run_outputs(config: Config) -> List[str]:
    """Names of the files a run of ``config`` writes into its folder (its manifest lists them)."""
    tag = config.data.test_split
    names = ["config.yaml", "log.jsonl", "tensorboard", "last.pt", "best.pt", "summary.json",
             f"metrics_{tag}.json", f"per_class_{tag}.csv", f"confusion_{tag}.png", f"skipped_{tag}.txt"]
    if "csv" in config.train.loggers:
        names += ["log.csv", "params.csv"]
    if "wandb" in config.train.loggers and not os.environ.get("WANDB_DIR"):
        names.append("wandb")
    return names + (["backbone.pt"] if config.train.export_backbone else [])


def config_inputs(config: Config) -> List[Path]:
    """The existing files and folders that values of ``config`` name (``model.weights``,
    ``data.features``, ...): inputs of the run, which ``--overwrite`` never removes."""
    return [Path(value) for value in flatten(config.to_dict()).values()
            if isinstance(value, str) and value and os.path.exists(value)]


def _tested_summary(out: Path, config: Config) -> Optional[Dict[str, Any]]:
    """The summary of the finished run in ``out`` when its final test results are there
    (``summary.json`` with the test metrics, and ``metrics_<test split>.json``), else None."""
    path = out / "summary.json"
    if not (out / f"metrics_{config.data.test_split}.json").is_file() or not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("test"), dict):
        return None
    summary["already_finished"] = True
    return summary


def _copy_atomic(source: Path, target: Path) -> None:
    with open(source, "rb") as data:
        write_atomic(target, lambda f: shutil.copyfileobj(data, f))


def _refuse_inputs_among_outputs(inputs: Iterable[Path], out: Path, outputs: Iterable[str]) -> None:
    """Raises :class:`TrainingError` when a file the command reads is one the run writes into ``out``
    (e.g. ``--config RUN/config.yaml --out RUN``): the run would replace its own input."""
    written = [(out / name).resolve() for name in outputs]
    for path in inputs:
        resolved = Path(path).resolve()
        clash = next((target for target in written if resolved == target or target in resolved.parents), None)
        if clash is not None:
            copy = Path(path).stem + "_copy" + Path(path).suffix
            raise TrainingError(f"{path} is an input of this run but also a file the run writes into {out} "
                                f"({clash.name}), so it would be replaced; copy it elsewhere first (e.g. "
                                f"cp {_quote(path)} {_quote(copy)}) and pass the copy, or choose another --out")


def train(config: Config, out: Path, *, resume: Optional[Path] = None, progress: bool = True,
          overwrite: bool = False, inputs: Iterable[Path] = ()) -> Dict[str, Any]:
    """Trains, validates and finally tests a model as configured; returns the summary.

    The run folder is locked first (a second process is refused before anything is removed or
    written), then checked (:func:`~taggnn.engine.runfolder.check_run_folder`), and only after the
    data and model are set up does ``overwrite`` remove the previous run's files. Every file the
    run writes is listed in the folder's manifest ``.taggnn-manifest.json`` before it is written.

    Args:
        config: The run's configuration (validated). With ``resume``, the checkpoint's config up
            to :data:`RESUMABLE_CHANGES` (see :func:`resume_config`).
        out: The run folder. It must not hold another run unless ``resume`` continues it (in
            its own folder) or ``overwrite`` removes it; a lock file keeps a second process out
            while this one runs.
        resume: A ``last.pt`` to continue exactly, in its own folder or in an ``out`` that holds
            no run (then the run's ``best.pt`` is copied into ``out``).
        progress: tqdm progress bars.
        overwrite: Remove the files that ``out``'s manifest lists first (never an input of the
            run: ``inputs``, the files its config names, the resumed checkpoint).
        inputs: Further files the command reads (e.g. its ``--config`` file).
    """
    out = Path(out)
    resume = Path(resume) if resume is not None else None
    trainer = Trainer(config, out, progress=progress)
    trainer.load_weights = resume is None
    trainer.setup_context()
    context = trainer.context
    read_by_run = [*inputs, *config_inputs(config), *([resume] if resume is not None else [])]
    outputs = run_outputs(config)
    if resume is None or resume.parent.resolve() != out.resolve():
        _refuse_inputs_among_outputs(read_by_run, out, outputs)
    created = context.is_main and not out.exists()  # removed again if the run fails before writing in it
    if context.is_main:
        out.mkdir(parents=True, exist_ok=True)
    try:
        with RunLock(out) if context.is_main else nullcontext():
            if context.is_main:
                check_run_folder(out, resume=resume, overwrite=overwrite, inputs=read_by_run, outputs=outputs)
            trainer.setup_run()
            if resume is not None:
                trainer.resume(resume)
            t = config.train
            finished_before = trainer.epoch >= t.epochs
            tested = _tested_summary(out, config) if finished_before and context.is_main else None
            if broadcast_flag(tested is not None, context):
                if context.is_main:
                    logger.info("%s already finished all %d epochs and was tested: nothing left to do; its results "
                                "are in %s", resume, t.epochs, out / "summary.json")
                return tested or {}
            if context.is_main:
                if overwrite:
                    clear_run_folder(out, inputs=read_by_run)
                remove_stale_temporaries(out)
                record_outputs(out, outputs)
                if resume is not None and resume.parent.resolve() != out.resolve():
                    # the run's best weights and earlier records, in the run's own folder
                    for name in ("best.pt", "log.jsonl", "log.csv", "params.csv"):
                        if (resume.parent / name).is_file() and name in outputs:
                            _copy_atomic(resume.parent / name, out / name)
            barrier(context)
            if finished_before and context.is_main:
                logger.info("%s already finished all %d epochs: nothing left to train", resume, t.epochs)
            with RunLog.open(out if context.is_main else None, config.train.loggers, run_name=config.name) as log:
                if context.is_main:
                    write_text_atomic(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
                    log.log_params(flatten(config.to_dict()))
                    logger.info("training %s on %s: %d clips, %d classes, %d epochs, device %s, world size %d",
                                config.model.backbone, config.data.dataset, len(trainer.train_set), trainer.num_classes,
                                t.epochs, trainer.device, context.world_size)
                stopped = False
                while trainer.epoch < t.epochs:
                    if not trainer.train_epoch(log):
                        stopped = True
                        break
                    trainer.validate(log)
                barrier(context)
                summary: Dict[str, Any] = {"out": str(out), "epochs_done": trainer.epoch, "steps": trainer.step,
                                           "best": trainer.best, "stopped_early": stopped, "history": trainer.history,
                                           "already_finished": finished_before}
                if trainer.skipped_train:
                    summary["skipped_train_clips"] = sorted(set(trainer.skipped_train))
                if stopped:
                    summary["test_skipped"] = (f"stopped at train.max_steps={t.max_steps} (step {trainer.step}) "
                                               f"before the last epoch; to finish and test, continue with: taggnn "
                                               f"train --resume {_quote(out / 'last.pt')}")
                    if context.is_main:
                        logger.warning("the test split was not evaluated: %s", summary["test_skipped"])
                else:
                    test = trainer.final_test()
                    if test:
                        summary["test"] = test
                        log.log_final(test)
                if context.is_main:
                    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that failed before writing anything leaves no empty folder behind
        raise
    return summary


def trained_config(source: Path) -> Config:
    """The config a taggnn checkpoint or a shared model (see :func:`load_trained`) was trained with."""
    if is_pretrained_source(source):
        return _shared_model_config(read_config(resolve_pretrained(source)), source)
    checkpoint = load_checkpoint(source)
    return Config.from_dict(checkpoint["config"], source=str(source))


def _shared_model_config(shared: Dict[str, Any], source) -> Config:
    """A shared model's training config, or (a model saved without one) the defaults with its
    preprocessing, backbone and number of classes."""
    if shared.get("training_config"):
        return Config.from_dict(shared["training_config"], source=f"{source} (config.json)")
    pre = shared.get("preprocessing") or {}
    data = {key: pre[key] for key in ("num_frames", "crop_size", "short_side", "transform_style", "normalization",
                                      "sampling") if pre.get(key) is not None}
    values: Dict[str, Any] = {"data": dict(data, num_classes=shared["num_classes"])}
    if shared["architecture"].get("backbone"):
        values["model"] = {"backbone": shared["architecture"]["backbone"]}
    return Config.from_dict(values, source=f"{source} (config.json, no training config)")


def _recorded_metrics(checkpoint_path: Path, checkpoint: Dict[str, Any], config: Config) -> Dict[str, Any]:
    """The validation score of a checkpoint and, when the run's final test evaluated this very file,
    its test metrics."""
    metrics: Dict[str, Any] = {}
    best = checkpoint.get("best") or {}
    if best.get("epoch", -1) >= 0:
        metrics[config.data.val_split] = {key: best[key] for key in ("top1", "mca", "epoch") if key in best}
    test_file = Path(checkpoint_path).parent / f"metrics_{config.data.test_split}.json"
    if test_file.is_file():
        try:
            test = json.loads(test_file.read_text())
        except ValueError:
            test = {}
        if Path(str(test.get("checkpoint", ""))).name == Path(checkpoint_path).name:
            metrics[config.data.test_split] = {key: test[key] for key in (
                "top1", "top5", "mca", "mca_present", "mca_union", "count") if key in test}
    return metrics


def load_trained(checkpoint_path: Path, device: torch.device, overrides: Optional[Config] = None):
    """Model (eval mode), config and class names from a taggnn checkpoint or a shared model.

    A shared model is a folder written by ``taggnn export --format safetensors`` (or
    ``save_pretrained``), its ``model.safetensors``, or a Hub id ``owner/name``
    (:func:`taggnn.models.load_pretrained`); its ``config.json`` gives the config and classes.
    The checkpoint holds every weight: ``model.weights`` is never read again (the file may
    have moved, or be a URL). Non-finite weights are refused. The returned model records its
    config, classes and known metrics, so that ``save_pretrained`` can share it.
    """
    if is_pretrained_source(checkpoint_path):
        model = load_pretrained(checkpoint_path)
        bad = non_finite_parameters(model.state_dict())
        if bad:
            raise CheckpointError(f"{checkpoint_path}: {len(bad)} weight tensors hold NaN or infinity "
                                  f"(first: {', '.join(bad[:3])}); this model cannot give meaningful scores")
        config = overrides or _shared_model_config(model.pretrained_metadata, checkpoint_path)
        return model.to(device).eval(), config, model.pretrained_metadata.get("class_names")
    checkpoint = load_checkpoint(checkpoint_path)
    bad = non_finite_parameters(checkpoint["model"])
    if bad:
        raise CheckpointError(f"{checkpoint_path}: {len(bad)} weight tensors hold NaN or infinity "
                              f"(first: {', '.join(bad[:3])}); this model cannot give meaningful scores")
    config = overrides or Config.from_dict(checkpoint["config"], source=str(checkpoint_path))
    model = build_model_from_config(config, checkpoint["num_classes"], load_weights=False)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        saved = Config.from_dict(checkpoint["config"], source=str(checkpoint_path))
        raise ConfigError(f"{checkpoint_path} does not fit this config; differences (checkpoint -> now): "
                          + "; ".join(saved.diff(config)) + f" ({error})") from error
    features = None
    if config.data.features is not None:
        try:
            features = read_info(config.data.features)
        except FileNotFoundError:
            features = None
    record_config(model, config, class_names=checkpoint.get("classes"),
                  metrics=_recorded_metrics(checkpoint_path, checkpoint, config), features=features)
    return model.to(device).eval(), config, checkpoint.get("classes")
