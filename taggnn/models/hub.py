r"""Sharing trained models the way the field does: a ``model.safetensors`` with a ``config.json``.

A shared model is a folder in the Hugging Face layout (``save_pretrained`` / ``from_pretrained`` /
``push_to_hub`` of :class:`huggingface_hub.PyTorchModelHubMixin`):

=====================  ==========================================================================
file                   content
=====================  ==========================================================================
``model.safetensors``  the weights (tensors only, no pickle)
``config.json``        what rebuilds the model and feeds it: :data:`CONFIG_VERSION`, the taggnn
                       version, ``model_type`` (``TAGNet`` or ``HeadOnly``), ``num_classes``,
                       ``class_names``, ``architecture`` (backbone name and options, clip size,
                       head grid and options), ``preprocessing`` (frames, sampling, crop, short
                       side, normalisation name with its mean and std), ``dataset``, ``metrics``
                       (when known), ``features`` (head-only models: the feature cache's
                       settings) and ``training_config`` (the full taggnn config, when known)
``README.md``          a model card generated from ``config.json`` (with the paper's citation)
=====================  ==========================================================================

Writing and reading local folders needs only the ``safetensors`` package; Hub ids (``owner/name``)
are downloaded with :func:`huggingface_hub.snapshot_download`. Both come with the ``hub`` extra
(``pip install 'taggnn[hub]'``).
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from torch import Tensor

from ..data.constants import NORMALIZATIONS, RESIZE_RATIOS
from ..errors import CheckpointError, ConfigError, MissingExtraError
from ..utils.version import __version__

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
#: The files of a shared folder (what `taggnn export --format safetensors --overwrite` may replace).
SHARED_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
#: Version of the ``config.json`` schema written by :func:`make_config`.
CONFIG_VERSION = 1
MODEL_TYPES = ("TAGNet", "HeadOnly")
INSTALL_HINT = "pip install 'taggnn[hub]'"

PAPER_TITLE = "TAG-Head: Time-Aligned Graph Head for Plug-and-Play Fine-grained Action Recognition"
CITATION = f"""@article{{hassan2026taghead,
  title   = {{{PAPER_TITLE}}},
  author  = {{Hassan, Imtiaz Ul and Bessis, Nik and Behera, Ardhendu}},
  journal = {{arXiv preprint arXiv:2604.11498}},
  year    = {{2026}}
}}"""

#: Options of the Hugging Face mixin class (model card metadata).
MIXIN_OPTIONS = dict(library_name="taggnn", pipeline_tag="video-classification",
                     tags=["taggnn", "tag-head", "action-recognition", "video-classification"])

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pt2", ".ckpt", ".onnx", ".bin")


def require_safetensors():
    """The ``safetensors.torch`` module, or :class:`MissingExtraError` naming the extra."""
    try:
        import safetensors.torch
    except ImportError:
        raise MissingExtraError(f"writing and reading model.safetensors needs the safetensors package: "
                                f"{INSTALL_HINT}", extra="hub") from None
    return safetensors.torch


# ---------------------------------------------------------------- where a model is


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` (the Hub's repository id), not a file name of a checkpoint."""
    return bool(_HUB_ID.match(source)) and not source.lower().endswith(_CHECKPOINT_SUFFIXES + (".safetensors",))


def is_pretrained_source(source: Union[str, os.PathLike]) -> bool:
    """Whether ``source`` names a shared model (a folder, its ``model.safetensors`` or a Hub id)
    rather than a training checkpoint file."""
    path = Path(str(source)).expanduser()
    if path.is_dir():
        return True
    if path.is_file():
        return path.suffix == ".safetensors"
    return looks_like_hub_id(str(source))


