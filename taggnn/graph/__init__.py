"""The spatio-temporal token graph: builder, batching, adjacency, PyG transform.

Usable on its own by any project that puts a graph on a T x H x W token grid::

    from taggnn.graph import SpatioTemporalGraph
    graph = SpatioTemporalGraph(8, 7, 7)
    batch = graph.batch(tokens)  # tokens: (B, 392, C) -> torch_geometric Batch
    local = SpatioTemporalGraph(8, 7, 7, spatial="grid8", temporal="window:2", edge_attr="offset")

Edge families: :mod:`taggnn.graph.families`; kNN edges: :mod:`taggnn.graph.dynamic`;
clips with different grids: :func:`batch_graphs`; heterogeneous view: :mod:`taggnn.graph.hetero`;
products with the adjacency without building it: :mod:`taggnn.graph.structured`,
:mod:`taggnn.graph.stencil`; sparse products: :mod:`taggnn.graph.sparse`; figures: :mod:`taggnn.graph.draw`.
"""
from .batching import batch_graphs
from .builder import (
    CUSTOM,
    DYNAMIC,
    IF_FC,
    SELF_LOOP,
    SPATIAL,
    TAT,
    TEMPORAL,
    GraphSpec,
    SpatioTemporalGraph,
    clear_template_cache,
    gcn_degree,
)
from .dynamic import knn_edges
from .sparse import SymmetricAPPNP, symmetric_spmm
from .stencil import stencil_appnp, stencil_propagate
from .structured import structured_appnp, structured_propagate
from .transform import SpatioTemporalGrid, check_typed_edges

__all__ = [
    "SpatioTemporalGraph",
    "SpatioTemporalGrid",
    "GraphSpec",
    "IF_FC",
    "TAT",
    "SELF_LOOP",
    "SPATIAL",
    "TEMPORAL",
    "DYNAMIC",
    "CUSTOM",
    "gcn_degree",
    "structured_propagate",
    "structured_appnp",
    "stencil_propagate",
    "stencil_appnp",
    "symmetric_spmm",
    "SymmetricAPPNP",
    "clear_template_cache",
    "batch_graphs",
    "knn_edges",
    "check_typed_edges",
]
