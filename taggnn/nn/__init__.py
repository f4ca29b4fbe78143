"""Neural modules of TAG-Head: positional encoding, token Transformer, graph refiners, readouts, the head."""
from .backends import (
    CSRBackend,
    EdgeIndexBackend,
    PropagationBackend,
    SparseTensorBackend,
    StructuredBackend,
    backend_names,
    get_backend,
    register_backend,
)
from .conv_stack import ConvStack
from .edge_weights import EdgeTypeWeights
from .encoder import TokenTransformer
from .head import POST_GRAPH, PostGraphFFN, TAGHead
from .positional import SpatioTemporalPositionalEncoding
from .propagation import (
    APPNPPropagation,
    Propagation,
    StageOptions,
    get_propagation,
    propagation_names,
    register_propagation,
)
from .readout import READOUTS, GraphReadout, Readout, get_readout, readout_names, register_readout
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
    "APPNPPropagation",
    "ConvStack",
    "EdgeTypeWeights",
    "PropagationBackend",
    "EdgeIndexBackend",
    "CSRBackend",
    "SparseTensorBackend",
    "StructuredBackend",
    "Propagation",
    "Readout",
    "StageOptions",
    "register_backend",
    "register_propagation",
    "register_readout",
    "backend_names",
    "propagation_names",
    "readout_names",
    "get_backend",
    "get_propagation",
    "get_readout",
    "PROPAGATIONS",
    "BACKENDS",
    "SUPPORTED_BACKENDS",
    "READOUTS",
    "POST_GRAPH",
    "EDGE_WEIGHTS",
    "default_backend",
    "pyg_conv_names",
]
