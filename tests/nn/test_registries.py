"""The graph stage as parts: readout / propagation / back-end registries, the replaceable graph and
back-end of a refiner, learned edge weights as a module, and checkpoint keys."""
import types

import pytest
import torch
from torch import nn
from torch_geometric.nn import aggr
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.resolver import aggregation_resolver

from taggnn.errors import ConfigError
from taggnn.graph import SpatioTemporalGraph
from taggnn.nn import (
    BACKENDS,
    PROPAGATIONS,
    READOUTS,
    SUPPORTED_BACKENDS,
    GraphReadout,
    GraphRefiner,
    StructuredBackend,
    TAGHead,
    backend_names,
    propagation_names,
    readout_names,
    register_propagation,
    register_readout,
)
from taggnn.nn.backends import PropagationBackend, register_backend, unregister_backend
from taggnn.nn.propagation import unregister_propagation
from taggnn.nn.readout import unregister_readout
from taggnn.utils import has_torch_sparse

EXACT_BACKENDS = ["structured", "csr", "edge_index"] + (["sparse_tensor"] if has_torch_sparse() else [])


@pytest.fixture
def median_readout():
    """A readout added by one registration, here in the test file."""
    register_readout("median", lambda channels: aggregation_resolver("median"), needs_channels=False)
    yield "median"
    unregister_readout("median")


class TwoHop(nn.Module):
    """Two parameter-free steps of the normalised adjacency: A_hat @ A_hat @ X."""

    is_linear = True

    def forward(self, x, graph, backend, weights=None):
        return backend.propagate(backend.propagate(x, graph, weights), graph, weights)


@pytest.fixture
def twohop():
    register_propagation("twohop", lambda options: TwoHop(), learned_edge_weights=True)  # every back-end
    yield "twohop"
    unregister_propagation("twohop")


class DenseBackend(PropagationBackend):
    """A back-end added in a test: the dense normalised adjacency of one clip."""

    name = "dense"

    def check_graph(self, graph):
        if graph.num_nodes > 64:
            raise ValueError(f"dense: at most 64 nodes, got {graph.num_nodes}")

    def propagate(self, x, graph, weights=None):
        return graph.adj_t(1, dtype=x.dtype).to_dense() @ x  # (N, N) @ (B, N, C)


@pytest.fixture
def dense_backend():
    register_backend(DenseBackend)
    yield "dense"
    unregister_backend("dense")


