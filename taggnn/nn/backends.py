r"""Back-ends of the parameter-free propagation: how :math:`\hat{A} X` is computed.

A back-end computes the normalised product

.. math::
    \hat{A} X, \qquad \hat{A} = D^{-1/2} (M + I) D^{-1/2}

(or :math:`\hat{A}_w = D_w^{-1/2} (W \odot \tilde{M}) D_w^{-1/2}` with one weight per
edge type, as PyG's ``gcn_norm`` does with ``edge_weight``) for the node features
``(B, N, C)`` of ``B`` clips of one :class:`~taggnn.graph.SpatioTemporalGraph`, and
APPNP's power iteration with it. The graph is an argument of every call, never state:
a back-end serves any graph it supports, and says which it does with
:meth:`PropagationBackend.check_graph`.

Back-ends are registered by name (:func:`register_backend`, :func:`backend_names`,
:func:`get_backend`); a new one subclasses :class:`PropagationBackend`::

    @register_backend
    class DenseBackend(PropagationBackend):
        name = "dense"

        def propagate(self, x, graph, weights=None):
            adj = graph.adj_t(1, device=x.device, dtype=x.dtype).to_dense()  # (N, N)
            return adj @ x  # (B, N, C)
"""
from __future__ import annotations

from typing import Callable, ClassVar, Dict, Optional, Tuple, Type

import torch
from torch import Tensor
from torch_geometric.nn import APPNP
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from ..errors import ConfigError
from ..graph import SpatioTemporalGraph, structured_appnp, structured_propagate
from ..graph.structured import weighted_propagate
from ..utils.optional import require_torch_sparse


class PropagationBackend:
    r"""How :math:`\hat{A} X` is computed for the node features of a batch of clips.

    Subclasses set :attr:`name` and implement :meth:`propagate`; they may override
    :meth:`appnp` (default: :math:`K` steps of :meth:`propagate`), :meth:`check_graph`
    (default: every graph) and :meth:`edges` (default: the batch's edge list, for
    convolution stacks that pass messages over edges).

    ``weights`` is ``None`` for the graph's unit weights, or a ``(3,)`` tensor of positive
    weights of the edge types (IF-FC, TAT, self-loop), see
    :class:`~taggnn.nn.EdgeTypeWeights`.

    **Shapes:** ``x`` :math:`(B, N, C)`, output :math:`(B, N, C)`.
    """

    name: ClassVar[str] = ""
    #: whether the PyG ``Batch`` fed to the graph stage must carry the edge list
    needs_edges: ClassVar[bool] = True
    #: whether convolution stacks can pass messages with this back-end (:meth:`edges`)
    passes_messages: ClassVar[bool] = False

    def check_graph(self, graph: SpatioTemporalGraph) -> None:
        """Raises :class:`~taggnn.errors.ConfigError` (a ``ValueError``) when this back-end cannot
        compute products with ``graph``."""

    def propagate(self, x: Tensor, graph: SpatioTemporalGraph, weights: Optional[Tensor] = None) -> Tensor:
        r""":math:`\hat{A} X` (or :math:`\hat{A}_w X`)."""
        raise NotImplementedError

    def appnp(self, layer: APPNP, x: Tensor, graph: SpatioTemporalGraph,
              weights: Optional[Tensor] = None) -> Tensor:
        r"""``layer.K`` steps :math:`H \leftarrow (1 - \alpha) \hat{A} H + \alpha X`.

        ``layer`` is a parameter-free PyG :class:`~torch_geometric.nn.conv.APPNP` created
        with ``normalize=False``; back-ends that can hand it an adjacency run it, the others
        use its ``K`` and ``alpha``."""
        h = x
        for _ in range(layer.K):
            h = (1 - layer.alpha) * self.propagate(h, graph, weights) + layer.alpha * x
        return h

    def edges(self, graph: SpatioTemporalGraph, batch_size: int, x: Tensor,
              weights: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """The batched edge list and edge weights (explicit weighted self-loops when ``weights``
        is given), ``(2, B E)`` and ``(B E,)`` or ``None``."""
        if weights is not None:
            graph = graph.with_options(self_loops=True)
            edge_index, edge_type = graph.batched_edges(batch_size, x.device)
            return edge_index, weights.to(x.dtype)[edge_type]
        edge_index, _ = graph.batched_edges(batch_size, x.device)
        return edge_index, None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


_BACKENDS: Dict[str, Type[PropagationBackend]] = {}


def register_backend(cls: Type[PropagationBackend]) -> Type[PropagationBackend]:
    """Registers a :class:`PropagationBackend` subclass under its ``name`` (usable as a
    class decorator); returns the class."""
    if not (isinstance(cls, type) and issubclass(cls, PropagationBackend)) or not cls.name:
        raise TypeError(f"register_backend expects a PropagationBackend subclass with a name, got {cls!r}")
    if cls.name in _BACKENDS and _BACKENDS[cls.name] is not cls:
        raise ValueError(f"a propagation back-end named {cls.name!r} is already registered "
                         f"({_BACKENDS[cls.name].__qualname__})")
    _BACKENDS[cls.name] = cls
    return cls


def unregister_backend(name: str) -> None:
    """Removes a registered back-end (e.g. one a test registered)."""
    _BACKENDS.pop(name, None)


def backend_names() -> Tuple[str, ...]:
    """Names of the registered back-ends, in registration order."""
    return tuple(_BACKENDS)


def backend_class(name: str) -> Type[PropagationBackend]:
    """The registered back-end class called ``name``."""
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(_BACKENDS)} or None, got {name!r}")
    return _BACKENDS[name]


