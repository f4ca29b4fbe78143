r"""SynthGym: a built-in fine-grained action dataset that runs anywhere.

Procedurally rendered clips of a stick figure performing moves whose classes
differ the way FineGym's do: by rotation extent, direction, order of
sub-moves or rhythm, never by appearance. Four groups of four classes:

=================  ==================================================  ===============================
group              classes                                             what separates them
=================  ==================================================  ===============================
``turn``           turn 0.5 cw, turn 1 cw, turn 0.5 ccw, turn 1 ccw    extent and direction of a
                                                                       whole-body rotation
``arm circle``     arm circle 1 cw, 2 cw, 1 ccw, 2 ccw                 extent and direction of one
                                                                       limb's rotation
``hop``            hop x1, x2, x3, x4                                  rhythm (number of hops)
``combo``          arm-kick-crouch, crouch-kick-arm, kick-arm-crouch,  order of three sub-moves
                   arm-crouch-kick
=================  ==================================================  ===============================

Inside a group every frame is drawn from the same distribution: the start
orientation / arm angle is uniform on the circle, the height profile
:math:`|\sin(\pi k t)|` has the same (arcsine) distribution of values for
every hop count :math:`k`, and a permutation of equally long sub-moves
shows each pose for the same share of the clip. So no single frame tells
the classes of a group apart; only their order in time does. Groups differ
in appearance (whole-body turn vs arm vs hop vs combo), like FineGym's events.

Nuisances vary per clip: figure size, position, limb proportions, line
width, colours, a textured background with slow camera drift, the start
phase/orientation, the speed (share of the clip the move takes, 75-100%)
and its onset, pixel noise, and a distractor ball on a random path.

Clips are deterministic: ``(seed, split, index)`` fixes every random draw
(numpy ``SeedSequence``), and rendering is plain float32 arithmetic on those
draws; train, val and test use different seed streams.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ..errors import ConfigError
from ..utils import memory
from .registry import register_dataset
from .video import write_video

logger = logging.getLogger(__name__)

GROUPS: Dict[str, List[str]] = {
    "turn": ["turn 0.5 cw", "turn 1 cw", "turn 0.5 ccw", "turn 1 ccw"],
    "arm circle": ["arm circle 1 cw", "arm circle 2 cw", "arm circle 1 ccw", "arm circle 2 ccw"],
    "hop": ["hop x1", "hop x2", "hop x3", "hop x4"],
    "combo": ["arm-kick-crouch", "crouch-kick-arm", "kick-arm-crouch", "arm-crouch-kick"],
}
GROUP_NAMES = list(GROUPS)
# Each split has its own seed stream. The pretrain_* splits (for coarse-to-fine transfer, the
# analogue of IG-65M hashtag pretraining) are disjoint from the fine-grained splits.
SPLITS = {"train": 0, "val": 1, "test": 2, "pretrain_train": 3, "pretrain_val": 4, "pretrain_test": 5}
DEFAULT_SIZES = {"train": 1600, "val": 320, "test": 640, "pretrain_train": 3200, "pretrain_val": 320,
                 "pretrain_test": 640}
LABELS = ("fine", "coarse")
RENDER_VERSION = 1  # bump when rendering changes, so caches do not mix versions

# Segments of the figure: (joint a, joint b) indices into the joint array, whose rows are
# hip, neck, l_elbow, l_hand, r_elbow, r_hand, l_knee, l_foot, r_knee, r_foot.
_SEGMENTS = [(0, 1), (1, 2), (2, 3), (1, 4), (4, 5), (0, 6), (6, 7), (0, 8), (8, 9)]


def _smooth_bump(u: np.ndarray) -> np.ndarray:
    """0 outside [0, 1], a sin^2 bump inside."""
    inside = (u >= 0) & (u <= 1)
    return np.where(inside, np.sin(np.pi * np.clip(u, 0, 1)) ** 2, 0.0)


class SynthGym(Dataset):
    r"""The SynthGym dataset (see the module docstring for classes and nuisances).

    Args:
        split (str): ``"train"``, ``"val"``, ``"test"``, or ``"pretrain_train"``,
            ``"pretrain_val"``, ``"pretrain_test"`` (clips from seed streams of their
            own, disjoint from the fine-grained splits: for pretraining).
        num_frames (int, optional): Frames per clip. (default: ``16``)
        size (int, optional): Frame height and width. (default: ``64``)
        num_classes (int, optional): 4, 8, 12 or 16: the first 1-4 groups.
            (default: ``16``)
        seed (int, optional): Dataset seed. (default: ``0``)
        length (int, optional): Clips in the split. (default: 1600 / 320 /
            640 for train / val / test)
        long_tail (float, optional): Imbalance ratio :math:`\rho` of a
            long-tailed class distribution (like Gym288): class :math:`c`
            (in a seeded random order of the classes) gets a share
            :math:`\propto \rho^{-c / (C - 1)}`. :obj:`None` is balanced.
        transform (callable, optional): Applied to the uint8 ``(T, H, W, 3)``
            clip, e.g. :func:`~taggnn.data.train_transform`.
        cache_dir (str, optional): Keep rendered clips as ``.npy`` files.
        labels (str, optional): ``"fine"``: the classes; ``"coarse"``: the
            groups (label = class // 4, ``classes`` = group names), the
            coarse labels of a pretraining corpus. Clips are the same.
            (default: ``"fine"``)

    Returns ``(clip, label)`` with ``clip`` uint8 ``(T, H, W, 3)`` unless a
    transform is given.
    """

    def __init__(self, split: str = "train", *, num_frames: int = 16, size: int = 64, num_classes: int = 16,
                 seed: int = 0, length: Optional[int] = None, long_tail: Optional[float] = None,
                 transform: Optional[Callable] = None, cache_dir: Optional[os.PathLike] = None,
                 labels: str = "fine"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if num_classes not in (4, 8, 12, 16):
            raise ValueError(f"num_classes must be 4, 8, 12 or 16 (whole groups of 4), got {num_classes!r}")
        if num_frames < 4:
            raise ValueError(f"num_frames must be >= 4 to show a move, got {num_frames}")
        if size < 16:
            raise ValueError(f"size must be >= 16 pixels, got {size}")
        if labels not in LABELS:
            raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")
        if long_tail is not None and not long_tail >= 1:
            raise ValueError(f"long_tail must be an imbalance ratio >= 1 or None, got {long_tail!r}")
        self.split, self.num_frames, self.size, self.seed = split, num_frames, size, seed
        self.long_tail = long_tail
        self.transform = transform
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        groups = GROUP_NAMES[: num_classes // 4]
        self.classes: List[str] = [name for group in groups for name in GROUPS[group]]
        self.class_groups: List[str] = [group for group in groups for _ in GROUPS[group]]
        self.length = DEFAULT_SIZES[split] if length is None else int(length)
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.labels: List[int] = self._assign_labels()  # fine labels: what is rendered
        self.label_kind = labels
        if labels == "coarse":
            self.fine_classes = self.classes
            self.classes = list(groups)

    def target(self, index: int) -> int:
        """The label returned for clip ``index`` (its group with ``labels="coarse"``)."""
        label = self.labels[index]
        return label // 4 if self.label_kind == "coarse" else label

    # ---------------------------------------------------------------- labels
    def _assign_labels(self) -> List[int]:
        C = len(self.classes)
        if self.long_tail is None:
            shares = np.full(C, 1.0 / C)
        else:
            order = np.random.default_rng([self.seed, 99]).permutation(C)  # same for every split
            weights = np.empty(C)
            weights[order] = self.long_tail ** (-np.arange(C) / max(C - 1, 1))
            shares = weights / weights.sum()
        counts = np.floor(shares * self.length).astype(int)
        counts = np.maximum(counts, 1) if self.length >= C else counts
        # hand out the remainder to the largest fractional parts (deterministic)
        remainder = self.length - counts.sum()
        fractions = shares * self.length - np.floor(shares * self.length)
        for c in np.argsort(-fractions, kind="stable")[: max(remainder, 0)]:
            counts[c] += 1
        while counts.sum() > self.length:
            counts[np.argmax(counts)] -= 1
        labels = np.repeat(np.arange(C), counts)
        rng = np.random.default_rng([self.seed, SPLITS[self.split], 7])
        return rng.permutation(labels).tolist()

    @property
    def samples(self) -> List[Tuple[str, int]]:
        """``(name, label)`` pairs; names encode (seed, split, index)."""
        return [(f"synthgym/{self.seed}/{self.split}/{i:06d}", self.target(i)) for i in range(self.length)]

    @property
    def targets(self) -> List[int]:
        return [self.target(i) for i in range(self.length)]

    @property
    def groups(self) -> List[str]:
        return GROUP_NAMES[: len(getattr(self, "fine_classes", self.classes)) // 4]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} clips")
        clip = torch.from_numpy(self.render(index))
        if self.transform is not None:
            clip = self.transform(clip)
        return clip, self.target(index)

    # ------------------------------------------------------------- rendering
    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS[self.split], 1, index])

    def render(self, index: int) -> np.ndarray:
        """The uint8 clip ``(T, H, W, 3)`` of sample ``index`` (cached if ``cache_dir``)."""
        if self.cache_dir is not None:
            key = (f"v{RENDER_VERSION}_{self.seed}_{self.split}_{index}_{self.num_frames}_{self.size}_"
                   f"{self.labels[index]}")
            path = self.cache_dir / f"{key}.npy"
            if path.exists():
                return np.load(path)
            clip = render_clip(self.labels[index], self._rng(index), self.num_frames, self.size)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, clip)
            os.replace(tmp, path)
            return clip
        return render_clip(self.labels[index], self._rng(index), self.num_frames, self.size)

    def __repr__(self) -> str:
        tail = f", long_tail={self.long_tail}" if self.long_tail else ""
        return (f"SynthGym(split={self.split!r}, clips={self.length}, classes={len(self.classes)}, "
                f"num_frames={self.num_frames}, size={self.size}, seed={self.seed}{tail})")


def _pose(label: int, rng: np.random.Generator, t: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-frame pose parameters for class ``label`` at normalised times ``t`` (T,)."""
    group, member = divmod(label, 4)
    T = t.size
    # the move takes 75-100% of the clip, starting at a random onset
    span = rng.uniform(0.75, 1.0)
    onset = rng.uniform(0.0, 1.0 - span)
    u = np.clip((t - onset) / span, 0.0, 1.0)  # move time in [0, 1]

    pose = {
        "theta": np.full(T, rng.uniform(-0.15, 0.15)),  # body lean / orientation
        "l_arm": np.full(T, rng.uniform(2.6, 2.9)),  # arm angles from "up" (pi = hanging down)
        "r_arm": np.full(T, -rng.uniform(2.6, 2.9)),
        "l_leg": np.full(T, rng.uniform(-0.25, -0.1)),
        "r_leg": np.full(T, rng.uniform(0.1, 0.25)),
        "lift": np.zeros(T),  # vertical offset (in body units, up positive)
        "crouch": np.zeros(T),
    }
    if group == 0:  # turn: whole-body rotation
        extent = 0.5 if member in (0, 2) else 1.0
        direction = 1.0 if member in (0, 1) else -1.0
        pose["theta"] = rng.uniform(0, 2 * np.pi) + direction * extent * 2 * np.pi * u
    elif group == 1:  # arm circle: the right arm rotates
        turns = 1.0 if member in (0, 2) else 2.0
        direction = 1.0 if member in (0, 1) else -1.0
        pose["r_arm"] = rng.uniform(0, 2 * np.pi) + direction * turns * 2 * np.pi * u
    elif group == 2:  # hop k times
        hops = member + 1
        phase = rng.uniform(-0.1, 0.1)
        height = np.abs(np.sin(np.pi * hops * (u + phase / hops)))
        pose["lift"] = 0.6 * height
        pose["l_leg"] = pose["l_leg"] - 0.35 * height
        pose["r_leg"] = pose["r_leg"] + 0.35 * height
    else:  # combo: three equally long sub-moves in a class-specific order
        orders = [("arm", "kick", "crouch"), ("crouch", "kick", "arm"),
                  ("kick", "arm", "crouch"), ("arm", "crouch", "kick")]
        for slot, move in enumerate(orders[member]):
            bump = _smooth_bump(u * 3 - slot)
            if move == "arm":
                pose["l_arm"] = pose["l_arm"] - 2.4 * bump  # raise the left arm overhead
            elif move == "kick":
                pose["r_leg"] = pose["r_leg"] + 1.3 * bump  # kick the right leg forward
            else:
                pose["crouch"] = pose["crouch"] + 0.45 * bump
    return pose


def _joints(pose: Dict[str, np.ndarray], proportions: np.ndarray) -> np.ndarray:
    """Joint positions in body units, (T, J, 2) as (x, y) with y down; hip at the origin."""
    torso, upper_arm, forearm, thigh, shin = proportions
    T = pose["theta"].size
    crouch = pose["crouch"]

    def direction(angle):  # angle from "up", clockwise, in image coordinates (y down)
        return np.stack([np.sin(angle), -np.cos(angle)], axis=-1)  # (T, 2)

    hip = np.zeros((T, 2))
    hip[:, 1] = crouch * (thigh + shin) - pose["lift"]
    neck = hip + torso * direction(np.zeros(T))
    l_elbow = neck + upper_arm * direction(-pose["l_arm"])
    l_hand = l_elbow + forearm * direction(-pose["l_arm"] - 0.3)
    r_elbow = neck + upper_arm * direction(-pose["r_arm"])
    r_hand = r_elbow + forearm * direction(-pose["r_arm"] + 0.3)
    knee_bend = 0.9 * crouch
    l_knee = hip + thigh * direction(np.pi + pose["l_leg"] - knee_bend)
    l_foot = l_knee + shin * direction(np.pi + pose["l_leg"] + knee_bend)
    r_knee = hip + thigh * direction(np.pi + pose["r_leg"] - knee_bend)
    r_foot = r_knee + shin * direction(np.pi + pose["r_leg"] + knee_bend)
    joints = np.stack([hip, neck, l_elbow, l_hand, r_elbow, r_hand, l_knee, l_foot, r_knee, r_foot], 1)
    # whole-body rotation about the body centre (mid torso)
    centre = hip + np.array([0.0, -0.5 * torso])
    c, s = np.cos(pose["theta"])[:, None], np.sin(pose["theta"])[:, None]
    rel = joints - centre[:, None]
    rotated = np.stack([c * rel[..., 0] - s * rel[..., 1], s * rel[..., 0] + c * rel[..., 1]], -1)
    return rotated + centre[:, None]  # (T, J, 2)


def _figure_alpha(joints_px: np.ndarray, head_centre: np.ndarray, head_radius: float, width: float,
                  size: int) -> np.ndarray:
    """Coverage (T, H, W) of thick limb segments and a head disc, 1 px soft edges.

    Evaluated frame by frame inside the figure's bounding box only.
    """
    T = joints_px.shape[0]
    alpha = np.zeros((T, size, size), np.float32)
    margin = width + head_radius + 2
    a_all = joints_px[:, [s[0] for s in _SEGMENTS]].astype(np.float32)  # (T, S, 2)
    b_all = joints_px[:, [s[1] for s in _SEGMENTS]].astype(np.float32)
    grid = np.arange(size, dtype=np.float32) + 0.5
    for f in range(T):
        points = np.concatenate([joints_px[f], head_centre[f:f + 1]])
        x0, y0 = np.floor(points.min(0) - margin).astype(int).clip(0, size)
        x1, y1 = np.ceil(points.max(0) + margin).astype(int).clip(0, size)
        if x1 <= x0 or y1 <= y0:
            continue
        px = np.tile(grid[x0:x1], y1 - y0)[None]  # (1, P)
        py = np.repeat(grid[y0:y1], x1 - x0)[None]
        ax, ay = a_all[f, :, 0:1], a_all[f, :, 1:2]  # (S, 1)
        abx, aby = b_all[f, :, 0:1] - ax, b_all[f, :, 1:2] - ay
        inv = 1.0 / np.maximum(abx * abx + aby * aby, 1e-6)
        apx, apy = px - ax, py - ay  # (S, P)
        h = np.clip((apx * abx + apy * aby) * inv, 0.0, 1.0)
        dx, dy = apx - h * abx, apy - h * aby
        limbs = np.sqrt((dx * dx + dy * dy).min(0))  # (P,)
        head = np.sqrt((px[0] - head_centre[f, 0]) ** 2 + (py[0] - head_centre[f, 1]) ** 2) - head_radius
        coverage = np.clip(width - np.minimum(limbs, head + width) + 0.5, 0, 1)
        alpha[f, y0:y1, x0:x1] = coverage.reshape(y1 - y0, x1 - x0)
    return alpha


def render_clip(label: int, rng: np.random.Generator, num_frames: int, size: int) -> np.ndarray:
    """Renders one clip of class ``label``: uint8 ``(T, H, W, 3)``."""
    T, H = num_frames, size
    t = (np.arange(T) + 0.5) / T
    pose = _pose(label, rng, t)
    proportions = np.array([1.0, 0.45, 0.42, 0.55, 0.55]) * rng.uniform(0.85, 1.15, 5)
    joints = _joints(pose, proportions)  # (T, J, 2) body units

    # place the figure: scale (pixels per body unit), centre, slow camera drift
    scale = H * rng.uniform(0.16, 0.22)
    centre = H * (0.5 + rng.uniform(-0.12, 0.12, 2))
    drift = H * rng.uniform(-0.08, 0.08, 2)
    camera = centre[None] + drift[None] * (t[:, None] - 0.5)  # (T, 2)
    joints_px = joints * scale + camera[:, None] + np.array([0.0, 0.5 * scale])

    ys, xs = np.mgrid[0:H, 0:H].astype(np.float32) + 0.5  # (H, W)

    # background: two oriented gratings moving with the camera drift, over a base colour.
    # sin(base + shift_t) = sin(base) cos(shift_t) + cos(base) sin(shift_t): one sin per pixel.
    palette = rng.uniform(0.15, 0.85, (3, 3)).astype(np.float32)
    # (T, H, W, 3) = base colour + sum_k (0.3 + 0.3 wave_k) (palette_k - base): a small matrix product.
    waves = [np.ones((T, H, H), np.float32)]
    for k in range(2):
        angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(2, 6) / H, rng.uniform(0, 2 * np.pi)
        kx, ky = 2 * np.pi * freq * np.cos(angle), 2 * np.pi * freq * np.sin(angle)
        base = (kx * xs + ky * ys + phase).astype(np.float32)  # (H, W)
        shift = (-(kx * drift[0] + ky * drift[1]) * (t - 0.5)).astype(np.float32)  # (T,)
        wave = np.sin(base)[None] * np.cos(shift)[:, None, None] + np.cos(base)[None] * np.sin(shift)[:, None, None]
        waves.append(0.3 + 0.3 * wave)
    mix = np.stack([palette[2], palette[0] - palette[2], palette[1] - palette[2]])  # (3 waves, 3 colours)
    background = np.stack(waves, -1) @ mix  # (T, H, W, 3)

    # the figure
    width = scale * rng.uniform(0.10, 0.15)
    head_centre = joints_px[:, 1] + (joints_px[:, 1] - joints_px[:, 0]) / max(proportions[0], 1e-6) * 0.32
    alpha = _figure_alpha(joints_px, head_centre, scale * 0.2, width, H)[..., None]  # (T, H, W, 1)
    colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
    colour[rng.integers(3)] = rng.uniform(0.85, 1.0)  # vivid
    frames = background + alpha * (colour - background)

    # distractor ball on a random straight path
    start, end = H * rng.uniform(0.05, 0.95, 2), H * rng.uniform(0.05, 0.95, 2)
    ball = (start[None] + (end - start)[None] * t[:, None]).astype(np.float32)  # (T, 2)
    radius = H * rng.uniform(0.03, 0.06)
    axis = np.arange(H, dtype=np.float32) + 0.5
    dx2 = (axis[None] - ball[:, 0:1]) ** 2  # (T, W), separable distance
    dy2 = (axis[None] - ball[:, 1:2]) ** 2  # (T, H)
    distance = np.sqrt(dy2[:, :, None] + dx2[:, None, :])  # (T, H, W)
    ball_alpha = np.clip(radius + 0.5 - distance, 0, 1)[..., None]
    ball_colour = rng.uniform(0, 1, 3).astype(np.float32)
    frames += ball_alpha * (ball_colour - frames)

    noise = rng.random(frames.shape, dtype=np.float32)  # uniform: ~5x cheaper than normal draws
    frames += (noise - np.float32(0.5)) * np.float32(0.1)  # std 0.029
    np.clip(frames, 0, 1, out=frames)
    frames *= 255
    frames += 0.5
    return frames.astype(np.uint8)


def clip_digest(clip: np.ndarray) -> str:
    """A short SHA-256 of a clip's bytes (for determinism checks)."""
    return hashlib.sha256(np.ascontiguousarray(clip).tobytes()).hexdigest()[:16]


def write_split(out: os.PathLike, split: str = "train", *, count: Optional[int] = None, fps: int = 8,
                overwrite: bool = False, **options) -> Path:
    """Writes a split as mp4 files plus ``<split>.csv`` in the ``VideoCSV`` format.

    Returns the CSV path. Files are ``OUT/<split>/<index>.mp4``; the CSV's
    ``FileName`` is relative to ``OUT``. Several splits share one folder. A folder holding
    anything else (files this function did not write) is refused, and so is a split already
    written there unless ``overwrite``, which first removes that split's previous clips and CSV.
    """
    out = Path(out)
    check_synth_folder(out, split, overwrite=overwrite)
    dataset = SynthGym(split, length=count, **options)
    (out / split).mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{split}.csv"
    iterator = tqdm(range(len(dataset)), desc=f"writing {split}", unit="clip")
    rows = []
    for index in iterator:
        name = f"{split}/{index:06d}.mp4"
        clip = dataset.render(index)
        write_video(out / name, clip, fps=fps)
        rows.append([name, dataset.classes[dataset.labels[index]], clip.shape[0], dataset.labels[index]])
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["FileName", "Class", "TotalFrames", "ClassEncoded"])
        writer.writerows(rows)
    os.replace(tmp, csv_path)
    logger.info("wrote %d clips and %s", len(rows), csv_path)
    return csv_path


