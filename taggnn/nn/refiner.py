r"""Graph refinement of token features on the TAG-Head grid graph."""
from __future__ import annotations

import inspect
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.nn import GATConv, GCNConv
from torch_geometric.nn.conv import MessagePassing

from ..errors import ConfigError
from ..graph import SpatioTemporalGraph, structured_appnp, structured_propagate
from ..graph.sparse import SymmetricAPPNP
from ..graph.structured import weighted_propagate
from ..utils.optional import require_torch_sparse

PROPAGATIONS = ("appnp", "gcn", "gat", "none")
BACKENDS = ("edge_index", "csr", "sparse_tensor", "structured")
EDGE_WEIGHTS = ("fixed", "learned")
ACTIVATIONS = {"relu": F.relu, "elu": F.elu, "gelu": F.gelu, "none": lambda x: x}
NUM_EDGE_TYPES = 2  # IF-FC, TAT (self-loops are added by the convolutions themselves)

# Which back-ends each propagation supports, the first being the default. The default runs
# PyG's own APPNP / GCNConv propagation on the batch's cached sparse adjacency ("csr");
# "structured" is the exact O(N*C) opt-in (fastest for deep K and large grids, see
# benchmarks/propagation.py). GATConv and other convolutions run on edge_index.
SUPPORTED_BACKENDS: Dict[str, Tuple[str, ...]] = {
    "appnp": ("csr", "structured", "sparse_tensor", "edge_index"),
    "gcn": ("csr", "structured", "sparse_tensor", "edge_index"),
    "gat": ("edge_index",),
    "none": BACKENDS,
}
CONV_BACKENDS = ("edge_index",)


def pyg_conv_class(name: str):
    """The ``torch_geometric.nn`` message-passing class called ``name``, or None."""
    import torch_geometric.nn as pyg_nn

    cls = getattr(pyg_nn, name, None)
    if inspect.isclass(cls) and issubclass(cls, MessagePassing) and cls is not MessagePassing:
        return cls
    return None


