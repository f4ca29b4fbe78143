r"""The spatio-temporal token graph of TAG-Head.

A 3D backbone turns a clip into a grid of :math:`T \times H \times W` tokens.
TAG-Head (Sec. 3 of the paper) treats every token as a node and links them
with two typed edge sets:

* **IF-FC** (intra-frame fully connected, edge type ``0``):
  :math:`(t, p) \rightarrow (t, q)` for every ordered pair :math:`p \neq q`
  of the :math:`P = H \cdot W` spatial sites of frame :math:`t`.
* **TAT** (time-aligned temporal, edge type ``1``):
  :math:`(t, p) \leftrightarrow (t \pm 1, p)`.

Node ids are row-major over the grid: :math:`i = t \cdot H W + y \cdot W + x`.
With both edge sets the graph has

.. math::
    |\mathcal{E}| = T \cdot P (P - 1) + 2 (T - 1) P

directed edges (self-loops, type ``2``, are optional: PyG's ``gcn_norm`` adds
them to an ``edge_index`` anyway).

Every clip of a batch has the same graph, so the edge template is built once
per (spec, device) with vectorised tensor arithmetic and batched by offset
arithmetic, never by building per-clip :class:`~torch_geometric.data.Data`
objects.
"""
from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from ..errors import GraphTooLargeError

IF_FC = 0
TAT = 1
SELF_LOOP = 2

INTRA_MODES = ("full", "none")
TEMPORAL_MODES = ("aligned", "none")

DeviceLike = Union[str, torch.device, None]


@dataclass(frozen=True)
class GraphSpec:
    """The hashable description of a spatio-temporal grid graph."""

    T: int
    H: int
    W: int
    intra: str = "full"
    temporal: str = "aligned"
    self_loops: bool = False

    @property
    def num_sites(self) -> int:
        return self.H * self.W

    @property
    def num_nodes(self) -> int:
        return self.T * self.H * self.W


#: Bytes an edge list may take before it is refused (``None``: half the machine's memory).
#: Each directed edge costs 24 bytes as ``edge_index`` (2 x int64) + ``edge_type`` (int64).
MAX_EDGE_BYTES: Optional[int] = None
EDGE_BYTES = 24


def _memory_limit() -> int:
    if MAX_EDGE_BYTES is not None:
        return MAX_EDGE_BYTES
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover (non-POSIX)
        return 8 << 30


def check_edge_memory(num_edges: int, what: str) -> None:
    """Refuses, before allocating, an edge list that would not fit in memory."""
    needed = num_edges * EDGE_BYTES
    limit = _memory_limit()
    if needed > limit:
        raise GraphTooLargeError(
            f"{what} has {num_edges:,} directed edges ({needed / 2**20:,.1f} MiB as edge_index + edge_type), "
            f"over the {limit / 2**20:,.1f} MiB allowed (taggnn.graph.builder.MAX_EDGE_BYTES); use a smaller "
            f"grid or batch, or the 'structured' back-end, which never builds the edge list")


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _normalise_mode(name: str, value, choices: Tuple[str, ...]) -> str:
    # `True`/`False` are accepted as shorthands for the first mode / "none".
    if value is True:
        return choices[0]
    if value is False or value is None:
        return "none"
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _normalise_device(device: DeviceLike) -> torch.device:
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class _TemplateCache:
    """A small thread-safe cache of tensors keyed by (spec, what, device, ...)."""

    def __init__(self, max_entries: int = 256):
        self._entries: Dict[tuple, object] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def get(self, key: tuple, build):
        with self._lock:
            if key in self._entries:
                return self._entries[key]
        value = build()
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = value
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_CACHE = _TemplateCache()


def clear_template_cache() -> None:
    """Drops every cached edge template and adjacency (e.g. to free GPU memory)."""
    _CACHE.clear()


