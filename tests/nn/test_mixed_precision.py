"""Every propagation back-end under bfloat16 autocast (CPU here; ``tests/cuda`` repeats the
training step on CUDA): MKL's and cuSPARSE's sparse products take no bfloat16 operands, so the
sparse back-ends must run theirs in float32 inside an autocast region."""
import pytest
import torch

from taggnn.graph.sparse import sparse_mm, symmetric_spmm
from taggnn.nn import TAGHead
from taggnn.nn.backends import backend_names
from taggnn.utils import has_torch_sparse

BACKENDS = [name for name in backend_names() if name != "sparse_tensor" or has_torch_sparse()]


@pytest.mark.parametrize("edge_weights", ["fixed", "learned"])
@pytest.mark.parametrize("propagation", ["appnp", "gcn"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_training_step_under_bf16_autocast(backend, propagation, edge_weights):
    torch.manual_seed(0)
    head = TAGHead(32, 10, (4, 3, 3), num_heads=4, ffn_dim=32, propagation=propagation, backend=backend,
                   edge_weights=edge_weights)
    features = torch.randn(2, 32, 4, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(features)
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters() if p.requires_grad)
    with torch.no_grad():
        reference = head(features)
    torch.testing.assert_close(logits.float(), reference, atol=0.25, rtol=0.05)  # bfloat16: 8 bits of mantissa


def _symmetric_csr(n=12):
    dense = (torch.rand(n, n) < 0.3).float()
    dense = dense + dense.t()
    return dense.to_sparse_csr(), dense


def test_sparse_mm_computes_low_precision_operands_in_float32():
    adj, dense = _symmetric_csr()
    x = torch.randn(12, 5)
    for dtype in (torch.bfloat16, torch.float16):
        out = sparse_mm(adj, x.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), dense @ x.to(dtype).float(), atol=0, rtol=4e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast would make the product bfloat16
        out = sparse_mm(adj, x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, dense @ x)


def test_symmetric_spmm_backward_under_autocast():
    adj, dense = _symmetric_csr()
    x = torch.randn(12, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = symmetric_spmm(adj, x.to(torch.bfloat16))
    grad, = torch.autograd.grad(out.float().pow(2).sum(), x)
    x_ref = x.detach().to(torch.bfloat16).float().requires_grad_()
    ref_grad, = torch.autograd.grad((dense @ x_ref).to(torch.bfloat16).float().pow(2).sum(), x_ref)
    torch.testing.assert_close(grad, ref_grad, atol=0.1, rtol=0.02)
