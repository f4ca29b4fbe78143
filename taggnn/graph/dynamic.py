r"""Dynamic edges: the :math:`k` nearest tokens in feature space (Vision GNN style).

Rebuilt from the features at every call, so a model gets a new graph every
forward. The construction is an exact dense top-:math:`k`: pairwise distances
from :func:`torch.cdist`, each node's neighbours sorted by distance with ties
broken by the smaller node id (a stable sort), the node itself excluded. The
edges point from each neighbour :math:`j` to its centre :math:`i`
(``edge_index[1] == i``), the ``flow="source_to_target"`` convention of
:func:`torch_geometric.nn.knn_graph`; for each centre, in ascending id, its
neighbours are listed nearest first. A graph of :math:`n \le k` nodes gives
each node its :math:`n - 1` others.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

#: Elements of the (clips, N, N) distance block computed at once.
CHUNK_ELEMENTS = 1 << 25


def knn_edges_dense(x: Tensor, k: int) -> Tensor:
    r"""kNN edges of every clip of ``x`` (``(B, N, C)``), batched: node ids offset by :math:`b N`.

    Returns:
        ``edge_index`` of shape :math:`(2, B N k')` with :math:`k' = \min(k, N - 1)`,
        clip by clip, centre by centre.
    """
    B, N, _ = x.shape
    kk = min(k, N - 1)
    if kk <= 0:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    x = x.detach()
    per_chunk = max(1, CHUNK_ELEMENTS // (N * N))
    neighbours = []
    ids = torch.arange(N, device=x.device)
    for start in range(0, B, per_chunk):
        chunk = x[start:start + per_chunk]
        dist = torch.cdist(chunk, chunk)  # (b, N, N)
        dist.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        if dist.dtype == torch.float64:  # no room for the id next to the distance: a stable sort
            order = torch.sort(dist, dim=-1, stable=True).indices[..., :kk]  # (b, N, k')
        else:
            order = _nearest_float(dist.float(), kk, ids)
        neighbours.append(order)
    neighbour = torch.cat(neighbours)  # (B, N, k')
    offset = (torch.arange(B, device=x.device) * N).view(B, 1, 1)
    centre = torch.arange(N, device=x.device).view(1, N, 1).expand(B, N, kk)
    return torch.stack([(neighbour + offset).reshape(-1), (centre + offset).reshape(-1)])


def _keys(dist: Tensor, ids: Tensor) -> Tensor:
    # (distance, id) as one int64: the bits of a non-negative float32 order like the float
    return (dist.view(torch.int32).long() << 32) | ids


def _nearest_float(dist: Tensor, k: int, ids: Tensor) -> Tensor:
    """The ``k`` smallest (distance, id) pairs of each row of ``dist`` (float32), nearest first."""
    # one more than needed (a row has N >= k + 1 entries, its own at +inf included)
    values, index = torch.topk(dist, k + 1, dim=-1, largest=False, sorted=True)  # (..., k + 1)
    # reorder equal distances by id inside the k found
    order = _keys(values[..., :k], index[..., :k]).sort(dim=-1).values & 0xFFFFFFFF
    # rows where the (k+1)-th distance ties the k-th: topk may have picked any of the tied ones,
    # so those rows (rare with real-valued features) are solved exactly
    ambiguous = values[..., k] == values[..., k - 1]
    if ambiguous.any():
        exact = torch.topk(_keys(dist[ambiguous], ids), k, dim=-1, largest=False, sorted=True).values
        order[ambiguous] = exact & 0xFFFFFFFF
    return order


def knn_edges(x: Tensor, k: int, batch: Optional[Tensor] = None) -> Tensor:
    r"""kNN edges of the graphs of a PyG-style node matrix.

    Args:
        x (torch.Tensor): Node features :math:`(M, C)`.
        k (int): Neighbours per node.
        batch (torch.Tensor, optional): Graph of each node :math:`(M,)`,
            sorted (as in a :class:`~torch_geometric.data.Batch`); graphs may
            differ in size. (default: one graph)
    """
    if batch is None or batch.numel() == 0:
        return knn_edges_dense(x.unsqueeze(0), k)
    sizes = torch.bincount(batch).tolist()
    parts, start = [], 0
    for size in sizes:  # one dense block per graph
        if size:
            parts.append(knn_edges_dense(x[start:start + size].unsqueeze(0), k) + start)
        start += size
    if not parts:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    return torch.cat(parts, dim=1)
