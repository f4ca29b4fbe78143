"""Evaluation of a model on a split: :func:`evaluate` (sharded across ranks, multi-view testing)
and :func:`write_evaluation` (``metrics_<split>.json``, ``per_class_<split>.csv``,
``confusion_<split>.png``)."""
from __future__ import annotations

import csv
import json
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from tqdm import tqdm

from ..data.views import average_views
from .config import Config
from .data import eval_sampler, make_loader
from .distributed import DistributedContext, all_reduce_sum
from .metrics import ClassificationMeter
from .plots import save_confusion_matrix

__all__ = ["unwrap", "evaluate", "write_evaluation"]

logger = logging.getLogger(__name__)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a :class:`~torch.nn.parallel.DistributedDataParallel` wrapper."""
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
                     mca: str, extra: Optional[Dict[str, Any]] = None, *, tag: Optional[str] = None,
                     plot: bool = True) -> Dict[str, Any]:
    """metrics_<tag>.json, per_class_<tag>.csv, skipped_<tag>.txt (the unreadable clips, if any) and
    (with matplotlib, unless ``plot=False``) confusion_<tag>.png; ``tag`` defaults to the split's name.

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
    if not plot:
        return metrics
    try:
        save_confusion_matrix(meter.confusion, names, out / f"confusion_{tag}.png", title=f"{tag}")
    except ImportError:
        logger.info("matplotlib not installed: no confusion-matrix PNG")
    return metrics
