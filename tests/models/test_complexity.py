import pytest
import torch

from taggnn.models import build_model
from taggnn.models.complexity import meta_flops, parameter_breakdown, profile_model


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
