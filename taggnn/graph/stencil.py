r"""Exact propagation with translation-invariant graphs on the token grid, as a stencil.

A graph on the :math:`T \times H \times W` token grid is *translation-invariant*
when it is given by an offset set :math:`\mathcal{O} \subset \mathbb{Z}^3`:
sites :math:`s = (t, y, x)` and :math:`s + o` are linked for every
:math:`o \in \mathcal{O}` with both inside the grid. :math:`\mathcal{O}` is
symmetric (:math:`o \in \mathcal{O} \Leftrightarrow -o \in \mathcal{O}`) and
excludes :math:`(0, 0, 0)`, so the graph is undirected and loop-free; a node's
id is :math:`t H W + y W + x`, as in :class:`~taggnn.graph.SpatioTemporalGraph`.

With self-loops, :math:`\tilde{A} = A + I` and the degree of site :math:`s` is
:math:`d_s = 1 + |\{o \in \mathcal{O} : s + o \text{ in the grid}\}|`, fewer at
the borders. With :math:`Y = D^{-1/2} X` laid out as :math:`(T, H, W, C)`,

.. math::
    (\hat{A} X)_s = d_s^{-1/2} \Big( Y_s + \sum_{o \in \mathcal{O}} [s + o
    \text{ in the grid}]\, Y_{s + o} \Big),

that is :math:`|\mathcal{O}|` shifted adds of the grid tensor with zero fill (or
one depthwise 3D convolution with zero padding), bracketed by two scalings with
the border-aware :math:`d^{-1/2}`: :math:`O(N C |\mathcal{O}|)` work, no edge
list, and the same result as PyG's ``gcn_norm`` on the edges (to float
rounding). Without self-loops the :math:`Y_s` term is absent and a site with
no neighbour gets :math:`d_s^{-1/2} = 0`, as in ``gcn_norm``.

Edge types and weights: an edge is *spatial* (type ``0``, :math:`o_t = 0`) or
*temporal* (type ``1``, :math:`o_t \neq 0`), a self-loop is type ``2``: the order
of :data:`~taggnn.graph.IF_FC`, :data:`~taggnn.graph.TAT` and
:data:`~taggnn.graph.SELF_LOOP`. With one weight per type,
:math:`\tilde{A}_w = w_2 I + w_0 A_{\text{spatial}} + w_1 A_{\text{temporal}}`,
:math:`d = \tilde{A}_w \mathbf{1}` and :math:`\hat{A}_w = D^{-1/2} \tilde{A}_w
D^{-1/2}`, which is ``gcn_norm`` with these edge weights and explicit weighted
self-loops, the semantics of :func:`~taggnn.graph.structured.weighted_propagate`
(the paper's graph is the offset set of every in-frame offset plus
:math:`(\pm 1, 0, 0)` and gives the same products, though the frame sums of
:mod:`~taggnn.graph.structured` are far cheaper for it than :math:`H W` shifts).

:math:`\hat{A}` is symmetric, so the gradient of any polynomial filter of it
(one step, APPNP) is the same filter applied to the incoming gradient: the
backward pass runs the forward kernel again and stores nothing. On CPU the
forward kernel runs all :math:`K` steps on one block of clips and channels at a
time (:data:`BLOCK_ELEMENTS`, about 4 MiB), which stays in the last-level cache,
so main memory is read and written about once instead of
:math:`K (|\mathcal{O}| + 2)` times. Small stencils use shifted adds, larger
ones (:data:`CONV_MIN_OFFSETS`) a depthwise ``conv3d``, whose cost hardly grows
with the kernel.
"""
from __future__ import annotations

import math
import numbers
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

Grid = Tuple[int, int, int]
Offsets = Tuple[Tuple[int, int, int], ...]

SPATIAL, TEMPORAL, LOOP = 0, 1, 2

#: Stencils with at least this many offsets use a depthwise 3D convolution, fewer use shifted adds
#: (on a 2-core CPU, 16x14x14 tokens, C = 256: shifts cost about 4 + 1 per offset, the
#: convolution about 9 to 10 time units whatever its kernel; see benchmarks/stencil.py) ...
CONV_MIN_OFFSETS = 8
#: ... when the dense kernel is at most this many times the stencil's size (offsets and self-loop).
CONV_MAX_VOLUME_RATIO = 4.0
#: Elements (clips x sites x channels) of one block of the blocked iteration on CPU: about 4 MiB
#: of float32 per buffer (one 16x14x14 clip at C = 256), so the three buffers of a block stay in
#: the last-level cache during the K steps (smaller blocks measured slower: more op overhead).
BLOCK_ELEMENTS = 1 << 20


