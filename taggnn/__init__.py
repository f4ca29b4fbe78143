"""taggnn: TAG-Head, a Transformer + spatio-temporal graph head for fine-grained
action recognition, native to PyTorch Geometric."""
import logging
import warnings

# torch_geometric calls torch.jit.script at import time, which torch 2.14 deprecates with a
# FutureWarning on every start; silence that one warning while importing it, nothing else.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    import torch_geometric  # noqa: F401

from . import errors, graph, nn  # noqa: E402
from .errors import TaggnnError  # noqa: E402
from .graph import SpatioTemporalGraph, SpatioTemporalGrid  # noqa: E402
from .nn import GraphRefiner, TAGHead  # noqa: E402
from .utils.version import installed_version  # noqa: E402

__version__ = installed_version()

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["errors", "TaggnnError", "graph", "nn", "SpatioTemporalGraph", "SpatioTemporalGrid", "GraphRefiner",
           "TAGHead", "__version__"]
