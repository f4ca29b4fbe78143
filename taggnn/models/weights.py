"""Pretrained weights: entries (torchvision style) and safe, verbose loading.

A :class:`WeightsEntry` describes a release file: where it lives, the hash
prefix its name carries, what it was trained for (classes, clip length,
crop) and the input normalisation it expects. :func:`load_state_dict` takes
a local path or a URL, loads it with ``weights_only=True`` and unwraps the
usual containers (``state_dict``, ``model_state``, ``model``). URLs are
downloaded with :func:`torch.hub.download_url_to_file` into torch.hub's own
cache, ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``),
the folder ``torch.hub.load_state_dict_from_url`` and torchvision use: a
release file is downloaded once for both, and checked against the SHA-256
prefix of its name (or of its :class:`WeightsEntry`) before it is kept.
:func:`load_backbone_weights` strips classifier keys and reports missing,
unexpected and mis-shaped keys by name.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from ..errors import WeightsError  # noqa: F401  (re-exported: taggnn.models.WeightsError)

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class WeightsEntry:
    """A release file of backbone weights.

    Attributes:
        name: Short name used in ``build_backbone(..., weights=name)``.
        url: Where the file is published.
        sha256_prefix: Leading hex digits of the file's SHA-256 (the
            ``-<hash>`` suffix of torch.hub-style names); :obj:`None` if the
            publisher gives none.
        num_classes: Classes of the pretraining classifier (dropped on load).
        num_frames: Clip length the weights were trained with.
        crop_size: Training crop.
        mean, std: Input normalisation.
        classifier_prefixes: Key prefixes of the classifier to strip.
        state_key: Container key holding the state dict, if any.
    """

    name: str
    url: str
    sha256_prefix: Optional[str]
    num_classes: int
    num_frames: int
    crop_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    classifier_prefixes: Tuple[str, ...] = ("fc.",)
    state_key: Optional[str] = None
    meta: Mapping[str, object] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return os.path.basename(urlparse(self.url).path)


def default_cache_dir() -> Path:
    """torch.hub's checkpoint folder, ``torch.hub.get_dir()/checkpoints`` (honours ``$TORCH_HOME``
    and ``torch.hub.set_dir``), shared with torchvision; ``$TAGGNN_CACHE`` overrides it."""
    root = os.environ.get("TAGGNN_CACHE")
    return Path(root) if root else Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of(path: PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_prefix_from_name(path: PathLike) -> Optional[str]:
    match = re.search(r"-([0-9a-f]{8,64})\.\w+$", os.path.basename(str(path)))
    return match.group(1) if match else None


def verify_file(path: PathLike, sha256_prefix: Optional[str]) -> None:
    """Raises :class:`WeightsError` when the file's SHA-256 does not start with the prefix."""
    if not sha256_prefix:
        return
    actual = sha256_of(path)
    if not actual.startswith(sha256_prefix):
        raise WeightsError(
            f"{path}: SHA-256 {actual[:16]}... does not match the expected prefix "
            f"{sha256_prefix}; the file is corrupt or not the release it is named after"
        )


def fetch(source: PathLike, *, sha256_prefix: Optional[str] = None,
          cache_dir: Optional[PathLike] = None, progress: bool = True) -> Path:
    """A local file for ``source``: a path as is, a URL downloaded once into the cache.

    URLs (``http``, ``https``, ``ftp``, ``file``) go through
    :func:`torch.hub.download_url_to_file` with the expected hash prefix (``sha256_prefix``, else
    the ``-<hash>`` of the file name), into :func:`default_cache_dir`. The download is written to
    a temporary name and renamed only after the hash check, so an interrupted or corrupt download
    never leaves a file behind; a file already in the cache is checked again before use.
    """
    source_str = str(source)
    if urlparse(source_str).scheme in ("http", "https", "ftp", "file"):
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        target = cache / os.path.basename(urlparse(source_str).path)
        expected = sha256_prefix or _hash_prefix_from_name(target)
        if not target.exists():
            cache.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.download")
            logger.info("downloading %s to %s", source_str, target)
            try:
                torch.hub.download_url_to_file(source_str, str(tmp), hash_prefix=expected, progress=progress)
            except Exception as error:  # no network, 404, wrong hash, ...
                tmp.unlink(missing_ok=True)
                if "invalid hash value" in str(error):
                    raise WeightsError(
                        f"{source_str}: the downloaded file's SHA-256 does not match the expected prefix "
                        f"{expected}; the download is corrupt or not the release it is named after ({error})"
                    ) from error
                raise WeightsError(
                    f"could not download {source_str} ({error}); download it by hand and pass "
                    f"the local path instead: --set model.weights=/path/to/{target.name} (or weights='/path/to/"
                    f"{target.name}' in Python)"
                ) from error
            try:
                verify_file(tmp, expected)
            except WeightsError:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, target)
        else:
            verify_file(target, expected)
        return target
    path = Path(source_str).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    verify_file(path, sha256_prefix)
    return path


def load_state_dict(source: PathLike, *, sha256_prefix: Optional[str] = None,
                    state_key: Optional[str] = None, cache_dir: Optional[PathLike] = None,
                    trusted: bool = False) -> Dict[str, Tensor]:
    """Loads a state dict from a path or URL with ``weights_only=True``.

    Unwraps ``state_key`` if given, else the first of ``state_dict``,
    ``model_state``, ``model`` found; strips a DataParallel ``module.`` prefix.
    A file that pickles other objects (e.g. a training config) is refused
    unless ``trusted=True``, which unpickles it fully: only for files whose
    source you trust.
    """
    path = fetch(source, sha256_prefix=sha256_prefix, cache_dir=cache_dir)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as error:
        if "global" not in str(error).lower():  # not a pickle at all, or a damaged one
            raise WeightsError(f"{path}: cannot be read as a PyTorch weights file ({error})") from error
        raise WeightsError(
            f"{path}: holds pickled objects other than tensors, which weights_only loading refuses "
            f"(e.g. a pickled class); if you trust the file's source, load it with trusted=True"
        ) from error
    except Exception as error:
        raise WeightsError(f"{path}: cannot be read as a PyTorch weights file ({error})") from error
    keys = [state_key] if state_key else ["state_dict", "model_state", "model"]
    if isinstance(obj, Mapping):
        for key in keys:
            if key and key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def strip_prefixes(state: Mapping[str, Tensor], prefixes: Iterable[str]) -> Dict[str, Tensor]:
    prefixes = tuple(prefixes)
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def load_into(module: nn.Module, state: Mapping[str, Tensor], *, strict: bool = True,
              what: str = "weights") -> Tuple[Sequence[str], Sequence[str]]:
    """``load_state_dict`` with messages that name keys and shapes.

    A shape mismatch always raises (naming the key and both shapes); missing
    or unexpected keys raise with ``strict=True`` and are logged otherwise.
    Returns ``(missing, unexpected)``.
    """
    own = module.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items() if k in own and own[k].shape != v.shape
    ]
    if mismatched:
        raise WeightsError(f"{what}: shape mismatch for {len(mismatched)} key(s): " + "; ".join(mismatched[:10]))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if (missing or unexpected) and strict:
        raise WeightsError(
            f"{what}: {len(missing)} missing key(s) {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    if missing:
        logger.warning("%s: %d missing key(s), left at their initial values: %s", what, len(missing), missing[:8])
    if unexpected:
        logger.warning("%s: %d unexpected key(s) ignored: %s", what, len(unexpected), unexpected[:8])
    module.load_state_dict(state, strict=False)
    return missing, unexpected
