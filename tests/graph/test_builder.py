import itertools

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.utils import is_undirected

from taggnn.graph import IF_FC, SELF_LOOP, TAT, SpatioTemporalGraph, gcn_degree

GRIDS = [(1, 1, 1), (1, 2, 3), (3, 1, 1), (2, 2, 2), (4, 3, 2), (5, 1, 4)]


def reference_edges(T, H, W, intra=True, temporal=True, self_loops=False):
    """Independent, loop-based construction: a set of (src, dst, type)."""
    nid = lambda t, y, x: t * H * W + y * W + x  # noqa: E731
    edges = set()
    for t, y1, x1, y2, x2 in itertools.product(range(T), range(H), range(W), range(H), range(W)):
        if intra and (y1, x1) != (y2, x2):
            edges.add((nid(t, y1, x1), nid(t, y2, x2), IF_FC))
    for t, y, x in itertools.product(range(T), range(H), range(W)):
        for dt in (-1, 1):
            if temporal and 0 <= t + dt < T:
                edges.add((nid(t, y, x), nid(t + dt, y, x), TAT))
        if self_loops:
            edges.add((nid(t, y, x), nid(t, y, x), SELF_LOOP))
    return edges


def as_set(graph):
    ei, et = graph.edge_index, graph.edge_type
    return set(zip(ei[0].tolist(), ei[1].tolist(), et.tolist()))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("intra,temporal", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("self_loops", [False, True])
def test_edges_match_independent_construction(grid, intra, temporal, self_loops):
    g = SpatioTemporalGraph(
        *grid, intra="full" if intra else "none", temporal="aligned" if temporal else "none",
        self_loops=self_loops,
    )
    expected = reference_edges(*grid, intra, temporal, self_loops)
    assert as_set(g) == expected
    assert g.edge_index.size(1) == len(expected) == g.num_edges  # no duplicates
    assert g.edge_index.dtype == torch.long and g.edge_type.dtype == torch.long


@pytest.mark.parametrize("grid", GRIDS + [(4, 7, 7), (8, 7, 7)])
def test_edge_count_formula_and_symmetry(grid):
    T, H, W = grid
    P = H * W
    g = SpatioTemporalGraph(T, H, W)
    assert g.num_nodes == T * P
    assert g.edge_index.size(1) == T * P * (P - 1) + 2 * (T - 1) * P
    assert is_undirected(g.edge_index, num_nodes=g.num_nodes)
    assert not (g.edge_index[0] == g.edge_index[1]).any()


def test_edge_types_are_spatial_and_temporal():
    g = SpatioTemporalGraph(3, 2, 2)
    src, dst = g.edge_index
    t_src, t_dst = src // 4, dst // 4
    intra = g.edge_type == IF_FC
    assert (t_src[intra] == t_dst[intra]).all()
    tat = g.edge_type == TAT
    assert ((t_src[tat] - t_dst[tat]).abs() == 1).all()
    assert ((src[tat] % 4) == (dst[tat] % 4)).all()  # same site
    assert set(g.edge_type.tolist()) == {IF_FC, TAT}


def test_positions_follow_node_ids():
    g = SpatioTemporalGraph(2, 3, 4)
    pos = g.pos
    assert pos.shape == (24, 3)
    ids = pos[:, 0] * 12 + pos[:, 1] * 4 + pos[:, 2]
    assert torch.equal(ids, torch.arange(24))


def test_templates_are_cached():
    a = SpatioTemporalGraph(4, 7, 7)
    b = SpatioTemporalGraph(4, 7, 7)
    assert a == b and hash(a) == hash(b)
    assert a.edge_index is b.edge_index  # same cached tensor
    assert a.batched_edges(3)[0] is b.batched_edges(3)[0]
    assert a.adj_t(2) is b.adj_t(2)


@pytest.mark.parametrize("grid", [(1, 1, 1), (3, 2, 2), (2, 3, 1)])
@pytest.mark.parametrize("B", [1, 4])
def test_batch_equals_from_data_list(grid, B):
    g = SpatioTemporalGraph(*grid)
    x = torch.randn(B, g.num_nodes, 5)
    ours = g.batch(x)
    ref = Batch.from_data_list(
        [Data(x=x[b], edge_index=g.edge_index, edge_type=g.edge_type) for b in range(B)]
    )
    assert set(ours.keys()) == set(ref.keys())
    for key in ref.keys():
        assert torch.equal(ours[key], ref[key]), key
    assert ours.num_graphs == ref.num_graphs == B
    for ours_clip, ref_clip in zip(ours.to_data_list(), ref.to_data_list()):
        for key in ref_clip.keys():
            assert torch.equal(ours_clip[key], ref_clip[key])
    # x is a view, not a copy
    assert ours.x.data_ptr() == x.data_ptr()


def test_degree_of_self_looped_graph():
    g = SpatioTemporalGraph(4, 2, 3)
    deg = gcn_degree(g.spec)
    # 1 (loop) + 5 (clique) + 1 or 2 temporal neighbours
    assert deg.tolist() == [7.0, 8.0, 8.0, 7.0]
    counted = torch.bincount(g.edge_index[0], minlength=g.num_nodes).float() + 1
    assert torch.equal(counted.view(4, 6)[:, 0], deg)


def test_adj_t_values_and_blocks():
    g = SpatioTemporalGraph(3, 2, 2)
    N = g.num_nodes
    raw = g.adj_t(2, normalize=False, add_self_loops=False).to_dense()
    assert raw.shape == (2 * N, 2 * N)
    dense = torch.zeros(N, N)
    dense[g.edge_index[0], g.edge_index[1]] = 1
    assert torch.equal(raw[:N, :N], dense) and torch.equal(raw[N:, N:], dense)
    assert raw[:N, N:].abs().sum() == 0
    norm = g.adj_t(1).to_dense()
    m = dense + torch.eye(N)
    d = m.sum(1).rsqrt()
    torch.testing.assert_close(norm, d[:, None] * m * d[None, :])
    assert g.adj_t(1).layout == torch.sparse_csr


def test_self_loops_are_not_duplicated_in_adj_t():
    g = SpatioTemporalGraph(2, 2, 2, self_loops=True)
    dense = g.adj_t(1, normalize=False, add_self_loops=True).to_dense()
    assert torch.equal(dense.diagonal(), torch.ones(g.num_nodes))


def test_with_options_and_repr():
    g = SpatioTemporalGraph(4, 7, 7)
    h = g.with_options(T=8, temporal="none")
    assert h.grid == (8, 7, 7) and h.temporal == "none" and h.intra == "full"
    assert "T=8" in repr(h)
    with pytest.raises(ValueError, match="unknown graph option"):
        g.with_options(depth=3)


@pytest.mark.parametrize("bad", [dict(T=0), dict(H=-1), dict(W=2.5), dict(T=True)])
def test_bad_sizes(bad):
    args = dict(T=2, H=2, W=2)
    args.update(bad)
    with pytest.raises(ValueError, match="integer >= 1"):
        SpatioTemporalGraph(args["T"], args["H"], args["W"])


def test_bad_modes_and_inputs():
    with pytest.raises(ValueError, match="intra must be one of"):
        SpatioTemporalGraph(2, 2, 2, intra="knn")
    with pytest.raises(ValueError, match="temporal must be one of"):
        SpatioTemporalGraph(2, 2, 2, temporal="dilated")
    g = SpatioTemporalGraph(2, 2, 2)
    with pytest.raises(ValueError, match=r"expected node features of shape \(B, N=8, C\).*got \(8, 4\)"):
        g.batch(torch.randn(8, 4))
    with pytest.raises(ValueError, match="got \\(2, 9, 4\\)"):
        g.batch(torch.randn(2, 9, 4))


def test_graphs_too_large_for_memory_are_refused_with_their_size(monkeypatch):
    import taggnn.graph.builder as builder
    from taggnn.errors import GraphTooLargeError

    monkeypatch.setattr(builder, "MAX_EDGE_BYTES", 1 << 20)  # 1 MiB
    graph = SpatioTemporalGraph(8, 14, 14)  # 8*196*195 + 2*7*196 = 308,504 edges, 7 MiB
    with pytest.raises(GraphTooLargeError, match=r"308,504 directed edges \(7.1 MiB.*1.0 MiB allowed.*MAX_EDGE_BYTES"):
        graph.edge_index_on("cpu")
    small = SpatioTemporalGraph(2, 3, 3)
    small.edge_index_on("cpu")
    with pytest.raises(GraphTooLargeError, match="a batch of 20000 graphs"):
        small.batched_edges(20000)
