r"""Learnable 3D (space-time) positional encoding of TAG-Head."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Initialisations of the positional table: truncated at two standard deviations, or the authors' torch.randn.
POS_INITS = ("trunc_normal", "normal")


def _check_grid(grid) -> Tuple[int, int, int]:
    try:
        grid = tuple(int(g) for g in grid)
    except TypeError:
        raise ValueError(f"grid must be a (T, H, W) triple of positive integers, got {grid!r}") from None
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"grid must be a (T, H, W) triple of positive integers, got {grid!r}")
    return grid


class SpatioTemporalPositionalEncoding(nn.Module):
    r"""A learnable embedding :math:`e_{t,p} \in \mathbb{R}^C` per token
    (the paper's ST-PE), added to the tokens:

    .. math::
        z_{t,p} = x_{t,p} + e_{t,p}.

    The table is a full :math:`T \times H \times W \times C` tensor, as in the
    paper. :meth:`resize` interpolates it (trilinear over :math:`(t, y, x)`)
    to another grid, so a head trained on 32-frame clips (:math:`T' = 4`)
    runs on 64 frames (:math:`T' = 8`).

    Args:
        grid (tuple): Token grid :math:`(T, H, W)`.
        channels (int): Token width :math:`C`.
        init_std (float, optional): Standard deviation of the (truncated)
            normal initialisation. The paper does not state it; ``0.02`` is
            the ViT convention. The authors' code uses ``torch.randn``
            (std ``1.0``, not truncated). (default: ``0.02``)
        init (str, optional): ``"trunc_normal"`` (within two standard
            deviations) or ``"normal"`` (the authors'). (default: ``"trunc_normal"``)

    **Shapes:**
        - **input:** :math:`(B, N, C)` with :math:`N = T H W` in node-id order
        - **output:** :math:`(B, N, C)`
    """

    def __init__(self, grid: Sequence[int], channels: int, *, init_std: float = 0.02, init: str = "trunc_normal"):
        super().__init__()
        self.grid = _check_grid(grid)
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = channels
        self.init_std = init_std
        if init not in POS_INITS:
            raise ValueError(f"init must be 'trunc_normal' or 'normal', got {init!r}")
        self.init = init
        self.weight = nn.Parameter(torch.empty(*self.grid, channels))  # (T, H, W, C)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init == "normal":  # the authors' torch.randn(1, N, C) * std
            nn.init.normal_(self.weight, std=self.init_std)
        else:
            nn.init.trunc_normal_(self.weight, std=self.init_std, a=-2 * self.init_std, b=2 * self.init_std)

    def forward(self, x: Tensor) -> Tensor:
        N = self.weight[..., 0].numel()
        if x.dim() != 3 or x.size(1) != N or x.size(2) != self.channels:
            raise ValueError(
                f"expected tokens of shape (B, N={N}, C={self.channels}) for grid "
                f"{self.grid}, got {tuple(x.shape)}"
            )
        return x + self.weight.reshape(1, N, self.channels)  # (1, N, C) broadcast

    def interpolate(self, grid: Sequence[int]) -> Tensor:
        """The table resampled to :obj:`grid`, shape ``(T', H', W', C)``."""
        grid = _check_grid(grid)
        if grid == self.grid:
            return self.weight
        table = self.weight.permute(3, 0, 1, 2).unsqueeze(0)  # (1, C, T, H, W)
        table = F.interpolate(table, size=grid, mode="trilinear", align_corners=False)
        return table.squeeze(0).permute(1, 2, 3, 0).contiguous()  # (T', H', W', C)

    @torch.no_grad()
    def resize(self, grid: Sequence[int]) -> None:
        """Replaces the table by its interpolation to :obj:`grid`, in place: the Parameter
        object stays the same, so an optimizer built before keeps training it (optimizer
        state of the old shape, e.g. Adam's moments, must be reset by the caller)."""
        grid = _check_grid(grid)
        self.weight.data = self.interpolate(grid).detach().clone()  # same Parameter, new (T', H', W', C) data
        self.grid = grid

    def no_weight_decay(self):
        """The table takes no weight decay (timm's convention for position embeddings)."""
        return {"weight"}

    def extra_repr(self) -> str:
        return f"grid={self.grid}, channels={self.channels}"