def check_folder(folder: Path) -> Path:
    """``folder`` when it holds ``model.safetensors`` and ``config.json``; else a
    :class:`~taggnn.errors.CheckpointError` that says what it holds instead."""
    missing = [name for name in (WEIGHTS_NAME, CONFIG_NAME) if not (folder / name).is_file()]
    if missing:
        shared = (f"a shared model's folder (written by taggnn export --format safetensors or save_pretrained; "
                  f"{' and '.join(missing)} missing here)")
        present = [name for name in ("best.pt", "last.pt") if (folder / name).is_file()]
        if present:
            raise CheckpointError(f"{folder} is a folder, not a checkpoint file; it holds {' and '.join(present)}: "
                                  f"pass {folder / present[0]}, or share it with taggnn export --checkpoint "
                                  f"{folder / present[0]} --format safetensors --out DIR; expected a checkpoint or "
                                  f"{shared}")
        raise CheckpointError(f"{folder} is a folder, not a checkpoint file, and holds no best.pt or last.pt; "
                              f"expected a taggnn checkpoint (best.pt or last.pt of a run folder) or {shared}")
    return folder


def resolve_pretrained(source: Union[str, os.PathLike], *, revision: Optional[str] = None,
                       cache_dir: Optional[Union[str, os.PathLike]] = None, force_download: bool = False,
                       local_files_only: bool = False, token: Optional[Union[str, bool]] = None) -> Path:
    """The local folder of a shared model.

    Args:
        source: A folder with ``model.safetensors`` and ``config.json``, the path of its
            ``model.safetensors``, or a Hub id ``owner/name`` (downloaded with
            :func:`huggingface_hub.snapshot_download` into the Hub's cache; ``HF_HUB_OFFLINE=1``
            uses that cache only).
        revision, cache_dir, force_download, local_files_only, token: Passed to
            :func:`~huggingface_hub.snapshot_download` for Hub ids.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return check_folder(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path} is not a model.safetensors file of a shared taggnn model")
        return check_folder(path.parent)
    if not looks_like_hub_id(text):
        raise FileNotFoundError(f"{text}: no such file or folder (expected a taggnn checkpoint, a folder written by "
                                f"taggnn export --format safetensors, its model.safetensors, or a Hub id owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise MissingExtraError(f"{text} is neither a local file nor folder; downloading it as a Hub model needs "
                                f"huggingface_hub: {INSTALL_HINT}", extra="hub") from None
    try:
        folder = snapshot_download(repo_id=text, revision=revision, cache_dir=cache_dir, token=token,
                                   force_download=force_download, local_files_only=local_files_only,
                                   allow_patterns=[WEIGHTS_NAME, CONFIG_NAME, CARD_NAME])
    except Exception as error:  # offline, no such repository, private, ...
        reason = " ".join(str(error).split())[:300]
        raise CheckpointError(f"{text}: no such local file or folder, and the Hub model {text} could not be "
                              f"downloaded ({type(error).__name__}: {reason})") from error
    return check_folder(Path(folder))


# ---------------------------------------------------------------- config.json


def preprocessing_info(*, num_frames: int, crop_size: Any, short_side: Optional[int] = None,
                       transform_style: Optional[str] = None, normalization: Optional[str] = None,
                       sampling: Optional[str] = None) -> Dict[str, Any]:
    """The ``preprocessing`` entry: what a clip must look like before it enters the model."""
    crop = crop_size if isinstance(crop_size, int) else list(crop_size)
    info: Dict[str, Any] = {"num_frames": num_frames, "sampling": sampling, "crop_size": crop,
                            "short_side": short_side, "transform_style": transform_style,
                            "normalization": normalization, "mean": None, "std": None,
                            "input": "float clip (B, 3, T, H, W), RGB in [0, 1] before normalisation"}
    if short_side is None and transform_style in RESIZE_RATIOS and isinstance(crop_size, int):
        info["short_side"] = round(crop_size * RESIZE_RATIOS[transform_style])
    if normalization in NORMALIZATIONS:
        mean, std = NORMALIZATIONS[normalization]
        info["mean"], info["std"] = list(mean), list(std)
    return info


def make_config(*, model_type: str, num_classes: int, architecture: Mapping[str, Any],
                class_names: Optional[list] = None, preprocessing: Optional[Mapping[str, Any]] = None,
                dataset: Optional[str] = None, metrics: Optional[Mapping[str, Any]] = None,
                features: Optional[Mapping[str, Any]] = None,
                training_config: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The ``config.json`` of a shared model (see the module's table); raises
    :class:`~taggnn.errors.ConfigError` if a value cannot be written as JSON."""
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class names for a model with {num_classes} classes")
    config = {
        "library_name": "taggnn", "taggnn_version": __version__, "config_version": CONFIG_VERSION,
        "model_type": model_type, "num_classes": num_classes,
        "class_names": list(class_names) if class_names is not None else None,
        "architecture": dict(architecture), "preprocessing": dict(preprocessing) if preprocessing else None,
        "dataset": dataset, "metrics": dict(metrics) if metrics else None,
        "features": dict(features) if features else None,
        "training_config": dict(training_config) if training_config else None,
    }
    try:
        json.dumps(config)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"the model's description cannot be written as JSON ({error}); every head option must "
                          f"be a number, string, list, dict or None") from error
    return config


