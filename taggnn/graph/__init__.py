"""The spatio-temporal token graph: builder, batching, adjacency, PyG transform.

Usable on its own by any project that puts a graph on a T x H x W token grid::

    from taggnn.graph import SpatioTemporalGraph
    graph = SpatioTemporalGraph(8, 7, 7)
    batch = graph.batch(tokens)  # tokens: (B, 392, C) -> torch_geometric Batch
"""
from .builder import (
    IF_FC,
    SELF_LOOP,
    TAT,
    GraphSpec,
    SpatioTemporalGraph,
    clear_template_cache,
    gcn_degree,
)
from .sparse import SymmetricAPPNP, symmetric_spmm
from .stencil import stencil_appnp, stencil_propagate
from .structured import structured_appnp, structured_propagate
from .transform import SpatioTemporalGrid

__all__ = [
    "SpatioTemporalGraph",
    "SpatioTemporalGrid",
    "GraphSpec",
    "IF_FC",
    "TAT",
    "SELF_LOOP",
    "gcn_degree",
    "structured_propagate",
    "structured_appnp",
    "stencil_propagate",
    "stencil_appnp",
    "symmetric_spmm",
    "SymmetricAPPNP",
    "clear_template_cache",
]
