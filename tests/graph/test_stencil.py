import itertools

import pytest
import torch
from torch_geometric.nn import APPNP, GCNConv

from taggnn.errors import ConfigError
from taggnn.graph import SpatioTemporalGraph, stencil_appnp, stencil_propagate, structured_appnp
from taggnn.graph import stencil as stencil_module
from taggnn.graph.stencil import check_offsets, stencil_degree, stencil_edge_index
from taggnn.graph.structured import weighted_propagate


# ------------------------------------------------------------------ offset sets (own helper)
def family_offsets(name, grid=None):
    """Offset sets of the edge families, written out independently of the library."""
    kind, *args = name.split(":")
    args = [int(a) for a in args]
    box = range(-3, 4)
    if kind == "grid4":
        return {(0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)}
    if kind == "grid8":
        return {(0, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)}
    if kind == "radius":  # Euclidean disc of radius r in the frame
        (r,) = args
        return {(0, dy, dx) for dy in box for dx in box if 0 < dy * dy + dx * dx <= r * r}
    if kind == "window":  # same site, frames t +- d, t +- 2d, ..., t +- k d
        k, d = (args + [1])[:2]
        return {(s * j * d, 0, 0) for j in range(1, k + 1) for s in (-1, 1)}
    if kind == "cube":  # an r-box of sites in each of the r frames before and after
        (r,) = args
        rng = range(-r, r + 1)
        return {(dt, dy, dx) for dt in rng for dy in rng for dx in rng if dt != 0}
    if kind == "full_frame":  # every other site of the frame (the paper's IF-FC edges)
        T, H, W = grid
        return {(0, dy, dx) for dy in range(-H + 1, H) for dx in range(-W + 1, W) if (dy, dx) != (0, 0)}
    if kind == "all_frames":  # the same site in every other frame
        T, H, W = grid
        return {(dt, 0, 0) for dt in range(-T + 1, T) if dt != 0}
    if kind == "none":
        return set()
    raise KeyError(name)


def offsets_of(spec, grid):
    offsets = set()
    for name in spec.split("+"):
        offsets |= family_offsets(name, grid)
    return torch.tensor(sorted(offsets), dtype=torch.long).view(-1, 3)


def brute_force_edges(grid, offsets):
    """(edge_index, edge_type) of one clip with Python loops over sites and offsets."""
    T, H, W = grid
    src, dst, types = [], [], []
    for t, y, x in itertools.product(range(T), range(H), range(W)):
        for dt, dy, dx in offsets.tolist():
            u, v, w = t + dt, y + dy, x + dx
            if 0 <= u < T and 0 <= v < H and 0 <= w < W:
                src.append(t * H * W + y * W + x)
                dst.append(u * H * W + v * W + w)
                types.append(0 if dt == 0 else 1)
    return torch.tensor([src, dst], dtype=torch.long).view(2, -1), torch.tensor(types, dtype=torch.long)


def batched(edge_index, edge_type, B, N):
    shift = torch.arange(B).repeat_interleave(edge_index.size(1)) * N
    return edge_index.repeat(1, B) + shift, edge_type.repeat(B)


GRIDS = [(1, 1, 1), (1, 4, 5), (3, 1, 4), (4, 3, 1), (3, 4, 5), (6, 3, 3)]
FAMILIES = ["grid4", "grid8", "radius:2", "window:2", "window:2:2", "cube:1", "grid4+window:1",
            "radius:2+cube:1", "full_frame+window:1", "all_frames", "none"]


@pytest.fixture(params=["shifts", "conv", "blocked"])
def kernel(request, monkeypatch):
    """The three code paths of the forward kernel: shifted adds, depthwise conv3d, cache blocks."""
    if request.param == "conv":  # every stencil with at least one offset
        monkeypatch.setattr(stencil_module, "CONV_MIN_OFFSETS", 1)
        monkeypatch.setattr(stencil_module, "CONV_MAX_VOLUME_RATIO", float("inf"))
    elif request.param == "blocked":  # blocks of a few clips or channels
        monkeypatch.setattr(stencil_module, "BLOCK_ELEMENTS", 40)
    else:
        monkeypatch.setattr(stencil_module, "CONV_MIN_OFFSETS", 10**9)
    return request.param


# ------------------------------------------------------------------ against PyG
def check_appnp_against_pyg(grid, offsets, self_loops, B=2, C=3, K=4, alpha=0.15):
    torch.manual_seed(0)
    N = grid[0] * grid[1] * grid[2]
    edge_index, _ = batched(*brute_force_edges(grid, offsets), B, N)
    x = torch.randn(B, N, C, requires_grad=True)
    upstream = torch.randn(B, N, C)

    reference = APPNP(K, alpha, add_self_loops=self_loops)(x.reshape(B * N, C), edge_index).view(B, N, C)
    (grad_reference,) = torch.autograd.grad(reference, x, upstream)
    out = stencil_appnp(x, grid, offsets, K, alpha, self_loops=self_loops)
    (grad,) = torch.autograd.grad(out, x, upstream)

    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, grad_reference, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the inference path gives the same numbers
        torch.testing.assert_close(stencil_appnp(x, grid, offsets, K, alpha, self_loops=self_loops), out)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("self_loops", [True, False])
