r"""Dropout whose CPU masks are cheap to draw.

PyTorch's CPU dropout draws one Mersenne-Twister number per element (about
13 ns each here): in a head-only training step of TAG-Head on CPU the
Transformer's dropout masks cost more than its matrix products. This dropout
has the same distribution, with the keep mask drawn in bulk from NumPy's SFC64
generator, 16 random bits per element, seeded by one draw from torch's CPU
generator per call, so :func:`torch.manual_seed`, checkpointed RNG states and
per-rank seeds govern it exactly as they govern :func:`torch.nn.functional.dropout`.

Each element is zeroed independently with probability
:math:`\tilde{p} = \mathrm{round}(2^{16} p) / 2^{16}` (:math:`|\tilde{p} - p| \le 2^{-17}`)
and the kept ones are scaled by :math:`1 / (1 - \tilde{p})`, so
:math:`\mathbb{E}[\mathrm{dropout}(x)] = x` exactly. Tensors on other devices,
code under :func:`torch.compile` or tracing, and probabilities below
:math:`2^{-17}` (or of 1) use :func:`torch.nn.functional.dropout`.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LANES = 1 << 16  # 16 random bits per element


def _keep_threshold(p: float) -> int:
    """Elements whose signed 16-bit draw is below ``-2**15 + threshold`` are dropped."""
    return int(round(p * _LANES))


def uses_fast_path(x: Tensor, p: float, training: bool) -> bool:
    """Whether :func:`dropout` draws its own mask for ``x`` (else it calls PyTorch's)."""
    if not training or x.device.type != "cpu" or not x.is_floating_point():
        return False
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return 0 < _keep_threshold(p) < _LANES


def keep_mask(shape, p: float) -> Tuple[Tensor, float]:
    r"""A boolean keep mask of ``shape`` and the scale of the kept values: True with probability
    :math:`1 - \tilde{p}`, each element independently, and :math:`1 / (1 - \tilde{p})` (see the
    module docstring); one draw from torch's CPU generator seeds the mask."""
    threshold = _keep_threshold(p)
    numel = int(np.prod(shape, dtype=np.int64))
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    raw = np.random.SFC64(seed).random_raw((numel + 3) // 4)  # 4 x 16 bits per 64-bit draw
    bits = torch.from_numpy(raw.view(np.int16)[:numel].reshape(shape))
    return bits >= threshold - _LANES // 2, _LANES / (_LANES - threshold)


def dropout(x: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    r"""Drop-in :func:`torch.nn.functional.dropout` with cheap CPU masks (module docstring).

    **Shapes:** any; the output has the shape and dtype of ``x``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not uses_fast_path(x, p, training):
        return F.dropout(x, p, training, inplace)
    mask, scale = keep_mask(x.shape, p)
    if x.dtype in (torch.float32, torch.float64):  # one multiplication by a 0 / scale tensor
        keep = mask.to(x.dtype).mul_(scale)
        return x.mul_(keep) if inplace else x * keep
    # reduced precision: scale each kept value (rounded once), not a rounded copy of the scale
    out = x.masked_fill_(~mask, 0) if inplace else x.masked_fill(~mask, 0)
    return out.mul_(scale)


class Dropout(nn.Dropout):
    r""":class:`torch.nn.Dropout` that uses :func:`dropout` (same arguments and state)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training, self.inplace)
