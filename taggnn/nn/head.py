r"""TAG-Head: Transformer + spatio-temporal graph head on 3D backbone features."""
from __future__ import annotations

import warnings
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from ..errors import ConfigError
from ..graph import SpatioTemporalGraph
from ..graph.builder import EDGE_ATTRS
from ..graph.families import parse_dynamic, parse_spatial, parse_temporal
from .backends import backend_class
from .encoder import TokenTransformer
from .positional import SpatioTemporalPositionalEncoding, _check_grid
from .readout import GraphReadout
from .refiner import GraphRefiner

POST_GRAPH = ("none", "ffn")
EDGE_ATTR_CHOICES = ("none", "offset", "type", "offset+type")


def parse_edge_attr(value, name: str = "edge_attr") -> Optional[Tuple[str, ...]]:
    """The edge features asked by ``value``: ``None``, ``"offset"``, ``"type"``, ``"offset+type"``
    (or a list of those names) -> ``None`` or a tuple in canonical order."""
    if value is None or value is False or value == "none":
        return None
    kinds = value.split("+") if isinstance(value, str) else value
    if not isinstance(kinds, (list, tuple)) or not kinds or any(kind not in EDGE_ATTRS for kind in kinds):
        raise ConfigError(f"{name} must be one of {', '.join(EDGE_ATTR_CHOICES)}, got {value!r}")
    return tuple(kind for kind in EDGE_ATTRS if kind in kinds)


class NodeBatch(NamedTuple):
    """The fields of a PyG :class:`~torch_geometric.data.Batch` the graph stage reads, as a plain
    tuple: used while ``torch.compile`` / ``torch.export`` trace the head (they cannot trace
    PyG's attribute storage); equal in content to :meth:`SpatioTemporalGraph.batch`."""

    x: Tensor  # (B*N, C)
    batch: Tensor  # (B*N,)
    ptr: Tensor  # (B+1,)
    num_graphs: int


class PostGraphFFN(nn.Module):
    r"""A residual per-node MLP after propagation:
    :math:`H \leftarrow H + \gamma \odot W_2\, \mathrm{GELU}(W_1 \mathrm{LN}(H))`
    (:math:`\gamma = 1` unless ``layer_scale`` is set).

    A non-linearity between the graph and a mean readout: the pooled embedding then depends
    on the propagated features, not only on a fixed weighting of the tokens.

    **Shapes:** input :math:`(*, C)`, output :math:`(*, C)`.
    """

    def __init__(self, channels: int, hidden: int, *, dropout: float = 0.0, layer_scale: Optional[float] = None):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, channels), nn.Dropout(dropout))
        self.gamma = nn.Parameter(torch.full((channels,), float(layer_scale))) if layer_scale is not None else None

    def forward(self, x: Tensor) -> Tensor:
        update = self.mlp(self.norm(x))
        return x + (update if self.gamma is None else self.gamma * update)


