r"""Pictures of a token-grid graph: its frames side by side, edges coloured by family.

A small grid is drawn in full; a large one (more than ``max_edges`` edges) as
one node's neighbourhood, every other node a grey dot. matplotlib (the
``plot`` extra) is imported only when drawing.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple, Union

import torch
from torch import Tensor

from ..errors import ConfigError, MissingExtraError
from .families import CUSTOM, DYNAMIC, IF_FC, SELF_LOOP, TAT

if TYPE_CHECKING:
    from .builder import SpatioTemporalGraph

COLOURS = {IF_FC: "tab:blue", TAT: "tab:orange", SELF_LOOP: "tab:gray", DYNAMIC: "tab:green"}
CUSTOM_COLOURS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:red")


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.collections import LineCollection
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        raise MissingExtraError("drawing a graph needs matplotlib: pip install 'taggnn[plot]'", "plot") from None
    return Figure, FigureCanvasAgg, LineCollection, Line2D


def _layout(graph: SpatioTemporalGraph, gap: float, first_frame: int) -> Tensor:
    """Drawing coordinates ``(N, 2)``: frame ``t`` shifted right by ``(t - first_frame) (W - 1 + gap)``."""
    pos = graph.pos.double()
    t, y, x = pos.unbind(1)
    return torch.stack([(t - first_frame) * (graph.W - 1 + gap) + x, -y], dim=1)


def _curves(start: Tensor, end: Tensor, bend: Tensor, samples: int = 12) -> Tensor:
    """Quadratic Bezier curves ``(E, samples, 2)`` from ``start`` to ``end`` (``(E, 2)``), raised by ``bend``."""
    middle = (start + end) / 2
    middle[:, 1] += bend * (end - start).norm(dim=1)
    s = torch.linspace(0, 1, samples, dtype=start.dtype).view(1, -1, 1)
    return ((1 - s) ** 2 * start[:, None] + 2 * (1 - s) * s * middle[:, None] + s ** 2 * end[:, None])


def _image_path(path: Union[str, Path], canvas) -> Path:
    """``path`` as a :class:`Path`, refused before any drawing when matplotlib would write elsewhere (no
    suffix: it appends ``.png``) or cannot write it (a folder, an unknown image format)."""
    path = Path(path)
    formats = sorted(canvas.get_supported_filetypes())
    if path.is_dir():
        raise ConfigError(f"the image path {str(path)!r} is a folder; give an image file such as {path / 'g.png'}")
    suffix = path.suffix[1:].lower()
    if suffix not in formats:
        raise ConfigError(f"the image path {str(path)!r} has no image suffix (got {suffix or 'none'!r}); "
                          f"end it with one of {', '.join('.' + f for f in formats)}")
    return path


def draw(graph: SpatioTemporalGraph, path: Union[str, Path, None] = None, *, x: Optional[Tensor] = None,
         node: Optional[Union[int, Tuple[int, int, int]]] = None, max_edges: int = 2000, gap: float = 1.5,
         dpi: int = 120, title: Optional[str] = None):
    r"""Draws ``graph``; returns the matplotlib :class:`~matplotlib.figure.Figure` (and writes ``path`` if given).

    Args:
        graph (SpatioTemporalGraph): The graph.
        path (str or Path, optional): Image to write (format from the suffix).
        x (torch.Tensor, optional): Node features ``(N, C)`` to draw the kNN
            edges of a ``dynamic`` graph (without them only static edges).
        node (int or (t, y, x), optional): Draw only this node's edges. By
            default: every edge when there are at most ``max_edges``, else
            the edges of the centre node :math:`(T/2, H/2, W/2)`.
        max_edges (int, optional): Largest edge list drawn in full.
        gap (float, optional): Space between frames, in token units.
    """
    Figure, FigureCanvasAgg, LineCollection, Line2D = _matplotlib()
    if path is not None:
        path = _image_path(path, FigureCanvasAgg)
    data = graph.to_data(x) if (x is not None and graph.dynamic is not None) else graph.to_data()
    edge_index, edge_type = data.edge_index, data.edge_type
    if node is None and edge_index.size(1) > max_edges:
        node = (graph.T // 2, graph.H // 2, graph.W // 2)
    if isinstance(node, tuple):
        t, y, x_ = node
        if not (0 <= t < graph.T and 0 <= y < graph.H and 0 <= x_ < graph.W):
            raise ConfigError(f"node {node} is outside the {graph.T}x{graph.H}x{graph.W} grid")
        node = (t * graph.H + y) * graph.W + x_
    if node is not None:
        if not 0 <= int(node) < graph.num_nodes:
            raise ConfigError(f"node {node} is outside [0, {graph.num_nodes})")
        keep = edge_index[0] == int(node)
        edge_index, edge_type = edge_index[:, keep], edge_type[keep]
    else:  # an undirected pair drawn once (the families are symmetric)
        keep = (edge_index[0] < edge_index[1]) | (edge_type == DYNAMIC) | (edge_type >= CUSTOM)
        edge_index, edge_type = edge_index[:, keep], edge_type[keep]
    frames = graph.pos[:, 0]
    if node is not None and edge_index.size(1):  # only the frames the neighbourhood reaches
        reached = frames[torch.cat([edge_index.reshape(-1), torch.tensor([int(node)])])]
        first, last = int(reached.min()), int(reached.max())
    else:
        first, last = 0, graph.T - 1
    xy = _layout(graph, gap, first)
    shown = (frames >= first) & (frames <= last)
    width = (last - first + 1) * (graph.W - 1 + gap)
    figure = Figure(figsize=(min(2 + 0.6 * width, 24), min(2 + 0.6 * graph.H, 12)), dpi=dpi)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    names = graph.edge_type_names()
    handles = []
    for t in sorted(set(edge_type.tolist())):
        if t == SELF_LOOP:
            continue
        sel = edge_index[:, edge_type == t]
        # edges across frames bend upwards so that they do not hide the edges inside a frame
        across = (frames[sel[0]] != frames[sel[1]]).double()
        segments = _curves(xy[sel[0]], xy[sel[1]], 0.12 * across).numpy()  # (E_t, samples, 2)
        colour = COLOURS.get(t, CUSTOM_COLOURS[(t - CUSTOM) % len(CUSTOM_COLOURS)])
        alpha = 0.9 if node is not None or len(segments) < 200 else 0.35
        ax.add_collection(LineCollection(segments, colors=colour, linewidths=1.0, alpha=alpha, zorder=1))
        handles.append(Line2D([], [], color=colour, label=f"{names.get(t, t)} ({sel.size(1)})"))
    ax.scatter(xy[shown, 0].numpy(), xy[shown, 1].numpy(), s=18, c="lightgray", edgecolors="black", linewidths=0.4,
               zorder=2)
    if node is not None:
        ax.scatter([xy[int(node), 0]], [xy[int(node), 1]], s=40, c="red", zorder=3)
    for t in range(first, last + 1):
        ax.text((t - first) * (graph.W - 1 + gap) + (graph.W - 1) / 2, 0.8, f"t={t}", ha="center", fontsize=8)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_xlim(-1, width)
    ax.set_ylim(-graph.H, 0.5 + 0.12 * width)
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 4),
                  fontsize=8, frameon=False)
    what = "all edges" if node is None else f"edges of node {int(node)}"
    ax.set_title(title or f"{graph.T}x{graph.H}x{graph.W}, spatial={graph.spatial}, temporal={graph.temporal}: "
                 f"{what}", fontsize=9)
    figure.tight_layout()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    return figure
