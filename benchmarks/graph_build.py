"""Building and batching the token-grid graph of every edge family vs what a PyG user would write.

    python -m benchmarks.graph_build [--device cuda] [--quick] [--out results/graph_build.json]
                                     [--gallery benchmarks/figures/graph_families]

For B clips of T' x H' x W' tokens (default B=16, 16 x 14 x 14) and each edge
family, it times

* ``taggnn cold``: ``SpatioTemporalGraph(...).batch(x)`` with an empty template
  cache (builds the one-clip template, then batches it);
* ``taggnn warm``: the same call again (the cached batched template);
* ``alternative``: the obvious PyG-user construction, rebuilt per batch as in a
  dataset's ``__getitem__`` or a forward: ``torch_geometric.utils.grid`` per
  frame + hand-made temporal edges for the grid families, a dense pairwise
  mask of positions (``torch.cdist``) + ``nonzero`` for the others
  (``torch_cluster.radius_graph`` / ``knn_graph`` when torch-cluster is
  installed), then ``Batch.from_data_list`` over per-clip ``Data``; for
  ``knn`` a dense ``cdist`` + ``topk`` per batch.

Every alternative's edge set is compared with taggnn's (``same_edges``), so a
fast wrong construction cannot pass. ``speedup`` = alternative / taggnn cold.
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from torch_geometric.data import Batch, Data
from torch_geometric.utils import grid as pyg_grid
from torch_geometric.utils import remove_self_loops

from taggnn.graph import SpatioTemporalGraph, clear_template_cache

from ._common import describe_environment, environment, format_table, pick_device, time_call, write_json

HAS_TORCH_CLUSTER = importlib.util.find_spec("torch_cluster") is not None

#: (label, spatial, temporal, dynamic, alternative)
FAMILIES = [
    ("paper: full + aligned", "full", "aligned", None, "dense"),
    ("spatial grid4", "grid4", "none", None, "pyg_grid"),
    ("spatial grid8", "grid8", "none", None, "pyg_grid"),
    ("spatial radius:2", "radius:2", "none", None, "dense"),
    ("spatial radius:2:chebyshev", "radius:2:chebyshev", "none", None, "dense"),
    ("temporal aligned", "none", "aligned", None, "hand"),
    ("temporal window:2", "none", "window:2", None, "hand"),
    ("temporal window:2:2", "none", "window:2:2", None, "hand"),
    ("temporal cube:1", "none", "cube:1", None, "dense"),
    ("grid8 + window:2", "grid8", "window:2", None, "pyg_grid"),
    ("dynamic knn:8", "none", "none", "knn:8", "knn"),
]


def _positions(T, H, W, device):
    t, y, x = torch.meshgrid(torch.arange(T, device=device), torch.arange(H, device=device),
                             torch.arange(W, device=device), indexing="ij")
    return torch.stack([t, y, x], -1).view(-1, 3).float()  # (N, 3)


def _dense_rule(spatial, temporal, pos):
    """The (N, N) adjacency of one clip from pairwise position differences."""
    diff = (pos[None, :, :] - pos[:, None, :]).abs()  # (N, N, 3): what a user writes first
    dt, dy, dx = diff.unbind(-1)
    same_frame = dt == 0
    cheb = torch.maximum(dy, dx)
    mask = torch.zeros_like(same_frame)
    if spatial == "full":
        mask |= same_frame & (cheb > 0)
    elif spatial.startswith("radius:"):
        r = float(spatial.split(":")[1])
        if spatial.endswith("chebyshev"):
            mask |= same_frame & (cheb > 0) & (cheb <= r)
        else:
            dist = torch.cdist(pos[:, 1:], pos[:, 1:])  # (N, N) within-frame distance
            mask |= same_frame & (dist > 0) & (dist <= r + 1e-6)
    if temporal == "aligned":
        mask |= (dt == 1) & (cheb == 0)
    elif temporal.startswith("cube:"):
        mask |= (dt == 1) & (cheb <= int(temporal.split(":")[1]))
    return mask


def _temporal_by_hand(temporal, T, P, device):
    """Same-site edges across frames, written as a loop over frame pairs."""
    if temporal == "none":
        return torch.empty(2, 0, dtype=torch.long, device=device)
    parts = temporal.split(":")
    k = 1 if temporal == "aligned" else int(parts[1])
    d = int(parts[2]) if len(parts) == 3 else 1
    site = torch.arange(P, device=device)
    edges = []
    for t in range(T):
        for j in range(1, k + 1):
            for u in (t - j * d, t + j * d):
                if 0 <= u < T:
                    edges.append(torch.stack([t * P + site, u * P + site]))
    return torch.cat(edges, 1)


def alternative_edges(kind, spatial, temporal, T, H, W, device):
    """One clip's edge_index the way a PyG user would build it."""
    P = H * W
    if kind == "dense":
        if HAS_TORCH_CLUSTER and spatial.startswith("radius:") and not spatial.endswith("chebyshev"):
            from torch_cluster import radius_graph

            pos = _positions(T, H, W, device)
            frame = pos[:, 0].long()
            r = float(spatial.split(":")[1]) + 1e-6
            return radius_graph(pos[:, 1:], r, batch=frame, loop=False, max_num_neighbors=P)
        return _dense_rule(spatial, temporal, _positions(T, H, W, device)).nonzero().t()
    parts = []
    if kind == "pyg_grid":
        frame_edges, frame_pos = pyg_grid(H, W, device=device)  # 8-neighbourhood + self-loops
        frame_edges, _ = remove_self_loops(frame_edges)
        if spatial == "grid4":
            delta = (frame_pos[frame_edges[0]] - frame_pos[frame_edges[1]]).abs().sum(1)
            frame_edges = frame_edges[:, delta == 1]
        parts += [frame_edges + t * P for t in range(T)]
    parts.append(_temporal_by_hand(temporal, T, P, device))
    return torch.cat(parts, 1)


