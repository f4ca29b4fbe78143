"""Neural modules of TAG-Head: positional encoding, token Transformer, graph refiners, the head."""
from .encoder import TokenTransformer
from .head import TAGHead
from .positional import SpatioTemporalPositionalEncoding
from .refiner import BACKENDS, PROPAGATIONS, SUPPORTED_BACKENDS, GraphRefiner, default_backend

__all__ = [
    "TAGHead",
    "GraphRefiner",
    "TokenTransformer",
    "SpatioTemporalPositionalEncoding",
    "PROPAGATIONS",
    "BACKENDS",
    "SUPPORTED_BACKENDS",
    "default_backend",
]
