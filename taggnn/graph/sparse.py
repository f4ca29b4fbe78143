r"""Sparse products with a constant symmetric adjacency.

Autograd's gradient of :math:`Y = A X` with respect to :math:`X` is
:math:`A^\top \, \partial L / \partial Y`. For a torch sparse CSR :math:`A`,
PyTorch forms :math:`A^\top` (a CSC view) and converts it back to CSR, a sort of
all :math:`\mathrm{nnz}` entries, on every backward pass. The normalised
TAG-Head adjacency :math:`\hat{A} = D^{-1/2} (M + I) D^{-1/2}` is symmetric
(every IF-FC and TAT edge is stored in both directions), so
:math:`\hat{A}^\top = \hat{A}` and the backward pass is one more product with
the same cached CSR matrix.

:class:`SymmetricAPPNP` is PyG's :class:`~torch_geometric.nn.conv.APPNP` with
that backward: the same propagation, outputs and gradients (to float rounding).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.nn import APPNP

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def sparse_mm(adj: Tensor, x: Tensor) -> Tensor:
    r""":math:`A X` for a sparse (CSR or COO) :math:`A` and a dense :math:`X`, returned in ``x``'s
    dtype. Neither MKL's nor cuSPARSE's sparse product takes bfloat16 or float16 operands, which is
    what autocast would make of them in mixed-precision training: the product runs in float32 with
    autocast off (``A`` is converted when it was built in a low precision).

    **Shapes:** ``adj`` :math:`(N, M)`, ``x`` :math:`(M, C)`, output :math:`(N, C)`.
    """
    low_precision = x.dtype in _LOW_PRECISION or adj.dtype in _LOW_PRECISION
    if not low_precision and not torch.is_autocast_enabled(x.device.type):
        return torch.sparse.mm(adj, x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.sparse.mm(adj.float() if adj.dtype in _LOW_PRECISION else adj,
                               x.to(torch.float32) if x.dtype in _LOW_PRECISION else x).to(x.dtype)


class _SymmetricSparseMatmul(torch.autograd.Function):
    r""":math:`A X` for a constant symmetric sparse :math:`A`; the backward pass is
    :math:`A G` (calling this Function again, so higher-order gradients work)."""

    @staticmethod
    def forward(ctx, adj: Tensor, x: Tensor) -> Tensor:
        ctx.adj = adj  # a constant (no gradient): kept on ctx, not saved as an input
        return sparse_mm(adj, x)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        return None, _SymmetricSparseMatmul.apply(ctx.adj, grad_output.contiguous())


def _is_constant_csr(adj) -> bool:
    return isinstance(adj, Tensor) and adj.layout == torch.sparse_csr and not adj.requires_grad


def symmetric_spmm(adj: Tensor, x: Tensor) -> Tensor:
    r"""Computes :math:`A X` for a symmetric sparse CSR matrix :math:`A` that needs no
    gradient, with :math:`A G` as the backward pass instead of a transposed copy of
    :math:`A`. The caller guarantees :math:`A^\top = A` (not checked: that would cost
    the transpose this function avoids).

    Args:
        adj (torch.Tensor): Sparse CSR :math:`A`, ``requires_grad=False``.
        x (torch.Tensor): Dense :math:`X`.

    **Shapes:** ``adj`` :math:`(N, N)`, ``x`` :math:`(N, C)`, output :math:`(N, C)`.
    """
    if not _is_constant_csr(adj):
        raise ValueError(f"symmetric_spmm expects a sparse CSR matrix without gradient, got layout "
                         f"{getattr(adj, 'layout', type(adj).__name__)}"
                         f"{' requiring grad' if getattr(adj, 'requires_grad', False) else ''}")
    if x.dim() != 2 or x.size(0) != adj.size(1):
        raise ValueError(f"expected x of shape ({adj.size(1)}, C) for an adjacency of shape {tuple(adj.shape)}, "
                         f"got {tuple(x.shape)}")
    if not (torch.is_grad_enabled() and x.requires_grad):  # inference, tracing, export: the plain product
        return sparse_mm(adj, x)
    return _SymmetricSparseMatmul.apply(adj, x)


class SymmetricAPPNP(APPNP):
    r"""PyG's :class:`~torch_geometric.nn.conv.APPNP` for a symmetric adjacency given as
    a constant torch sparse CSR ``adj_t``: the products use :func:`symmetric_spmm`, so the
    backward pass reuses the cached matrix instead of sorting its transpose at every step.
    Any other input (an ``edge_index``, a ``SparseTensor``, an adjacency with
    differentiable values) takes PyG's own path.

    Args and shapes are those of :class:`~torch_geometric.nn.conv.APPNP`.
    """

    def message_and_aggregate(self, adj_t, x: Tensor) -> Tensor:
        if self.aggr in ("add", "sum") and _is_constant_csr(adj_t):
            return symmetric_spmm(adj_t, x)
        return super().message_and_aggregate(adj_t, x)
