"""``python -m taggnn.demo``: TAG-Head end to end on random backbone features.

Runs the paper's head (R(2+1)D-34 feature size: 512 channels, a 4x7x7 token
grid from 32 frames at 112x112) on random features: forward, backward and one
Adam step, and reports shapes, parameter counts and timings. It needs no data
and no weights; the training demo on SynthGym replaces it once the training
loop lands.
"""
from __future__ import annotations

import argparse
import logging
import time

import torch

from taggnn.nn import TAGHead

logger = logging.getLogger("taggnn.demo")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grid", type=int, nargs=3, default=(4, 7, 7), metavar=("T", "H", "W"))
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=99)
    parser.add_argument("--ffn-dim", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    torch.manual_seed(0)
    device = torch.device(args.device)
    head = TAGHead(args.channels, args.num_classes, tuple(args.grid), ffn_dim=args.ffn_dim).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-5)
    features = torch.randn(args.batch_size, args.channels, *args.grid, device=device)
    labels = torch.randint(args.num_classes, (args.batch_size,), device=device)

    logger.info("%s", head)
    counts = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in [("positional table", head.pos_embed), ("transformer", head.transformer),
                             ("graph refiner", head.refiner), ("classifier", head.classifier)]
        if module is not None
    }
    for name, count in counts.items():
        logger.info("parameters %-17s %10s", name, f"{count:,}")
    logger.info("parameters %-17s %10s", "total", f"{sum(counts.values()):,}")

    start = time.perf_counter()
    logits = head(features)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    forward_s = time.perf_counter() - start
    loss.backward()
    optimizer.step()
    total_s = time.perf_counter() - start
    logger.info("features %s -> tokens %s -> logits %s",
                tuple(features.shape), (args.batch_size, head.num_nodes, args.channels), tuple(logits.shape))
    logger.info("graph: %s", head.graph)
    logger.info("loss %.4f; forward %.1f ms, forward+backward+step %.1f ms on %s",
                loss.item(), forward_s * 1e3, total_s * 1e3, device)


if __name__ == "__main__":
    main()