_CLIP_NAME = re.compile(r"\d{6}\.mp4")
_CSV_HEADER = "FileName,Class,TotalFrames,ClassEncoded"


def _own_entries(out: Path) -> Tuple[List[str], Dict[str, int]]:
    """The entries of ``out`` that :func:`write_split` did not write, and the splits it wrote there
    (split -> clips): ``<split>/`` folders of ``NNNNNN.mp4`` files and ``<split>.csv`` files in its
    format whose rows name ``<split>/...``."""
    foreign, written = [], {}
    for entry in sorted(out.iterdir()):
        split, suffix = (entry.name[:-len(".csv.tmp")], ".csv.tmp") if entry.name.endswith(".csv.tmp") \
            else (entry.stem, entry.suffix)
        if entry.is_dir() and entry.name in SPLITS:
            clips = list(entry.iterdir())
            if all(c.is_file() and _CLIP_NAME.fullmatch(c.name) for c in clips):
                if clips:  # an empty folder of a split is no previous output
                    written[entry.name] = len(clips)
                continue
            foreign += [f"{entry.name}/{c.name}" for c in clips if not _CLIP_NAME.fullmatch(c.name)][:3]
        elif entry.is_file() and split in SPLITS and suffix in (".csv", ".csv.tmp"):
            with open(entry, newline="") as f:
                lines = f.read(1 << 16).splitlines()
            if lines and lines[0].strip() == _CSV_HEADER and all(
                    line.startswith(f"{split}/") for line in lines[1:] if line.strip()):
                written.setdefault(split, 0)
                continue
            foreign.append(entry.name)
        else:
            foreign.append(entry.name + ("/" if entry.is_dir() else ""))
    return foreign, written


