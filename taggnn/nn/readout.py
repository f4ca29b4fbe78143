r"""Graph readouts: the pooled clip embedding from the refined nodes of a PyG ``Batch``."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch_geometric.nn import aggr

READOUTS = ("mean", "max", "softmax", "powermean", "attention", "set2set")


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


class GraphReadout(nn.Module):
    r"""Pools the nodes of every graph of a batch into one vector with an aggregation of
    :mod:`torch_geometric.nn.aggr`, over the batch's ``batch`` / ``ptr`` vectors.

    * ``"mean"``: :math:`\frac{1}{N} \sum_n h_n`, the paper's global mean pooling
      (:class:`~torch_geometric.nn.aggr.MeanAggregation`);
    * ``"max"``: the channel-wise maximum (:class:`~torch_geometric.nn.aggr.MaxAggregation`);
    * ``"softmax"``: :math:`\sum_n \mathrm{softmax}_n(t\, h_n) \odot h_n` with a learnable
      temperature :math:`t` per channel, initially 1
      (:class:`~torch_geometric.nn.aggr.SoftmaxAggregation`);
    * ``"powermean"``: generalised mean :math:`(\frac{1}{N}\sum_n h_n^p)^{1/p}` (GeM) with a
      learnable :math:`p` per channel, initially 1; PyG clamps the features to
      :math:`[10^{-4}, 100]` first, so negative activations count as :math:`10^{-4}`
      (:class:`~torch_geometric.nn.aggr.PowerMeanAggregation`);
    * ``"attention"``: gated attention pooling
      :math:`\sum_n \mathrm{softmax}_n(g(h_n))\, h_n` with a gate MLP :math:`g`
      (:class:`~torch_geometric.nn.aggr.AttentionalAggregation`);
    * ``"set2set"``: :class:`~torch_geometric.nn.aggr.Set2Set` (3 LSTM steps), whose
      :math:`2C` output is projected back to :math:`C` by a linear layer.

    Only ``"mean"`` is linear in the nodes: after a linear graph stage it reduces the graph to
    fixed token weights (see :func:`taggnn.analysis.pooled_token_weights`); the others let
    the graph change the pooled embedding.

    Args:
        name (str): One of ``mean``, ``max``, ``softmax``, ``powermean``, ``attention``,
            ``set2set``. (default: ``"mean"``)
        channels (int): Node width :math:`C`.

    **Shapes:**
        - **input:** node features :math:`(B N, C)`, ``batch`` :math:`(B N,)`,
          ``ptr`` :math:`(B + 1,)`
        - **output:** :math:`(B, C)`
    """

    def __init__(self, name: str = "mean", channels: Optional[int] = None):
        super().__init__()
        if name not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {name!r}")
        if name != "mean" and (channels is None or channels < 1):
            raise ValueError(f"readout {name!r} needs channels >= 1, got {channels!r}")
        self.name, self.channels = name, channels
        self.project: Optional[nn.Module] = None
        if name == "mean":
            self.aggr = aggr.MeanAggregation()
        elif name == "max":
            self.aggr = aggr.MaxAggregation()
        elif name == "softmax":
            self.aggr = aggr.SoftmaxAggregation(t=1.0, learn=True, channels=channels)
        elif name == "powermean":
            self.aggr = aggr.PowerMeanAggregation(p=1.0, learn=True, channels=channels)
        elif name == "attention":
            gate = nn.Sequential(nn.Linear(channels, channels // 2 or 1), nn.Tanh(), nn.Linear(channels // 2 or 1, 1))
            self.aggr = aggr.AttentionalAggregation(gate_nn=gate)
        else:
            self.aggr = aggr.Set2Set(channels, processing_steps=3)
            self.project = nn.Linear(2 * channels, channels)

    @property
    def is_linear(self) -> bool:
        """Whether the readout is a fixed linear map of the nodes (the mean)."""
        return self.name == "mean"

    def reset_parameters(self) -> None:
        self.aggr.reset_parameters()
        if self.project is not None:
            self.project.reset_parameters()

    def forward(self, x: Tensor, batch: Tensor, ptr: Optional[Tensor], num_graphs: int) -> Tensor:
        if x.dim() != 2:
            raise ValueError(f"expected node features of shape (B*N, C), got {tuple(x.shape)}")
        if self.name in ("mean", "max") and (_tracing() or x.device.type == "meta"):
            # Every clip has the same N nodes: reduce a (B, N, C) view (equal to the aggregation),
            # which exports to ONNX (PyG's ptr path lowers to segment_reduce, which does not) and
            # runs on the meta device (FLOP counting) whatever scatter library PyG picked.
            dense = x.view(num_graphs, -1, x.size(-1))  # (B, N, C)
            return dense.mean(1) if self.name == "mean" else dense.amax(1)
        if self.name in ("mean", "max", "softmax", "powermean"):
            out = self.aggr(x, index=batch, ptr=ptr, dim_size=num_graphs)  # (B, C)
        else:  # attention / Set2Set work on the index vector
            out = self.aggr(x, index=batch, dim_size=num_graphs)
        return self.project(out) if self.project is not None else out

    def extra_repr(self) -> str:
        return f"{self.name!r}, channels={self.channels}"


__all__ = ["GraphReadout", "READOUTS"]
