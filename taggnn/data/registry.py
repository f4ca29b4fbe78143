"""The dataset registry: every dataset ``data.dataset`` may name, with what a config needs of it.

A dataset registers itself in its own module (as :mod:`taggnn.models.backbones` registers the
backbones), with

* ``build``: how it is built from a config, ``build(config, split, *, train, classes, transform)``
  (``transform``: the train or test transform of the config's ``data.*`` settings, which
  the dataset applies to its uint8 ``(T, H, W, 3)`` clips; ``classes``: the training
  split's class names, or a checkpoint's, when known);
* ``check``: the problems of a config for it (``check(config) -> list of str``: class counts,
  clip lengths, split names...), reported with every other problem before any work starts;
* ``splits``: the split names ``data.val_split`` / ``data.test_split`` may take (``None``: any);
* ``feature_keys``: its config keys that change cached backbone features
  (:mod:`taggnn.data.features`), besides the ones every dataset shares.

Adding a dataset is then its module (the class and one :func:`register_dataset` call) and a
preset YAML with ``data.dataset: <name>``. The functions receive the run's
:class:`~taggnn.engine.config.Config`; they read ``config.data`` (and ``config.train``).

Example::

    from taggnn.data import register_dataset, video_options

    def _build(config, split, *, train, classes, transform):
        return MyClips(config.data.root, split, transform=transform, **video_options(config, train=train))

    register_dataset("myclips", _build, splits=("train", "val", "test"), description="my clips")
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from torch.utils.data import Dataset

from ..errors import ConfigError

__all__ = [
    "DatasetInfo", "register_dataset", "list_datasets", "dataset_info", "dataset_problems", "video_options",
    "feature_keys", "SHARED_FEATURE_KEYS", "DATASET_NAMES", "RegisteredNames",
]

#: The config keys that change cached features whatever the dataset (the model keys last).
SHARED_FEATURE_KEYS = (
    "data.dataset", "data.root", "data.num_frames", "data.crop_size", "data.short_side", "data.transform_style",
    "data.normalization", "data.sampling",
)
_MODEL_FEATURE_KEYS = ("model.backbone", "model.weights", "model.bn_eps")


def _no_problems(config: Any) -> List[str]:
    return []


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset (see the module docstring for the meaning of each field)."""

    name: str
    build: Callable[..., Dataset]
    check: Callable[[Any], List[str]] = _no_problems
    splits: Optional[Tuple[str, ...]] = None
    feature_keys: Tuple[str, ...] = ()
    description: str = ""


_REGISTRY: Dict[str, DatasetInfo] = {}


def register_dataset(name: str, build: Callable[..., Dataset], *, check: Optional[Callable[[Any], List[str]]] = None,
                     splits: Optional[Sequence[str]] = None, feature_keys: Sequence[str] = (),
                     description: str = "") -> DatasetInfo:
    """Adds a dataset to the registry under ``name`` (users can register their own; registering
    a name again replaces the entry). Returns the entry."""
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"a dataset name is letters, digits, '_' and '-', got {name!r}")
    for key in feature_keys:
        if not key.startswith("data."):
            raise ValueError(f"feature_keys of dataset {name!r} are data.* config keys, got {key!r}")
    info = DatasetInfo(name, build, check or _no_problems, None if splits is None else tuple(splits),
                       tuple(feature_keys), description)
    _REGISTRY[name] = info
    return info


def list_datasets() -> List[str]:
    """The registered dataset names, sorted (the order modules register in depends on which is
    imported first; messages and the generated key table must not)."""
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    """The entry of dataset ``name``; an unknown name raises :class:`~taggnn.errors.ConfigError`
    naming the choices."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(list_datasets())}")
    return _REGISTRY[name]


def dataset_problems(config: Any) -> List[str]:
    """The problems of ``config`` for its ``data.dataset``: the dataset's own checks, then
    ``data.val_split`` / ``data.test_split`` against its splits. Cached features
    (``data.features``) bring their own splits and classes: nothing to check."""
    d = config.data
    if d.features is not None or d.dataset not in _REGISTRY:
        return []  # an unknown name is reported by the choices check
    info = _REGISTRY[d.dataset]
    problems = list(info.check(config))
    for key in ("val_split", "test_split"):
        value = getattr(d, key)
        if info.splits is not None and value not in info.splits:
            problems.append(f"data.{key}={value!r} is not a split of {d.dataset} ({', '.join(info.splits)})")
    return problems


def feature_keys() -> Tuple[str, ...]:
    """The config keys that determine cached features: the shared data keys, every registered
    dataset's own keys (in registration order, each once) and the backbone's keys. A
    features folder records all of them, whatever its dataset."""
    keys = dict.fromkeys(SHARED_FEATURE_KEYS)
    for info in _REGISTRY.values():
        keys.update(dict.fromkeys(info.feature_keys))
    keys.update(dict.fromkeys(_MODEL_FEATURE_KEYS))
    return tuple(keys)


def video_options(config: Any, *, train: bool) -> Dict[str, Any]:
    """The keyword arguments every decoded-video dataset (:class:`~taggnn.data.VideoClipDataset`)
    takes from a config: ``num_frames``, ``sampling`` (``data.train_sampling`` when training),
    ``on_error``, ``seed`` (``train.seed``: the random frame offsets and the transform's draws
    of clip ``i`` in epoch ``e`` depend on (seed, e, i) only), ``decode_threads`` and ``decoder``.

    Raises:
        ConfigError: ``data.root`` is not set.
    """
    d = config.data
    if d.root is None:
        raise ConfigError(f"data.root must be set for dataset {d.dataset!r} (e.g. --set data.root=/data/...)")
    return dict(num_frames=d.num_frames, sampling=d.train_sampling if train else d.sampling, on_error=d.on_error,
                seed=config.train.seed, decode_threads=d.decode_threads, decoder=d.decoder)


class RegisteredNames(Sequence):
    """The registered dataset names as a live, read-only sequence (``name in names``,
    ``", ".join(names)``, indexing): a dataset registered later is in it too."""

    def __getitem__(self, index):
        return list_datasets()[index]

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __contains__(self, name: object) -> bool:
        return name in _REGISTRY

    def __repr__(self) -> str:
        return repr(tuple(list_datasets()))


#: Every registered dataset name (live: see :class:`RegisteredNames`).
DATASET_NAMES = RegisteredNames()