def get_backend(name: str) -> PropagationBackend:
    """A new instance of the back-end called ``name``."""
    return backend_class(name)()


def _weighted_adjacency(graph: SpatioTemporalGraph, batch_size: int, x: Tensor, weights: Tensor,
                        build: Callable[[Tensor, Tensor, Tuple[int, int]], object]):
    r"""Block-diagonal :math:`\hat{A}_w` of ``batch_size`` clips with values differentiable in
    ``weights``; ``build(edge_index, value, size)`` makes the sparse object."""
    graph = graph.with_options(self_loops=True)
    edge_index, edge_type = graph.batched_edges(batch_size, x.device)  # (2, B*E), (B*E,)
    value = weights.to(x.dtype)[edge_type]  # (B*E,)
    num_nodes = batch_size * graph.num_nodes
    degree = torch.zeros(num_nodes, dtype=x.dtype, device=x.device).index_add(0, edge_index[1], value)
    d_inv_sqrt = degree.rsqrt()
    value = d_inv_sqrt[edge_index[0]] * value * d_inv_sqrt[edge_index[1]]
    return build(edge_index, value, (num_nodes, num_nodes))


@register_backend
class EdgeIndexBackend(PropagationBackend):
    r"""PyG message passing over the batched edge list (the path of the authors' code):
    ``gcn_norm`` adds the self-loops and normalises, then PyG's APPNP propagates."""

    name = "edge_index"
    passes_messages = True

    def _normalised(self, x: Tensor, graph: SpatioTemporalGraph, weights: Optional[Tensor]):
        B, N, _ = x.shape
        edge_index, edge_weight = self.edges(graph, B, x, weights)
        return gcn_norm(edge_index, edge_weight, B * N, False, True, "source_to_target", dtype=x.dtype)

    def propagate(self, x, graph, weights=None):
        B, N, C = x.shape
        edge_index, edge_weight = self._normalised(x, graph, weights)
        flat = x.reshape(B * N, C)
        out = torch.zeros_like(flat).index_add_(0, edge_index[1], flat[edge_index[0]] * edge_weight[:, None])
        return out.view(B, N, C)

    def appnp(self, layer, x, graph, weights=None):
        B, N, C = x.shape
        edge_index, edge_weight = self._normalised(x, graph, weights)
        return layer(x.reshape(B * N, C), edge_index, edge_weight).view(B, N, C)