def test_appnp_matches_pyg_outputs_and_gradients(grid, family, self_loops):
    check_appnp_against_pyg(grid, offsets_of(family, grid), self_loops)


@pytest.mark.parametrize("grid", [(1, 1, 1), (3, 1, 4), (3, 4, 5)])
@pytest.mark.parametrize("family", ["grid8", "window:2:2", "radius:2+cube:1", "none"])
def test_every_kernel_matches_pyg(grid, family, kernel):
    offsets = offsets_of(family, grid)
    for self_loops in (True, False):
        check_appnp_against_pyg(grid, offsets, self_loops)
    # constant edge-type weights in this kernel == the plain-autograd path of differentiable weights
    x = torch.randn(3, grid[0] * grid[1] * grid[2], 4)
    weights = torch.tensor([0.6, 1.7, 0.3])
    expected = stencil_appnp(x, grid, offsets, 3, 0.1, weights=weights.clone().requires_grad_())
    torch.testing.assert_close(stencil_appnp(x, grid, offsets, 3, 0.1, weights=weights), expected.detach())


@pytest.mark.parametrize("grid", [(1, 1, 1), (1, 3, 4), (4, 1, 3), (3, 4, 4)])
@pytest.mark.parametrize("family", ["grid4", "radius:2+window:2:2", "cube:1", "none"])
@pytest.mark.parametrize("self_loops", [True, False])
def test_propagate_matches_gcnconv(grid, family, self_loops):
    torch.manual_seed(1)
    B, C = 3, 4
    offsets = offsets_of(family, grid)
    N = grid[0] * grid[1] * grid[2]
    edge_index, _ = batched(*brute_force_edges(grid, offsets), B, N)
    conv = GCNConv(C, C, add_self_loops=self_loops, normalize=True)
    x = torch.randn(B, N, C, requires_grad=True)
    upstream = torch.randn(B, N, C)

    reference = conv(x.reshape(B * N, C), edge_index).view(B, N, C)
    grads_reference = torch.autograd.grad(reference, (x, conv.lin.weight), upstream)
    out = stencil_propagate(conv.lin(x), grid, offsets, self_loops=self_loops) + conv.bias
    grads = torch.autograd.grad(out, (x, conv.lin.weight), upstream)

    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    for grad, grad_reference in zip(grads, grads_reference):
        torch.testing.assert_close(grad, grad_reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid", [(1, 1, 1), (1, 3, 4), (5, 1, 2), (4, 3, 3)])
@pytest.mark.parametrize("family", ["grid8+window:1", "radius:2+cube:1", "window:2:2", "grid4"])
@pytest.mark.parametrize("self_loops", [True, False])
def test_edge_type_weights_match_pyg_edge_weight(grid, family, self_loops):
    torch.manual_seed(2)
    B, C, K, alpha = 2, 3, 3, 0.2
    offsets = offsets_of(family, grid)
    N = grid[0] * grid[1] * grid[2]
    edge_index, edge_type = brute_force_edges(grid, offsets)
    if self_loops:  # explicit weighted self-loops, as the refiner's learned-weight path feeds PyG
        loops = torch.arange(N)
        edge_index = torch.cat([edge_index, torch.stack([loops, loops])], dim=1)
        edge_type = torch.cat([edge_type, torch.full((N,), 2)])
    edge_index, edge_type = batched(edge_index, edge_type, B, N)
    weights = torch.tensor([0.7, 1.8, 0.4], requires_grad=True)
    x = torch.randn(B, N, C, requires_grad=True)
    upstream = torch.randn(B, N, C)

    appnp = APPNP(K, alpha, add_self_loops=self_loops)  # keeps the given loops and their weights
    reference = appnp(x.reshape(B * N, C), edge_index, weights[edge_type]).view(B, N, C)
    grads_reference = torch.autograd.grad(reference, (x, weights), upstream)
    out = stencil_appnp(x, grid, offsets, K, alpha, self_loops=self_loops, weights=weights)
    grads = torch.autograd.grad(out, (x, weights), upstream)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    for grad, grad_reference in zip(grads, grads_reference):
        torch.testing.assert_close(grad, grad_reference, atol=1e-5, rtol=1e-5)

    # constant weights: the fast path with the symmetric backward, same numbers
    out_constant = stencil_appnp(x, grid, offsets, K, alpha, self_loops=self_loops, weights=weights.detach())
    (grad_constant,) = torch.autograd.grad(out_constant, x, upstream)
    torch.testing.assert_close(out_constant, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_constant, grads_reference[0], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ the paper's graph
@pytest.mark.parametrize("grid", [(1, 1, 1), (4, 3, 3), (3, 1, 5)])
def test_paper_offsets_equal_structured_back_end(grid):
    torch.manual_seed(3)
    graph = SpatioTemporalGraph(*grid)
    offsets = offsets_of("full_frame+window:1", grid)
    x = torch.randn(2, graph.num_nodes, 5, dtype=torch.float64)
    torch.testing.assert_close(stencil_appnp(x, graph, offsets, 6, 0.1), structured_appnp(x, graph, 6, 0.1))
    weights = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)
    torch.testing.assert_close(stencil_propagate(x, graph, offsets, weights=weights),
                               weighted_propagate(x, graph, weights))
    edge_index, edge_type = stencil_edge_index(graph, offsets)
    assert torch.equal(edge_index, graph.edge_index)
    assert torch.equal(edge_type, graph.edge_type)


# ------------------------------------------------------------------ helpers and properties
@pytest.mark.parametrize("grid", [(1, 1, 1), (3, 4, 5), (5, 2, 1)])
@pytest.mark.parametrize("family", ["grid8+window:2:2", "radius:2+cube:1", "none"])
def test_edge_index_and_degree_match_brute_force(grid, family):
    offsets = offsets_of(family, grid)
    N = grid[0] * grid[1] * grid[2]
    edge_index, edge_type = brute_force_edges(grid, offsets)
    order = torch.argsort(edge_index[0] * N + edge_index[1])
    built, built_type = stencil_edge_index(grid, offsets, batch_size=3)
    expected, expected_type = batched(edge_index[:, order], edge_type[order], 3, N)
    assert torch.equal(built, expected) and torch.equal(built_type, expected_type)

    counts = torch.bincount(edge_index[1], minlength=N).float().view(grid)
    torch.testing.assert_close(stencil_degree(grid, offsets), counts + 1)
    torch.testing.assert_close(stencil_degree(grid, offsets, self_loops=False), counts)
    weights = torch.tensor([0.5, 3.0, 2.0])
    spatial = torch.bincount(edge_index[1][edge_type == 0], minlength=N).float().view(grid)
    torch.testing.assert_close(stencil_degree(grid, offsets, weights=weights),
                               2.0 + 0.5 * spatial + 3.0 * (counts - spatial))


def test_k0_alpha1_and_isolated_sites():
    x = torch.randn(2, 12, 3)
    offsets = offsets_of("grid4", (3, 2, 2))
    assert torch.equal(stencil_appnp(x, (3, 2, 2), offsets, 0, 0.1), x)
    torch.testing.assert_close(stencil_appnp(x, (3, 2, 2), offsets, 5, 1.0), x)
    # no edges and no self-loops: every degree is 0, A_hat = 0 (gcn_norm's 0 for inf)
    single = torch.randn(1, 1, 4)
    assert torch.equal(stencil_propagate(single, (1, 1, 1), offsets, self_loops=False), torch.zeros_like(single))
    # offsets reaching outside a small grid give no edge: A_hat = I with self-loops
    far = torch.tensor([[0, 5, 0], [0, -5, 0]])
    torch.testing.assert_close(stencil_propagate(x, (3, 2, 2), far), x)


def test_higher_order_gradients():
    torch.manual_seed(4)
    grid, offsets = (3, 2, 3), offsets_of("grid8+window:1", (3, 2, 3))
    x = torch.randn(2, 18, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: stencil_appnp(v, grid, offsets, 3, 0.2), (x,))
    assert torch.autograd.gradgradcheck(lambda v: stencil_appnp(v, grid, offsets, 3, 0.2), (x,))
    weights = torch.tensor([0.5, 1.5, 1.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, w: stencil_appnp(v, grid, offsets, 2, 0.2, weights=w), (x, weights))


@pytest.mark.parametrize("offsets,match", [
    ([[0, 1, 0]], "symmetric"),
    ([[0, 1, 0], [0, -1, 0], [0, 0, 0]], r"\(0, 0, 0\)"),
    ([[0, 1, 0], [0, -1, 0], [0, 1, 0]], "repeats"),
    ([[0, 1], [0, -1]], r"\(S, 3\)"),
    ([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]], "integer"),
])
def test_bad_offsets_are_refused(offsets, match):
    with pytest.raises(ConfigError, match=match):
        check_offsets(torch.tensor(offsets))


def test_bad_arguments_are_refused():
    offsets = offsets_of("grid4", None)
    x = torch.randn(2, 12, 3)
    with pytest.raises(ConfigError, match="N=12"):
        stencil_propagate(torch.randn(2, 11, 3), (3, 2, 2), offsets)
    with pytest.raises(ConfigError, match="grid"):
        stencil_propagate(x, (3, 2), offsets)
    with pytest.raises(ConfigError, match="K must be"):
        stencil_appnp(x, (3, 2, 2), offsets, -1, 0.1)
    with pytest.raises(ConfigError, match="alpha"):
        stencil_appnp(x, (3, 2, 2), offsets, 2, 1.5)
    with pytest.raises(ConfigError, match="shape \\(3,\\)"):
        stencil_propagate(x, (3, 2, 2), offsets, weights=torch.ones(2))
    with pytest.raises(ConfigError, match=">= 0"):
        stencil_propagate(x, (3, 2, 2), offsets, weights=torch.tensor([1.0, -1.0, 1.0]))
