r"""Learned edge-type weights of the graph stage."""
from __future__ import annotations

import torch
from torch import Tensor, nn

NUM_WEIGHTED_EDGE_TYPES = 3  # IF-FC, TAT, self-loop (the edge types of taggnn.graph)


def num_weighted_edge_types(graph) -> int:
    """How many edge types a graph's learned weights cover: 3 (spatial, temporal, self-loop) for the
    static families, :attr:`~taggnn.graph.SpatioTemporalGraph.num_edge_types` (4, kNN = 3, then
    ``4 + j`` per custom type ``j``) with a ``dynamic`` or ``custom`` family."""
    if getattr(graph, "dynamic", None) is None and getattr(graph, "custom", None) is None:
        return NUM_WEIGHTED_EDGE_TYPES
    return graph.num_edge_types


class EdgeTypeWeights(nn.Module):
    r"""One learnable positive weight per edge type, :math:`w = e^{\theta}`, initially 1 (the
    paper's unit weights): :math:`\theta` is the parameter ``log_weight``.

    The propagation back-ends normalise with the weighted degrees,
    :math:`\hat{A}_w = D_w^{-1/2} (W \odot \tilde{M}) D_w^{-1/2}`, as PyG's ``gcn_norm`` does with
    ``edge_weight``; at initialisation this is the fixed graph.

    **Shapes:** output :math:`(\text{num\_types},)`, the weights indexed by edge type: (spatial
    (IF-FC), temporal (TAT), self-loop) in the order of :data:`taggnn.graph.IF_FC`,
    :data:`~taggnn.graph.TAT`, :data:`~taggnn.graph.SELF_LOOP`, then kNN
    (:data:`~taggnn.graph.DYNAMIC`) and the custom types ``CUSTOM + j`` when the graph has them
    (:func:`num_weighted_edge_types`).
    """

    def __init__(self, num_types: int = NUM_WEIGHTED_EDGE_TYPES):
        super().__init__()
        self.log_weight = nn.Parameter(torch.zeros(num_types))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.log_weight)

    def forward(self) -> Tensor:
        return self.log_weight.exp()

    def extra_repr(self) -> str:
        return f"num_types={self.log_weight.numel()}"


__all__ = ["EdgeTypeWeights", "num_weighted_edge_types"]
