r"""A PyG transform that wires a token-grid graph into a :class:`Data`."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch_geometric.data import Data
from torch_geometric.data.datapipes import functional_transform
from torch_geometric.transforms import BaseTransform

from ..errors import ConfigError
from .builder import _UNSET, SpatioTemporalGraph


@functional_transform("spatio_temporal_grid")
class SpatioTemporalGrid(BaseTransform):
    r"""Adds the typed edges of a :class:`SpatioTemporalGraph` (by default
    TAG-Head's IF-FC / TAT) to a graph whose :obj:`x` holds the
    :math:`T \cdot H \cdot W` tokens of one clip in node-id order
    :math:`t H W + y W + x` (functional name: ``spatio_temporal_grid``).

    Sets :obj:`edge_index` and :obj:`edge_type` (``0`` = spatial family,
    ``1`` = temporal, ``2`` = self-loop, ``3`` = kNN, ``4 + j`` = custom),
    :obj:`edge_attr` when ``edge_attr`` is given, and with ``add_pos=True``
    :obj:`pos`, the float :math:`(t, y, x)` coordinates of each node (float,
    as PyG's geometric transforms such as ``Cartesian`` expect;
    :meth:`SpatioTemporalGraph.pos_on` gives the same with
    ``dtype=torch.float32``).

    :obj:`edge_type` (and :obj:`edge_attr`) must stay aligned with
    :obj:`edge_index`. PyG transforms that only read edges (``Cartesian``,
    ``Distance``, ``NormalizeFeatures``, ...) keep them; of those that add or
    merge edges:

    * ``AddSelfLoops()`` extends only :obj:`edge_weight`: use
      ``self_loops=True`` here, or
      ``AddSelfLoops(attr="edge_type", fill_value=taggnn.graph.SELF_LOOP)``.
    * ``ToUndirected()`` sums the types of merged edges: the graph is
      already undirected; if needed use ``ToUndirected(reduce="max")``.

    :func:`check_typed_edges` raises when they came apart.

    Args:
        T (int), H (int), W (int): The token grid.
        intra / spatial, temporal, dynamic, custom, self_loops, edge_attr:
            the families and options of :class:`SpatioTemporalGraph`.
            (default: the paper's graph)
        add_pos (bool, optional): Also set :obj:`pos`. (default: :obj:`False`)

    Example:
        >>> transform = SpatioTemporalGrid(4, 7, 7)
        >>> data = transform(Data(x=torch.randn(196, 512)))
    """

    def __init__(
        self,
        T: int,
        H: int,
        W: int,
        *,
        intra: Union[str, bool, None] = _UNSET,
        temporal: Union[str, bool, None] = "aligned",
        self_loops: bool = False,
        add_pos: bool = False,
        spatial: Union[str, bool, None] = _UNSET,
        dynamic: Optional[str] = None,
        custom=None,
        edge_attr: Union[str, Sequence[str], None] = None,
    ):
        self.graph = SpatioTemporalGraph(
            T, H, W, intra=intra, spatial=spatial, temporal=temporal, self_loops=self_loops,
            dynamic=dynamic, custom=custom, edge_attr=edge_attr,
        )
        self.add_pos = add_pos

    def forward(self, data: Data) -> Data:
        num_nodes = data.num_nodes
        if num_nodes != self.graph.num_nodes:
            raise ConfigError(
                f"{self.__class__.__name__} expected a graph with T*H*W = "
                f"{self.graph.T}*{self.graph.H}*{self.graph.W} = {self.graph.num_nodes} "
                f"nodes, got {num_nodes}"
            )
        x = getattr(data, "x", None)
        device = x.device if x is not None else None
        if self.graph.dynamic is not None:
            if x is None:
                raise ConfigError(f"{self.__class__.__name__} with dynamic={self.graph.dynamic!r} needs node "
                                  f"features data.x to find neighbours")
            built = self.graph.to_data(x)
        else:
            built = self.graph.to_data(None)
        data.edge_index = built.edge_index.to(device) if device is not None else built.edge_index
        data.edge_type = built.edge_type.to(data.edge_index.device)
        if self.graph.spec.edge_attr:
            data.edge_attr = built.edge_attr.to(data.edge_index.device)
        if self.add_pos:
            data.pos = self.graph.pos_on(device, torch.float32)
        return data

    def __repr__(self) -> str:
        g = self.graph
        extra = "".join(f", {name}={value!r}" for name, value in (
            ("dynamic", g.dynamic), ("edge_attr", g.spec.edge_attr or None)) if value)
        return (
            f"{self.__class__.__name__}(T={g.T}, H={g.H}, W={g.W}, intra={g.intra!r}, "
            f"temporal={g.temporal!r}{extra}, self_loops={g.self_loops})"
        )


def check_typed_edges(data) -> None:
    """Raises ``ValueError`` unless :obj:`edge_type` (and :obj:`edge_attr`, if any) has one row per edge.

    ``Data.validate()`` does not catch this (PyG does not know
    :obj:`edge_type` is per edge), e.g. after ``torch_geometric.transforms.AddSelfLoops()``.
    """
    num_edges = data.edge_index.size(1)
    for key in ("edge_type", "edge_attr"):
        value = getattr(data, key, None)
        if value is not None and value.size(0) != num_edges:
            raise ConfigError(
                f"{key} has {value.size(0)} rows but edge_index has {num_edges} edges; a transform added or "
                f"removed edges without it (e.g. AddSelfLoops(): use SpatioTemporalGrid(..., self_loops=True) "
                f"or AddSelfLoops(attr='edge_type', fill_value=taggnn.graph.SELF_LOOP))")
