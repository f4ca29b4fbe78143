r"""A heterogeneous view of a :class:`SpatioTemporalGraph`: one edge type per family.

For :func:`torch_geometric.nn.to_hetero` models and
:class:`~torch_geometric.nn.conv.HeteroConv`: one node type (``"token"``) and
one relation per family of the graph, named ``"spatial"``, ``"temporal"``,
``"self_loop"``, ``"dynamic"`` and ``"custom_<j>"``, each with its own
:obj:`edge_index` (and :obj:`edge_attr` = offsets when the graph has
``edge_attr="offset"``; the one-hot type is implied by the relation).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple

from torch import Tensor
from torch_geometric.data import Batch, HeteroData

from .families import CUSTOM, DYNAMIC, IF_FC, SELF_LOOP, TAT

if TYPE_CHECKING:
    from .builder import SpatioTemporalGraph

NODE_TYPE = "token"
_RELATIONS = {IF_FC: "spatial", TAT: "temporal", SELF_LOOP: "self_loop", DYNAMIC: "dynamic"}


def relation_name(edge_type: int) -> str:
    """The relation of an edge type: ``"spatial"``, ``"temporal"``, ..., ``"custom_<j>"``."""
    return _RELATIONS.get(edge_type, f"custom_{edge_type - CUSTOM}")


def metadata(graph: SpatioTemporalGraph) -> Tuple[List[str], List[Tuple[str, str, str]]]:
    """``(node_types, edge_types)`` for :func:`torch_geometric.nn.to_hetero`."""
    return [NODE_TYPE], [(NODE_TYPE, relation_name(t), NODE_TYPE) for t in sorted(graph.edge_type_names())]


def to_hetero_data(graph: SpatioTemporalGraph, x: Optional[Tensor] = None) -> HeteroData:
    r"""One clip as a :class:`~torch_geometric.data.HeteroData` with one relation per family.

    Args:
        x (torch.Tensor, optional): Node features ``(N, C)``; needed when
            the graph has a ``dynamic`` family.

    Every relation of :func:`metadata` is present (possibly with no edges,
    e.g. ``"temporal"`` on a 1-frame grid), so all clips share one schema.
    """
    homogeneous = graph.to_data(x)
    data = HeteroData()
    if x is not None:
        data[NODE_TYPE].x = x
    data[NODE_TYPE].num_nodes = graph.num_nodes
    edge_type = homogeneous.edge_type
    offsets = "offset" in graph.spec.edge_attr
    for t in sorted(graph.edge_type_names()):
        keep = edge_type == t
        store = data[NODE_TYPE, relation_name(t), NODE_TYPE]
        store.edge_index = homogeneous.edge_index[:, keep]
        if offsets:
            store.edge_attr = homogeneous.edge_attr[keep, :3]
    return data


def hetero_batch(graph: SpatioTemporalGraph, x: Tensor) -> Batch:
    r"""A heterogeneous :class:`~torch_geometric.data.Batch` of clips ``(B, N, C)`` or ``(B, C, T, H, W)``."""
    x = graph._as_tokens(x)
    return Batch.from_data_list([to_hetero_data(graph, x[b]) for b in range(x.size(0))])


__all__ = ["NODE_TYPE", "relation_name", "metadata", "to_hetero_data", "hetero_batch"]
