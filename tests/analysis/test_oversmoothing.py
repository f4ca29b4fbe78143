"""The oversmoothing measures, and the theory the benchmark must agree with, on small graphs."""
import pytest
import torch

from taggnn.analysis import (
    dirichlet_energy,
    effective_rank,
    mad,
    numerical_rank,
    oversmoothing_measures,
    pairwise_cosine,
)
from taggnn.graph import SpatioTemporalGraph, structured_appnp, structured_propagate


def laplacian_energy(x, graph):
    """tr(X^T L X) from the edge list (each undirected edge once)."""
    src, dst = graph.edge_index
    keep = src < dst
    diff = x[:, src[keep]] - x[:, dst[keep]]
    return diff.double().pow(2).sum((1, 2))


@pytest.mark.parametrize("grid", [(3, 2, 2), (4, 3, 3), (1, 4, 1), (5, 1, 1)])
def test_energy_split_is_exact(grid):
    graph = SpatioTemporalGraph(*grid)
    x = torch.randn(2, graph.num_nodes, 4, dtype=torch.float64)
    energy = dirichlet_energy(x, graph)
    torch.testing.assert_close(energy["total"], laplacian_energy(x, graph))
    intra_only = SpatioTemporalGraph(*grid, temporal="none")
    torch.testing.assert_close(energy["within"], laplacian_energy(x, intra_only))


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
@pytest.mark.parametrize("K", [1, 2, 4, 16, 64])
def test_appnp_keeps_about_alpha_squared_of_within_frame_energy(alpha, K):
    graph = SpatioTemporalGraph(4, 7, 7)
    x = torch.randn(2, graph.num_nodes, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(K))
    refined = structured_appnp(x, graph, K, alpha)
    ratio = dirichlet_energy(refined, graph)["within"] / dirichlet_energy(x, graph)["within"]
    assert torch.all((ratio / alpha ** 2 > 0.5) & (ratio / alpha ** 2 < 2.0)), ratio


def test_one_gcn_step_collapses_within_frame_energy():
    graph = SpatioTemporalGraph(4, 7, 7)
    x = torch.randn(2, graph.num_nodes, 64, dtype=torch.float64)
    ratio = dirichlet_energy(structured_propagate(x, graph), graph)["within"] / dirichlet_energy(x, graph)["within"]
    assert torch.all(ratio < 1e-3)  # more than 1000x


def test_temporal_mixing_is_slow():
    # across frames the spectral gap is ~pi^2 / (T^2 (P + 2)): frame means barely mix in one step
    graph = SpatioTemporalGraph(8, 7, 7)
    frame_means = torch.randn(1, 8, 1, 16, dtype=torch.float64).expand(1, 8, 49, 16).reshape(1, 392, 16)
    after = structured_propagate(frame_means, graph)
    ratio = dirichlet_energy(after, graph)["across"] / dirichlet_energy(frame_means, graph)["across"]
    assert ratio > 0.8


def test_mad_variants_on_a_complete_collapse():
    collapsed = torch.ones(1, 10, 3)
    assert mad(collapsed).item() == pytest.approx(0.0)
    assert torch.isnan(mad(collapsed, drop_zeros=True)).all()  # the official variant hides it
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    # pairs: (0,1)=1, (0,2)=0, (1,2)=1, each twice, plus zero self-distances: 4/9 vs official 1
    assert mad(x).item() == pytest.approx(4 / 9)
    assert mad(x, drop_zeros=True).item() == pytest.approx(1.0)


def test_cosine_and_ranks():
    graph = SpatioTemporalGraph(2, 1, 2)
    x = torch.tensor([[[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]]])
    cosine = pairwise_cosine(x, graph)
    assert cosine["within"].item() == pytest.approx(1.0) and cosine["across"].item() == pytest.approx(0.0)
    orthogonal = torch.eye(6).unsqueeze(0)
    assert effective_rank(orthogonal).item() == pytest.approx(6.0)
    assert numerical_rank(orthogonal).item() == pytest.approx(6.0)
    assert numerical_rank(torch.ones(1, 5, 3)).item() == pytest.approx(1.0)


def test_measures_bundle_and_bad_input():
    graph = SpatioTemporalGraph(2, 2, 2)
    x = torch.randn(3, 8, 5)
    result = oversmoothing_measures(x, graph, reference=x)
    assert result["energy_within_ratio"] == pytest.approx(1.0) and result["effective_rank"] > 1
    with pytest.raises(ValueError, match=r"expected features of shape \(B, N=8, C\), got \(8, 5\)"):
        dirichlet_energy(torch.randn(8, 5), graph)