def _build_edges(spec: GraphSpec) -> Tuple[Tensor, Tensor]:
    """Vectorised construction of the typed edge list of one clip (on CPU)."""
    T, P = spec.T, spec.num_sites
    node = torch.arange(T * P).view(T, P)  # (T, P)
    parts_index, parts_type = [], []

    if spec.intra == "full" and P > 1:
        # every ordered pair (p, q), p != q, inside each frame
        p, q = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
        off_diagonal = p != q
        p, q = p[off_diagonal], q[off_diagonal]  # (P*(P-1),)
        src = node[:, p].reshape(-1)  # (T*P*(P-1),)
        dst = node[:, q].reshape(-1)
        parts_index.append(torch.stack([src, dst]))
        parts_type.append(torch.full((src.numel(),), IF_FC))

    if spec.temporal == "aligned" and T > 1:
        earlier = node[:-1].reshape(-1)  # (T-1)*P nodes with a successor
        later = node[1:].reshape(-1)
        forward = torch.stack([earlier, later])
        backward = torch.stack([later, earlier])
        parts_index += [forward, backward]
        parts_type.append(torch.full((2 * earlier.numel(),), TAT))

    if spec.self_loops:
        loops = torch.arange(T * P)
        parts_index.append(torch.stack([loops, loops]))
        parts_type.append(torch.full((loops.numel(),), SELF_LOOP))

    if not parts_index:
        return torch.empty(2, 0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    edge_index = torch.cat(parts_index, dim=1)
    edge_type = torch.cat(parts_type)
    # Sort by (source, target): the order PyG's coalesce gives, and CSR-friendly.
    order = torch.argsort(edge_index[0] * (T * P) + edge_index[1])
    return edge_index[:, order].contiguous(), edge_type[order].contiguous()


def gcn_degree(spec: GraphSpec) -> Tensor:
    r"""Degrees of :math:`\tilde{M} = M + I` per frame.

    Every node of frame :math:`t` has the same degree

    .. math::
        d_t = 1 + [\text{IF-FC}] (P - 1) + [\text{TAT}] (\mathbb{1}[t > 0] +
        \mathbb{1}[t < T - 1]).

    Returns:
        A float tensor of shape ``(T,)``.
    """
    T, P = spec.T, spec.num_sites
    degree = torch.ones(T)
    if spec.intra == "full":
        degree += P - 1
    if spec.temporal == "aligned" and T > 1:
        degree[1:] += 1
        degree[:-1] += 1
    return degree


class SpatioTemporalGraph:
    r"""The typed spatio-temporal grid graph of TAG-Head (Sec. 3).

    Nodes are the :math:`N = T \cdot H \cdot W` tokens of one clip, with id
    :math:`t \cdot H W + y \cdot W + x`. Edges are IF-FC (type ``0``, every
    ordered pair of distinct sites of a frame) and TAT (type ``1``, the same
    site in neighbouring frames, both directions); self-loops (type ``2``)
    are listed only when ``self_loops=True``.

    The object is a light, hashable description: tensors are built lazily,
    with no Python loop over nodes or edges, and cached per (spec, device),
    so constructing the same graph twice is free.

    Args:
        T (int): Number of token frames :math:`T'`.
        H (int): Token grid height :math:`H'`.
        W (int): Token grid width :math:`W'`.
        intra (str, optional): ``"full"`` for IF-FC edges or ``"none"``.
            (default: ``"full"``)
        temporal (str, optional): ``"aligned"`` for TAT edges or ``"none"``.
            (default: ``"aligned"``)
        self_loops (bool, optional): List self-loops in :obj:`edge_index`.
            (default: :obj:`False`, as in the authors' code)

    Example:
        >>> g = SpatioTemporalGraph(4, 7, 7)
        >>> g.num_nodes, g.num_edges
        (196, 9702)
        >>> batch = g.batch(torch.randn(8, 196, 512))  # torch_geometric Batch

    **Shapes:**
        - :obj:`edge_index`: :math:`(2, |\mathcal{E}|)`, long
        - :obj:`edge_type`: :math:`(|\mathcal{E}|,)`, long
        - :obj:`pos`: :math:`(N, 3)`, long, columns :math:`(t, y, x)`
        - :meth:`batch` input :math:`(B, N, C)`, output a
          :class:`~torch_geometric.data.Batch` with :obj:`x` of shape
          :math:`(B N, C)`
    """

    def __init__(
        self,
        T: int,
        H: int,
        W: int,
        *,
        intra: Union[str, bool] = "full",
        temporal: Union[str, bool] = "aligned",
        self_loops: bool = False,
    ):
        self.spec = GraphSpec(
            T=_check_positive_int("T", T),
            H=_check_positive_int("H", H),
            W=_check_positive_int("W", W),
            intra=_normalise_mode("intra", intra, INTRA_MODES),
            temporal=_normalise_mode("temporal", temporal, TEMPORAL_MODES),
            self_loops=bool(self_loops),
        )

    # ------------------------------------------------------------------ info
    @property
    def T(self) -> int:
        return self.spec.T

    @property
    def H(self) -> int:
        return self.spec.H

    @property
    def W(self) -> int:
        return self.spec.W

    @property
    def grid(self) -> Tuple[int, int, int]:
        return (self.spec.T, self.spec.H, self.spec.W)

    @property
    def intra(self) -> str:
        return self.spec.intra

    @property
    def temporal(self) -> str:
        return self.spec.temporal

    @property
    def self_loops(self) -> bool:
        return self.spec.self_loops

    @property
    def num_sites(self) -> int:
        """:math:`P = H \\cdot W`, the tokens of one frame."""
        return self.spec.num_sites

    @property
    def num_nodes(self) -> int:
        return self.spec.num_nodes

    @property
    def num_edges(self) -> int:
        T, P = self.spec.T, self.spec.num_sites
        count = 0
        if self.spec.intra == "full":
            count += T * P * (P - 1)
        if self.spec.temporal == "aligned":
            count += 2 * (T - 1) * P
        if self.spec.self_loops:
            count += T * P
        return count

    @property
    def has_edges(self) -> bool:
        """Whether the graph has any edge besides self-loops."""
        T, P = self.spec.T, self.spec.num_sites
        return (self.spec.intra == "full" and P > 1) or (
            self.spec.temporal == "aligned" and T > 1
        )

    # --------------------------------------------------------------- tensors
    def _edges(self, device: DeviceLike) -> Tuple[Tensor, Tensor]:
        device = _normalise_device(device)

        def build():
            check_edge_memory(self.num_edges, f"the graph of {self.T}x{self.H}x{self.W} tokens")
            if device.type == "cpu":
                return _build_edges(self.spec)
            edge_index, edge_type = self._edges("cpu")
            return edge_index.to(device), edge_type.to(device)

        return _CACHE.get((self.spec, "edges", device), build)

    def edge_index_on(self, device: DeviceLike = None) -> Tensor:
        """The cached :obj:`edge_index` of one clip on :obj:`device`."""
        return self._edges(device)[0]

    def edge_type_on(self, device: DeviceLike = None) -> Tensor:
        """The cached :obj:`edge_type` of one clip on :obj:`device`."""
        return self._edges(device)[1]

    @property
    def edge_index(self) -> Tensor:
        return self.edge_index_on("cpu")

    @property
    def edge_type(self) -> Tensor:
        return self.edge_type_on("cpu")

    def pos_on(self, device: DeviceLike = None) -> Tensor:
        """Node positions :math:`(t, y, x)` as a long tensor of shape ``(N, 3)``."""
        device = _normalise_device(device)

        def build():
            t, y, x = torch.meshgrid(
                torch.arange(self.T), torch.arange(self.H), torch.arange(self.W),
                indexing="ij",
            )
            return torch.stack([t, y, x], dim=-1).view(-1, 3).to(device)  # (N, 3)

        return _CACHE.get((self.spec, "pos", device), build)

    @property
    def pos(self) -> Tensor:
        return self.pos_on("cpu")

    def degree(self, device: DeviceLike = None, dtype: torch.dtype = torch.float32) -> Tensor:
        r"""Per-frame degree :math:`d_t` of :math:`\tilde{M} = M + I`, shape ``(T,)``."""
        device = _normalise_device(device)
        return _CACHE.get(
            (self.spec, "degree", device, dtype),
            lambda: gcn_degree(self.spec).to(device=device, dtype=dtype),
        )

    def to_data(self, x: Optional[Tensor] = None, **kwargs) -> Data:
        """One clip as a :class:`~torch_geometric.data.Data` (for users and tests)."""
        device = x.device if x is not None else None
        data = Data(
            x=x,
            edge_index=self.edge_index_on(device),
            edge_type=self.edge_type_on(device),
            num_nodes=self.num_nodes,
            **kwargs,
        )
        return data

    # -------------------------------------------------------------- batching
    def batched_edges(self, batch_size: int, device: DeviceLike = None) -> Tuple[Tensor, Tensor]:
        """:obj:`edge_index` and :obj:`edge_type` of :obj:`batch_size` clips.

        Clip :math:`b` has its node ids offset by :math:`b N`; cached per
        (spec, batch size, device).
        """
        _check_positive_int("batch_size", batch_size)
        device = _normalise_device(device)

        def build():
            check_edge_memory(batch_size * self.num_edges,
                              f"a batch of {batch_size} graphs of {self.T}x{self.H}x{self.W} tokens")
            edge_index, edge_type = self._edges(device)
            offsets = torch.arange(batch_size, device=device) * self.num_nodes  # (B,)
            batched = edge_index.unsqueeze(0) + offsets.view(-1, 1, 1)  # (B, 2, E)
            batched = batched.permute(1, 0, 2).reshape(2, -1)  # (2, B*E)
            return batched.contiguous(), edge_type.repeat(batch_size)

        return _CACHE.get((self.spec, "batched", batch_size, device), build)

    def batch(self, x: Tensor, *, edges: bool = True) -> Batch:
        r"""Batches clips that share this graph into one PyG :class:`Batch`.

        The result equals ``Batch.from_data_list([Data(x=x[b], edge_index=...,
        edge_type=...) for b in range(B)])`` (including :obj:`batch`,
        :obj:`ptr` and what :meth:`~Batch.to_data_list` needs), but is built
        from the cached template: :obj:`x` is a view, edges are offset once.

        Args:
            x (torch.Tensor): Node features of shape ``(B, N, C)``.
            edges (bool, optional): Attach the batched :obj:`edge_index` and
                :obj:`edge_type`; :obj:`False` gives the nodes only (for
                consumers that never read the edge list, e.g. the structured
                propagation on a large grid). (default: :obj:`True`)
        """
        self.check_node_features(x)
        B, N, C = x.shape
        device = x.device
        if edges:
            edge_index, edge_type = self.batched_edges(B, device)
            num_edges = self.edge_index_on(device).size(1)
        else:
            edge_index = torch.empty(2, 0, dtype=torch.long, device=device)
            edge_type = torch.empty(0, dtype=torch.long, device=device)
            num_edges = 0

        def build_index():
            batch_vector = torch.arange(B, device=device).repeat_interleave(N)  # (B*N,)
            ptr = torch.arange(B + 1, device=device) * N  # (B+1,)
            edge_ptr = torch.arange(B + 1, device=device) * num_edges
            incs = torch.arange(B, device=device) * N
            zeros = torch.zeros(B, dtype=torch.long, device=device)
            return batch_vector, ptr, edge_ptr, incs, zeros

        batch_vector, ptr, edge_ptr, incs, zeros = _CACHE.get(
            (self.spec, "batch_index", B, device, edges), build_index
        )
        out = Batch(
            x=x.reshape(B * N, C),  # (B*N, C): a view for contiguous x
            edge_index=edge_index,
            edge_type=edge_type,
        )
        out.batch = batch_vector
        out.ptr = ptr
        # What Batch.from_data_list records so that get_example/to_data_list work.
        out._num_graphs = B
        out._slice_dict = {"x": ptr, "edge_index": edge_ptr, "edge_type": edge_ptr}
        out._inc_dict = {"x": zeros, "edge_index": incs, "edge_type": zeros}
        return out

    def check_node_features(self, x) -> None:
        """Raises ``ValueError`` unless ``x`` is a tensor of shape ``(B, N, C)`` for this grid."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.size(1) != self.num_nodes:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"expected node features of shape (B, N={self.num_nodes}, C) for a "
                f"{self.T}x{self.H}x{self.W} grid, got {shape}"
            )

    # ------------------------------------------------------------- adjacency
    def adj_t(
        self,
        batch_size: int = 1,
        *,
        normalize: bool = True,
        add_self_loops: bool = True,
        device: DeviceLike = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        r"""A cached block-diagonal adjacency as a torch sparse CSR tensor.

        With ``normalize=True`` (default) the values are those of
        :math:`\hat{A} = D^{-1/2} (M + I) D^{-1/2}`, ready for PyG layers
        created with ``normalize=False`` (e.g. ``APPNP(K, alpha,
        normalize=False)``). With ``normalize=False`` the values are the 0/1
        entries of :math:`M` (plus :math:`I` if ``add_self_loops``).

        .. warning::
            Do **not** feed an adjacency that already holds self-loops to a
            PyG layer that normalises it itself: for torch sparse inputs
            ``gcn_norm`` adds self-loops again instead of only the missing
            ones, so every diagonal entry would count twice. Pass
            ``normalize=False, add_self_loops=False`` for such layers.

        The graph is symmetric, so :math:`\hat{A}^\top = \hat{A}`.

        Args:
            batch_size (int): Number of clips :math:`B` (block-diagonal copies).

        **Shapes:** :math:`(B N, B N)`, sparse CSR.
        """
        _check_positive_int("batch_size", batch_size)
        device = _normalise_device(device)
        key = (self.spec, "adj_t", batch_size, normalize, add_self_loops, device, dtype)
        return _CACHE.get(key, lambda: self._build_adj(batch_size, normalize, add_self_loops, device, dtype))

    def _build_adj(self, batch_size, normalize, add_self_loops, device, dtype) -> Tensor:
        check_edge_memory(batch_size * (self.num_edges + self.num_nodes),
                          f"the adjacency of {batch_size} graphs of {self.T}x{self.H}x{self.W} tokens")
        N = self.num_nodes
        edge_index, edge_type = self._edges("cpu")
        keep = edge_type != SELF_LOOP
        row, col = edge_index[0, keep], edge_index[1, keep]
        if add_self_loops or normalize:
            loops = torch.arange(N)
            row, col = torch.cat([row, loops]), torch.cat([col, loops])
        value = torch.ones(row.numel(), dtype=torch.float64)
        if normalize:
            degree = gcn_degree(self.spec).to(torch.float64).repeat_interleave(self.num_sites)  # (N,)
            value = degree[row].rsqrt() * degree[col].rsqrt()
        offsets = torch.arange(batch_size) * N  # (B,)
        row = (row.unsqueeze(0) + offsets.view(-1, 1)).reshape(-1)  # (B*nnz,)
        col = (col.unsqueeze(0) + offsets.view(-1, 1)).reshape(-1)
        value = value.repeat(batch_size)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            coo = torch.sparse_coo_tensor(
                torch.stack([row, col]), value.to(dtype), (batch_size * N, batch_size * N),
                check_invariants=True,
            ).coalesce()
            return coo.to_sparse_csr().to(device)

    # ------------------------------------------------------------------ misc
    def with_options(self, **changes) -> "SpatioTemporalGraph":
        """A copy with some of ``T, H, W, intra, temporal, self_loops`` changed."""
        fields = dict(
            T=self.T, H=self.H, W=self.W, intra=self.intra,
            temporal=self.temporal, self_loops=self.self_loops,
        )
        unknown = set(changes) - set(fields)
        if unknown:
            raise ValueError(f"unknown graph option(s) {sorted(unknown)}; valid: {sorted(fields)}")
        fields.update(changes)
        T, H, W = fields.pop("T"), fields.pop("H"), fields.pop("W")
        return SpatioTemporalGraph(T, H, W, **fields)

    def __eq__(self, other) -> bool:
        return isinstance(other, SpatioTemporalGraph) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(T={self.T}, H={self.H}, W={self.W}, "
            f"intra={self.intra!r}, temporal={self.temporal!r}, "
            f"self_loops={self.self_loops}, num_nodes={self.num_nodes}, "
            f"num_edges={self.num_edges})"
        )
