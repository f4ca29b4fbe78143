r"""Oversmoothing measures on the spatio-temporal token graph.

For node features :math:`X` of one clip laid out as :math:`(T, P, C)` and the
unnormalised graph Laplacian :math:`L` of IF-FC + TAT edges, the Dirichlet
energy splits exactly into a within-frame and an across-frame part:

.. math::
    \operatorname{tr}(X^\top L X) = \underbrace{P \sum_t \lVert X_t - \bar{X}_t
    \rVert_F^2}_{\text{within frames (IF-FC)}} + \underbrace{\sum_t \lVert
    X_{t+1} - X_t \rVert_F^2}_{\text{across frames (TAT)}},

where :math:`\bar{X}_t` is the mean token of frame :math:`t` (the clique on
:math:`P` sites contributes :math:`\sum_{p<q} \lVert x_p - x_q \rVert^2 = P
\sum_p \lVert x_p - \bar{x} \rVert^2`). Energy is not scale-invariant, so it is
reported normalised by :math:`\lVert X \rVert_F^2` (and as a ratio to the
input's). Other measures: MAD (Chen et al., AAAI 2020) with zero distances
counted and in the official variant that drops them, mean pairwise cosine
similarity within and across frames, effective rank (Roy & Vetterli 2007) and
numerical rank :math:`\lVert X \rVert_F^2 / \lVert X \rVert_2^2`.

Theory (derived in the README, "Theory"): a frame's clique with self-loops has
:math:`\hat{A} = J / P`, so one GCN step replaces every token by (almost) its
frame mean and within-frame energy collapses by :math:`\sim (P + 2)^2 / 2`;
APPNP's filter :math:`g_K(\mu) = ((1-\alpha)\mu)^K + \alpha \sum_{k<K}
((1-\alpha)\mu)^k` is :math:`\approx \alpha` at :math:`\mu \approx 0`, so
within-frame energy keeps a share :math:`\approx \alpha^2` for every
:math:`K \ge 1`: no collapse.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from ..graph import SpatioTemporalGraph


def _grid_view(x: Tensor, graph: SpatioTemporalGraph) -> Tensor:
    if x.dim() != 3 or x.size(1) != graph.num_nodes:
        raise ValueError(f"expected features of shape (B, N={graph.num_nodes}, C), got {tuple(x.shape)}")
    B, N, C = x.shape
    return x.reshape(B, graph.T, graph.num_sites, C)  # (B, T, P, C)


def dirichlet_energy(x: Tensor, graph: SpatioTemporalGraph) -> Dict[str, Tensor]:
    """Within-frame, across-frame and total :math:`\\operatorname{tr}(X^\\top L X)` per clip, shape ``(B,)``.

    Only the edge sets present in ``graph`` contribute (an ablated graph has
    no IF-FC or no TAT part). For any edge family the energy is
    :math:`\\frac{1}{2} \\sum_{(i, j)} \\lVert x_i - x_j \\rVert^2` over the static
    edges of one clip, an edge counting as *within* when both ends are in the same
    frame and *across* otherwise (the closed forms above for the paper's IF-FC and
    TAT). kNN edges (``dynamic``) depend on the features and are left out.
    """
    grid = _grid_view(x.double(), graph)
    P = graph.num_sites
    zero = grid.new_zeros(grid.size(0))
    if graph.custom is not None or graph.intra not in ("full", "none") or graph.temporal not in ("aligned", "none"):
        return _edge_energy(grid.reshape(grid.size(0), graph.num_nodes, -1), graph)
    within = zero
    if graph.intra == "full":
        within = P * (grid - grid.mean(2, keepdim=True)).pow(2).sum((1, 2, 3))
    across = zero
    if graph.temporal == "aligned" and graph.T > 1:
        across = (grid[:, 1:] - grid[:, :-1]).pow(2).sum((1, 2, 3))
    return {"within": within, "across": across, "total": within + across}


#: Edges whose differences are computed at once (bounds the memory of :func:`dirichlet_energy`).
EDGE_CHUNK = 1 << 16


def _edge_energy(x: Tensor, graph: SpatioTemporalGraph) -> Dict[str, Tensor]:
    """The energy of ``x`` ``(B, N, C)`` summed edge by edge over the static edge list, in chunks."""
    edge_index = graph.edge_index_on(x.device)
    P = graph.num_sites
    within = x.new_zeros(x.size(0))
    across = x.new_zeros(x.size(0))
    for start in range(0, edge_index.size(1), EDGE_CHUNK):
        src, dst = edge_index[:, start:start + EDGE_CHUNK]
        energy = 0.5 * (x[:, src] - x[:, dst]).pow(2).sum(-1)  # (B, chunk)
        same_frame = (src // P) == (dst // P)
        within = within + (energy * same_frame).sum(1)
        across = across + (energy * ~same_frame).sum(1)
    return {"within": within, "across": across, "total": within + across}


def mad(x: Tensor, *, drop_zeros: bool = False, eps: float = 1e-8) -> Tensor:
    """Mean Average Distance (cosine distance) over all node pairs of each clip, shape ``(B,)``.

    ``drop_zeros=True`` is the official implementation: exact-zero distances
    are left out of the averages, which hides a complete collapse (all nodes
    equal gives NaN there, 0 here).
    """
    unit = x.double() / x.double().norm(dim=-1, keepdim=True).clamp(min=eps)
    distance = (1 - unit @ unit.transpose(1, 2)).clamp(min=0)  # (B, N, N)
    if not drop_zeros:
        return distance.mean((1, 2))
    nonzero = distance > 0
    row_mean = (distance * nonzero).sum(2) / nonzero.sum(2).clamp(min=1)
    rows = nonzero.any(2)
    return torch.where(rows.any(1), (row_mean * rows).sum(1) / rows.sum(1).clamp(min=1),
                       torch.full_like(row_mean[:, 0], float("nan")))


def pairwise_cosine(x: Tensor, graph: SpatioTemporalGraph, eps: float = 1e-8) -> Dict[str, Tensor]:
    """Mean cosine similarity of distinct node pairs within a frame and across frames, ``(B,)`` each."""
    grid = _grid_view(x.double(), graph)
    B, T, P, C = grid.shape
    unit = grid / grid.norm(dim=-1, keepdim=True).clamp(min=eps)
    flat = unit.reshape(B, T * P, C)
    similarity = flat @ flat.transpose(1, 2)  # (B, N, N)
    frame = torch.arange(T, device=x.device).repeat_interleave(P)
    same_frame = frame[:, None] == frame[None, :]
    not_self = ~torch.eye(T * P, dtype=torch.bool, device=x.device)
    within_mask, across_mask = same_frame & not_self, ~same_frame
    within = (similarity * within_mask).sum((1, 2)) / within_mask.sum().clamp(min=1)
    across = (similarity * across_mask).sum((1, 2)) / across_mask.sum().clamp(min=1) if T > 1 \
        else torch.full((B,), float("nan"), dtype=similarity.dtype, device=x.device)
    return {"within": within, "across": across}


def effective_rank(x: Tensor, eps: float = 1e-12) -> Tensor:
    r"""Roy & Vetterli's effective rank :math:`\exp(H(\sigma / \lVert\sigma\rVert_1))` per clip."""
    singular = torch.linalg.svdvals(x.double())  # (B, min(N, C))
    p = singular / singular.sum(-1, keepdim=True).clamp(min=eps)
    entropy = -(p * torch.log(p.clamp(min=eps))).sum(-1)
    return entropy.exp()


