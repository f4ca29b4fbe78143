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

Other edge families (:mod:`taggnn.graph.families`: ``grid4``, ``grid8``,
``radius:r``, ``window:k[:d]``, ``cube:r``, ``full``; kNN on features,
:mod:`taggnn.graph.dynamic`; a user-defined callable) replace IF-FC / TAT
with the same types, built and cached the same way.

Every clip of a batch has the same graph, so the edge template is built once
per (spec, device) with vectorised tensor arithmetic and batched by offset
arithmetic, never by building per-clip :class:`~torch_geometric.data.Data`
objects.
"""
from __future__ import annotations

import operator
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from ..errors import ConfigError, GraphTooLargeError
from . import draw as _draw
from . import families as fam
from . import hetero as _hetero
from .dynamic import knn_edges, knn_edges_dense
from .families import CUSTOM, DYNAMIC, IF_FC, SELF_LOOP, SPATIAL, TAT, TEMPORAL  # noqa: F401  (re-exported)

EDGE_ATTRS = ("offset", "type")

#: A user-defined family: ``fn(T, H, W) -> (edge_index (2, E) long, edge_type (E,) long >= 0)``.
CustomEdges = Callable[[int, int, int], Tuple[Tensor, Tensor]]

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
    dynamic: Optional[str] = None
    custom: Optional[CustomEdges] = None
    edge_attr: Tuple[str, ...] = ()

    @property
    def spatial(self) -> str:
        return self.intra

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
    """``value`` as a Python int >= 1; NumPy and torch integers are accepted, bools and floats are not."""
    if isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype == torch.bool):
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return int(number)


def _normalise_edge_attr(value) -> Tuple[str, ...]:
    if value is None or value is False or value == "none":
        return ()
    kinds = tuple(value.split("+")) if isinstance(value, str) else tuple(value)  # "offset+type": the config's
    for kind in kinds:
        if kind not in EDGE_ATTRS:
            raise ConfigError(f"edge_attr must be None, 'offset', 'type' or both ('offset+type' or "
                              f"('offset', 'type')), got {value!r}")
    return tuple(k for k in EDGE_ATTRS if k in kinds)  # canonical order: offset, then type


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


def _spatial_offsets(spec: GraphSpec) -> Tensor:
    return fam.spatial_offsets(spec.intra, spec.H, spec.W)


def _temporal_offsets(spec: GraphSpec) -> Tensor:
    return fam.temporal_offsets(spec.temporal, spec.T, spec.H, spec.W)


def _custom_edges(spec: GraphSpec) -> Tuple[Tensor, Tensor]:
    """Calls the user-defined family and checks what it returns."""
    N = spec.num_nodes
    result = spec.custom(spec.T, spec.H, spec.W)
    name = getattr(spec.custom, "__name__", repr(spec.custom))
    if not (isinstance(result, tuple) and len(result) == 2 and all(isinstance(r, Tensor) for r in result)):
        raise ConfigError(f"the custom edge function {name} must return (edge_index, edge_type) tensors, "
                          f"got {type(result).__name__}")
    edge_index, edge_type = result
    edge_index, edge_type = edge_index.detach().cpu(), edge_type.detach().cpu()
    if (edge_index.dim() != 2 or edge_index.size(0) != 2 or edge_type.shape != (edge_index.size(1),)
            or edge_index.is_floating_point() or edge_type.is_floating_point()):
        raise ConfigError(f"the custom edge function {name} must return edge_index of shape (2, E) and edge_type "
                          f"of shape (E,), both integer; got {tuple(edge_index.shape)} and {tuple(edge_type.shape)}")
    if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= N):
        raise ConfigError(f"the custom edge function {name} returned node ids outside [0, {N}) for a "
                          f"{spec.T}x{spec.H}x{spec.W} grid")
    if edge_type.numel() and edge_type.min() < 0:
        raise ConfigError(f"the custom edge function {name} returned a negative edge type; use 0, 1, ...")
    return edge_index.long(), edge_type.long() + CUSTOM


def _build_edges(spec: GraphSpec) -> Tuple[Tensor, Tensor]:
    """Vectorised construction of the typed edge list of one clip (on CPU)."""
    T, H, W, P = spec.T, spec.H, spec.W, spec.num_sites
    N = T * P
    if spec.intra != "full" and spec.temporal != "full" and spec.custom is None:
        # Every family is an offset set (self-loops: the offset 0): one pass over the union, sorted
        # by id step, lists the edges already sorted by (source, target); no sort needed.
        parts = [(_spatial_offsets(spec), IF_FC), (_temporal_offsets(spec), TAT)]
        if spec.self_loops:
            parts.append((torch.zeros(1, 3, dtype=torch.long), SELF_LOOP))
        offsets = torch.cat([o for o, _ in parts])
        types = torch.cat([torch.full((o.size(0),), t, dtype=torch.long) for o, t in parts])
        order = torch.argsort((offsets[:, 0] * H + offsets[:, 1]) * W + offsets[:, 2])
        edge_index, which = fam.offset_edges(offsets[order], T, H, W, return_offset_index=True)
        return edge_index.contiguous(), types[order][which].contiguous()
    parts_index, parts_type = [], []

    def add(edge_index: Tensor, edge_type: Union[int, Tensor]) -> None:
        if isinstance(edge_type, int):
            edge_type = torch.full((edge_index.size(1),), edge_type, dtype=torch.long)
        parts_index.append(edge_index)
        parts_type.append(edge_type)

    if spec.intra == "full":
        add(fam.full_spatial_edges(T, P), IF_FC)
    elif spec.intra != "none":
        add(fam.offset_edges(_spatial_offsets(spec), T, H, W), IF_FC)
    if spec.temporal == "full":
        add(fam.full_temporal_edges(T, P), TAT)
    elif spec.temporal != "none":
        add(fam.offset_edges(_temporal_offsets(spec), T, H, W), TAT)
    if spec.custom is not None:
        add(*_custom_edges(spec))
    if spec.self_loops:
        loops = torch.arange(N)
        add(torch.stack([loops, loops]), SELF_LOOP)

    if not parts_index:
        return torch.empty(2, 0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    edge_index = torch.cat(parts_index, dim=1)
    edge_type = torch.cat(parts_type)
    # Sort by (source, target), the order PyG's coalesce gives, and CSR-friendly; stable, so that
    # a pair listed by two families keeps the family order above.
    order = torch.sort(edge_index[0] * N + edge_index[1], stable=True).indices
    return edge_index[:, order].contiguous(), edge_type[order].contiguous()


def _uniform_frame_degree(spec: GraphSpec) -> bool:
    # every node of a frame has the same degree: no border effects inside a frame
    return (spec.intra in ("full", "none") and not spec.temporal.startswith("cube:")
            and spec.custom is None and spec.dynamic is None)


def gcn_degree(spec: GraphSpec) -> Tensor:
    r"""Degrees of :math:`\tilde{M} = M + I` per frame.

    Every node of frame :math:`t` has the same degree

    .. math::
        d_t = 1 + [\text{IF-FC}] (P - 1) + [\text{TAT}] (\mathbb{1}[t > 0] +
        \mathbb{1}[t < T - 1]).

    Returns:
        A float tensor of shape ``(T,)``.
    """
    if not _uniform_frame_degree(spec):
        raise ConfigError(
            f"per-frame degrees exist only when every node of a frame has the same degree (spatial 'full' or "
            f"'none', temporal not 'cube', no dynamic or custom edges); got spatial={spec.intra!r}, "
            f"temporal={spec.temporal!r}: use the degrees of the edge list (torch_geometric.utils.degree)")
    T, P = spec.T, spec.num_sites
    degree = torch.ones(T)
    if spec.intra == "full":
        degree += P - 1
    if spec.temporal == "full":
        degree += (T - 1) * P
    else:  # aligned / window:k:d / none: one neighbour per offset whose frame exists
        t = torch.arange(T)
        for dt in _temporal_offsets(spec)[:, 0].tolist():
            degree += ((t + dt >= 0) & (t + dt < T)).float()
    return degree


_UNSET = object()


class SpatioTemporalGraph:
    r"""A typed graph on a :math:`T \times H \times W` token grid; by default TAG-Head's (Sec. 3).

    Nodes are the :math:`N = T \cdot H \cdot W` tokens of one clip, with id
    :math:`t \cdot H W + y \cdot W + x`. By default the edges are the paper's
    IF-FC (type ``0``, every ordered pair of distinct sites of a frame) and
    TAT (type ``1``, the same site in neighbouring frames, both directions);
    self-loops (type ``2``) are listed only when ``self_loops=True``.

    Other edge families (see :mod:`taggnn.graph.families`) replace them:
    the spatial family always has type ``0`` (:obj:`IF_FC`), the temporal
    family type ``1`` (:obj:`TAT`), kNN edges type ``3`` (:obj:`DYNAMIC`) and
    user-defined type ``j`` is stored as ``4 + j`` (:obj:`CUSTOM`). Families
    compose: a graph has at most one of each kind, and the edge list is their
    union sorted by (source, target) (a pair linked by two families is listed
    once per family).

    The object is a light, hashable description: tensors are built lazily,
    with no Python loop over nodes or edges, and cached per (spec, device),
    so constructing the same graph twice is free.

    Args:
        T (int): Number of token frames :math:`T'`.
        H (int): Token grid height :math:`H'`.
        W (int): Token grid width :math:`W'`.
        intra (str, optional): The paper's name of :obj:`spatial`; give one
            of the two. (default: ``"full"``)
        spatial (str, optional): ``"full"`` (IF-FC), ``"grid4"``,
            ``"grid8"``, ``"radius:r"`` (Euclidean, ``r`` in tokens),
            ``"radius:r:chebyshev"`` or ``"none"``.
        temporal (str, optional): ``"aligned"`` (TAT), ``"window:k"``,
            ``"window:k:d"``, ``"cube:r"``, ``"full"`` or ``"none"``.
            (default: ``"aligned"``)
        dynamic (str, optional): ``"knn:k"``: the :math:`k` nearest tokens
            in feature space, rebuilt from the features at every
            :meth:`batch` / :meth:`dynamic_edges` call. (default: :obj:`None`)
        custom (callable, optional): A user-defined family
            ``fn(T, H, W) -> (edge_index, edge_type)`` with node ids in the
            order above and types ``0, 1, ...``. (default: :obj:`None`)
        self_loops (bool, optional): List self-loops in :obj:`edge_index`.
            (default: :obj:`False`, as in the authors' code)
        edge_attr (str or tuple, optional): Attach :obj:`edge_attr` to
            :meth:`to_data` and :meth:`batch`: ``"offset"`` (the float
            :math:`(\Delta t, \Delta y, \Delta x)` from source to target),
            ``"type"`` (one-hot edge type, :attr:`num_edge_types` columns) or
            both (offset first). (default: :obj:`None`)

    Example:
        >>> g = SpatioTemporalGraph(4, 7, 7)
        >>> g.num_nodes, g.num_edges
        (196, 9702)
        >>> batch = g.batch(torch.randn(8, 196, 512))  # torch_geometric Batch
        >>> SpatioTemporalGraph(16, 14, 14, spatial="grid8", temporal="window:2").offsets().shape
        torch.Size([12, 3])

    **Shapes:**
        - :obj:`edge_index`: :math:`(2, |\mathcal{E}|)`, long
        - :obj:`edge_type`: :math:`(|\mathcal{E}|,)`, long
        - :obj:`pos`: :math:`(N, 3)`, long, columns :math:`(t, y, x)`
        - :meth:`batch` input :math:`(B, N, C)` or :math:`(B, C, T, H, W)`,
          output a :class:`~torch_geometric.data.Batch` with :obj:`x` of
          shape :math:`(B N, C)`
    """

    def __init__(
        self,
        T: int,
        H: int,
        W: int,
        *,
        intra: Union[str, bool, None] = _UNSET,
        temporal: Union[str, bool, None] = "aligned",
        self_loops: bool = False,
        spatial: Union[str, bool, None] = _UNSET,
        dynamic: Optional[str] = None,
        custom: Optional[CustomEdges] = None,
        edge_attr: Union[str, Sequence[str], None] = None,
    ):
        if intra is not _UNSET and spatial is not _UNSET:
            if fam.parse_spatial(intra, "intra") != fam.parse_spatial(spatial):
                raise ConfigError(f"intra={intra!r} and spatial={spatial!r} disagree; intra is the paper's name "
                                  f"of spatial, give only one")
        if spatial is not _UNSET:
            spatial_family = fam.parse_spatial(spatial, "spatial")
        else:
            spatial_family = fam.parse_spatial("full" if intra is _UNSET else intra, "intra")
        if custom is not None and not callable(custom):
            raise ConfigError(f"custom must be a callable fn(T, H, W) -> (edge_index, edge_type), got {custom!r}")
        self.spec = GraphSpec(
            T=_check_positive_int("T", T),
            H=_check_positive_int("H", H),
            W=_check_positive_int("W", W),
            intra=spatial_family,
            temporal=fam.parse_temporal(temporal, "temporal"),
            self_loops=bool(self_loops),
            dynamic=fam.parse_dynamic(dynamic),
            custom=custom,
            edge_attr=_normalise_edge_attr(edge_attr),
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
        """The spatial family (the paper's name)."""
        return self.spec.intra

    @property
    def spatial(self) -> str:
        return self.spec.intra

    @property
    def temporal(self) -> str:
        return self.spec.temporal

    @property
    def dynamic(self) -> Optional[str]:
        return self.spec.dynamic

    @property
    def custom(self) -> Optional[CustomEdges]:
        return self.spec.custom

    @property
    def edge_attr_kinds(self) -> Tuple[str, ...]:
        return self.spec.edge_attr

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

    def _static_counts(self) -> Dict[int, int]:
        """Directed edges per static edge type, counted without building the edge list."""
        T, H, W, P = self.T, self.H, self.W, self.num_sites
        counts = {}
        if self.spec.intra == "full":
            counts[IF_FC] = T * P * (P - 1)
        elif self.spec.intra != "none":
            counts[IF_FC] = fam.count_offset_edges(_spatial_offsets(self.spec), T, H, W)
        if self.spec.temporal == "full":
            counts[TAT] = T * (T - 1) * P * P
        elif self.spec.temporal != "none":
            counts[TAT] = fam.count_offset_edges(_temporal_offsets(self.spec), T, H, W)
        if self.spec.self_loops:
            counts[SELF_LOOP] = T * P
        return counts

    @property
    def num_edges(self) -> int:
        """Directed edges of one clip's static edge list (kNN edges, built per forward, not counted)."""
        count = sum(self._static_counts().values())
        if self.spec.custom is not None:
            count += _CACHE.get((self.spec, "custom_count"), lambda: _custom_edges(self.spec)[0].size(1))
        return count

    @property
    def num_edge_types(self) -> int:
        """Columns of the one-hot ``"type"`` edge attribute: the built-in types 0..3, then the custom ones."""
        if self.spec.custom is None:
            return CUSTOM
        custom_types = self._edges("cpu")[1]
        custom_types = custom_types[custom_types >= CUSTOM]
        return CUSTOM + (int(custom_types.max()) - CUSTOM + 1 if custom_types.numel() else 0)

    @property
    def edge_dim(self) -> int:
        """Width of :obj:`edge_attr` (``edge_dim`` of PyG's TransformerConv, GINEConv, GATv2Conv...)."""
        return 3 * ("offset" in self.spec.edge_attr) + self.num_edge_types * ("type" in self.spec.edge_attr)

    def edge_type_names(self) -> Dict[int, str]:
        """The families of this graph by edge type, e.g. ``{0: "spatial:grid8", 1: "temporal:window:2"}``."""
        names = {}
        if self.spec.intra != "none":
            names[IF_FC] = f"spatial:{self.spec.intra}"
        if self.spec.temporal != "none":
            names[TAT] = f"temporal:{self.spec.temporal}"
        if self.spec.self_loops:
            names[SELF_LOOP] = "self_loop"
        if self.spec.dynamic is not None:
            names[DYNAMIC] = f"dynamic:{self.spec.dynamic}"
        if self.spec.custom is not None:
            for t in range(CUSTOM, self.num_edge_types):
                names[t] = f"custom:{t - CUSTOM}"
        return names

    def offsets(self) -> Optional[Tensor]:
        r"""The offset set of the static families, ``(S, 3)`` long rows :math:`(\Delta t, \Delta y, \Delta x)`.

        The graph (self-loops aside) has an edge from :math:`(t, y, x)` to
        :math:`(t + \Delta t, y + \Delta y, x + \Delta x)` exactly when both
        are inside the grid. The set is symmetric and never holds
        :math:`(0, 0, 0)` (self-loops are the separate :attr:`self_loops`).
        Rows: the spatial offsets, then the temporal ones, each sorted.
        :obj:`None` when the graph is not translation-invariant (a
        ``dynamic`` or ``custom`` family).
        """
        if self.spec.dynamic is not None or self.spec.custom is not None:
            return None
        return _CACHE.get((self.spec, "offsets"),
                          lambda: torch.cat([_spatial_offsets(self.spec), _temporal_offsets(self.spec)]))

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

    def pos_on(self, device: DeviceLike = None, dtype: torch.dtype = torch.long) -> Tensor:
        """Node positions :math:`(t, y, x)`, shape ``(N, 3)``: long grid coordinates by default;
        ``dtype=torch.float32`` gives what PyG's geometric transforms and :class:`SpatioTemporalGrid` use."""
        device = _normalise_device(device)

        def build():
            t, y, x = torch.meshgrid(
                torch.arange(self.T), torch.arange(self.H), torch.arange(self.W),
                indexing="ij",
            )
            return torch.stack([t, y, x], dim=-1).view(-1, 3).to(device=device, dtype=dtype)  # (N, 3)

        return _CACHE.get((self.grid, "pos", device, dtype), build)

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

    def edge_attr_for(self, edge_index: Tensor, edge_type: Tensor, num_nodes: Optional[int] = None) -> Tensor:
        r"""The :obj:`edge_attr` of any edges of this grid (node ids modulo :math:`N` for batches), float.

        Columns: :math:`(\Delta t, \Delta y, \Delta x)` = target minus
        source position when ``"offset"`` is asked, then the one-hot edge
        type (:attr:`num_edge_types` columns) when ``"type"`` is.
        """
        parts = []
        if "offset" in self.spec.edge_attr:
            pos = self.pos_on(edge_index.device, torch.float32)
            N = self.num_nodes
            parts.append(pos[edge_index[1] % N] - pos[edge_index[0] % N])  # (E, 3)
        if "type" in self.spec.edge_attr:
            parts.append(torch.nn.functional.one_hot(edge_type, self.num_edge_types).float())  # (E, types)
        if not parts:
            raise ConfigError("this graph was built without edge_attr; pass edge_attr='offset', 'type' or "
                              "('offset', 'type') to SpatioTemporalGraph")
        return torch.cat(parts, dim=1)

    def edge_attr_on(self, device: DeviceLike = None) -> Tensor:
        """The cached :obj:`edge_attr` of one clip's static edges, ``(E, edge_dim)`` float."""
        device = _normalise_device(device)
        return _CACHE.get((self.spec, "edge_attr", device),
                          lambda: self.edge_attr_for(*self._edges(device)))

    def to_data(self, x: Optional[Tensor] = None, **kwargs) -> Data:
        """One clip as a :class:`~torch_geometric.data.Data`.

        Sets :obj:`x` (when given), :obj:`edge_index`, :obj:`edge_type`,
        :obj:`edge_attr` (when the graph has ``edge_attr``), and
        :obj:`num_nodes` only when there is no :obj:`x` to count them (so the
        result collates with plain ``Data(x=..., edge_index=...)`` objects in
        one :class:`~torch_geometric.loader.DataLoader`). kNN edges need
        features: with ``dynamic`` they are added from :obj:`x`.
        """
        device = x.device if x is not None else None
        edge_index, edge_type = self.edge_index_on(device), self.edge_type_on(device)
        if self.spec.dynamic is not None and x is not None:
            if x.dim() != 2 or x.size(0) != self.num_nodes:
                self.check_node_features(x.unsqueeze(0))
            dyn_index, dyn_type = self.dynamic_edges(x.unsqueeze(0))
            edge_index, edge_type = torch.cat([edge_index, dyn_index], 1), torch.cat([edge_type, dyn_type])
        fields = dict(edge_index=edge_index, edge_type=edge_type)
        if x is not None:
            fields["x"] = x
        else:
            fields["num_nodes"] = self.num_nodes
        if self.spec.edge_attr:
            fields["edge_attr"] = (self.edge_attr_for(edge_index, edge_type) if self.spec.dynamic is not None
                                   and x is not None else self.edge_attr_on(device))
        fields.update(kwargs)
        return Data(**fields)

    def dynamic_edges(self, x: Union[Tensor, Batch]) -> Tuple[Tensor, Tensor]:
        r"""The kNN edges of :attr:`dynamic` (``"knn:k"``), built from features now.

        Args:
            x (torch.Tensor or Batch): Node features ``(B, N, C)`` or
                ``(B, C, T, H, W)`` of clips of this grid, or a
                :class:`~torch_geometric.data.Batch` (its :obj:`x` and
                :obj:`batch`; its graphs may have other grids).

        Returns:
            ``(edge_index, edge_type)``, node ids of clip :math:`b` offset by
            :math:`b N`; see :mod:`taggnn.graph.dynamic` for the order and
            tie-breaking. Shapes :math:`(2, B N k')` and :math:`(B N k',)`.
        """
        if self.spec.dynamic is None:
            raise ConfigError("this graph has no dynamic family; pass dynamic='knn:k' to SpatioTemporalGraph")
        k = fam.knn_k(self.spec.dynamic)
        nodes = x.x.size(0) if isinstance(x, Batch) else None
        if not isinstance(x, Batch):
            x = self._as_tokens(x)
            nodes = x.size(0) * x.size(1)
        check_edge_memory(nodes * k, f"the {self.spec.dynamic} edges of {nodes:,} tokens")
        if isinstance(x, Batch):
            edge_index = knn_edges(x.x, k, x.batch)
        else:
            edge_index = knn_edges_dense(x, k)
        return edge_index, torch.full((edge_index.size(1),), DYNAMIC, dtype=torch.long, device=edge_index.device)

    def hetero(self, x: Optional[Tensor] = None):
        """One clip as a :class:`~torch_geometric.data.HeteroData`, one relation per family
        (see :mod:`taggnn.graph.hetero`)."""
        return _hetero.to_hetero_data(self, x)

    def hetero_batch(self, x: Tensor) -> Batch:
        """Clips ``(B, N, C)`` as a heterogeneous :class:`Batch` for ``to_hetero`` / ``HeteroConv`` models."""
        return _hetero.hetero_batch(self, x)

    def metadata(self):
        """``(node_types, edge_types)`` of :meth:`hetero`, for :func:`torch_geometric.nn.to_hetero`."""
        return _hetero.metadata(self)

    def draw(self, path=None, **kwargs):
        """Draws the frames side by side with edges coloured by family (see :func:`taggnn.graph.draw.draw`);
        needs matplotlib (the ``plot`` extra)."""
        return _draw.draw(self, path, **kwargs)

    # -------------------------------------------------------------- batching
    def batched_edges(self, batch_size: int, device: DeviceLike = None) -> Tuple[Tensor, Tensor]:
        """:obj:`edge_index` and :obj:`edge_type` of :obj:`batch_size` clips.

        Clip :math:`b` has its node ids offset by :math:`b N`; cached per
        (spec, batch size, device).
        """
        symbolic = isinstance(batch_size, torch.SymInt)  # an exporter's "any batch size"
        if not symbolic:
            _check_positive_int("batch_size", batch_size)
        device = _normalise_device(device)

        def build():
            if not symbolic:  # an exporter's symbolic batch has no size to check
                check_edge_memory(batch_size * self.num_edges,
                                  f"a batch of {batch_size} graphs of {self.T}x{self.H}x{self.W} tokens")
            edge_index, edge_type = self._edges(device)
            offsets = torch.arange(batch_size, device=device) * self.num_nodes  # (B,)
            batched = edge_index.unsqueeze(1) + offsets.view(1, -1, 1)  # (2, B, E), one write
            return batched.view(2, -1), edge_type.repeat(batch_size)  # (2, B*E)

        if symbolic:  # traced for any batch size: not cached
            return build()
        return _CACHE.get((self.spec, "batched", batch_size, device), build)

    def _as_tokens(self, x: Tensor) -> Tensor:
        """``(B, N, C)`` tokens from ``(B, N, C)`` or a backbone's ``(B, C, T, H, W)``."""
        if isinstance(x, Tensor) and x.dim() == 5 and tuple(x.shape[2:]) == self.grid:
            return x.flatten(2).transpose(1, 2)  # (B, C, T, H, W) -> (B, N, C)
        self.check_node_features(x)
        return x

    def batch(self, x: Tensor, *, edges: bool = True) -> Batch:
        r"""Batches clips that share this graph into one PyG :class:`Batch`.

        The result equals ``Batch.from_data_list([Data(x=x[b], edge_index=...,
        edge_type=...) for b in range(B)])`` (including :obj:`batch`,
        :obj:`ptr` and what :meth:`~Batch.to_data_list` needs), but is built
        from the cached template: :obj:`x` is a view, edges are offset once.
        With ``dynamic`` the kNN edges of each clip follow its static ones;
        with ``edge_attr`` the batch has :obj:`edge_attr`.

        Args:
            x (torch.Tensor): Node features of shape ``(B, N, C)``, or a 3D
                backbone's output ``(B, C, T, H, W)`` for this grid.
            edges (bool, optional): Attach the batched :obj:`edge_index` and
                :obj:`edge_type`; :obj:`False` gives the nodes only (for
                consumers that never read the edge list, e.g. the structured
                propagation on a large grid). (default: :obj:`True`)
        """
        x = self._as_tokens(x)
        B, N, C = x.shape
        device = x.device
        edge_attr = None
        if edges:
            edge_index, edge_type = self.batched_edges(B, device)
            num_edges = self.edge_index_on(device).size(1)
            if self.spec.edge_attr:
                edge_attr = _CACHE.get((self.spec, "batched_attr", B, device),
                                       lambda: self.edge_attr_on(device).repeat(B, 1))
            if self.spec.dynamic is not None:
                dyn_index, dyn_type = self.dynamic_edges(x)
                per_clip = dyn_index.size(1) // B
                edge_index = torch.cat([edge_index.view(2, B, -1), dyn_index.view(2, B, per_clip)], 2).view(2, -1)
                edge_type = torch.cat([edge_type.view(B, -1), dyn_type.view(B, per_clip)], 1).view(-1)
                if edge_attr is not None:
                    edge_attr = self.edge_attr_for(edge_index, edge_type)
                num_edges += per_clip
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
            (self.spec, "batch_index", B, device, edges, num_edges), build_index
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
        if edge_attr is not None:
            out.edge_attr = edge_attr
            out._slice_dict["edge_attr"] = edge_ptr
            out._inc_dict["edge_attr"] = zeros
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

        The entry of an edge :math:`j \rightarrow i` is at row :math:`i`, column
        :math:`j` (PyG's ``adj_t`` layout, degrees counted at the target as
        ``gcn_norm`` does). The built-in families are symmetric, so
        :math:`\hat{A}^\top = \hat{A}`; a custom family with one-way edges is not.

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
        if normalize:  # degree of M + I: in-degree without listed self-loops, plus one
            degree = torch.bincount(edge_index[1, keep], minlength=N).to(torch.float64) + 1  # (N,)
            value = degree[row].rsqrt() * degree[col].rsqrt()
        offsets = torch.arange(batch_size) * N  # (B,)
        row = (row.unsqueeze(0) + offsets.view(-1, 1)).reshape(-1)  # (B*nnz,)
        col = (col.unsqueeze(0) + offsets.view(-1, 1)).reshape(-1)
        value = value.repeat(batch_size)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            coo = torch.sparse_coo_tensor(
                torch.stack([col, row]), value.to(dtype), (batch_size * N, batch_size * N),  # (target, source)
                check_invariants=True,
            ).coalesce()
            return coo.to_sparse_csr().to(device)

    # ------------------------------------------------------------------ misc
    def with_options(self, **changes) -> "SpatioTemporalGraph":
        """A copy with some of ``T, H, W, intra`` (or ``spatial``), ``temporal, dynamic, custom, self_loops,
        edge_attr`` changed."""
        fields = dict(
            T=self.T, H=self.H, W=self.W, intra=self.intra,
            temporal=self.temporal, self_loops=self.self_loops, dynamic=self.dynamic, custom=self.custom,
            edge_attr=self.spec.edge_attr or None,
        )
        if "spatial" in changes:
            if "intra" in changes:
                raise ValueError("give intra or spatial (the same option), not both")
            changes = dict(changes)
            changes["intra"] = changes.pop("spatial")
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
            + (f"dynamic={self.dynamic!r}, " if self.dynamic else "")
            + (f"custom={getattr(self.custom, '__name__', self.custom)!r}, " if self.custom else "")
            + (f"edge_attr={self.spec.edge_attr}, " if self.spec.edge_attr else "")
            + f"self_loops={self.self_loops}, num_nodes={self.num_nodes}, "
            f"num_edges={self.num_edges})"
        )
