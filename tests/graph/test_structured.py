import pytest
import torch

from taggnn.graph import SpatioTemporalGraph, structured_appnp, structured_propagate


@pytest.mark.parametrize("grid", [(1, 1, 1), (1, 3, 3), (4, 1, 1), (3, 2, 3), (5, 4, 2)])
@pytest.mark.parametrize("intra,temporal",
                         [("full", "aligned"), ("full", "none"), ("none", "aligned"), ("none", "none")])
def test_structured_equals_dense_normalised_adjacency(grid, intra, temporal):
    torch.manual_seed(0)
    g = SpatioTemporalGraph(*grid, intra=intra, temporal=temporal)
    N = g.num_nodes
    m = torch.eye(N, dtype=torch.float64)
    if g.num_edges:
        m[g.edge_index[0], g.edge_index[1]] = 1
    d = m.sum(1).rsqrt()
    a_hat = d[:, None] * m * d[None, :]
    x = torch.randn(3, N, 5, dtype=torch.float64)
    torch.testing.assert_close(structured_propagate(x, g), a_hat @ x)


def test_frame_clique_is_frame_mean():
    # Without TAT edges one step replaces every token by its frame mean (A_hat = J/P).
    g = SpatioTemporalGraph(3, 4, 4, temporal="none")
    x = torch.randn(2, g.num_nodes, 6, dtype=torch.float64)
    out = structured_propagate(x, g).view(2, 3, 16, 6)
    torch.testing.assert_close(out, x.view(2, 3, 16, 6).mean(2, keepdim=True).expand_as(out))


def test_appnp_fixed_points_and_k0():
    g = SpatioTemporalGraph(2, 2, 2)
    x = torch.randn(1, 8, 3)
    assert torch.equal(structured_appnp(x, g, 0, 0.1), x)
    torch.testing.assert_close(structured_appnp(x, g, 5, 1.0), x)  # alpha = 1: no propagation
