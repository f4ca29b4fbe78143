r"""A PyG transform that wires the TAG-Head grid graph into a :class:`Data`."""
from __future__ import annotations

from typing import Union

from torch_geometric.data import Data
from torch_geometric.data.datapipes import functional_transform
from torch_geometric.transforms import BaseTransform

from .builder import SpatioTemporalGraph


@functional_transform("spatio_temporal_grid")
class SpatioTemporalGrid(BaseTransform):
    r"""Adds the IF-FC / TAT edges of :class:`SpatioTemporalGraph` to a graph
    whose :obj:`x` holds the :math:`T \cdot H \cdot W` tokens of one clip in
    node-id order :math:`t H W + y W + x` (functional name:
    ``spatio_temporal_grid``).

    Sets :obj:`edge_index` and :obj:`edge_type` (``0`` = IF-FC, ``1`` = TAT,
    ``2`` = self-loop); with ``add_pos=True`` also :obj:`pos`, the float
    :math:`(t, y, x)` coordinates of each node.

    Args:
        T (int), H (int), W (int): The token grid.
        intra (str, optional): ``"full"`` or ``"none"``. (default: ``"full"``)
        temporal (str, optional): ``"aligned"`` or ``"none"``.
            (default: ``"aligned"``)
        self_loops (bool, optional): List self-loops. (default: :obj:`False`)
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
        intra: Union[str, bool] = "full",
        temporal: Union[str, bool] = "aligned",
        self_loops: bool = False,
        add_pos: bool = False,
    ):
        self.graph = SpatioTemporalGraph(
            T, H, W, intra=intra, temporal=temporal, self_loops=self_loops
        )
        self.add_pos = add_pos

    def forward(self, data: Data) -> Data:
        num_nodes = data.num_nodes
        if num_nodes != self.graph.num_nodes:
            raise ValueError(
                f"{self.__class__.__name__} expected a graph with T*H*W = "
                f"{self.graph.T}*{self.graph.H}*{self.graph.W} = {self.graph.num_nodes} "
                f"nodes, got {num_nodes}"
            )
        device = data.x.device if getattr(data, "x", None) is not None else None
        data.edge_index = self.graph.edge_index_on(device)
        data.edge_type = self.graph.edge_type_on(device)
        if self.add_pos:
            data.pos = self.graph.pos_on(device).float()
        return data

    def __repr__(self) -> str:
        g = self.graph
        return (
            f"{self.__class__.__name__}(T={g.T}, H={g.H}, W={g.W}, intra={g.intra!r}, "
            f"temporal={g.temporal!r}, self_loops={g.self_loops})"
        )