@register_backend
class CSRBackend(PropagationBackend):
    r"""PyG's layer on the batch's cached block-diagonal torch sparse CSR :math:`\hat{A}`
    (:meth:`SpatioTemporalGraph.adj_t`); with learned edge weights a COO matrix with
    differentiable values."""

    name = "csr"

    def adjacency(self, graph: SpatioTemporalGraph, batch_size: int, x: Tensor, weights: Optional[Tensor] = None):
        """:math:`\\hat{A}` (or :math:`\\hat{A}_w`) of ``batch_size`` clips, ``(B N, B N)``."""
        if weights is None:
            return graph.adj_t(batch_size, device=x.device, dtype=x.dtype)
        def coo(edge_index: Tensor, value: Tensor, size: Tuple[int, int]) -> Tensor:
            # (target, source) layout, so that adj @ x aggregates messages at the targets; the
            # indices come from the graph's template: valid, no invariant check
            return torch.sparse_coo_tensor(edge_index.flip(0), value, size, is_coalesced=False, check_invariants=False)

        return _weighted_adjacency(graph, batch_size, x, weights, coo)

    def propagate(self, x, graph, weights=None):
        B, N, C = x.shape
        adj = self.adjacency(graph, B, x, weights)
        flat = x.reshape(B * N, C)
        out = torch.sparse.mm(adj, flat) if adj.layout == torch.sparse_coo else adj @ flat
        return out.view(B, N, C)

    def appnp(self, layer, x, graph, weights=None):
        if weights is not None:  # torch.sparse.mm keeps the values differentiable
            return super().appnp(layer, x, graph, weights)
        B, N, C = x.shape
        return layer(x.reshape(B * N, C), self.adjacency(graph, B, x)).view(B, N, C)


@register_backend
class SparseTensorBackend(PropagationBackend):
    r"""PyG's layer on a torch-sparse ``SparseTensor`` :math:`\hat{A}` (needs the optional
    ``torch-sparse``), cached per (graph, batch size, device, dtype)."""

    name = "sparse_tensor"

    def __init__(self):
        require_torch_sparse("backend='sparse_tensor'")
        self.cache: Dict[Tuple, object] = {}

    def adjacency(self, graph: SpatioTemporalGraph, batch_size: int, x: Tensor, weights: Optional[Tensor] = None):
        torch_sparse = require_torch_sparse("backend='sparse_tensor'")
        if weights is not None:
            return _weighted_adjacency(graph, batch_size, x, weights, lambda edge_index, value, size: (
                torch_sparse.SparseTensor(row=edge_index[1], col=edge_index[0], value=value, sparse_sizes=size)))
        key = (graph, batch_size, x.device, x.dtype)
        if key not in self.cache:
            csr = graph.adj_t(batch_size, device=x.device, dtype=x.dtype)
            self.cache[key] = torch_sparse.SparseTensor(
                rowptr=csr.crow_indices(), col=csr.col_indices(), value=csr.values(),
                sparse_sizes=csr.shape, is_sorted=True, trust_data=True,
            )
        return self.cache[key]

    def propagate(self, x, graph, weights=None):
        B, N, C = x.shape
        return (self.adjacency(graph, B, x, weights) @ x.reshape(B * N, C)).view(B, N, C)

    def appnp(self, layer, x, graph, weights=None):
        B, N, C = x.shape
        return layer(x.reshape(B * N, C), self.adjacency(graph, B, x, weights)).view(B, N, C)


@register_backend
class StructuredBackend(PropagationBackend):
    r"""Frame sums and time shifts, :math:`O(N C)` per step
    (:func:`~taggnn.graph.structured_propagate`): exact for the paper's edge families only,
    IF-FC (``intra="full"``) or none and TAT (``temporal="aligned"``) or none."""

    name = "structured"
    needs_edges = False
    SPATIAL = ("full", "none")
    TEMPORAL = ("aligned", "none")

    def check_graph(self, graph):
        spatial = getattr(graph, "spatial", None) or getattr(graph, "intra", None)  # `intra`: the paper's name
        temporal = getattr(graph, "temporal", None)
        if spatial not in self.SPATIAL or temporal not in self.TEMPORAL or getattr(graph, "dynamic", None):
            raise ConfigError(
                f"backend 'structured' computes the paper's IF-FC (spatial 'full') and TAT (temporal 'aligned') "
                f"edges only, got spatial {spatial!r}, temporal {temporal!r}; use backend 'csr' or 'edge_index' "
                f"for other edge families")

    def propagate(self, x, graph, weights=None):
        if weights is not None:
            return weighted_propagate(x, graph, weights)
        return structured_propagate(x, graph)

    def appnp(self, layer, x, graph, weights=None):
        if weights is not None:
            return super().appnp(layer, x, graph, weights)
        return structured_appnp(x, graph, layer.K, layer.alpha)


__all__ = [
    "PropagationBackend",
    "EdgeIndexBackend",
    "CSRBackend",
    "SparseTensorBackend",
    "StructuredBackend",
    "register_backend",
    "unregister_backend",
    "backend_names",
    "backend_class",
    "get_backend",
]