def check_synth_folder(out: Path, split: str, *, overwrite: bool = False) -> None:
    """Refuses a folder holding files :func:`write_split` did not write, and a split already
    written there unless ``overwrite`` (whose previous clips and CSV are then removed)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; synth write needs a folder (new, or one it wrote before)")
    if not out.exists():
        return
    foreign, written = _own_entries(out)
    if foreign:
        raise ConfigError(f"{out} holds files synth write did not write ({', '.join(foreign[:4])}"
                          f"{', ...' if len(foreign) > 4 else ''}); write SynthGym into a new or empty folder "
                          f"(--overwrite replaces only a split synth wrote)")
    if split in written:
        if not overwrite:
            raise ConfigError(f"{out} already holds the SynthGym {split!r} split ({written[split]} clips); pass "
                              f"--overwrite to write it again, or choose another folder")
        for clip in (out / split).glob("*.mp4") if (out / split).is_dir() else []:
            clip.unlink()
        for name in (f"{split}.csv", f"{split}.csv.tmp"):
            (out / name).unlink(missing_ok=True)
        logger.warning("--overwrite: removed the previous %r split of %s", split, out)


def _number(kind: type, low: float, what: str = ""):
    """An argparse ``type``: a ``kind`` (int or float) >= ``low``, refused in one line otherwise."""
    expected = f"{'an integer' if kind is int else 'a number'} >= {low}{what}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not low <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    parse.__name__ = expected
    return parse


#: The class counts SynthGym renders: its first 1, 2, 3 or 4 groups.
CLASS_COUNTS = tuple(sum(len(GROUPS[g]) for g in GROUP_NAMES[: i + 1]) for i in range(len(GROUP_NAMES)))


#: The shortest clip :class:`SynthGym` renders (it needs 4 frames to show a move).
MIN_FRAMES = 4


def _config_problems(config) -> List[str]:
    d, problems = config.data, []
    if d.num_classes not in CLASS_COUNTS:
        problems.append(f"data.num_classes={d.num_classes} does not fit SynthGym, whose generator renders "
                        f"{len(CLASS_COUNTS)} fixed groups of classes: use one of {', '.join(map(str, CLASS_COUNTS))}")
    if d.num_frames < MIN_FRAMES:
        problems.append(f"data.num_frames={d.num_frames} is too short for SynthGym (a move needs at least "
                        f"{MIN_FRAMES} frames)")
    return problems


def _from_config(config, split: str, *, train: bool, classes, transform) -> SynthGym:
    d = config.data
    sizes = {"train": d.synth_train, "val": d.synth_val, "test": d.synth_test}
    if split not in sizes:
        raise ConfigError(f"SynthGym has splits {sorted(sizes)}, got {split!r}")
    pretrain = d.synth_task == "pretrain"  # disjoint clips, coarse (group) labels
    return SynthGym(f"pretrain_{split}" if pretrain else split, size=d.synth_size, num_classes=d.num_classes,
                    seed=d.seed, length=sizes[split], long_tail=d.synth_long_tail,
                    labels="coarse" if pretrain else "fine", num_frames=d.num_frames, transform=transform)


register_dataset("synthgym", _from_config, check=_config_problems, splits=("train", "val", "test"),
                 feature_keys=("data.num_classes", "data.synth_train", "data.synth_val", "data.synth_test",
                               "data.synth_size", "data.synth_long_tail", "data.synth_task", "data.seed"),
                 description="SynthGym, rendered on the fly: 4-16 fine-grained classes, no download")


def build_parser(prog: str = "python -m taggnn.data.synthgym",
                 parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """The ``write`` command's parser (also ``taggnn synth``, which passes its own sub-parser)."""
    if parser is None:
        parser = argparse.ArgumentParser(prog=prog, description="Write SynthGym clips as mp4 files + a VideoCSV file.")
    sub = parser.add_subparsers(dest="synth_command", required=True)
    write = sub.add_parser("write", help="write a split to disk")
    write.add_argument("out", type=Path)
    write.add_argument("--split", choices=sorted(SPLITS), default="train")
    write.add_argument("--count", type=_number(int, 1), default=None, help="clips (default: the split's size)")
    write.add_argument("--num-frames", type=_number(int, 4, " (a move needs 4 frames)"), default=16)
    write.add_argument("--size", type=_number(int, 16, " pixels"), default=64, help="frame height and width")
    write.add_argument("--num-classes", type=int, choices=CLASS_COUNTS, default=16,
                       help="the first 1-4 groups of 4 classes")
    write.add_argument("--seed", type=_number(int, 0), default=0)
    write.add_argument("--long-tail", type=_number(float, 1, " (an imbalance ratio)"), default=None)
    write.add_argument("--fps", type=_number(int, 1), default=8)
    write.add_argument("--overwrite", action="store_true",
                       help="write a split again that this command wrote in OUT before (its clips are replaced); "
                            "a folder holding other files is always refused")
    return parser


def run(args: argparse.Namespace) -> None:
    """Runs a parsed ``write`` command (its values are checked by :func:`build_parser`'s types;
    a clip that would not fit in the machine's memory is refused here, with its size)."""
    clip_bytes = 4 * args.num_frames * args.size ** 2 * 3  # one clip as float32 while it is rendered
    available = memory.machine_memory()
    if clip_bytes > available:
        raise ConfigError(f"one clip of --num-frames {args.num_frames} x --size {args.size} x {args.size} x 3 needs "
                          f"at least {memory.format_bytes(clip_bytes)} to render, more than the "
                          f"{memory.format_bytes(available)} of memory of this machine; lower --num-frames or --size")
    write_split(args.out, args.split, count=args.count, fps=args.fps, num_frames=args.num_frames,
                size=args.size, num_classes=args.num_classes, seed=args.seed, long_tail=args.long_tail,
                overwrite=args.overwrite)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m taggnn.data.synthgym write OUT --split train [--count N]``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run(args)
    except ConfigError as error:  # one line, like argparse's own errors
        parser.exit(2, f"{parser.prog} write: error: {error}\n")


if __name__ == "__main__":
    main()
