r"""Graph refinement of token features on the TAG-Head grid graph."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import APPNP, GATConv, GCNConv

from ..graph import SpatioTemporalGraph, structured_appnp, structured_propagate
from ..utils.optional import require_torch_sparse

PROPAGATIONS = ("appnp", "gcn", "gat", "none")
BACKENDS = ("edge_index", "csr", "sparse_tensor", "structured")

# Which back-ends each propagation supports, the first being the default.
# "structured" is exact and O(N*C) per step; measured fastest on CPU
# (benchmarks/propagation.py). GATConv needs per-edge attention, so it runs
# on edge_index only (PyG has no fused sparse path for it).
SUPPORTED_BACKENDS: Dict[str, Tuple[str, ...]] = {
    "appnp": ("structured", "csr", "sparse_tensor", "edge_index"),
    "gcn": ("structured", "csr", "sparse_tensor", "edge_index"),
    "gat": ("edge_index",),
    "none": BACKENDS,
}


def check_refiner_options(propagation: str, backend, *, key_prefix: str = "") -> str:
    """Validates a (propagation, back-end) pair; returns the back-end to use."""
    if propagation not in PROPAGATIONS:
        raise ValueError(f"{key_prefix}propagation must be one of {', '.join(PROPAGATIONS)}, got {propagation!r}")
    if backend is None:
        backend = default_backend(propagation)
    if backend not in BACKENDS:
        raise ValueError(f"{key_prefix}backend must be one of {', '.join(BACKENDS)} or None, got {backend!r}")
    if backend not in SUPPORTED_BACKENDS[propagation]:
        raise ValueError(
            f"{key_prefix}propagation {propagation!r} supports backends "
            f"{SUPPORTED_BACKENDS[propagation]}, got {backend!r}"
        )
    return backend


def default_backend(propagation: str) -> str:
    """The back-end used when ``backend=None``: the fastest exact one."""
    return SUPPORTED_BACKENDS[propagation][0]


class GraphRefiner(nn.Module):
    r"""Refines token features by propagation over a :class:`SpatioTemporalGraph`.

    With ``propagation="appnp"`` (the paper, Eq. 2) it computes :math:`K` steps
    of personalised-PageRank propagation, with no parameters:

    .. math::
        H^{(0)} = X, \qquad H^{(k+1)} = (1 - \alpha)\, \hat{A} H^{(k)} +
        \alpha H^{(0)}, \qquad \hat{A} = D^{-1/2} (M + I) D^{-1/2}.

    ``"gcn"`` stacks ``num_layers`` :class:`~torch_geometric.nn.conv.GCNConv`
    layers (:math:`H \leftarrow \hat{A} H W + b`, ReLU between layers),
    ``"gat"`` stacks :class:`~torch_geometric.nn.conv.GATConv` layers
    (``heads`` heads of width :math:`C / \text{heads}`, concatenated, ELU
    between layers), ``"none"`` is the identity (the B+TE ablation row).

    The product :math:`\hat{A} H` can be computed by several exact back-ends:

    * ``"edge_index"``: PyG message passing over the batched edge list, the
      path of the authors' code;
    * ``"csr"``: PyG's layer on a cached torch sparse CSR :math:`\hat{A}`
      (one clip's :math:`N \times N` matrix applied to all clips at once by
      laying features out node-major, :math:`(N, B C)`);
    * ``"sparse_tensor"``: the same with a torch-sparse ``SparseTensor``
      (needs the optional ``torch-sparse``);
    * ``"structured"``: frame sums and time shifts,
      :math:`O(N C)` per step (:func:`~taggnn.graph.structured_propagate`).

    ``backend=None`` picks the fastest exact one: ``"structured"`` for APPNP
    and GCN, ``"edge_index"`` for GAT. All back-ends agree with PyG's
    :class:`~torch_geometric.nn.conv.APPNP` on the edge list to float32
    rounding, in outputs and gradients.

    Args:
        graph (SpatioTemporalGraph): The graph of one clip.
        propagation (str, optional): ``"appnp"``, ``"gcn"``, ``"gat"`` or
            ``"none"``. (default: ``"appnp"``)
        K (int, optional): APPNP power-iteration steps. (default: ``2``, as
            in the authors' code; the paper does not state it)
        alpha (float, optional): APPNP teleport probability in
            :math:`(0, 1]`. (default: ``0.1``)
        backend (str, optional): See above. (default: :obj:`None`)
        channels (int, optional): Feature width :math:`C`; required for
            ``"gcn"`` and ``"gat"``.
        num_layers (int, optional): Depth of the GCN/GAT stacks. (default: ``2``)
        heads (int, optional): GAT heads. (default: ``8``)
        dropout (float, optional): GAT attention dropout. (default: ``0.0``)

    **Shapes:**
        - **input:** :math:`(B, N, C)` with :math:`N = T H W`
        - **output:** :math:`(B, N, C)`
    """

    def __init__(
        self,
        graph: SpatioTemporalGraph,
        *,
        propagation: str = "appnp",
        K: int = 2,
        alpha: float = 0.1,
        backend: Optional[str] = None,
        channels: Optional[int] = None,
        num_layers: int = 2,
        heads: int = 8,
        dropout: float = 0.0,
    ):
        super().__init__()
        if not isinstance(graph, SpatioTemporalGraph):
            raise TypeError(f"graph must be a SpatioTemporalGraph, got {type(graph).__name__}")
        backend = check_refiner_options(propagation, backend)
        if backend == "sparse_tensor":
            require_torch_sparse("backend='sparse_tensor'")
        if isinstance(K, bool) or not isinstance(K, int) or K < 0:
            raise ValueError(f"K must be an integer >= 0, got {K!r}")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}")
        if propagation in ("gcn", "gat"):
            if channels is None or channels < 1:
                raise ValueError(f"propagation {propagation!r} needs channels >= 1, got {channels!r}")
            if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
                raise ValueError(f"num_layers must be an integer >= 1, got {num_layers!r}")
        if propagation == "gat" and channels % heads != 0:
            raise ValueError(
                f"GAT concatenates {heads} heads of width channels/heads: channels "
                f"({channels}) must be divisible by heads ({heads})"
            )

        self.graph = graph
        self.propagation = propagation
        self.backend = backend
        self.K = K
        self.alpha = float(alpha)
        self.channels = channels
        self.num_layers = num_layers if propagation in ("gcn", "gat") else 0
        self.heads = heads
        self._sparse_tensors: Dict[Tuple[torch.device, torch.dtype], object] = {}

        if propagation == "appnp":
            # Parameter-free; normalisation is done by PyG for edge_index and
            # precomputed in the cached adjacency for csr / sparse_tensor.
            self.appnp = APPNP(K, self.alpha, normalize=backend == "edge_index")
        elif propagation == "gcn":
            self.convs = nn.ModuleList(GCNConv(channels, channels) for _ in range(num_layers))
        elif propagation == "gat":
            self.convs = nn.ModuleList(
                GATConv(channels, channels // heads, heads=heads, dropout=dropout)
                for _ in range(num_layers)
            )

    def reset_parameters(self) -> None:
        for conv in getattr(self, "convs", []):
            conv.reset_parameters()

    # ----------------------------------------------------------- internals
    def _sparse_tensor(self, device: torch.device, dtype: torch.dtype):
        key = (device, dtype)
        if key not in self._sparse_tensors:
            torch_sparse = require_torch_sparse("backend='sparse_tensor'")
            csr = self.graph.adj_t(1, device=device, dtype=dtype)
            self._sparse_tensors[key] = torch_sparse.SparseTensor(
                rowptr=csr.crow_indices(), col=csr.col_indices(), value=csr.values(),
                sparse_sizes=csr.shape, is_sorted=True, trust_data=True,
            )
        return self._sparse_tensors[key]

    def _node_major_adjacency(self, x: Tensor):
        if self.backend == "csr":
            return self.graph.adj_t(1, device=x.device, dtype=x.dtype)
        return self._sparse_tensor(x.device, x.dtype)

    @staticmethod
    def _to_node_major(x: Tensor) -> Tensor:
        B, N, C = x.shape
        return x.transpose(0, 1).reshape(N, B * C)  # (N, B*C)

    @staticmethod
    def _from_node_major(x: Tensor, B: int, C: int) -> Tensor:
        N = x.size(0)
        return x.view(N, B, C).transpose(0, 1)  # (B, N, C)

    def _propagate(self, x: Tensor) -> Tensor:
        """:math:`\\hat{A} X` with the selected back-end (GCN stacks)."""
        B, N, C = x.shape
        if self.backend == "structured":
            return structured_propagate(x, self.graph)
        adj = self._node_major_adjacency(x)
        out = adj @ self._to_node_major(x)  # (N, B*C)
        return self._from_node_major(out, B, C)

    def _check_input(self, x: Tensor) -> None:
        self.graph.check_node_features(x)
        if self.channels is not None and x.size(2) != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.size(2)} (shape {tuple(x.shape)})")

    # ------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if self.propagation == "none":
            return x
        B, N, C = x.shape
        if self.propagation == "appnp":
            if self.backend == "structured":
                return structured_appnp(x, self.graph, self.K, self.alpha)
            if self.backend == "edge_index":
                edge_index, _ = self.graph.batched_edges(B, x.device)
                return self.appnp(x.reshape(B * N, C), edge_index).view(B, N, C)
            out = self.appnp(self._to_node_major(x), self._node_major_adjacency(x))
            return self._from_node_major(out, B, C)

        h = x
        for h in self.layer_outputs(x):
            pass
        return h

    def layer_outputs(self, x: Tensor):
        """An iterator over the output of each GCN/GAT layer, ``(B, N, C)``, before the
        activation that feeds the next layer (the last one is :meth:`forward`'s result); for
        analysis of deep stacks (e.g. oversmoothing) without running every depth separately.

        Bad input raises here, when called, not at the first ``next()``.
        """
        if self.propagation not in ("gcn", "gat"):
            raise ValueError(f"layer_outputs needs a GCN or GAT stack, this refiner is {self.propagation!r}")
        self._check_input(x)
        return self._layer_outputs(x)

    def _layer_outputs(self, x: Tensor):
        B, N, C = x.shape
        edge_index = None
        if self.backend == "edge_index":
            edge_index, _ = self.graph.batched_edges(B, x.device)
        h = x
        for i, conv in enumerate(self.convs):
            if i > 0:
                h = F.relu(h) if self.propagation == "gcn" else F.elu(h)
            if self.backend == "edge_index":
                h = conv(h.reshape(B * N, -1), edge_index).view(B, N, -1)
            else:  # GCN: lin, exact propagation, bias (GCNConv's own order)
                h = self._propagate(conv.lin(h))
                if conv.bias is not None:
                    h = h + conv.bias
            yield h

    def extra_repr(self) -> str:
        parts = [f"propagation={self.propagation!r}", f"backend={self.backend!r}"]
        if self.propagation == "appnp":
            parts += [f"K={self.K}", f"alpha={self.alpha}"]
        elif self.propagation in ("gcn", "gat"):
            parts += [f"num_layers={self.num_layers}", f"channels={self.channels}"]
        parts.append(f"grid={self.graph.grid}")
        return ", ".join(parts)
