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
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ..models import TAGNet, build_model
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, ConfigError
from .data import EpochSeeded, build_dataset, class_names, eval_sampler, make_loader
from .distributed import (
    DistributedContext,
    ResumableSampler,
    all_reduce_sum,
    barrier,
    broadcast_flag,
    init_distributed,
)
from .metrics import ClassificationMeter

logger = logging.getLogger(__name__)

# Keys that may change between a run and its resumption without changing what is computed.
RESUMABLE_CHANGES = {"train.epochs", "train.max_steps", "train.device", "data.num_workers", "train.log_every",
                     "train.checkpoint_every_steps", "train.eval_batch_size", "name"}


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss); the message says what to do."""


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


def build_model_from_config(config: Config, num_classes: int) -> TAGNet:
    m, d = config.model, config.data
    return build_model(
        m.backbone, num_classes, num_frames=d.num_frames, crop_size=d.crop_size, weights=m.weights,
        freeze_backbone=m.freeze_backbone, num_layers=m.num_layers, num_heads=m.num_heads, ffn_dim=m.ffn_dim,
        dropout=m.dropout, norm_first=m.norm_first, use_transformer=m.use_transformer, intra=m.intra,
        temporal=m.temporal, propagation=m.propagation, K=m.K, alpha=m.alpha, backend=m.backend,
        num_graph_layers=m.num_graph_layers, pre_classifier_norm=m.pre_classifier_norm,
        head_dropout=m.head_dropout, pos_init_std=m.pos_init_std, embed_dim=m.embed_dim,
    )


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    o = config.optim
    parameters = [p for p in model.parameters() if p.requires_grad]
    if o.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=o.lr, weight_decay=o.weight_decay)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(parameters, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def build_scheduler(config: Config, optimizer, steps_per_epoch: int):
    """Per-step schedule: linear warm-up, then cosine annealing to ``min_lr`` (or constant)."""
    o = config.optim
    total = max(1, config.train.epochs * steps_per_epoch)
    warmup = int(round(o.warmup_epochs * steps_per_epoch))
    floor = o.min_lr / o.lr if o.lr > 0 else 0.0

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if o.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
    logits_all = []
    iterator = tqdm(loader, desc="eval", unit="batch", leave=False, disable=not (progress and context.is_main))
    for clips, labels in iterator:
        clips = clips.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            logits = model(clips)
        meter.update(logits.float(), labels)
        if collect_logits:
            logits_all.append(logits.float().cpu())
    confusion = all_reduce_sum(meter.confusion, context)
    hits = all_reduce_sum(meter.topk_hits, context)
    meter.reset()
    meter.merge_(confusion, hits)
    model.train(was_training)
    if collect_logits:
        return meter, torch.cat(logits_all) if logits_all else torch.empty(0, num_classes)
    return meter


def write_evaluation(out: Path, split: str, meter: ClassificationMeter, names: Optional[List[str]],
                     mca: str, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """metrics_<split>.json, per_class_<split>.csv and (with matplotlib) confusion_<split>.png."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = meter.compute(mca)
    metrics["mca_present"] = meter.mean_class_accuracy("present")
    metrics["mca_union"] = meter.mean_class_accuracy("union")
    metrics.update(extra or {})
    (out / f"metrics_{split}.json").write_text(json.dumps(metrics, indent=2))
    with open(out / f"per_class_{split}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "name", "support", "correct", "accuracy"])
        writer.writeheader()
        writer.writerows(meter.per_class_rows(names))
    try:
        from .plots import save_confusion_matrix

        save_confusion_matrix(meter.confusion, names, out / f"confusion_{split}.png", title=f"{split}")
    except ImportError:
        logger.info("matplotlib not installed: no confusion-matrix PNG")
    return metrics


# ------------------------------------------------------------------------- train


class _JsonLog:
    def __init__(self, path: Optional[Path]):
        self.file = open(path, "a") if path else None
        self.tensorboard = None
        if path is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(path.parent / "tensorboard"))
            except Exception:  # tensorboard is optional
                self.tensorboard = None

    def write(self, record: Dict[str, Any]) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.tensorboard is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.tensorboard.add_scalar(f"{record.get('kind', 'train')}/{key}", value, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _check_resume_config(saved: Config, current: Config, path: Path) -> None:
    differences = [line for line in saved.diff(current) if line.split(":")[0] not in RESUMABLE_CHANGES]
    if differences:
        raise ConfigError(
            f"{path} was written by another config; these values differ (checkpoint -> now): "
            + "; ".join(differences) + ". Resume with the checkpoint's config or start a new run."
        )


def train(config: Config, out: Path, *, resume: Optional[Path] = None, progress: bool = True) -> Dict[str, Any]:
    """Trains, validates and finally tests a model as configured; returns the summary."""
    from tqdm import tqdm

    context = init_distributed("cuda" if config.train.device.startswith("cuda")
                               or (config.train.device == "auto" and torch.cuda.is_available()) else "cpu")
    device = resolve_device(config.train.device, context)
    out = Path(out)
    if context.is_main:
        out.mkdir(parents=True, exist_ok=True)
    t = config.train
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not t.deterministic

    checkpoint = None
    if resume is not None:
        checkpoint = load_checkpoint(resume)
        _check_resume_config(Config.from_dict(checkpoint["config"], source=str(resume)), config, Path(resume))

    train_set = EpochSeeded(build_dataset(config, "train", train=True), t.seed)
    val_set = build_dataset(config, config.data.val_split, train=False)
    names = class_names(train_set)
    val_names = class_names(val_set)
    if names and val_names and len(val_names) > len(names):
        names = names + val_names[len(names):]  # classes seen only in validation (csv datasets)
    num_classes = len(names) if names else config.data.num_classes

    torch.manual_seed(t.seed)  # identical initial weights on every rank
    model = build_model_from_config(config, num_classes).to(device)
    torch.manual_seed(t.seed + 1_000 * context.rank)  # per-rank dropout streams
    ddp_model: nn.Module = model
    if context.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    amp_dtype = autocast_dtype(t.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    sampler = ResumableSampler(len(train_set), seed=t.seed, shuffle=True, rank=context.rank,
                               world_size=context.world_size)
    batches_per_epoch = math.ceil(len(sampler.indices()) / t.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / config.optim.accumulate)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, steps_per_epoch)

    epoch, batches_done, global_step, best = 0, 0, 0, {"top1": -1.0, "epoch": -1}
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        epoch, batches_done, global_step = checkpoint["epoch"], checkpoint["batches_done"], checkpoint["step"]
        best = checkpoint.get("best", best)
        set_rng_state(checkpoint["rng"][min(context.rank, len(checkpoint["rng"]) - 1)])
        if context.is_main:
            logger.info("resumed from %s at epoch %d, batch %d, step %d", resume, epoch, batches_done, global_step)

    log = _JsonLog(out / "log.jsonl" if context.is_main else None)
    if context.is_main:
        (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        logger.info("training %s on %s: %d clips, %d classes, %d epochs, device %s, world size %d",
                    config.model.backbone, config.data.dataset, len(train_set), num_classes, t.epochs, device,
                    context.world_size)

    def payload(epoch_: int, batches_: int) -> Dict[str, Any]:
        states = [rng_state()]
        if context.enabled:  # every rank's RNG state, so that each resumes its own stream
            gathered: List[Any] = [None] * context.world_size
            torch.distributed.all_gather_object(gathered, states[0])
            states = gathered
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch_,
                "batches_done": batches_, "step": global_step, "rng": states, "best": best,
                "config": config.to_dict(), "classes": names, "num_classes": num_classes}

    def checkpoint_now(epoch_: int, batches_: int) -> None:
        data = payload(epoch_, batches_)
        if context.is_main:
            save_checkpoint(out / "last.pt", data)

    stopped = False
    history = []
    while epoch < t.epochs and not stopped:
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch, start=batches_done * t.batch_size)
        loader = make_loader(train_set, sampler, t.batch_size, config, device, epoch)
        model.train()
        running_loss, running_correct, running_count = 0.0, 0, 0
        started = time.perf_counter()
        iterator = tqdm(loader, desc=f"epoch {epoch + 1}/{t.epochs}", unit="batch",
                        total=batches_per_epoch, initial=batches_done, disable=not (progress and context.is_main))
        for clips, labels in iterator:
            clips = clips.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            last_of_step = (batches_done + 1) % config.optim.accumulate == 0 or batches_done + 1 == batches_per_epoch
            sync = nullcontext() if (last_of_step or not context.enabled) else ddp_model.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                    logits = ddp_model(clips)
                    loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.optim.label_smoothing)
                if broadcast_flag(not torch.isfinite(loss).item(), context):
                    log.close()
                    raise TrainingError(
                        f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, batch {batches_done + 1}; "
                        f"stopped without overwriting the last good checkpoint {out / 'last.pt'} "
                        f"(lower optim.lr, set optim.grad_clip, or check the data)")
                scaler.scale(loss / config.optim.accumulate).backward()
            batches_done += 1
            running_loss += loss.item() * labels.numel()
            running_correct += int((logits.argmax(1) == labels).sum())
            running_count += labels.numel()
            if last_of_step:
                if config.optim.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                global_step += 1
                elapsed = time.perf_counter() - started
                rate = running_count * context.world_size / max(elapsed, 1e-9)
                iterator.set_postfix(loss=f"{running_loss / running_count:.3f}",
                                     acc=f"{running_correct / running_count:.3f}", clips_s=f"{rate:.1f}")
                if context.is_main and global_step % t.log_every == 0:
                    log.write({"kind": "train", "epoch": epoch + 1, "step": global_step, "loss": loss.item(),
                               "lr": scheduler.get_last_lr()[0], "clips_per_s": rate})
                if t.checkpoint_every_steps and global_step % t.checkpoint_every_steps == 0:
                    checkpoint_now(epoch, batches_done)
                if t.max_steps is not None and global_step >= t.max_steps:
                    checkpoint_now(epoch, batches_done)
                    stopped = True
                    break
        if stopped:
            break
        record = {"kind": "epoch", "epoch": epoch + 1, "step": global_step,
                  "train_loss": running_loss / max(running_count, 1),
                  "train_top1": running_correct / max(running_count, 1),
                  "epoch_s": time.perf_counter() - started}
        skipped = getattr(train_set.dataset, "failures", None)
        if skipped:
            record["skipped_clips"] = len(skipped)  # counted in this process (num_workers=0 sees them all)
            logger.warning("epoch %d: %d unreadable clips skipped so far (first: %s)", epoch + 1, len(skipped),
                           ", ".join(path for path, _ in skipped[:3]))
        epoch += 1
        batches_done = 0
        if epoch % t.eval_every == 0 or epoch == t.epochs:
            meter = evaluate(model, val_set, batch_size=t.eval_batch_size, device=device, num_classes=num_classes,
                             context=context, amp_dtype=amp_dtype, config=config, progress=progress)
            metrics = meter.compute(t.mca)
            record.update({f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            if metrics["top1"] > best["top1"]:
                best = {"top1": metrics["top1"], "mca": metrics["mca"], "epoch": epoch}
                data = payload(epoch, 0)
                if context.is_main:
                    save_checkpoint(out / "best.pt", data)
        history.append(record)
        if context.is_main:
            log.write(record)
            logger.info("epoch %d: loss %.4f, train top-1 %.3f%s", epoch, record["train_loss"], record["train_top1"],
                        f", val top-1 {record['val_top1']:.3f}, val MCA {record['val_mca']:.3f}"
                        if "val_top1" in record else "")
        checkpoint_now(epoch, 0)
    barrier(context)

    summary: Dict[str, Any] = {"out": str(out), "epochs_done": epoch, "steps": global_step, "best": best,
                               "stopped_early": stopped, "history": history}
    if not stopped and (out / "best.pt").exists():
        best_state = load_checkpoint(out / "best.pt")
        model.load_state_dict(best_state["model"])
        test_set = build_dataset(config, config.data.test_split, train=False)
        meter = evaluate(model, test_set, batch_size=t.eval_batch_size, device=device, num_classes=num_classes,
                         context=context, amp_dtype=amp_dtype, config=config, progress=progress)
        if context.is_main:
            summary["test"] = write_evaluation(out, config.data.test_split, meter, names, t.mca,
                                               {"checkpoint": str(out / "best.pt"), "best_epoch": best["epoch"]})
            logger.info("test (%s, best val epoch %d): top-1 %.4f, top-5 %.4f, MCA (%s) %.4f",
                        config.data.test_split, best["epoch"], summary["test"]["top1"], summary["test"]["top5"],
                        t.mca, summary["test"]["mca"])
    if context.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.close()
    return summary


def load_trained(checkpoint_path: Path, device: torch.device, overrides: Optional[Config] = None):
    """Model (eval mode), config and class names from a taggnn checkpoint."""
    checkpoint = load_checkpoint(checkpoint_path)
    config = overrides or Config.from_dict(checkpoint["config"], source=str(checkpoint_path))
    model = build_model_from_config(config, checkpoint["num_classes"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        saved = Config.from_dict(checkpoint["config"], source=str(checkpoint_path))
        raise ConfigError(f"{checkpoint_path} does not fit this config; differences (checkpoint -> now): "
                          + "; ".join(saved.diff(config)) + f" ({error})") from error
    return model.to(device).eval(), config, checkpoint.get("classes")
