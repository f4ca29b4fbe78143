import pytest
import torch

from taggnn.analysis import graph_sensitivity, pooled_token_weights
from taggnn.nn import TAGHead

ROWS = {
    "B": dict(use_transformer=False, intra=False, temporal=False),
    "B+TE": dict(intra=False, temporal=False),
    "B+TE+IF-FC": dict(intra=True, temporal=False),
    "B+TE+TAT": dict(intra=False, temporal=True),
    "Full": dict(intra=True, temporal=True),
}


def head(grid, **options):
    torch.manual_seed(0)
    options = dict(dict(num_heads=4, ffn_dim=32), **options)
    return TAGHead(32, 5, grid, **options).eval()


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("grid", [(4, 7, 7), (8, 7, 7), (3, 2, 5), (1, 4, 4)])
@pytest.mark.parametrize("K", [1, 2, 10])
def test_weights_reproduce_forward_pooled(row, grid, K):
    h = head(grid, K=K, **ROWS[row])
    features = torch.randn(3, 32, *grid, dtype=torch.float64)
    h.double()
    w = pooled_token_weights(h)
    assert w.shape == (h.num_nodes,)
    expected = (h.encode(features) * w.view(1, -1, 1)).sum(1)
    torch.testing.assert_close(h.forward_pooled(features), expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("backend", ["csr", "structured", "edge_index"])
def test_weights_with_learned_edge_weights_and_every_backend(backend):
    h = head((4, 3, 3), edge_weights="learned", backend=backend).double()
    with torch.no_grad():
        h.refiner.edge_log_weight.copy_(torch.tensor([0.3, -0.7, 1.1]))
    features = torch.randn(2, 32, 4, 3, 3, dtype=torch.float64)
    w = pooled_token_weights(h)
    torch.testing.assert_close(h.forward_pooled(features), (h.encode(features) * w.view(1, -1, 1)).sum(1))


def test_if_fc_alone_is_exactly_uniform_and_appnp_deviates_below_1e_3():
    w = pooled_token_weights(head((8, 7, 7), **ROWS["B+TE+IF-FC"], K=10))
    assert float((w * w.numel() - 1).abs().max()) < 1e-12
    for K in (2, 10):
        w = pooled_token_weights(head((8, 7, 7), K=K))
        deviation = float((w * w.numel() - 1).abs().max())
        assert 1e-5 < deviation < 1.1e-3
    frames = pooled_token_weights(head((4, 7, 7), **ROWS["B+TE+TAT"])).view(4, -1) * 4 * 49
    torch.testing.assert_close(frames[:, 0], torch.tensor([0.905, 1.078, 1.078, 0.905], dtype=torch.float64),
                               atol=1e-3, rtol=0)


@pytest.mark.parametrize("options", [dict(readout="max"), dict(post_graph="ffn"), dict(propagation="gcn"),
                                     dict(propagation="SAGEConv")])
def test_non_linear_stages_have_no_token_weights(options):
    with pytest.raises(ValueError, match="needs a linear graph stage and the mean readout.*graph_sensitivity"):
        pooled_token_weights(head((2, 2, 2), **options))


def test_weights_with_a_layer_scale_gate_are_per_channel():
    h = head((3, 2, 2), layer_scale=0.5).double()
    features = torch.randn(2, 32, 3, 2, 2, dtype=torch.float64)
    w = pooled_token_weights(h)
    assert w.shape == (12, 32)
    torch.testing.assert_close(h.forward_pooled(features), (h.encode(features) * w.unsqueeze(0)).sum(1))


@pytest.mark.parametrize("readout", ["max", "softmax", "powermean", "attention", "set2set"])
def test_non_linear_readouts_let_the_graph_count(readout):
    features = torch.randn(4, 32, 4, 7, 7)
    mean = graph_sensitivity(head((4, 7, 7)), features)
    other = graph_sensitivity(head((4, 7, 7), readout=readout), features)
    assert mean["mean"] < 1e-3 and mean["per_clip"].shape == (4,)
    assert other["mean"] >= 0.01, other["mean"]


def test_post_graph_ffn_lets_the_graph_count_with_the_mean_readout():
    features = torch.randn(4, 32, 4, 7, 7)
    assert graph_sensitivity(head((4, 7, 7), post_graph="ffn"), features)["mean"] >= 0.01


def test_sensitivity_is_zero_without_a_graph_and_restores_the_head():
    h = head((2, 3, 3), **ROWS["B+TE"])
    assert graph_sensitivity(h, torch.randn(2, 32, 2, 3, 3))["max"] == 0
    full = head((2, 3, 3))
    refiner = full.refiner
    graph_sensitivity(full, torch.randn(2, 32, 2, 3, 3))
    assert full.refiner is refiner