def test_a_backend_registered_later_serves_the_normalised_propagations(dense_backend):
    torch.manual_seed(0)
    graph = SpatioTemporalGraph(3, 2, 2)
    x = torch.randn(2, graph.num_nodes, 4)
    for propagation in ("appnp", "gcn"):
        refiner = GraphRefiner(graph, propagation=propagation, channels=4, K=3, backend="dense")
        reference = GraphRefiner(graph, propagation=propagation, channels=4, K=3, backend="csr")
        reference.load_state_dict(refiner.state_dict())
        torch.testing.assert_close(refiner(x), reference(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="propagation 'gat' supports backends"):
        GraphRefiner(graph, propagation="gat", channels=4, heads=2, backend="dense")
    with pytest.raises(ValueError, match="dense: at most 64 nodes, got 98"):
        GraphRefiner(SpatioTemporalGraph(2, 7, 7), backend="dense")


def test_the_constants_are_the_registries_built_ins():
    assert READOUTS == readout_names() == ("mean", "max", "softmax", "powermean", "attention", "set2set")
    assert PROPAGATIONS == propagation_names() == ("appnp", "gcn", "gat", "none")
    assert BACKENDS == backend_names() == ("edge_index", "csr", "sparse_tensor", "structured", "stencil")
    assert SUPPORTED_BACKENDS == {"appnp": ("csr", "edge_index", "sparse_tensor", "structured", "stencil"),
                                  "gcn": ("csr", "edge_index", "sparse_tensor", "structured", "stencil"),
                                  "gat": ("edge_index",), "none": BACKENDS}
    with pytest.raises(ValueError, match="already registered"):
        register_readout("mean", lambda channels: aggr.MeanAggregation())


def test_a_registered_readout_is_a_config_choice_and_trains(median_readout):
    from taggnn.engine.config import ConfigError as EngineConfigError
    from taggnn.engine.config import load_config
    from taggnn.models import build_model_from_config

    torch.manual_seed(0)
    B, N, C = 3, 5, 4
    x = torch.randn(B, N, C)
    batch, ptr = torch.arange(B).repeat_interleave(N), torch.arange(B + 1) * N
    out = GraphReadout("median", C)(x.reshape(B * N, C), batch, ptr, B)
    torch.testing.assert_close(out, x.median(1).values)  # odd N: the middle value

    config = load_config("synthgym_tiny", ["model.readout=median", "model.ffn_dim=32"])
    head = build_model_from_config(config, 4, load_weights=False).head
    assert head.readout.name == "median"
    features = torch.randn(2, head.in_channels, *head.grid)
    labels = torch.tensor([1, 3])
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(head(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    unregister_readout("median")
    with pytest.raises(EngineConfigError, match="model.readout must be one of mean, max"):
        load_config("synthgym_tiny", ["model.readout=median"])


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_a_registered_propagation_runs_on_every_backend(twohop, backend):
    torch.manual_seed(0)
    graph = SpatioTemporalGraph(3, 2, 2)
    B, N, C = 2, graph.num_nodes, 3
    x = torch.randn(B, N, C)
    refiner = GraphRefiner(graph, propagation="twohop", backend=backend)
    edge_index, edge_weight = gcn_norm(graph.batched_edges(B)[0], None, B * N, add_self_loops=True)
    a_hat = torch.sparse_coo_tensor(edge_index.flip(0), edge_weight, (B * N, B * N)).to_dense()
    expected = (a_hat @ a_hat @ x.reshape(B * N, C)).view(B, N, C)
    torch.testing.assert_close(refiner(x), expected, atol=1e-5, rtol=1e-5)
    assert refiner.is_linear
    head = TAGHead(8, 3, (3, 2, 2), num_heads=2, ffn_dim=8, propagation="twohop", backend=backend)
    assert head(torch.randn(2, 8, 3, 2, 2)).shape == (2, 3)


def test_learned_edge_weights_are_parameters_not_a_fixed_map():
    graph = SpatioTemporalGraph(3, 2, 2)
    fixed, learned = GraphRefiner(graph), GraphRefiner(graph, edge_weights="learned")
    assert fixed.is_linear and fixed.is_parameter_free
    assert not learned.is_parameter_free and not learned.is_linear
    assert learned.is_linear_map  # linear in the tokens for the current weights
    assert [name for name, _ in learned.named_parameters()] == ["type_weights.log_weight"]
    assert not GraphRefiner(graph, propagation="gcn", channels=4).is_linear


def test_checkpoints_with_the_former_edge_weight_key_load():
    torch.manual_seed(0)
    head = TAGHead(8, 3, (3, 2, 2), num_heads=2, ffn_dim=8, edge_weights="learned")
    state = head.state_dict()
    state["refiner.edge_log_weight"] = torch.tensor([0.5, -0.5, 0.25])  # the key before EdgeTypeWeights
    del state["refiner.type_weights.log_weight"]
    fresh = TAGHead(8, 3, (3, 2, 2), num_heads=2, ffn_dim=8, edge_weights="learned")
    fresh.load_state_dict(state)  # strict
    torch.testing.assert_close(fresh.refiner.edge_log_weight.detach(), torch.tensor([0.5, -0.5, 0.25]))


def test_state_dict_keys_of_the_graph_stages_are_unchanged():
    def keys(**options):
        head = TAGHead(8, 3, (2, 2, 2), num_heads=2, ffn_dim=8, num_graph_layers=1, **options)
        return sorted(k for k in head.state_dict() if k.startswith(("refiner.", "readout.")))

    assert keys() == []
    assert keys(propagation="gcn") == ["refiner.convs.0.bias", "refiner.convs.0.lin.weight"]
    assert keys(propagation="SAGEConv") == ["refiner.convs.0.lin_l.bias", "refiner.convs.0.lin_l.weight",
                                            "refiner.convs.0.lin_r.weight"]
    assert keys(readout="set2set") == ["readout.aggr.lstm.bias_hh_l0", "readout.aggr.lstm.bias_ih_l0",
                                       "readout.aggr.lstm.weight_hh_l0", "readout.aggr.lstm.weight_ih_l0",
                                       "readout.project.bias", "readout.project.weight"]
    assert keys(readout="softmax") == ["readout.aggr.t"]


def test_structured_backend_refuses_other_edge_families():
    grid4 = types.SimpleNamespace(intra="grid4", temporal="aligned")
    with pytest.raises(ConfigError, match="backend 'structured' computes the paper's IF-FC .* got spatial 'grid4'"):
        StructuredBackend().check_graph(grid4)
    refiner = GraphRefiner(SpatioTemporalGraph(2, 2, 2), backend="structured")
    with pytest.raises(ValueError, match=r"use backend 'stencil' \(local families\), 'csr' or 'edge_index'"):
        refiner.graph = grid4
    assert refiner.graph == SpatioTemporalGraph(2, 2, 2)  # unchanged
    StructuredBackend().check_graph(SpatioTemporalGraph(2, 2, 2, intra="none"))


def test_the_backend_can_be_switched_and_refuses_unsupported_ones():
    torch.manual_seed(0)
    graph = SpatioTemporalGraph(3, 2, 2)
    x = torch.randn(2, 12, 4)
    refiner = GraphRefiner(graph, K=4)
    expected = refiner(x)
    refiner.backend = "structured"
    assert refiner.backend == "structured" and "backend='structured'" in repr(refiner)
    torch.testing.assert_close(refiner(x), expected, atol=1e-5, rtol=1e-5)
    gat = GraphRefiner(graph, propagation="gat", channels=4, heads=2)
    with pytest.raises(ValueError, match="propagation 'gat' supports backends"):
        gat.backend = "structured"


@pytest.mark.skipif(not has_torch_sparse(), reason="torch-sparse not installed (optional extra)")
def test_set_grid_reaches_a_cached_backend_through_the_graph():
    torch.manual_seed(0)
    options = dict(num_heads=2, ffn_dim=8, use_transformer=False)
    head = TAGHead(8, 3, (2, 2, 2), backend="sparse_tensor", **options).eval()
    head(torch.randn(2, 8, 2, 2, 2))  # caches the (2, 2, 2) adjacency
    head.set_grid((3, 2, 2))
    assert head.refiner.graph.grid == (3, 2, 2)
    reference = TAGHead(8, 3, (3, 2, 2), backend="structured", **options).eval()
    reference.load_state_dict(head.state_dict())
    features = torch.randn(2, 8, 3, 2, 2)
    torch.testing.assert_close(head(features), reference(features), atol=1e-5, rtol=1e-5)
