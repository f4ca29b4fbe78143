r"""Exact :math:`O(N C)` products with the normalised TAG-Head adjacency.

For the spatio-temporal grid graph with self-loops, :math:`\tilde{M} = M + I`,
every node of frame :math:`t` has the same degree :math:`d_t` (see
:func:`~taggnn.graph.builder.gcn_degree`), and a row of :math:`\tilde{M}` is

* with IF-FC edges: all ones over frame :math:`t` (the clique plus the loop),
* without: the self-loop only,
* plus, with TAT edges, the same site in frames :math:`t \pm 1`.

So, with :math:`Y = D^{-1/2} X` and :math:`X` viewed as :math:`(T, P, C)`,

.. math::
    (\hat{A} X)_{t,p} = d_t^{-1/2} \Big( [\text{IF-FC}] \sum_{q} Y_{t,q}
    + [\neg\text{IF-FC}]\, Y_{t,p} + [\text{TAT}] (Y_{t-1,p} + Y_{t+1,p}) \Big),

a frame sum and two time shifts: :math:`O(N C)` work instead of the
:math:`O(N P C)` of sparse message passing over the :math:`\approx N P`
edges, with the same result up to float rounding.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from .builder import SpatioTemporalGraph


def check_paper_families(graph: SpatioTemporalGraph, what: str = "the structured product") -> None:
    """Raises :class:`~taggnn.errors.ConfigError` unless ``graph`` has only the paper's edge families
    (spatial ``"full"`` or ``"none"``, temporal ``"aligned"`` or ``"none"``, no kNN or custom edges):
    the frame sums and time shifts of this module compute those and nothing else."""
    if (graph.intra not in ("full", "none") or graph.temporal not in ("aligned", "none")
            or graph.dynamic is not None or graph.custom is not None):
        raise ConfigError(
            f"{what} computes the paper's IF-FC (spatial 'full') and TAT (temporal 'aligned') edges only, got "
            f"spatial {graph.intra!r}, temporal {graph.temporal!r}"
            + (f", dynamic {graph.dynamic!r}" if graph.dynamic is not None else "")
            + (", a custom family" if graph.custom is not None else "")
            + "; use taggnn.graph.stencil_propagate / stencil_appnp for other translation-invariant graphs, "
              "or PyG on the edge list")


def _apply_a_hat(x: Tensor, graph: SpatioTemporalGraph) -> Tensor:
    r""":math:`\hat{A} X` for ``x`` of shape ``(B, N, C)``, without autograd bookkeeping."""
    B, N, C = x.shape
    T, P = graph.T, graph.num_sites
    d_inv_sqrt = graph.degree(x.device, x.dtype).rsqrt().view(1, T, 1, 1)  # (1, T, 1, 1)
    y = x.reshape(B, T, P, C) * d_inv_sqrt  # (B, T, P, C)
    if graph.intra == "full":
        out = y.sum(dim=2, keepdim=True).expand(B, T, P, C).clone()  # clique + self-loop
    else:
        out = y.clone()  # self-loop only
    if graph.temporal == "aligned" and T > 1:
        out[:, 1:] += y[:, :-1]  # from frame t-1
        out[:, :-1] += y[:, 1:]  # from frame t+1
    return out.mul_(d_inv_sqrt).view(B, N, C)


def _appnp_no_grad(x: Tensor, graph: SpatioTemporalGraph, K: int, alpha: float) -> Tensor:
    h = x
    for _ in range(K):
        h = _apply_a_hat(h, graph).mul_(1.0 - alpha).add_(x, alpha=alpha)
    return h


class _SymmetricPropagation(torch.autograd.Function):
    r""":math:`g(\hat{A}) X` for a polynomial :math:`g` (APPNP's filter).

    :math:`\hat{A}` is symmetric, so :math:`g(\hat{A})` is too and the
    gradient is :math:`g(\hat{A})` applied to the incoming gradient: the
    backward pass is the forward pass again and nothing is saved for it.
    The backward calls this Function itself, so higher-order gradients work.
    """

    @staticmethod
    def forward(ctx, x: Tensor, graph: SpatioTemporalGraph, K: int, alpha: float) -> Tensor:
        ctx.graph, ctx.K, ctx.alpha = graph, K, alpha
        return _appnp_no_grad(x, graph, K, alpha)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        grad = _SymmetricPropagation.apply(grad_output.contiguous(), ctx.graph, ctx.K, ctx.alpha)
        return grad, None, None, None


def structured_propagate(x: Tensor, graph: SpatioTemporalGraph) -> Tensor:
    r"""Computes :math:`\hat{A} X` clip by clip for :math:`X` laid out on the grid.

    Differentiable; since :math:`\hat{A}` is symmetric its backward pass is
    one more :math:`\hat{A}` product.

    Args:
        x (torch.Tensor): Node features of shape ``(B, N, C)`` with
            :math:`N = T H W` in node-id order.
        graph (SpatioTemporalGraph): The graph (self-loops are always part of
            :math:`\hat{A}`, as in the paper and in PyG's ``gcn_norm``).

    Raises:
        ConfigError: For a graph with other edge families (:func:`check_paper_families`).

    **Shapes:** input :math:`(B, N, C)`, output :math:`(B, N, C)`.
    """
    check_paper_families(graph, "structured_propagate")
    graph.check_node_features(x)
    if not (torch.is_grad_enabled() and x.requires_grad):  # inference, tracing, export: plain tensor ops
        return _apply_a_hat(x, graph)
    return _SymmetricPropagation.apply(x, graph, 1, 0.0)


def structured_appnp(x: Tensor, graph: SpatioTemporalGraph, K: int, alpha: float) -> Tensor:
    r"""APPNP power iteration with the structured :math:`\hat{A}` product.

    .. math::
        H^{(0)} = X, \qquad
        H^{(k+1)} = (1 - \alpha) \hat{A} H^{(k)} + \alpha H^{(0)},

    the update of PyG's :class:`~torch_geometric.nn.conv.APPNP` (without
    edge dropout), :math:`K` times. The result is the polynomial filter
    :math:`g_K(\hat{A}) X` with :math:`g_K(\mu) = ((1-\alpha)\mu)^K +
    \alpha \sum_{k<K} ((1-\alpha)\mu)^k`, so the backward pass is the same
    iteration on the gradient and no intermediate :math:`H^{(k)}` is stored.

    Raises:
        ConfigError: For a graph with other edge families (:func:`check_paper_families`).

    **Shapes:** input :math:`(B, N, C)`, output :math:`(B, N, C)`.
    """
    check_paper_families(graph, "structured_appnp")
    graph.check_node_features(x)
    if K == 0:
        return x
    if not (torch.is_grad_enabled() and x.requires_grad):  # inference, tracing, export: plain tensor ops
        return _appnp_no_grad(x, graph, K, float(alpha))
    return _SymmetricPropagation.apply(x, graph, K, float(alpha))


def weighted_degree(graph: SpatioTemporalGraph, weights: Tensor) -> Tensor:
    r"""Per-frame degrees of the typed graph with one weight per edge type.

    .. math::
        d_t = w_{\text{loop}} + [\text{IF-FC}]\, w_{\text{IF}} (P - 1)
        + [\text{TAT}]\, w_{\text{TAT}} (\mathbb{1}[t > 0] + \mathbb{1}[t < T - 1])

    Args:
        weights (torch.Tensor): ``(3,)`` positive weights of (IF-FC, TAT, self-loop) edges,
            in the order of the edge types ``IF_FC``, ``TAT``, ``SELF_LOOP``.

    Returns:
        ``(T,)``, differentiable in ``weights``.
    """
    check_paper_families(graph, "weighted_degree")
    T, P = graph.T, graph.num_sites
    w_intra, w_temporal, w_loop = weights.unbind()
    degree = w_loop.expand(T)
    if graph.intra == "full":
        degree = degree + w_intra * (P - 1)
    if graph.temporal == "aligned" and T > 1:
        neighbours = torch.full((T,), 2.0, dtype=weights.dtype, device=weights.device)
        neighbours[0] = neighbours[-1] = 1.0
        degree = degree + w_temporal * neighbours
    return degree


def weighted_propagate(x: Tensor, graph: SpatioTemporalGraph, weights: Tensor) -> Tensor:
    r""":math:`\hat{A}_w X` with per-edge-type weights :math:`w`, by frame sums and shifts:

    .. math::
        (\hat{A}_w X)_{t,p} = d_t^{-1/2} \Big( w_{\text{IF}} \sum_{q \neq p} Y_{t,q}
        + w_{\text{loop}} Y_{t,p} + w_{\text{TAT}} (Y_{t-1,p} + Y_{t+1,p}) \Big),
        \qquad Y = D^{-1/2} X,

    with :math:`d_t` from :func:`weighted_degree`: the normalisation
    :math:`D^{-1/2} (W \odot \tilde{M}) D^{-1/2}` of ``gcn_norm`` with edge weights.
    Plain autograd (gradients reach ``x`` and ``weights``).

    **Shapes:** input :math:`(B, N, C)`, weights :math:`(3,)`, output :math:`(B, N, C)`.
    """
    check_paper_families(graph, "weighted_propagate")
    graph.check_node_features(x)
    B, N, C = x.shape
    T, P = graph.T, graph.num_sites
    w_intra, w_temporal, w_loop = weights.to(x.dtype).unbind()
    d_inv_sqrt = weighted_degree(graph, weights.to(x.dtype)).rsqrt().view(1, T, 1, 1)  # (1, T, 1, 1)
    y = x.reshape(B, T, P, C) * d_inv_sqrt  # (B, T, P, C)
    out = w_loop * y
    if graph.intra == "full":
        out = out + w_intra * (y.sum(dim=2, keepdim=True) - y)
    if graph.temporal == "aligned" and T > 1:
        zero = y.new_zeros(B, 1, P, C)
        shifted = torch.cat([zero, y[:, :-1]], dim=1) + torch.cat([y[:, 1:], zero], dim=1)  # (B, T, P, C)
        out = out + w_temporal * shifted
    return (out * d_inv_sqrt).reshape(B, N, C)