def _grid_of(grid) -> Grid:
    """``(T, H, W)`` from a 3-tuple or anything with a ``grid`` attribute (a graph)."""
    grid = getattr(grid, "grid", grid)
    try:
        T, H, W = (int(v) for v in grid)
        ok = all(not isinstance(v, bool) and int(v) == v for v in grid)
    except (TypeError, ValueError):
        ok = False
    if not ok or min(T, H, W) < 1:
        raise ConfigError(f"expected a grid (T, H, W) of three integers >= 1 (or a graph with .grid), got {grid!r}")
    return T, H, W


def _integer_rows(offsets) -> bool:
    """Whether ``offsets`` is a (possibly empty) sequence of length-3 sequences of Python / NumPy integers."""
    if isinstance(offsets, Tensor) or not isinstance(offsets, (list, tuple)):
        return False
    return all(isinstance(row, (list, tuple)) and len(row) == 3
               and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in row) for row in offsets)


def check_offsets(offsets) -> Offsets:
    r"""Validates an offset set and returns it as a sorted tuple of ``(dt, dy, dx)``.

    Args:
        offsets: ``(S, 3)`` integer tensor (or nested sequence) of offsets
            :math:`(d_t, d_y, d_x)`; symmetric, without :math:`(0, 0, 0)` and
            without repeats. ``S = 0`` (no edges) is allowed.

    Raises:
        ConfigError: when it is not ``(S, 3)`` integers, holds ``(0, 0, 0)`` or a repeat, or is not symmetric.
    """
    if _integer_rows(offsets):  # plain Python (the cached form): no tensor, so tracing and export see constants
        rows = [tuple(int(v) for v in row) for row in offsets]
    else:
        tensor = torch.as_tensor(offsets)
        if tensor.numel() == 0:
            return ()
        if tensor.dim() != 2 or tensor.size(1) != 3 or tensor.is_floating_point() or tensor.is_complex() \
                or tensor.dtype == torch.bool:
            raise ConfigError(f"expected offsets as an (S, 3) integer tensor of (dt, dy, dx), got dtype "
                              f"{tensor.dtype} and shape {tuple(tensor.shape)}")
        rows = [tuple(int(v) for v in row) for row in tensor.tolist()]
    unique = set(rows)
    if len(unique) != len(rows):
        raise ConfigError(f"offsets hold repeats: {sorted(o for o in unique if rows.count(o) > 1)}; list each once")
    if (0, 0, 0) in unique:
        raise ConfigError("offsets hold (0, 0, 0); self-loops are a separate option (self_loops=True), "
                          "not an offset")
    missing = sorted(o for o in unique if (-o[0], -o[1], -o[2]) not in unique)
    if missing:
        raise ConfigError(f"offsets must be symmetric (o in the set <=> -o in the set); the negatives of "
                          f"{missing[:5]}{' ...' if len(missing) > 5 else ''} are missing")
    return tuple(sorted(unique))


def _overlap(d: int, n: int) -> Tuple[slice, slice]:
    """(target, source) slices of a length-``n`` axis for ``out[i] += y[i + d]``."""
    if d >= 0:
        return slice(0, n - d), slice(d, n)
    return slice(-d, n), slice(0, n + d)


@dataclass(frozen=True)
class _Plan:
    """What the kernels need for one (grid, offset set): offsets that land inside, their
    slices and types, the neighbour counts per type and the convolution geometry."""

    grid: Grid
    offsets: Offsets  # those with |dt| < T, |dy| < H, |dx| < W
    slices: Tuple[Tuple[Tuple[slice, ...], Tuple[slice, ...]], ...]  # per offset: (target, source)
    types: Tuple[int, ...]  # per offset: SPATIAL or TEMPORAL
    counts: Tensor  # (2, T, H, W) float64: in-grid spatial / temporal neighbours of each site
    radius: Grid  # max |offset| per axis

    @property
    def num_offsets(self) -> int:
        return len(self.offsets)

    def use_conv(self) -> bool:
        volume = math.prod(2 * r + 1 for r in self.radius)
        return self.num_offsets >= CONV_MIN_OFFSETS and volume <= CONV_MAX_VOLUME_RATIO * (self.num_offsets + 1)


