"""Is SynthGym a fair fine-grained task? Single-frame control vs temporal model, and rendering speed.

    python -m benchmarks.synthgym [--epochs 6] [--train 1600] [--test 640] [--seeds 1]

Trains the same small model (tiny R(2+1)D + TAG-Head, 16x64x64) twice on SynthGym's train split:

* **temporal**: the real clips;
* **single-frame control**: every clip replaced by one of its frames (chosen at random,
  repeated 16 times), so the model sees appearance but no motion.

and reports, on the test split, Top-1, **group accuracy** (is the predicted class in the right
group of 4) and **within-group accuracy** (argmax over the 4 classes of the true group; chance
25%). A fair fine-grained set leaves the single-frame control near 25% within groups while the
temporal model gets well above it. Also: rendering speed (clips/s, one process) and a contact
sheet PNG (one clip per class, every other frame).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from taggnn.data.synthgym import SynthGym
from taggnn.models import build_model

from ._common import describe_environment, environment, format_table, pick_device, write_json

MEAN = torch.tensor([0.45, 0.45, 0.45]).view(1, 3, 1, 1, 1)
STD = torch.tensor([0.225, 0.225, 0.225]).view(1, 3, 1, 1, 1)


def render_all(dataset: SynthGym) -> torch.Tensor:
    return torch.from_numpy(np.stack([dataset.render(i) for i in range(len(dataset))]))  # (N, T, H, W, 3)


def to_input(clips: torch.Tensor) -> torch.Tensor:
    video = clips.permute(0, 4, 1, 2, 3).float().div_(255)  # (B, 3, T, H, W)
    return (video - MEAN) / STD


def single_frame(clips: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    N, T = clips.shape[:2]
    pick = torch.randint(T, (N,), generator=generator)
    return clips[torch.arange(N), pick].unsqueeze(1).expand(-1, T, -1, -1, -1)  # one frame, repeated


def train_and_test(train_clips, train_labels, test_clips, test_labels, *, static: bool, epochs: int,
                   batch_size: int, seed: int, device: torch.device = torch.device("cpu"), **head_options):
    """Trains the tiny model on pre-rendered clips; returns test logits and training seconds."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    options = dict(num_heads=4, ffn_dim=256, dropout=0.1)
    options.update(head_options)
    model = build_model("r2plus1d_tiny", 16, num_frames=16, crop_size=64, **options).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * ((len(train_clips) + batch_size - 1) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.15)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_clips), generator=generator)
        for i in range(0, len(order), batch_size):
            index = order[i:i + batch_size]
            clips = train_clips[index]
            if static:
                clips = single_frame(clips, generator)
            # No horizontal flip: mirroring a clip turns "cw" into "ccw", a different class.
            loss = F.cross_entropy(model(to_input(clips).to(device)), train_labels[index].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    train_seconds = time.perf_counter() - start
    model.eval()
    logits = []
    with torch.no_grad():
        for i in range(0, len(test_clips), 64):
            clips = test_clips[i:i + 64]
            if static:
                clips = single_frame(clips, torch.Generator().manual_seed(i))
            logits.append(model(to_input(clips).to(device)).float().cpu())
    logits = torch.cat(logits)
    return logits, train_seconds


def metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    predicted = logits.argmax(1)
    group_of = labels // 4
    grouped = logits.view(len(logits), -1, 4)[torch.arange(len(logits)), group_of]  # (N, 4)
    return {
        "top1": (predicted == labels).float().mean().item(),
        "group_acc": (predicted // 4 == group_of).float().mean().item(),
        "within_group_acc": (grouped.argmax(1) == labels % 4).float().mean().item(),
    }


def contact_sheet(dataset: SynthGym, path: Path) -> Path:
    from PIL import Image

    rows = []
    for label in range(len(dataset.classes)):
        clip = dataset.render(dataset.labels.index(label))
        rows.append(np.concatenate(list(clip[::2]), axis=1))
    sheet = np.concatenate(rows, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path, optimize=True)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train", type=int, default=1600)
    parser.add_argument("--test", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/synthgym.json"))
    parser.add_argument("--sheet", type=Path, default=Path("results/synthgym_contact_sheet.png"))
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when present)")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    env = environment(device)

    train_set, test_set = SynthGym("train", length=args.train), SynthGym("test", length=args.test)
    start = time.perf_counter()
    train_clips = render_all(train_set)
    render_rate = len(train_set) / (time.perf_counter() - start)
    test_clips = render_all(test_set)
    train_labels, test_labels = torch.tensor(train_set.labels), torch.tensor(test_set.labels)

    rows = []
    for seed in range(args.seeds):
        for static in (True, False):
            logits, seconds = train_and_test(train_clips, train_labels, test_clips, test_labels, static=static,
                                             epochs=args.epochs, batch_size=args.batch_size, seed=seed,
                                             device=device)
            row = {"model": "single-frame control" if static else "temporal (clips)", "seed": seed,
                   **metrics(logits, test_labels), "train_s": seconds}
            rows.append(row)
    sheet = contact_sheet(SynthGym("val", length=320), args.sheet)
    print(describe_environment(env))
    print(f"SynthGym 16 classes in 4 groups, 16x64x64, train {args.train} / test {args.test} clips, "
          f"{args.epochs} epochs, tiny R(2+1)D + TAG-Head; chance: top-1 6.25%, group 25%, within-group 25%")
    print(format_table(rows, ["model", "seed", "top1", "group_acc", "within_group_acc", "train_s"]))
    print(f"rendering: {render_rate:.0f} clips/s (one process, 16x64x64)")
    print(f"contact sheet: {sheet}")
    path = write_json(args.out, {"benchmark": "synthgym", "environment": env, "settings": vars(args) | {
        "out": str(args.out), "sheet": str(args.sheet)}, "rows": rows, "render_clips_per_s": render_rate})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
