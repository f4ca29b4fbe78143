r"""The token Transformer encoder of TAG-Head."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class TokenTransformer(nn.Module):
    r"""A stack of Transformer encoder layers over the :math:`N = T' H' W'` tokens.

    With ``norm_first=True`` (the paper, Sec. 3) every layer is a pre-norm
    residual block

    .. math::
        U = Z + \mathrm{MHA}(\mathrm{LN}(Z)), \qquad
        Z' = U + \mathrm{MLP}(\mathrm{LN}(U)),

    with no final LayerNorm (the paper feeds :math:`Z^{(K)}` to the graph).
    ``norm_first=False`` gives the post-norm blocks of PyTorch's default
    :class:`~torch.nn.TransformerEncoderLayer`, as in the authors' code.

    Args:
        channels (int): Token width :math:`C`; must be divisible by ``num_heads``.
        num_layers (int, optional): Encoder layers. (default: ``2``)
        num_heads (int, optional): Attention heads, :math:`d_h = C / H`.
            (default: ``8``)
        ffn_dim (int, optional): MLP hidden width. (default: ``1024``)
        dropout (float, optional): Dropout in attention and MLP. (default: ``0.1``)
        norm_first (bool, optional): Pre-norm blocks. (default: :obj:`True`)
        activation (str, optional): MLP activation, ``"relu"`` (the
            PyTorch default the authors use) or ``"gelu"``. (default: ``"relu"``)
        layer_scale (float, optional): LayerScale (Touvron et al., "Going deeper with
            image transformers", ICCV 2021): every residual branch is multiplied by a
            learnable per-channel vector initialised to this value,
            :math:`U = Z + \gamma_1 \odot \mathrm{MHA}(\mathrm{LN}(Z))`; ``0`` makes every
            layer the identity at initialisation. Pre-norm only. (default: :obj:`None`, off)

    **Shapes:**
        - **input:** :math:`(B, N, C)`
        - **output:** :math:`(B, N, C)`
    """

    def __init__(
        self,
        channels: int,
        *,
        num_layers: int = 2,
        num_heads: int = 8,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
        norm_first: bool = True,
        activation: str = "relu",
        layer_scale: Optional[float] = None,
    ):
        super().__init__()
        if num_heads < 1 or channels % num_heads != 0:
            raise ValueError(
                f"channels ({channels}) must be divisible by num_heads ({num_heads})"
            )
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")
        layer = nn.TransformerEncoderLayer(
            d_model=channels,
            nhead=num_heads,
            dim_feedforward=ffn_dim,
            dropout=dropout,
            activation=activation,
            batch_first=True,
            norm_first=norm_first,
        )
        # Same module names as the authors' `transformer.layers.<i>.*` keys.
        self.layers = nn.TransformerEncoder(
            layer, num_layers=num_layers, enable_nested_tensor=False
        ).layers
        self.channels = channels
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.norm_first = norm_first
        self.layer_scale = layer_scale
        if layer_scale is not None:
            if not norm_first:
                raise ValueError("layer_scale needs pre-norm blocks (norm_first=True)")
            # (layers, 2, C): gamma of the attention and MLP branches of every layer
            self.gammas = nn.Parameter(torch.full((num_layers, 2, channels), float(layer_scale)))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.size(2) != self.channels:
            raise ValueError(f"expected tokens of shape (B, N, C={self.channels}), got {tuple(x.shape)}")
        if self.layer_scale is None:
            for layer in self.layers:
                x = layer(x)
            return x
        for layer, gamma in zip(self.layers, self.gammas):
            x = x + gamma[0] * layer._sa_block(layer.norm1(x), None, None)
            x = x + gamma[1] * layer._ff_block(layer.norm2(x))
        return x

    def no_weight_decay(self):
        return {"gammas"} if self.layer_scale is not None else set()

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, num_layers={len(self.layers)}, "
            f"num_heads={self.num_heads}, ffn_dim={self.ffn_dim}, "
            f"norm={'pre' if self.norm_first else 'post'}"
        )
