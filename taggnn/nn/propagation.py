r"""The propagations of the graph stage and their registry.

A propagation is a named way to build the module that refines the token features on the
graph: the parameter-free :class:`APPNPPropagation` (the paper), a :class:`ConvStack` of PyG
convolutions, or nothing (``"none"``, the identity). Each is registered once with the
back-ends it can run on; :class:`~taggnn.nn.GraphRefiner`, the configuration checks and the
``taggnn`` command read the choices from here (:func:`propagation_names`). Any other name of a
``torch_geometric.nn`` convolution is a propagation too (a :class:`ConvStack` of it, on the
``edge_index`` back-end).

Adding one, e.g. two steps of :math:`\hat{A}` with no teleport, on every back-end::

    class TwoHop(nn.Module):
        is_linear = True

        def forward(self, x, graph, backend, weights=None):
            return backend.propagate(backend.propagate(x, graph, weights), graph, weights)

    register_propagation("twohop", lambda options: TwoHop(), learned_edge_weights=True)  # every back-end

A stage module's ``forward(x, graph, backend, weights)`` maps ``(B, N, C)`` to ``(B, N, C)``;
``weights`` are the learned edge-type weights (``None`` for the fixed graph).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from torch import Tensor, nn

from ..graph import SpatioTemporalGraph
from ..graph.sparse import SymmetricAPPNP
from .backends import PropagationBackend, backend_names
from .conv_stack import ConvStack, edge_inputs, pyg_conv_class, pyg_conv_names


class APPNPPropagation(nn.Module):
    r"""APPNP's :math:`K` steps of personalised-PageRank propagation (the paper, Eq. 2), with no
    parameters:

    .. math::
        H^{(0)} = X, \qquad H^{(k+1)} = (1 - \alpha)\, \hat{A} H^{(k)} + \alpha H^{(0)},
        \qquad \hat{A} = D^{-1/2} (M + I) D^{-1/2}.

    The :math:`\hat{A}` products are the back-end's; back-ends with an adjacency run PyG's
    :class:`~torch_geometric.nn.conv.APPNP` (``self.appnp``, a
    :class:`~taggnn.graph.SymmetricAPPNP` whose backward pass reuses the cached symmetric
    adjacency).

    Args:
        K (int): Power-iteration steps, ``>= 0``.
        alpha (float): Teleport probability in :math:`(0, 1]`.

    **Shapes:** input :math:`(B, N, C)`, output :math:`(B, N, C)`.
    """

    is_linear = True

    def __init__(self, K: int = 2, alpha: float = 0.1):
        super().__init__()
        if isinstance(K, bool) or not isinstance(K, int) or K < 0:
            raise ValueError(f"K must be an integer >= 0, got {K!r}")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}")
        self.K, self.alpha = K, float(alpha)
        self.appnp = SymmetricAPPNP(K, self.alpha, normalize=False)

    def forward(self, x: Tensor, graph: SpatioTemporalGraph, backend: PropagationBackend,
                weights: Optional[Tensor] = None) -> Tensor:
        return backend.appnp(self.appnp, x, graph, weights)

    def extra_repr(self) -> str:
        return f"K={self.K}, alpha={self.alpha}"


@dataclass(frozen=True)
class StageOptions:
    """The options a propagation's builder may read (those of :class:`~taggnn.nn.GraphRefiner`)."""

    K: int = 2
    alpha: float = 0.1
    channels: Optional[int] = None
    num_layers: int = 2
    heads: int = 8
    dropout: float = 0.0
    activation: str = "relu"
    residual: bool = False
    conv_kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: the graph the stage runs on (its edge types and ``edge_attr`` size convolution stacks)
    graph: Optional[SpatioTemporalGraph] = None


@dataclass(frozen=True)
class Propagation:
    """A registered propagation.

    Attributes:
        name: Its name (``model.propagation``).
        build: ``build(options: StageOptions)`` -> the stage module, or ``None`` for the identity.
        only_backends: The back-ends it runs on, or ``None`` for every registered one (also those
            registered later, e.g. for new edge families).
        default: The back-end used when none is chosen (``None``: the first of :attr:`backends`).
        learned_edge_weights: Whether it takes ``edge_weights="learned"`` (a normalised
            propagation whose products take edge weights).
    """

    name: str
    build: Callable[[StageOptions], Optional[nn.Module]]
    only_backends: Optional[Tuple[str, ...]] = None
    default: Optional[str] = None
    learned_edge_weights: bool = False

    @property
    def backends(self) -> Tuple[str, ...]:
        """The back-ends it runs on, the default first."""
        names = self.only_backends if self.only_backends is not None else backend_names()
        if self.default is None:
            return tuple(names)
        return (self.default,) + tuple(name for name in names if name != self.default)