def read_config(folder: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The checked ``config.json`` of a shared model's folder."""
    path = Path(folder) / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable config.json ({error})") from error
    if not isinstance(config, dict) or config.get("library_name") != "taggnn":
        raise CheckpointError(f"{path}: not a taggnn model's config.json (library_name is "
                              f"{config.get('library_name') if isinstance(config, dict) else None!r}, "
                              f"expected 'taggnn')")
    version = config.get("config_version")
    if not isinstance(version, int) or version > CONFIG_VERSION:
        raise CheckpointError(f"{path}: config_version {version!r} is newer than this taggnn reads "
                              f"({CONFIG_VERSION}); upgrade taggnn (written by taggnn "
                              f"{config.get('taggnn_version')})")
    missing = [key for key in ("model_type", "num_classes", "architecture") if key not in config]
    if missing or config["model_type"] not in MODEL_TYPES:
        raise CheckpointError(f"{path}: expected model_type in {MODEL_TYPES}, num_classes and architecture; "
                              f"got model_type={config.get('model_type')!r}, missing {missing}")
    return config


# ---------------------------------------------------------------- files


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_folder(folder: Union[str, os.PathLike], state_dict: Mapping[str, Tensor], config: Mapping[str, Any],
                 *, card: Optional[str] = None) -> Path:
    """Writes ``model.safetensors``, ``config.json`` and (if given) ``README.md`` into ``folder``,
    each atomically (temporary file + rename). Tensors that share memory are written as copies."""
    st = require_safetensors()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state_dict.items()}
    metadata = {"format": "pt", "library_name": "taggnn", "taggnn_version": str(config.get("taggnn_version"))}
    _atomic_write(folder / WEIGHTS_NAME, lambda tmp: st.save_file(tensors, str(tmp), metadata=metadata))
    text = json.dumps(config, indent=2, sort_keys=False) + "\n"
    _atomic_write(folder / CONFIG_NAME, lambda tmp: tmp.write_text(text))
    if card is not None:
        _atomic_write(folder / CARD_NAME, lambda tmp: tmp.write_text(card))
    return folder


def read_weights(folder: Union[str, os.PathLike]) -> Dict[str, Tensor]:
    """The tensors of ``folder/model.safetensors`` (on the CPU)."""
    st = require_safetensors()
    path = Path(folder) / WEIGHTS_NAME
    try:
        return st.load_file(str(path), device="cpu")
    except Exception as error:  # truncated or not a safetensors file
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error


# ---------------------------------------------------------------- model card


def _table(rows) -> str:
    lines = ["| key | value |", "|---|---|"]
    lines += [f"| `{key}` | `{json.dumps(value)}` |" for key, value in rows]
    return "\n".join(lines)


