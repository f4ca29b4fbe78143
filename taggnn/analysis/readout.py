r"""When does the graph stage change what the classifier sees?

TAG-Head's graph stage is linear in the Transformer tokens :math:`H` for
parameter-free propagation: APPNP computes :math:`g_K(\hat{A}) H` with the
polynomial :math:`g_K(\mu) = ((1-\alpha)\mu)^K + \alpha \sum_{k<K}
((1-\alpha)\mu)^k`. Followed by the global mean readout, the pooled embedding
of a clip is

.. math::
    \frac{1}{N} \mathbb{1}^\top g_K(\hat{A}) H = \sum_n w_n H_n, \qquad
    w = \frac{1}{N} g_K(\hat{A})^\top \mathbb{1} = \frac{1}{N} g_K(\hat{A}) \mathbb{1},

a *fixed*, feature-independent weighted mean of the tokens (:math:`\hat{A}`
is symmetric). When every node has the same degree, :math:`\hat{A} \mathbb{1}
= \mathbb{1}` and the weights are exactly uniform: IF-FC edges alone never
change the pooled embedding. With TAT edges the boundary frames have one
neighbour less and the weights deviate from uniform by
:math:`\sim 10^{-3}`. So the graph rows of the paper's ablation (Table 4)
compute the same function up to these weights.

:func:`pooled_token_weights` computes :math:`w` exactly from the operator;
:func:`graph_sensitivity` measures, for any head (linear stage or not), how
much the pooled embedding changes when the graph stage is removed.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict

import torch
from torch import Tensor

from ..nn import TAGHead


def _is_linear_stage(head: TAGHead) -> bool:
    refiner = head.refiner
    return (refiner is None or refiner.is_linear_map) and head.post_graph is None and head.readout.is_linear


def pooled_token_weights(head: TAGHead) -> Tensor:
    r"""The exact weights :math:`w \in \mathbb{R}^N` with
    ``head.forward_pooled(f) == sum_n w[n] * head.encode(f)[:, n]``.

    Computed from the operator (:math:`w = \frac{1}{N} P^\top \mathbb{1}` for the linear
    graph stage :math:`P`, as the gradient of :math:`\frac{1}{N} \mathbb{1}^\top P X`, on
    any fixed edge family, including a LayerScale gate :math:`(1-\gamma) I + \gamma P`
    per channel, which makes the weights per channel: ``(N, C)``), not by regression.

    Args:
        head (TAGHead): A head whose graph stage is linear: APPNP (fixed or learned edge
            weights) or none, no post-graph MLP, mean readout.

    Returns:
        ``(N,)`` in float64 (``(N, C)`` with a LayerScale gate). They sum to exactly 1 when every
        node has the same degree (IF-FC alone); with TAT edges the sum is within
        :math:`\sim 10^{-3}` of 1.

    Raises:
        ValueError: For non-linear stages (convolution stacks with activations, a post-graph
            MLP, a non-linear readout) and kNN edges (rebuilt from the tokens), which have no
            such weights.
    """
    if head.graph.dynamic is not None and head.refiner is not None:
        raise ValueError(f"pooled_token_weights needs a fixed graph, but the {head.graph.dynamic} edges of this head "
                         f"are rebuilt from the tokens at every forward (the weights depend on the clip): use "
                         f"graph_sensitivity instead")
    if not _is_linear_stage(head):
        what = []
        if head.refiner is not None and not head.refiner.is_linear_map:
            what.append(f"propagation {head.refiner.propagation!r} (a stack with parameters and activations)")
        if head.post_graph is not None:
            what.append("post_graph 'ffn'")
        if not head.readout.is_linear:
            what.append(f"readout {head.readout.name!r}")
        raise ValueError(f"pooled_token_weights needs a linear graph stage and the mean readout; this head has "
                         f"{' and '.join(what)}: use graph_sensitivity instead")
    N, C = head.num_nodes, head.embed_dim
    refiner = head.refiner
    if refiner is None:
        return torch.full((N,), 1.0 / N, dtype=torch.float64)
    with torch.enable_grad(), _float64(refiner):
        # P^T 1 / N as the gradient of 1^T P X / N (P linear: any X gives it; exact for one-way edges too)
        tokens = torch.zeros(1, N, C, dtype=torch.float64, requires_grad=True)
        (gradient,) = torch.autograd.grad(refiner(tokens).sum() / N, tokens)
    propagated = gradient[0, :, 0]  # (N,): the map acts on every channel alike
    if head.graph_gamma is None:
        return propagated
    gamma = head.graph_gamma.detach().to(torch.float64)  # (C,)
    uniform = torch.full((N, 1), 1.0 / N, dtype=torch.float64)
    return uniform * (1 - gamma) + propagated[:, None] * gamma  # (N, C)


@contextmanager
def _float64(module):
    dtypes = {name: p.dtype for name, p in module.named_parameters()}
    module.double()
    try:
        yield
    finally:
        for name, p in module.named_parameters():
            p.data = p.data.to(dtypes[name])


@contextmanager
def _without_graph(head: TAGHead):
    refiner, gamma = head.refiner, head.graph_gamma
    head.refiner, head.graph_gamma = None, None
    try:
        yield
    finally:
        head.refiner, head.graph_gamma = refiner, gamma


@torch.no_grad()
def graph_sensitivity(head: TAGHead, features: Tensor) -> Dict[str, object]:
    r"""How much the graph stage changes the pooled embedding.

    For every clip, :math:`\lVert p_\text{graph} - p_\text{none} \rVert /
    \lVert p_\text{none} \rVert`, where :math:`p_\text{graph}` is the head's pooled
    embedding and :math:`p_\text{none}` the same head's with the graph propagation
    removed (everything else, the post-graph MLP and the readout included, kept).
    Works for every stage, linear or not.

    Args:
        head (TAGHead): The head (its training/eval mode is kept; use eval for dropout-free
            figures).
        features (torch.Tensor): Backbone features ``(B, C, T', H', W')``.

    Returns:
        ``{"per_clip": (B,) tensor, "mean": float, "max": float}``.
    """
    with_graph = head.forward_pooled(features)
    with _without_graph(head):
        without = head.forward_pooled(features)
    per_clip = (with_graph - without).norm(dim=1) / without.norm(dim=1).clamp_min(1e-12)
    return {"per_clip": per_clip, "mean": float(per_clip.mean()), "max": float(per_clip.max())}