def alternative_batch(kind, spatial, temporal, dynamic, x, T, H, W):
    B = x.size(0)
    if kind == "knn":
        k = int(dynamic.split(":")[1])
        if HAS_TORCH_CLUSTER:
            from torch_cluster import knn_graph

            flat = x.reshape(-1, x.size(-1))
            batch = torch.arange(B, device=x.device).repeat_interleave(x.size(1))
            return Batch(x=flat, edge_index=knn_graph(flat, k, batch, loop=False), batch=batch)
        dist = torch.cdist(x, x)  # (B, N, N)
        dist.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        neighbour = dist.topk(k, dim=-1, largest=False).indices  # (B, N, k)
        N = x.size(1)
        data = [Data(x=x[b], edge_index=torch.stack([neighbour[b].reshape(-1),
                                                     torch.arange(N, device=x.device).repeat_interleave(k)]))
                for b in range(B)]
        return Batch.from_data_list(data)
    edge_index = alternative_edges(kind, spatial, temporal, T, H, W, x.device)
    return Batch.from_data_list([Data(x=x[b], edge_index=edge_index) for b in range(B)])


def _edge_keys(edge_index, N):
    return torch.sort(edge_index[0] * N + edge_index[1]).values


def run(args) -> dict:
    device = pick_device(args.device)
    torch.manual_seed(0)
    env = environment(device)
    env["torch_cluster"] = HAS_TORCH_CLUSTER
    B, (T, H, W), C = args.batch_size, args.grid, args.channels
    families = FAMILIES[:3] + FAMILIES[-1:] if args.quick else FAMILIES
    x = torch.randn(B, T * H * W, C, device=device)
    rows = []
    for label, spatial, temporal, dynamic, kind in families:
        graph = SpatioTemporalGraph(T, H, W, spatial=spatial, temporal=temporal, dynamic=dynamic)
        ours = graph.batch(x)
        theirs = alternative_batch(kind, spatial, temporal, dynamic, x, T, H, W)
        if dynamic is None:
            same = torch.equal(_edge_keys(ours.edge_index, B * graph.num_nodes),
                               _edge_keys(theirs.edge_index, B * graph.num_nodes))
        else:  # different tie-breaking is allowed only where distances tie
            same = ours.edge_index.size(1) == theirs.edge_index.size(1)

        def cold():
            clear_template_cache()
            return graph.batch(x)

        cold_t = time_call(cold, device, repeats=args.repeats, max_seconds=args.max_seconds)
        warm_t = time_call(lambda: graph.batch(x), device, repeats=args.repeats, max_seconds=args.max_seconds)
        alt_t = time_call(lambda: alternative_batch(kind, spatial, temporal, dynamic, x, T, H, W), device,
                          repeats=args.repeats, max_seconds=args.max_seconds)
        edges_per_clip = ours.edge_index.size(1) // B
        rows.append({
            "family": label, "B": B, "grid": f"{T}x{H}x{W}", "edges_per_node": edges_per_clip / graph.num_nodes,
            "edges_batch": ours.edge_index.size(1), "alternative": {
                "dense": "torch_cluster.radius_graph" if HAS_TORCH_CLUSTER and spatial.startswith("radius:")
                and not spatial.endswith("chebyshev") else "dense position mask + nonzero",
                "pyg_grid": "utils.grid per frame + loops", "hand": "loops over frame pairs",
                "knn": "torch_cluster.knn_graph" if HAS_TORCH_CLUSTER else "cdist + topk"}[kind]
            + ("" if kind == "knn" and HAS_TORCH_CLUSTER else " + from_data_list"),
            "taggnn_cold_ms": cold_t["median_ms"], "taggnn_warm_ms": warm_t["median_ms"],
            "alternative_ms": alt_t["median_ms"], "speedup_cold": alt_t["median_ms"] / cold_t["median_ms"],
            "taggnn_cold_min_ms": cold_t["min_ms"], "alternative_min_ms": alt_t["min_ms"],
            "speedup_cold_min": alt_t["min_ms"] / cold_t["min_ms"],
            "same_edges": same,
        })
    clear_template_cache()
    return {"benchmark": "graph_build", "environment": env, "settings": {
        "batch_size": B, "grid": [T, H, W], "channels": C, "repeats": args.repeats, "statistic": "median",
        "note": "cold = empty template cache; speedup = alternative / taggnn cold (medians; _min: fastest "
                "runs); knn: same_edges compares "
                "counts (the alternative's topk breaks distance ties differently)",
    }, "rows": rows}


