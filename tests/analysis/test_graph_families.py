"""The analysis functions on every static edge family."""
import pytest
import torch

from taggnn.analysis import graph_sensitivity, pooled_token_weights
from taggnn.analysis.oversmoothing import dirichlet_energy
from taggnn.graph import SpatioTemporalGraph
from taggnn.nn import GraphRefiner, TAGHead

GRID = (3, 3, 4)
FAMILIES = [("full", "aligned"), ("none", "aligned"), ("grid4", "aligned"), ("grid8", "window:2"),
            ("radius:2", "cube:1"), ("grid4", "full"), ("full", "window:1:2")]


def _one_way(T, H, W):  # frame 0 sends to the last frame, nothing comes back
    P = H * W
    src = torch.arange(P)
    return torch.stack([src, src + (T - 1) * P]), torch.zeros(P, dtype=torch.long)


def _check_weights(head):
    torch.manual_seed(1)
    features = torch.randn(2, 8, *GRID)
    weights = pooled_token_weights(head)
    with torch.no_grad():
        expected = torch.einsum("n,bnc->bc", weights.float(), head.encode(features))
        torch.testing.assert_close(head.forward_pooled(features), expected, atol=1e-5, rtol=1e-5)
    return weights


@pytest.mark.parametrize("spatial,temporal", FAMILIES)
def test_pooled_token_weights_and_sensitivity_on_every_static_family(spatial, temporal):
    torch.manual_seed(0)
    head = TAGHead(8, 3, GRID, num_heads=2, ffn_dim=16, graph_spatial=spatial, graph_temporal=temporal).eval()
    _check_weights(head)
    sensitivity = graph_sensitivity(head, torch.randn(2, 8, *GRID))
    assert sensitivity["per_clip"].shape == (2,) and 0 <= sensitivity["mean"] < float("inf")
    attention = TAGHead(8, 3, GRID, num_heads=2, ffn_dim=16, graph_spatial=spatial, graph_temporal=temporal,
                        readout="attention").eval()
    assert graph_sensitivity(attention, torch.randn(2, 8, *GRID))["mean"] > 1e-3


def test_pooled_token_weights_of_one_way_edges_and_knn_graphs():
    """One-way (custom) edges: w = P^T 1 / N, not P 1 / N; kNN edges: no fixed weights."""
    torch.manual_seed(0)
    head = TAGHead(8, 3, GRID, num_heads=2, ffn_dim=16).eval()
    head.graph = SpatioTemporalGraph(*GRID, spatial="grid4", temporal="none", custom=_one_way)
    head.refiner = GraphRefiner(head.graph, K=2, alpha=0.1, channels=8)
    assert head.refiner.backend == "edge_index"
    weights = _check_weights(head)
    assert not torch.allclose(weights, head.refiner(torch.ones(1, 36, 8, dtype=torch.float32))[0, :, 0].double()
                              / 36, atol=1e-4)
    knn = TAGHead(8, 3, GRID, num_heads=2, ffn_dim=16, graph_dynamic="knn:3").eval()
    with pytest.raises(ValueError, match="knn:3 edges of this head are rebuilt from the tokens .* graph_sensitivity"):
        pooled_token_weights(knn)
    assert graph_sensitivity(knn, torch.randn(2, 8, *GRID))["mean"] > 0


@pytest.mark.parametrize("spatial,temporal", FAMILIES + [("none", "full"), ("radius:1.5:chebyshev", "none")])
def test_dirichlet_energy_sums_every_edge_of_the_family(spatial, temporal):
    torch.manual_seed(0)
    graph = SpatioTemporalGraph(*GRID, spatial=spatial, temporal=temporal)
    x = torch.randn(2, graph.num_nodes, 5, dtype=torch.float64)
    src, dst = graph.edge_index
    per_edge = 0.5 * (x[:, src] - x[:, dst]).pow(2).sum(-1)  # (B, E)
    same_frame = src // graph.num_sites == dst // graph.num_sites
    energy = dirichlet_energy(x, graph)
    torch.testing.assert_close(energy["within"], per_edge[:, same_frame].sum(1))
    torch.testing.assert_close(energy["across"], per_edge[:, ~same_frame].sum(1))
    torch.testing.assert_close(energy["total"], per_edge.sum(1))
