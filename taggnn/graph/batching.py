r"""One PyG :class:`~torch_geometric.data.Batch` of clips with different token grids.

Clips of different lengths give different :math:`T'`; each clip's cached
template (per graph spec and device) is offset into one block-diagonal batch,
with no per-clip :class:`~torch_geometric.data.Data` built.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch_geometric.data import Batch

from ..errors import ConfigError
from .builder import SpatioTemporalGraph


def batch_graphs(graphs: Sequence[SpatioTemporalGraph], xs: Sequence[Tensor]) -> Batch:
    r"""Batches clip :math:`i` with features ``xs[i]`` on graph ``graphs[i]``.

    Equals ``Batch.from_data_list([g.to_data(x) for g, x in zip(graphs,
    xs)])``: :obj:`x`, :obj:`edge_index` (clip :math:`i` offset by the nodes
    before it), :obj:`edge_type`, :obj:`edge_attr` (when the graphs have
    one), :obj:`batch`, :obj:`ptr`, and what
    :meth:`~torch_geometric.data.Batch.to_data_list` needs. kNN edges of
    graphs with ``dynamic`` are built from each clip's features.

    Args:
        graphs (list of SpatioTemporalGraph): One graph per clip (may repeat).
        xs (list of torch.Tensor): Node features ``(N_i, C)`` (or a
            backbone's ``(C, T_i, H_i, W_i)``), same :math:`C` and device.
    """
    if len(graphs) != len(xs) or not graphs:
        raise ConfigError(f"batch_graphs needs one feature tensor per graph and at least one clip, got "
                          f"{len(graphs)} graphs and {len(xs)} tensors")
    kinds = {g.spec.edge_attr for g in graphs}
    if len(kinds) > 1 or len({g.edge_dim for g in graphs}) > 1:
        raise ConfigError(f"the graphs of one batch must have the same edge_attr kinds and width, got {sorted(kinds)}")
    tokens, edge_indices, edge_types, edge_attrs = [], [], [], []
    node_counts, edge_counts = [], []
    offset = 0
    for graph, x in zip(graphs, xs):
        x = graph._as_tokens(x.unsqueeze(0))[0]  # (N_i, C)
        edge_index, edge_type = graph.edge_index_on(x.device), graph.edge_type_on(x.device)
        attr = graph.edge_attr_on(x.device) if graph.spec.edge_attr else None
        if graph.dynamic is not None:
            dyn_index, dyn_type = graph.dynamic_edges(x.unsqueeze(0))
            edge_index, edge_type = torch.cat([edge_index, dyn_index], 1), torch.cat([edge_type, dyn_type])
            if attr is not None:
                attr = graph.edge_attr_for(edge_index, edge_type)
        tokens.append(x)
        edge_indices.append(edge_index + offset)
        edge_types.append(edge_type)
        if attr is not None:
            edge_attrs.append(attr)
        node_counts.append(graph.num_nodes)
        edge_counts.append(edge_type.numel())
        offset += graph.num_nodes
    device = tokens[0].device
    nodes = torch.tensor(node_counts, device=device)
    ptr = torch.cat([nodes.new_zeros(1), nodes.cumsum(0)])
    edge_ptr = torch.cat([nodes.new_zeros(1), torch.tensor(edge_counts, device=device).cumsum(0)])
    out = Batch(x=torch.cat(tokens), edge_index=torch.cat(edge_indices, 1), edge_type=torch.cat(edge_types))
    out.batch = torch.arange(len(graphs), device=device).repeat_interleave(nodes)
    out.ptr = ptr
    zeros = torch.zeros(len(graphs), dtype=torch.long, device=device)
    out._num_graphs = len(graphs)
    out._slice_dict = {"x": ptr, "edge_index": edge_ptr, "edge_type": edge_ptr}
    out._inc_dict = {"x": zeros, "edge_index": ptr[:-1], "edge_type": zeros}
    if edge_attrs:
        out.edge_attr = torch.cat(edge_attrs)
        out._slice_dict["edge_attr"] = edge_ptr
        out._inc_dict["edge_attr"] = zeros
    return out
