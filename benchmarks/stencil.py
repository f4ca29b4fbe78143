"""APPNP on translation-invariant token-grid graphs: stencil back-end vs sparse back-ends.

    python -m benchmarks.stencil [--quick] [--threads N] [--repeats R] [--out results/stencil.json]

For each setting (B clips of T x H x W tokens, C channels), offset family and K
(1 and 10 APPNP steps) it times forward (no grad) and forward+backward of

* ``pyg``: PyG's ``APPNP(K, alpha)`` on the batched ``edge_index`` (``gcn_norm`` every call),
* ``csr``: :class:`taggnn.graph.sparse.SymmetricAPPNP` on the cached normalised CSR adjacency
  (the ``csr`` back-end),
* ``stencil``: :func:`taggnn.graph.stencil.stencil_appnp` with its automatic kernel, and with
  each kernel forced (``stencil/shifts``, ``stencil/conv3d``) to show the choice.

Every output is checked against ``pyg`` (``csr`` with ``--no-pyg``): max abs difference. Two clocks: the median
wall-clock time and the median CPU time of the process (``time.process_time``, all threads).
On a shared, loaded machine the CPU time is the steadier figure of the work done; the
wall-clock time includes waiting for the cores. The load average is recorded before and after.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch_geometric.nn import APPNP

from taggnn.graph import stencil as stencil_module
from taggnn.graph.sparse import SymmetricAPPNP
from taggnn.graph.stencil import stencil_appnp, stencil_degree, stencil_edge_index

from ._common import describe_environment, environment, format_table, write_json

ALPHA = 0.1


def family_offsets(spec: str) -> torch.Tensor:
    """Offsets of ``+``-joined families: grid4, grid8, radius:r, window:k[:d], cube:r."""
    offsets = set()
    for name in spec.split("+"):
        kind, *args = name.split(":")
        args = [int(a) for a in args]
        if kind == "grid4":
            offsets |= {(0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)}
        elif kind == "grid8":
            offsets |= {(0, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)}
        elif kind == "radius":
            (r,) = args
            span = range(-r, r + 1)
            offsets |= {(0, dy, dx) for dy in span for dx in span if 0 < dy * dy + dx * dx <= r * r}
        elif kind == "window":
            k, d = (args + [1])[:2]
            offsets |= {(s * j * d, 0, 0) for j in range(1, k + 1) for s in (-1, 1)}
        elif kind == "cube":
            (r,) = args
            span = range(-r, r + 1)
            offsets |= {(dt, dy, dx) for dt in span for dy in span for dx in span if dt != 0}
        else:
            raise ValueError(f"unknown family {name!r}")
    return torch.tensor(sorted(offsets), dtype=torch.long)


def normalised_csr(grid, offsets, B: int) -> torch.Tensor:
    """Block-diagonal D^-1/2 (A + I) D^-1/2 of B clips as torch sparse CSR (what the csr back-end caches)."""
    N = grid[0] * grid[1] * grid[2]
    edge_index, _ = stencil_edge_index(grid, offsets, B)
    degree = stencil_degree(grid, offsets, dtype=torch.float64).reshape(-1).repeat(B)  # (B*N,)
    loops = torch.arange(B * N)
    row, col = torch.cat([edge_index[1], loops]), torch.cat([edge_index[0], loops])
    value = (degree[row].rsqrt() * degree[col].rsqrt()).float()
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        coo = torch.sparse_coo_tensor(torch.stack([row, col]), value, (B * N, B * N)).coalesce()
        return coo.to_sparse_csr()


def measure(fn, repeats: int, max_seconds: float):
    """Median wall-clock and CPU milliseconds of ``fn`` (one warm-up call first)."""
    fn()
    walls, cpus = [], []
    spent = 0.0
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append((time.perf_counter() - wall) * 1e3)
        cpus.append((time.process_time() - cpu) * 1e3)
        spent += walls[-1] / 1e3
        if spent > max_seconds and len(walls) >= 2:
            break
    return statistics.median(walls), statistics.median(cpus), len(walls)


def forced(kernel: str):
    """Context values of the stencil module that force one kernel (``None``: automatic)."""
    if kernel == "shifts":
        return {"CONV_MIN_OFFSETS": 10**9}
    if kernel == "conv3d":
        return {"CONV_MIN_OFFSETS": 0, "CONV_MAX_VOLUME_RATIO": float("inf")}
    return {}


def run(args) -> dict:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    env = environment(device)
    env["load_average_before"] = os.getloadavg()
    settings = [(16, (16, 14, 14), 256), (16, (4, 4, 4), 128)]
    families = ["grid4+window:1", "grid8+window:2", "radius:2+window:2:2", "radius:2+cube:1"]
    steps = (1, 10)
    if args.quick:
        settings, families, steps = [(4, (8, 7, 7), 64)], ["grid4+window:1", "cube:1"], (10,)
    rows = []
    for B, grid, C in settings:
        N = grid[0] * grid[1] * grid[2]
        x = torch.randn(B, N, C)
        for family in families:
            offsets = family_offsets(family)
            edge_index, _ = stencil_edge_index(grid, offsets, B)
            adj = normalised_csr(grid, offsets, B)
            plan = stencil_module._plan(grid, offsets)
            for K in steps:
                pyg, csr = APPNP(K, ALPHA), SymmetricAPPNP(K, ALPHA, normalize=False)
                paths = {
                    "pyg": lambda v: pyg(v.reshape(B * N, C), edge_index).view(B, N, C),
                    "csr": lambda v: csr(v.reshape(B * N, C), adj).view(B, N, C),
                }
                if args.no_pyg:  # the csr back-end becomes the reference
                    del paths["pyg"]
                for kernel in ("auto", "shifts", "conv3d"):
                    paths["stencil" if kernel == "auto" else f"stencil/{kernel}"] = (
                        lambda v, kernel=kernel: stencil_appnp(v, grid, offsets, K, ALPHA), kernel)
                with torch.no_grad():
                    reference = next(iter(paths.values()))(x)
                times = {}
                for name, path in paths.items():
                    fn, kernel = path if isinstance(path, tuple) else (path, None)
                    saved = {key: getattr(stencil_module, key) for key in forced(kernel or "auto")}
                    for key, value in forced(kernel or "auto").items():
                        setattr(stencil_module, key, value)
                    try:
                        auto_kernel = "conv3d" if plan.use_conv() else "shifts"
                        x_grad = x.clone().requires_grad_()

                        def forward():
                            with torch.no_grad():
                                return fn(x)

                        def forward_backward():
                            fn(x_grad).sum().backward()

                        with torch.no_grad():
                            diff = (fn(x) - reference).abs().max().item()
                        fwd_wall, fwd_cpu, _ = measure(forward, args.repeats, args.max_seconds)
                        fb_wall, fb_cpu, runs = measure(forward_backward, args.repeats, args.max_seconds)
                    finally:
                        for key, value in saved.items():
                            setattr(stencil_module, key, value)
                    times[name] = fb_cpu
                    rows.append({
                        "B": B, "grid": "x".join(map(str, grid)), "C": C, "family": family,
                        "offsets": plan.num_offsets, "K": K,
                        "path": f"{name} ({auto_kernel})" if name == "stencil" else name,
                        "fwd_ms": fwd_wall, "fwd_cpu_ms": fwd_cpu, "fwd_bwd_ms": fb_wall, "fwd_bwd_cpu_ms": fb_cpu,
                        "max_abs_diff": diff, "runs": runs,
                    })
                    print(f"{rows[-1]['grid']} {family} K={K} {rows[-1]['path']}: forward+backward "
                          f"{fb_wall:.1f} ms wall, {fb_cpu:.1f} ms CPU", flush=True)
                for row in rows[-len(paths):]:
                    row["csr_over_this_cpu"] = times["csr"] / row["fwd_bwd_cpu_ms"]
    env["load_average_after"] = os.getloadavg()
    return {"benchmark": "stencil", "environment": env, "settings": {
        "alpha": ALPHA, "repeats": args.repeats, "statistic": "median", "dtype": "float32",
        "note": "csr_over_this_cpu = csr's forward+backward CPU time / this path's",
    }, "rows": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=20.0, help="time cap per measurement")
    parser.add_argument("--quick", action="store_true", help="one small setting")
    parser.add_argument("--no-pyg", action="store_true", help="skip PyG's APPNP on edge_index (the slowest path)")
    parser.add_argument("--out", type=Path, default=Path("results/stencil.json"))
    args = parser.parse_args(argv)
    result = run(args)
    env = result["environment"]
    print(describe_environment(env))
    print(f"load average before {env['load_average_before']}, after {env['load_average_after']}")
    print(format_table(result["rows"], ["B", "grid", "C", "family", "offsets", "K", "path", "fwd_ms", "fwd_cpu_ms",
                                        "fwd_bwd_ms", "fwd_bwd_cpu_ms", "csr_over_this_cpu", "max_abs_diff",
                                        "runs"]))
    print(f"wrote {write_json(args.out, result)}")


if __name__ == "__main__":
    main()
