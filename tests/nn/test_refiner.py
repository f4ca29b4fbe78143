import random

import pytest
import torch
from torch_geometric.nn import APPNP, GATConv, GCNConv

from taggnn.graph import SpatioTemporalGraph
from taggnn.nn import GraphRefiner, default_backend
from taggnn.utils import has_torch_sparse

EXACT_BACKENDS = ["structured", "csr", "edge_index"] + (["sparse_tensor"] if has_torch_sparse() else [])


def random_cases(n, seed=0):
    rng = random.Random(seed)
    for _ in range(n):
        yield dict(
            grid=(rng.randint(1, 5), rng.randint(1, 4), rng.randint(1, 4)),
            B=rng.randint(1, 3), C=rng.randint(1, 9), K=rng.randint(0, 6),
            alpha=rng.choice([0.05, 0.1, 0.3, 0.7, 1.0]),
            intra=rng.choice(["full", "none"]), temporal=rng.choice(["aligned", "none"]),
        )


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
@pytest.mark.parametrize("case", list(random_cases(12)),
                         ids=lambda c: "{grid}-B{B}-C{C}-K{K}-a{alpha}-{intra}-{temporal}".format(**c))
def test_appnp_backends_equal_pyg_appnp(backend, case):
    torch.manual_seed(1)
    g = SpatioTemporalGraph(*case["grid"], intra=case["intra"], temporal=case["temporal"])
    B, N, C = case["B"], g.num_nodes, case["C"]
    x = torch.randn(B, N, C, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    upstream = torch.randn(B, N, C)

    edge_index, _ = g.batched_edges(B)
    ref = APPNP(case["K"], case["alpha"])(x_ref.reshape(B * N, C), edge_index).view(B, N, C)
    out = GraphRefiner(g, K=case["K"], alpha=case["alpha"], backend=backend)(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)

    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_gcn_stack_backends_equal_pyg_gcnconv(backend):
    torch.manual_seed(0)
    g = SpatioTemporalGraph(3, 3, 2)
    B, N, C = 2, g.num_nodes, 8
    refiner = GraphRefiner(g, propagation="gcn", channels=C, num_layers=3, backend=backend)
    x = torch.randn(B, N, C, requires_grad=True)
    out = refiner(x)

    # The same stack applied with plain PyG layers on the batched edge list.
    edge_index, _ = g.batched_edges(B)
    h = x.reshape(B * N, C)
    for i, conv in enumerate(refiner.convs):
        assert isinstance(conv, GCNConv)
        h = conv(h, edge_index)
        if i < 2:
            h = torch.relu(h)
    torch.testing.assert_close(out, h.view(B, N, C), atol=1e-5, rtol=1e-5)
    grad_ours = torch.autograd.grad(out.sum(), refiner.convs[0].lin.weight)[0]
    grad_ref = torch.autograd.grad(h.sum(), refiner.convs[0].lin.weight)[0]
    torch.testing.assert_close(grad_ours, grad_ref, atol=1e-4, rtol=1e-5)


def test_gat_stack_matches_pyg_gatconv():
    torch.manual_seed(0)
    g = SpatioTemporalGraph(2, 2, 2)
    refiner = GraphRefiner(g, propagation="gat", channels=8, heads=2, num_layers=2)
    assert refiner.backend == "edge_index"
    x = torch.randn(3, 8, 8)
    edge_index, _ = g.batched_edges(3)
    h = x.reshape(24, 8)
    h = torch.nn.functional.elu(refiner.convs[0](h, edge_index))
    h = refiner.convs[1](h, edge_index)
    assert isinstance(refiner.convs[0], GATConv)
    torch.testing.assert_close(refiner(x), h.view(3, 8, 8))


def test_none_is_identity_and_defaults():
    g = SpatioTemporalGraph(2, 2, 2)
    x = torch.randn(1, 8, 4)
    assert GraphRefiner(g, propagation="none")(x) is x
    # the default is PyG's own layer on the batch's cached sparse adjacency
    assert default_backend("appnp") == "csr"
    assert default_backend("gcn") == "csr"
    assert default_backend("gat") == "edge_index"
    assert default_backend("SAGEConv") == "edge_index"
    assert "backend='csr'" in repr(GraphRefiner(g))


def test_refiner_learns_nothing_for_appnp():
    assert sum(p.numel() for p in GraphRefiner(SpatioTemporalGraph(4, 7, 7)).parameters()) == 0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(K=-1), "K must be an integer >= 0, got -1"),
        (dict(K=1.5), "K must be an integer >= 0"),
        (dict(alpha=0.0), r"alpha must be a number in \(0, 1\], got 0.0"),
        (dict(alpha=1.5), r"alpha must be a number in \(0, 1\], got 1.5"),
        (dict(backend="dense"), "backend must be one of"),
        (dict(propagation="sage"), "propagation must be one of"),
        (dict(propagation="gat", channels=8, backend="structured"), "supports backends"),
        (dict(propagation="gcn"), "needs channels"),
        (dict(propagation="gat", channels=10, heads=3), "divisible by heads"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GraphRefiner(SpatioTemporalGraph(2, 2, 2), **kwargs)


def test_bad_input_shapes():
    refiner = GraphRefiner(SpatioTemporalGraph(2, 2, 2))
    with pytest.raises(ValueError, match=r"expected node features of shape \(B, N=8, C\).*got \(8, 4\)"):
        refiner(torch.randn(8, 4))
    with pytest.raises(ValueError, match=r"got \(1, 9, 4\)"):
        refiner(torch.randn(1, 9, 4))
    gcn = GraphRefiner(SpatioTemporalGraph(2, 2, 2), propagation="gcn", channels=4)
    with pytest.raises(ValueError, match="expected 4 channels, got 5"):
        gcn(torch.randn(1, 8, 5))


def test_sparse_tensor_backend_without_torch_sparse(monkeypatch):
    monkeypatch.setattr("taggnn.utils.optional.has_torch_sparse", lambda: False)
    with pytest.raises(ImportError, match="needs torch-sparse.*pip install"):
        GraphRefiner(SpatioTemporalGraph(2, 2, 2), backend="sparse_tensor")
    # Everything else keeps working without it.
    GraphRefiner(SpatioTemporalGraph(2, 2, 2), backend="csr")(torch.randn(1, 8, 2))


@pytest.mark.skipif(not has_torch_sparse(), reason="torch-sparse not installed (optional extra)")
def test_sparse_tensor_backend_with_torch_sparse():
    import torch_sparse

    refiner = GraphRefiner(SpatioTemporalGraph(3, 2, 2), backend="sparse_tensor")
    refiner(torch.randn(2, 12, 3))
    (adj,) = refiner.propagation_backend.cache.values()
    assert isinstance(adj, torch_sparse.SparseTensor)


@pytest.mark.parametrize("propagation,backend", [("gcn", "structured"), ("gcn", "edge_index"), ("gat", "edge_index")])
def test_layer_outputs_end_with_forward(propagation, backend):
    torch.manual_seed(0)
    refiner = GraphRefiner(SpatioTemporalGraph(2, 2, 2), propagation=propagation, channels=8, heads=2,
                           num_layers=3, backend=backend)
    x = torch.randn(2, 8, 8)
    outputs = list(refiner.layer_outputs(x))
    assert len(outputs) == 3 and all(o.shape == (2, 8, 8) for o in outputs)
    torch.testing.assert_close(outputs[-1], refiner(x))
    with pytest.raises(ValueError, match="layer_outputs needs a convolution stack, this refiner is 'appnp'"):
        list(GraphRefiner(SpatioTemporalGraph(2, 2, 2)).layer_outputs(x))


def test_layer_outputs_validates_when_called():
    refiner = GraphRefiner(SpatioTemporalGraph(2, 2, 2), propagation="gcn", channels=4)
    with pytest.raises(ValueError):
        refiner.layer_outputs(torch.randn(1, 5, 4))  # no next() needed


def test_the_pyg_transform_is_registered_functionally():
    from torch_geometric.data import Data

    from taggnn.graph import SpatioTemporalGrid

    data = Data(x=torch.randn(8, 3))
    assert SpatioTemporalGrid(2, 2, 2)(data).edge_index.size(1) == SpatioTemporalGraph(2, 2, 2).num_edges
    assert hasattr(SpatioTemporalGrid, "__call__")


def test_default_backend_backward_reuses_the_cached_adjacency():
    """The csr back-end runs PyG's APPNP (SymmetricAPPNP subclasses it) and its backward pass
    multiplies by the cached symmetric adjacency again instead of sorting a transposed copy."""
    refiner = GraphRefiner(SpatioTemporalGraph(4, 4, 4))
    assert refiner.backend == "csr" and isinstance(refiner.appnp, APPNP)
    x = torch.randn(8, 64, 16, requires_grad=True)
    refiner(x)  # builds and caches the batch's adjacency
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        refiner(x).sum().backward()
    ops = {event.key for event in prof.key_averages()}
    assert "aten::_to_sparse_csr" not in ops and "aten::sort" not in ops
    expected = GraphRefiner(SpatioTemporalGraph(4, 4, 4), backend="structured")(x)
    torch.testing.assert_close(refiner(x), expected, atol=1e-5, rtol=1e-5)