_PLANS: Dict[Tuple[Grid, Offsets], _Plan] = {}
_TENSORS: Dict[tuple, Tensor] = {}
_LOCK = threading.Lock()
_MAX_ENTRIES = 256


def _cached(store: dict, key, build):
    with _LOCK:
        if key in store:
            return store[key]
    value = build()
    with _LOCK:
        if len(store) >= _MAX_ENTRIES:
            store.pop(next(iter(store)))
        store[key] = value
    return value


def clear_stencil_cache() -> None:
    """Drops the cached stencil plans, degrees and kernels."""
    with _LOCK:
        _PLANS.clear()
        _TENSORS.clear()


def _build_plan(grid: Grid, offsets: Offsets) -> _Plan:
    T, H, W = grid
    kept = tuple(o for o in offsets if abs(o[0]) < T and abs(o[1]) < H and abs(o[2]) < W)
    slices, types = [], []
    counts = torch.zeros(2, T, H, W, dtype=torch.float64)
    for o in kept:
        (t_dst, t_src), (y_dst, y_src), (x_dst, x_src) = (_overlap(d, n) for d, n in zip(o, grid))
        slices.append(((t_dst, y_dst, x_dst), (t_src, y_src, x_src)))
        kind = SPATIAL if o[0] == 0 else TEMPORAL
        types.append(kind)
        counts[kind, t_dst, y_dst, x_dst] += 1
    radius = tuple(max((abs(o[axis]) for o in kept), default=0) for axis in range(3))
    return _Plan(grid, kept, tuple(slices), tuple(types), counts, radius)


def _plan(grid, offsets) -> _Plan:
    grid, offsets = _grid_of(grid), check_offsets(offsets)
    return _cached(_PLANS, (grid, offsets), lambda: _build_plan(grid, offsets))


# ----------------------------------------------------------------- weights and degrees
def _type_weights(weights: Optional[Tensor], self_loops: bool) -> Tuple[float, float, float]:
    """Python floats (spatial, temporal, loop) of constant weights."""
    if weights is None:
        return 1.0, 1.0, 1.0 if self_loops else 0.0
    w_spatial, w_temporal, w_loop = (float(v) for v in weights.detach().cpu().tolist())
    return w_spatial, w_temporal, w_loop if self_loops else 0.0


def _check_weights(weights) -> Optional[Tensor]:
    if weights is None:
        return None
    if not isinstance(weights, Tensor) or weights.shape != (3,) or not weights.is_floating_point():
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ConfigError(f"expected weights as a float tensor of shape (3,) (spatial, temporal, self-loop), got "
                          f"{shape}")
    if (torch.is_grad_enabled() and weights.requires_grad) or _tracing():
        return weights  # no data-dependent check inside a differentiable or traced graph
    if not bool((weights >= 0).all()) or not bool(torch.isfinite(weights).all()):
        raise ConfigError(f"edge-type weights must be finite and >= 0, got {weights.tolist()}")
    return weights


def _inv_sqrt(degree: Tensor) -> Tensor:
    """:math:`d^{-1/2}`, with 0 where :math:`d = 0` (a site without edges), as ``gcn_norm``."""
    positive = degree > 0
    return torch.where(positive, degree, torch.ones_like(degree)).rsqrt() * positive