def conv_arguments(cls) -> Tuple[str, ...]:
    """The keyword arguments a ``torch_geometric.nn`` convolution class takes: those of its
    own ``__init__`` and, where it passes ``**kwargs`` on, those of its base classes up to
    :class:`~torch_geometric.nn.conv.MessagePassing` (``aggr``, ``flow``, ...)."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = []
    for base in cls.__mro__:
        if "__init__" not in vars(base):
            continue
        parameters = inspect.signature(base.__init__).parameters
        names += [name for name, p in parameters.items() if name != "self" and p.kind in named and name not in names]
        passes_on = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        if base is MessagePassing or not passes_on:
            break
    return tuple(names)


def pyg_conv_names() -> Tuple[str, ...]:
    """Names of the message-passing convolutions of ``torch_geometric.nn`` (for messages)."""
    import torch_geometric.nn as pyg_nn

    return tuple(sorted(name for name in dir(pyg_nn) if name.endswith("Conv") and pyg_conv_class(name)))


def check_refiner_options(propagation: str, backend=None, edge_weights: str = "fixed", *,
                          key_prefix: str = "") -> str:
    """Validates (propagation, back-end, edge weights); returns the back-end to use."""
    is_conv = propagation not in PROPAGATIONS and pyg_conv_class(propagation) is not None
    if propagation not in PROPAGATIONS and not is_conv:
        raise ValueError(f"{key_prefix}propagation must be one of {', '.join(PROPAGATIONS)} or the name of a "
                         f"torch_geometric.nn convolution ({', '.join(pyg_conv_names())}), got {propagation!r}")
    supported = CONV_BACKENDS if is_conv else SUPPORTED_BACKENDS[propagation]
    if backend is None:
        backend = supported[0]
    if backend not in BACKENDS:
        raise ValueError(f"{key_prefix}backend must be one of {', '.join(BACKENDS)} or None, got {backend!r}")
    if backend not in supported:
        raise ValueError(f"{key_prefix}propagation {propagation!r} supports backends {supported}, got {backend!r}")
    if edge_weights not in EDGE_WEIGHTS:
        raise ValueError(f"{key_prefix}edge_weights must be one of {', '.join(EDGE_WEIGHTS)}, got {edge_weights!r}")
    if edge_weights == "learned" and propagation not in ("appnp", "gcn"):
        raise ValueError(f"{key_prefix}edge_weights='learned' needs propagation 'appnp' or 'gcn' (normalised "
                         f"propagation with edge weights), got {propagation!r}")
    return backend


def default_backend(propagation: str) -> str:
    """The back-end used when ``backend=None``."""
    return check_refiner_options(propagation)


class GraphRefiner(nn.Module):
    r"""Refines token features by propagation over a :class:`SpatioTemporalGraph`.

    With ``propagation="appnp"`` (the paper, Eq. 2) it computes :math:`K` steps
    of personalised-PageRank propagation with PyG's
    :class:`~torch_geometric.nn.conv.APPNP`, with no parameters:

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
    ``"RGCNConv"``, ...) stacks ``num_layers`` of it with ``conv_kwargs``:
    relation-aware convolutions (a ``num_relations`` argument) receive the edge
    types (IF-FC = 0, TAT = 1), convolutions with an ``edge_dim`` argument
    receive one-hot edge types as ``edge_attr``, ``GINConv``-like ones (an
    ``nn`` argument) get a two-layer MLP, attention convolutions split
    :math:`C` over their ``heads``. ``activation`` (default ReLU) runs between
    layers and ``residual=True`` adds each layer's input to its output.

    ``edge_weights="learned"`` gives each edge type (IF-FC, TAT, self-loop) one
    learnable positive weight :math:`w = e^{\theta}` (initially 1) and
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
      :math:`O(N C)` per step (:func:`~taggnn.graph.structured_propagate`).

    All back-ends agree with PyG's :class:`~torch_geometric.nn.conv.APPNP` on
    the edge list to float32 rounding, in outputs and gradients.

    Args:
        graph (SpatioTemporalGraph): The graph of one clip.
        propagation (str, optional): ``"appnp"``, ``"gcn"``, ``"gat"``,
            ``"none"`` or a ``torch_geometric.nn`` convolution name.
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
        backend = check_refiner_options(propagation, backend, edge_weights)
        if backend == "sparse_tensor":
            require_torch_sparse("backend='sparse_tensor'")
        if isinstance(K, bool) or not isinstance(K, int) or K < 0:
            raise ValueError(f"K must be an integer >= 0, got {K!r}")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        is_stack = propagation not in ("appnp", "none")
        if is_stack:
            if channels is None or channels < 1:
                raise ValueError(f"propagation {propagation!r} needs channels >= 1, got {channels!r}")
            if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
                raise ValueError(f"num_layers must be an integer >= 1, got {num_layers!r}")
        if propagation == "gat" and channels % heads != 0:
            raise ValueError(
                f"GAT concatenates {heads} heads of width channels/heads: channels "
                f"({channels}) must be divisible by heads ({heads})"
            )

        self.graph = graph
        self.propagation = propagation
        self.backend = backend
        self.K = K
        self.alpha = float(alpha)
        self.channels = channels
        self.num_layers = num_layers if is_stack else 0
        self.heads = heads
        self.edge_weights = edge_weights
        self.activation = activation
        self.residual = bool(residual)
        self.conv_kwargs = dict(conv_kwargs or {})
        self._sparse_tensors: Dict[Tuple, object] = {}
        self._conv_inputs: Tuple[str, ...] = ()

        if edge_weights == "learned":
            # log-weights of (IF-FC, TAT, self-loop) edges; 0 = the paper's unit weights
            self.edge_log_weight = nn.Parameter(torch.zeros(3))
        if propagation == "appnp":
            # Parameter-free; normalisation by PyG for edge_index, precomputed (or recomputed from
            # the learned weights) in the adjacency for csr / sparse_tensor.
            # SymmetricAPPNP: PyG's APPNP whose backward reuses the cached symmetric CSR
            # adjacency instead of sorting its transpose every step (edge_index: PyG's path).
            self.appnp = SymmetricAPPNP(K, self.alpha, normalize=backend == "edge_index")
        elif propagation == "gcn":
            self.convs = nn.ModuleList(GCNConv(channels, channels) for _ in range(num_layers))
        elif propagation == "gat":
            self.convs = nn.ModuleList(
                GATConv(channels, channels // heads, heads=heads, dropout=dropout)
                for _ in range(num_layers)
            )
        elif is_stack:
            self.convs = nn.ModuleList(self._make_conv(propagation, channels) for _ in range(num_layers))

    # ------------------------------------------------------------ convolutions
    def _make_conv(self, name: str, channels: int) -> nn.Module:
        cls = pyg_conv_class(name)
        parameters = inspect.signature(cls.__init__).parameters
        kwargs: Dict[str, Any] = {}
        heads = self.conv_kwargs.get("heads", parameters["heads"].default if "heads" in parameters else 1)
        concat = self.conv_kwargs.get("concat", parameters["concat"].default if "concat" in parameters else True)
        if "in_channels" in parameters:
            kwargs["in_channels"] = channels
        if "out_channels" in parameters:
            split = isinstance(heads, int) and heads > 1 and concat is True
            if split and channels % heads:
                raise ValueError(f"{name} concatenates {heads} heads: channels ({channels}) must be divisible by heads")
            kwargs["out_channels"] = channels // heads if split else channels
        if "channels" in parameters and "in_channels" not in parameters:
            kwargs["channels"] = channels
        if "nn" in parameters:  # GINConv, GINEConv, EdgeConv-like: an MLP of the node features
            width = 2 * channels if name == "EdgeConv" else channels
            kwargs["nn"] = nn.Sequential(nn.Linear(width, channels), nn.ReLU(), nn.Linear(channels, channels))
        if "num_relations" in parameters:
            kwargs["num_relations"] = NUM_EDGE_TYPES
        if "edge_dim" in parameters:
            kwargs["edge_dim"] = NUM_EDGE_TYPES
        kwargs.update(self.conv_kwargs)
        try:
            conv = cls(**kwargs)
        except (TypeError, ValueError) as error:  # an argument it does not take, or a value it refuses
            raise ConfigError(f"{name}({', '.join(f'{k}=...' for k in kwargs)}) failed: {error}; "
                              f"graph_kwargs {dict(self.conv_kwargs)!r}; its arguments: "
                              f"{', '.join(conv_arguments(cls))}") from None
        forward = inspect.signature(conv.forward).parameters
        inputs = []
        if "edge_type" in forward and "num_relations" in parameters:
            inputs.append("edge_type")
        elif "edge_attr" in forward and kwargs.get("edge_dim") is not None:
            inputs.append("edge_attr")
        self._conv_inputs = tuple(inputs)
        return conv

    def reset_parameters(self) -> None:
        for conv in getattr(self, "convs", []):
            conv.reset_parameters()
        if self.edge_weights == "learned":
            nn.init.zeros_(self.edge_log_weight)

    # ----------------------------------------------------------- adjacency
    def edge_type_weights(self) -> Optional[Tensor]:
        """The learned weights of (IF-FC, TAT, self-loop) edges, ``(3,)``; None when fixed."""
        return self.edge_log_weight.exp() if self.edge_weights == "learned" else None

    def _learned_adjacency(self, B: int, x: Tensor, kind: str):
        """Block-diagonal :math:`\\hat{A}_w` of ``B`` clips with differentiable values."""
        graph = self.graph.with_options(self_loops=True)
        edge_index, edge_type = graph.batched_edges(B, x.device)  # (2, B*E), (B*E,)
        weights = self.edge_type_weights().to(x.dtype)
        value = weights[edge_type]  # (B*E,)
        degree = torch.zeros(B * graph.num_nodes, dtype=x.dtype, device=x.device).index_add(0, edge_index[1], value)
        d_inv_sqrt = degree.rsqrt()
        value = d_inv_sqrt[edge_index[0]] * value * d_inv_sqrt[edge_index[1]]
        size = (B * graph.num_nodes, B * graph.num_nodes)
        if kind == "sparse_tensor":
            torch_sparse = require_torch_sparse("backend='sparse_tensor'")
            return torch_sparse.SparseTensor(row=edge_index[1], col=edge_index[0], value=value, sparse_sizes=size)
        # (target, source) layout, so that adj @ x aggregates messages at the targets
        return torch.sparse_coo_tensor(edge_index.flip(0), value, size, is_coalesced=False,
                                       check_invariants=False)  # indices built by the template: valid

    def _sparse_tensor(self, B: int, device: torch.device, dtype: torch.dtype):
        key = (B, device, dtype)
        if key not in self._sparse_tensors:
            torch_sparse = require_torch_sparse("backend='sparse_tensor'")
            csr = self.graph.adj_t(B, device=device, dtype=dtype)
            self._sparse_tensors[key] = torch_sparse.SparseTensor(
                rowptr=csr.crow_indices(), col=csr.col_indices(), value=csr.values(),
                sparse_sizes=csr.shape, is_sorted=True, trust_data=True,
            )
        return self._sparse_tensors[key]

    def adjacency(self, B: int, x: Tensor):
        """:math:`\\hat{A}` (or :math:`\\hat{A}_w`) of a batch of ``B`` clips for the ``csr`` /
        ``sparse_tensor`` back-ends: block-diagonal, ``(B N, B N)``."""
        if self.edge_weights == "learned":
            return self._learned_adjacency(B, x, self.backend)
        if self.backend == "csr":
            return self.graph.adj_t(B, device=x.device, dtype=x.dtype)
        return self._sparse_tensor(B, x.device, x.dtype)

    def _matmul(self, adj, x: Tensor) -> Tensor:
        if isinstance(adj, Tensor) and adj.layout == torch.sparse_coo:
            return torch.sparse.mm(adj, x)
        return adj @ x

    def _propagate(self, x: Tensor) -> Tensor:
        """:math:`\\hat{A} X` for ``(B, N, C)`` features with the selected back-end."""
        B, N, C = x.shape
        if self.backend == "structured":
            if self.edge_weights == "learned":
                return weighted_propagate(x, self.graph, self.edge_type_weights())
            return structured_propagate(x, self.graph)
        if self.backend == "edge_index":
            edge_index, edge_weight = self._edge_index(B, x)
            from torch_geometric.nn.conv.gcn_conv import gcn_norm

            edge_index, edge_weight = gcn_norm(edge_index, edge_weight, B * N, add_self_loops=True, dtype=x.dtype)
            out = torch.zeros_like(x.reshape(B * N, C)).index_add_(
                0, edge_index[1], x.reshape(B * N, C)[edge_index[0]] * edge_weight[:, None])
            return out.view(B, N, C)
        return self._matmul(self.adjacency(B, x), x.reshape(B * N, C)).view(B, N, C)

    def _edge_index(self, B: int, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Batched edges (with explicit weighted self-loops when the weights are learned)."""
        if self.edge_weights == "learned":
            graph = self.graph.with_options(self_loops=True)
            edge_index, edge_type = graph.batched_edges(B, x.device)
            return edge_index, self.edge_type_weights().to(x.dtype)[edge_type]
        edge_index, _ = self.graph.batched_edges(B, x.device)
        return edge_index, None

    def _check_input(self, x: Tensor) -> None:
        self.graph.check_node_features(x)
        if self.channels is not None and x.size(2) != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.size(2)} (shape {tuple(x.shape)})")

    # ------------------------------------------------------------- forward
    def forward(self, x: Union[Tensor, Batch]) -> Tensor:
        if not isinstance(x, Tensor):  # a PyG Batch (or NodeBatch) of B clips of this graph: x is (B*N, C)
            N = self.graph.num_nodes
            B = x.num_graphs
            return self._refine(x.x.view(B, N, -1)).reshape(B * N, -1)
        return self._refine(x)

    def _refine(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if self.propagation == "none":
            return x
        B, N, C = x.shape
        if self.propagation == "appnp":
            if self.backend == "structured":
                if self.edge_weights == "learned":
                    return self._appnp_iterations(x)
                return structured_appnp(x, self.graph, self.K, self.alpha)
            flat = x.reshape(B * N, C)  # the Batch's x
            if self.backend == "edge_index":
                edge_index, edge_weight = self._edge_index(B, x)
                return self.appnp(flat, edge_index, edge_weight).view(B, N, C)
            adj = self.adjacency(B, x)
            if self.edge_weights == "learned" and self.backend == "csr":
                return self._appnp_iterations(x, adj)  # torch.sparse.mm keeps the values differentiable
            return self.appnp(flat, adj).view(B, N, C)
        h = x
        for h in self._layer_outputs(x):
            pass
        return h

    def _appnp_iterations(self, x: Tensor, adj=None) -> Tensor:
        B, N, C = x.shape
        h = x
        for _ in range(self.K):
            if adj is None:
                propagated = weighted_propagate(h, self.graph, self.edge_type_weights())
            else:
                propagated = self._matmul(adj, h.reshape(B * N, C)).view(B, N, C)
            h = (1 - self.alpha) * propagated + self.alpha * x
        return h

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
        return self._layer_outputs(x)

    def _layer_outputs(self, x: Tensor):
        B, N, C = x.shape
        edge_index = edge_type = edge_attr = None
        if self.backend == "edge_index":
            edge_index, edge_weight = self._edge_index(B, x)
            _, edge_type = self.graph.batched_edges(B, x.device)
            if "edge_attr" in self._conv_inputs:
                edge_attr = F.one_hot(edge_type, NUM_EDGE_TYPES).to(x.dtype)  # (B*E, 2)
        h = x
        for i, conv in enumerate(self.convs):
            if i > 0:
                h = self._activate(h)
            inputs = h
            if self.propagation == "gcn" and self.backend != "edge_index":
                # GCNConv's own order: linear map, exact propagation, bias
                h = self._propagate(conv.lin(h))
                if conv.bias is not None:
                    h = h + conv.bias
            else:
                flat = h.reshape(B * N, -1)
                if self.propagation == "gcn":
                    out = conv(flat, edge_index, edge_weight)
                elif "edge_type" in self._conv_inputs:
                    out = conv(flat, edge_index, edge_type)
                elif "edge_attr" in self._conv_inputs:
                    out = conv(flat, edge_index, edge_attr)
                else:
                    out = conv(flat, edge_index)
                h = out.view(B, N, -1)
            if self.residual and h.shape == inputs.shape:
                h = h + inputs
            yield h

    def _activate(self, h: Tensor) -> Tensor:
        if self.propagation == "gcn":
            return F.relu(h)
        if self.propagation == "gat":
            return F.elu(h)
        return ACTIVATIONS[self.activation](h)

    @property
    def is_linear(self) -> bool:
        """Whether the refined features are a fixed linear map of the input tokens
        (parameter-free propagation: APPNP or none)."""
        return self.propagation in ("appnp", "none")

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
        parts.append(f"grid={self.graph.grid}")
        return ", ".join(parts)
