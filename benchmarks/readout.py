"""Does the graph reach the classifier? graph_sensitivity of every (propagation x readout x post_graph).

    python -m benchmarks.readout [--pretrained runs/synthgym_pretrain/backbone.pt] [--device cpu]

For every combination, the relative change of the pooled clip embedding when the graph propagation
is removed (``taggnn.analysis.graph_sensitivity``; heads at initialisation, eval mode), on

* random tokens (standard normal backbone features on the paper's 8x7x7 grid, C=128), and
* SynthGym tokens: the features of the pretrained tiny backbone (synthgym_pretrain) on 64 test clips
  (4x4x4 grid, C=128), when ``--pretrained`` exists;

plus forward+backward latency of the head at the paper's setting (B=8, 8x7x7, C=512, FFN 1024).
With the paper's head (APPNP, mean, no post-graph) the embedding moves by ~1e-4: the graph is inert.

``--graphs full+aligned grid8+window:2 radius:2+cube:1 full+aligned+knn:8`` repeats every row on
each edge family (``spatial+temporal[+knn:k]``, see ``taggnn.graph.families``; default: the
paper's graph); ``--readouts`` limits the readouts.
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from taggnn.analysis import graph_sensitivity
from taggnn.graph.families import parse_graph
from taggnn.nn import READOUTS, TAGHead

from ._common import describe_environment, environment, format_table, pick_device, time_call, write_json

PROPAGATIONS = {
    "APPNP K=2 (paper)": dict(propagation="appnp"),
    "APPNP K=10": dict(propagation="appnp", K=10),
    "APPNP, learned edge weights": dict(propagation="appnp", edge_weights="learned"),
    "GCN x2": dict(propagation="gcn", num_graph_layers=2),
    "RGCN x1 + residual": dict(propagation="RGCNConv", num_graph_layers=1, graph_residual=True),
    "SAGE x1 + residual": dict(propagation="SAGEConv", num_graph_layers=1, graph_residual=True),
}
POST_GRAPH = ("none", "ffn")
# Latency is measured for these propagations (every readout / post-graph option; ~1 s a head at C=512
# on 2 CPU cores); --latency-all times every combination.
LATENCY_PROPAGATIONS = ("APPNP K=2 (paper)", "GCN x2", "RGCN x1 + residual")


def synthgym_tokens(pretrained: Path, device: torch.device, clips: int = 64) -> torch.Tensor:
    from taggnn.data.synthgym import SynthGym
    from taggnn.models import build_backbone

    from .synthgym import render_all, to_input

    backbone = build_backbone("r2plus1d_tiny", weights=str(pretrained)).to(device).eval()
    with torch.no_grad():
        return backbone(to_input(render_all(SynthGym("test", length=clips))).to(device)).cpu()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", type=Path, default=Path("runs/synthgym_pretrain/backbone.pt"))
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--latency-all", action="store_true", help="time every combination, not only "
                                                                   + ", ".join(LATENCY_PROPAGATIONS))
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when present)")
    parser.add_argument("--out", type=Path, default=Path("results/readout.json"))
    parser.add_argument("--graphs", nargs="+", default=["full+aligned"],
                        help="edge families, spatial+temporal[+knn:k] each (default: the paper's full+aligned)")
    parser.add_argument("--readouts", nargs="+", default=list(READOUTS), choices=list(READOUTS))
    parser.add_argument("--clips", type=int, default=16, help="clips of random tokens")
    args = parser.parse_args(argv)
    graphs = {text: parse_graph(text, "--graphs") for text in args.graphs}  # bad names stop before any work
    device = pick_device(args.device)
    env = environment(device)
    torch.manual_seed(0)
    random_tokens = torch.randn(args.clips, 128, 8, 7, 7, device=device)
    real = synthgym_tokens(args.pretrained, device).to(device) if args.pretrained.is_file() else None
    rows = []
    combinations = itertools.product(graphs.items(), PROPAGATIONS.items(), args.readouts, POST_GRAPH)
    for (graph, (spatial, temporal, dynamic)), (name, options), readout, post in combinations:
        row = {"graph": graph, "propagation": name, "readout": readout, "post_graph": post}
        settings = dict(options, readout=readout, post_graph=post, num_heads=4, ffn_dim=256, graph_spatial=spatial,
                        graph_temporal=temporal, graph_dynamic=dynamic)
        torch.manual_seed(0)
        head = TAGHead(128, 16, (8, 7, 7), **settings).to(device).eval()
        row["sensitivity_random"] = graph_sensitivity(head, random_tokens)["mean"]
        if real is not None:
            torch.manual_seed(0)
            head = TAGHead(128, 16, tuple(real.shape[2:]), **settings).to(device).eval()
            row["sensitivity_synthgym"] = graph_sensitivity(head, real)["mean"]
        if not args.no_latency and (args.latency_all or name in LATENCY_PROPAGATIONS):
            torch.manual_seed(0)
            big = TAGHead(512, 99, (8, 7, 7), **dict(settings, num_heads=8, ffn_dim=1024)).to(device).train()
            x = torch.randn(8, 512, 8, 7, 7, device=device)

            def step():
                big.zero_grad(set_to_none=True)
                big(x).sum().backward()

            row["fwd_bwd_ms"] = time_call(step, device, repeats=3, warmup=1)["median_ms"]
        rows.append(row)
        print(f"{graph} / {name} / {readout} / {post}: {row['sensitivity_random']:.2e}", flush=True)
    print(describe_environment(env))
    print("relative change of the pooled embedding when the graph propagation is removed (heads at init); "
          "latency: head forward+backward, B=8, 8x7x7, C=512")
    columns = ["graph", "propagation", "readout", "post_graph", "sensitivity_random"]
    columns += ["sensitivity_synthgym"] if real is not None else []
    columns += [] if args.no_latency else ["fwd_bwd_ms"]
    print(format_table(rows, columns))
    path = write_json(args.out, {"benchmark": "readout", "environment": env, "settings": {
        "random": list(random_tokens.shape), "synthgym": None if real is None else list(real.shape),
        "pretrained": str(args.pretrained), "latency": "B=8, C=512, 8x7x7, FFN 1024", "graphs": list(graphs),
        "readouts": args.readouts}, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