def stencil_degree(grid, offsets, *, self_loops: bool = True, weights: Optional[Tensor] = None,
                   dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    r"""Border-aware degrees :math:`d = \tilde{A}_w \mathbf{1}` of every site.

    .. math::
        d_s = w_2 [\text{self-loops}] + w_0 \, n^{\text{spatial}}_s + w_1 \, n^{\text{temporal}}_s,

    with :math:`n_s` the in-grid neighbours of site :math:`s` of each type and
    unit weights by default (then :math:`d_s` is the neighbour count, plus one with self-loops).

    Args:
        grid: ``(T, H, W)`` or a graph with a ``grid`` attribute.
        offsets: ``(S, 3)`` symmetric offset set (see :func:`check_offsets`).
        self_loops (bool): Count the self-loop. (default: :obj:`True`)
        weights (torch.Tensor, optional): ``(3,)`` weights of (spatial, temporal,
            self-loop) edges; differentiable.

    Returns:
        ``(T, H, W)`` tensor.
    """
    plan = _plan(grid, offsets)
    weights = _check_weights(weights)
    counts = plan.counts.to(device=device, dtype=dtype if weights is None else weights.dtype)
    if weights is None:
        degree = counts.sum(0)
        return degree + 1 if self_loops else degree
    w_spatial, w_temporal, w_loop = weights.to(device).unbind()
    degree = w_spatial * counts[0] + w_temporal * counts[1]
    return degree + w_loop if self_loops else degree


def stencil_edge_index(grid, offsets, batch_size: int = 1) -> Tuple[Tensor, Tensor]:
    r"""The edge list a stencil stands for: ``edge_index`` ``(2, E)`` and ``edge_type`` ``(E,)``
    (``0`` spatial, ``1`` temporal) of ``batch_size`` clips, clip :math:`b` offset by :math:`b N`.

    Built by tensor arithmetic (for comparisons and the sparse back-ends); no self-loops.
    Sorted by (source, target).
    """
    T, H, W = plan_grid = _grid_of(grid)
    plan = _plan(plan_grid, offsets)
    N = T * H * W
    t, y, x = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    pos = torch.stack([t, y, x], dim=-1).view(N, 3)  # (N, 3)
    size = torch.tensor([T, H, W])
    stride = torch.tensor([H * W, W, 1])
    sources, targets, types = [], [], []
    for offset, kind in zip(plan.offsets, plan.types):
        moved = pos + torch.tensor(offset)  # (N, 3)
        inside = ((moved >= 0) & (moved < size)).all(dim=1)
        sources.append(torch.arange(N)[inside])
        targets.append((moved[inside] * stride).sum(dim=1))
        types.append(torch.full((int(inside.sum()),), kind))
    if not sources:
        empty = torch.empty(0, dtype=torch.long)
        return torch.empty(2, 0, dtype=torch.long), empty
    src, dst, edge_type = torch.cat(sources), torch.cat(targets), torch.cat(types)
    order = torch.argsort(src * N + dst)
    edge_index = torch.stack([src[order], dst[order]])
    edge_type = edge_type[order]
    if batch_size > 1:
        shift = torch.arange(batch_size).repeat_interleave(edge_index.size(1)) * N  # (B*E,)
        edge_index = edge_index.repeat(1, batch_size) + shift
        edge_type = edge_type.repeat(batch_size)
    return edge_index.contiguous(), edge_type.contiguous()


# ----------------------------------------------------------------- kernels
def _scalings(plan: _Plan, type_weights: Tuple[float, float, float], alpha: float, device, dtype):
    """``(T, H, W, 1)`` tensors d^{-1/2}, (1-alpha) d^{-1} and (1-alpha) d^{-1/2}, cached."""
    key = (plan.grid, plan.offsets, type_weights, float(alpha), torch.device(device), dtype)

    def build():
        w_spatial, w_temporal, w_loop = type_weights
        degree = w_spatial * plan.counts[0] + w_temporal * plan.counts[1] + w_loop  # (T, H, W) float64
        d_inv_sqrt = _inv_sqrt(degree)
        scales = torch.stack([d_inv_sqrt, (1 - alpha) * d_inv_sqrt * d_inv_sqrt, (1 - alpha) * d_inv_sqrt])
        return scales.unsqueeze(-1).to(device=device, dtype=dtype)  # (3, T, H, W, 1)

    return _cached(_TENSORS, key, build)


def _conv_kernel(plan: _Plan, type_weights, channels: int, device, dtype) -> Tensor:
    """Depthwise ``conv3d`` weight ``(channels, 1, 2 r_t + 1, 2 r_y + 1, 2 r_x + 1)``: the stencil."""
    key = ("conv", plan.grid, plan.offsets, type_weights, channels, torch.device(device), dtype)

    def build():
        r_t, r_y, r_x = plan.radius
        kernel = torch.zeros(2 * r_t + 1, 2 * r_y + 1, 2 * r_x + 1, dtype=torch.float64)
        kernel[r_t, r_y, r_x] = type_weights[LOOP]
        for (dt, dy, dx), kind in zip(plan.offsets, plan.types):
            kernel[r_t + dt, r_y + dy, r_x + dx] = type_weights[kind]  # cross-correlation: out[s] += w y[s + o]
        return kernel.to(device=device, dtype=dtype).expand(channels, 1, *kernel.shape).contiguous()

    return _cached(_TENSORS, key, build)


def _stencil_sum(y: Tensor, plan: _Plan, type_weights, out: Optional[Tensor] = None) -> Tensor:
    r""":math:`\tilde{A}_w Y` for ``y`` of shape ``(b, T, H, W, c)`` (no autograd), into ``out``
    (a buffer of the same shape, not ``y``) when given."""
    w_loop = type_weights[LOOP]
    if plan.use_conv():
        b, T, H, W, c = y.shape
        kernel = _conv_kernel(plan, type_weights, c, y.device, y.dtype)
        summed = F.conv3d(y.permute(0, 4, 1, 2, 3), kernel, padding=plan.radius, groups=c)  # (b, c, T, H, W)
        return summed.permute(0, 2, 3, 4, 1)  # (b, T, H, W, c), channels-last memory: a view
    if out is None:  # a new tensor (also what a traced graph, run with autograd on, needs)
        out = y.clone() if w_loop == 1.0 else y * w_loop
    elif w_loop == 1.0:
        out.copy_(y)
    else:
        torch.mul(y, w_loop, out=out)
    everything = slice(None)
    for (target, source), kind in zip(plan.slices, plan.types):
        if type_weights[kind] != 0.0:
            out[(everything, *target)].add_(y[(everything, *source)], alpha=type_weights[kind])
    return out


def _appnp_block(h: Tensor, plan: _Plan, scales: Tensor, K: int, alpha: float, type_weights,
                 out: Optional[Tensor] = None) -> Tensor:
    r"""APPNP on one block ``(b, T, H, W, c)``, in the scaled variable :math:`Y = D^{-1/2} H`:

    .. math::
        Y^{(k+1)} = (1 - \alpha) D^{-1} \tilde{A}_w Y^{(k)} + \alpha D^{-1/2} H^{(0)}

    for :math:`k < K - 1`, and a last step back to :math:`H^{(K)} = (1 - \alpha) D^{-1/2}
    \tilde{A}_w Y^{(K-1)} + \alpha H^{(0)}`: one fused pass per step besides the stencil.
    ``h`` and ``out`` may be strided views of a larger tensor: ``h`` is read once and
    ``out`` written once, every step works on three contiguous buffers of the block's size.
    """
    d_inv_sqrt, step_scale, last_scale = scales.unbind(0)  # (T, H, W, 1) each
    y = torch.mul(h, d_inv_sqrt)  # contiguous (b, T, H, W, c)
    summed = torch.empty_like(y)
    mix = torch.mul(y, alpha) if K > 1 else None
    for _ in range(K - 1):
        torch.addcmul(mix, _stencil_sum(y, plan, type_weights, summed), step_scale, out=y)
    summed = _stencil_sum(y, plan, type_weights, summed)
    mix = torch.mul(h, alpha, out=mix) if mix is not None else torch.mul(h, alpha)
    if out is None:
        return torch.addcmul(mix, summed, last_scale)
    return torch.addcmul(mix, summed, last_scale, out=out)


def _appnp_traced(h: Tensor, plan: _Plan, scales: Tensor, K: int, alpha: float, type_weights) -> Tensor:
    """:func:`_appnp_block`'s iteration without ``out=`` buffers, for tracers and exporters: the
    graph they record is run later with autograd on, where ``out=`` arguments are refused."""
    d_inv_sqrt, step_scale, last_scale = scales.unbind(0)  # (T, H, W, 1) each
    y = h * d_inv_sqrt  # (B, T, H, W, C)
    mix = y * alpha
    for _ in range(K - 1):
        y = torch.addcmul(mix, _stencil_sum(y, plan, type_weights), step_scale)
    return torch.addcmul(h * alpha, _stencil_sum(y, plan, type_weights), last_scale)


def _tracing() -> bool:
    """Whether a tracer or exporter runs the code: the CPU blocking loop would fix the batch size."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


def _blocks(B: int, N: int, C: int) -> Tuple[int, int]:
    """(clips, channels) per block: about :data:`BLOCK_ELEMENTS` elements; channels in
    multiples of 8 (vector-friendly for the convolution) when a clip alone is larger."""
    per_clip = N * C
    if per_clip <= BLOCK_ELEMENTS:
        return max(1, min(B, BLOCK_ELEMENTS // per_clip)), C
    channels = BLOCK_ELEMENTS // N
    if channels >= 8:
        channels -= channels % 8
    return 1, max(1, min(C, channels))


def _appnp_no_grad(x: Tensor, plan: _Plan, K: int, alpha: float, type_weights) -> Tensor:
    B, N, C = x.shape
    T, H, W = plan.grid
    scales = _scalings(plan, type_weights, alpha, x.device, x.dtype)
    grid_x = x.reshape(B, T, H, W, C)
    if _tracing():  # exports: whole-batch operations (any batch size), no out= buffers
        return _appnp_traced(grid_x, plan, scales, K, alpha, type_weights).reshape(B, N, C)
    if x.device.type != "cpu":  # accelerators: whole-batch operations, no blocking
        return _appnp_block(grid_x, plan, scales, K, alpha, type_weights).reshape(B, N, C)
    clips, channels = _blocks(B, N, C)
    if clips >= B and channels >= C:
        return _appnp_block(grid_x, plan, scales, K, alpha, type_weights).reshape(B, N, C)
    out = torch.empty_like(grid_x)
    for b in range(0, B, clips):
        for c in range(0, C, channels):
            _appnp_block(grid_x[b:b + clips, ..., c:c + channels], plan, scales, K, alpha, type_weights,
                         out=out[b:b + clips, ..., c:c + channels])  # strided views (b, T, H, W, c)
    return out.view(B, N, C)


class _SymmetricStencil(torch.autograd.Function):
    r""":math:`g(\hat{A}_w) X` for APPNP's polynomial :math:`g` and constant weights.

    :math:`\hat{A}_w` is symmetric, so the backward pass is the forward pass on the
    incoming gradient; it calls this Function, so higher-order gradients work.
    """

    @staticmethod
    def forward(ctx, x: Tensor, plan: _Plan, K: int, alpha: float, type_weights) -> Tensor:
        ctx.plan, ctx.K, ctx.alpha, ctx.type_weights = plan, K, alpha, type_weights
        return _appnp_no_grad(x, plan, K, alpha, type_weights)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        grad = _SymmetricStencil.apply(grad_output.contiguous(), ctx.plan, ctx.K, ctx.alpha, ctx.type_weights)
        return grad, None, None, None, None


# ------------------------------------------------- differentiable weights (plain autograd)
def _weighted_step(x: Tensor, plan: _Plan, weights: Tensor, self_loops: bool) -> Tensor:
    r""":math:`\hat{A}_w X` for ``x`` of shape ``(B, T, H, W, C)`` with out-of-place ops, so
    gradients reach ``weights``."""
    B, T, H, W, C = x.shape
    w_spatial, w_temporal, w_loop = weights.unbind()
    counts = plan.counts.to(device=x.device, dtype=x.dtype)
    degree = w_spatial * counts[0] + w_temporal * counts[1]
    if self_loops:
        degree = degree + w_loop
    d_inv_sqrt = _inv_sqrt(degree).unsqueeze(-1)  # (T, H, W, 1)
    y = x * d_inv_sqrt
    r_t, r_y, r_x = plan.radius
    padded = F.pad(y, (0, 0, r_x, r_x, r_y, r_y, r_t, r_t))  # (B, T + 2 r_t, H + 2 r_y, W + 2 r_x, C)
    sums: List[Optional[Tensor]] = [None, None]
    for (dt, dy, dx), kind in zip(plan.offsets, plan.types):
        shifted = padded[:, r_t + dt:r_t + dt + T, r_y + dy:r_y + dy + H, r_x + dx:r_x + dx + W]  # y[s + o]
        sums[kind] = shifted if sums[kind] is None else sums[kind] + shifted
    out = w_loop * y if self_loops else torch.zeros_like(y)
    for kind, weight in ((SPATIAL, w_spatial), (TEMPORAL, w_temporal)):
        if sums[kind] is not None:
            out = out + weight * sums[kind]
    return out * d_inv_sqrt


# ----------------------------------------------------------------- public functions
def _check_features(x: Tensor, grid: Grid) -> None:
    T, H, W = grid
    if not isinstance(x, Tensor) or x.dim() != 3 or x.size(1) != T * H * W:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"expected node features of shape (B, N={T * H * W}, C) for a {T}x{H}x{W} grid, "
                          f"got {shape}")


def stencil_appnp(x: Tensor, grid, offsets, K: int, alpha: float, *, self_loops: bool = True,
                  weights: Optional[Tensor] = None) -> Tensor:
    r"""APPNP power iteration with the stencil :math:`\hat{A}_w` product.

    .. math::
        H^{(0)} = X, \qquad
        H^{(k+1)} = (1 - \alpha) \hat{A}_w H^{(k)} + \alpha H^{(0)},

    :math:`K` times: PyG's :class:`~torch_geometric.nn.conv.APPNP` (``normalize=True``,
    without edge dropout) on the edges of the offset graph, without building them.

    Args:
        x (torch.Tensor): Node features ``(B, N, C)``, :math:`N = T H W` in node-id order.
        grid: ``(T, H, W)`` or a graph with a ``grid`` attribute.
        offsets: ``(S, 3)`` symmetric offset set :math:`(d_t, d_y, d_x)` (see :func:`check_offsets`).
        K (int): Number of steps (``0`` returns ``x``).
        alpha (float): Teleport probability in :math:`[0, 1]`.
        self_loops (bool, optional): :math:`\tilde{A} = A + I` as ``gcn_norm(add_self_loops=True)``,
            else :math:`A` alone. (default: :obj:`True`)
        weights (torch.Tensor, optional): ``(3,)`` non-negative weights of (spatial, temporal,
            self-loop) edges, see the module notes; the self-loop weight is used only with
            ``self_loops=True``. When it requires grad the iteration runs on plain autograd
            (gradients reach ``weights``); otherwise the backward pass is the forward pass.

    **Shapes:** input :math:`(B, N, C)`, output :math:`(B, N, C)`.
    """
    plan = _plan(grid, offsets)
    _check_features(x, plan.grid)
    if isinstance(K, bool) or not isinstance(K, int) or K < 0:
        raise ConfigError(f"K must be an integer >= 0, got {K!r}")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    weights = _check_weights(weights)
    if K == 0:
        return x
    if weights is not None and ((torch.is_grad_enabled() and weights.requires_grad) or _tracing()):
        B, N, C = x.shape  # tensor weights (traced ones too: their values are not Python floats there)
        h0 = x.reshape(B, *plan.grid, C)
        h = h0
        w = weights.to(x.dtype)
        for _ in range(K):
            h = (1 - alpha) * _weighted_step(h, plan, w, self_loops) + alpha * h0
        return h.reshape(B, N, C)
    type_weights = _type_weights(weights, self_loops)
    if not (torch.is_grad_enabled() and x.requires_grad):  # inference, tracing, export: plain tensor ops
        return _appnp_no_grad(x, plan, K, alpha, type_weights)
    return _SymmetricStencil.apply(x, plan, K, alpha, type_weights)


def stencil_propagate(x: Tensor, grid, offsets, *, self_loops: bool = True,
                      weights: Optional[Tensor] = None) -> Tensor:
    r"""Computes :math:`\hat{A}_w X` clip by clip with the stencil of ``offsets``.

    The propagation of PyG's :class:`~torch_geometric.nn.conv.GCNConv` (``normalize=True``)
    on the edges of the offset graph: :math:`O(N C |\mathcal{O}|)` work, differentiable
    (in ``weights`` too when they require grad). Arguments as :func:`stencil_appnp`.

    **Shapes:** input :math:`(B, N, C)`, output :math:`(B, N, C)`.
    """
    return stencil_appnp(x, grid, offsets, 1, 0.0, self_loops=self_loops, weights=weights)


__all__ = [
    "check_offsets",
    "clear_stencil_cache",
    "stencil_appnp",
    "stencil_degree",
    "stencil_edge_index",
    "stencil_propagate",
]
