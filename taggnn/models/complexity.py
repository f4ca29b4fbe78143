"""Parameter, FLOP and latency accounting of TAGNet (the paper's Table 5).

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` on
the ``meta`` device (shapes only, nothing is computed), in two conventions:
``flops`` = 2 x multiply-adds (the counter's own), and ``macs`` =
multiply-adds, the convention of fvcore and of the paper's Table 5. Like
fvcore, the counter counts matrix products and convolutions (attention
included) and not element-wise work, so APPNP's propagation, which is
element-wise in the structured back-end, counts 0; :func:`appnp_macs` gives
its multiply-adds analytically.
"""
from __future__ import annotations

import statistics
import time
from typing import Dict, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from .tagnet import TAGNet

#: The part of :func:`parameter_breakdown` each of a head's attributes counts towards. A LayerScale
#: gamma counts with the part it scales (``pos_gamma``: the positional table, ``graph_gamma``: the
#: graph stage); the classifier includes the optional pre-classifier LayerNorm.
HEAD_PARTS = {
    "proj": "projection",
    "pos_embed": "positional_table",
    "pos_gamma": "positional_table",
    "transformer": "transformer",
    "graph": "graph_refinement",
    "refiner": "graph_refinement",
    "graph_gamma": "graph_refinement",
    "post_graph": "post_graph",
    "readout": "readout",
    "norm": "classifier",
    "classifier": "classifier",
}
#: The parts of the head before the classifier (the paper's Table 5 counts these as the head).
HEAD_BODY = ("projection", "positional_table", "transformer", "graph_refinement", "post_graph", "readout")


def parameter_breakdown(model: nn.Module) -> Dict[str, int]:
    """Parameters per part: backbone, projection, positional table, Transformer, graph stage,
    post-graph FFN, readout and classifier; ``total`` is the model's parameter count.

    Every parameter counts exactly once (shared ones included), so the parts add up to
    ``sum(p.numel() for p in model.parameters())`` for every head option. A parameter of the
    head that no part names (a module this function does not know yet) is counted in
    ``other``, which is present only then.

    Args:
        model: A :class:`~taggnn.models.TAGNet` or a head-only model (no backbone: ``backbone`` is 0).
    """
    parts = dict.fromkeys(("backbone",) + HEAD_BODY + ("classifier",), 0)
    for name, parameter in model.named_parameters():
        owner, _, rest = name.partition(".")
        if owner == "head":
            part = HEAD_PARTS.get(rest.partition(".")[0], "other")
        else:
            part = "backbone" if owner == "backbone" else "other"
        parts[part] = parts.get(part, 0) + parameter.numel()
    parts["head_without_classifier"] = sum(parts[part] for part in HEAD_BODY)
    # The paper's Table 5 leaves the classifier out of its 69.90M total.
    parts["total_without_classifier"] = parts["backbone"] + parts["head_without_classifier"] + parts.get("other", 0)
    parts["total"] = parts["total_without_classifier"] + parts["classifier"]
    return parts


def meta_flops(module: nn.Module, *inputs: Tensor) -> int:
    """FLOPs (2 x MACs) of ``module(*inputs)``, counted on the meta device. A head whose graph
    depends on the values of its tokens (kNN edges) is counted on random tokens on the CPU."""
    graph = getattr(getattr(module, "refiner", None), "graph", None)
    if getattr(graph, "dynamic", None) is not None:
        counter = FlopCounterMode(display=False)
        generator = torch.Generator().manual_seed(0)
        values = tuple(torch.randn(x.shape, generator=generator) for x in inputs)
        with counter, torch.no_grad():
            module(*values)
        return int(counter.get_total_flops())
    state = {
        name: torch.empty_like(t, device="meta")
        for name, t in list(module.named_parameters()) + list(module.named_buffers())
    }
    meta_inputs = tuple(torch.empty_like(x, device="meta") for x in inputs)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        functional_call(module, state, meta_inputs)
    return int(counter.get_total_flops())


def appnp_macs(num_nodes: int, num_edges: int, channels: int, K: int) -> Dict[str, int]:
    """Multiply-adds of K APPNP steps: message passing over edges + self-loops vs structured."""
    return {
        "message_passing": K * (num_edges + num_nodes) * channels,
        "structured": K * 4 * num_nodes * channels,  # scale, frame sum, 2 shifts (order of magnitude)
    }


def flop_breakdown(model: TAGNet, num_frames: int, height: int, width: int) -> Dict[str, int]:
    """FLOPs of backbone and head for one clip (batch 1)."""
    clip = torch.empty(1, 3, num_frames, height, width)
    grid = model.backbone.feature_grid(num_frames, height, width)
    features = torch.empty(1, model.backbone.out_channels, *grid)
    backbone = meta_flops(model.backbone, clip)
    refiner = model.head.refiner
    # Sparse products do not run on the meta device (and the counter does not count them, like
    # fvcore): count the head with the equal structured propagation; appnp_macs gives its work.
    backend = getattr(refiner, "backend", None)
    if backend in ("csr", "sparse_tensor"):
        refiner.backend = "structured"
    try:
        head = meta_flops(model.head, features)
    finally:
        if backend is not None:
            refiner.backend = backend
    return {"backbone": backbone, "head": head, "total": backbone + head}


@torch.no_grad()
def latency_ms(module: nn.Module, example: Tensor, *, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall-clock time of ``module(example)`` in milliseconds (CUDA-synchronised)."""
    def sync():
        if example.device.type == "cuda":
            torch.cuda.synchronize(example.device)

    for _ in range(warmup):
        module(example)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        module(example)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def profile_model(model: TAGNet, num_frames: int, height: int, width: int, *,
                  device: Optional[torch.device] = None, measure_latency: bool = True,
                  repeats: int = 3) -> Dict[str, object]:
    """Parameters, FLOPs/MACs and (optionally) per-clip latency of backbone vs head."""
    params = parameter_breakdown(model)
    flops = flop_breakdown(model, num_frames, height, width)
    result: Dict[str, object] = {
        "clip": [num_frames, height, width],
        "grid": list(model.head.grid),
        "params": params,
        "flops": flops,
        "macs": {k: v // 2 for k, v in flops.items()},
        "head_share": {
            "params": (params["head_without_classifier"] + params["classifier"]) / params["total"],
            "flops": flops["head"] / flops["total"],
        },
    }
    if measure_latency:
        device = torch.device(device or "cpu")
        model = model.to(device).eval()
        clip = torch.randn(1, 3, num_frames, height, width, device=device)
        features = model.backbone(clip)
        backbone_ms = latency_ms(model.backbone, clip, repeats=repeats)
        head_ms = latency_ms(model.head, features, repeats=max(repeats, 5))
        result["latency_ms"] = {"backbone": backbone_ms, "head": head_ms, "total": backbone_ms + head_ms,
                                "device": str(device)}
        result["head_share"]["time"] = head_ms / (backbone_ms + head_ms)
    return result
