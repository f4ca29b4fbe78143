"""Neural modules of TAG-Head: positional encoding, token Transformer, graph refiners, readouts, the head."""
from .encoder import TokenTransformer
from .head import POST_GRAPH, PostGraphFFN, TAGHead
from .positional import SpatioTemporalPositionalEncoding
from .readout import READOUTS, GraphReadout
from .refiner import (
    BACKENDS,
    EDGE_WEIGHTS,
    PROPAGATIONS,
    SUPPORTED_BACKENDS,
    GraphRefiner,
    default_backend,
    pyg_conv_names,
)

__all__ = [
    "TAGHead",
    "GraphRefiner",
    "GraphReadout",
    "PostGraphFFN",
    "TokenTransformer",
    "SpatioTemporalPositionalEncoding",
    "PROPAGATIONS",
    "BACKENDS",
    "SUPPORTED_BACKENDS",
    "READOUTS",
    "POST_GRAPH",
    "EDGE_WEIGHTS",
    "default_backend",
    "pyg_conv_names",
]