def gallery(folder: Path) -> list:
    """One PNG per family on a small grid (3 x 4 x 4) and the paper's graph."""
    paths = []
    specs = [("full", "aligned"), ("grid4", "none"), ("grid8", "none"), ("radius:2", "none"),
             ("radius:1:chebyshev", "none"), ("none", "aligned"), ("none", "window:2"), ("none", "window:1:2"),
             ("none", "cube:1"), ("none", "full"), ("grid8", "window:2")]
    for spatial, temporal in specs:
        graph = SpatioTemporalGraph(3, 4, 4, spatial=spatial, temporal=temporal)
        name = f"{spatial}__{temporal}".replace(":", "-") + ".png"
        node = (1, 1, 1) if graph.num_edges > 600 else None
        graph.draw(folder / name, node=node, dpi=60)
        paths.append(folder / name)
    knn = SpatioTemporalGraph(3, 4, 4, spatial="none", temporal="none", dynamic="knn:4")
    knn.draw(folder / "dynamic__knn-4.png", x=torch.randn(48, 8, generator=torch.Generator().manual_seed(0)),
             node=(1, 1, 1), dpi=60)
    paths.append(folder / "dynamic__knn-4.png")
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--grid", type=int, nargs=3, default=[16, 14, 14], metavar=("T", "H", "W"))
    parser.add_argument("--channels", type=int, default=64, help="feature width (only kNN reads features)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=10.0, help="time cap per measurement")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 gives stable figures on a loaded machine)")
    parser.add_argument("--quick", action="store_true", help="the paper's graph, grid4, grid8 and knn only")
    parser.add_argument("--out", type=Path, default=Path("results/graph_build.json"))
    parser.add_argument("--gallery", type=Path, default=None, help="also draw every family into this folder")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    print(describe_environment(result["environment"]) + f", torch-cluster: "
          f"{'yes' if result['environment']['torch_cluster'] else 'no'}")
    print(format_table(result["rows"], ["family", "edges_per_node", "edges_batch", "taggnn_cold_ms",
                                        "taggnn_warm_ms", "alternative", "alternative_ms", "speedup_cold",
                                        "speedup_cold_min", "same_edges"]))
    print(f"wrote {write_json(args.out, result)}")
    if args.gallery:
        for path in gallery(args.gallery):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
