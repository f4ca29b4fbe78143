"""Figures people would rather look at (needs matplotlib: the ``plot`` extra)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch


def _figure(**kwargs):
    """A figure not attached to pyplot: no global backend switch (a notebook keeps its own),
    no figure manager to close, and a quicker import than ``matplotlib.pyplot``."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def confusion_figure(confusion: torch.Tensor, names: Optional[List[str]], title: str = ""):
    """Row-normalised confusion matrix (true class per row) as a matplotlib ``Figure``.

    The figure grows with the class count (0.35 inch a class, at least 5 and at most 30 inches a side),
    and the title wraps to the figure's width, so that a 3-class matrix is as readable as a 99-class one.
    """
    matrix = confusion.double()
    matrix = (matrix / matrix.sum(1, keepdim=True).clamp(min=1)).numpy()
    C = matrix.shape[0]
    size = min(max(5.0, 2 + 0.35 * C), 30.0)
    fig = _figure(figsize=(size, size), layout="tight")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    if names and C <= 60:
        ax.set_xticks(range(C), names, rotation=90, fontsize=7)
        ax.set_yticks(range(C), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    # ~8 characters of a 12-point title an inch, less the colour bar's share of the width
    ax.set_title(textwrap.fill(f"confusion {title} (rows normalised)", width=int(7 * size), break_long_words=True,
                               break_on_hyphens=False))
    fig.colorbar(image, ax=ax, fraction=0.046)
    return fig


def save_confusion_matrix(confusion: torch.Tensor, names: Optional[List[str]], path: Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (true class per row) as a PNG (:func:`confusion_figure` at 100 dpi)."""
    confusion_figure(confusion, names, title).savefig(path, dpi=100)
    return path


def class_colours(num_classes: int):
    """``num_classes`` distinct colours: tab20 up to 20 classes, then evenly spaced hues of a
    perceptual cyclic map (no colour repeats, unlike tab20's cycle)."""
    if num_classes <= 20:
        return [_colormap("tab20")(c) for c in range(num_classes)]
    cmap = _colormap("twilight_shifted" if num_classes > 200 else "turbo")
    return [cmap(c / num_classes) for c in range(num_classes)]


def save_tsne(panels: Dict[str, np.ndarray], labels: np.ndarray, path: Path,
              names: Optional[Sequence[str]] = None, *, columns: Optional[int] = None) -> Path:
    """Scatters of 2D embeddings coloured by class (like the paper's Fig. 3), ``columns`` panels
    per row (one row per checkpoint: its backbone panel, then its TAG-Head panel)."""
    columns = columns or len(panels)
    rows = -(-len(panels) // columns)
    fig = _figure(figsize=(5 * columns, 5 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    num_classes = int(labels.max()) + 1 if labels.size else 0
    colours = class_colours(max(num_classes, 1))
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, points) in zip(axes.flat, panels.items()):
        for c in np.unique(labels):
            mask = labels == c
            ax.scatter(points[mask, 0], points[mask, 1], s=6, color=colours[int(c)],
                       label=names[c] if names is not None and len(np.unique(labels)) <= 20 else None)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, legend_labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, legend_labels, loc="lower center", ncol=min(4, len(handles)), fontsize=7, markerscale=2)
        fig.tight_layout(rect=(0, 0.12, 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
