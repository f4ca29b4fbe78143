"""The edge families in the graph stage: every family on every back-end that accepts it equals PyG on the
same edges, kNN edges per forward, edge features through convolution stacks, learned weights of every edge
type, the head's and the config's options."""
import pytest
import torch
from torch_geometric.nn import APPNP, GCNConv, TransformerConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import add_self_loops

from taggnn.errors import ConfigError
from taggnn.graph import SpatioTemporalGraph, structured_appnp, structured_propagate
from taggnn.graph.dynamic import knn_edges_dense
from taggnn.graph.structured import weighted_propagate
from taggnn.nn import GraphRefiner, TAGHead
from taggnn.nn.backends import backend_names, get_backend
from taggnn.utils import has_torch_sparse

GRID = (3, 3, 4)
#: (spatial, temporal): the paper's four Table 4 graphs and the other families
STATIC = [("full", "aligned"), ("none", "aligned"), ("full", "none"), ("none", "none"), ("grid4", "aligned"),
          ("grid8", "window:2"), ("radius:2", "cube:1"), ("radius:1.5:chebyshev", "window:1:2"), ("grid4", "full"),
          ("full", "window:2"), ("full", "full")]
PAPER = {("full", "aligned"), ("none", "aligned"), ("full", "none"), ("none", "none")}
BACKENDS = [name for name in backend_names() if name != "sparse_tensor" or has_torch_sparse()]


def _accepts(backend, graph):
    try:
        get_backend(backend).check_graph(graph)
    except ConfigError:
        return False
    return True


def test_which_backend_accepts_which_family():
    for spatial, temporal in STATIC:
        graph = SpatioTemporalGraph(*GRID, spatial=spatial, temporal=temporal)
        accepted = {name for name in BACKENDS if _accepts(name, graph)}
        expected = set(BACKENDS) - (set() if (spatial, temporal) in PAPER else {"structured"})
        assert accepted == expected, (spatial, temporal)
    dynamic = SpatioTemporalGraph(*GRID, spatial="grid8", dynamic="knn:3")
    assert {name for name in BACKENDS if _accepts(name, dynamic)} == {"edge_index"}
    with pytest.raises(ConfigError, match="backend 'csr' caches one adjacency per graph, but the knn:3 edges"):
        GraphRefiner(dynamic, backend="csr")
    with pytest.raises(ConfigError, match="backend 'stencil' needs a translation-invariant graph"):
        GraphRefiner(dynamic, backend="stencil")


