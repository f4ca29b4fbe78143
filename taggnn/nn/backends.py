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
from ..graph import SpatioTemporalGraph, stencil_appnp, stencil_propagate, structured_appnp, structured_propagate
from ..graph.sparse import sparse_mm
from ..graph.stencil import check_offsets
from ..graph.structured import weighted_propagate
from ..utils.optional import require_torch_sparse


class PropagationBackend:
    r"""How :math:`\hat{A} X` is computed for the node features of a batch of clips.

    Subclasses set :attr:`name` and implement :meth:`propagate`; they may override
    :meth:`appnp` (default: :math:`K` steps of :meth:`propagate`), :meth:`check_graph`
    (default: every graph) and :meth:`edges` (default: the batch's edge list, for
    convolution stacks that pass messages over edges).

    ``weights`` is ``None`` for the graph's unit weights, or a tensor of positive weights
    indexed by edge type (``(3,)``: spatial, temporal, self-loop; one more per kNN or custom
    type when the graph has them), see :class:`~taggnn.nn.EdgeTypeWeights`.

    A graph with a ``dynamic`` (kNN) family gets its kNN edges from the features the stage
    receives (the tokens), once per forward: :meth:`edges` appends them to the static ones.

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
        edge_index, edge_type = batched_typed_edges(graph, batch_size, x, self_loops=weights is not None)
        return edge_index, None if weights is None else weights.to(x.dtype)[edge_type]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def batched_typed_edges(graph: SpatioTemporalGraph, batch_size: int, x: Tensor, *,
                        self_loops: bool = False) -> Tuple[Tensor, Tensor]:
    """``edge_index`` ``(2, E_b)`` and ``edge_type`` ``(E_b,)`` of ``batch_size`` clips: the static
    edges of the cached template, then (for a graph with a ``dynamic`` family) the kNN edges of
    ``x`` ``(B, N, C)``, built now. ``self_loops=True`` lists every self-loop (type 2)."""
    if self_loops and not graph.self_loops:
        graph = graph.with_options(self_loops=True)
    edge_index, edge_type = graph.batched_edges(batch_size, x.device)
    if graph.dynamic is not None:
        dynamic_index, dynamic_type = graph.dynamic_edges(x)
        edge_index = torch.cat([edge_index, dynamic_index], dim=1)
        edge_type = torch.cat([edge_type, dynamic_type])
    return edge_index, edge_type


def is_translation_invariant(graph: SpatioTemporalGraph) -> bool:
    """Whether :meth:`SpatioTemporalGraph.offsets` is not ``None`` (no ``dynamic`` or ``custom``
    family), decided from the families alone (no tensor is built: safe on the ``meta`` device)."""
    return (hasattr(graph, "offsets") and getattr(graph, "dynamic", None) is None
            and getattr(graph, "custom", None) is None)


def is_symmetric(graph: SpatioTemporalGraph) -> bool:
    """Whether the static edge list of one clip holds every edge in both directions (as often)."""
    edge_index = graph.edge_index_on("cpu")
    N = graph.num_nodes
    forward = torch.sort(edge_index[0] * N + edge_index[1]).values
    backward = torch.sort(edge_index[1] * N + edge_index[0]).values
    return bool(torch.equal(forward, backward))


def _check_adjacency_graph(name: str, graph: SpatioTemporalGraph) -> None:
    """Back-ends that cache one symmetric adjacency per graph: no kNN edges, no one-way edges."""
    if getattr(graph, "dynamic", None) is not None:
        raise ConfigError(f"backend {name!r} caches one adjacency per graph, but the {graph.dynamic} edges change "
                          f"with the features at every forward; use backend 'edge_index'")
    if getattr(graph, "custom", None) is not None and not is_symmetric(graph):
        raise ConfigError(f"backend {name!r} needs a symmetric graph (its backward pass reuses the adjacency), but "
                          f"the custom family lists edges without their reverse; use backend 'edge_index'")


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

    def check_graph(self, graph):
        _check_adjacency_graph(self.name, graph)

    def adjacency(self, graph: SpatioTemporalGraph, batch_size: int, x: Tensor, weights: Optional[Tensor] = None):
        """:math:`\\hat{A}` (or :math:`\\hat{A}_w`) of ``batch_size`` clips, ``(B N, B N)``."""
        if weights is None:  # low-precision x: a float32 matrix (sparse products need one, see sparse_mm)
            dtype = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
            return graph.adj_t(batch_size, device=x.device, dtype=dtype)
        def coo(edge_index: Tensor, value: Tensor, size: Tuple[int, int]) -> Tensor:
            # (target, source) layout, so that adj @ x aggregates messages at the targets; the
            # indices come from the graph's template: valid, no invariant check
            return torch.sparse_coo_tensor(edge_index.flip(0), value, size, is_coalesced=False, check_invariants=False)

        return _weighted_adjacency(graph, batch_size, x, weights, coo)

    def propagate(self, x, graph, weights=None):
        B, N, C = x.shape
        adj = self.adjacency(graph, B, x, weights)
        flat = x.reshape(B * N, C)
        out = sparse_mm(adj, flat)
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

    def check_graph(self, graph):
        _check_adjacency_graph(self.name, graph)

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
        if (spatial not in self.SPATIAL or temporal not in self.TEMPORAL or getattr(graph, "dynamic", None)
                or getattr(graph, "custom", None) is not None):
            raise ConfigError(
                f"backend 'structured' computes the paper's IF-FC (spatial 'full') and TAT (temporal 'aligned') "
                f"edges only, got spatial {spatial!r}, temporal {temporal!r}"
                + (f", dynamic {graph.dynamic!r}" if getattr(graph, "dynamic", None) else "")
                + (", a custom family" if getattr(graph, "custom", None) is not None else "")
                + "; use backend 'stencil' (local families), 'csr' or 'edge_index' for other edge families")

    def propagate(self, x, graph, weights=None):
        if weights is not None:
            return weighted_propagate(x, graph, weights)
        return structured_propagate(x, graph)

    def appnp(self, layer, x, graph, weights=None):
        if weights is not None:
            return super().appnp(layer, x, graph, weights)
        return structured_appnp(x, graph, layer.K, layer.alpha)


@register_backend
class StencilBackend(PropagationBackend):
    r"""Shifted adds (or one depthwise ``conv3d``) over the graph's offset set,
    :math:`O(N C |\mathcal{O}|)` per step and no edge list (:mod:`taggnn.graph.stencil`): exact
    for every translation-invariant graph (:meth:`SpatioTemporalGraph.offsets` is not ``None``:
    no ``dynamic`` or ``custom`` family), the fastest exact choice for local families
    (``grid4``, ``grid8``, ``radius:r``, ``window:k``, ``cube:r``)."""

    name = "stencil"
    needs_edges = False

    def __init__(self):
        self._offsets: Dict[SpatioTemporalGraph, Tuple] = {}

    def check_graph(self, graph):
        if not is_translation_invariant(graph):
            raise ConfigError(
                "backend 'stencil' needs a translation-invariant graph (an offset set), but this one has "
                + (f"{graph.dynamic} edges" if getattr(graph, "dynamic", None) else "a custom family")
                + "; use backend 'edge_index'" + ("" if getattr(graph, "dynamic", None) else " or 'csr'"))

    def offsets(self, graph: SpatioTemporalGraph) -> Tuple:
        """The graph's offset set as :func:`~taggnn.graph.stencil.check_offsets` gives it (cached)."""
        if graph not in self._offsets:
            self.check_graph(graph)
            self._offsets[graph] = check_offsets(graph.offsets())
        return self._offsets[graph]

    @staticmethod
    def _type_weights(weights: Optional[Tensor]) -> Optional[Tensor]:
        return None if weights is None else weights[:3]  # (spatial, temporal, self-loop)

    def propagate(self, x, graph, weights=None):
        return stencil_propagate(x, graph.grid, self.offsets(graph), weights=self._type_weights(weights))

    def appnp(self, layer, x, graph, weights=None):
        return stencil_appnp(x, graph.grid, self.offsets(graph), layer.K, layer.alpha,
                             weights=self._type_weights(weights))


def recommended_backend(propagation_backends: Tuple[str, ...], graph: SpatioTemporalGraph) -> str:
    """The back-end to use for ``graph`` when none is chosen, among ``propagation_backends`` (a
    propagation's back-ends, its default first): the default for the paper's graph, ``"stencil"``
    for other translation-invariant graphs, else the first back-end that accepts the graph."""
    paper = graph.spatial in ("full", "none") and graph.temporal in ("aligned", "none")
    local = is_translation_invariant(graph) and not paper and "full" not in (graph.spatial, graph.temporal)
    if local and "stencil" in propagation_backends:
        return "stencil"
    for name in propagation_backends:
        try:
            if name == "sparse_tensor":  # its constructor needs torch-sparse; the check does not
                _check_adjacency_graph(name, graph)
            else:
                get_backend(name).check_graph(graph)
        except ConfigError:
            continue
        return name
    return propagation_backends[0]  # none accepts it: the refiner's check says why


__all__ = [
    "PropagationBackend",
    "StencilBackend",
    "batched_typed_edges",
    "recommended_backend",
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