def numerical_rank(x: Tensor, eps: float = 1e-12) -> Tensor:
    r""":math:`\lVert X \rVert_F^2 / \lVert X \rVert_2^2` per clip."""
    singular = torch.linalg.svdvals(x.double())
    return singular.pow(2).sum(-1) / singular[:, 0].pow(2).clamp(min=eps)


def oversmoothing_measures(x: Tensor, graph: SpatioTemporalGraph, reference: Tensor = None) -> Dict[str, float]:
    """All measures, averaged over the clips of ``x`` (B, N, C).

    With ``reference`` (the input features), energy is also given as a ratio
    to the reference's, part by part.
    """
    energy = dirichlet_energy(x, graph)
    norm = x.double().pow(2).sum((1, 2)).clamp(min=1e-30)
    cosine = pairwise_cosine(x, graph)
    result = {
        "energy_norm": float((energy["total"] / norm).mean()),
        "energy_within_norm": float((energy["within"] / norm).mean()),
        "energy_across_norm": float((energy["across"] / norm).mean()),
        "mad": float(mad(x).mean()),
        "mad_official": float(mad(x, drop_zeros=True).mean()),
        "cos_within": float(cosine["within"].mean()),
        "cos_across": float(cosine["across"].mean()),
        "effective_rank": float(effective_rank(x).mean()),
        "numerical_rank": float(numerical_rank(x).mean()),
    }
    if reference is not None:
        ref = dirichlet_energy(reference, graph)
        for part in ("within", "across", "total"):
            denominator = ref[part].clamp(min=1e-30)
            result[f"energy_{part}_ratio"] = float((energy[part] / denominator).mean())
    return result
