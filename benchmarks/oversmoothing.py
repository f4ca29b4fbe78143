"""Oversmoothing on the TAG-Head graph: APPNP vs stacked GCN / GAT, measures and latency.

    python -m benchmarks.oversmoothing [--device cuda] [--backend structured] [--full]
    python -m benchmarks.oversmoothing --checkpoint runs/demo/best.pt   # trained Transformer features
    python -m benchmarks.oversmoothing --graphs full+aligned grid8+window:2 radius:2+cube:1

For each token grid (default T'=4 and 8 at 7x7; ``--full`` adds 14x14 and more clips) and each
operator at depths 1, 2, 4, ..., 64:

* APPNP with K = depth steps and alpha in {0.05, 0.1, 0.2} (parameter-free: the operator itself);
* GCN, L = depth layers: ``propagation`` mode = the operator alone (A_hat^L X), ``initialised``
  mode = a stack of default-initialised ``GCNConv`` layers with ReLU between them;
* GAT, L = depth layers: ``propagation`` mode = uniform attention (D^-1 (M+I) X per layer, what
  GAT computes before it has learnt anything), ``initialised`` mode = default-initialised
  ``GATConv`` layers (8 heads) with ELU between them.

Measures (``taggnn.analysis``): Dirichlet energy normalised by ||X||^2 and as a ratio to the
input's, split into within-frame (IF-FC) and across-frame (TAT) parts; MAD with zero distances
counted and the official variant; mean pairwise cosine within / across frames; effective and
numerical rank; latency of forward and forward+backward (median); peak memory on CUDA.
``--graphs`` runs it on other edge families (``spatial+temporal``, see ``taggnn.graph.families``;
default: the paper's ``full+aligned``); their products run on the recommended back-end
(``stencil`` for local families) unless ``--backend`` names one that takes the graph.

The run checks the theory before it reports: APPNP keeps about alpha^2 of the within-frame
energy for every K >= 1, and one propagation-only GCN step collapses it by more than 1000x on
a 7x7 frame. Writes a table, JSON and (with matplotlib) a PNG per grid.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List

import torch

from taggnn.analysis import oversmoothing_measures
from taggnn.errors import ConfigError
from taggnn.graph import SELF_LOOP, SpatioTemporalGraph
from taggnn.graph.families import graph_name, parse_graph
from taggnn.nn import GraphRefiner
from taggnn.nn.backends import get_backend
from taggnn.nn.refiner import check_refiner_options

from ._common import describe_environment, environment, format_table, peak_memory_mb, pick_device, time_call, write_json

DEPTHS = [1, 2, 4, 8, 16, 32, 64]
ALPHAS = [0.05, 0.1, 0.2]
GRIDS = [(4, 7, 7), (8, 7, 7)]
FULL_GRIDS = [(8, 14, 14)]


def pick_backend(graph: SpatioTemporalGraph, backend) -> str:
    """``backend`` when it takes ``graph`` (default: structured for the paper's graph), else the recommended one."""
    if backend is None and graph.spatial in ("full", "none") and graph.temporal in ("aligned", "none"):
        backend = "structured"
    if backend is not None:
        try:
            get_backend(backend).check_graph(graph)
            return backend
        except ConfigError:
            pass
    return check_refiner_options("appnp", None, graph=graph)


def propagate(x: torch.Tensor, graph: SpatioTemporalGraph, backend: str) -> torch.Tensor:
    """A_hat X with the back-end ``backend``."""
    return get_backend(backend).propagate(x, graph)


def node_degree(graph: SpatioTemporalGraph, device, dtype) -> torch.Tensor:
    """Degrees of M + I, ``(N,)``."""
    edge_index, edge_type = graph.edge_index_on(device), graph.edge_type_on(device)
    degree = torch.bincount(edge_index[1, edge_type != SELF_LOOP], minlength=graph.num_nodes)
    return degree.to(dtype) + 1


def random_walk(x: torch.Tensor, graph: SpatioTemporalGraph, backend: str = "structured") -> torch.Tensor:
    """D^-1 (M + I) X = D^-1/2 A_hat D^1/2 X: mean over each node's neighbourhood (uniform attention)."""
    d_sqrt = node_degree(graph, x.device, x.dtype).sqrt().view(1, -1, 1)
    return propagate(x * d_sqrt, graph, backend) / d_sqrt


def depth_features(kind: str, mode: str, x: torch.Tensor, graph: SpatioTemporalGraph, depths: List[int],
                   backend: str, alpha: float = 0.1) -> Dict[int, torch.Tensor]:
    """Features after each depth (one pass through the deepest operator where it is a stack)."""
    out: Dict[int, torch.Tensor] = {}
    with torch.no_grad():
        if kind == "appnp":
            for depth in depths:
                out[depth] = GraphRefiner(graph, K=depth, alpha=alpha, backend=backend)(x)
            return out
        if mode == "propagation":
            h = x
            for layer in range(1, max(depths) + 1):
                h = propagate(h, graph, backend) if kind == "gcn" else random_walk(h, graph, backend)
                if layer in depths:
                    out[layer] = h
            return out
        torch.manual_seed(0)
        stack = GraphRefiner(graph, propagation=kind, channels=x.size(-1), num_layers=max(depths),
                             backend=backend if kind == "gcn" else "edge_index").to(x.device)
        for layer, h in enumerate(stack.layer_outputs(x), 1):
            if layer in depths:
                out[layer] = h  # a depth-L stack ends without activation
        return out


def latency(kind: str, depth: int, x: torch.Tensor, graph: SpatioTemporalGraph, backend: str, device,
            repeats: int) -> Dict[str, float]:
    if kind == "appnp":
        module = GraphRefiner(graph, K=depth, alpha=0.1, backend=backend)
    else:
        module = GraphRefiner(graph, propagation=kind, channels=x.size(-1), num_layers=depth,
                              backend=backend if kind == "gcn" else "edge_index")
    module = module.to(device)
    x_grad = x.clone().requires_grad_()

    def forward():
        with torch.no_grad():
            module(x)

    def forward_backward():
        module(x_grad).sum().backward()

    # deep stacks take seconds per call: no separate warm-up run for them
    warmup = 1 if depth < 32 else 0
    fwd = time_call(forward, device, repeats=repeats, warmup=warmup, max_seconds=3.0)
    fb = time_call(forward_backward, device, repeats=repeats, warmup=warmup, max_seconds=3.0)
    return {"fwd_ms": fwd["median_ms"], "fwd_bwd_ms": fb["median_ms"],
            "peak_mem_mb": peak_memory_mb(forward_backward, device)}


def checkpoint_features(path: Path, batch: int, device):
    """Transformer outputs H^(0) of a trained model on clips of its test split, and its token grid."""
    from taggnn.engine.data import build_dataset
    from taggnn.engine.trainer import load_trained

    model, config, _ = load_trained(path, device)
    dataset = build_dataset(config, config.data.test_split, train=False)
    clips = torch.stack([dataset[i][0] for i in range(min(batch, len(dataset)))]).to(device)
    with torch.no_grad():
        return model.head.encode(model.forward_backbone(clips)), model.head.grid


def check_theory(results: List[dict]) -> List[str]:
    """The two facts of the oversmoothing theory (README, "Theory") on the 7x7 grids of this run."""
    lines = []
    for row in results:  # the theory is that of the full spatial clique (IF-FC)
        if (row["grid"].endswith("7x7") and row["mode"] == "propagation"
                and row.get("graph", "full+aligned").startswith("full+")):
            if row["operator"].startswith("appnp"):
                alpha = float(row["operator"].split("=")[1])
                ratio = row["energy_within_ratio"] / alpha ** 2
                if not 0.5 < ratio < 2.0:
                    raise AssertionError(f"APPNP within-frame energy ratio {row['energy_within_ratio']:.3g} "
                                         f"is not near alpha^2 = {alpha ** 2:.3g} ({row})")
            if row["operator"] == "gcn" and row["depth"] == 1 and row["energy_within_ratio"] > 1e-3:
                raise AssertionError(f"one GCN step kept {row['energy_within_ratio']:.3g} of the within-frame energy")
    lines.append("theory check passed: APPNP keeps ~alpha^2 of within-frame energy at every K; "
                 "one GCN step removes >1000x on 7x7 frames")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None)
    parser.add_argument("--backend", default=None, choices=["structured", "csr", "edge_index", "stencil"],
                        help="back-end of APPNP and GCN (GAT always runs on edge_index; default: structured for "
                             "the paper's graph, the recommended one for others)")
    parser.add_argument("--graphs", nargs="+", default=["full+aligned"],
                        help="edge families, spatial+temporal each (default: the paper's full+aligned)")
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2, help="clips per measurement")
    parser.add_argument("--full", action="store_true", help="also 14x14 grids, 8 clips, more timing repeats")
    parser.add_argument("--checkpoint", type=Path, default=None, help="use a trained model's Transformer outputs")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("results/oversmoothing.json"))
    parser.add_argument("--end-to-end", action="store_true",
                        help="instead: Top-1 of heads with GCN/GAT stacks of depth 1-16 and APPNP K 1-64 on the "
                             "frozen-feature SynthGym protocol (benchmarks.ablation), mean and 95%% CI over seeds")
    parser.add_argument("--seeds", type=int, default=3, help="--end-to-end: paired seeds per row")
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8, 16],
                        help="--end-to-end: GCN / GAT stack depths")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 16, 64], help="--end-to-end: APPNP K values")
    parser.add_argument("--pretrained", type=Path, default=Path("runs/synthgym_pretrain/backbone.pt"),
                        help="--end-to-end: backbone of synthgym_pretrain")
    args = parser.parse_args(argv)
    families = [parse_graph(text, "--graphs") for text in args.graphs]  # bad names stop before any work
    if any(dynamic for _, _, dynamic in families):
        parser.error("--graphs: kNN edges change with the features; list static families (spatial+temporal)")
    device = pick_device(args.device)
    env = environment(device)
    if args.end_to_end:
        end_to_end(args, device, env)
        return
    grids = GRIDS + (FULL_GRIDS if args.full else [])
    batch = 8 if args.full else args.batch
    repeats = 5 if args.full else 2
    if args.checkpoint is not None:
        features, grid = checkpoint_features(args.checkpoint, batch, device)
        grids = [grid]

    rows = []
    backends = {}
    for grid, (spatial, temporal, _) in ((g, f) for g in grids for f in families):
        graph = SpatioTemporalGraph(*grid, spatial=spatial, temporal=temporal)
        family = graph_name(spatial, temporal)
        backend = backends[family] = pick_backend(graph, args.backend)
        torch.manual_seed(0)
        x = features if args.checkpoint is not None else torch.randn(batch, graph.num_nodes, args.channels,
                                                                     device=device)
        grid_name = "x".join(map(str, grid))
        base = {"grid": grid_name, "graph": family, "depth": 0, "operator": "input", "mode": "-",
                **oversmoothing_measures(x, graph, reference=x)}
        rows.append(base)
        operators = [("appnp", "propagation", alpha) for alpha in ALPHAS] + [
            (kind, mode, None) for kind in ("gcn", "gat") for mode in ("propagation", "initialised")]
        for kind, mode, alpha in operators:
            outputs = depth_features(kind, mode, x, graph, DEPTHS, backend, alpha or 0.1)
            for depth, h in outputs.items():
                name = f"appnp a={alpha}" if kind == "appnp" else kind
                row = {"grid": grid_name, "graph": family, "depth": depth, "operator": name, "mode": mode,
                       **oversmoothing_measures(h, graph, reference=x)}
                # time the modules TAG-Head would run: APPNP (one alpha: cost does not depend on it)
                # and the initialised GCN / GAT stacks
                timed = (kind == "appnp" and alpha == 0.1) or mode == "initialised"
                if timed and not args.no_latency:
                    row.update(latency(kind, depth, x, graph, backend, device, repeats))
                rows.append(row)
        print(f"grid {grid_name}, graph {family}: done", flush=True)

    notes = check_theory(rows)
    print(describe_environment(env))
    print(f"channels {x.size(-1)}, clips {x.size(0)}, input: "
          f"{'Transformer outputs of ' + str(args.checkpoint) if args.checkpoint else 'random tokens'}, "
          f"APPNP/GCN back-end: {', '.join(f'{g}: {b}' for g, b in backends.items())}")
    columns = ["grid", "graph", "operator", "mode", "depth", "energy_within_ratio", "energy_across_ratio",
               "energy_norm", "mad", "mad_official", "cos_within", "cos_across", "effective_rank", "numerical_rank"]
    if not args.no_latency:
        columns += ["fwd_ms", "fwd_bwd_ms"]
    shown = [r for r in rows if r["depth"] in (0, 1, 2, 8, 64)]
    print(format_table(shown, columns))
    for line in notes:
        print(line)
    path = write_json(args.out, {"benchmark": "oversmoothing", "environment": env, "settings": {
        "grids": [list(g) for g in grids], "depths": DEPTHS, "alphas": ALPHAS, "channels": x.size(-1),
        "clips": x.size(0), "backends": backends, "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "repeats": repeats}, "rows": rows, "notes": notes})
    print(f"wrote {path}")
    try:
        plot(rows, args.out.with_suffix(""))
    except ImportError:
        print("matplotlib not installed: no plots")


def end_to_end(args, device, env) -> None:
    """Oversmoothing tied to accuracy: Top-1 on the frozen-feature protocol per depth / K."""
    from .ablation import run_rows

    if not args.pretrained.is_file():
        raise SystemExit(f"--pretrained {args.pretrained} not found: run taggnn train --config synthgym_pretrain "
                         f"--out runs/synthgym_pretrain first")
    rows = {"B+TE": ["model.intra=false", "model.temporal=false"]}  # no graph stage
    rows.update({f"APPNP-K{k}": [f"model.K={k}"] for k in args.ks})
    rows.update({f"GCNx{d}": ["model.propagation=gcn", f"model.num_graph_layers={d}"] for d in args.depths})
    rows.update({f"GATx{d}": ["model.propagation=gat", f"model.num_graph_layers={d}", "model.graph_heads=4"]
                 for d in args.depths})
    result = run_rows("frozen", rows, args.seeds, train=1600, test=640, pretrained=args.pretrained, device=device,
                      study=args.out.with_name(args.out.stem + "_study"))
    print(describe_environment(env))
    print(f"frozen-feature protocol (benchmarks.ablation), SynthGym 1600/640 clips, {args.seeds} paired seeds; "
          f"Top-1 in %, mean [95% CI]; paired difference to B+TE (no graph stage)")
    print(format_table(result["table"], ["row", "top1 [95% CI]", "top1 std", "mca [95% CI]", "vs B+TE", "s/run"]))
    path = write_json(args.out.with_name(args.out.stem + "_end_to_end.json"), {
        "benchmark": "oversmoothing_end_to_end", "environment": env, "settings": {
            "protocol": "frozen", "seeds": args.seeds, "rows": rows, "pretrained": str(args.pretrained)},
        "table": result["table"], "runs": result["runs"]})
    print(f"wrote {path}")


MEASURES = [("energy_within_ratio", "within-frame energy / input"),
            ("energy_across_ratio", "across-frame energy / input"), ("mad", "MAD"),
            ("effective_rank", "effective rank"), ("fwd_bwd_ms", "forward+backward ms")]
# series i gets line style LINES[i % 4], marker MARKERS[i % 7] and a width and marker size that shrink
# with i % 4: curves drawn on top of each other stay visible (wide solid under narrow dashed)
LINES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "x", "+")


def _coinciding(curves: Dict[str, List[tuple]]) -> List[List[str]]:
    """Groups of two or more series whose points are the same (to 1e-9 relative)."""
    groups: List[List[str]] = []
    for label, points in curves.items():
        for group in groups:
            other = curves[group[0]]
            if len(other) == len(points) and all(d == e and abs(v - w) <= 1e-9 * max(abs(v), abs(w), 1e-300)
                                                 for (d, v), (e, w) in zip(points, other)):
                group.append(label)
                break
        else:
            groups.append([label])
    return [group for group in groups if len(group) > 1]


def figure(rows: List[dict], grid: str, graph: str = "full+aligned"):
    """The oversmoothing figure of one grid: one panel per measure present in ``rows`` (no latency panel
    when nothing was timed). Every series has its own line style and marker; series that coincide in a
    panel are named in a note under it; zeros, which a log axis cannot show, are drawn at a dotted floor
    a decade under the smallest positive value, with hollow markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["grid"] == grid and r.get("graph", "full+aligned") == graph and r["depth"] > 0]
    measures = [(key, title) for key, title in MEASURES if any(r.get(key) is not None for r in rows)]
    series = sorted({(r["operator"], r["mode"]) for r in rows})
    fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 4.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], measures):
        curves = {}
        for index, (operator, mode) in enumerate(series):
            label = operator if mode == "propagation" else f"{operator} ({mode})"
            points = sorted((r["depth"], float(r[key])) for r in rows if r["operator"] == operator
                            and r["mode"] == mode and r.get(key) is not None)
            if points:
                curves[label] = (index, points)
        positive = [v for _, points in curves.values() for _, v in points if v > 0]
        floor = min(positive) / 10 if positive else 1.0
        for label, (index, points) in curves.items():
            colour = plt.get_cmap("tab10")(index % 10)
            depths = [d for d, _ in points]
            ax.plot(depths, [max(v, floor) for _, v in points], linestyle=LINES[index % 4],
                    marker=MARKERS[index % 7], markersize=7 - 1.5 * (index % 4), markerfacecolor="none",
                    linewidth=2.8 - 0.6 * (index % 4), color=colour, label=label)
            zeros = [d for d, v in points if v <= 0]
            if zeros:
                ax.plot(zeros, [floor] * len(zeros), linestyle="none", marker="o", markersize=11,
                        markerfacecolor="none", markeredgecolor=colour)
        if any(v <= 0 for _, points in curves.values() for _, v in points):
            ax.axhline(floor, color="grey", linestyle=":", linewidth=1)
            ax.annotate("0 (drawn at floor)", (0.02, floor), xycoords=("axes fraction", "data"),
                        xytext=(0, 3), textcoords="offset points", fontsize=7, color="grey")
        same = _coinciding({label: points for label, (_, points) in curves.items()})
        if same:
            ax.text(0.0, -0.24, "\n".join("same values: " + " = ".join(group) for group in same),
                    transform=ax.transAxes, fontsize=7, va="top", wrap=True)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("depth (K or layers)")
    axes[0][0].legend(fontsize=7)
    paper = graph == "full+aligned"
    fig.suptitle(f"oversmoothing on the {grid} TAG-Head graph" + ("" if paper else f", edges {graph}"))
    fig.tight_layout()
    return fig


def plot(rows: List[dict], stem: Path) -> List[Path]:
    """One PNG per (grid, graph) of ``rows`` (:func:`figure`), written to ``{stem}_{grid}.png`` for
    the paper's graph and ``{stem}_{grid}_{graph}.png`` for other edge families."""
    import matplotlib.pyplot as plt

    paths = []
    for grid, graph in sorted({(r["grid"], r.get("graph", "full+aligned")) for r in rows}):
        fig = figure(rows, grid, graph)
        suffix = "" if graph == "full+aligned" else "_" + graph.replace("+", "_").replace(":", "-")
        path = Path(f"{stem}_{grid}{suffix}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        print(f"wrote {path}")
        paths.append(path)
    return paths


if __name__ == "__main__":
    main()
