r"""TAG-Head: Transformer + spatio-temporal graph head on 3D backbone features."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from torch import Tensor, nn
from torch_geometric.data import Batch

from ..graph import SpatioTemporalGraph
from .encoder import TokenTransformer
from .positional import SpatioTemporalPositionalEncoding, _check_grid
from .refiner import GraphRefiner


class TAGHead(nn.Module):
    r"""The TAG-Head of "TAG-Head: Time-Aligned Graph head for fine-grained
    action recognition" (Sec. 3): backbone features in, class logits out.

    .. math::
        Z^{(0)} &= F + E \qquad \text{(learnable 3D positional table)} \\
        Z^{(K)} &= \mathrm{Transformer}(Z^{(0)}) \qquad \text{(pre-norm)} \\
        H^{(k+1)} &= (1 - \alpha) \hat{A} H^{(k)} + \alpha H^{(0)}, \quad
        H^{(0)} = Z^{(K)} \qquad \text{(APPNP on IF-FC + TAT edges)} \\
        \hat{y} &= W_o \Big( \tfrac{1}{N} \textstyle\sum_n H^{(K_p)}_n \Big) + b_o

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
        norm_first (bool, optional): Pre-norm blocks as in the paper; set
            :obj:`False` for the authors' post-norm. (default: :obj:`True`)
        use_transformer (bool, optional): TE in Table 4. (default: :obj:`True`)
        use_pos_embed (bool, optional): Positional table; defaults to
            ``use_transformer``.
        intra (bool, optional): IF-FC edges. (default: :obj:`True`)
        temporal (bool, optional): TAT edges. (default: :obj:`True`)
        propagation (str, optional): ``"appnp"`` (paper), ``"gcn"``,
            ``"gat"`` or ``"none"``. (default: ``"appnp"``)
        K (int, optional): APPNP steps. (default: ``2``)
        alpha (float, optional): APPNP teleport. (default: ``0.1``)
        backend (str, optional): Propagation back-end, see
            :class:`GraphRefiner`. (default: :obj:`None`, the fastest exact)
        num_graph_layers (int, optional): Depth of GCN/GAT stacks. (default: ``2``)
        pre_classifier_norm (bool, optional): LayerNorm before the classifier,
            as in the authors' code. (default: :obj:`False`)
        head_dropout (float, optional): Dropout on the pooled feature.
            (default: ``0.0``)
        pos_init_std (float, optional): Initial std of the positional table.
            (default: ``0.02``)
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
        norm_first: bool = True,
        use_transformer: bool = True,
        use_pos_embed: Optional[bool] = None,
        intra: bool = True,
        temporal: bool = True,
        propagation: str = "appnp",
        K: int = 2,
        alpha: float = 0.1,
        backend: Optional[str] = None,
        num_graph_layers: int = 2,
        graph_heads: int = 8,
        pre_classifier_norm: bool = False,
        head_dropout: float = 0.0,
        pos_init_std: float = 0.02,
        embed_dim: Optional[int] = None,
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
            SpatioTemporalPositionalEncoding(self.grid, width, init_std=pos_init_std)
            if use_pos_embed else None
        )
        self.transformer = (
            TokenTransformer(
                width, num_layers=num_layers, num_heads=num_heads,
                ffn_dim=ffn_dim, dropout=dropout, norm_first=norm_first,
            )
            if self.use_transformer else None
        )
        self.graph = SpatioTemporalGraph(
            *self.grid, intra="full" if intra else "none", temporal="aligned" if temporal else "none"
        )
        self._refiner_options = dict(
            propagation=propagation, K=K, alpha=alpha, backend=backend,
            channels=width, num_layers=num_graph_layers, heads=graph_heads,
        )
        uses_graph = (intra or temporal) and propagation != "none"
        # Built even when unused so that bad options fail here, not later.
        refiner = GraphRefiner(self.graph, **self._refiner_options)
        self.refiner = refiner if uses_graph else None

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
            self.refiner._sparse_tensors.clear()
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
            x = self.pos_embed(x)
        if self.transformer is not None:
            x = self.transformer(x)
        return x

    def forward_nodes(self, features: Tensor) -> Tensor:
        """Refined node features :math:`H^{(K_p)}`, ``(B, N, C)``."""
        x = self.encode(features)
        if self.refiner is not None:
            x = self.refiner(x)
        return x

    def graph_batch(self, features: Tensor) -> Batch:
        """The refined nodes as a PyG :class:`Batch` for analysis.

        :obj:`x` holds :math:`H^{(K_p)}`, :obj:`h0` the Transformer output
        :math:`H^{(0)}` (both ``(B N, C)``), with :obj:`edge_index`,
        :obj:`edge_type`, :obj:`batch`, :obj:`ptr` and :obj:`pos`.
        """
        h0 = self.encode(features)
        refined = self.refiner(h0) if self.refiner is not None else h0
        batch = self.graph.batch(refined)
        B = h0.size(0)
        batch.h0 = h0.reshape(B * self.num_nodes, -1)  # (B*N, C)
        batch.pos = self.graph.pos_on(h0.device).repeat(B, 1)  # (B*N, 3)
        return batch

    def forward_features(self, features: Tensor) -> Tensor:
        """The pooled clip embedding, ``(B, embed_dim)`` (global spatio-temporal mean)."""
        return self.forward_nodes(features).mean(dim=1)

    def forward_head(self, pooled: Tensor) -> Tensor:
        """Classifier on pooled features ``(B, C)`` -> logits ``(B, num_classes)``."""
        if pooled.dim() != 2 or pooled.size(1) != self.embed_dim:
            raise ValueError(f"expected pooled features of shape (B, {self.embed_dim}), got {tuple(pooled.shape)}")
        if self.norm is not None:
            pooled = self.norm(pooled)
        return self.classifier(self.head_dropout(pooled))

    def forward(self, features: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(features))

    def extra_repr(self) -> str:
        width = f", embed_dim={self.embed_dim}" if self.proj is not None else ""
        return f"in_channels={self.in_channels}{width}, num_classes={self.num_classes}, grid={self.grid}"
