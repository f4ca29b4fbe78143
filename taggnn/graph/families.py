r"""Edge families of a :math:`T \times H \times W` token grid.

A *family* is one named rule that links tokens; each family of a graph gets its
own edge type. Node ids are row-major, :math:`i = t H W + y W + x`.

Spatial families (within a frame, :math:`\Delta t = 0`):

* ``"full"`` (IF-FC of TAG-Head): every ordered pair of distinct sites.
* ``"grid4"``: the 4 sites at :math:`|\Delta y| + |\Delta x| = 1`.
* ``"grid8"``: the 8 sites at :math:`\max(|\Delta y|, |\Delta x|) = 1`.
* ``"radius:r"``: sites at Euclidean distance :math:`0 < \sqrt{\Delta y^2 +
  \Delta x^2} \le r` (``r`` in token units, a float); ``"radius:r:chebyshev"``:
  :math:`0 < \max(|\Delta y|, |\Delta x|) \le r`.
* ``"none"``.

Temporal families (:math:`\Delta t \neq 0`):

* ``"aligned"`` (TAT of TAG-Head): the same site in frames :math:`t \pm 1`.
* ``"window:k"``: the same site in frames :math:`t \pm 1, \dots, t \pm k`.
* ``"window:k:d"``: the same site in frames :math:`t \pm d, t \pm 2d, \dots,
  t \pm k d` (``k`` frames each side, dilation ``d``).
* ``"cube:r"``: sites with :math:`\max(|\Delta y|, |\Delta x|) \le r` in the
  adjacent frames :math:`t \pm 1` (``"cube:0"`` is ``"aligned"``).
* ``"full"``: every site of every other frame.
* ``"none"``.

Every one of these is translation-invariant: it is an *offset set*
:math:`S \subset \mathbb{Z}^3` of :math:`(\Delta t, \Delta y, \Delta x)`, and the
graph has the edge :math:`(t, y, x) \rightarrow (t + \Delta t, y + \Delta y,
x + \Delta x)` exactly when both ends are inside the grid. Each set is
symmetric (:math:`o \in S \Leftrightarrow -o \in S`) and never holds
:math:`(0, 0, 0)`, so every graph is undirected.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError

IF_FC = 0  #: edge type of the spatial family (IF-FC in the paper's graph)
TAT = 1  #: edge type of the temporal family (TAT in the paper's graph)
SELF_LOOP = 2
DYNAMIC = 3  #: edge type of the dynamic (kNN on features) family
CUSTOM = 4  #: user-defined edge type ``j`` is stored as ``CUSTOM + j``
SPATIAL, TEMPORAL = IF_FC, TAT

SPATIAL_FAMILIES = ("full", "grid4", "grid8", "radius:r", "radius:r:chebyshev", "none")
TEMPORAL_FAMILIES = ("aligned", "window:k", "window:k:d", "cube:r", "full", "none")
DYNAMIC_FAMILIES = ("knn:k", "none")


def _bad(name: str, value, choices, hint: str = "") -> ConfigError:
    return ConfigError(f"{name} must be one of {choices}, got {value!r}{hint}")


def _number(text: str, name: str, value, choices, *, integer: bool, low: float):
    try:
        number = int(text) if integer else float(text)
    except ValueError:
        raise _bad(name, value, choices, f" ({text!r} is not {'an integer' if integer else 'a number'})") from None
    if not math.isfinite(number) or number < low:
        raise _bad(name, value, choices, f" ({text!r} must be >= {low:g})")
    return number


def _plain_family(value, name: str, on: str, families, plain) -> Optional[str]:
    """``on`` for ``True``, ``"none"`` for ``False``/``None``, a name without parameters as it is,
    None for a parametrised name (left to the caller); anything but a string is refused."""
    if value is True:
        return on
    if value is False or value is None:
        return "none"
    if not isinstance(value, str):
        raise _bad(name, value, families)
    return value if value in plain else None


def parse_spatial(value, name: str = "spatial") -> str:
    """The canonical spelling of a spatial family (``True`` = ``"full"``; ``False``/``None`` = ``"none"``)."""
    plain = _plain_family(value, name, "full", SPATIAL_FAMILIES, ("full", "grid4", "grid8", "none"))
    if plain is not None:
        return plain
    parts = value.split(":")
    if parts[0] == "radius" and len(parts) in (2, 3):
        if len(parts) == 3 and parts[2] not in ("chebyshev", "euclidean"):
            raise _bad(name, value, SPATIAL_FAMILIES, " (the metric is 'euclidean' (default) or 'chebyshev')")
        radius = _number(parts[1], name, value, SPATIAL_FAMILIES, integer=False, low=0.0)
        metric = ":chebyshev" if len(parts) == 3 and parts[2] == "chebyshev" else ""
        return f"radius:{radius:g}{metric}"
    raise _bad(name, value, SPATIAL_FAMILIES)


def parse_temporal(value, name: str = "temporal") -> str:
    """The canonical spelling of a temporal family (``True`` = ``"aligned"``; ``False``/``None`` = ``"none"``)."""
    plain = _plain_family(value, name, "aligned", TEMPORAL_FAMILIES, ("aligned", "full", "none"))
    if plain is not None:
        return plain
    parts = value.split(":")
    if parts[0] == "window" and len(parts) in (2, 3):
        k = _number(parts[1], name, value, TEMPORAL_FAMILIES, integer=True, low=1)
        d = _number(parts[2], name, value, TEMPORAL_FAMILIES, integer=True, low=1) if len(parts) == 3 else 1
        return f"window:{k}" if d == 1 else f"window:{k}:{d}"
    if parts[0] == "cube" and len(parts) == 2:
        r = _number(parts[1], name, value, TEMPORAL_FAMILIES, integer=True, low=0)
        return f"cube:{r}"
    raise _bad(name, value, TEMPORAL_FAMILIES)


def parse_dynamic(value, name: str = "dynamic") -> Optional[str]:
    """The canonical spelling of a dynamic family (``None``/``"none"`` = no dynamic edges)."""
    if value is None or value is False or value == "none":
        return None
    if isinstance(value, str):
        parts = value.split(":")
        if parts[0] == "knn" and len(parts) == 2:
            k = _number(parts[1], name, value, DYNAMIC_FAMILIES, integer=True, low=1)
            return f"knn:{k}"
    raise _bad(name, value, DYNAMIC_FAMILIES)


def parse_graph(text: str, name: str = "graph") -> Tuple[str, str, Optional[str]]:
    """``"spatial+temporal[+knn:k]"`` (e.g. ``"grid8+window:2"``, ``"full+aligned+knn:8"``) as the
    canonical ``(spatial, temporal, dynamic)`` families, for command lines that list graphs."""
    parts = text.split("+") if isinstance(text, str) else []
    if len(parts) not in (2, 3):
        raise ConfigError(f"{name} must be 'spatial+temporal' or 'spatial+temporal+knn:k' (e.g. 'full+aligned', "
                          f"'grid8+window:2', 'grid8+aligned+knn:8'), got {text!r}")
    dynamic = parse_dynamic(parts[2], f"the dynamic family of {name} {text!r}") if len(parts) == 3 else None
    return (parse_spatial(parts[0], f"the spatial family of {name} {text!r}"),
            parse_temporal(parts[1], f"the temporal family of {name} {text!r}"), dynamic)


def graph_name(spatial: str, temporal: str, dynamic: Optional[str] = None) -> str:
    """The inverse of :func:`parse_graph`: ``"spatial+temporal[+knn:k]"``."""
    return f"{spatial}+{temporal}" + (f"+{dynamic}" if dynamic else "")


def knn_k(dynamic: str) -> int:
    return int(dynamic.split(":")[1])


def _plane(H: int, W: int) -> Tuple[Tensor, Tensor]:
    dy, dx = torch.meshgrid(torch.arange(-(H - 1), H), torch.arange(-(W - 1), W), indexing="ij")
    return dy.reshape(-1), dx.reshape(-1)


def spatial_offsets(family: str, H: int, W: int) -> Tensor:
    r"""The offset set :math:`(0, \Delta y, \Delta x)` of a spatial family on an ``H x W`` frame, ``(S, 3)`` long.

    Only offsets that fit in the frame are listed, so ``"full"`` and a large
    radius give finite sets. Rows are sorted lexicographically.
    """
    dy, dx = _plane(H, W)
    not_zero = (dy != 0) | (dx != 0)
    if family == "none":
        keep = torch.zeros_like(not_zero)
    elif family == "full":
        keep = not_zero
    elif family == "grid4":
        keep = (dy.abs() + dx.abs()) == 1
    elif family == "grid8":
        keep = not_zero & (torch.maximum(dy.abs(), dx.abs()) == 1)
    elif family.startswith("radius:"):
        parts = family.split(":")
        radius = float(parts[1])
        if len(parts) == 3:  # chebyshev
            keep = not_zero & (torch.maximum(dy.abs(), dx.abs()) <= radius)
        else:  # exact on integers: dy^2 + dx^2 <= r^2, compared in float64
            keep = not_zero & ((dy * dy + dx * dx).double() <= radius * radius)
    else:  # pragma: no cover (parse_spatial rejects it first)
        raise ValueError(family)
    dy, dx = dy[keep], dx[keep]
    return torch.stack([torch.zeros_like(dy), dy, dx], dim=1)


def temporal_offsets(family: str, T: int, H: int, W: int) -> Tensor:
    r"""The offset set :math:`(\Delta t, \Delta y, \Delta x)`, :math:`\Delta t \neq 0`, of a temporal family."""
    if family == "none" or T == 1:
        return torch.empty(0, 3, dtype=torch.long)
    if family in ("aligned",) or family.startswith("window:"):
        if family == "aligned":
            k, d = 1, 1
        else:
            parts = family.split(":")
            k, d = int(parts[1]), int(parts[2]) if len(parts) == 3 else 1
        steps = torch.arange(1, k + 1) * d
        steps = steps[steps < T]
        dt = torch.cat([-steps.flip(0), steps])
        return torch.stack([dt, torch.zeros_like(dt), torch.zeros_like(dt)], dim=1)
    if family.startswith("cube:") or family == "full":
        if family == "full":
            times = torch.cat([torch.arange(-(T - 1), 0), torch.arange(1, T)])
            dy, dx = _plane(H, W)
        else:
            r = int(family.split(":")[1])
            times = torch.tensor([-1, 1])
            dy, dx = _plane(min(H, r + 1), min(W, r + 1))
        S = dy.numel()
        dt = times.repeat_interleave(S)
        return torch.stack([dt, dy.repeat(times.numel()), dx.repeat(times.numel())], dim=1)
    raise ValueError(family)  # pragma: no cover (parse_temporal rejects it first)


def count_offset_edges(offsets: Tensor, T: int, H: int, W: int) -> int:
    r"""Directed edges an offset set makes on the grid: :math:`\sum_o \prod_a (n_a - |o_a|)_+`."""
    if offsets.numel() == 0:
        return 0
    sizes = torch.tensor([T, H, W])
    span = (sizes - offsets.abs()).clamp(min=0)  # (S, 3)
    return int(span.prod(dim=1).sum())


def offset_edges(offsets: Tensor, T: int, H: int, W: int, *, return_offset_index: bool = False):
    r"""The edges :math:`i \rightarrow i + o` of an offset set, ``(2, E)`` long.

    Vectorised over (node, offset) pairs; for the dense ``"full"`` families
    use :func:`full_spatial_edges` / :func:`full_temporal_edges`, which skip the mask.
    Edges come source by source, and for one source in the order of
    ``offsets``: sorted by (source, target) when the offsets are sorted by
    their id step :math:`(\Delta t H + \Delta y) W + \Delta x` (lexicographic order).
    With ``return_offset_index=True`` also returns the row of ``offsets`` of each edge.
    """
    N = T * H * W
    if offsets.numel() == 0:
        empty = torch.empty(2, 0, dtype=torch.long)
        return (empty, empty[0]) if return_offset_index else empty
    t, y, x = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    pos = torch.stack([t, y, x], dim=-1).view(N, 1, 3)  # (N, 1, 3)
    target = pos + offsets.view(1, -1, 3)  # (N, S, 3)
    sizes = torch.tensor([T, H, W])
    inside = ((target >= 0) & (target < sizes)).all(dim=-1)  # (N, S)
    target_id = (target[..., 0] * H + target[..., 1]) * W + target[..., 2]  # (N, S)
    src = torch.arange(N).view(N, 1).expand_as(inside)[inside]
    edge_index = torch.stack([src, target_id[inside]])
    if return_offset_index:
        return edge_index, torch.arange(offsets.size(0)).view(1, -1).expand_as(inside)[inside]
    return edge_index


def full_spatial_edges(T: int, P: int) -> Tensor:
    """Every ordered pair of distinct sites inside each frame (IF-FC), ``(2, T P (P - 1))``."""
    node = torch.arange(T * P).view(T, P)  # (T, P)
    p, q = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    off_diagonal = p != q
    p, q = p[off_diagonal], q[off_diagonal]  # (P*(P-1),)
    return torch.stack([node[:, p].reshape(-1), node[:, q].reshape(-1)])


def full_temporal_edges(T: int, P: int) -> Tensor:
    """Every ordered pair of nodes in different frames, ``(2, T (T - 1) P^2)``."""
    node = torch.arange(T * P).view(T, P)  # (T, P)
    s, u = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    other = s != u
    s, u = s[other], u[other]  # (T*(T-1),) ordered frame pairs
    src = node[s].view(-1, P, 1).expand(-1, P, P)  # (T(T-1), P, P)
    dst = node[u].view(-1, 1, P).expand(-1, P, P)
    return torch.stack([src.reshape(-1), dst.reshape(-1)])
