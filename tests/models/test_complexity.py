import re

import pytest
import torch

from taggnn.models import build_model
from taggnn.models.complexity import meta_flops, parameter_breakdown, profile_model
from taggnn.nn.head import POST_GRAPH
from taggnn.nn.readout import READOUTS


def test_table5_parameters_and_macs_at_the_paper_setting():
    model = build_model("r2plus1d_34", 99, num_frames=32, crop_size=112, ffn_dim=2048)
    result = profile_model(model, 32, 112, 112, measure_latency=False)
    params = result["params"]
    assert params["backbone"] == 63_491_975  # 63.49M
    assert params["head_without_classifier"] == 6_405_120  # 6.41M
    assert round(params["total_without_classifier"] / 1e6, 2) == 69.90
    assert params["graph_refinement"] == 0
    # Table 5: 153.4 G multiply-adds for backbone + head
    assert result["macs"]["total"] == pytest.approx(153.4e9, rel=0.01)
    assert result["flops"]["total"] == 2 * result["macs"]["total"]


def test_meta_flops_counts_a_linear_layer_exactly():
    layer = torch.nn.Linear(10, 20)
    assert meta_flops(layer, torch.empty(3, 10)) == 2 * 3 * 10 * 20


def test_profile_with_latency_on_the_tiny_model():
    model = build_model("r2plus1d_tiny", 5, num_frames=16, crop_size=64, num_heads=4, ffn_dim=64)
    result = profile_model(model, 16, 64, 64, repeats=1)
    latency = result["latency_ms"]
    assert latency["backbone"] > 0 and latency["head"] > 0
    assert 0 < result["head_share"]["time"] < 1
    assert parameter_breakdown(model)["classifier"] == 128 * 5 + 5


# Every head option that adds, removes or moves parameters (a model per case: tiny backbone, 8x32x32 clips).
HEAD_OPTION_CASES = (
    [{"readout": readout} for readout in READOUTS]
    + [{"post_graph": post_graph} for post_graph in POST_GRAPH]
    + [{"layer_scale": 1e-5}, {"layer_scale": 1e-5, "post_graph": "ffn"}, {"embed_dim": 48},
       {"pre_classifier_norm": True}, {"use_transformer": False}, {"propagation": "none"}, {"propagation": "gcn"},
       {"propagation": "gat"}, {"propagation": "appnp", "edge_weights": "learned", "backend": "edge_index"},
       {"readout": "set2set", "post_graph": "ffn", "layer_scale": 0.1, "embed_dim": 48}]
)


@pytest.mark.parametrize("options", HEAD_OPTION_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_parameter_breakdown_adds_up_to_the_model_for_every_head_option(options):
    model = build_model("r2plus1d_tiny", 7, num_frames=8, crop_size=32, num_heads=4, ffn_dim=32, **options)
    parts = parameter_breakdown(model)
    actual = sum(p.numel() for p in model.parameters())
    assert "other" not in parts  # every parameter is in a named part
    assert parts["total"] == actual
    assert parts["total"] == sum(parts[key] for key in ("backbone", "projection", "positional_table", "transformer",
                                                        "graph_refinement", "post_graph", "readout", "classifier"))
    head = model.head
    assert parts["post_graph"] == (sum(p.numel() for p in head.post_graph.parameters()) if head.post_graph else 0)
    assert parts["readout"] == sum(p.numel() for p in head.readout.parameters())
    assert parts["head_without_classifier"] + parts["classifier"] == sum(p.numel() for p in head.parameters())


def test_parameter_breakdown_of_the_reviewed_heads():
    """The synthgym_tiny head with a post-graph FFN or a Set2Set readout: the counts left out before."""
    from taggnn.engine import load_config
    from taggnn.models import build_model_from_config

    for option in ("model.post_graph=ffn", "model.readout=set2set", "model.layer_scale=0.1"):
        config = load_config("synthgym_tiny", [option])
        model = build_model_from_config(config, config.data.num_classes, load_weights=False)
        assert parameter_breakdown(model)["total"] == sum(p.numel() for p in model.parameters()), option


def test_profile_command_lists_the_post_graph_and_readout_parts(capsys):
    from taggnn.cli import main

    assert main(["profile", "--config", "synthgym_tiny", "--set", "model.post_graph=ffn", "--set",
                 "model.readout=set2set", "--no-latency"]) == 0
    out = capsys.readouterr().out
    rows = {match[1]: int(match[2].replace(",", ""))
            for match in (re.match(r"^(.*?)\s+([\d,]+)(?:\s|$)", line) for line in out.splitlines()[2:])}
    assert rows["post-graph FFN"] > 0 and rows["readout"] > 0
    assert rows["total"] == sum(rows[part] for part in ("backbone", "positional table", "transformer",
                                                        "graph refinement", "post-graph FFN", "readout",
                                                        "classifier"))


def test_meta_flops_of_a_head_with_knn_edges():
    """The kNN graph is rebuilt from the tokens at every forward: on the meta device (FLOP
    counting) it has shapes and no values, and is counted like any other graph stage."""
    from taggnn.nn import TAGHead

    head = TAGHead(16, 3, (2, 2, 2), num_heads=2, ffn_dim=16, graph_dynamic="knn:2")
    with_knn = meta_flops(head, torch.empty(1, 16, 2, 2, 2))
    paper = TAGHead(16, 3, (2, 2, 2), num_heads=2, ffn_dim=16, backend="structured")
    without = meta_flops(paper, torch.empty(1, 16, 2, 2, 2))
    assert with_knn >= without > 0
