"""kNN edges, edge attributes, the heterogeneous view, batches of different grids, PyG interplay."""
import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch_geometric.transforms as T
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GATv2Conv, GINEConv, HeteroConv, SAGEConv, TransformerConv, to_hetero

from taggnn.errors import ConfigError
from taggnn.graph import (
    DYNAMIC,
    IF_FC,
    SELF_LOOP,
    TAT,
    SpatioTemporalGraph,
    SpatioTemporalGrid,
    batch_graphs,
    check_typed_edges,
    knn_edges,
)


def brute_force_knn(x, k):
    """For each clip and centre i: the k others nearest in float64, ties to the smaller id; (j, i) pairs."""
    B, N, _ = x.shape
    edges = []
    for b in range(B):
        for i in range(N):
            others = sorted((float(((x[b, i].double() - x[b, j].double()) ** 2).sum()), j)
                            for j in range(N) if j != i)
            edges += [(b * N + j, b * N + i) for _, j in others[:k]]
    return edges


@pytest.mark.parametrize("B,N,k,dtype", [(2, 30, 4, torch.float32), (1, 5, 9, torch.float32),
                                         (3, 1, 2, torch.float32), (2, 40, 1, torch.float32),
                                         (2, 30, 4, torch.float64), (2, 30, 3, torch.bfloat16)])
def test_knn_edges_match_brute_force_including_ties(B, N, k, dtype):
    torch.manual_seed(0)
    x = torch.randint(0, 3, (B, N, 3)).to(dtype)  # few values: many equal distances
    g = SpatioTemporalGraph(1, 1, N, spatial="none", temporal="none", dynamic=f"knn:{k}")
    edge_index, edge_type = g.dynamic_edges(x)
    assert list(zip(*edge_index.tolist())) == brute_force_knn(x, k)
    assert (edge_type == DYNAMIC).all()
    # the same from a Batch, and from the plain function with a batch vector
    flat, batch = x.reshape(B * N, 3), torch.arange(B).repeat_interleave(N)
    assert torch.equal(knn_edges(flat, k, batch), edge_index)
    assert torch.equal(g.dynamic_edges(g.batch(x))[0], edge_index)


def test_knn_is_rebuilt_from_features_in_batch():
    g = SpatioTemporalGraph(2, 2, 2, dynamic="knn:2")
    static = g.num_edges
    x1, x2 = torch.randn(3, 8, 4, generator=torch.Generator().manual_seed(1)), torch.randn(3, 8, 4)
    b1, b2 = g.batch(x1), g.batch(x2)
    assert b1.edge_index.size(1) == 3 * (static + 8 * 2)
    assert not torch.equal(b1.edge_index, b2.edge_index)
    ref = Batch.from_data_list([g.to_data(x1[b]) for b in range(3)])
    for key in ("edge_index", "edge_type", "x", "batch"):
        assert torch.equal(b1[key], ref[key]), key
    clips = b1.to_data_list()
    assert torch.equal(clips[1].edge_index, ref.to_data_list()[1].edge_index)


def test_edge_attr_offsets_and_one_hot_types():
    g = SpatioTemporalGraph(3, 3, 3, spatial="grid8", temporal="cube:1", self_loops=True,
                            edge_attr=("type", "offset"))
    attr = g.edge_attr_on()
    assert g.spec.edge_attr == ("offset", "type") and attr.shape == (g.num_edges, g.edge_dim) == (g.num_edges, 7)
    pos = g.pos.float()
    assert torch.equal(attr[:, :3], pos[g.edge_index[1]] - pos[g.edge_index[0]])
    assert torch.equal(attr[:, 3:].argmax(1), g.edge_type) and torch.equal(attr[:, 3:].sum(1), torch.ones(g.num_edges))
    x = torch.randn(2, g.num_nodes, 8)
    batch = g.batch(x)
    assert torch.equal(batch.edge_attr, attr.repeat(2, 1))
    assert torch.equal(batch.to_data_list()[1].edge_attr, attr)
    for conv in (TransformerConv(8, 4, heads=2, edge_dim=g.edge_dim), GATv2Conv(8, 4, edge_dim=g.edge_dim),
                 GINEConv(torch.nn.Linear(8, 4), edge_dim=g.edge_dim)):
        out = conv(batch.x, batch.edge_index, batch.edge_attr)
        assert out.shape[0] == 2 * g.num_nodes and torch.isfinite(out).all()
    with pytest.raises(ConfigError, match="without edge_attr"):
        SpatioTemporalGraph(2, 2, 2).edge_attr_on()