def model_card(config: Mapping[str, Any], *, repo_id: Optional[str] = None) -> str:
    """A model card (``README.md`` with Hub metadata) generated from a ``config.json``."""
    arch, pre = config["architecture"], config.get("preprocessing") or {}
    metrics, dataset = config.get("metrics") or {}, config.get("dataset")
    names = config.get("class_names") or []
    head_only = config["model_type"] == "HeadOnly"
    what = "TAG-Head on cached backbone features" if head_only else f"{arch.get('backbone')} + TAG-Head"
    where = repo_id or "path/to/this/folder"
    tags = sorted(set(MIXIN_OPTIONS["tags"] + ["pytorch_model_hub_mixin", "model_hub_mixin"]))
    front = ["---", "library_name: taggnn", "pipeline_tag: video-classification", "tags:"]
    front += [f"- {tag}" for tag in tags] + ["---", ""]
    text = front + [
        f"# {what}, {config['num_classes']} classes" + (f" ({dataset})" if dataset else ""),
        "",
        f"A {config['model_type']} model of taggnn "
        f"{config.get('taggnn_version')}: the TAG-Head of \"{PAPER_TITLE}\" "
        + ("trained on cached backbone features (no backbone: its input is the features "
           "`(B, C, T', H', W')` of the backbone named under Features)." if head_only
           else "on a 3D backbone: video clips in, class logits out."),
        "",
        "## Use",
        "",
        "```python",
        f"from taggnn.models import {config['model_type']}",
        "",
        f"model = {config['model_type']}.from_pretrained(\"{where}\")  # eval mode",
        "logits = model(x)  # " + ("features (B, C, T', H', W')" if head_only else "clips (B, 3, T, H, W)"),
        "```",
        "",
        f"or `taggnn eval --checkpoint {where} --split test` / `taggnn predict clip.mp4 --checkpoint {where}`.",
        "",
    ]
    if pre:
        text += ["## Preprocessing", "", _table(pre.items()), ""]
    if head_only and config.get("features"):
        text += ["## Features", "", _table(config["features"].items()), ""]
    text += ["## Architecture", "", _table(arch.items()), ""]
    text += ["## Training data", "", f"Dataset: {dataset or 'not recorded'}; {config['num_classes']} classes"
             + (f": {', '.join(map(str, names[:20]))}{', ...' if len(names) > 20 else ''}." if names else "."), ""]
    text += ["## Metrics", ""]
    if metrics:
        for split, values in metrics.items():
            text.append(f"- {split}: " + ", ".join(f"{key} {value:.4f}" if isinstance(value, float)
                                                   else f"{key} {value}" for key, value in values.items()))
    else:
        text.append("Not recorded.")
    text += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(text)


# ---------------------------------------------------------------- the mixin


class LocalPretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for local folders when huggingface_hub is not
    installed (``safetensors`` alone); ``push_to_hub`` and Hub ids need the ``hub`` extra."""

    def __init_subclass__(cls, **options):  # the Hub mixin's class options (card metadata): unused here
        super().__init_subclass__()

    def save_pretrained(self, save_directory: Union[str, os.PathLike], **kwargs) -> None:
        self._save_pretrained(Path(save_directory))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], *, revision=None,
                        cache_dir=None, force_download: bool = False, local_files_only: bool = False,
                        token=None, **model_kwargs):
        return cls._from_pretrained(model_id=str(pretrained_model_name_or_path), revision=revision,
                                    cache_dir=cache_dir, force_download=force_download,
                                    local_files_only=local_files_only, token=token, **model_kwargs)

    def push_to_hub(self, repo_id: str, **kwargs):
        raise MissingExtraError(f"push_to_hub({repo_id!r}) needs huggingface_hub: {INSTALL_HINT}", extra="hub")


try:
    from huggingface_hub import PyTorchModelHubMixin as PretrainedMixin
except ImportError:  # the hub extra is not installed
    PretrainedMixin = LocalPretrainedMixin  # type: ignore[misc,assignment]
