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
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ..models import build_model_from_config
from ..models.hub import is_pretrained_source, read_config, resolve_pretrained
from ..models.tagnet import load_pretrained, record_config
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, ConfigError, flatten
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
from .features import read_info
from .loggers import RunLog
from .metrics import ClassificationMeter

logger = logging.getLogger(__name__)

# Keys that may change between a run and its resumption without changing what is computed.
# A lower ``optim.lr`` (and a gradient clip) may be set to continue a run that diverged.
RESUMABLE_CHANGES = {"train.epochs", "train.max_steps", "train.device", "data.num_workers", "train.log_every",
                     "train.checkpoint_every_steps", "train.eval_batch_size", "name", "optim.lr", "optim.grad_clip",
                     "eval.num_clips", "eval.num_crops", "eval.average", "train.eval_amp", "data.decode_threads",
                     "data.persistent_workers", "data.pin_memory", "data.prefetch_factor", "train.compile",
                     "train.loggers", "data.decoder"}


from ..errors import CheckpointError, TrainingError  # noqa: E402  (re-exported)

# ------------------------------------------------------------------ building blocks


def resolve_device(name: str, context: DistributedContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device is 'cuda' but no CUDA device is available")
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
    from tqdm import tqdm

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
            from ..data.views import average_views

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
        from .plots import save_confusion_matrix

        save_confusion_matrix(meter.confusion, names, out / f"confusion_{tag}.png", title=f"{tag}")
    except ImportError:
        logger.info("matplotlib not installed: no confusion-matrix PNG")
    return metrics


# ------------------------------------------------------------------------- train

#: Files a run writes into its folder (an ``--overwrite`` removes exactly these).
RUN_FILES = ("last.pt", "best.pt", "config.yaml", "log.jsonl", "summary.json", "backbone.pt", "log.csv", "params.csv")
RUN_PATTERNS = ("metrics_*.json", "per_class_*.csv", "confusion_*.png", "skipped_*.txt")
LOCK_NAME = ".taggnn.lock"


class RunLock:
    """An exclusive lock file in a run folder: two processes never write into one run.

    A lock left by a process that no longer runs (on this host) is taken over with a warning.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def __enter__(self) -> "RunLock":
        import os
        import socket

        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self.path.read_text().split() if self.path.exists() else []
                pid, host = (int(owner[0]), owner[1]) if len(owner) == 2 and owner[0].isdigit() else (None, None)
                if pid is not None and host == socket.gethostname() and not _process_alive(pid):
                    logger.warning("%s: taking over a stale lock of process %d", self.path, pid)
                    self.path.unlink(missing_ok=True)
                    continue
                raise TrainingError(
                    f"{self.path.parent} is in use by another taggnn process ({' on '.join(owner) or 'unknown'}); "
                    f"wait for it to finish, or remove {self.path} if that process is gone")
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return self
        raise TrainingError(f"could not lock {self.path}")  # pragma: no cover

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _process_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def existing_run_files(folder: Path) -> List[Path]:
    folder = Path(folder)
    found = [folder / name for name in RUN_FILES if (folder / name).exists()]
    for pattern in RUN_PATTERNS:
        found += sorted(folder.glob(pattern))
    return found


def _check_resume_config(saved: Config, current: Config, path: Path) -> None:
    differences = [line for line in saved.diff(current) if line.split(":")[0] not in RESUMABLE_CHANGES]
    if differences:
        raise ConfigError(
            f"{path} was written by another config; these values differ (checkpoint -> now): "
            + "; ".join(differences) + ". Resume with the checkpoint's config or start a new run.")


def non_finite_parameters(state: Dict[str, Any]) -> List[str]:
    """Names of the floating-point tensors of a state dict holding NaN or infinity."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


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
        self.last_good: Optional[Dict[str, int]] = None  # position of the last checkpoint written
        self.history: List[Dict[str, Any]] = []
        self.skipped_train: List[str] = []

    # ------------------------------------------------------------ set-up
    def setup(self) -> None:
        config, t = self.config, self.config.train
        cuda = t.device.startswith("cuda") or (t.device == "auto" and torch.cuda.is_available())
        self.context = init_distributed("cuda" if cuda else "cpu")
        self.device = resolve_device(t.device, self.context)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=self.device.type == "cuda")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not t.deterministic

        self.train_set = EpochSeeded(build_dataset(config, "train", train=True), t.seed)
        self.names = class_names(self.train_set)
        self.val_set = build_dataset(config, config.data.val_split, train=False, classes=self.names)
        self.num_classes = len(self.names) if self.names else config.data.num_classes

        torch.manual_seed(t.seed)  # identical initial weights on every rank
        self.model = build_model_from_config(config, self.num_classes).to(self.device)
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
        schedule from the resumed step on (a documented resumable change)."""
        checkpoint = load_checkpoint(path)
        saved = Config.from_dict(checkpoint["config"], source=str(path))
        _check_resume_config(saved, self.config, Path(path))
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
        self.last_good = {"epoch": self.epoch, "batches_done": self.batches_done, "step": self.step}
        set_rng_state(checkpoint["rng"][min(self.context.rank, len(checkpoint["rng"]) - 1)])
        self.best_state = self._broadcast_best_state(Path(path).parent / "best.pt")
        if self.context.is_main:
            logger.info("resumed from %s at epoch %d, batch %d, step %d", path, self.epoch, self.batches_done,
                        self.step)

    def _broadcast_best_state(self, best_path: Path) -> Optional[Dict[str, torch.Tensor]]:
        """The best weights so far, read by the main rank and sent to the others."""
        state = [load_checkpoint(best_path)["model"] if self.context.is_main and best_path.exists() else None]
        if self.context.enabled:
            torch.distributed.broadcast_object_list(state, src=0)
        return state[0]

    # ------------------------------------------------------- checkpoints
    def payload(self, epoch: int, batches_done: int) -> Dict[str, Any]:
        states = [rng_state()]
        if self.context.enabled:  # every rank's RNG state, so that each resumes its own stream
            gathered: List[Any] = [None] * self.context.world_size
            torch.distributed.all_gather_object(gathered, states[0])
            states = gathered
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": epoch,
                "batches_done": batches_done, "step": self.step, "rng": states, "best": self.best,
                "config": self.config.to_dict(), "classes": self.names, "num_classes": self.num_classes}

    def save_last(self, epoch: int, batches_done: int) -> None:
        """Writes ``last.pt``, unless the weights are no longer finite: then the previous
        ``last.pt`` (the last finite one) is kept and the run stops saying how to go on."""
        bad = non_finite_parameters(self.model.state_dict())
        if broadcast_flag(bool(bad), self.context):
            raise TrainingError(self._diverged(f"the weights became non-finite ({', '.join(bad[:3]) or 'on a rank'}) "
                                               f"at step {self.step}"))
        data = self.payload(epoch, batches_done)
        if self.context.is_main:
            save_checkpoint(self.out / "last.pt", data)
        self.last_good = {"epoch": epoch, "batches_done": batches_done, "step": self.step}

    def _diverged(self, what: str) -> str:
        last = self.out / "last.pt"
        if self.last_good is None:
            kept = "no checkpoint was written before it"
        else:
            good = self.last_good
            kept = (f"kept the last good checkpoint {last} from step {good['step']} (epoch {good['epoch'] + 1}, "
                    f"batch {self.last_good['batches_done']}), whose weights are finite; continue it with a lower "
                    f"learning rate: taggnn train --resume {last} --set optim.lr=<lower>")
        return f"{what}; {kept} (or set optim.grad_clip, or check the data)"

    # ------------------------------------------------------------- epoch
    def train_epoch(self, log: RunLog) -> bool:
        """Trains until the end of the current epoch; returns False when ``train.max_steps``
        stopped it."""
        from tqdm import tqdm

        config, t, context = self.config, self.config.train, self.context
        self.train_set.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, start=self.batches_done * t.batch_size)
        loader = make_loader(self.train_set, self.sampler, t.batch_size, config, self.device, self.epoch)
        self.model.train()
        running_loss, running_correct, running_count = 0.0, 0, 0
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
                running_loss += loss * labels.numel()
                running_correct += correct
                running_count += labels.numel()
            if last_of_step:
                self._optimizer_step()
                elapsed = time.perf_counter() - started
                rate = running_count * context.world_size / max(elapsed, 1e-9)
                if running_count:
                    iterator.set_postfix(loss=f"{running_loss / running_count:.3f}",
                                         acc=f"{running_correct / running_count:.3f}", clips_s=f"{rate:.1f}")
                if context.is_main and self.step % t.log_every == 0:
                    log.write({"kind": "train", "epoch": self.epoch + 1, "step": self.step,
                               "loss": running_loss / max(running_count, 1),
                               "lr": self.scheduler.get_last_lr()[0], "clips_per_s": rate})
                if t.checkpoint_every_steps and self.step % t.checkpoint_every_steps == 0:
                    self.save_last(self.epoch, self.batches_done)
                if t.max_steps is not None and self.step >= t.max_steps:
                    self.save_last(self.epoch, self.batches_done)
                    return False
        record = {"kind": "epoch", "epoch": self.epoch + 1, "step": self.step,
                  "train_loss": running_loss / max(running_count, 1),
                  "train_top1": running_correct / max(running_count, 1),
                  "epoch_s": time.perf_counter() - started}
        if self.skipped_train:
            record["skipped_clips"] = len(self.skipped_train)
            logger.warning("epoch %d: %d unreadable training clips skipped so far (first: %s)", self.epoch + 1,
                           len(self.skipped_train), ", ".join(self.skipped_train[:3]))
        self.epoch += 1
        self.batches_done = 0
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
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
                bad = non_finite_parameters(self.best_state)
                if bad:
                    raise TrainingError(self._diverged(f"the weights became non-finite ({', '.join(bad[:3])})"))
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
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(save_weights, tmp)
        tmp.replace(path)
        logger.info("wrote the backbone weights of the best epoch to %s (use --set model.weights=%s)", path, path)

    # -------------------------------------------------------- final test
    def final_test(self) -> Dict[str, Any]:
        """The test split, once, with the best validation weights (held in memory)."""
        t = self.config.train
        if self.best_state is None:
            return {}
        self.model.load_state_dict(self.best_state)
        test_set = build_dataset(self.config, self.config.data.test_split, train=False, classes=self.names,
                                 views=True)
        meter = evaluate(self.model, test_set, batch_size=t.eval_batch_size, device=self.device,
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


def prepare_run_folder(out: Path, *, resume: Optional[Path], overwrite: bool) -> None:
    """Refuses a folder that already holds a run unless resuming it or overwriting it."""
    out.mkdir(parents=True, exist_ok=True)
    existing = existing_run_files(out)
    if existing and resume is None:
        if not overwrite:
            raise TrainingError(
                f"{out} already holds a run ({', '.join(p.name for p in existing[:4])}); continue it with "
                f"--resume {out / 'last.pt'}, start over with --overwrite, or choose another --out")
        for path in existing:
            path.unlink()
        logger.warning("--overwrite: removed %d files of the previous run in %s", len(existing), out)


def train(config: Config, out: Path, *, resume: Optional[Path] = None, progress: bool = True,
          overwrite: bool = False) -> Dict[str, Any]:
    """Trains, validates and finally tests a model as configured; returns the summary.

    Args:
        config: The run's configuration (validated).
        out: The run folder. It must not hold another run unless ``resume`` continues it or
            ``overwrite`` removes it; a lock file keeps a second process out while this one runs.
        resume: A ``last.pt`` to continue exactly (the same config, up to
            :data:`RESUMABLE_CHANGES`).
        progress: tqdm progress bars.
        overwrite: Remove the files of a previous run in ``out`` first.
    """
    out = Path(out)
    trainer = Trainer(config, out, progress=progress)
    trainer.setup()
    context = trainer.context
    lock = RunLock(out) if context.is_main else nullcontext()
    if context.is_main:
        prepare_run_folder(out, resume=resume, overwrite=overwrite)
    barrier(context)
    with lock, RunLog.open(out if context.is_main else None, config.train.loggers, run_name=config.name) as log:
        if resume is not None:
            trainer.resume(Path(resume))
        t = config.train
        finished_before = trainer.epoch >= t.epochs
        if finished_before and context.is_main:
            logger.info("%s already finished all %d epochs: nothing left to train", resume, t.epochs)
        if context.is_main:
            (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
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
            summary["test_skipped"] = (f"stopped at train.max_steps={t.max_steps} (step {trainer.step}) before the "
                                       f"last epoch; continue with --resume {out / 'last.pt'} to finish and test")
            if context.is_main:
                logger.warning("the test split was not evaluated: %s", summary["test_skipped"])
        else:
            test = trainer.final_test()
            if test:
                summary["test"] = test
                log.log_final(test)
        if context.is_main:
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
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
