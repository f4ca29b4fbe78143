"""Video datasets in their official formats: FineGym, HAA500, CSV and folder trees.

Every dataset is a :class:`torch.utils.data.Dataset` of ``(clip, label)``
with ``.classes`` (names, index = label) and ``.samples`` (``(path, label)``
pairs). Clips are decoded with :func:`~taggnn.data.load_clip` and passed to
``transform`` (uint8 ``(T, H, W, 3)`` in; the presets of
:mod:`taggnn.data.transforms` give float ``(3, T, H, W)``).

Bad data follows ``on_error``: ``"raise"`` (default) stops with an error
that names the file; ``"skip"`` logs the file and cause, counts it in
``.failures`` and returns a :class:`SkippedClip` in place of ``(clip, label)``:
the clip drops out *with its label* (:func:`collate_clips` removes it from the
batch and reports its path), so no clip is ever scored under another clip's
label. Clips named by an
annotation but missing on disk are reported at construction (how many and
the first few): ``"raise"`` raises, ``"skip"`` drops them with a warning.
Malformed annotation lines raise with the file name and line number; annotation
files are UTF-8 (a byte-order mark is fine; other encodings raise with the line of
the first byte that is not UTF-8). A split without clips is an error naming its
file or folder. Hidden (dot) folders and system folders (``__MACOSX``, ...) are
never classes, and hidden files never clips.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset

from ..errors import AnnotationError, ConfigError, VideoError
from .clips import ClipBatch, SkippedClip, collate_clips  # noqa: F401  (re-exported)
from .constants import ON_ERROR
from .registry import register_dataset, video_options
from .seeding import item_seed, seeded_draws
from .video import load_clip, load_views

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")


class VideoClipDataset(Dataset):
    """Base class: a list of ``(path, label)`` samples and class names.

    Args:
        samples: ``(path, label)`` pairs.
        classes: Class names, index = label.
        num_frames (int): Frames per clip.
        sampling (str): ``"uniform"`` (paper), ``"random"`` (training jitter)
            or ``"linspace"`` (authors).
        transform (callable, optional): Applied to the uint8 ``(T, H, W, 3)`` clip.
        on_error (str): ``"raise"`` or ``"skip"``.
        seed (int, optional): Makes every random draw of an item (``"random"`` frame offsets,
            the transform's crop and flip) a function of (seed, epoch, index); see
            :meth:`set_epoch` and :mod:`taggnn.data.seeding`.
        decode_threads (int, optional): PyAV decoding threads per clip (0: FFmpeg's
            automatic choice). (default: ``0``)
        decoder (str, optional): ``"pyav"`` or ``"torchcodec"`` (see
            :mod:`taggnn.data.decoders`). (default: ``"pyav"``)
    """

    def __init__(self, samples: Sequence[Tuple[str, int]], classes: Sequence[str], *, num_frames: int,
                 sampling: str = "uniform", transform: Optional[Callable] = None, on_error: str = "raise",
                 seed: Optional[int] = None, check_files: bool = True, decode_threads: int = 0,
                 decoder: str = "pyav"):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.classes: List[str] = list(classes)
        self.num_frames = num_frames
        self.sampling = sampling
        self.transform = transform
        self.on_error = on_error
        self.seed = seed
        self.decode_threads = decode_threads
        self.decoder = decoder
        self.epoch = 0
        self.failures: List[Tuple[str, str]] = []
        self.frame_counts: Dict[str, int] = {}  # known frame counts by path (e.g. a CSV's TotalFrames)
        samples = list(samples)
        if check_files:
            samples = self._drop_missing(samples)
        if not samples:
            raise AnnotationError(self._source(), 0, "this split has no clips (training or testing on an empty "
                                                    "split gives no result); add clips or fix the path")
        self.samples: List[Tuple[str, int]] = samples

    def _source(self) -> str:
        """The annotation file or folder the samples come from (for error messages)."""
        return str(getattr(self, "source", None) or type(self).__name__)

    @property
    def targets(self) -> List[int]:
        return [label for _, label in self.samples]

    @property
    def class_to_idx(self) -> Dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def _drop_missing(self, samples):
        missing = [path for path, _ in samples if not os.path.isfile(path)]
        if not missing:
            return samples
        first = ", ".join(missing[:5])
        message = f"{type(self).__name__}: {len(missing)} of {len(samples)} clips named by the annotations " \
                  f"are missing on disk (first: {first})"
        if self.on_error == "raise":
            raise FileNotFoundError(message + "; pass on_error='skip' to drop them")
        logger.warning("%s; dropping them", message)
        missing_set = set(missing)
        return [s for s in samples if s[0] not in missing_set]

    def set_epoch(self, epoch: int) -> None:
        """Changes the random sampling draw (with ``seed`` set) for a new epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def _generator(self, index: int) -> Optional[torch.Generator]:
        if self.seed is None or self.sampling != "random":
            return None
        return torch.Generator().manual_seed(item_seed(self.seed, self.epoch, index))

    @property
    def stochastic(self) -> bool:
        """Whether a wrapper must seed this dataset's draws (:class:`~taggnn.data.EpochSeeded`):
        not when it was given ``seed``, as it then seeds its own (see :meth:`__getitem__`)."""
        return self.seed is None

    def load(self, index: int) -> torch.Tensor:
        """The raw uint8 clip ``(T, H, W, 3)`` of sample ``index``."""
        path, _ = self.samples[index]
        return load_clip(path, self.num_frames, sampling=self.sampling, generator=self._generator(index),
                         total_frames=self.frame_counts.get(path), threads=self.decode_threads,
                         decoder=self.decoder)

    def _read(self, index: int, load: Callable[[str], torch.Tensor]):
        """``(raw clip, label)`` of sample ``index`` read by ``load(path)``, or, with
        ``on_error="skip"``, a :class:`SkippedClip` (never another clip in its place)."""
        path, label = self.samples[index]
        try:
            return load(path), label
        except VideoError as error:
            if self.on_error == "raise":
                raise
            self.failures.append((path, error.cause))
            logger.warning("skipping unreadable clip %s (%s)", path, error.cause)
            return SkippedClip(path, error.cause)

    def load_views(self, index: int, num_views: int):
        """The raw uint8 clips ``(num_views, T, H, W, 3)`` of the ``num_views`` temporal views of
        sample ``index`` (see :mod:`taggnn.data.views`) and its label, or a :class:`SkippedClip`.

        The views are placed over the frames that decode, as single-view sampling does: a
        ``TotalFrames`` (or header) that over-counts resamples every view, with a warning."""
        def load(path: str) -> torch.Tensor:
            return load_views(path, self.num_frames, num_views, total_frames=self.frame_counts.get(path),
                              threads=self.decode_threads, decoder=self.decoder)

        return self._read(index, load)

    def load_view(self, index: int, view: int, num_views: int):
        """The raw uint8 clip of temporal view ``view`` of ``num_views`` (see
        :mod:`taggnn.data.views`) and its label, or a :class:`SkippedClip`."""
        if not 0 <= view < num_views:
            raise ValueError(f"view must be in [0, {num_views}), got {view}")
        sample = self.load_views(index, num_views)
        if isinstance(sample, SkippedClip):
            return sample
        clips, label = sample
        return clips[view], label

    def __getitem__(self, index: int):
        """``(clip, label)``; with ``on_error="skip"``, a :class:`SkippedClip` for an
        unreadable clip (never another clip in its place).

        With ``seed``, every random draw of the item (the frame offsets of ``"random"`` sampling,
        the transform's crop and flip) is a function of (seed, epoch, index)
        (:func:`~taggnn.data.seeding.seeded_draws`), and torch's random state is left as it was."""
        if self.seed is None:
            return self._item(index)
        with seeded_draws(self.seed, self.epoch, index):
            return self._item(index)

    def _item(self, index: int):
        sample = self._read(index, lambda path: self.load(index))
        if isinstance(sample, SkippedClip) or self.transform is None:
            return sample
        clip, label = sample
        return self.transform(clip), label

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(samples={len(self)}, classes={len(self.classes)}, "
                f"num_frames={self.num_frames}, sampling={self.sampling!r})")


def read_annotation_text(path: PathLike) -> str:
    """The text of an annotation file, read as UTF-8 (a byte-order mark is dropped).

    Raises:
        AnnotationError: The file is not UTF-8 (e.g. Latin-1 or Windows-1252 text): names the
            line of the first byte that is not, since guessing another encoding could misspell
            class names silently.
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise AnnotationError(path, line, f"the file is not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                                          f"{error.start}); annotation files must be UTF-8: re-save it as UTF-8, e.g. "
                                          f"iconv -f latin1 -t utf-8") from None
    return text


def _lines(path: PathLike) -> List[str]:
    return read_annotation_text(path).splitlines()


# --------------------------------------------------------------------------
# FineGym


_CATEGORY_LINE = re.compile(r"^Clabel:\s*(\d+);\s*set:\s*(\d+);\s*Glabel:\s*(\d+);\s*(.+)$")


def read_finegym_categories(path: PathLike) -> List[str]:
    """Class names from ``gym99_categories.txt`` / ``gym288_categories.txt``.

    Lines look like ``Clabel: 0; set: 1; Glabel: 1; (VT) round-off, ...``;
    the name is the text after the event code ``(VT)``.
    """
    names: Dict[int, str] = {}
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        match = _CATEGORY_LINE.match(line.strip())
        if not match:
            raise AnnotationError(path, number, "expected 'Clabel: <int>; set: <int>; Glabel: <int>; <name>'", line)
        label = int(match.group(1))
        if label in names:
            raise AnnotationError(path, number, f"class label {label} appears twice", line)
        names[label] = re.sub(r"^\([^)]*\)\s*", "", match.group(4)).strip()
    if sorted(names) != list(range(len(names))):
        raise AnnotationError(path, 0, f"class labels must be 0..{len(names) - 1} without gaps")
    return [names[i] for i in range(len(names))]


def read_split_file(path: PathLike, num_classes: Optional[int] = None) -> List[Tuple[str, int]]:
    """``<id> <label>`` lines of a FineGym split file."""
    entries = []
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise AnnotationError(path, number, "expected '<clip id> <integer label>'", line)
        label = int(parts[1])
        if label < 0 or (num_classes is not None and label >= num_classes):
            raise AnnotationError(path, number, f"label {label} outside 0..{(num_classes or 1) - 1}", line)
        entries.append((parts[0], label))
    return entries


class FineGym(VideoClipDataset):
    """FineGym element-level clips, Gym99 or Gym288, in the official layout.

    ``root/annotations/`` holds the files as published
    (``gym99_train_element_v1.0.txt`` / ``_v1.1.txt``, ``gym99_val_element.txt``,
    ``gym99_categories.txt``, gym288 likewise) and ``root/subactions/<id>.mp4``
    the trimmed clips (``datasets/finegym/prepare.py`` makes them).

    FineGym publishes no test split besides ``val``, and selecting a model on
    the split one reports inflates the result (the authors' Gym99 "best"
    checkpoint did). ``holdout`` sets aside a fraction of every training class
    (seeded, stable) as split ``"holdout"`` for model selection; ``"train"``
    then excludes it.

    Args:
        root: Dataset root.
        split (str): ``"train"``, ``"holdout"`` or ``"val"`` (``"test"`` is an
            alias of ``"val"``).
        num_classes (int): 99 or 288.
        version (str): ``"v1.0"`` or ``"v1.1"`` (training split only).
        num_frames (int): Frames per clip. (default: 64, as in the paper)
        holdout (float): Fraction of each training class held out. (default: 0)
        holdout_seed (int): Seed of the held-out choice (a data seed, not the
            training seed). (default: 0)
        holdout_min_clips (int): Classes with fewer training clips keep them
            all (Gym288's tail would otherwise lose clips it cannot spare).
            (default: 10)
    """

    def __init__(self, root: PathLike, split: str = "train", *, num_classes: int = 99, version: str = "v1.1",
                 num_frames: int = 64, holdout: float = 0.0, holdout_seed: int = 0, holdout_min_clips: int = 10,
                 **kwargs):
        if num_classes not in (99, 288):
            raise ValueError(f"num_classes must be 99 or 288, got {num_classes!r}")
        if version not in ("v1.0", "v1.1"):
            raise ValueError(f"version must be 'v1.0' or 'v1.1', got {version!r}")
        if split not in ("train", "holdout", "val", "test"):
            raise ValueError(f"split must be 'train', 'holdout', 'val' or 'test', got {split!r}")
        if not 0.0 <= holdout < 1.0:
            raise ValueError(f"holdout must be a fraction in [0, 1), got {holdout!r}")
        if split == "holdout" and holdout == 0.0:
            raise ValueError("split 'holdout' needs holdout > 0 (e.g. holdout=0.1)")
        root = Path(root)
        annotations = root / "annotations"
        prefix = f"gym{num_classes}"
        from_train = split in ("train", "holdout")
        split_file = annotations / (f"{prefix}_train_element_{version}.txt" if from_train
                                    else f"{prefix}_val_element.txt")
        categories = annotations / f"{prefix}_categories.txt"
        for required in (split_file, categories):
            if not required.is_file():
                raise FileNotFoundError(f"FineGym: {required} not found (see datasets/finegym/README.md)")
        classes = read_finegym_categories(categories)
        entries = read_split_file(split_file, len(classes))
        if from_train and holdout > 0:
            held = _held_out(entries, holdout, holdout_seed, holdout_min_clips)
            entries = [e for i, e in enumerate(entries) if (i in held) == (split == "holdout")]
        samples = [(str(root / "subactions" / f"{clip_id}.mp4"), label) for clip_id, label in entries]
        self.root, self.split, self.version = root, split, version
        self.source = f"{split_file} (split {split!r})"
        super().__init__(samples, classes, num_frames=num_frames, **kwargs)


def _held_out(entries: Sequence[Tuple[str, int]], fraction: float, seed: int, min_clips: int = 10) -> set:
    """Indices of ``round(fraction * n_c)`` entries (at least one) of every class c with
    ``n_c >= min_clips`` training clips; smaller classes hold out nothing."""
    by_class: Dict[int, List[int]] = {}
    for index, (_, label) in enumerate(entries):
        by_class.setdefault(label, []).append(index)
    generator = torch.Generator().manual_seed(seed)
    held = set()
    for label in sorted(by_class):
        indices = by_class[label]
        if len(indices) < max(2, min_clips):
            continue
        count = min(len(indices) - 1, max(1, int(round(fraction * len(indices)))))
        order = torch.randperm(len(indices), generator=generator)[:count].tolist()
        held.update(indices[i] for i in order)
    return held


# --------------------------------------------------------------------------
# HAA500

HAA500_SPLITS = {"train": range(0, 16), "val": range(16, 17), "test": range(17, 20)}


class HAA500(VideoClipDataset):
    """HAA500: ``root/video/<class>/<class>_<NNN>.mp4``, 20 clips per class.

    Official split by ``NNN``: 000-015 train, 016 val, 017-019 test. Labels
    are indices into Python's ``sorted()`` of the class folder names (names
    keep their spaces, hyphens and capitals).
    """

    def __init__(self, root: PathLike, split: str = "train", *, num_frames: int = 32, **kwargs):
        if split not in HAA500_SPLITS:
            raise ValueError(f"split must be one of {sorted(HAA500_SPLITS)}, got {split!r}")
        video_root = Path(root) / "video"
        if not video_root.is_dir():
            raise FileNotFoundError(f"HAA500: {video_root} not found (see datasets/haa500/README.md)")
        classes = class_folders(video_root)
        if not classes:
            raise FileNotFoundError(f"HAA500: no class folders under {video_root}")
        wanted = set(HAA500_SPLITS[split])
        samples = []
        pattern = re.compile(r"^(?P<name>.+)_(?P<number>\d{3})\.\w+$")
        for label, name in enumerate(classes):
            for file in sorted((video_root / name).iterdir()):
                match = pattern.match(file.name)
                if not match or match.group("name") != name or file.suffix.lower() not in VIDEO_EXTENSIONS:
                    logger.debug("HAA500: ignoring %s (not <class>_<NNN>.mp4)", file)
                    continue
                if int(match.group("number")) in wanted:
                    samples.append((str(file), label))
        self.root, self.split = Path(root), split
        self.source = f"{video_root} (split {split!r}: clips <class>_{min(wanted):03d}..{max(wanted):03d})"
        super().__init__(samples, classes, num_frames=num_frames, **kwargs)


# --------------------------------------------------------------------------
# Bring your own data


#: Folders that operating systems and tools create next to the data; never classes.
SYSTEM_FOLDERS = frozenset({"__MACOSX", "$RECYCLE.BIN", "System Volume Information", "@eaDir", "lost+found",
                            "__pycache__"})


def _ignored(name: str) -> bool:
    """Hidden (dot) files and folders (``.ipynb_checkpoints``, macOS ``._clip.mp4``) and system folders."""
    return name.startswith(".") or name in SYSTEM_FOLDERS


def class_folders(root: PathLike) -> List[str]:
    """The sorted names of the class folders under ``root``: every folder except hidden (dot)
    folders and system folders (:data:`SYSTEM_FOLDERS`), which are logged and left out."""
    folders = [p.name for p in Path(root).iterdir() if p.is_dir()]
    ignored = sorted(name for name in folders if _ignored(name))
    if ignored:
        logger.info("%s: ignoring %d hidden or system folder(s) (not classes): %s", root, len(ignored),
                    ", ".join(ignored[:5]))
    return sorted(name for name in folders if not _ignored(name))


def _label_of(name: str, classes: Sequence[str], where: str) -> int:
    try:
        return list(classes).index(name)
    except ValueError:
        raise AnnotationError(where, 0, f"class {name!r} is not one of the {len(classes)} training classes "
                                        f"(a class present only outside the training split cannot be scored)") from None


CSV_LAYOUTS = ("flat", "authors")


class VideoCSV(VideoClipDataset):
    """Clips listed in a CSV with the header ``FileName,Class,TotalFrames,ClassEncoded``
    (the authors' format).

    The label is ``ClassEncoded``. A positive integer ``TotalFrames`` is taken as the clip's
    frame count (frame indices are sampled over it, as the authors' code does) instead of
    reading the count from the file.

    Args:
        csv_path: The split file.
        video_root: The videos' folder: ``<video_root>/<FileName>`` (``layout="flat"``) or
            ``<video_root>/<Class>/<FileName>`` (``layout="authors"``, their split CSVs).
        layout (str, optional): ``"flat"`` or ``"authors"``. (default: ``"flat"``)
        classes (sequence of str, optional): The class names of the training split (index =
            label). When given, every row's ``ClassEncoded`` must name the same class there,
            so that two files cannot number their classes differently; by default the
            names come from this file.
    """

    COLUMNS = ("FileName", "Class", "TotalFrames", "ClassEncoded")

    def __init__(self, csv_path: PathLike, video_root: PathLike, *, num_frames: int = 32,
                 classes: Optional[Sequence[str]] = None, layout: str = "flat", **kwargs):
        if layout not in CSV_LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(CSV_LAYOUTS)}, got {layout!r}")
        csv_path, video_root = Path(csv_path), Path(video_root)
        samples, names, counts = [], {}, {}
        reader = csv.reader(io.StringIO(read_annotation_text(csv_path), newline=""))
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:4]] != list(self.COLUMNS):
            raise AnnotationError(csv_path, 1, f"expected the header {','.join(self.COLUMNS)}",
                                  ",".join(header or []))
        for number, row in enumerate(reader, 2):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) < 4:
                raise AnnotationError(csv_path, number, f"expected 4 columns, got {len(row)}", ",".join(row))
            file_name, class_name, total, encoded = (cell.strip() for cell in row[:4])
            if not encoded.isdigit():
                raise AnnotationError(csv_path, number, f"ClassEncoded must be an integer >= 0, got {encoded!r}")
            label = int(encoded)
            if names.setdefault(label, class_name) != class_name:
                raise AnnotationError(csv_path, number, f"label {label} is {names[label]!r} earlier "
                                                        f"and {class_name!r} here")
            if classes is not None:
                if label >= len(classes) or classes[label] != class_name:
                    expected = f"{classes[label]!r}" if label < len(classes) else "no class"
                    raise AnnotationError(
                        csv_path, number,
                        f"ClassEncoded {label} is {class_name!r} here but {expected} in the training split "
                        f"({len(classes)} classes); the files must number their classes alike", ",".join(row))
            path = video_root / class_name / file_name if layout == "authors" else video_root / file_name
            samples.append((str(path), label))
            if total.isdigit() and int(total) > 0:
                counts[str(path)] = int(total)
        if classes is None:
            if sorted(names) != list(range(len(names))):
                missing = sorted(set(range(max(names, default=-1) + 1)) - set(names))
                logger.warning("%s: no clips for class label(s) %s", csv_path, missing[:10])
            classes = [names.get(i, f"class_{i}") for i in range(max(names, default=-1) + 1)]
        self.layout, self.source = layout, csv_path
        super().__init__(samples, classes, num_frames=num_frames, **kwargs)
        self.frame_counts = counts


class VideoFolder(VideoClipDataset):
    """``root/<class>/<video>`` trees; labels follow ``sorted()`` class names.

    Args:
        root: The folder of class folders.
        classes (sequence of str, optional): The class names of the training split (index =
            label). Give them for every other split: a class folder missing there then
            shifts no label, and a folder that names no training class is an error. By
            default the names are the sorted folder names under ``root``.
    """

    def __init__(self, root: PathLike, *, num_frames: int = 32, extensions: Sequence[str] = VIDEO_EXTENSIONS,
                 classes: Optional[Sequence[str]] = None, **kwargs):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"VideoFolder: {root} is not a directory")
        found = class_folders(root)
        classes = found if classes is None else list(classes)
        labels = {name: _label_of(name, classes, str(root / name)) for name in found}
        samples = [
            (str(file), labels[name])
            for name in found
            for file in sorted((root / name).rglob("*"))
            if file.is_file() and file.suffix.lower() in tuple(extensions)
            and not any(_ignored(part) for part in file.relative_to(root / name).parts)
        ]
        if not samples:
            raise FileNotFoundError(f"VideoFolder: no videos ({', '.join(extensions)}) under {root}/<class>/")
        self.source = root
        super().__init__(samples, classes, num_frames=num_frames, **kwargs)


# --------------------------------------------------------------------------
# Registration: how a config builds each dataset and what it checks


FINEGYM_CLASS_COUNTS = (99, 288)  # Gym99 and Gym288 (the annotation files gym99_* / gym288_*)
FINEGYM_VERSIONS = ("v1.0", "v1.1")


def _finegym_problems(config) -> List[str]:
    d, problems = config.data, []
    if d.num_classes not in FINEGYM_CLASS_COUNTS:
        problems.append(f"data.num_classes={d.num_classes} does not fit FineGym: use 99 (Gym99) or 288 (Gym288)")
    if d.version not in FINEGYM_VERSIONS:
        problems.append(f"data.version={d.version!r} is not a FineGym split version ({', '.join(FINEGYM_VERSIONS)})")
    for key in ("val_split", "test_split"):
        if getattr(d, key) == "holdout" and d.holdout == 0:
            problems.append(f"data.{key}='holdout' needs data.holdout > 0 (e.g. --set data.holdout=0.1)")
    return problems


def _build_finegym(config, split: str, *, train: bool, classes, transform) -> FineGym:
    d = config.data
    return FineGym(d.root, split, num_classes=d.num_classes, version=d.version, holdout=d.holdout,
                   holdout_seed=d.seed, holdout_min_clips=d.holdout_min_clips, transform=transform,
                   **video_options(config, train=train))


def _build_haa500(config, split: str, *, train: bool, classes, transform) -> HAA500:
    return HAA500(config.data.root, split, transform=transform, **video_options(config, train=train))


def _build_csv(config, split: str, *, train: bool, classes, transform) -> VideoCSV:
    d = config.data
    options = video_options(config, train=train)
    csv_path = {"train": d.train_csv, "val": d.val_csv, "test": d.test_csv}.get(split)
    if csv_path is None:
        raise ConfigError(f"data.{split}_csv must be set for dataset 'csv'")
    return VideoCSV(csv_path, d.root, classes=classes, layout=d.csv_layout, transform=transform, **options)


def _build_folder(config, split: str, *, train: bool, classes, transform) -> VideoFolder:
    options = video_options(config, train=train)
    return VideoFolder(os.path.join(config.data.root, split), classes=classes, transform=transform, **options)


register_dataset("finegym", _build_finegym, check=_finegym_problems, splits=("train", "holdout", "val", "test"),
                 feature_keys=("data.num_classes", "data.version", "data.holdout", "data.holdout_min_clips",
                               "data.seed"),
                 description="FineGym Gym99 / Gym288 element clips, official annotations (data.root)")
register_dataset("haa500", _build_haa500, splits=tuple(HAA500_SPLITS),
                 description="HAA500, root/video/<class>/<class>_<NNN>.mp4, official split (data.root)")
register_dataset("csv", _build_csv, splits=("train", "val", "test"),
                 feature_keys=("data.train_csv", "data.val_csv", "data.test_csv", "data.csv_layout"),
                 description="clips listed in CSV files, the authors' format (data.*_csv, data.root)")
register_dataset("folder", _build_folder, description="data.root/<split>/<class>/<video> trees")

