"""The graph-stage options: readouts, post-graph MLP, learned edge weights, any PyG conv,
the default forward through PyG, and LayerScale identity initialisation."""
import pytest
import torch
from torch_geometric.nn import APPNP
from torch_geometric.utils import add_self_loops

from taggnn.graph import SpatioTemporalGraph
from taggnn.nn import GraphReadout, GraphRefiner, TAGHead
from taggnn.utils import has_torch_sparse

BACKENDS = ["csr", "structured", "edge_index"] + (["sparse_tensor"] if has_torch_sparse() else [])


def _batch(B, N):
    return torch.arange(B).repeat_interleave(N), torch.arange(B + 1) * N


def test_readouts_equal_hand_written_references():
    torch.manual_seed(0)
    B, N, C = 3, 5, 4
    x = torch.randn(B, N, C)
    batch, ptr = _batch(B, N)
    flat = x.reshape(B * N, C)
    torch.testing.assert_close(GraphReadout("mean", C)(flat, batch, ptr, B), x.mean(1))
    torch.testing.assert_close(GraphReadout("max", C)(flat, batch, ptr, B), x.max(1).values)
    # softmax with t = 1 per channel: sum_n softmax_n(x) * x
    torch.testing.assert_close(GraphReadout("softmax", C)(flat, batch, ptr, B), (x.softmax(1) * x).sum(1))
    # power mean with p = 1 on PyG's clamp [1e-4, 100]
    torch.testing.assert_close(GraphReadout("powermean", C)(flat, batch, ptr, B), x.clamp(1e-4, 100).mean(1))
    attention = GraphReadout("attention", C)
    gate = attention.aggr.gate_nn(x)  # (B, N, 1)
    torch.testing.assert_close(attention(flat, batch, ptr, B), (gate.softmax(1) * x).sum(1))
    # Set2Set: each graph read out on its own equals the batched readout
    set2set = GraphReadout("set2set", C)
    alone = torch.cat([set2set(x[b], torch.zeros(N, dtype=torch.long), None, 1) for b in range(B)])
    torch.testing.assert_close(set2set(flat, batch, ptr, B), alone)
    with pytest.raises(ValueError, match="readout must be one of mean, max, softmax, powermean, attention"):
        GraphReadout("median", C)


def _weighted_edges(graph, B, weights):
    """The equivalent weighted edge list: typed edges plus self-loops of weight w_loop."""
    edge_index, edge_type = graph.batched_edges(B)
    edge_weight = weights[edge_type]
    edge_index, edge_weight = add_self_loops(edge_index, edge_weight, fill_value=weights[2],
                                             num_nodes=B * graph.num_nodes)
    return edge_index, edge_weight


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grid,intra,temporal", [((3, 2, 3), True, True), ((4, 2, 2), False, True),
                                                 ((2, 3, 3), True, False)])
def test_learned_edge_weights_equal_pyg_appnp_with_edge_weight(backend, grid, intra, temporal):
    torch.manual_seed(0)
    graph = SpatioTemporalGraph(*grid, intra="full" if intra else "none", temporal="aligned" if temporal else "none")
    refiner = GraphRefiner(graph, K=3, alpha=0.2, backend=backend, edge_weights="learned")
    with torch.no_grad():
        refiner.edge_log_weight.copy_(torch.tensor([0.4, -0.3, 0.9]))
    B, N, C = 2, graph.num_nodes, 5
    x = torch.randn(B, N, C, requires_grad=True)
    out = refiner(x)
    upstream = torch.randn_like(out)
    grad_x, grad_w = torch.autograd.grad((out * upstream).sum(), [x, refiner.edge_log_weight])

    x_ref = x.detach().clone().requires_grad_()
    log_w = torch.tensor([0.4, -0.3, 0.9], requires_grad=True)
    edge_index, edge_weight = _weighted_edges(graph, B, log_w.exp())
    ref = APPNP(3, 0.2)(x_ref.reshape(B * N, C), edge_index, edge_weight).view(B, N, C)
    ref_x, ref_w = torch.autograd.grad((ref * upstream).sum(), [x_ref, log_w])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_x, ref_x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_w, ref_w, atol=1e-5, rtol=1e-4)  # a missing edge type gets 0 in both


def test_learned_edge_weights_start_as_the_fixed_graph():
    graph = SpatioTemporalGraph(3, 2, 2)
    x = torch.randn(2, 12, 4)
    torch.testing.assert_close(GraphRefiner(graph, edge_weights="learned")(x), GraphRefiner(graph)(x))


CONVS = {
    "SAGEConv": {}, "GraphConv": {}, "GATv2Conv": {"heads": 2}, "TransformerConv": {"heads": 2}, "GINConv": {},
    "GINEConv": {}, "RGCNConv": {}, "FastRGCNConv": {}, "ResGatedGraphConv": {}, "GATConv": {"heads": 2},
}