class TAGHead(nn.Module):
    r"""The TAG-Head of "TAG-Head: Time-Aligned Graph head for fine-grained
    action recognition" (Sec. 3): backbone features in, class logits out.

    .. math::
        Z^{(0)} &= F + E \qquad \text{(learnable 3D positional table)} \\
        Z^{(K)} &= \mathrm{Transformer}(Z^{(0)}) \qquad \text{(pre-norm)} \\
        H^{(k+1)} &= (1 - \alpha) \hat{A} H^{(k)} + \alpha H^{(0)}, \quad
        H^{(0)} = Z^{(K)} \qquad \text{(APPNP on IF-FC + TAT edges)} \\
        \hat{y} &= W_o \Big( \tfrac{1}{N} \textstyle\sum_n H^{(K_p)}_n \Big) + b_o

    The forward pass is PyG's: the Transformer tokens become a
    :class:`~torch_geometric.data.Batch` of the clips' graphs (from the cached
    template of :class:`~taggnn.graph.SpatioTemporalGraph`, no per-clip objects),
    PyG's :class:`~torch_geometric.nn.conv.APPNP` refines the batch's node
    features on its cached sparse adjacency, and a
    :mod:`torch_geometric.nn.aggr` aggregation reads out each graph over the
    batch's ``batch`` / ``ptr`` vectors.

    .. note::
        APPNP is linear and the paper's readout is the mean, so with the paper's
        options the pooled embedding is a *fixed* weighted mean of the
        Transformer tokens, :math:`\sum_n w_n H^{(0)}_n` with
        :math:`w = \frac{1}{N} g_K(\hat{A}) \mathbb{1}` (uniform up to
        :math:`\pm 10^{-3}` on the paper's grids): the graph cannot change what
        the classifier sees (:func:`taggnn.analysis.pooled_token_weights`). The
        options ``readout``, ``post_graph``, ``edge_weights`` and
        ``propagation`` give graph stages whose effect survives the readout
        (:func:`taggnn.analysis.graph_sensitivity` measures it).

    The switches give every row of the paper's Table 4:

    =====================  ===================  =========  ============
    row                    ``use_transformer``  ``intra``  ``temporal``
    =====================  ===================  =========  ============
    B                      False                False      False
    B+TE                   True                 False      False
    B+TE+IF-FC             True                 True       False
    B+TE+TAT               True                 False      True
    Full                   True                 True       True
    =====================  ===================  =========  ============

    With neither edge set there is no graph stage (no refiner module); with
    ``use_transformer=False`` there is no positional table either, unless
    ``use_pos_embed=True``.

    Args:
        in_channels (int): Backbone feature width :math:`C`.
        num_classes (int): Number of classes (``0`` for a head without
            classifier, as in timm).
        grid (tuple): Token grid :math:`(T', H', W')` of the backbone output.
        num_layers (int, optional): Transformer layers. (default: ``2``)
        num_heads (int, optional): Attention heads. (default: ``8``)
        ffn_dim (int, optional): Transformer MLP width; Table 2 sweeps
            256-2048. (default: ``1024``)
        dropout (float, optional): Transformer dropout. (default: ``0.1``;
            the authors' code uses ``0.5``)
        fast_cpu_dropout (bool, optional): Draw the Transformer's dropout masks
            of CPU tensors in bulk (:mod:`taggnn.nn.dropout`): the same
            distribution, about 3x cheaper than PyTorch's CPU dropout; GPUs always
            use PyTorch's. (default: :obj:`True`)
        norm_first (bool, optional): Pre-norm blocks as in the paper; set
            :obj:`False` for the authors' post-norm. (default: :obj:`True`)
        use_transformer (bool, optional): TE in Table 4. (default: :obj:`True`)
        use_pos_embed (bool, optional): Positional table; defaults to
            ``use_transformer``.
        intra (bool, optional): IF-FC edges: the spatial family
            ``graph_spatial`` on (``False``: no spatial edges, whatever
            ``graph_spatial`` says). (default: :obj:`True`)
        temporal (bool, optional): TAT edges: the temporal family
            ``graph_temporal`` on. (default: :obj:`True`)
        graph_spatial (str, optional): The spatial edge family
            (:mod:`taggnn.graph.families`): ``"full"`` (IF-FC, the paper),
            ``"grid4"``, ``"grid8"``, ``"radius:r"``,
            ``"radius:r:chebyshev"`` or ``"none"``. (default: ``"full"``)
        graph_temporal (str, optional): The temporal edge family:
            ``"aligned"`` (TAT, the paper), ``"window:k"``, ``"window:k:d"``,
            ``"cube:r"``, ``"full"`` or ``"none"``. (default: ``"aligned"``)
        graph_dynamic (str, optional): ``"knn:k"``: also link every token to
            its :math:`k` nearest tokens in feature space, rebuilt from the
            graph stage's input tokens at every forward (edge type ``3``).
            (default: :obj:`None`)
        graph_edge_attr (str, optional): ``"offset"``, ``"type"`` or
            ``"offset+type"``: edge features
            (:meth:`~taggnn.graph.SpatioTemporalGraph.edge_attr_for`) for
            convolutions with an ``edge_dim`` argument (``TransformerConv``,
            ``GINEConv``, ``GATv2Conv``, ...). (default: :obj:`None`)
        propagation (str, optional): ``"appnp"`` (paper), ``"gcn"``,
            ``"gat"``, ``"none"`` or the name of a ``torch_geometric.nn``
            convolution (``"SAGEConv"``, ``"RGCNConv"``, ...; see
            :class:`GraphRefiner`). (default: ``"appnp"``)
        K (int, optional): APPNP steps. (default: ``2``)
        alpha (float, optional): APPNP teleport. (default: ``0.1``)
        backend (str, optional): Propagation back-end, see
            :class:`GraphRefiner`. (default: :obj:`None`: ``"csr"`` for the
            paper's graph, ``"stencil"`` for local families, ``"edge_index"``
            with kNN edges)
        num_graph_layers (int, optional): Depth of GCN/GAT stacks. (default: ``2``)
        pre_classifier_norm (bool, optional): LayerNorm before the classifier,
            as in the authors' code. (default: :obj:`False`)
        head_dropout (float, optional): Dropout on the pooled feature.
            (default: ``0.0``)
        pos_init_std (float, optional): Initial std of the positional table.
            (default: ``0.02``)
        pos_init (str, optional): ``"trunc_normal"`` or ``"normal"`` (the
            authors' ``torch.randn``). (default: ``"trunc_normal"``)
        readout (str, optional): Graph readout, ``"mean"`` (paper),
            ``"max"``, ``"softmax"``, ``"powermean"``, ``"attention"`` or
            ``"set2set"`` (:class:`GraphReadout`). (default: ``"mean"``)
        post_graph (str, optional): ``"none"`` (paper) or ``"ffn"``: a
            residual per-node MLP after propagation,
            :math:`H \leftarrow H + \mathrm{MLP}(\mathrm{LN}(H))` (width
            ``ffn_dim``), so that even the mean readout sees the graph.
            (default: ``"none"``)
        edge_weights (str, optional): ``"fixed"`` (paper) or ``"learned"``: one
            learnable positive weight per edge type. (default: ``"fixed"``)
        graph_kwargs (dict, optional): Extra arguments of a
            ``torch_geometric.nn`` convolution class.
        graph_activation (str, optional): Activation between the layers of a
            convolution stack. (default: ``"relu"``)
        graph_residual (bool, optional): Residual connections in a convolution
            stack. (default: :obj:`False`)
        layer_scale (float, optional): Start the head as (nearly) the identity
            on the backbone: every residual branch of the Transformer, the
            positional table, the graph stage (:math:`H^{(0)} + \gamma \odot
            (\mathrm{graph}(H^{(0)}) - H^{(0)})`) and the post-graph MLP are
            scaled by learnable per-channel vectors initialised to this value
            (LayerScale). ``0`` makes the pooled embedding at initialisation
            exactly the mean of the backbone tokens, row B's readout. Needs
            ``norm_first=True``. (default: :obj:`None`, the paper's head)
        embed_dim (int, optional): Project the backbone features to this width
            with a linear layer before the positional encoding (e.g. 512 for the
            2048-channel I3D / Slow / CSN backbones, which would otherwise give a
            ~50M-parameter head). The paper does not say whether it projected.
            (default: :obj:`None`, the backbone's width)

    **Shapes:**
        - **input:** :math:`(B, C, T', H', W')`
        - **output:** :math:`(B, \text{num\_classes})`
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        grid: Sequence[int],
        *,
        num_layers: int = 2,
        num_heads: int = 8,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
        fast_cpu_dropout: bool = True,
        norm_first: bool = True,
        use_transformer: bool = True,
        use_pos_embed: Optional[bool] = None,
        intra: bool = True,
        temporal: bool = True,
        graph_spatial: str = "full",
        graph_temporal: str = "aligned",
        graph_dynamic: Optional[str] = None,
        graph_edge_attr: Optional[str] = None,
        propagation: str = "appnp",
        K: int = 2,
        alpha: float = 0.1,
        backend: Optional[str] = None,
        num_graph_layers: int = 2,
        graph_heads: int = 8,
        pre_classifier_norm: bool = False,
        head_dropout: float = 0.0,
        pos_init_std: float = 0.02,
        pos_init: str = "trunc_normal",
        embed_dim: Optional[int] = None,
        readout: str = "mean",
        post_graph: str = "none",
        edge_weights: str = "fixed",
        graph_kwargs: Optional[Mapping[str, Any]] = None,
        graph_activation: str = "relu",
        graph_residual: bool = False,
        layer_scale: Optional[float] = None,
    ):
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be an integer >= 1, got {in_channels!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        self.grid: Tuple[int, int, int] = _check_grid(grid)
        if embed_dim is not None and (isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1):
            raise ValueError(f"embed_dim must be an integer >= 1 or None, got {embed_dim!r}")
        self.in_channels = in_channels
        self.embed_dim = embed_dim or in_channels  # the width of tokens, graph and classifier
        self.num_classes = num_classes
        width = self.embed_dim
        self.proj = nn.Linear(in_channels, width) if embed_dim is not None else None
        self.use_transformer = bool(use_transformer)
        use_pos_embed = self.use_transformer if use_pos_embed is None else bool(use_pos_embed)

        self.pos_embed = (
            SpatioTemporalPositionalEncoding(self.grid, width, init_std=pos_init_std, init=pos_init)
            if use_pos_embed else None
        )
        if post_graph not in POST_GRAPH:
            raise ValueError(f"post_graph must be one of {', '.join(POST_GRAPH)}, got {post_graph!r}")
        if layer_scale is not None and (isinstance(layer_scale, bool) or not layer_scale >= 0):
            raise ValueError(f"layer_scale must be a number >= 0 or None, got {layer_scale!r}")
        self.layer_scale = layer_scale
        self.transformer = (
            TokenTransformer(
                width, num_layers=num_layers, num_heads=num_heads,
                ffn_dim=ffn_dim, dropout=dropout, norm_first=norm_first, layer_scale=layer_scale,
                fast_cpu_dropout=fast_cpu_dropout,
            )
            if self.use_transformer else None
        )
        # LayerScale of the positional table and of the graph stage (identity at 0)
        self.pos_gamma = (nn.Parameter(torch.full((width,), float(layer_scale)))
                          if layer_scale is not None and self.pos_embed is not None else None)
        self.graph = SpatioTemporalGraph(
            *self.grid,
            spatial=parse_spatial(graph_spatial, "graph_spatial") if intra else "none",
            temporal=parse_temporal(graph_temporal, "graph_temporal") if temporal else "none",
            dynamic=parse_dynamic(graph_dynamic, "graph_dynamic"),
            edge_attr=parse_edge_attr(graph_edge_attr, "graph_edge_attr"),
        )
        self._refiner_options = dict(
            propagation=propagation, K=K, alpha=alpha, backend=backend,
            channels=width, num_layers=num_graph_layers, heads=graph_heads, edge_weights=edge_weights,
            activation=graph_activation, residual=graph_residual, conv_kwargs=graph_kwargs,
        )
        # decided from the families (no edge tensor is built: the config check builds heads on `meta`)
        has_families = self.graph.spatial != "none" or self.graph.temporal != "none" or self.graph.dynamic is not None
        uses_graph = has_families and propagation != "none"
        # Built even when unused so that bad options fail here, not later.
        refiner = GraphRefiner(self.graph, **self._refiner_options)
        self.refiner = refiner if uses_graph else None
        self.graph_gamma = (nn.Parameter(torch.full((width,), float(layer_scale)))
                            if layer_scale is not None and self.refiner is not None else None)
        self.post_graph = PostGraphFFN(width, ffn_dim, dropout=dropout, layer_scale=layer_scale) \
            if post_graph == "ffn" else None
        self.readout = GraphReadout(readout, width)

        self.norm = nn.LayerNorm(width) if pre_classifier_norm else None
        self.head_dropout = nn.Dropout(head_dropout)
        self.classifier = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    # ---------------------------------------------------------------- utils
    @property
    def num_nodes(self) -> int:
        return self.graph.num_nodes

    def reset_classifier(self, num_classes: int) -> None:
        """Replaces the classifier by a freshly initialised one (0: none)."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        first = next(self.parameters(), None)
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if first is not None:
            self.classifier.to(device=first.device, dtype=first.dtype)

    def set_grid(self, grid: Sequence[int]) -> None:
        """Adapts the head to another token grid, e.g. 64 instead of 32 frames.

        Interpolates the positional table and rebuilds the graph; the
        Transformer and classifier do not depend on the grid.
        """
        grid = _check_grid(grid)
        if self.pos_embed is not None:
            self.pos_embed.resize(grid)
        self.graph = self.graph.with_options(T=grid[0], H=grid[1], W=grid[2])
        if self.refiner is not None:
            self.refiner.graph = self.graph
        self.grid = grid

    def _check_features(self, features: Tensor) -> None:
        if not isinstance(features, Tensor) or features.dim() != 5:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"expected backbone features of shape (B, C={self.in_channels}, "
                f"T={self.grid[0]}, H={self.grid[1]}, W={self.grid[2]}), got {shape}"
            )
        B, C, T, H, W = features.shape
        if C != self.in_channels:
            raise ValueError(
                f"expected {self.in_channels} feature channels, got {C} "
                f"(features of shape {tuple(features.shape)})"
            )
        if (T, H, W) != self.grid:
            raise ValueError(
                f"expected a token grid (T, H, W) = {self.grid}, got {(T, H, W)} "
                f"(features of shape {tuple(features.shape)}); call "
                f"head.set_grid({(T, H, W)}) to interpolate the positional table"
            )

    # -------------------------------------------------------------- forward
    def tokens(self, features: Tensor) -> Tensor:
        """Backbone features as a token sequence in node-id order, ``(B, N, C)``
        (``C = embed_dim`` after the optional projection)."""
        self._check_features(features)
        tokens = features.flatten(2).transpose(1, 2)  # (B, T*H*W, C)
        return self.proj(tokens) if self.proj is not None else tokens

    def encode(self, features: Tensor) -> Tensor:
        """Tokens after positional encoding and Transformer: :math:`H^{(0)}`, ``(B, N, C)``."""
        x = self.tokens(features)
        if self.pos_embed is not None:
            if self.pos_gamma is None:
                x = self.pos_embed(x)
            else:
                x = x + self.pos_gamma * (self.pos_embed(x) - x)  # gamma * E, without materialising E twice
        if self.transformer is not None:
            x = self.transformer(x)
        return x

    def batch(self, h0: Tensor) -> Union[Batch, NodeBatch]:
        """The clips' graphs as one PyG :class:`Batch` with node features ``h0`` ``(B, N, C)``
        (cached template: ``x`` is a view; the edge list is attached unless the graph stage's
        back-end never reads it, e.g. the structured propagation). While ``torch.compile`` traces,
        a :class:`NodeBatch` with the same fields."""
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            B, N, C = h0.shape
            nodes = torch.arange(B, device=h0.device).repeat_interleave(N)  # (B*N,)
            ptr = torch.arange(B + 1, device=h0.device) * N  # (B+1,)
            return NodeBatch(h0.reshape(B * N, C), nodes, ptr, B)
        # the graph stage builds kNN edges itself (from h0): the batch would only build them twice
        edges = (self.refiner is not None and backend_class(self.refiner.backend).needs_edges
                 and self.graph.dynamic is None)
        return self.graph.batch(h0, edges=edges)

    def graph_stage(self, batch: Union[Batch, NodeBatch]) -> Tensor:
        """Refinement, LayerScale gate and post-graph MLP on the batch's nodes, ``(B N, C)``."""
        x = batch.x
        if self.refiner is not None:
            refined = self.refiner(batch)  # (B*N, C)
            x = refined if self.graph_gamma is None else x + self.graph_gamma * (refined - x)
        if self.post_graph is not None:
            x = self.post_graph(x)
        return x

    def forward_nodes(self, features: Tensor) -> Tensor:
        """Node features after the graph stage, ``(B, N, C)``."""
        h0 = self.encode(features)
        return self.graph_stage(self.batch(h0)).view(h0.shape)

    def graph_batch(self, features: Tensor) -> Batch:
        """The refined nodes as a PyG :class:`Batch` for analysis.

        :obj:`x` holds the graph stage's output, :obj:`h0` the Transformer output
        :math:`H^{(0)}` (both ``(B N, C)``), with :obj:`edge_index`,
        :obj:`edge_type`, :obj:`batch`, :obj:`ptr` and :obj:`pos`.
        """
        h0 = self.encode(features)
        refined = self.graph_stage(self.batch(h0))
        batch = self.graph.batch(refined.view(h0.shape))
        B = h0.size(0)
        batch.h0 = h0.reshape(B * self.num_nodes, -1)  # (B*N, C)
        batch.pos = self.graph.pos_on(h0.device).repeat(B, 1)  # (B*N, 3)
        return batch

    def forward_pooled(self, features: Tensor) -> Tensor:
        """The pooled clip embedding, ``(B, embed_dim)``: the readout of the graph stage's
        nodes over the batch vector (the paper: global spatio-temporal mean). The nodes before
        pooling are :meth:`forward_nodes`; :meth:`classify` classifies the embedding."""
        h0 = self.encode(features)
        batch = self.batch(h0)
        nodes = self.graph_stage(batch)  # (B*N, C)
        return self.readout(nodes, batch.batch, batch.ptr, h0.size(0))

    def forward_features(self, features: Tensor) -> Tensor:
        """Deprecated name of :meth:`forward_pooled` (the pooled embedding). timm's
        ``forward_features`` returns the tokens before pooling, which is :meth:`forward_nodes` here."""
        warnings.warn("TAGHead.forward_features is deprecated: it returns the pooled embedding (timm's "
                      "forward_features returns the tokens); call forward_pooled, or forward_nodes for the tokens",
                      FutureWarning, stacklevel=2)
        return self.forward_pooled(features)

    def forward_head(self, pooled: Tensor) -> Tensor:
        """Deprecated name of :meth:`classify`. timm's ``forward_head`` pools tokens and then
        classifies; this one took the pooled embedding, which :meth:`classify` now does."""
        warnings.warn("TAGHead.forward_head is deprecated: it classifies the pooled embedding (timm's forward_head "
                      "pools tokens first); call classify", FutureWarning, stacklevel=2)
        return self.classify(pooled)

    def classify(self, pooled: Tensor) -> Tensor:
        """Classifier on the pooled embedding ``(B, C)`` (:meth:`forward_pooled`) -> logits
        ``(B, num_classes)``."""
        if pooled.dim() != 2 or pooled.size(1) != self.embed_dim:
            raise ValueError(f"expected pooled features of shape (B, {self.embed_dim}), got {tuple(pooled.shape)}")
        if self.norm is not None:
            pooled = self.norm(pooled)
        return self.classifier(self.head_dropout(pooled))

    def forward(self, features: Tensor) -> Tensor:
        return self.classify(self.forward_pooled(features))

    def extra_repr(self) -> str:
        width = f", embed_dim={self.embed_dim}" if self.proj is not None else ""
        return f"in_channels={self.in_channels}{width}, num_classes={self.num_classes}, grid={self.grid}"
