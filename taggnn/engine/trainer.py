"""Training loop: the paper's recipe, checkpoints, exact resume, AMP, DDP.

:func:`train` runs a whole job described by a :class:`~taggnn.engine.config.Config`:
Adam (or AdamW/SGD) with per-step cosine annealing and optional linear warm-up,
cross-entropy (optional label smoothing), gradient accumulation and clipping, mixed
precision on CUDA. Model selection uses the validation split only; the test split is
evaluated once, at the end, with the best validation checkpoint. Every epoch (and every
``checkpoint_every_steps`` steps) ``last.pt`` is written atomically; ``--resume`` continues
exactly where it stopped, mid-epoch included.

The parts of a run live in their own modules, and every name is also importable from here:

================================  ==============================================================
:mod:`~taggnn.engine.optimization`  device, autocast, parameter groups, optimiser, schedule
:mod:`~taggnn.engine.evaluation`    :func:`evaluate`, :func:`write_evaluation`
:mod:`~taggnn.engine.health`        the blow-up rule (:func:`checkpoint_problem`) and its advice
:mod:`~taggnn.engine.resume`        :func:`resume_config`: the config a resumed run continues with
:mod:`~taggnn.engine.loading`       :func:`load_trained`, :func:`trained_config`
:mod:`~taggnn.engine.runfolder`     the run folder's lock, manifest and checks
:mod:`~taggnn.engine.checkpoint`    atomic checkpoints with the RNG states
================================  ==============================================================

:func:`train` leaves the process as it found it (the global random number generators, PyTorch's
deterministic-algorithms switch and cuDNN's benchmark switch), so that many runs can be trained
one after another in one process (e.g. a study of short head-only runs) with the results of
separate processes.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm import tqdm

from ..errors import CheckpointError, TrainingError  # noqa: F401  (re-exported)
from ..models import build_model_from_config
from ..utils.outputs import write_atomic
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import RESUMABLE_KEYS, Config, ConfigError, flatten
from .data import EpochSeeded, build_dataset, class_names, make_loader
from .distributed import (
    ResumableSampler,
    barrier,
    broadcast_flag,
    class_weights,
    init_distributed,
    sample_weights,
)
from .evaluation import evaluate, unwrap, write_evaluation  # noqa: F401  (re-exported)
from .health import (  # noqa: F401  (re-exported)
    BLOWUP_LOSS_FACTOR,
    HEALTH_RULE,
    MAX_HEALTHY_WEIGHT,
    cannot_continue_message,
    checkpoint_problem,
    diverged_message,
    loss_limit,
    non_finite_parameters,
)
from .loading import _recorded_metrics, _shared_model_config, load_trained, trained_config  # noqa: F401  (re-exported)
from .loggers import RunLog
from .optimization import (  # noqa: F401  (re-exported)
    autocast_dtype,
    build_optimizer,
    build_scheduler,
    eval_autocast_dtype,
    fused_optimizer_supported,
    parameter_groups,
    resolve_device,
)
from .resume import check_resume_config, resume_config  # noqa: F401  (re-exported)
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

__all__ = [
    "RESUMABLE_CHANGES", "Trainer", "train", "run_outputs", "config_inputs",
    # optimisation
    "resolve_device", "autocast_dtype", "eval_autocast_dtype", "parameter_groups", "fused_optimizer_supported",
    "build_optimizer", "build_scheduler",
    # evaluation
    "unwrap", "evaluate", "write_evaluation",
    # the blow-up rule
    "MAX_HEALTHY_WEIGHT", "BLOWUP_LOSS_FACTOR", "HEALTH_RULE", "non_finite_parameters", "loss_limit",
    "checkpoint_problem",
    # resume
    "resume_config", "check_resume_config",
    # trained models
    "trained_config", "load_trained",
    # run folders and errors
    "LOCK_NAME", "MANIFEST_NAME", "RUN_FILES", "RunLock", "existing_run_files", "CheckpointError", "TrainingError",
]

logger = logging.getLogger(__name__)

#: Keys that may change between a run and its resumption without changing what is computed
#: (``resumable=True`` in their field's metadata, see :func:`taggnn.engine.config.option`).
RESUMABLE_CHANGES = set(RESUMABLE_KEYS)




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
        self.plots = True  # the final test's confusion-matrix PNG
        # the test split's counts for the last epoch's weights (:meth:`test_last`), reused by
        # :meth:`final_test` when the last epoch is also the best
        self.last_meter = None

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
        check_resume_config(saved, self.config, path)
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

    def _cannot_continue(self, path: Path, problem: str) -> str:
        return cannot_continue_message(path, problem, out=self.out, parameter_names=self._parameter_names(),
                                       num_classes=self.num_classes, lr=self.config.optim.lr)

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
        return diverged_message(what, out=self.out, last_good=self.last_good, lr=self.config.optim.lr)

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
    def _test_meter(self):
        t = self.config.train
        return evaluate(self.model, self.test_set, batch_size=t.eval_batch_size, device=self.device,
                        num_classes=self.num_classes, context=self.context, amp_dtype=self.eval_dtype,
                        config=self.config, progress=self.progress)

    def test_last(self) -> Dict[str, Any]:
        """The test split's metrics (:meth:`ClassificationMeter.compute`) with the weights the
        model holds now (after the last epoch: those of ``last.pt``), without writing a file."""
        self.last_meter = self._test_meter()
        return self.last_meter.compute(self.config.train.mca)

    def final_test(self) -> Dict[str, Any]:
        """The test split, once, with the best validation weights (held in memory). When the
        last epoch was the best and :meth:`test_last` has tested its weights, its counts are used
        (the same weights, the same test)."""
        t = self.config.train
        if self.best_state is None:
            return {}
        if self.last_meter is not None and self.best["epoch"] == self.epoch:
            meter = self.last_meter
        else:
            self.model.load_state_dict(self.best_state)
            meter = self._test_meter()
        if not self.context.is_main:
            return {}
        metrics = write_evaluation(self.out, self.config.data.test_split, meter, self.names, t.mca,
                                   {"checkpoint": str(self.out / "best.pt"), "best_epoch": self.best["epoch"]},
                                   plot=self.plots)
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
          overwrite: bool = False, inputs: Iterable[Path] = (), plots: bool = True,
          test_last: bool = False) -> Dict[str, Any]:
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
        plots: Write the final test's confusion-matrix PNG (``False``: the metrics and the
            per-class table only; a study needs no plot per run).
        test_last: Also test the last epoch's weights (those of ``last.pt``) before the final
            test: the summary's ``test_last`` holds their metrics (and ``num_classes``). When the last epoch is the
            best one the final test reuses that test pass.

    Returns:
        The summary written to ``summary.json``: ``epochs_done``, ``steps``, ``best`` (the best
        validation epoch), ``history`` (a record per epoch), ``test`` (the final test's metrics,
        absent when ``train.max_steps`` stopped the run first), ...

    The process is left as it was found: the global random number generators (Python's,
    NumPy's, PyTorch's), PyTorch's deterministic-algorithms switch and cuDNN's benchmark switch
    are restored on return, so that runs trained one after another in one process give the
    results of separate processes.
    """
    with _process_state_kept():
        return _train(config, Path(out), resume=resume, progress=progress, overwrite=overwrite, inputs=inputs,
                      plots=plots, test_last=test_last)


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    """Restores on exit the process-wide state a run changes: the random number generators
    (CUDA's only when CUDA was initialised before: reading them would initialise it),
    ``torch.use_deterministic_algorithms`` and ``torch.backends.cudnn.benchmark``."""
    python, numpy, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(torch_state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark


def _train(config: Config, out: Path, *, resume: Optional[Path], progress: bool, overwrite: bool,
           inputs: Iterable[Path], plots: bool = True, test_last: bool = False) -> Dict[str, Any]:
    resume = Path(resume) if resume is not None else None
    trainer = Trainer(config, out, progress=progress)
    trainer.plots = plots
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
                    if test_last and trainer.best_state is not None:
                        summary["test_last"] = dict(trainer.test_last(), num_classes=trainer.num_classes)
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