@pytest.mark.parametrize("name", CONVS)
def test_any_pyg_conv_runs_forward_and_backward(name):
    torch.manual_seed(0)
    head = TAGHead(8, 3, (2, 2, 2), num_heads=2, ffn_dim=8, propagation=name, graph_kwargs=CONVS[name],
                   num_graph_layers=2, graph_residual=True)
    assert type(head.refiner.convs[0]).__name__ == name
    logits = head(torch.randn(2, 8, 2, 2, 2))
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert all(p.grad is not None for p in head.refiner.parameters())


def test_rgcn_sees_the_edge_types():
    torch.manual_seed(0)
    graph = SpatioTemporalGraph(3, 2, 2)
    refiner = GraphRefiner(graph, propagation="RGCNConv", channels=4, num_layers=1)
    x = torch.randn(2, 12, 4)
    out = refiner(x)
    real = graph.batched_edges

    class Swapped:
        def __getattr__(self, name):
            return getattr(graph, name)

        def batched_edges(self, B, device=None):
            edge_index, edge_type = real(B, device)
            return edge_index, 1 - edge_type  # IF-FC <-> TAT

        def check_node_features(self, x):
            graph.check_node_features(x)

    refiner.graph = Swapped()
    assert not torch.allclose(refiner(x), out, atol=1e-4)


def test_unknown_propagation_lists_the_choices():
    with pytest.raises(ValueError, match=r"propagation must be one of appnp, gcn, gat, none or the name of a "
                                         r"torch_geometric.nn convolution \(.*SAGEConv"):
        GraphRefiner(SpatioTemporalGraph(2, 2, 2), propagation="SageConv")
    with pytest.raises(ValueError, match="edge_weights='learned' needs propagation 'appnp' or 'gcn'"):
        GraphRefiner(SpatioTemporalGraph(2, 2, 2), propagation="gat", channels=8, edge_weights="learned")


def test_config_and_cli_accept_the_options():
    from taggnn.engine.config import ConfigError, load_config
    from taggnn.models import build_model_from_config

    config = load_config("synthgym_tiny", ["model.readout=attention", "model.post_graph=ffn",
                                           "model.edge_weights=learned", "model.propagation=appnp"])
    model = build_model_from_config(config, 16)
    assert model.head.readout.name == "attention" and model.head.post_graph is not None
    config = load_config("synthgym_tiny", ["model.propagation=TransformerConv", "model.graph_kwargs={heads: 4}"])
    assert build_model_from_config(config, 16).head.refiner.convs[0].heads == 4
    with pytest.raises(ConfigError, match="model.readout must be one of mean, max"):
        load_config("synthgym_tiny", ["model.readout=median"])
    with pytest.raises(ConfigError, match="model.graph_kwargs expects a mapping"):
        load_config("synthgym_tiny", ["model.graph_kwargs=[1, 2]"])


def test_the_default_forward_goes_through_a_pyg_batch_and_pyg_appnp(monkeypatch):
    head = TAGHead(16, 4, (3, 2, 2), num_heads=2, ffn_dim=16).eval()
    assert isinstance(head.refiner.appnp, APPNP) and head.refiner.backend == "csr"
    calls = {"appnp": 0, "batch": 0}
    real_forward, real_batch = APPNP.forward, SpatioTemporalGraph.batch

    def counted_forward(self, *args, **kwargs):
        calls["appnp"] += 1
        return real_forward(self, *args, **kwargs)

    def counted_batch(self, *args, **kwargs):
        calls["batch"] += 1
        return real_batch(self, *args, **kwargs)

    monkeypatch.setattr(APPNP, "forward", counted_forward)
    monkeypatch.setattr(SpatioTemporalGraph, "batch", counted_batch)
    features = torch.randn(2, 16, 3, 2, 2)
    out = head(features)
    assert calls == {"appnp": 1, "batch": 1}
    structured = TAGHead(16, 4, (3, 2, 2), num_heads=2, ffn_dim=16, backend="structured").eval()
    structured.load_state_dict(head.state_dict())
    torch.testing.assert_close(structured(features), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [dict(), dict(post_graph="ffn"), dict(propagation="gcn")])
def test_layer_scale_zero_starts_as_the_backbone_mean_pool(options):
    torch.manual_seed(0)
    full = TAGHead(16, 4, (3, 2, 2), num_heads=2, ffn_dim=16, layer_scale=0.0, **options).eval()
    plain = TAGHead(16, 4, (3, 2, 2), use_transformer=False, intra=False, temporal=False)
    plain.classifier.load_state_dict(full.classifier.state_dict())
    features = torch.randn(2, 16, 3, 2, 2)
    torch.testing.assert_close(full.forward_features(features), features.flatten(2).mean(2))
    torch.testing.assert_close(full(features), plain.eval()(features))
    # and it trains: every LayerScale gets a gradient at step 0
    full.train()
    full(features).sum().backward()
    assert full.transformer.gammas.grad.abs().sum() > 0 and full.pos_gamma.grad is not None