_PROPAGATIONS: Dict[str, Propagation] = {}


def register_propagation(name: str, build: Callable[[StageOptions], Optional[nn.Module]], *,
                         backends: Optional[Tuple[str, ...]] = None, default: Optional[str] = None,
                         learned_edge_weights: bool = False) -> Propagation:
    """Registers a propagation called ``name``; returns its entry (see :class:`Propagation` and the
    module docstring). ``backends=None``: every registered back-end, now and later."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a propagation needs a non-empty name, got {name!r}")
    if name in _PROPAGATIONS:
        raise ValueError(f"a propagation named {name!r} is already registered")
    if backends is not None:
        backends = tuple(backends)
        unknown = [b for b in backends if b not in backend_names()]
        if not backends or unknown:
            raise ValueError(f"propagation {name!r}: backends must be a non-empty subset of "
                             f"{', '.join(backend_names())} or None (all), got {backends!r}")
    if default is not None and default not in (backends if backends is not None else backend_names()):
        raise ValueError(f"propagation {name!r}: default back-end {default!r} is not one of its back-ends")
    entry = Propagation(name, build, backends, default, bool(learned_edge_weights))
    _PROPAGATIONS[name] = entry
    return entry


def unregister_propagation(name: str) -> None:
    """Removes a registered propagation (e.g. one a test registered)."""
    _PROPAGATIONS.pop(name, None)


def propagation_names() -> Tuple[str, ...]:
    """Names of the registered propagations, in registration order (any ``torch_geometric.nn``
    convolution name is accepted besides)."""
    return tuple(_PROPAGATIONS)


def get_propagation(name: str) -> Propagation:
    """The entry of ``name``: a registered propagation, or a :class:`ConvStack` of the
    ``torch_geometric.nn`` convolution called ``name`` on the ``edge_index`` back-end."""
    if name in _PROPAGATIONS:
        return _PROPAGATIONS[name]
    if isinstance(name, str) and pyg_conv_class(name) is not None:
        return Propagation(name, lambda options: _conv_stack(name, options), MESSAGE_PASSING_BACKENDS)
    raise ValueError(f"propagation must be one of {', '.join(_PROPAGATIONS)} or the name of a "
                     f"torch_geometric.nn convolution ({', '.join(pyg_conv_names())}), got {name!r}")


def _conv_stack(kind: str, options: StageOptions) -> ConvStack:
    edge_dim, num_edge_types = edge_inputs(options.graph)
    return ConvStack(kind, options.channels, num_layers=options.num_layers, heads=options.heads,
                     dropout=options.dropout, activation=options.activation, residual=options.residual,
                     conv_kwargs=options.conv_kwargs, edge_dim=edge_dim, num_edge_types=num_edge_types)


# APPNP and GCN need only the normalised product, so they run on every back-end (also those added
# later); the default runs PyG's own APPNP / GCNConv propagation on the batch's cached sparse
# adjacency ("csr"); "structured" is the exact O(N*C) opt-in (fastest for deep K and large grids,
# see benchmarks/propagation.py) for the paper's graph, "stencil" the default for local edge families
# (GraphRefiner picks it, see backends.recommended_backend). GATConv and other convolutions pass
# messages over edge_index.
MESSAGE_PASSING_BACKENDS = ("edge_index",)
register_propagation("appnp", lambda options: APPNPPropagation(options.K, options.alpha), default="csr",
                     learned_edge_weights=True)
register_propagation("gcn", lambda options: _conv_stack("gcn", options), default="csr", learned_edge_weights=True)
register_propagation("gat", lambda options: _conv_stack("gat", options), backends=MESSAGE_PASSING_BACKENDS)
register_propagation("none", lambda options: None)


__all__ = [
    "APPNPPropagation",
    "Propagation",
    "StageOptions",
    "register_propagation",
    "unregister_propagation",
    "propagation_names",
    "get_propagation",
]
