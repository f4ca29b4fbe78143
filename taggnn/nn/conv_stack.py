r"""Stacks of PyG convolutions on the token graph (GCN, GAT, any ``torch_geometric.nn`` conv)."""
from __future__ import annotations

import inspect
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GCNConv
from torch_geometric.nn.conv import MessagePassing

from ..errors import ConfigError
from ..graph import SpatioTemporalGraph
from .backends import PropagationBackend, batched_typed_edges

ACTIVATIONS = {"relu": F.relu, "elu": F.elu, "gelu": F.gelu, "none": lambda x: x}
NUM_EDGE_TYPES = 2  # IF-FC, TAT (self-loops are added by the convolutions themselves)


def edge_inputs(graph: Optional[SpatioTemporalGraph]) -> Tuple[Optional[int], int]:
    """``(edge_dim, num_edge_types)`` a stack on ``graph`` uses: the width of the graph's
    ``edge_attr`` (``None`` without one: convolutions with ``edge_dim`` then get one-hot edge
    types), and the edge types relation-aware convolutions see (2, spatial and temporal, for the
    static families; :attr:`~taggnn.graph.SpatioTemporalGraph.num_edge_types` with self-loops, kNN
    or custom edges)."""
    if graph is None:
        return None, NUM_EDGE_TYPES
    edge_dim = graph.edge_dim if graph.edge_attr_kinds else None
    plain = graph.dynamic is None and graph.custom is None and not graph.self_loops
    return edge_dim, NUM_EDGE_TYPES if plain else graph.num_edge_types


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


