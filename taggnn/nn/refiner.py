r"""Graph refinement of token features on the TAG-Head grid graph: a graph, a propagation stage
(:mod:`taggnn.nn.propagation`), a back-end (:mod:`taggnn.nn.backends`) and optional learned
edge-type weights (:mod:`taggnn.nn.edge_weights`)."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple, Union

from torch import Tensor, nn
from torch_geometric.data import Batch

from ..errors import ConfigError
from ..graph import SpatioTemporalGraph
from ..utils.optional import require_torch_sparse
from .backends import PropagationBackend, backend_names, get_backend, recommended_backend
from .conv_stack import ACTIVATIONS, NUM_EDGE_TYPES, ConvStack, conv_arguments, pyg_conv_class, pyg_conv_names
from .edge_weights import EdgeTypeWeights, num_weighted_edge_types
from .propagation import MESSAGE_PASSING_BACKENDS, StageOptions, get_propagation, propagation_names

EDGE_WEIGHTS = ("fixed", "learned")

# Derived from the registries at import time (propagation_names(), backend_names() are the live
# lists; the configuration reads those).
PROPAGATIONS = propagation_names()
BACKENDS = backend_names()
SUPPORTED_BACKENDS: Dict[str, Tuple[str, ...]] = {name: get_propagation(name).backends for name in PROPAGATIONS}
CONV_BACKENDS = MESSAGE_PASSING_BACKENDS


def check_refiner_options(propagation: str, backend=None, edge_weights: str = "fixed", *,
                          key_prefix: str = "", graph: Optional[SpatioTemporalGraph] = None) -> str:
    """Validates (propagation, back-end, edge weights); returns the back-end to use (with
    ``backend=None`` and a ``graph``: :func:`~taggnn.nn.backends.recommended_backend`)."""
    try:
        entry = get_propagation(propagation)
    except ValueError as error:
        raise ValueError(f"{key_prefix}{error}") from None
    if backend is None:
        backend = entry.backends[0] if graph is None else recommended_backend(entry.backends, graph)
    if backend not in backend_names():
        raise ValueError(f"{key_prefix}backend must be one of {', '.join(backend_names())} or None, got {backend!r}")
    if backend not in entry.backends:
        raise ValueError(f"{key_prefix}propagation {propagation!r} supports backends {entry.backends}, got {backend!r}")
    if edge_weights not in EDGE_WEIGHTS:
        raise ValueError(f"{key_prefix}edge_weights must be one of {', '.join(EDGE_WEIGHTS)}, got {edge_weights!r}")
    if edge_weights == "learned" and not entry.learned_edge_weights:
        takes = [name for name in propagation_names() if get_propagation(name).learned_edge_weights]
        raise ValueError(f"{key_prefix}edge_weights='learned' needs propagation {' or '.join(map(repr, takes))} "
                         f"(normalised propagation with edge weights), got {propagation!r}")
    return backend


def default_backend(propagation: str) -> str:
    """The back-end used when ``backend=None``."""
    return check_refiner_options(propagation)


class GraphRefiner(nn.Module):
    r"""Refines token features by propagation over a :class:`SpatioTemporalGraph`.

    The refiner is a composition: the graph (:attr:`graph`, replaceable), a stage built by the
    registered propagation (:mod:`taggnn.nn.propagation`), the back-end that computes the
    graph products (:attr:`backend`, replaceable, :mod:`taggnn.nn.backends`), and, with
    ``edge_weights="learned"``, an :class:`~taggnn.nn.EdgeTypeWeights` module.

    With ``propagation="appnp"`` (the paper, Eq. 2) it computes :math:`K` steps
    of personalised-PageRank propagation with PyG's
    :class:`~torch_geometric.nn.conv.APPNP`, with no parameters
    (:class:`~taggnn.nn.APPNPPropagation`):

    .. math::
        H^{(0)} = X, \qquad H^{(k+1)} = (1 - \alpha)\, \hat{A} H^{(k)} +
        \alpha H^{(0)}, \qquad \hat{A} = D^{-1/2} (M + I) D^{-1/2}.

    ``"gcn"`` stacks ``num_layers`` :class:`~torch_geometric.nn.conv.GCNConv`
    layers (:math:`H \leftarrow \hat{A} H W + b`, ReLU between layers),
    ``"gat"`` stacks :class:`~torch_geometric.nn.conv.GATConv` layers
    (``heads`` heads of width :math:`C / \text{heads}`, concatenated, ELU
    between layers), ``"none"`` is the identity (the B+TE ablation row).
    Any other name of a ``torch_geometric.nn`` convolution (``"SAGEConv"``,
    ``"GraphConv"``, ``"GATv2Conv"``, ``"TransformerConv"``, ``"GINConv"``,
    ``"RGCNConv"``, ...) stacks ``num_layers`` of it with ``conv_kwargs``
    (:class:`~taggnn.nn.ConvStack`): relation-aware convolutions (a
    ``num_relations`` argument) receive the edge types (IF-FC = 0, TAT = 1),
    convolutions with an ``edge_dim`` argument receive one-hot edge types as
    ``edge_attr``, ``GINConv``-like ones (an ``nn`` argument) get a two-layer
    MLP, attention convolutions split :math:`C` over their ``heads``.
    ``activation`` (default ReLU) runs between layers and ``residual=True`` adds
    each layer's input to its output.

    ``edge_weights="learned"`` gives each edge type (IF-FC, TAT, self-loop; kNN
    and custom types when the graph has them) one learnable positive weight :math:`w = e^{\theta}` (initially 1) and
    normalises with the weighted degrees,
    :math:`\hat{A}_w = D_w^{-1/2} (W \odot \tilde{M}) D_w^{-1/2}`, as PyG's
    ``gcn_norm`` does with ``edge_weight``; it is the fixed graph at
    initialisation.

    The product :math:`\hat{A} H` can be computed by several exact back-ends:

    * ``"csr"`` (default): PyG's layer on the batch's cached block-diagonal
      torch sparse CSR adjacency (COO with differentiable values when the
      edge weights are learned);
    * ``"sparse_tensor"``: the same with a torch-sparse ``SparseTensor``
      (needs the optional ``torch-sparse``);
    * ``"edge_index"``: PyG message passing over the batched edge list, the
      path of the authors' code;
    * ``"structured"``: frame sums and time shifts,
      :math:`O(N C)` per step (:func:`~taggnn.graph.structured_propagate`),
      for the paper's IF-FC and TAT edge families only;
    * ``"stencil"``: shifted adds over the graph's offset set,
      :math:`O(N C |\mathcal{O}|)` per step (:mod:`taggnn.graph.stencil`), for
      every translation-invariant graph (no ``dynamic`` or ``custom`` family);
      the default for local families (``grid4``, ``grid8``, ``radius:r``
      with a temporal ``window:k``, ``cube:r``, ``aligned`` or none).

    With ``backend=None`` the paper's graph runs on ``"csr"``, local families on
    ``"stencil"``, and graphs with kNN edges (``dynamic="knn:k"``, rebuilt from
    the stage's input tokens at every forward) or one-way custom edges on
    ``"edge_index"`` (:func:`~taggnn.nn.backends.recommended_backend`); a
    back-end that cannot compute a graph's products refuses it with a
    :class:`~taggnn.errors.ConfigError`.

    All back-ends agree with PyG's :class:`~torch_geometric.nn.conv.APPNP` on
    the edge list to float32 rounding, in outputs and gradients.

    Args:
        graph (SpatioTemporalGraph): The graph of one clip.
        propagation (str, optional): A registered propagation
            (:func:`~taggnn.nn.propagation_names`: ``"appnp"``, ``"gcn"``,
            ``"gat"``, ``"none"``) or a ``torch_geometric.nn`` convolution name.
            (default: ``"appnp"``)
        K (int, optional): APPNP power-iteration steps. (default: ``2``, as
            in the authors' code; the paper does not state it)
        alpha (float, optional): APPNP teleport probability in
            :math:`(0, 1]`. (default: ``0.1``)
        backend (str, optional): See above. (default: :obj:`None`, the first
            supported one)
        channels (int, optional): Feature width :math:`C`; required for
            convolution stacks.
        num_layers (int, optional): Depth of convolution stacks. (default: ``2``)
        heads (int, optional): GAT heads. (default: ``8``)
        dropout (float, optional): GAT attention dropout. (default: ``0.0``)
        edge_weights (str, optional): ``"fixed"`` (paper) or ``"learned"``.
        activation (str, optional): Between the layers of a convolution
            stack other than GCN/GAT: ``"relu"``, ``"elu"``, ``"gelu"``,
            ``"none"``. (default: ``"relu"``)
        residual (bool, optional): Residual connection around each layer of a
            convolution stack. (default: :obj:`False`)
        conv_kwargs (dict, optional): Extra arguments of the convolution class.

    **Shapes:**
        - **input:** :math:`(B, N, C)` with :math:`N = T H W`, or a
          :class:`~torch_geometric.data.Batch` with ``x`` of shape
          :math:`(B N, C)` (from :meth:`SpatioTemporalGraph.batch`)
        - **output:** the same shape as the input features
    """

    def __init__(
        self,
        graph: SpatioTemporalGraph,
        *,
        propagation: str = "appnp",
        K: int = 2,
        alpha: float = 0.1,
        backend: Optional[str] = None,
        channels: Optional[int] = None,
        num_layers: int = 2,
        heads: int = 8,
        dropout: float = 0.0,
        edge_weights: str = "fixed",
        activation: str = "relu",
        residual: bool = False,
        conv_kwargs: Optional[Mapping[str, Any]] = None,
    ):
        super().__init__()
        if not isinstance(graph, SpatioTemporalGraph):
            raise TypeError(f"graph must be a SpatioTemporalGraph, got {type(graph).__name__}")
        backend = check_refiner_options(propagation, backend, edge_weights, graph=graph)
        if backend == "sparse_tensor":
            require_torch_sparse("backend='sparse_tensor'")
        if isinstance(K, bool) or not isinstance(K, int) or K < 0:
            raise ValueError(f"K must be an integer >= 0, got {K!r}")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")

        self.propagation = propagation
        self.K = K
        self.alpha = float(alpha)
        self.channels = channels
        self.heads = heads
        self.edge_weights = edge_weights
        self.activation = activation
        self.residual = bool(residual)
        self.conv_kwargs = dict(conv_kwargs or {})
        self._backend: PropagationBackend = get_backend(backend)
        self._graph = graph
        self._backend.check_graph(graph)

        options = StageOptions(K=K, alpha=self.alpha, channels=channels, num_layers=num_layers, heads=heads,
                               dropout=dropout, activation=activation, residual=self.residual,
                               conv_kwargs=self.conv_kwargs, graph=graph)
        stage = get_propagation(propagation).build(options)
        if graph.edge_attr_kinds and stage is not None and not (isinstance(stage, ConvStack)
                                                                and "edge_attr" in stage.inputs):
            raise ConfigError(
                f"the graph has edge_attr {'+'.join(graph.edge_attr_kinds)!r}, which only a convolution with an "
                f"edge_dim argument reads (e.g. TransformerConv, GINEConv, GATv2Conv), but propagation "
                f"{propagation!r} takes no edge features; choose such a convolution or drop the edge_attr")
        # A convolution stack is registered as `convs` (state_dict keys `convs.<i>.*`), any
        # other stage as `operator`; `self.stage` names either.
        self._stage_name = "convs" if isinstance(stage, ConvStack) else "operator"
        if stage is not None:
            self.add_module(self._stage_name, stage)
        self.num_layers = len(stage) if isinstance(stage, ConvStack) else 0
        self.type_weights = EdgeTypeWeights(num_weighted_edge_types(graph)) if edge_weights == "learned" else None

    # ------------------------------------------------------------ parts
    @property
    def stage(self) -> Optional[nn.Module]:
        """The propagation stage (``None`` for ``"none"``, the identity)."""
        return self._modules.get(self._stage_name)

    @property
    def appnp(self) -> nn.Module:
        """PyG's :class:`~torch_geometric.nn.conv.APPNP` layer of an ``"appnp"`` refiner."""
        stage = self.stage
        if stage is None or not hasattr(stage, "appnp"):
            raise AttributeError(f"a {self.propagation!r} refiner has no APPNP layer")
        return stage.appnp

    @property
    def graph(self) -> SpatioTemporalGraph:
        """The graph of one clip; assigning another checks that the back-end supports it.
        Nothing else depends on it: back-ends key their caches by graph."""
        return self._graph

    @graph.setter
    def graph(self, graph: SpatioTemporalGraph) -> None:
        self._backend.check_graph(graph)
        if self.type_weights is not None and num_weighted_edge_types(graph) != self.type_weights.log_weight.numel():
            raise ConfigError(f"the learned edge weights cover {self.type_weights.log_weight.numel()} edge types, "
                              f"the new graph has {num_weighted_edge_types(graph)}; build a new refiner")
        self._graph = graph

    @property
    def backend(self) -> str:
        """The back-end's name; assigning another name (one the propagation supports) switches
        to it, e.g. ``"structured"`` for export (same function)."""
        return self._backend.name

    @backend.setter
    def backend(self, name: str) -> None:
        check_refiner_options(self.propagation, name, self.edge_weights)
        if name != self._backend.name:
            backend = get_backend(name)
            backend.check_graph(self._graph)
            self._backend = backend

    @property
    def propagation_backend(self) -> PropagationBackend:
        """The back-end object (:class:`~taggnn.nn.PropagationBackend`)."""
        return self._backend

    @property
    def edge_log_weight(self) -> Tensor:
        """The learned log-weights by edge type, ``(3,)`` for (IF-FC, TAT, self-loop) edges (more
        with kNN or custom edges, see :func:`~taggnn.nn.edge_weights.num_weighted_edge_types`; a
        parameter of :attr:`type_weights`)."""
        if self.type_weights is None:
            raise AttributeError("edge_log_weight exists with edge_weights='learned' only")
        return self.type_weights.log_weight

    def edge_type_weights(self) -> Optional[Tensor]:
        """The learned weights by edge type (``(3,)``: IF-FC, TAT, self-loop, more with kNN or custom
        edges); None when fixed."""
        return self.type_weights() if self.type_weights is not None else None

    def reset_parameters(self) -> None:
        stage = self.stage
        if stage is not None and hasattr(stage, "reset_parameters"):
            stage.reset_parameters()
        if self.type_weights is not None:
            self.type_weights.reset_parameters()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the edge weights became a module store them as `edge_log_weight`.
        old, new = prefix + "edge_log_weight", prefix + "type_weights.log_weight"
        if old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----------------------------------------------------------- products
    def adjacency(self, B: int, x: Tensor):
        """:math:`\\hat{A}` (or :math:`\\hat{A}_w`) of a batch of ``B`` clips for the ``csr`` /
        ``sparse_tensor`` back-ends: block-diagonal, ``(B N, B N)``."""
        if not hasattr(self._backend, "adjacency"):
            raise ValueError(f"backend {self.backend!r} builds no adjacency; use 'csr' or 'sparse_tensor'")
        return self._backend.adjacency(self._graph, B, x, self.edge_type_weights())

    def _check_input(self, x: Tensor) -> None:
        self._graph.check_node_features(x)
        if self.channels is not None and x.size(2) != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.size(2)} (shape {tuple(x.shape)})")

    # ------------------------------------------------------------- forward
    def forward(self, x: Union[Tensor, Batch]) -> Tensor:
        if not isinstance(x, Tensor):  # a PyG Batch (or NodeBatch) of B clips of this graph: x is (B*N, C)
            N = self._graph.num_nodes
            B = x.num_graphs
            return self._refine(x.x.view(B, N, -1)).reshape(B * N, -1)
        return self._refine(x)

    def _refine(self, x: Tensor) -> Tensor:
        self._check_input(x)
        stage = self.stage
        if stage is None:
            return x
        return stage(x, self._graph, self._backend, self.edge_type_weights())

    def layer_outputs(self, x: Tensor):
        """An iterator over the output of each layer of a convolution stack, ``(B, N, C)``,
        before the activation that feeds the next layer (the last one is :meth:`forward`'s
        result); for analysis of deep stacks (e.g. oversmoothing) without running every depth
        separately.

        Bad input raises here, when called, not at the first ``next()``.
        """
        if self.num_layers == 0:
            raise ValueError(f"layer_outputs needs a convolution stack, this refiner is {self.propagation!r}")
        self._check_input(x)
        return self.convs.layer_outputs(x, self._graph, self._backend, self.edge_type_weights())

    @property
    def is_parameter_free(self) -> bool:
        """Whether the graph stage has no parameters (learned edge weights are parameters)."""
        return next(self.parameters(), None) is None

    @property
    def is_linear_map(self) -> bool:
        """Whether, for the current parameters, the refined features are a linear map of the
        input tokens: APPNP or none, with fixed or learned edge weights, on a graph without kNN
        edges."""
        stage = self.stage
        # kNN edges are rebuilt from the input: the map depends on it
        return stage is None or (bool(getattr(stage, "is_linear", False)) and self._graph.dynamic is None)

    @property
    def is_linear(self) -> bool:
        """Whether the refined features are a fixed linear map of the input tokens: a
        parameter-free linear stage (APPNP or none with the fixed graph; learned edge weights
        are parameters)."""
        return self.is_linear_map and self.is_parameter_free

    def extra_repr(self) -> str:
        parts = [f"propagation={self.propagation!r}", f"backend={self.backend!r}"]
        if self.propagation == "appnp":
            parts += [f"K={self.K}", f"alpha={self.alpha}"]
        elif self.num_layers:
            parts += [f"num_layers={self.num_layers}", f"channels={self.channels}"]
            if self.propagation not in ("gcn", "gat"):
                parts += [f"activation={self.activation!r}", f"residual={self.residual}"]
        if self.edge_weights != "fixed":
            parts.append(f"edge_weights={self.edge_weights!r}")
        parts.append(f"grid={self._graph.grid}")
        return ", ".join(parts)


__all__ = [
    "GraphRefiner",
    "PROPAGATIONS",
    "BACKENDS",
    "SUPPORTED_BACKENDS",
    "CONV_BACKENDS",
    "EDGE_WEIGHTS",
    "ACTIVATIONS",
    "NUM_EDGE_TYPES",
    "check_refiner_options",
    "default_backend",
    "pyg_conv_class",
    "pyg_conv_names",
    "conv_arguments",
]
