"""Cached backbone features for head-only studies.

``taggnn features --config C [--checkpoint X] --out DIR`` runs the backbone once over the
train, validation and test splits (the evaluation transform: no augmentation) and writes
``DIR/<split>.pt``: the token grids ``(N_clips, C, T', H', W')`` (float16 by default), the
labels, the class names and the settings that made them. ``taggnn train --set
data.features=DIR`` then trains the head alone on them, with the same configs, metrics and
checkpoints.

The folder is a checked artefact:

* **One fingerprint.** Every split file and ``info.json`` carry the fingerprint of all that
  determines the features: the SHA-256 of the backbone's weights as used (whether they came
  from ``model.weights``, a ``--checkpoint`` or a seeded random initialisation), the backbone
  name, the data settings, ``model.bn_eps``, the stored dtype and the format version. A split
  is added to a folder only under the same fingerprint, and reading a split whose fingerprint
  differs from the folder's is refused, naming the differing fields.
* **Complete or absent.** A split file is written to a temporary name and renamed into place
  when complete; ``info.json``, the folder's manifest, is rewritten (atomically) after each
  split and lists only complete splits. An interrupted run leaves nothing listed that is not
  whole; its temporary files are removed by the next run.
* **One writer.** A lock file (:class:`~taggnn.utils.lockfile.LockFile`) keeps two
  ``taggnn features`` runs out of one folder; the lock of a process that has ended is taken
  over.
* **Only its own files.** ``--out`` must be a new or empty folder or a features folder: a
  folder holding any file the cache did not write is refused, so no user file is overwritten.
* **Finite values.** NaN or infinity is refused when writing (a float16 overflow names
  ``--float32``).

A config whose settings differ from the recorded ones is refused when training, naming each
field (what the folder has vs what the config says). The files load with
``torch.load(..., weights_only=True)``. Reading and checking the folder (the format, the
fingerprint, :class:`FeatureDataset`) is :mod:`taggnn.data.features`; this module computes and
writes the features.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm import tqdm

from ..data.features import (  # noqa: F401  (the format's names, re-exported)
    _SPLIT_NAME,
    _TEMP_NAME,
    _WEIGHTS_HASH,
    FEATURES_FORMAT,
    FEATURES_VERSION,
    INFO_NAME,
    LOCK_NAME,
    FeatureCacheError,
    FeatureDataset,
    _entries,
    backbone_state_hash,
    check_settings,
    describe_differences,
    feature_settings,
    fingerprint_fields,
    fingerprint_of,
    load_feature_file,
    read_info,
    weights_file_setting,
)
from ..data.registry import feature_keys
from ..errors import ConfigError, VideoError
from ..models.backbones import build_backbone, list_backbones
from ..utils.lockfile import LockFile
from ..utils.outputs import write_atomic, write_text_atomic
from .checkpoint import _is_no_space, load_checkpoint
from .config import Config
from .data import build_dataset, class_names, clip_loader
from .health import non_finite_parameters

logger = logging.getLogger(__name__)

#: The settings that determine cached features, as registered when taggnn was imported (the
#: shared keys, every dataset's own, the backbone's); :func:`~taggnn.data.registry.feature_keys`
#: includes datasets registered later.
FEATURE_KEYS = feature_keys()

__all__ = [
    "FEATURES_VERSION", "FEATURE_KEYS", "FeatureCacheError", "FeatureDataset", "extract_features",
    "feature_settings", "read_info", "check_settings", "load_feature_file", "backbone_state_hash",
]


def _load_backbone(config: Config, checkpoint: Optional[Path]) -> Tuple[nn.Module, str]:
    """The backbone whose features are cached (eval mode, on the CPU) and a description of its source.

    From a checkpoint only the backbone's weights are taken: the backbone is fully convolutional,
    so features at any clip length come from it (the head's positional table is not used).
    """
    m = config.model
    if checkpoint is None:
        with torch.random.fork_rng(devices=[]):  # a random initialisation is reproducible (train.seed)
            torch.manual_seed(config.train.seed)
            backbone = build_backbone(m.backbone, weights=m.weights)
        source = (f"model.weights={m.weights}" if m.weights
                  else f"random initialisation (train.seed={config.train.seed})")
    else:
        state = load_checkpoint(checkpoint)
        saved = state["config"] if isinstance(state["config"], dict) else {}
        saved_model, saved_data = saved.get("model") or {}, saved.get("data") or {}
        if saved_data.get("features"):
            raise ConfigError(f"--checkpoint {checkpoint} is a head trained on cached features "
                              f"(data.features={saved_data['features']}): it holds no backbone to extract features "
                              f"with; give a checkpoint of a model trained on videos")
        name = saved_model.get("backbone")
        if name != m.backbone:
            hint = f"--set model.backbone={name}" if name in list_backbones() else "the run's own config"
            raise ConfigError(f"--checkpoint {checkpoint} holds a {name!r} backbone, but the config says "
                              f"model.backbone={m.backbone!r}; use {hint} (the features must be labelled with "
                              f"the backbone that made them)")
        weights = {key[len("backbone."):]: value for key, value in state["model"].items()
                   if key.startswith("backbone.")}
        bad = non_finite_parameters(weights)
        if bad:
            raise ConfigError(f"--checkpoint {checkpoint}: {len(bad)} backbone weight tensors hold NaN or infinity "
                              f"(first: {', '.join(bad[:3])}); its features would be meaningless")
        backbone = build_backbone(m.backbone)
        try:
            backbone.load_state_dict(weights)
        except RuntimeError as error:
            first = " ".join(str(error).split())[:300]
            raise ConfigError(f"--checkpoint {checkpoint}: its backbone weights do not fit a {m.backbone!r} "
                              f"backbone ({first})") from None
        source = f"checkpoint {checkpoint} (epoch {state.get('epoch', '?')})"
    if m.bn_eps is not None:  # as build_model_from_config does
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eps = m.bn_eps
    return backbone.eval(), source


class _Folder:
    """The state of an ``--out`` folder, examined while holding its lock."""

    def __init__(self, out: Path, fields: Dict[str, Any], fingerprint: str, source: str):
        self.out, self.fields, self.fingerprint = out, fields, fingerprint
        self.info: Optional[Dict[str, Any]] = None
        self.unlisted: Dict[str, Dict[str, Any]] = {}  # split files renamed in but not yet in the manifest
        entries = _entries(out)
        foreign, leftovers, splits = [], [], []
        for entry in entries:
            name = entry.name
            if name == LOCK_NAME or name.startswith((LOCK_NAME + ".", f".{LOCK_NAME}.")):
                continue  # the lock, and the temporary file it is written to
            if _TEMP_NAME.match(name) and entry.is_file():
                leftovers.append(entry)
            elif name == INFO_NAME:
                try:
                    self.info = read_info(out)
                except (FeatureCacheError, OSError) as error:
                    foreign.append(name + (" of an older taggnn" if "older taggnn" in str(error) else ""))
            elif name.endswith(".pt") and entry.is_file():
                splits.append(entry)
            else:
                foreign.append(name + ("/" if entry.is_dir() else ""))
        for entry in splits:
            split = entry.name[:-3]
            if self.info is not None and split in self.info["splits"]:
                continue  # listed: complete, and checked when it was added
            try:
                data = load_feature_file(entry, mmap=True)
            except FeatureCacheError:
                foreign.append(entry.name)
                continue
            self.unlisted[split] = {"fields": data["fields"], "fingerprint": data["fingerprint"],
                                    "clips": len(data["labels"]), "skipped": len(data.get("skipped", [])),
                                    "grid": list(data["features"].shape[2:]),
                                    "channels": int(data["features"].shape[1]),
                                    "backbone_source": data.get("backbone_source", "")}
        if foreign:
            raise FeatureCacheError(
                f"--out {out} holds files taggnn features did not write ({', '.join(foreign[:4])}"
                f"{', ...' if len(foreign) > 4 else ''}); give a new or empty folder, or a folder of cached features")
        for leftover in leftovers:  # of a run that was killed: this process holds the lock
            logger.warning("%s: removing a temporary file left by an interrupted run", leftover)
            leftover.unlink(missing_ok=True)
        recorded = self.info or next(iter(self.unlisted.values()), None)
        if recorded is None:
            return
        for split, entry in self.unlisted.items():
            if entry["fingerprint"] != recorded["fingerprint"]:
                raise ConfigError(
                    f"{out / (split + '.pt')} was made with another backbone or settings than the rest of {out}: "
                    + describe_differences(entry["fields"], recorded["fields"], f"{split}.pt", "folder")
                    + "; remove it, or write the features into another folder")
        if recorded["fingerprint"] != fingerprint:
            differences = describe_differences(recorded["fields"], fields, "folder", "this command")
            if recorded["fields"].get(_WEIGHTS_HASH) != fields.get(_WEIGHTS_HASH):
                differences += (f" (the folder's backbone: {recorded.get('backbone_source') or 'unknown'}; "
                                f"this command's: {source})")
            raise ConfigError(
                f"--out {out} holds features made with another backbone or settings: {differences}; write them "
                f"into another folder (one folder holds the features of one backbone and one set of settings)")

    def complete(self, split: str) -> bool:
        return self.info is not None and split in self.info["splits"] and (self.out / f"{split}.pt").is_file()


def _write_failed(path: Path, error: BaseException, needed: int) -> FeatureCacheError:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if _is_no_space(error) or (free is not None and free < needed):
        cause = "no space left on device" + (f" ({free / 2**20:.0f} MiB free, about {needed / 2**20:.0f} MiB "
                                             f"needed)" if free is not None else "")
    else:
        cause = " ".join(str(error).split())[:200] or type(error).__name__
    return FeatureCacheError(f"could not write {path}: {cause}; nothing half-written was kept (the folder's "
                             f"complete splits are intact): free some space and run taggnn features again")


def _write_info(out: Path, info: Dict[str, Any]) -> None:
    text = json.dumps(info, indent=2)
    try:
        write_text_atomic(out / INFO_NAME, text)
    except Exception as error:
        raise _write_failed(out / INFO_NAME, error, len(text)) from None


@torch.no_grad()
def _extract_split(backbone: nn.Module, loader, split: str, dtype: torch.dtype, device: torch.device,
                   progress: bool) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    features, labels, skipped = [], [], []
    for clips, batch_labels, batch_skipped in tqdm(loader, desc=f"features {split}", unit="batch",
                                                   disable=not progress):
        skipped += batch_skipped
        if clips is None:
            continue
        output = backbone(clips.to(device))  # (B, C, T', H', W')
        if not torch.isfinite(output).all():
            done = sum(len(batch) for batch in labels)
            raise FeatureCacheError(f"the backbone gives NaN or infinity on split {split!r} (a clip among numbers "
                                    f"{done}..{done + len(output) - 1}); its weights are broken: nothing was written "
                                    f"for this split")
        stored = output.to("cpu", dtype)
        if not torch.isfinite(stored).all():
            largest = float(output.abs().max())
            raise FeatureCacheError(
                f"features of split {split!r} reach |x| = {largest:.3g}, beyond the range of {dtype} "
                f"(max {torch.finfo(dtype).max:.6g}): store them as float32 (taggnn features --float32); "
                f"nothing was written for this split")
        features.append(stored)
        labels.append(batch_labels)
    if not features:
        if skipped:
            raise VideoError(skipped[0], f"this and every other clip of split {split!r} ({len(skipped)} in all) "
                                         f"are unreadable (data.on_error=skip skipped them); nothing was written; "
                                         f"check data.root and the videos")
        raise ConfigError(f"split {split!r} holds no clips; nothing was written")
    return torch.cat(features), torch.cat(labels), skipped


def extract_features(config: Config, out: Path, *, checkpoint: Optional[Path] = None,
                     splits: Optional[Sequence[str]] = None, dtype: torch.dtype = torch.float16,
                     device: Optional[torch.device] = None, progress: bool = True) -> Dict[str, Path]:
    """Writes ``out/<split>.pt`` for every split (and the manifest ``out/info.json``); returns
    the paths.

    The backbone is the config's (``model.backbone`` with ``model.weights``; a random
    initialisation is seeded with ``train.seed``), or the backbone of a taggnn ``checkpoint``
    (e.g. a fine-tuned model) at the config's clip size, whatever the clip size it was trained
    at. A split already complete in ``out`` with the same fingerprint is kept as it is
    (skipped, with a log message); ``out`` holding features of another fingerprint, or files
    the cache did not write, is refused.

    Raises:
        ConfigError: ``out`` holds features of another backbone or settings (naming the fields),
            or the checkpoint does not fit the config.
        FeatureCacheError: ``out`` is in use by another run, holds other files, or cannot be
            written (e.g. a full disk); non-finite features.
        VideoError: Every clip of a split is unreadable.
    """
    device = device or torch.device("cpu")
    out = Path(out)
    splits = list(dict.fromkeys(splits or ["train", config.data.val_split, config.data.test_split]))
    for split in splits:
        if not _SPLIT_NAME.match(split):
            raise ConfigError(f"split names are letters, digits, '_' and '-' (they name files), got {split!r}")
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ConfigError(f"features are stored as a floating-point dtype, got {dtype}")
    settings = feature_settings(config)
    backbone, source = _load_backbone(config, checkpoint)
    fields = fingerprint_fields(settings, backbone_state_hash(backbone), dtype)
    fingerprint = fingerprint_of(fields)
    settings.update(weights_file_setting(config))  # beside the settings, not in the fingerprint
    train_set = build_dataset(config, "train", train=False)
    names = class_names(train_set)
    backbone = backbone.to(device)
    out.mkdir(parents=True, exist_ok=True)
    written: Dict[str, Path] = {}
    with LockFile(out / LOCK_NAME, error=FeatureCacheError, what=f"the features folder {out}"):
        folder = _Folder(out, fields, fingerprint, source)
        info = folder.info or {
            "format": FEATURES_FORMAT, "version": FEATURES_VERSION, "fingerprint": fingerprint, "fields": fields,
            "channels": None, "grid": None, "settings": settings, "from_checkpoint": checkpoint is not None,
            "backbone_source": source, "splits": {},
        }
        for split, entry in folder.unlisted.items():  # renamed in by a run killed before its manifest update
            info["channels"], info["grid"] = entry["channels"], entry["grid"]
            info["splits"][split] = {"file": f"{split}.pt", "clips": entry["clips"], "skipped": entry["skipped"]}
            _write_info(out, info)
            logger.info("%s: adopted %s.pt, complete but not yet listed by an interrupted run", out, split)
        for split in splits:
            path = out / f"{split}.pt"
            if folder.complete(split) or split in folder.unlisted:
                logger.info("split %r is already in %s with the same fingerprint (backbone and settings): kept as "
                            "it is, not written again", split, out)
                written[split] = path
                continue
            dataset = train_set if split == "train" else build_dataset(config, split, train=False, classes=names)
            loader = clip_loader(dataset, batch_size=config.train.eval_batch_size,
                                 num_workers=config.data.num_workers)  # a worker's VideoError as itself
            features, labels, skipped = _extract_split(backbone, loader, split, dtype, device, progress)
            grid, channels = list(features.shape[2:]), int(features.shape[1])
            if info["grid"] is not None and (info["grid"], info["channels"]) != (grid, channels):
                raise FeatureCacheError(f"split {split!r} gives features of {channels} channels on grid {grid}, the "
                                        f"folder's other splits {info['channels']} on {info['grid']}")
            payload = {
                "format": FEATURES_FORMAT, "version": FEATURES_VERSION, "fingerprint": fingerprint, "fields": fields,
                "features": features, "labels": labels, "classes": names or [], "skipped": skipped,
                "settings": settings, "backbone_source": source,
            }
            needed = features.nelement() * features.element_size() + labels.nelement() * 8
            try:
                free = shutil.disk_usage(out).free
            except OSError:
                free = None
            if free is not None and free < needed:
                raise FeatureCacheError(f"no space for {path}: about {needed / 2**20:.0f} MiB needed, "
                                        f"{free / 2**20:.0f} MiB free; nothing was written for split {split!r}")
            try:
                write_atomic(path, lambda f: torch.save(payload, f))
            except Exception as error:
                raise _write_failed(path, error, needed) from None
            info["channels"], info["grid"] = channels, grid
            info["splits"][split] = {"file": path.name, "clips": len(labels), "skipped": len(skipped)}
            _write_info(out, info)
            written[split] = path
            logger.info("%s: %d clips, features %s (%s)%s", path, len(labels), tuple(features.shape[1:]), dtype,
                        f", {len(skipped)} unreadable skipped" if skipped else "")
    return written
