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

from .builder import SpatioTemporalGraph


def structured_propagate(x: Tensor, graph: SpatioTemporalGraph) -> Tensor:
    r"""Computes :math:`\hat{A} X` clip by clip for :math:`X` laid out on the grid.

    Args:
        x (torch.Tensor): Node features of shape ``(B, N, C)`` with
            :math:`N = T H W` in node-id order.
        graph (SpatioTemporalGraph): The graph (self-loops are always part of
            :math:`\hat{A}`, as in the paper and in PyG's ``gcn_norm``).

    **Shapes:** input :math:`(B, N, C)`, output :math:`(B, N, C)`.
    """
    B, N, C = x.shape
    T, P = graph.T, graph.num_sites
    d_inv_sqrt = graph.degree(x.device, x.dtype).rsqrt().view(1, T, 1, 1)  # (1, T, 1, 1)
    y = x.reshape(B, T, P, C) * d_inv_sqrt  # (B, T, P, C)

    if graph.intra == "full":
        out = y.sum(dim=2, keepdim=True).expand(B, T, P, C)  # clique + self-loop
    else:
        out = y  # self-loop only
    if graph.temporal == "aligned" and T > 1:
        zero = y.new_zeros(B, 1, P, C)
        from_previous = torch.cat([zero, y[:, :-1]], dim=1)  # Y_{t-1}
        from_next = torch.cat([y[:, 1:], zero], dim=1)  # Y_{t+1}
        out = out + from_previous + from_next
    return (out * d_inv_sqrt).reshape(B, N, C)


def structured_appnp(x: Tensor, graph: SpatioTemporalGraph, K: int, alpha: float) -> Tensor:
    r"""APPNP power iteration with :func:`structured_propagate`.

    .. math::
        H^{(0)} = X, \qquad
        H^{(k+1)} = (1 - \alpha) \hat{A} H^{(k)} + \alpha H^{(0)},

    the update of PyG's :class:`~torch_geometric.nn.conv.APPNP` (without
    edge dropout), :math:`K` times.

    **Shapes:** input :math:`(B, N, C)`, output :math:`(B, N, C)`.
    """
    h = x
    for _ in range(K):
        h = (1.0 - alpha) * structured_propagate(h, graph) + alpha * x
    return h