def test_hetero_view_splits_families_and_runs_hetero_models():
    g = SpatioTemporalGraph(3, 2, 3, spatial="grid4", temporal="window:2", dynamic="knn:2", edge_attr="offset")
    x = torch.randn(2, g.num_nodes, 8)
    hetero = g.hetero(x[0])
    homogeneous = g.to_data(x[0])
    assert g.metadata() == (["token"], [("token", r, "token") for r in ("spatial", "temporal", "dynamic")])
    for t, relation in ((IF_FC, "spatial"), (TAT, "temporal"), (DYNAMIC, "dynamic")):
        store = hetero["token", relation, "token"]
        assert torch.equal(store.edge_index, homogeneous.edge_index[:, homogeneous.edge_type == t])
        assert torch.equal(store.edge_attr, homogeneous.edge_attr[homogeneous.edge_type == t])
    batch = g.hetero_batch(x)
    assert batch.num_graphs == 2 and batch["token"].x.shape == (2 * g.num_nodes, 8)
    conv = HeteroConv({edge_type: SAGEConv(8, 5) for edge_type in g.metadata()[1]}, aggr="sum")
    out = conv(batch.x_dict, batch.edge_index_dict)
    assert out["token"].shape == (2 * g.num_nodes, 5)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = SAGEConv((-1, -1), 5)

        def forward(self, x, edge_index):
            return self.conv(x, edge_index)

    model = to_hetero(Net(), g.metadata(), aggr="mean")
    assert model(batch.x_dict, batch.edge_index_dict)["token"].shape == (2 * g.num_nodes, 5)


def test_batch_of_clips_with_different_grids_equals_from_data_list():
    graphs = [SpatioTemporalGraph(t, 2, 3, spatial="grid8", temporal="window:2", edge_attr="offset")
              for t in (2, 4, 1, 4)]
    xs = [torch.randn(g.num_nodes, 5) for g in graphs]
    ours = batch_graphs(graphs, xs)
    ref = Batch.from_data_list([g.to_data(x) for g, x in zip(graphs, xs)])
    assert set(ours.keys()) == set(ref.keys())
    for key in ref.keys():
        assert torch.equal(ours[key], ref[key]), key
    for mine, theirs in zip(ours.to_data_list(), ref.to_data_list()):
        for key in theirs.keys():
            assert torch.equal(mine[key], theirs[key]), key
    # a backbone-shaped clip (C, T, H, W) is accepted too
    clip = torch.randn(5, 2, 2, 3)
    assert torch.equal(batch_graphs(graphs[:1], [clip]).x, clip.flatten(1).T)
    with pytest.raises(ConfigError, match="one feature tensor per graph"):
        batch_graphs(graphs, xs[:2])


# ---------------------------------------------------------------- what PyG users hit
@pytest.mark.parametrize("ours_first", [True, False])
def test_to_data_collates_with_plain_data(ours_first):
    g = SpatioTemporalGraph(2, 2, 2)
    ours = g.to_data(torch.randn(8, 3))
    plain = Data(x=torch.randn(5, 3), edge_index=torch.tensor([[0, 1], [1, 0]]), edge_type=torch.zeros(2).long())
    batch = next(iter(DataLoader([ours, plain] if ours_first else [plain, ours], batch_size=2)))
    assert batch.num_nodes == 13 and batch.num_graphs == 2
    assert g.to_data().num_nodes == 8  # without x it still knows its size


def test_numpy_and_torch_integers_are_grid_sizes():
    g = SpatioTemporalGraph(np.int64(2), np.int32(3), torch.tensor(4))
    assert g.grid == (2, 3, 4) and all(type(v) is int for v in g.grid)
    assert g == SpatioTemporalGraph(2, 3, 4)
    with pytest.raises(ValueError, match="integer >= 1"):
        SpatioTemporalGraph(np.float64(2.0), 3, 4)


