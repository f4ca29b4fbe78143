"""taggnn: TAG-Head, a Transformer + spatio-temporal graph head for fine-grained
action recognition, native to PyTorch Geometric."""
import logging

from . import graph, nn
from .graph import SpatioTemporalGraph, SpatioTemporalGrid
from .nn import GraphRefiner, TAGHead

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["graph", "nn", "SpatioTemporalGraph", "SpatioTemporalGrid", "GraphRefiner", "TAGHead", "__version__"]
