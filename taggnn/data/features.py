"""The format of a cached-features folder: its manifest, its split files, their fingerprint.

``taggnn features`` (:func:`taggnn.engine.features.extract_features`, which computes the
features with a backbone) writes ``DIR/<split>.pt`` for each split, the token grids
``(N_clips, C, T', H', W')``, their labels, class names and the settings that made them, and
the manifest ``DIR/info.json``. This module reads and checks them:

* **One fingerprint.** Every split file and ``info.json`` carry the fingerprint of all that
  determines the features (:func:`fingerprint_fields`): the SHA-256 of the backbone's weights
  as used, the settings of :func:`feature_settings` (the dataset's own keys among them, see
  :func:`~taggnn.data.registry.feature_keys`), the stored dtype and the format version.
  Reading a split whose fingerprint differs from the folder's is refused, naming the fields.
* **Complete or absent.** ``info.json`` lists only complete splits; a folder without it is
  not (yet) a features folder.
* **Safe loading.** Files load with ``torch.load(..., weights_only=True)``; anything else (a
  pickle, a truncated file, an older format) raises :class:`FeatureCacheError`.

A config whose settings differ from the recorded ones is refused (:func:`check_settings`),
naming each field (what the folder has vs what the config says).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import ConfigError, TaggnnError
from .registry import feature_keys

__all__ = [
    "FEATURES_FORMAT", "FEATURES_VERSION", "INFO_NAME", "LOCK_NAME", "FeatureCacheError", "FeatureDataset",
    "feature_settings", "read_info", "check_settings", "load_feature_file", "backbone_state_hash",
    "fingerprint_fields", "fingerprint_of", "describe_differences", "weights_file_setting",
]

#: Format marker of every file of a features folder.
FEATURES_FORMAT = "taggnn-features"
FEATURES_VERSION = 2
INFO_NAME = "info.json"
LOCK_NAME = ".taggnn-features.lock"
#: Temporary files of the cache: ``.<name>.<pid>.tmp`` (a split or the manifest being written).
_TEMP_NAME = re.compile(r"^\.(?P<name>[A-Za-z0-9_][A-Za-z0-9_.-]*)\.(?P<pid>\d+)\.tmp$")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
_WEIGHTS_HASH = "backbone weights (sha256)"
#: The absolute path of a local ``model.weights`` file, as recorded beside the settings.
WEIGHTS_FILE = "model.weights (absolute path)"


class FeatureCacheError(TaggnnError, RuntimeError):
    """A features folder cannot be written or read: in use, holding other files, incomplete,
    or a file in it is not a taggnn feature file."""


def feature_settings(config) -> Dict[str, Any]:
    """The values in ``config`` (a :class:`~taggnn.engine.config.Config`) of the keys that
    determine cached features (:func:`~taggnn.data.registry.feature_keys`)."""
    values = config.to_dict()
    settings = {}
    for key in feature_keys():
        section, name = key.split(".", 1)
        settings[key] = values[section][name]
    return settings


def backbone_state_hash(module: nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and values of parameters and buffers)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def fingerprint_fields(settings: Dict[str, Any], weights_hash: str, dtype: torch.dtype) -> Dict[str, Any]:
    """Everything that determines the features, by name (``model.weights`` enters through the
    hash of the weights themselves: the same weights from another path give the same features)."""
    fields = {key: value for key, value in settings.items() if key != "model.weights"}
    fields[_WEIGHTS_HASH] = weights_hash
    fields["dtype"] = str(dtype).replace("torch.", "")
    fields["format version"] = FEATURES_VERSION
    return fields


def fingerprint_of(fields: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _show(key: str, value: Any) -> str:
    return repr(value[:12]) if key == _WEIGHTS_HASH and isinstance(value, str) else repr(value)


def describe_differences(mine: Dict[str, Any], theirs: Dict[str, Any], mine_name: str, theirs_name: str) -> str:
    """``key: a (mine_name) vs b (theirs_name)`` for every field that differs."""
    keys = list(mine) + [key for key in theirs if key not in mine]
    return "; ".join(f"{key}: {_show(key, mine.get(key))} ({mine_name}) vs {_show(key, theirs.get(key))} "
                     f"({theirs_name})" for key in keys if mine.get(key) != theirs.get(key))


# ---------------------------------------------------------------------------- reading


def read_info(folder) -> Dict[str, Any]:
    """The manifest of a features folder (its ``info.json``): ``channels``, ``grid``,
    ``settings``, ``fingerprint`` and the complete ``splits``.

    Raises:
        FileNotFoundError: No manifest (not a features folder, or its first split never completed).
        FeatureCacheError: The manifest is not one written by ``taggnn features`` of this version.
    """
    folder = Path(folder)
    path = folder / INFO_NAME
    if not path.is_file():
        busy = any(p.name == LOCK_NAME or _TEMP_NAME.match(p.name) for p in _entries(folder))
        why = (" (a taggnn features run is writing it, or was interrupted before its first split was complete)"
               if busy else "")
        raise FileNotFoundError(f"{folder} is not a complete features folder ({path} missing{why}); write one "
                                f"with taggnn features --config ... --out {folder}")
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise FeatureCacheError(f"{path} is not a taggnn features manifest ({str(error).splitlines()[0]}); "
                                f"write the features again with taggnn features --out <new folder>") from None
    if not isinstance(info, dict) or info.get("format") != FEATURES_FORMAT:
        old = isinstance(info, dict) and info.get("version") == 1 and "settings" in info
        raise FeatureCacheError(
            f"{path} is " + ("a features manifest of an older taggnn (format 1, no fingerprint)" if old
                             else "not a taggnn features manifest")
            + "; write the features again with taggnn features --out <new folder>")
    if info.get("version") != FEATURES_VERSION:
        raise FeatureCacheError(f"{path} has features format {info.get('version')!r}, this taggnn reads "
                                f"{FEATURES_VERSION}; write the features again with this version")
    missing = [key for key in ("fingerprint", "fields", "channels", "grid", "settings", "splits") if key not in info]
    if missing or not isinstance(info["splits"], dict):
        raise FeatureCacheError(f"{path} is an incomplete features manifest (missing "
                                f"{', '.join(missing) or 'splits'}); write the features again")
    return info


def load_feature_file(path, *, mmap: bool = False) -> Dict[str, Any]:
    """A split file of a features folder, loaded with ``weights_only=True`` and checked.

    Raises:
        FeatureCacheError: Anything else (a pickle of Python objects, a truncated file, a
            file of another format), in one line naming the file and what it holds.
    """
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        reason = str(error).strip().split("\n")[0].strip()
        if "Weights only load failed" in str(error):
            reason = ("it holds pickled Python objects, which taggnn never loads (only tensors and plain values "
                      "are safe)")
        raise FeatureCacheError(f"{path} is not a taggnn feature file: {reason}; write the features again "
                                f"with taggnn features") from None
    if isinstance(data, dict) and data.get("format") == FEATURES_FORMAT and data.get("version") == FEATURES_VERSION:
        if all(key in data for key in ("features", "labels", "classes", "fingerprint", "fields", "settings")):
            return data
    if isinstance(data, dict) and "features" in data and "settings" in data and "format" not in data:
        what = "a feature file of an older taggnn (format 1, no fingerprint)"
    elif isinstance(data, dict):
        what = f"a mapping with keys {', '.join(str(k) for k in list(data)[:6]) or '(none)'}"
    else:
        what = f"a {type(data).__name__}"
    raise FeatureCacheError(f"{path} is not a taggnn feature file of this version (it holds {what}); write the "
                            f"features again with taggnn features")


class FeatureDataset(Dataset):
    """``(features, label)`` pairs of one split written by :func:`extract_features`.

    Args:
        folder: The features folder.
        split (str): The split; it must be listed complete in the folder's ``info.json``.
        config (Config, optional): Checked against the recorded settings (a mismatch raises
            :class:`~taggnn.errors.ConfigError` listing every difference).
    """

    #: Items draw no random numbers (no augmentation), so :class:`~taggnn.data.seeding.EpochSeeded`
    #: need not seed anything per item.
    stochastic = False

    def __init__(self, folder, split: str, config=None):
        folder = Path(folder)
        info = read_info(folder)
        path = folder / f"{split}.pt"
        if split not in info["splits"]:
            partial = (f"; {path.name} is there but was never completed (the run writing it was interrupted, "
                       f"or is still running)" if path.exists() else "")
            raise FileNotFoundError(
                f"no cached features for split {split!r} in {folder} (complete splits: "
                f"{', '.join(info['splits']) or 'none'}){partial}; write them with: taggnn features --config ... "
                f"--split {split} --out {folder}")
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed in {folder / INFO_NAME} but missing; write it again with: "
                                    f"taggnn features --config ... --split {split} --out {folder}")
        data = load_feature_file(path)
        if data["fingerprint"] != info["fingerprint"]:
            raise ConfigError(
                f"{path} was made with another backbone or settings than the rest of {folder}: "
                + describe_differences(data["fields"], info["fields"], path.name, INFO_NAME)
                + "; write the features of every split again into one folder")
        if config is not None:
            check_settings(info["settings"], config, path, from_checkpoint=bool(info.get("from_checkpoint")))
        self.path = path
        self.features: torch.Tensor = data["features"]
        self.labels: torch.Tensor = data["labels"]
        self.classes: List[str] = list(data["classes"])
        self.settings: Dict[str, Any] = data["settings"]
        self.fingerprint: str = data["fingerprint"]
        self.backbone_source: str = data.get("backbone_source", "")

    @property
    def grid(self):
        return tuple(self.features.shape[2:])

    @property
    def channels(self) -> int:
        return int(self.features.shape[1])

    @property
    def targets(self) -> List[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.features[index].float(), int(self.labels[index])


def weights_file_setting(config) -> Dict[str, str]:
    """``{WEIGHTS_FILE: absolute path}`` when ``model.weights`` is a local file, else empty: recorded
    with the settings, so that a relative path that names another file from another folder is told apart."""
    weights = config.model.weights
    if isinstance(weights, str) and os.path.isfile(weights):
        return {WEIGHTS_FILE: os.path.abspath(weights)}
    return {}


def _same_weights(recorded: Dict[str, Any], current: Any) -> bool:
    """Whether ``model.weights`` of the config names the recorded weights: the recorded absolute
    file when it still exists (a relative path is found from the current folder), else the spelling."""
    recorded_file = recorded.get(WEIGHTS_FILE)
    if isinstance(recorded_file, str) and os.path.isfile(recorded_file):
        try:
            return isinstance(current, str) and os.path.samefile(recorded_file, current)
        except OSError:  # the config's weights are not a local file
            return False
    spelling = recorded.get("model.weights")
    if spelling == current:
        return True
    if isinstance(spelling, str) and isinstance(current, str):  # two spellings of one file, found from here
        try:
            return os.path.samefile(spelling, current)
        except OSError:  # either is not a local file (a catalogue name, a URL, a path gone)
            return False
    return False


def check_settings(recorded: Dict[str, Any], config, path: Path, *, from_checkpoint: bool = False) -> None:
    """Refuses a config whose feature settings (:func:`feature_settings`) differ from the recorded
    ones, naming each (``model.weights`` naming the same local file another way is no difference;
    the same relative path naming another file than the one recorded, from another folder, is one).

    ``from_checkpoint``: the features came from a checkpoint's backbone, so ``model.weights``
    (which a head-only run never reads) is not compared.
    """
    current = feature_settings(config)
    keys = [key for key in current if not (from_checkpoint and key == "model.weights")]
    differences = []
    for key in keys:  # in the settings' order
        if key != "model.weights":
            if recorded.get(key) != current[key]:
                differences.append(f"{key}: {recorded.get(key)!r} (features) vs {current[key]!r} (config)")
            continue
        weights = current[key]
        if _same_weights(recorded, weights):
            continue
        if recorded.get(WEIGHTS_FILE) and isinstance(weights, str):  # both as files: one spelling may name two
            differences.append(f"model.weights: {recorded[WEIGHTS_FILE]!r} (features) vs "
                               f"{os.path.abspath(weights)!r} (config)")
        else:
            differences.append(f"model.weights: {recorded.get('model.weights')!r} (features) vs {weights!r} "
                               f"(config)")
    if differences:
        raise ConfigError(f"{path} was made with other settings: " + "; ".join(differences)
                          + "; write the features again for this config, or use the features' settings")


def _entries(folder: Path) -> List[Path]:
    try:
        return sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
