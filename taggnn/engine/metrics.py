r"""Classification metrics from exact counts: Top-1, Top-5, mean class accuracy.

:class:`ClassificationMeter` accumulates a confusion matrix and Top-k hit
counts (integers, so sums across processes are exact). Mean class accuracy
(MCA) comes in the two conventions in use:

* ``"present"``: average of per-class recall over classes that occur in the
  ground truth (the authors' code);
* ``"union"``: over the union of true and predicted labels (mmaction2's
  ``mean_class_accuracy``), where a predicted-but-absent class counts 0.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

#: Mean class accuracy over the classes in the ground truth (present) or in truth or predictions (union).
MCA_CONVENTIONS = ("present", "union")


class ClassificationMeter:
    """Accumulates predictions of a ``num_classes``-way classifier.

    Args:
        num_classes (int): Number of classes :math:`C`.
        topk (sequence of int): Top-k accuracies to track. (default: ``(1, 5)``)
    """

    def __init__(self, num_classes: int, topk: Sequence[int] = (1, 5)):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.topk = tuple(topk)
        self.skipped: List[str] = []  # clips that could not be read, hence not scored
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)  # [true, predicted]
        self.topk_hits = torch.zeros(len(self.topk), dtype=torch.long)

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Adds a batch: logits ``(B, C)``, labels ``(B,)``."""
        if logits.dim() != 2 or logits.size(1) != self.num_classes:
            raise ValueError(f"expected logits of shape (B, {self.num_classes}), got {tuple(logits.shape)}")
        if labels.shape != logits.shape[:1]:
            raise ValueError(f"expected labels of shape ({logits.size(0)},), got {tuple(labels.shape)}")
        logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"labels must be in [0, {self.num_classes}), got {int(labels.min())}..{int(labels.max())}: "
                f"the evaluated split has classes the model was not built for"
            )
        predicted = logits.argmax(1)
        index = labels * self.num_classes + predicted
        self.confusion += torch.bincount(index, minlength=self.num_classes ** 2).view(self.num_classes, -1)
        k_max = min(max(self.topk), self.num_classes)
        ranked = logits.topk(k_max, dim=1).indices  # (B, k_max)
        hits = ranked == labels[:, None]
        for i, k in enumerate(self.topk):
            self.topk_hits[i] += int(hits[:, : min(k, k_max)].any(1).sum())

    def merge_(self, confusion: Tensor, topk_hits: Tensor) -> None:
        """Adds counts gathered elsewhere (e.g. an all-reduce across processes)."""
        self.confusion += confusion.to(self.confusion)
        self.topk_hits += topk_hits.to(self.topk_hits)

    def per_class_accuracy(self) -> Tensor:
        """Recall per class (NaN for classes with no ground-truth sample)."""
        support = self.confusion.sum(1).double()
        correct = self.confusion.diagonal().double()
        return torch.where(support > 0, correct / support.clamp(min=1), torch.full_like(support, float("nan")))

    def mean_class_accuracy(self, convention: str = "present") -> float:
        if convention not in MCA_CONVENTIONS:
            raise ValueError(f"convention must be 'present' or 'union', got {convention!r}")
        recall = self.per_class_accuracy()
        present = self.confusion.sum(1) > 0
        if convention == "union":
            classes = present | (self.confusion.sum(0) > 0)
            recall = torch.nan_to_num(recall, nan=0.0)
        else:
            classes = present
        return float(recall[classes].mean()) if bool(classes.any()) else float("nan")

    def compute(self, mca: str = "present") -> Dict[str, float]:
        total = max(self.count, 1)
        result = {f"top{k}": int(self.topk_hits[i]) / total for i, k in enumerate(self.topk)}
        result["mca"] = self.mean_class_accuracy(mca)
        result["mca_convention"] = mca
        result["count"] = self.count  # clips scored
        result["skipped"] = len(self.skipped)  # clips that could not be read
        return result

    def per_class_rows(self, class_names: Optional[List[str]] = None) -> List[Dict[str, object]]:
        recall = self.per_class_accuracy()
        rows = []
        for c in range(self.num_classes):
            rows.append({
                "class": c, "name": class_names[c] if class_names and c < len(class_names) else str(c),
                "support": int(self.confusion[c].sum()), "correct": int(self.confusion[c, c]),
                "accuracy": None if torch.isnan(recall[c]) else float(recall[c]),
            })
        return rows
