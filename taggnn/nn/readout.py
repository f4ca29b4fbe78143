r"""Graph readouts: the pooled clip embedding from the refined nodes of a PyG ``Batch``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from torch_geometric.nn.resolver import aggregation_resolver


@dataclass(frozen=True)
class Readout:
    """A registered readout.

    Attributes:
        name: Its name (``model.readout``).
        build: ``build(channels)`` -> the aggregation module, called as
            ``aggr(x, index=batch, [ptr=ptr,] dim_size=B)`` on node features ``(B N, C)``.
        needs_channels: Whether ``build`` needs the node width :math:`C`.
        linear: Whether the readout is a fixed linear map of the nodes (the mean).
        uses_ptr: Whether the aggregation is also given the batch's ``ptr`` (segment reduction).
        width: The aggregation's output width in units of :math:`C`; a linear layer projects a
            wider output back to :math:`C`.
        dense: The name of the tensor reduction (``"mean"``, ``"amax"``...) equal to the readout on a
            ``(B, N, C)`` view over its node axis, used while tracing for export and on the meta
            device (every clip has the same :math:`N` nodes); ``None`` for none.
    """

    name: str
    build: Callable[[Optional[int]], nn.Module]
    needs_channels: bool = True
    linear: bool = False
    uses_ptr: bool = False
    width: int = 1
    dense: Optional[str] = None


_READOUTS: Dict[str, Readout] = {}


def register_readout(name: str, build: Callable[[Optional[int]], nn.Module], *, needs_channels: bool = True,
                     linear: bool = False, uses_ptr: bool = False, width: int = 1,
                     dense: Optional[str] = None) -> Readout:
    """Registers a readout called ``name`` (see :class:`Readout` for the arguments); returns its
    entry. :class:`GraphReadout`, the configuration's ``model.readout`` and the ``taggnn`` command
    accept it from then on::

        from torch_geometric.nn.resolver import aggregation_resolver
        register_readout("median", lambda channels: aggregation_resolver("median"), needs_channels=False)
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a readout needs a non-empty name, got {name!r}")
    if name in _READOUTS:
        raise ValueError(f"a readout named {name!r} is already registered")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"readout {name!r}: width must be an integer >= 1, got {width!r}")
    entry = Readout(name, build, bool(needs_channels), bool(linear), bool(uses_ptr), width, dense)
    _READOUTS[name] = entry
    return entry


def unregister_readout(name: str) -> None:
    """Removes a registered readout (e.g. one a test registered)."""
    _READOUTS.pop(name, None)


def readout_names() -> Tuple[str, ...]:
    """Names of the registered readouts, in registration order."""
    return tuple(_READOUTS)


def get_readout(name: str) -> Readout:
    """The entry of the readout called ``name``."""
    if name not in _READOUTS:
        raise ValueError(f"readout must be one of {', '.join(_READOUTS)}, got {name!r}")
    return _READOUTS[name]


def _attention_gate(channels: int) -> nn.Module:
    hidden = channels // 2 or 1
    return nn.Sequential(nn.Linear(channels, hidden), nn.Tanh(), nn.Linear(hidden, 1))


register_readout("mean", lambda channels: aggregation_resolver("mean"), needs_channels=False, linear=True,
                 uses_ptr=True, dense="mean")
register_readout("max", lambda channels: aggregation_resolver("max"), needs_channels=False, uses_ptr=True,
                 dense="amax")
register_readout("softmax", lambda channels: aggregation_resolver("softmax", t=1.0, learn=True, channels=channels),
                 uses_ptr=True)
register_readout("powermean", lambda channels: aggregation_resolver("powermean", p=1.0, learn=True,
                                                                    channels=channels), uses_ptr=True)
register_readout("attention", lambda channels: aggregation_resolver("attentional", gate_nn=_attention_gate(channels)))
register_readout("set2set", lambda channels: aggregation_resolver("set2set", channels, processing_steps=3), width=2)

READOUTS = readout_names()  # the built-in readouts; readout_names() is the live list


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
        name (str): A registered readout (:func:`readout_names`; built in: ``mean``, ``max``,
            ``softmax``, ``powermean``, ``attention``, ``set2set``). (default: ``"mean"``)
        channels (int): Node width :math:`C`.

    **Shapes:**
        - **input:** node features :math:`(B N, C)`, ``batch`` :math:`(B N,)`,
          ``ptr`` :math:`(B + 1,)`
        - **output:** :math:`(B, C)`
    """

    def __init__(self, name: str = "mean", channels: Optional[int] = None):
        super().__init__()
        entry = get_readout(name)
        if entry.needs_channels and (channels is None or channels < 1):
            raise ValueError(f"readout {name!r} needs channels >= 1, got {channels!r}")
        self.name, self.channels = name, channels
        # the entry's flags, not the entry (whose build function may not pickle)
        self._linear, self.uses_ptr, self.dense = entry.linear, entry.uses_ptr, entry.dense
        self.aggr = entry.build(channels)
        self.project: Optional[nn.Module] = nn.Linear(entry.width * channels, channels) if entry.width > 1 else None

    @property
    def is_linear(self) -> bool:
        """Whether the readout is a fixed linear map of the nodes (the mean)."""
        return self._linear

    def reset_parameters(self) -> None:
        self.aggr.reset_parameters()
        if self.project is not None:
            self.project.reset_parameters()

    def forward(self, x: Tensor, batch: Tensor, ptr: Optional[Tensor], num_graphs: int) -> Tensor:
        if x.dim() != 2:
            raise ValueError(f"expected node features of shape (B*N, C), got {tuple(x.shape)}")
        if self.dense is not None and (_tracing() or x.device.type == "meta"):
            # Every clip has the same N nodes: reduce a (B, N, C) view (equal to the aggregation),
            # which exports to ONNX (PyG's ptr path lowers to segment_reduce, which does not) and
            # runs on the meta device (FLOP counting) whatever scatter library PyG picked.
            dense = x.view(num_graphs, -1, x.size(-1))  # (B, N, C)
            return getattr(dense, self.dense)(1)  # (B, C)
        if self.uses_ptr:
            out = self.aggr(x, index=batch, ptr=ptr, dim_size=num_graphs)  # (B, C)
        else:  # e.g. attention / Set2Set work on the index vector
            out = self.aggr(x, index=batch, dim_size=num_graphs)
        return self.project(out) if self.project is not None else out

    def extra_repr(self) -> str:
        return f"{self.name!r}, channels={self.channels}"


__all__ = ["GraphReadout", "Readout", "READOUTS", "register_readout", "unregister_readout", "readout_names",
           "get_readout"]
