import pytest
import torch
from torch_geometric.nn import APPNP

from taggnn.graph import SpatioTemporalGraph
from taggnn.graph.sparse import SymmetricAPPNP, symmetric_spmm


def _profiled_ops(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


def test_equals_torch_sparse_mm_with_gradients():
    adj = SpatioTemporalGraph(3, 2, 2).adj_t(4, dtype=torch.float64)
    x = torch.randn(adj.size(0), 5, dtype=torch.float64, requires_grad=True)
    expected = torch.sparse.mm(adj, x)
    (expected ** 2).sum().backward()
    grad, x.grad = x.grad.clone(), None
    out = symmetric_spmm(adj, x)
    (out ** 2).sum().backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(x.grad, grad)
    # higher-order gradients: the backward calls the Function again
    assert torch.autograd.gradcheck(lambda h: symmetric_spmm(adj, h), (x.detach().requires_grad_(),))
    assert torch.autograd.gradgradcheck(lambda h: symmetric_spmm(adj, h) ** 2, (x.detach().requires_grad_(),))


def test_no_transposed_copy_in_backward():
    adj = SpatioTemporalGraph(4, 4, 4).adj_t(8)
    x = torch.randn(adj.size(0), 16, requires_grad=True)
    plain = _profiled_ops(lambda: torch.sparse.mm(adj, x).sum().backward())
    ours = _profiled_ops(lambda: symmetric_spmm(adj, x).sum().backward())
    assert "aten::_to_sparse_csr" in plain  # what PyTorch does for A^T (a sort of every entry)
    assert "aten::_to_sparse_csr" not in ours and "aten::sort" not in ours


def test_inference_is_the_plain_product():
    adj = SpatioTemporalGraph(2, 2, 2).adj_t(2)
    x = torch.randn(adj.size(0), 3)
    with torch.no_grad():
        assert symmetric_spmm(adj, x).grad_fn is None
    torch.testing.assert_close(symmetric_spmm(adj, x), torch.sparse.mm(adj, x))


def test_bad_inputs():
    adj = SpatioTemporalGraph(2, 2, 2).adj_t(1)
    with pytest.raises(ValueError, match="sparse CSR matrix without gradient, got layout torch.strided"):
        symmetric_spmm(adj.to_dense(), torch.randn(8, 3))
    with pytest.raises(ValueError, match=r"expected x of shape \(8, C\).*got \(7, 3\)"):
        symmetric_spmm(adj, torch.randn(7, 3))
    values = adj.values().clone().requires_grad_()
    learned = torch.sparse_csr_tensor(adj.crow_indices(), adj.col_indices(), values, adj.shape)
    with pytest.raises(ValueError, match="requiring grad"):
        symmetric_spmm(learned, torch.randn(8, 3))


@pytest.mark.parametrize("K", [1, 2, 10])
def test_symmetric_appnp_equals_pyg_appnp(K):
    graph = SpatioTemporalGraph(4, 3, 3)
    adj = graph.adj_t(5)
    x = torch.randn(adj.size(0), 8, requires_grad=True)
    reference = APPNP(K, 0.1, normalize=False)(x, adj)
    (reference ** 2).sum().backward()
    grad, x.grad = x.grad.clone(), None
    out = SymmetricAPPNP(K, 0.1, normalize=False)(x, adj)
    (out ** 2).sum().backward()
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(x.grad, grad)
    # the edge-list path (PyG's own normalisation) is PyG's
    edge_index, _ = graph.batched_edges(5, "cpu")
    torch.testing.assert_close(SymmetricAPPNP(K, 0.1)(x, edge_index), APPNP(K, 0.1)(x, edge_index))
    assert isinstance(SymmetricAPPNP(K, 0.1), APPNP)
