"""Latency of the graph-refinement back-ends vs the authors' path.

    python -m benchmarks.propagation [--device cuda] [--quick] [--out results/propagation.json]

For each setting (B clips, T' x 7 x 7 tokens, C channels, K APPNP steps) it
times forward and forward+backward of :class:`taggnn.nn.GraphRefiner` with
every back-end, and of the authors' path: a per-forward
``Batch.from_data_list`` over per-clip ``Data`` objects followed by PyG's
``APPNP`` on the batched ``edge_index`` (the per-clip edge list is cached,
which is generous to that path). Each output is checked against the authors'
path (max abs difference) so a fast wrong back-end cannot pass unnoticed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch_geometric.data import Batch, Data
from torch_geometric.nn import APPNP

from taggnn.graph import SpatioTemporalGraph
from taggnn.nn import GraphRefiner
from taggnn.utils import has_torch_sparse

from ._common import describe_environment, environment, format_table, peak_memory_mb, pick_device, time_call, write_json


class AuthorsPath(torch.nn.Module):
    """Per-forward Batch.from_data_list + PyG APPNP, as in the authors' code."""

    def __init__(self, graph: SpatioTemporalGraph, K: int, alpha: float):
        super().__init__()
        self.graph = graph
        self.appnp = APPNP(K, alpha)

    def forward(self, x):
        B, N, C = x.shape
        edge_index = self.graph.edge_index_on(x.device)
        batch = Batch.from_data_list([Data(x=x[b], edge_index=edge_index) for b in range(B)])
        return self.appnp(batch.x, batch.edge_index).view(B, N, C)


def run(args) -> dict:
    device = pick_device(args.device)
    torch.manual_seed(0)
    env = environment(device)
    backends = ["structured", "csr", "edge_index"] + (["sparse_tensor"] if has_torch_sparse() else [])
    settings = [(8, T, 7, 7, 512, K) for T in (4, 8) for K in (2, 10)]
    if args.quick:
        settings = [(8, 8, 7, 7, 512, 2)]
    rows = []
    for B, T, H, W, C, K in settings:
        graph = SpatioTemporalGraph(T, H, W)
        x = torch.randn(B, graph.num_nodes, C, device=device)
        paths = {"authors (from_data_list + APPNP)": AuthorsPath(graph, K, 0.1)}
        for backend in backends:
            paths[f"taggnn {backend}"] = GraphRefiner(graph, K=K, alpha=0.1, backend=backend)
        with torch.no_grad():
            reference = paths["authors (from_data_list + APPNP)"](x)
        authors_fb = None
        for name, module in paths.items():
            module.to(device)
            x_grad = x.clone().requires_grad_()

            def forward():
                with torch.no_grad():
                    return module(x)

            def forward_backward():
                module(x_grad).sum().backward()

            with torch.no_grad():
                diff = (module(x) - reference).abs().max().item()
            fwd = time_call(forward, device, repeats=args.repeats, max_seconds=args.max_seconds)
            fb = time_call(forward_backward, device, repeats=args.repeats, max_seconds=args.max_seconds)
            if name.startswith("authors"):
                authors_fb = fb["median_ms"]
            rows.append({
                "B": B, "grid": f"{T}x{H}x{W}", "C": C, "K": K, "path": name,
                "fwd_ms": fwd["median_ms"], "fwd_bwd_ms": fb["median_ms"],
                "speedup_fwd_bwd": authors_fb / fb["median_ms"],
                "max_abs_diff": diff,
                "peak_mem_mb": peak_memory_mb(forward_backward, device),
                "runs": fb["runs"],
            })
    return {"benchmark": "propagation", "environment": env, "settings": {
        "alpha": 0.1, "repeats": args.repeats, "statistic": "median", "dtype": "float32",
        "note": "speedup = authors' forward+backward time / this path's",
    }, "rows": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=15.0, help="time cap per measurement")
    parser.add_argument("--quick", action="store_true", help="only B=8, T'=8, K=2")
    parser.add_argument("--out", type=Path, default=Path("results/propagation.json"))
    args = parser.parse_args(argv)
    result = run(args)
    print(describe_environment(result["environment"]))
    print(format_table(result["rows"], ["B", "grid", "C", "K", "path", "fwd_ms", "fwd_bwd_ms",
                                        "speedup_fwd_bwd", "max_abs_diff", "peak_mem_mb"]))
    print(f"wrote {write_json(args.out, result)}")


if __name__ == "__main__":
    main()
