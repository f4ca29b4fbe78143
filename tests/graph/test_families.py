import itertools
import math

import pytest
import torch
from torch_geometric.utils import is_undirected

from taggnn.errors import ConfigError
from taggnn.graph import CUSTOM, IF_FC, SELF_LOOP, TAT, SpatioTemporalGraph

GRIDS = [(1, 1, 1), (1, 3, 4), (4, 1, 1), (3, 3, 3), (5, 2, 4)]
SPATIAL = ["full", "grid4", "grid8", "radius:1.5", "radius:2", "radius:1:chebyshev", "radius:0.5", "none"]
TEMPORAL = ["aligned", "window:2", "window:2:2", "cube:1", "cube:0", "full", "none"]


def spatial_rule(family, dy, dx):
    """Whether two distinct sites of one frame at offset (dy, dx) are linked, from the definitions."""
    if family == "full":
        return True
    if family == "grid4":
        return abs(dy) + abs(dx) == 1
    if family == "grid8":
        return max(abs(dy), abs(dx)) == 1
    if family.startswith("radius:"):
        parts = family.split(":")
        if len(parts) == 3:
            return max(abs(dy), abs(dx)) <= float(parts[1])
        return math.hypot(dy, dx) <= float(parts[1])
    return False


def temporal_rule(family, dt, dy, dx):
    """Whether two sites of different frames at offset (dt, dy, dx) are linked."""
    if family == "aligned":
        return abs(dt) == 1 and dy == dx == 0
    if family.startswith("window:"):
        parts = family.split(":")
        k, d = int(parts[1]), int(parts[2]) if len(parts) == 3 else 1
        return dy == dx == 0 and abs(dt) % d == 0 and abs(dt) // d <= k
    if family.startswith("cube:"):
        return abs(dt) == 1 and max(abs(dy), abs(dx)) <= int(family.split(":")[1])
    return family == "full"


def brute_force(T, H, W, spatial, temporal, self_loops=False):
    """A set of (src, dst, type) from Python loops over every pair of sites."""
    sites = list(itertools.product(range(T), range(H), range(W)))
    nid = lambda t, y, x: (t * H + y) * W + x  # noqa: E731
    edges = set()
    for (t1, y1, x1), (t2, y2, x2) in itertools.product(sites, sites):
        dt, dy, dx = t2 - t1, y2 - y1, x2 - x1
        if (dt, dy, dx) == (0, 0, 0):
            if self_loops:
                edges.add((nid(t1, y1, x1), nid(t1, y1, x1), SELF_LOOP))
        elif dt == 0 and spatial_rule(spatial, dy, dx):
            edges.add((nid(t1, y1, x1), nid(t2, y2, x2), IF_FC))
        elif dt != 0 and temporal_rule(temporal, dt, dy, dx):
            edges.add((nid(t1, y1, x1), nid(t2, y2, x2), TAT))
    return edges


def as_set(graph):
    ei, et = graph.edge_index, graph.edge_type
    key = ei[0] * graph.num_nodes + ei[1]
    assert torch.equal(key, key.sort().values)  # sorted by (source, target), as PyG's coalesce
    return set(zip(ei[0].tolist(), ei[1].tolist(), et.tolist()))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("spatial", SPATIAL)
def test_spatial_families_match_brute_force(grid, spatial):
    g = SpatioTemporalGraph(*grid, spatial=spatial, temporal="none")
    expected = brute_force(*grid, spatial, "none")
    assert as_set(g) == expected
    assert g.edge_index.size(1) == len(expected) == g.num_edges


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("temporal", TEMPORAL)
def test_temporal_families_match_brute_force(grid, temporal):
    g = SpatioTemporalGraph(*grid, spatial="none", temporal=temporal, self_loops=True)
    expected = brute_force(*grid, "none", temporal, self_loops=True)
    assert as_set(g) == expected
    assert g.edge_index.size(1) == len(expected) == g.num_edges


@pytest.mark.parametrize("spatial,temporal", [("grid8", "window:2"), ("radius:1.5", "cube:1"),
                                              ("grid4", "full"), ("full", "window:3:2")])
