import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from taggnn.nn import GraphRefiner, TAGHead, TokenTransformer
from taggnn.study.rows import TABLE4, model_options

GRID = (2, 3, 3)
C = 16

# Table 4 rows (taggnn.study.rows): (use_transformer, intra, temporal) -> which modules exist
ROWS = {row: {"use_transformer": True, "intra": True, "temporal": True, **model_options(row)} for row in TABLE4}


def make_head(**kwargs):
    torch.manual_seed(0)
    options = dict(num_heads=4, ffn_dim=32, dropout=0.0)
    options.update(kwargs)
    return TAGHead(C, 5, GRID, **options)


@pytest.mark.parametrize("row", list(ROWS))
def test_ablation_rows(row):
    head = make_head(**ROWS[row])
    features = torch.randn(3, C, *GRID)
    assert head(features).shape == (3, 5)
    names = {name.split(".")[0] for name, _ in head.named_parameters()}
    expected = {"classifier"}
    if ROWS[row]["use_transformer"]:
        expected |= {"pos_embed", "transformer"}
    assert names == expected
    has_graph = ROWS[row]["intra"] or ROWS[row]["temporal"]
    assert (head.refiner is not None) == has_graph
    if has_graph:
        assert head.graph.intra == ("full" if ROWS[row]["intra"] else "none")
        assert head.graph.temporal == ("aligned" if ROWS[row]["temporal"] else "none")


def test_b_row_is_pool_and_linear():
    head = make_head(**ROWS["B"])
    features = torch.randn(2, C, *GRID)
    expected = head.classifier(features.mean(dim=(2, 3, 4)))
    torch.testing.assert_close(head(features), expected)


def test_full_head_equals_its_parts():
    head = make_head().eval()
    features = torch.randn(2, C, *GRID)
    tokens = features.flatten(2).transpose(1, 2)  # (B, N, C), node id t*H*W + y*W + x
    assert torch.equal(tokens[0, 1 * 9 + 2 * 3 + 1], features[0, :, 1, 2, 1])
    z = head.transformer(head.pos_embed(tokens))
    refined = GraphRefiner(head.graph, backend="edge_index")(z)
    torch.testing.assert_close(head(features), head.classifier(refined.mean(1)), atol=1e-5, rtol=1e-5)


def test_gradients_reach_positions_and_inputs():
    head = make_head()
    features = torch.randn(2, C, *GRID, requires_grad=True)
    head(features).sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert head.pos_embed.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in head.parameters())


@pytest.mark.parametrize("propagation", ["appnp", "gcn", "gat", "none"])
def test_propagation_choices(propagation):
    head = make_head(propagation=propagation, graph_heads=4)
    assert head(torch.randn(2, C, *GRID)).shape == (2, 5)
    assert (head.refiner is None) == (propagation == "none")


def test_forward_features_head_and_reset_classifier():
    head = make_head(pre_classifier_norm=True)
    features = torch.randn(2, C, *GRID)
    pooled = head.forward_features(features)
    assert pooled.shape == (2, C)
    torch.testing.assert_close(head.classify(pooled), head(features))
    assert isinstance(head.norm, nn.LayerNorm)
    head.reset_classifier(11)
    assert head(features).shape == (2, 11) and head.num_classes == 11
    head.reset_classifier(0)
    assert head(features).shape == (2, C)


def test_graph_batch_for_analysis():
    head = make_head().eval()
    features = torch.randn(3, C, *GRID)
    batch = head.graph_batch(features)
    assert isinstance(batch, Batch) and batch.num_graphs == 3
    assert batch.x.shape == batch.h0.shape == (3 * 18, C)
    assert batch.pos.shape == (54, 3)
    torch.testing.assert_close(batch.x.view(3, 18, C), head.forward_nodes(features))
    torch.testing.assert_close(batch.h0.view(3, 18, C), head.encode(features))


def test_set_grid_interpolates_and_runs_longer_clips():
    head = make_head()
    head.set_grid((4, 3, 3))
    assert head.pos_embed.weight.shape == (4, 3, 3, C)
    assert head.graph.grid == (4, 3, 3) and head.refiner.graph.grid == (4, 3, 3)
    assert head(torch.randn(1, C, 4, 3, 3)).shape == (1, 5)


def test_transformer_parameter_count_of_table5():
    # Paper Table 5: 2 layers, d=512, 8 heads, FFN 2048 -> 6,304,768 (+ 4*49*512 table = 6.41M)
    head = TAGHead(512, 0, (4, 7, 7), ffn_dim=2048)
    assert sum(p.numel() for p in head.transformer.parameters()) == 6_304_768
    assert head.pos_embed.weight.numel() == 100_352
    assert sum(p.numel() for p in head.parameters()) == 6_405_120


def test_pre_and_post_norm():
    torch.manual_seed(0)
    pre = TokenTransformer(8, num_heads=2, ffn_dim=16, dropout=0.0)
    post = TokenTransformer(8, num_heads=2, ffn_dim=16, dropout=0.0, norm_first=False)
    assert pre.layers[0].norm_first and not post.layers[0].norm_first
    x = torch.randn(2, 5, 8)
    layer = pre.layers[0]
    u = x + layer.self_attn(layer.norm1(x), layer.norm1(x), layer.norm1(x), need_weights=False)[0]
    expected = u + layer.linear2(torch.relu(layer.linear1(layer.norm2(u))))
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    assert "norm=post" in repr(post)


def test_bad_features():
    head = make_head()
    with pytest.raises(ValueError,
                       match=r"expected backbone features of shape \(B, C=16, T=2, H=3, W=3\), got \(2, 16, 3, 3\)"):
        head(torch.randn(2, C, 3, 3))
    with pytest.raises(ValueError, match="expected 16 feature channels, got 8"):
        head(torch.randn(2, 8, *GRID))
    with pytest.raises(ValueError, match=r"expected a token grid \(T, H, W\) = \(2, 3, 3\), got \(4, 3, 3\).*set_grid"):
        head(torch.randn(2, C, 4, 3, 3))
    with pytest.raises(ValueError, match=r"expected pooled features of shape \(B, 16\)"):
        head.classify(torch.randn(2, 3))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(K=-2), "K must be an integer >= 0"),
        (dict(alpha=2.0), r"alpha must be a number in \(0, 1\]"),
        (dict(backend="fast"), "backend must be one of"),
        (dict(propagation="cheb"), "propagation must be one of"),
        (dict(num_heads=3), "divisible by num_heads"),
        (dict(grid=(2, 0, 3)), "grid must be a"),
        (dict(grid=(2, 3)), "grid must be a"),
    ],
)
def test_bad_options(kwargs, message):
    options = dict(in_channels=C, num_classes=5, grid=GRID)
    options.update(kwargs)
    with pytest.raises(ValueError, match=message):
        TAGHead(**options)


def test_embed_dim_projects_wide_backbone_features():
    head = TAGHead(64, 5, GRID, embed_dim=16, num_heads=4, ffn_dim=32)
    features = torch.randn(2, 64, *GRID)
    assert head(features).shape == (2, 5)
    assert head.forward_features(features).shape == (2, 16)
    assert head.pos_embed.weight.shape == (*GRID, 16) and head.proj.in_features == 64
    assert "embed_dim=16" in repr(head)
    with pytest.raises(ValueError, match="embed_dim must be an integer >= 1 or None"):
        TAGHead(64, 5, GRID, embed_dim=0)
