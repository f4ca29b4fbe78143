r"""The token Transformer encoder of TAG-Head."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import Dropout, dropout, uses_fast_path


class TokenEncoderLayer(nn.TransformerEncoderLayer):
    r""":class:`torch.nn.TransformerEncoderLayer` (same parameters, state-dict keys and
    evaluation path) whose training-mode dropouts on CPU draw their masks with
    :func:`taggnn.nn.dropout.dropout`: the three dropout modules, and the attention
    dropout through an explicit attention

    .. math::
        \mathrm{Attn}(X) = \mathrm{Drop}\big(\mathrm{softmax}(Q K^\top / \sqrt{d_h})\big) V,
        \qquad [Q, K, V] = X W_{in}^\top + b_{in},

    per head, followed by ``out_proj``: the computation of PyTorch's math attention path.
    With ``fast_cpu_dropout=False``, on other devices, or with attention masks it is
    PyTorch's layer unchanged.

    **Shapes:** input and output :math:`(B, N, C)` (``batch_first``).
    """

    def __init__(self, *args, fast_cpu_dropout: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.fast_cpu_dropout = bool(fast_cpu_dropout)
        if self.fast_cpu_dropout:
            p = self.dropout.p
            self.dropout, self.dropout1, self.dropout2 = Dropout(p), Dropout(p), Dropout(p)

    def _sa_block(self, x: Tensor, attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor],
                  is_causal: bool = False) -> Tensor:
        attention = self.self_attn
        p = attention.dropout
        if (not self.fast_cpu_dropout or attn_mask is not None or key_padding_mask is not None or is_causal
                or not attention.batch_first or not attention._qkv_same_embed_dim
                or not uses_fast_path(x, p, self.training)):
            return super()._sa_block(x, attn_mask, key_padding_mask, is_causal)
        B, N, C = x.shape
        heads = attention.num_heads
        qkv = F.linear(x, attention.in_proj_weight, attention.in_proj_bias)  # (B, N, 3C)
        q, k, v = qkv.view(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, N, d)
        weights = torch.softmax((q * (C // heads) ** -0.5) @ k.transpose(-2, -1), dim=-1)  # (B, h, N, N)
        out = dropout(weights, p, True) @ v  # (B, h, N, d)
        out = attention.out_proj(out.transpose(1, 2).reshape(B, N, C))  # (B, N, C)
        return self.dropout1(out)


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
        fast_cpu_dropout (bool, optional): Draw the training-mode dropout masks of CPU
            tensors in bulk (:class:`TokenEncoderLayer`): the same distribution, about
            3x cheaper than PyTorch's CPU dropout. (default: :obj:`True`)
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
        fast_cpu_dropout: bool = True,
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
        layer = TokenEncoderLayer(
            d_model=channels,
            nhead=num_heads,
            dim_feedforward=ffn_dim,
            dropout=dropout,
            activation=activation,
            batch_first=True,
            norm_first=norm_first,
            fast_cpu_dropout=fast_cpu_dropout,
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