class ConvStack(nn.ModuleList):
    r"""``num_layers`` PyG convolutions of width :math:`C`, an activation between layers and an
    optional residual connection around each layer.

    * ``kind="gcn"``: :class:`~torch_geometric.nn.conv.GCNConv`, ReLU between layers
      (:math:`H \leftarrow \hat{A} H W + b`; with a back-end that does not pass messages, the
      layer's own linear map, the back-end's exact :math:`\hat{A}` product, then the bias);
    * ``kind="gat"``: :class:`~torch_geometric.nn.conv.GATConv` with ``heads`` heads of width
      :math:`C / \text{heads}`, concatenated, ELU between layers;
    * any other name of a ``torch_geometric.nn`` convolution, with ``conv_kwargs`` and
      ``activation`` between layers: relation-aware convolutions (a ``num_relations``
      argument) receive the edge types (IF-FC = 0, TAT = 1; kNN = 3 and custom ``4 + j``
      when the graph has them), convolutions with an ``edge_dim`` argument the graph's
      ``edge_attr`` (``edge_dim``, see :meth:`SpatioTemporalGraph.edge_attr_for`) or, when
      it has none, one-hot edge types; ``GINConv``-like ones (an ``nn`` argument) a
      two-layer MLP; attention convolutions split :math:`C` over their ``heads``. A graph
      with a ``dynamic`` family gets its kNN edges from the stack's input, once per forward.

    A :class:`~torch.nn.ModuleList` of the convolutions (``stack[i]``), so parameters are
    named ``<i>.<conv parameter>``.

    Args:
        kind (str): ``"gcn"``, ``"gat"`` or a ``torch_geometric.nn`` convolution name.
        channels (int): Feature width :math:`C`.
        num_layers (int, optional): Depth. (default: ``2``)
        heads (int, optional): GAT heads. (default: ``8``)
        dropout (float, optional): GAT attention dropout. (default: ``0.0``)
        activation (str, optional): ``"relu"``, ``"elu"``, ``"gelu"`` or ``"none"`` between the
            layers of other convolutions. (default: ``"relu"``)
        residual (bool, optional): Residual connection around each layer. (default: :obj:`False`)
        conv_kwargs (dict, optional): Extra arguments of the convolution class.
        edge_dim (int, optional): Width of the graph's ``edge_attr``, passed to convolutions
            with an ``edge_dim`` argument (:func:`edge_inputs`). (default: :obj:`None`, one-hot
            edge types)
        num_edge_types (int, optional): Edge types of the graph (``num_relations``, and the
            width of one-hot edge types). (default: ``2``)

    **Shapes:** input :math:`(B, N, C)`, output :math:`(B, N, C)`.
    """

    def __init__(self, kind: str, channels: Optional[int], *, num_layers: int = 2, heads: int = 8,
                 dropout: float = 0.0, activation: str = "relu", residual: bool = False,
                 conv_kwargs: Optional[Mapping[str, Any]] = None, edge_dim: Optional[int] = None,
                 num_edge_types: int = NUM_EDGE_TYPES):
        if channels is None or channels < 1:
            raise ValueError(f"propagation {kind!r} needs channels >= 1, got {channels!r}")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an integer >= 1, got {num_layers!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if kind == "gat" and channels % heads != 0:
            raise ValueError(
                f"GAT concatenates {heads} heads of width channels/heads: channels "
                f"({channels}) must be divisible by heads ({heads})"
            )
        super().__init__()
        self.kind, self.channels, self.heads = kind, channels, heads
        self.activation = activation
        self.residual = bool(residual)
        self.conv_kwargs = dict(conv_kwargs or {})
        self.edge_dim, self.num_edge_types = edge_dim, int(num_edge_types)
        self.inputs: Tuple[str, ...] = ()  # what else the convolution's forward takes: edge_type / edge_attr
        for _ in range(num_layers):
            if kind == "gcn":
                self.append(GCNConv(channels, channels))
            elif kind == "gat":
                self.append(GATConv(channels, channels // heads, heads=heads, dropout=dropout))
            else:
                self.append(self._make_conv(kind, channels))

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
            kwargs["num_relations"] = self.num_edge_types
        if "edge_dim" in parameters:
            kwargs["edge_dim"] = self.edge_dim if self.edge_dim is not None else self.num_edge_types
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
        self.inputs = tuple(inputs)
        return conv

    def reset_parameters(self) -> None:
        for conv in self:
            conv.reset_parameters()

    def _activate(self, h: Tensor) -> Tensor:
        if self.kind == "gcn":
            return F.relu(h)
        if self.kind == "gat":
            return F.elu(h)
        return ACTIVATIONS[self.activation](h)

    def layer_outputs(self, x: Tensor, graph: SpatioTemporalGraph, backend: PropagationBackend,
                      weights: Optional[Tensor] = None) -> Iterator[Tensor]:
        """The output of each layer, ``(B, N, C)``, before the activation that feeds the next
        layer (the last one is :meth:`forward`'s result)."""
        B, N, C = x.shape
        edge_index = edge_weight = edge_type = edge_attr = None
        exact_gcn = self.kind == "gcn" and not backend.passes_messages
        if not exact_gcn and self.inputs:  # typed edges: the kNN ones (if any) built once, from x
            edge_index, edge_type = batched_typed_edges(graph, B, x)
            if "edge_attr" in self.inputs:
                edge_attr = (graph.edge_attr_for(edge_index, edge_type).to(x.dtype) if self.edge_dim is not None
                             else F.one_hot(edge_type, self.num_edge_types).to(x.dtype))  # (B*E, edge_dim)
        elif not exact_gcn:
            edge_index, edge_weight = backend.edges(graph, B, x, weights)
        h = x
        for i, conv in enumerate(self):
            if i > 0:
                h = self._activate(h)
            inputs = h
            if exact_gcn:
                # GCNConv's own order: linear map, exact propagation, bias
                h = backend.propagate(conv.lin(h), graph, weights)
                if conv.bias is not None:
                    h = h + conv.bias
            else:
                flat = h.reshape(B * N, -1)
                if self.kind == "gcn":
                    out = conv(flat, edge_index, edge_weight)
                elif "edge_type" in self.inputs:
                    out = conv(flat, edge_index, edge_type)
                elif "edge_attr" in self.inputs:
                    out = conv(flat, edge_index, edge_attr)
                else:
                    out = conv(flat, edge_index)
                h = out.view(B, N, -1)
            if self.residual and h.shape == inputs.shape:
                h = h + inputs
            yield h

    def forward(self, x: Tensor, graph: SpatioTemporalGraph, backend: PropagationBackend,
                weights: Optional[Tensor] = None) -> Tensor:
        h = x
        for h in self.layer_outputs(x, graph, backend, weights):
            pass
        return h

    def extra_repr(self) -> str:
        parts = [repr(self.kind), f"channels={self.channels}"]
        if self.kind not in ("gcn", "gat"):
            parts += [f"activation={self.activation!r}", f"residual={self.residual}"]
        return ", ".join(parts)


__all__ = ["ConvStack", "ACTIVATIONS", "NUM_EDGE_TYPES", "edge_inputs", "pyg_conv_class", "pyg_conv_names",
           "conv_arguments"]
