import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from taggnn.graph import SpatioTemporalGraph, SpatioTemporalGrid


def test_transform_adds_typed_edges_and_pos():
    transform = SpatioTemporalGrid(2, 3, 2, add_pos=True)
    data = transform(Data(x=torch.randn(12, 4)))
    g = SpatioTemporalGraph(2, 3, 2)
    assert torch.equal(data.edge_index, g.edge_index)
    assert torch.equal(data.edge_type, g.edge_type)
    assert data.pos.shape == (12, 3) and data.pos.dtype == torch.float32
    assert "T=2" in repr(transform)


def test_transform_in_a_pyg_loader():
    transform = SpatioTemporalGrid(2, 2, 2, temporal="none")
    dataset = [transform(Data(x=torch.randn(8, 3), y=torch.tensor([i]))) for i in range(5)]
    batch = next(iter(DataLoader(dataset, batch_size=5)))
    assert batch.num_graphs == 5
    assert batch.edge_index.size(1) == 5 * 2 * 4 * 3
    assert int(batch.edge_index.max()) == 39


def test_transform_rejects_wrong_node_count():
    with pytest.raises(ValueError, match="T\\*H\\*W = 2\\*2\\*2 = 8 nodes, got 7"):
        SpatioTemporalGrid(2, 2, 2)(Data(x=torch.randn(7, 3)))