@pytest.mark.parametrize("stage", ["appnp", "gcn"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spatial,temporal", STATIC)
def test_every_family_on_every_backend_equals_pyg(spatial, temporal, backend, stage):
    graph = SpatioTemporalGraph(*GRID, spatial=spatial, temporal=temporal)
    if not _accepts(backend, graph):
        pytest.skip(f"{backend} refuses {spatial}+{temporal} (test_which_backend_accepts_which_family)")
    torch.manual_seed(0)
    B, N, C = 2, graph.num_nodes, 6
    if stage == "appnp":
        refiner = GraphRefiner(graph, K=3, alpha=0.2, backend=backend)
        reference = APPNP(3, 0.2)
    else:
        refiner = GraphRefiner(graph, propagation="gcn", channels=C, num_layers=1, backend=backend)
        reference = GCNConv(C, C)
        reference.load_state_dict(refiner.convs[0].state_dict())
    x = torch.randn(B, N, C, requires_grad=True)
    out = refiner(x)
    upstream = torch.randn_like(out)
    grad = torch.autograd.grad((out * upstream).sum(), [x] + list(refiner.parameters()))

    x_ref = x.detach().clone().requires_grad_()
    edge_index, _ = graph.batched_edges(B)
    ref = reference(x_ref.reshape(B * N, C), edge_index).view(B, N, C)
    ref_grad = torch.autograd.grad((ref * upstream).sum(), [x_ref] + list(reference.parameters()))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for got, expected in zip(grad, ref_grad):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _weighted_reference(x, edge_index, edge_type, weights, K=3, alpha=0.2):
    """PyG's APPNP with edge_weight = w[edge type] and self-loops of weight w[2]."""
    B, N, C = x.shape
    edge_index, edge_weight = add_self_loops(edge_index, weights[edge_type], fill_value=weights[2],
                                             num_nodes=B * N)
    return APPNP(K, alpha)(x.reshape(B * N, C), edge_index, edge_weight).view(B, N, C)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spatial,temporal", [("grid8", "window:2"), ("radius:2", "cube:1"), ("full", "full")])
def test_learned_edge_weights_on_other_families_equal_pyg(spatial, temporal, backend):
    graph = SpatioTemporalGraph(*GRID, spatial=spatial, temporal=temporal)
    if not _accepts(backend, graph):
        pytest.skip(f"{backend} refuses {spatial}+{temporal}")
    torch.manual_seed(0)
    refiner = GraphRefiner(graph, K=3, alpha=0.2, backend=backend, edge_weights="learned")
    with torch.no_grad():
        refiner.edge_log_weight.copy_(torch.tensor([0.4, -0.3, 0.9]))
    x = torch.randn(2, graph.num_nodes, 5, requires_grad=True)
    out = refiner(x)
    grad_x, grad_w = torch.autograd.grad(out.square().sum(), [x, refiner.edge_log_weight])
    x_ref = x.detach().clone().requires_grad_()
    log_w = torch.tensor([0.4, -0.3, 0.9], requires_grad=True)
    ref = _weighted_reference(x_ref, *graph.batched_edges(2), log_w.exp())
    ref_x, ref_w = torch.autograd.grad(ref.square().sum(), [x_ref, log_w])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_x, ref_x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_w, ref_w, atol=1e-5, rtol=1e-4)


def test_knn_edges_are_rebuilt_from_each_input_and_weighted_as_type_3():
    torch.manual_seed(0)
    graph = SpatioTemporalGraph(*GRID, spatial="grid4", temporal="aligned", dynamic="knn:3")
    fixed = GraphRefiner(graph, K=3, alpha=0.2)
    learned = GraphRefiner(graph, K=3, alpha=0.2, edge_weights="learned")
    assert fixed.backend == learned.backend == "edge_index"
    assert learned.edge_log_weight.shape == (4,)  # spatial, temporal, self-loop, kNN
    log_w = torch.tensor([0.2, -0.5, 0.3, 1.1])
    with torch.no_grad():
        learned.edge_log_weight.copy_(log_w)
    static_index, static_type = graph.batched_edges(2)
    for _ in range(2):  # two inputs, two kNN graphs
        x = torch.randn(2, graph.num_nodes, 5)
        knn = knn_edges_dense(x, 3)
        edge_index = torch.cat([static_index, knn], dim=1)
        edge_type = torch.cat([static_type, torch.full((knn.size(1),), 3)])
        expected = APPNP(3, 0.2)(x.reshape(-1, 5), edge_index).view_as(x)
        torch.testing.assert_close(fixed(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(learned(x), _weighted_reference(x, edge_index, edge_type, log_w.exp()),
                                   atol=1e-5, rtol=1e-5)
        assert not torch.allclose(fixed(x), APPNP(3, 0.2)(x.reshape(-1, 5), static_index).view_as(x), atol=1e-3)


def _one_way(T, H, W):  # each node of frame 0 sends to the same site of the last frame, not back
    P = H * W
    src = torch.arange(P)
    return torch.stack([src, src + (T - 1) * P]), torch.zeros(P, dtype=torch.long)


def _both_ways(T, H, W):
    edge_index, edge_type = _one_way(T, H, W)
    return torch.cat([edge_index, edge_index.flip(0)], 1), torch.cat([edge_type, edge_type + 1])


def test_custom_families_one_way_edges_and_custom_edge_types():
    torch.manual_seed(0)
    x = torch.randn(2, 36, 4)
    one_way = SpatioTemporalGraph(*GRID, spatial="grid4", temporal="none", custom=_one_way)
    with pytest.raises(ConfigError, match="backend 'csr' needs a symmetric graph"):
        GraphRefiner(one_way, backend="csr")
    with pytest.raises(ConfigError, match="backend 'stencil' needs a translation-invariant graph"):
        GraphRefiner(one_way, backend="stencil")
    refiner = GraphRefiner(one_way, K=2, alpha=0.1)
    assert refiner.backend == "edge_index"
    expected = APPNP(2, 0.1)(x.reshape(-1, 4), one_way.batched_edges(2)[0]).view_as(x)
    torch.testing.assert_close(refiner(x), expected, atol=1e-5, rtol=1e-5)

    both = SpatioTemporalGraph(*GRID, spatial="grid4", temporal="none", custom=_both_ways)
    learned = {name: GraphRefiner(both, K=2, alpha=0.1, backend=name, edge_weights="learned")
               for name in ("csr", "edge_index")}
    log_w = torch.tensor([0.3, 0.0, -0.2, 0.0, 0.7, -0.6])  # types 0-3, then custom 4, 5
    for refiner in learned.values():
        assert refiner.edge_log_weight.shape == (6,)
        with torch.no_grad():
            refiner.edge_log_weight.copy_(log_w)
    expected = _weighted_reference(x, *both.batched_edges(2), log_w.exp(), K=2, alpha=0.1)
    for name, refiner in learned.items():
        torch.testing.assert_close(refiner(x), expected, atol=1e-5, rtol=1e-5, msg=name)


def test_structured_products_refuse_other_families():
    """They computed the paper's graph whatever the graph said (grid8 as no spatial edges at all)."""
    x = torch.randn(1, 36, 3)
    for spatial, temporal in [("grid8", "aligned"), ("full", "window:2"), ("none", "full")]:
        graph = SpatioTemporalGraph(*GRID, spatial=spatial, temporal=temporal)
        for call in (lambda: structured_propagate(x, graph), lambda: structured_appnp(x, graph, 2, 0.1),
                     lambda: weighted_propagate(x, graph, torch.ones(3))):
            with pytest.raises(ConfigError, match="computes the paper's IF-FC .* use taggnn.graph.stencil"):
                call()


def test_edge_attr_reaches_convolutions_with_edge_dim():
    torch.manual_seed(0)
    graph = SpatioTemporalGraph(*GRID, spatial="grid8", temporal="window:2", edge_attr=("offset", "type"))
    refiner = GraphRefiner(graph, propagation="TransformerConv", channels=8, num_layers=1,
                           conv_kwargs={"heads": 2})
    conv = refiner.convs[0]
    assert conv.lin_edge.in_channels == graph.edge_dim == 3 + 4
    x = torch.randn(2, graph.num_nodes, 8)
    edge_index, edge_type = graph.batched_edges(2)
    reference = TransformerConv(8, 4, heads=2, edge_dim=graph.edge_dim)
    reference.load_state_dict(conv.state_dict())
    expected = reference(x.reshape(-1, 8), edge_index, graph.edge_attr_for(edge_index, edge_type)).view_as(x)
    torch.testing.assert_close(refiner(x), expected, atol=1e-5, rtol=1e-5)
    # kNN edges get their offsets and type (3) too
    dynamic = graph.with_options(dynamic="knn:2")
    out = GraphRefiner(dynamic, propagation="GATv2Conv", channels=8, num_layers=1, conv_kwargs={"heads": 2})(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    for propagation in ("appnp", "gcn", "SAGEConv"):
        with pytest.raises(ConfigError, match=f"edge_dim argument .* but propagation '{propagation}' takes no edge"):
            GraphRefiner(graph, propagation=propagation, channels=8)


FAMILIES = [dict(), dict(graph_spatial="grid8", graph_temporal="window:2"),
            dict(graph_spatial="radius:2", graph_temporal="cube:1"), dict(graph_spatial="grid4", graph_temporal="full"),
            dict(graph_dynamic="knn:4"), dict(graph_spatial="none", graph_temporal="none", graph_dynamic="knn:4"),
            dict(graph_spatial="grid8", propagation="TransformerConv", graph_edge_attr="offset+type",
                 graph_kwargs={"heads": 2}),
            dict(graph_spatial="grid4", graph_dynamic="knn:2", propagation="GINEConv", graph_edge_attr="offset"),
            dict(graph_spatial="grid8", graph_temporal="window:2", edge_weights="learned")]


@pytest.mark.parametrize("options", FAMILIES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "paper")
def test_head_forward_backward_with_each_family(options):
    torch.manual_seed(0)
    head = TAGHead(8, 3, GRID, num_heads=2, ffn_dim=16, **options)
    logits = head(torch.randn(2, 8, *GRID))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters() if p.requires_grad)
    graph = head.graph
    assert graph.spatial == options.get("graph_spatial", "full")
    assert graph.temporal == options.get("graph_temporal", "aligned")
    assert graph.dynamic == options.get("graph_dynamic")
    paper = (graph.spatial, graph.temporal) in PAPER and graph.dynamic is None
    local = not paper and graph.dynamic is None and "full" not in (graph.spatial, graph.temporal)
    if options.get("propagation", "appnp") == "appnp":  # the recommended back-end
        assert head.refiner.backend == ("csr" if paper or not local and graph.dynamic is None
                                        else "stencil" if local else "edge_index")


def test_table4_switches_override_the_families_and_the_paper_graph_is_the_default():
    assert TAGHead(8, 3, GRID, num_heads=2).graph == SpatioTemporalGraph(*GRID)
    no_spatial = TAGHead(8, 3, GRID, num_heads=2, intra=False, graph_spatial="grid8", graph_temporal="window:2")
    assert (no_spatial.graph.spatial, no_spatial.graph.temporal) == ("none", "window:2")
    no_temporal = TAGHead(8, 3, GRID, num_heads=2, temporal=False, graph_spatial="grid8", graph_temporal="window:2")
    assert (no_temporal.graph.spatial, no_temporal.graph.temporal) == ("grid8", "none")
    assert TAGHead(8, 3, GRID, num_heads=2, intra=False, temporal=False, graph_spatial="grid8").refiner is None
    torch.manual_seed(0)
    default = TAGHead(8, 3, GRID, num_heads=2, ffn_dim=16)
    torch.manual_seed(0)
    explicit = TAGHead(8, 3, GRID, num_heads=2, ffn_dim=16, graph_spatial="full", graph_temporal="aligned")
    features = torch.randn(2, 8, *GRID)
    assert torch.equal(default.eval()(features), explicit.eval()(features))
    with pytest.raises(ConfigError, match="graph_spatial must be one of"):
        TAGHead(8, 3, GRID, num_heads=2, graph_spatial="grid9")


def test_config_keys_reach_the_model_and_bad_values_name_the_key():
    from taggnn.engine.config import load_config
    from taggnn.models import build_model_from_config

    config = load_config("synthgym_tiny", ["model.graph_spatial=grid8", "model.graph_temporal=window:2"])
    head = build_model_from_config(config, 16).head
    assert (head.graph.spatial, head.graph.temporal, head.refiner.backend) == ("grid8", "window:2", "stencil")
    config = load_config("synthgym_tiny", ["model.graph_dynamic=knn:4", "model.propagation=TransformerConv",
                                           "model.graph_edge_attr=offset", "model.graph_kwargs={heads: 4}"])
    head = build_model_from_config(config, 16).head
    assert head.graph.dynamic == "knn:4" and head.graph.edge_attr_kinds == ("offset",)
    for override, message in [
            ("model.graph_spatial=grid9", "model.graph_spatial must be one of"),
            ("model.graph_temporal=window:0", "model.graph_temporal must be one of .* must be >= 1"),
            ("model.graph_dynamic=knn", "model.graph_dynamic must be one of"),
            ("model.graph_edge_attr=angle", "model.graph_edge_attr must be one of none, offset, type, offset\\+type"),
            ("model.graph_edge_attr=offset", "model.graph_edge_attr='offset' gives edge features, which only a "
                                             "convolution with an edge_dim argument reads"),
    ]:
        with pytest.raises(ConfigError, match=message) as error:
            load_config("synthgym_tiny", [override])
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="backend 'structured' computes the paper's IF-FC"):
        load_config("synthgym_tiny", ["model.graph_spatial=grid8", "model.backend=structured"])


def test_adj_t_of_one_way_edges_is_pygs_adj_t():
    """adj_t[target, source]: PyG's layout, which the edge list's direction decides (it was transposed)."""
    graph = SpatioTemporalGraph(*GRID, spatial="none", temporal="none", custom=_one_way)
    x = torch.randn(graph.num_nodes, 3)
    edge_index, edge_weight = gcn_norm(graph.edge_index, None, graph.num_nodes)
    expected = torch.zeros_like(x).index_add_(0, edge_index[1], x[edge_index[0]] * edge_weight[:, None])
    torch.testing.assert_close(graph.adj_t().to_dense() @ x, expected)
