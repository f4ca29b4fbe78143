"""The paper's Table 5 (parameters, FLOPs) and backbone vs head latency.

    python -m benchmarks.complexity [--device cuda] [--backbones r2plus1d_34 r2plus1d_tiny] [--no-latency]

First the paper's setting: R(2+1)D-34 (IG-65M layout) + TAG-Head (2 layers,
8 heads, FFN 2048) on 32x112x112 clips, which Table 5 reports as backbone
63.49M, head 6.41M, total 69.90M parameters and 153.4 G (multiply-adds).
Then every registered backbone (whose optional package is installed) with
TAG-Head on top, at the clip size it is usually run at: the head's overhead
in % of parameters, FLOPs and time. Batch size 1; latency is the median of
``--repeats`` runs after one warm-up.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from taggnn.models import backbone_info, build_model, list_backbones
from taggnn.models.complexity import profile_model

from ._common import describe_environment, environment, format_table, pick_device, write_json


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None)
    parser.add_argument("--backbones", nargs="*", default=None, help="default: every available backbone")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ffn-dim", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=Path("results/complexity.json"))
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    env = environment(device)
    torch.manual_seed(0)

    names = args.backbones or list_backbones(available_only=True)
    rows, details = [], {}
    for name in ["r2plus1d_34"] + [n for n in names if n != "r2plus1d_34"]:
        frames, crop = backbone_info(name).default_clip
        model = build_model(name, 99, num_frames=frames, crop_size=crop, ffn_dim=args.ffn_dim)
        result = profile_model(model, frames, crop, crop, device=device,
                               measure_latency=not args.no_latency, repeats=args.repeats)
        details[name] = result
        p, m = result["params"], result["macs"]
        row = {
            "backbone": name, "clip": f"{frames}x{crop}x{crop}", "grid": "x".join(map(str, result["grid"])),
            "backbone_M": p["backbone"] / 1e6, "head_M": p["head_without_classifier"] / 1e6,
            "total_M": p["total_without_classifier"] / 1e6,
            "backbone_GMAC": m["backbone"] / 1e9, "head_GMAC": m["head"] / 1e9, "total_GMAC": m["total"] / 1e9,
            "head_%params": 100 * p["head_without_classifier"] / p["total_without_classifier"],
            "head_%MAC": 100 * m["head"] / m["total"],
        }
        if "latency_ms" in result:
            lat = result["latency_ms"]
            row.update({"backbone_ms": lat["backbone"], "head_ms": lat["head"],
                        "head_%time": 100 * lat["head"] / lat["total"]})
        rows.append(row)
        del model

    paper = details["r2plus1d_34"]
    M = lambda n: f"{n / 1e6:.3f}M"  # noqa: E731
    G = lambda n: f"{n / 1e9:.1f}"  # noqa: E731
    print(describe_environment(env))
    print("Paper setting (Table 5): R(2+1)D-34 + TAG-Head, FFN %d, 32x112x112, batch 1" % args.ffn_dim)
    print(format_table([
        {"part": "backbone", "params": M(paper["params"]["backbone"]), "GFLOPs (2/MAC)": G(paper["flops"]["backbone"]),
         "GMACs": G(paper["macs"]["backbone"]), "paper": "63.49M"},
        {"part": "positional table", "params": M(paper["params"]["positional_table"])},
        {"part": "transformer", "params": M(paper["params"]["transformer"])},
        {"part": "graph refinement (APPNP)", "params": M(paper["params"]["graph_refinement"])},
        {"part": "head (no classifier)", "params": M(paper["params"]["head_without_classifier"]),
         "GFLOPs (2/MAC)": G(paper["flops"]["head"]), "GMACs": G(paper["macs"]["head"]), "paper": "6.41M"},
        {"part": "total (no classifier)", "params": M(paper["params"]["total_without_classifier"]),
         "GFLOPs (2/MAC)": G(paper["flops"]["total"]), "GMACs": G(paper["macs"]["total"]),
         "paper": "69.90M, 153.4 G"},
    ], ["part", "params", "GFLOPs (2/MAC)", "GMACs", "paper"]))
    print()
    print("Every backbone with TAG-Head (FFN %d), batch 1, device %s" % (args.ffn_dim, device))
    columns = ["backbone", "clip", "grid", "backbone_M", "head_M", "total_M", "backbone_GMAC", "head_GMAC",
               "head_%params", "head_%MAC"]
    if not args.no_latency:
        columns += ["backbone_ms", "head_ms", "head_%time"]
    print(format_table(rows, columns))
    path = write_json(args.out, {"benchmark": "complexity", "environment": env,
                                 "settings": {"ffn_dim": args.ffn_dim, "batch_size": 1, "repeats": args.repeats,
                                              "flops_convention": "flops = 2 x macs; macs as fvcore/paper"},
                                 "rows": rows, "details": details})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