def test_float_positions_agree_between_graph_and_transform():
    g = SpatioTemporalGraph(2, 3, 2)
    data = SpatioTemporalGrid(2, 3, 2, add_pos=True)(Data(x=torch.randn(12, 4)))
    assert torch.equal(data.pos, g.pos_on(dtype=torch.float32))
    assert g.pos.dtype == torch.long and torch.equal(g.pos.float(), data.pos)


def test_self_loops_added_by_pyg_transforms_keep_edge_types():
    transform = SpatioTemporalGrid(2, 2, 2)
    broken = T.AddSelfLoops()(transform(Data(x=torch.randn(8, 3))))
    broken.validate()  # PyG does not notice
    with pytest.raises(ConfigError, match="edge_type has 32 rows but edge_index has 40 edges"):
        check_typed_edges(broken)
    fixed = T.AddSelfLoops(attr="edge_type", fill_value=SELF_LOOP)(transform(Data(x=torch.randn(8, 3))))
    check_typed_edges(fixed)
    loops = fixed.edge_index[0] == fixed.edge_index[1]
    assert loops.sum() == 8 and (fixed.edge_type[loops] == SELF_LOOP).all()
    assert (fixed.edge_type[~loops] != SELF_LOOP).all()
    undirected = T.ToUndirected(reduce="max")(transform(Data(x=torch.randn(8, 3))))
    assert torch.equal(undirected.edge_type, SpatioTemporalGraph(2, 2, 2).edge_type)


def test_batch_accepts_backbone_output():
    g = SpatioTemporalGraph(2, 3, 4, spatial="grid4")
    features = torch.randn(2, 5, 2, 3, 4)  # (B, C, T, H, W)
    tokens = features.flatten(2).transpose(1, 2)  # (B, N, C)
    out = g.batch(features)
    assert torch.equal(out.x, g.batch(tokens.contiguous()).x)
    assert torch.equal(out.x.view(2, 2, 3, 4, 5)[1, 1, 2, 3], features[1, :, 1, 2, 3])
    with pytest.raises(ValueError, match="expected node features"):
        g.batch(torch.randn(2, 5, 2, 4, 3))


def test_transform_with_families_in_a_loader():
    transform = SpatioTemporalGrid(3, 2, 2, spatial="grid4", temporal="window:2", edge_attr="offset", add_pos=True)
    dataset = [transform(Data(x=torch.randn(12, 3), y=torch.tensor([i]))) for i in range(4)]
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    g = transform.graph
    assert torch.equal(batch.edge_index, g.batched_edges(4)[0])
    assert torch.equal(batch.edge_attr, g.edge_attr_on().repeat(4, 1))
    assert "spatial" not in repr(transform) and "grid4" in repr(transform)


def test_importing_the_graph_package_stays_light():
    code = ("import sys, taggnn.graph; heavy = [m for m in ('torchvision', 'av', 'sklearn', 'matplotlib') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_edge_of_every_family_is_listed_once_per_family():
    for spatial, temporal in itertools.product(["full", "grid8", "radius:2"], ["aligned", "cube:1", "full"]):
        g = SpatioTemporalGraph(3, 3, 2, spatial=spatial, temporal=temporal)
        keys = g.edge_index[0] * g.num_nodes + g.edge_index[1]
        assert keys.unique().numel() == keys.numel() == g.num_edges


def test_edge_attr_takes_the_config_spelling():
    """``"offset+type"`` and ``"none"`` (the spellings of ``model.graph_edge_attr``) mean what the
    tuple and ``None`` mean."""
    both = SpatioTemporalGraph(2, 3, 3, spatial="grid8", edge_attr="offset+type")
    tuple_form = SpatioTemporalGraph(2, 3, 3, spatial="grid8", edge_attr=("type", "offset"))
    assert both.edge_dim == tuple_form.edge_dim > 3  # (dt, dy, dx), then the one-hot type
    assert torch.equal(both.to_data().edge_attr, tuple_form.to_data().edge_attr)
    assert SpatioTemporalGraph(2, 3, 3, edge_attr="none").to_data().edge_attr is None
    with pytest.raises(ConfigError, match="offset\\+type"):
        SpatioTemporalGraph(2, 3, 3, edge_attr="offset+distance")