def test_families_compose_and_stay_sorted_and_undirected(spatial, temporal):
    grid = (4, 3, 3)
    g = SpatioTemporalGraph(*grid, spatial=spatial, temporal=temporal)
    assert as_set(g) == brute_force(*grid, spatial, temporal)
    key = g.edge_index[0] * g.num_nodes + g.edge_index[1]
    assert torch.equal(key, key.sort().values)
    assert is_undirected(g.edge_index, num_nodes=g.num_nodes)
    assert set(g.edge_type_names()) == {IF_FC, TAT}


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("spatial,temporal", [(s, "none") for s in SPATIAL] + [("none", t) for t in TEMPORAL]
                         + [("grid8", "cube:1"), ("full", "full")])
def test_offset_set_is_the_graph(grid, spatial, temporal):
    """offsets(): an edge (t, y, x) -> (t, y, x) + o exactly when both ends are inside the grid."""
    T, H, W = grid
    g = SpatioTemporalGraph(T, H, W, spatial=spatial, temporal=temporal)
    offsets = g.offsets()
    assert offsets.dtype == torch.long and offsets.dim() == 2 and offsets.size(1) == 3
    as_tuples = {tuple(o) for o in offsets.tolist()}
    assert len(as_tuples) == offsets.size(0)  # no repeats
    assert (0, 0, 0) not in as_tuples
    assert all((-a, -b, -c) in as_tuples for a, b, c in as_tuples)  # symmetric
    nid = lambda t, y, x: (t * H + y) * W + x  # noqa: E731
    from_offsets = set()
    for (t, y, x), (dt, dy, dx) in itertools.product(itertools.product(range(T), range(H), range(W)), as_tuples):
        if 0 <= t + dt < T and 0 <= y + dy < H and 0 <= x + dx < W:
            from_offsets.add((nid(t, y, x), nid(t + dt, y + dy, x + dx)))
    assert from_offsets == {(s, d) for s, d, _ in as_set(g)}


def test_offsets_of_the_named_families():
    g = SpatioTemporalGraph(8, 5, 5, spatial="grid4", temporal="aligned")
    assert sorted(map(tuple, g.offsets().tolist())) == sorted(
        [(0, -1, 0), (0, 0, -1), (0, 0, 1), (0, 1, 0), (-1, 0, 0), (1, 0, 0)])
    assert SpatioTemporalGraph(8, 5, 5, spatial="grid8", temporal="window:2").offsets().size(0) == 8 + 4
    assert SpatioTemporalGraph(8, 5, 5, spatial="none", temporal="window:3:2").offsets()[:, 0].tolist() == [
        -6, -4, -2, 2, 4, 6]
    assert SpatioTemporalGraph(8, 5, 5, spatial="radius:1.5", temporal="cube:1").offsets().size(0) == 8 + 18
    assert SpatioTemporalGraph(2, 2, 2, dynamic="knn:3").offsets() is None
    assert SpatioTemporalGraph(2, 2, 2, custom=lambda T, H, W: (torch.zeros(2, 0), torch.zeros(0))).offsets() is None


def test_intra_is_the_papers_name_of_spatial():
    assert SpatioTemporalGraph(2, 3, 3, intra="none") == SpatioTemporalGraph(2, 3, 3, spatial="none")
    assert SpatioTemporalGraph(2, 3, 3, intra=False).spatial == "none"
    assert SpatioTemporalGraph(2, 3, 3).spatial == "full"
    assert SpatioTemporalGraph(2, 3, 3, spatial="grid8").intra == "grid8"
    assert SpatioTemporalGraph(2, 3, 3, intra="full", spatial="full").spatial == "full"
    with pytest.raises(ConfigError, match="disagree"):
        SpatioTemporalGraph(2, 3, 3, intra="full", spatial="grid4")
    assert SpatioTemporalGraph(2, 3, 3).with_options(spatial="grid4").intra == "grid4"


@pytest.mark.parametrize("name,value,match", [
    ("spatial", "radius", "spatial must be one of"), ("spatial", "radius:-1", "must be >= 0"),
    ("spatial", "radius:2:manhattan", "metric"), ("spatial", "grid6", "spatial must be one of"),
    ("temporal", "window:0", "must be >= 1"), ("temporal", "window:2:x", "not an integer"),
    ("temporal", "cube:1.5", "not an integer"), ("dynamic", "knn:0", "must be >= 1"),
    ("dynamic", "knn", "dynamic must be one of"), ("edge_attr", "distance", "edge_attr must be"),
    ("custom", 3, "custom must be a callable"),
])
def test_bad_family_names_say_what_is_valid(name, value, match):
    with pytest.raises(ConfigError, match=match):
        SpatioTemporalGraph(2, 2, 2, **{name: value})


def test_canonical_spellings():
    g = SpatioTemporalGraph(2, 3, 3, spatial="radius:2.0", temporal="window:2:1")
    assert (g.spatial, g.temporal) == ("radius:2", "window:2")
    assert g == SpatioTemporalGraph(2, 3, 3, spatial="radius:2", temporal="window:2")
    assert SpatioTemporalGraph(2, 3, 3, spatial="radius:2:euclidean").spatial == "radius:2"


def test_custom_family_gets_its_own_types():
    def diagonal(T, H, W):  # each site to the next one in id order, two types by parity
        src = torch.arange(T * H * W - 1)
        return torch.stack([src, src + 1]), src % 2

    g = SpatioTemporalGraph(2, 2, 2, spatial="none", temporal="none", custom=diagonal)
    assert as_set(g) == {(i, i + 1, CUSTOM + i % 2) for i in range(7)}
    assert g.num_edges == 7 and g.num_edge_types == CUSTOM + 2
    assert g.edge_type_names() == {CUSTOM: "custom:0", CUSTOM + 1: "custom:1"}
    both = SpatioTemporalGraph(2, 2, 2, custom=diagonal)
    assert both.num_edges == SpatioTemporalGraph(2, 2, 2).num_edges + 7


@pytest.mark.parametrize("result,match", [
    ((torch.tensor([[0], [8]]), torch.tensor([0])), r"outside \[0, 8\)"),
    ((torch.tensor([[0], [1]]), torch.tensor([-1])), "negative edge type"),
    ((torch.tensor([0, 1]), torch.tensor([0])), r"shape \(2, E\)"),
    ([1, 2], "must return"),
])
def test_custom_family_output_is_checked(result, match):
    g = SpatioTemporalGraph(2, 2, 2, custom=lambda T, H, W: result)
    with pytest.raises(ConfigError, match=match):
        g.edge_index


def test_memory_is_checked_before_building_a_new_family(monkeypatch):
    import taggnn.graph.builder as builder
    from taggnn.errors import GraphTooLargeError

    monkeypatch.setattr(builder, "MAX_EDGE_BYTES", 1 << 20)
    g = SpatioTemporalGraph(16, 14, 14, spatial="none", temporal="full")  # 16*15*196^2 edges
    assert g.num_edges == 16 * 15 * 196 * 196
    with pytest.raises(GraphTooLargeError, match="9,219,840 directed edges"):
        g.edge_index_on("cpu")
    knn = SpatioTemporalGraph(16, 14, 14, spatial="none", temporal="none", dynamic="knn:200")
    with pytest.raises(GraphTooLargeError, match="the knn:200 edges of 6,272 tokens"):
        knn.dynamic_edges(torch.zeros(2, knn.num_nodes, 1))


def test_degrees_of_non_paper_families():
    g = SpatioTemporalGraph(5, 2, 3, spatial="full", temporal="window:2")
    counted = torch.bincount(g.edge_index[1], minlength=g.num_nodes).float() + 1
    assert torch.equal(counted.view(5, 6)[:, 0], g.degree())
    with pytest.raises(ConfigError, match="per-frame degrees"):
        SpatioTemporalGraph(5, 2, 3, spatial="grid4").degree()
    # adj_t normalises with the degree of every node
    grid4 = SpatioTemporalGraph(2, 3, 3, spatial="grid4", temporal="cube:1")
    dense = torch.zeros(grid4.num_nodes, grid4.num_nodes)
    dense[grid4.edge_index[0], grid4.edge_index[1]] = 1
    m = dense + torch.eye(grid4.num_nodes)
    d = m.sum(1).rsqrt()
    torch.testing.assert_close(grid4.adj_t(1).to_dense(), d[:, None] * m * d[None, :])
