"""Typed run configuration: dataclasses, YAML presets, ``--set key=value`` overrides.

A config has five sections: ``data``, ``model``, ``optim``, ``train`` and ``eval``. Presets live in
``taggnn/configs/*.yaml`` (a preset may name a ``base:`` preset it overrides, and ``authors:`` a
dataset whose authors' setup, :func:`taggnn.models.reference.authors_setup`, it applies). Every key
is checked: an unknown key or a value of the wrong type is rejected with the list of valid keys.

Every fact about a key is stated once, in its field's metadata (:func:`option`): its help text,
its range or choices, whether it may change when a run is resumed, whether it changes cached
features and whether it may change at evaluation time. :data:`RANGES`, :func:`choices_of`,
:data:`RESUMABLE_KEYS`, :data:`FEATURE_KEYS`, :data:`EVAL_KEYS`, ``taggnn <command> --help``,
``taggnn config show`` and :func:`docs_table` are read from it.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import yaml

from ..data.constants import NORMALIZATIONS
from ..data.decoders import check_decoder
from ..data.registry import DATASET_NAMES, dataset_problems
from ..errors import ConfigError, TaggnnError  # noqa: F401  (ConfigError re-exported)
from ..models.backbones import build_backbone, list_backbones
from ..models.reference import authors_setup
from ..models.tagnet import head_options
from ..nn import TAGHead
from ..nn.options import check_model_options
from ..nn.refiner import PROPAGATIONS, conv_arguments, pyg_conv_class
from ..utils.memory import MEMORY_CEILING, format_bytes, machine_memory  # noqa: F401  (re-exported)
from .loggers import LOGGERS, check_loggers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Range:
    """An allowed numeric interval; ``None`` bounds are open-ended."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False  # excludes ``low``
    high_open: bool = False  # excludes ``high``

    def __contains__(self, value) -> bool:
        if value != value:  # NaN
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return f"{'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


AT_LEAST_0, AT_LEAST_1, POSITIVE = Range(0), Range(1), Range(0, low_open=True)
FRACTION = Range(0, 1, high_open=True)  # [0, 1)
#: Upper bound of ``model.K`` and ``model.num_graph_layers``: APPNP's change after ``K`` steps
#: shrinks like :math:`(1 - \alpha)^K` (below 1e-4 at K=1024 for alpha >= 0.01), and every step
#: costs a pass over the graph, so a larger count only makes a run hang.
MAX_PROPAGATION_STEPS = 1024

DATASETS = DATASET_NAMES  # the registered datasets (taggnn.data.registry), a live sequence
SYNTH_TASKS = ("fine", "pretrain")
SAMPLERS = ("random", "balanced", "sqrt")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "constant")
SCHEDULE_UNITS = ("step", "epoch")
CLASS_WEIGHTS = ("none", "inverse", "effective_number")
AMP_MODES = ("auto", "bf16", "fp16", "off")
EVAL_AMP_MODES = ("off", "bf16", "fp16", "train")
VIEW_AVERAGES = ("prob", "logits")


class registry:
    """The names a module owns (a tuple, a mapping's keys or a function's result), read when
    first asked for, so that importing the config imports none of those modules."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self) -> Tuple[str, ...]:
        value = getattr(importlib.import_module(self.module), self.name)
        return tuple(value() if callable(value) else value)

    def __repr__(self) -> str:
        return f"{self.module}.{self.name}"


Choices = Union[Sequence[Any], registry]


def option(default: Any = MISSING, *, default_factory: Any = MISSING, help: str, range: Optional[Range] = None,
           choices: Optional[Choices] = None, known: Optional[registry] = None, resumable: bool = False,
           features: bool = False, eval: Optional[bool] = None) -> Any:
    """A config field with what is known about it, as :func:`dataclasses.field` metadata.

    Args:
        default, default_factory: As for :func:`dataclasses.field`.
        help: One line for ``--help``, ``taggnn config show`` and the docs table.
        range: The allowed interval of a number (``None`` values of optional keys skip it).
        choices: The allowed values, checked by :func:`validate` (a :class:`registry` is read
            from the module that owns them).
        known: Names listed in the help but checked by the module that owns them (which may
            accept more, e.g. any ``torch_geometric.nn`` convolution as ``model.propagation``).
        resumable: May change between a run and its resumption (nothing computed changes).
        features: Changes the backbone features ``taggnn features`` caches.
        eval: May change when a trained model is evaluated (default: the section's, see
            :func:`section`).
    """
    metadata = {"help": help, "range": range, "choices": choices, "known": known, "resumable": resumable,
                "features": features, "eval": eval}
    return field(default=default, default_factory=default_factory, metadata=metadata)


def section(*, eval: bool):
    """Class decorator of a config section: a dataclass whose fields that do not say whether they
    may change at evaluation time take ``eval``."""
    def decorate(cls):
        cls = dataclass(cls)
        for f in fields(cls):
            if f.metadata.get("eval") is None:
                f.metadata = MappingProxyType({**f.metadata, "eval": eval})
        return cls
    return decorate


@section(eval=True)
class DataConfig:
    dataset: str = option("synthgym", help="the dataset", choices=DATASETS, features=True)
    root: Optional[str] = option(None, help="dataset root (finegym, haa500, folder) or video root (csv)",
                                 features=True)
    train_csv: Optional[str] = option(None, help="csv: the training split file", features=True)
    val_csv: Optional[str] = option(None, help="csv: the validation split file", features=True)
    test_csv: Optional[str] = option(None, help="csv: the test split file", features=True)
    csv_layout: str = option("flat", help="csv: videos at <root>/<FileName> (flat) or <root>/<Class>/<FileName> "
                                          "(authors)", choices=registry("taggnn.data.datasets", "CSV_LAYOUTS"),
                             features=True)
    num_classes: int = option(16, help="finegym: 99 or 288; synthgym: 4/8/12/16", range=AT_LEAST_1, features=True)
    version: str = option("v1.1", help="finegym training split version", features=True)
    holdout: float = option(0.0, help='finegym: fraction of each training class held out as split "holdout"',
                            range=FRACTION, features=True)
    holdout_min_clips: int = option(10, help="finegym: classes with fewer training clips hold out none",
                                    range=AT_LEAST_1, features=True)
    num_frames: int = option(16, help="frames per clip", range=AT_LEAST_1, features=True)
    crop_size: int = option(64, help="side of the square crop, in pixels", range=AT_LEAST_1, features=True)
    short_side: Optional[int] = option(None, help="resize the short side to this first (default: crop * 126/112 "
                                                  "(paper) or * 128/112 (authors))", range=AT_LEAST_1, features=True)
    transform_style: str = option("paper", help="resizing and cropping: the paper's or the authors' code's",
                                  choices=registry("taggnn.data.constants", "STYLES"), features=True)
    normalization: str = option("slowfast", help="input mean/std (must match model.weights' unless "
                                                 "data.keep_normalization)",
                                choices=registry("taggnn.data.constants", "NORMALIZATIONS"), features=True)
    keep_normalization: bool = option(False, help="keep data.normalization where model.weights were trained with "
                                                  "other statistics (the authors' code: 0.45/0.225 on IG-65M)",
                                      resumable=True)
    flip: bool = option(True, help="random horizontal flip when training (SynthGym: off, it swaps cw/ccw)")
    sampling: str = option("uniform", help="test-time frame sampling",
                           choices=registry("taggnn.data.video", "SAMPLINGS"), features=True)
    train_sampling: str = option("random", help="training frame sampling",
                                 choices=registry("taggnn.data.video", "SAMPLINGS"))
    on_error: str = option("raise", help="an unreadable video: stop (raise) or leave it out and count it (skip)",
                           choices=registry("taggnn.data.constants", "ON_ERROR"))
    num_workers: int = option(0, help="DataLoader worker processes", range=AT_LEAST_0, resumable=True)
    decode_threads: int = option(0, help="PyAV decoding threads per worker (0: FFmpeg's automatic choice)",
                                 range=AT_LEAST_0, resumable=True)
    decoder: str = option("pyav", help="video decoder (torchcodec: extra torchcodec, needs FFmpeg's shared "
                                       "libraries)", choices=registry("taggnn.data.decoders", "DECODERS"),
                          resumable=True)
    sampler: str = option("random", help="training order: random | balanced (classes equally likely) | sqrt "
                                         "(P ~ n_c^-1/2)", choices=SAMPLERS)
    persistent_workers: bool = option(False, help="keep DataLoader workers alive between epochs", resumable=True)
    pin_memory: Optional[bool] = option(None, help="page-locked batches (default: on for CUDA)", resumable=True)
    prefetch_factor: int = option(2, help="batches loaded ahead by each worker", range=AT_LEAST_1, resumable=True)
    synth_train: int = option(1600, help="SynthGym: training clips", range=AT_LEAST_1, features=True)
    synth_val: int = option(320, help="SynthGym: validation clips", range=AT_LEAST_1, features=True)
    synth_test: int = option(640, help="SynthGym: test clips", range=AT_LEAST_1, features=True)
    synth_size: int = option(64, help="SynthGym: side of the rendered frames, in pixels", range=Range(16),
                             features=True)
    synth_long_tail: Optional[float] = option(None, help="SynthGym: imbalance ratio of the training classes "
                                                         "(none: balanced)", range=AT_LEAST_1, features=True)
    synth_task: str = option("fine", help="SynthGym: fine (the 16 classes) | pretrain (the pretrain_* splits with "
                                          "coarse group labels)", choices=SYNTH_TASKS, features=True)
    features: Optional[str] = option(None, help="a folder written by `taggnn features`: train the head alone on "
                                                "cached features")
    seed: int = option(0, help="the data's own seed: SynthGym's content, FineGym's hold-out (train.seed never "
                               "changes the data)", range=AT_LEAST_0, features=True)
    val_split: str = option("val", help="the split used for model selection")
    test_split: str = option("test", help="evaluated once at the end")


@section(eval=False)
class ModelConfig:
    backbone: str = option("r2plus1d_tiny", help="the video backbone",
                           known=registry("taggnn.models.backbones", "list_backbones"), features=True)
    weights: Optional[str] = option(None, help="backbone weights: catalogue name, path or URL", features=True)
    freeze_backbone: bool = option(False, help="train the head alone (the backbone's weights stay fixed)")
    num_layers: int = option(2, help="Transformer layers", range=AT_LEAST_1)
    num_heads: int = option(8, help="attention heads of the Transformer (divide the token width; paper: 8)",
                            range=AT_LEAST_1)
    ffn_dim: int = option(1024, help="feed-forward width of the Transformer (paper: 1024; Table 2 sweeps "
                                     "256-2048)", range=AT_LEAST_1)
    dropout: float = option(0.1, help="dropout in the Transformer (authors: 0.5)", range=FRACTION)
    fast_cpu_dropout: bool = option(True, help="bulk-drawn dropout masks on CPU (same distribution, ~3x cheaper)")
    norm_first: bool = option(True, help="pre-norm Transformer blocks (paper); false: post-norm (authors)")
    use_transformer: bool = option(True, help="the Transformer stage (false: graph refinement of the backbone's "
                                              "tokens alone)")
    intra: bool = option(True, help="spatial edges on (Table 4's IF-FC switch; false: none, whatever "
                                    "model.graph_spatial says)")
    temporal: bool = option(True, help="temporal edges on (Table 4's TAT switch; false: none, whatever "
                                       "model.graph_temporal says)")
    graph_spatial: str = option("full", help="spatial edge family (taggnn.graph.families; full: the paper's IF-FC; "
                                             "radius:r in tokens)",
                                known=registry("taggnn.graph.families", "SPATIAL_FAMILIES"))
    graph_temporal: str = option("aligned", help="temporal edge family (taggnn.graph.families; aligned: the paper's "
                                                 "TAT)",
                                 known=registry("taggnn.graph.families", "TEMPORAL_FAMILIES"))
    graph_dynamic: Optional[str] = option(None, help="knn:k: also link each token to its k nearest tokens in "
                                                     "feature space, rebuilt every forward (backend edge_index)",
                                          known=registry("taggnn.graph.families", "DYNAMIC_FAMILIES"))
    graph_edge_attr: Optional[str] = option(None, help="edge features (offset, type or both) for convolutions with "
                                                       "edge_dim (TransformerConv, GINEConv, GATv2Conv)",
                                            known=registry("taggnn.nn.head", "EDGE_ATTR_CHOICES"))
    propagation: str = option("appnp", help="graph refinement, or the name of a torch_geometric.nn convolution",
                              known=registry("taggnn.nn.refiner", "PROPAGATIONS"))
    K: int = option(2, help="APPNP propagation steps", range=Range(0, MAX_PROPAGATION_STEPS))
    alpha: float = option(0.1, help="APPNP teleport probability", range=Range(0, 1, low_open=True))
    backend: Optional[str] = option(None, help="sparse back-end of the propagation (none: its first supported)",
                                    known=registry("taggnn.nn.refiner", "BACKENDS"))
    num_graph_layers: int = option(2, help="layers of a GCN, GAT or convolution stack",
                                   range=Range(1, MAX_PROPAGATION_STEPS))
    graph_heads: int = option(8, help="attention heads of GAT stacks", range=AT_LEAST_1)
    pre_classifier_norm: bool = option(False, help="LayerNorm before the classifier (authors)")
    head_dropout: float = option(0.0, help="dropout before the classifier", range=FRACTION)
    pos_init_std: float = option(0.02, help="std of the positional table's initialisation (authors: 1.0)",
                                 range=AT_LEAST_0)
    pos_init: str = option("trunc_normal", help="trunc_normal (ViT convention) | normal (the authors' torch.randn)",
                           choices=registry("taggnn.nn.positional", "POS_INITS"))
    bn_momentum: Optional[float] = option(None, help="override every backbone BatchNorm's momentum (authors: 0.9)",
                                          range=Range(0, 1))
    bn_eps: Optional[float] = option(None, help="override every backbone BatchNorm's eps (IG-65M port: 1e-3)",
                                     range=POSITIVE, features=True)
    embed_dim: Optional[int] = option(None, help="project backbone features to this width first (2048-ch "
                                                 "backbones)", range=AT_LEAST_1)
    layer_scale: Optional[float] = option(None, help="LayerScale init of every residual branch (0: the head "
                                                     "starts as identity)", range=AT_LEAST_0)
    readout: str = option("mean", help="pooling of the nodes (paper: mean)",
                          known=registry("taggnn.nn.readout", "READOUTS"))
    post_graph: str = option("none", help="none (paper) | ffn: residual per-node MLP after propagation",
                             known=registry("taggnn.nn.head", "POST_GRAPH"))
    edge_weights: str = option("fixed", help="fixed (paper) | learned: one positive weight per edge type",
                               known=registry("taggnn.nn.refiner", "EDGE_WEIGHTS"))
    graph_kwargs: Dict[str, Any] = option(default_factory=dict, help="extra arguments of a torch_geometric.nn "
                                                                     "convolution, e.g. {heads: 4}")
    graph_activation: str = option("relu", help="between the layers of a convolution stack",
                                   known=registry("taggnn.nn.refiner", "ACTIVATIONS"))
    graph_residual: bool = option(False, help="residual connections in a convolution stack")


@section(eval=False)
class OptimConfig:
    optimizer: str = option("adam", help="the optimiser", choices=OPTIMIZERS)
    lr: float = option(1e-3, help="learning rate (lowered on resume to continue a run that diverged)",
                       range=POSITIVE, resumable=True)
    weight_decay: float = option(0.0, help="weight decay", range=AT_LEAST_0)
    momentum: float = option(0.9, help="sgd only", range=FRACTION)
    scheduler: str = option("cosine", help="learning-rate schedule", choices=SCHEDULERS)
    schedule_unit: str = option("step", help="step: the schedule moves every step | epoch: once per epoch "
                                             "(the authors')", choices=SCHEDULE_UNITS)
    warmup_epochs: float = option(0.0, help="linear warm-up, in epochs", range=AT_LEAST_0)
    min_lr: float = option(0.0, help="the cosine schedule's last learning rate", range=AT_LEAST_0)
    label_smoothing: float = option(0.0, help="label smoothing of the cross-entropy", range=FRACTION)
    grad_clip: Optional[float] = option(None, help="max global grad norm", range=POSITIVE, resumable=True)
    accumulate: int = option(1, help="gradient accumulation steps", range=AT_LEAST_1)
    class_weights: str = option("none", help="loss weight per class", choices=CLASS_WEIGHTS)
    backbone_lr_mult: float = option(1.0, help="backbone learning rate = lr * this (the paper fine-tunes at 1e-5)",
                                     range=AT_LEAST_0)
    no_decay_norm_bias: bool = option(True, help="no weight decay on biases, norm weights, positional table, "
                                                 "LayerScale")


@section(eval=True)
class TrainConfig:
    epochs: int = option(10, help="training epochs", range=AT_LEAST_1, resumable=True)
    batch_size: int = option(16, help="clips per step and process", range=AT_LEAST_1)
    eval_batch_size: int = option(32, help="clips per evaluation batch", range=AT_LEAST_1, resumable=True)
    seed: int = option(0, help="seed of initialisation, shuffling and augmentation", range=AT_LEAST_0)
    amp: str = option("auto", help="training precision: auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off",
                      choices=AMP_MODES)
    eval_amp: str = option("off", help="evaluation precision: off (float32, every preset) | bf16 | fp16 | "
                                       "train (= amp)", choices=EVAL_AMP_MODES, resumable=True)
    device: str = option("auto", help="auto | cpu | cuda | cuda:N | mps", resumable=True)
    checkpoint_every_steps: int = option(0, help="also checkpoint every N optimiser steps (0: per epoch only)",
                                         range=AT_LEAST_0, resumable=True)
    eval_every: int = option(1, help="epochs between validation passes", range=AT_LEAST_1)
    log_every: int = option(10, help="steps between JSON-lines log records", range=AT_LEAST_1, resumable=True)
    deterministic: bool = option(False, help="torch.use_deterministic_algorithms (exact resume on CPU)")
    mca: str = option("present", help="mean class accuracy over the classes in the ground truth (present) or "
                                      "in ground truth or predictions (union, mmaction2)",
                      choices=registry("taggnn.engine.metrics", "MCA_CONVENTIONS"))
    max_steps: Optional[int] = option(None, help="stop (with a checkpoint) after this many steps: for tests",
                                      range=AT_LEAST_1, resumable=True)
    compile: bool = option(False, help="torch.compile the model for training", resumable=True)
    export_backbone: bool = option(False, help="also write the best model's backbone weights as backbone.pt "
                                               "(pretraining)")
    loggers: List[str] = option(default_factory=lambda: ["jsonl"], help="metric loggers (jsonl always)",
                                known=registry("taggnn.engine.loggers", "LOGGERS"), resumable=True)


@section(eval=True)
class EvalConfig:
    num_clips: int = option(1, help="temporal views per video at evenly spaced offsets (the paper: 1)",
                            range=AT_LEAST_1, resumable=True)
    num_crops: int = option(1, help="1: centre crop (the paper) | 3: three crops along the long side",
                            range=Range(1, 3), choices=registry("taggnn.data.constants", "CROP_COUNTS"), resumable=True)
    average: str = option("prob", help="combine the views' scores: prob (mean softmax) | logits (mean logit)",
                          choices=VIEW_AVERAGES, resumable=True)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str = option("run", help="the run's name (its folder: runs/<name>)", resumable=True, eval=True)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any], *, source: str = "config") -> "Config":
        config = cls()
        apply_mapping(config, values, source=source)
        return validate(config)

    def diff(self, other: "Config") -> List[str]:
        """``key: ours -> theirs`` for every value that differs."""
        a, b = flatten(self.to_dict()), flatten(other.to_dict())
        return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


SECTIONS = ("data", "model", "optim", "train", "eval")


def config_fields() -> Dict[str, dataclasses.Field]:
    """Every config key (``section.key``, and ``name``) with its dataclass field, in declaration order."""
    keys: Dict[str, dataclasses.Field] = {}
    for outer in fields(Config):
        if outer.name in SECTIONS:
            keys.update({f"{outer.name}.{f.name}": f for f in fields(outer.default_factory)})
        else:
            keys[outer.name] = outer
    return keys


def choices_of(key: str) -> Optional[Tuple[Any, ...]]:
    """The values :func:`validate` allows for ``key`` (None: any of its type within its range)."""
    choices = config_fields()[key].metadata.get("choices")
    return choices() if isinstance(choices, registry) else (tuple(choices) if choices is not None else None)


def listed_values(key: str) -> Optional[Tuple[Any, ...]]:
    """The values of ``key`` to list in help texts: its choices, or the names its owning module knows."""
    info = config_fields()[key].metadata
    if info.get("choices") is not None:
        return choices_of(key)
    known = info.get("known")
    if known is None:
        return None
    try:
        return known()
    except ImportError:  # an optional module: its check says what to install
        return None


def _keys_where(flag: str) -> Tuple[str, ...]:
    return tuple(key for key, f in config_fields().items() if f.metadata.get(flag))


#: The allowed range of every numeric option (``None`` values, where a key is optional, skip the check).
RANGES: Dict[str, Range] = {key: f.metadata["range"] for key, f in config_fields().items()
                            if f.metadata.get("range") is not None}
#: Keys that may change between a run and its resumption without changing what is computed
#: (a lower ``optim.lr`` and a gradient clip may be set to continue a run that diverged).
RESUMABLE_KEYS = frozenset(_keys_where("resumable"))
#: Settings that determine the cached backbone features (``taggnn features``).
FEATURE_KEYS = _keys_where("features")
#: Keys ``taggnn eval`` / ``predict`` may change with ``--set`` (the model of a checkpoint stays).
EVAL_KEYS = frozenset(_keys_where("eval"))


def _choices() -> Dict[str, Tuple[Any, ...]]:
    """Valid values of every option with choices, taken from the metadata (and the modules that own them)."""
    return {key: choices_of(key) for key, f in config_fields().items() if f.metadata.get("choices") is not None}


#: Config keys renamed since a release: ``{old: new}``. An old key in a config file, a checkpoint's
#: config or ``--set`` is read as the new one, with a deprecation note in the log.
RENAMED_KEYS: Dict[str, str] = {}


def migrate_key(key: str, *, source: str = "config") -> str:
    """The current name of config key ``key`` (itself unless :data:`RENAMED_KEYS` renamed it)."""
    seen = set()
    while key in RENAMED_KEYS and key not in seen:
        seen.add(key)
        new = RENAMED_KEYS[key]
        logger.warning("%s: config key %r is deprecated, read as %r (rename it)", source, key, new)
        key = new
    return key


def describe_keys(keys) -> str:
    """``keys`` in words, a whole section as ``section.*`` (e.g. ``data.*, train.*, eval.*, name``)."""
    keys, parts = set(keys), []
    for section_name in SECTIONS:
        members = [key for key in config_fields() if key.startswith(section_name + ".")]
        if set(members) <= keys:
            parts.append(f"{section_name}.*")
        else:
            parts.extend(key for key in members if key in keys)
    return ", ".join(parts + (["name"] if "name" in keys else []))


def docs_table() -> str:
    """``taggnn/configs/KEYS.md``: a Markdown table of every config key with its default, range or choices,
    whether it may change on resume / changes cached features / may change at evaluation, and its help."""
    rows = ["# Config keys", "",
            "Generated from the config's field metadata (`taggnn/engine/config.py`) by "
            "`taggnn config table > taggnn/configs/KEYS.md`; a test keeps this file current. `resume`: may change "
            "on `--resume`; `features`: one of the settings of cached features (`taggnn features`); `eval`: may "
            "change in `taggnn eval` / `predict`.", "",
            "| key | default | allowed | resume | features | eval | help |", "|---|---|---|---|---|---|---|"]
    for key, f in config_fields().items():
        rows.append(f"| `{key}` | `{field_default(f)!r}` | {allowed_text(key) or ''} | "
                    f"{'yes' if f.metadata['resumable'] else ''} | {'yes' if f.metadata['features'] else ''} | "
                    f"{'yes' if f.metadata['eval'] else ''} | {f.metadata['help']} |")
    return "\n".join(rows) + "\n"


def field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def allowed_text(key: str) -> Optional[str]:
    """What ``key`` allows, in words: its range, its choices or the names its module knows."""
    info = config_fields()[key].metadata
    if info.get("range") is not None:
        return str(info["range"])
    values = listed_values(key)
    if values is None:
        return None
    return ("one of " if info.get("choices") is not None else "e.g. ") + ", ".join(map(str, values))


def validate(config: "Config") -> "Config":
    """Checks ``config`` before any work starts; raises :class:`ConfigError` naming the key, the
    value and what is allowed. Called whenever a config is built.

    Three stages, each run only when the one before found nothing:

    1. every value against its range or choices, and the values that constrain each other
       (the class counts and splits of the dataset, the device name, the arguments of a
       graph convolution, ...);
    2. the memory the run allocates at least (a batch of clips, the head's parameters)
       against the machine's memory (:func:`minimum_memory`);
    3. the model, built on the ``meta`` device (no memory, no weights read): the backbone
       must take clips of ``data.num_frames`` x ``data.crop_size``, ``model.num_heads`` must
       divide the token width, and every option of the head must be accepted
       (:func:`check_model_build`, cached per model).
    """
    flat = flatten(config.to_dict())
    problems = [f"{key}={value!r} is out of range (allowed: a finite number"
                + (f" in {RANGES[key]})" if key in RANGES else ")") for key, value in flat.items()
                if isinstance(value, float) and not math.isfinite(value)]
    name = str(config.name)
    if name in ("", ".", "..") or any(separator in name for separator in ("/", "\\", os.sep)):
        problems.append(f"name={name!r} is not a plain folder name (runs/<name> must stay inside runs/): "
                        f"give a name without '/', '\\' or '..', or choose the folder with --out")
    for key, allowed in RANGES.items():
        value = flat[key]
        if value is not None and value not in allowed and not (isinstance(value, float) and not math.isfinite(value)):
            problems.append(f"{key}={value!r} is out of range (allowed: {allowed})")
    for key, choices in _choices().items():
        if flat[key] not in choices:
            problems.append(f"{key}={flat[key]!r} is not one of {', '.join(map(str, choices))}")
    unknown_loggers = [name for name in config.train.loggers if name not in LOGGERS]
    if unknown_loggers:
        problems.append(f"train.loggers: {', '.join(map(repr, unknown_loggers))} is not one of {', '.join(LOGGERS)}")
    try:
        check_model_options(config.model)
    except ValueError as error:
        problems.append(str(error))
    o, d = config.optim, config.data
    if o.min_lr > o.lr:
        problems.append(f"optim.min_lr={o.min_lr!r} exceeds optim.lr={o.lr!r}")
    if d.short_side is not None and d.short_side < d.crop_size:
        problems.append(f"data.short_side={d.short_side} is smaller than data.crop_size={d.crop_size}")
    if not is_device_name(config.train.device):
        problems.append(f"train.device={config.train.device!r} is not a device ({DEVICE_NAMES})")
    problems += dataset_problems(config)
    problems += _model_problems(config)
    if problems:
        raise ConfigError("; ".join(problems))
    channels = _input_channels(config)
    check_memory(config, channels)
    check_model_build(config)
    return config


def check_installed(config: "Config") -> "Config":
    """Raises :class:`ConfigError` when ``config`` asks for an optional package that is not
    installed (a backend of ``train.loggers``, ``data.decoder=torchcodec``), naming the extra
    to install. :func:`load_config` calls it, before any work; ``Config.from_dict`` does not,
    so that a checkpoint stays loadable where its run's loggers are not installed."""
    check_loggers(config.train.loggers)
    check_decoder(config.data.decoder)
    return config


DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"


def is_device_name(name: str) -> bool:
    """Whether ``name`` is ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (N = 0, 1, ...) or ``mps``."""
    kind, colon, index = str(name).partition(":")
    if name == "auto" or (not colon and kind in ("cpu", "cuda", "mps")):
        return True
    return kind == "cuda" and index.isdigit()


def _model_problems(config: "Config") -> List[str]:
    """The backbone's name and the arguments of a ``torch_geometric.nn`` convolution."""
    m, problems = config.model, []
    if m.backbone not in list_backbones():
        problems.append(f"model.backbone={m.backbone!r} is not a registered backbone; choose one of "
                        f"{', '.join(list_backbones())}")
    conv = None if m.propagation in PROPAGATIONS else pyg_conv_class(m.propagation)
    if m.graph_kwargs and conv is None and m.propagation in PROPAGATIONS:
        problems.append(f"model.graph_kwargs={m.graph_kwargs!r} are arguments of a torch_geometric.nn convolution, "
                        f"but model.propagation={m.propagation!r} takes none: name a convolution class "
                        f"(e.g. model.propagation=GATv2Conv) or drop model.graph_kwargs")
    elif m.graph_kwargs and conv is not None:
        accepted = conv_arguments(conv)
        unknown = [key for key in m.graph_kwargs if key not in accepted]
        if unknown:
            problems.append(f"model.graph_kwargs: {conv.__name__} takes no argument {', '.join(map(repr, unknown))}; "
                            f"its arguments: {', '.join(accepted)}")
    return problems


def _input_channels(config: "Config") -> Optional[int]:
    """The width of the features the head takes: the backbone's channels (from a build on the
    ``meta`` device), or those recorded in ``data.features`` (None when not readable)."""
    if config.data.features is not None:
        info = _features_info(config.data.features)
        return None if info is None else int(info["channels"])
    return _backbone_channels(config.model.backbone)


def _features_info(folder: str) -> Optional[Dict[str, Any]]:
    path = Path(folder) / "info.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):  # the run itself says what is missing
        return None
    return info if isinstance(info, dict) and {"channels", "grid"} <= set(info) else None


_META_BACKBONES: Dict[str, Any] = {}


def _meta_backbone(name: str):
    """The backbone ``name`` built on the ``meta`` device (cached; None when a builder cannot
    run there). A missing optional package is a :class:`ConfigError`."""
    if name not in _META_BACKBONES:
        try:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                _META_BACKBONES[name] = build_backbone(name)
        except ImportError as error:
            raise ConfigError(f"model.backbone={name!r}: {error}") from None
        except Exception as error:  # a limit of the meta device, not of the config: the real build decides
            logger.debug("meta-device build of backbone %r skipped: %s", name, error)
            _META_BACKBONES[name] = None
    return _META_BACKBONES[name]


_GRIDS: Dict[Tuple[str, int, int], Union[Tuple[int, ...], str]] = {}


def _token_grid(name: str, num_frames: int, crop_size: int) -> Union[Tuple[int, ...], str]:
    """The backbone's token grid for clips of this size, or why it cannot take them (cached)."""
    key = (name, num_frames, crop_size)
    if key not in _GRIDS:
        try:
            _GRIDS[key] = tuple(_meta_backbone(name).feature_grid(num_frames, crop_size, crop_size))
        except ValueError as error:
            _GRIDS[key] = str(error)
    return _GRIDS[key]


def _backbone_channels(name: str) -> Optional[int]:
    backbone = _meta_backbone(name)
    return None if backbone is None else int(backbone.out_channels)


def minimum_memory(config: "Config", channels: Optional[int]) -> Dict[str, int]:
    """Lower bounds, in bytes of float32, of what a run of ``config`` allocates, by part: a
    batch of clips (training, or evaluation with every view), one rendered SynthGym clip, and
    the head's parameters (``channels``: the backbone's width; None skips them).

    The head's parameters are :math:`L (4C^2 + 2 C F)` for ``L`` Transformer layers of width
    ``C`` and feed-forward width ``F``, plus the post-graph MLP (:math:`2CF`) and GCN / GAT
    layers (:math:`C^2` each); biases, norms, the positional table and the classifier are left
    out, so the sum never exceeds what the run really needs.
    """
    m, d, t, e = config.model, config.data, config.train, config.eval
    parts: Dict[str, int] = {}
    if d.features is None:
        clips = max(t.batch_size, t.eval_batch_size * e.num_clips * e.num_crops)
        parts[f"a batch of {clips} clips of 3 x {d.num_frames} x {d.crop_size} x {d.crop_size} "
              f"(train.batch_size, train.eval_batch_size x eval views, data.num_frames, data.crop_size)"] = \
            4 * clips * 3 * d.num_frames * d.crop_size ** 2
        if d.dataset == "synthgym":
            parts[f"one SynthGym clip of {d.num_frames} x {d.synth_size} x {d.synth_size} x 3 being rendered "
                  f"(data.synth_size)"] = 4 * d.num_frames * d.synth_size ** 2 * 3
    if channels is not None:
        width, floats = m.embed_dim or channels, 0
        if m.use_transformer:
            floats += m.num_layers * (4 * width ** 2 + 2 * width * m.ffn_dim)
        if m.post_graph == "ffn":
            floats += 2 * width * m.ffn_dim
        if m.propagation in ("gcn", "gat"):
            floats += m.num_graph_layers * width ** 2
        parts[f"the TAG-Head's parameters (model.num_layers={m.num_layers} x (4 x {width}^2 + 2 x {width} x "
              f"model.ffn_dim={m.ffn_dim}) floats and more)"] = 4 * floats
    return parts


def check_memory(config: "Config", channels: Optional[int]) -> None:
    """Refuses a config whose run would allocate more than this machine has
    (:func:`minimum_memory` against :func:`machine_memory`), naming the sizes."""
    parts = minimum_memory(config, channels)
    total, available = sum(parts.values()), machine_memory()
    if total > available:
        detail = "; ".join(f"{name}: {format_bytes(size)}" for name, size in parts.items() if size >= total / 100)
        raise ConfigError(f"this run would allocate at least {format_bytes(total)} ({detail}), more than the "
                          f"{format_bytes(available)} of memory of this machine; lower the sizes named")


_BUILD_PROBLEMS: Dict[str, Optional[str]] = {}


def check_model_build(config: "Config") -> None:
    """Builds the model of ``config`` on the ``meta`` device (shapes only: no memory, no
    weights read, the global random state untouched) and turns any refusal of a value into a
    :class:`ConfigError` naming the keys. Cached per model configuration."""
    d = config.data
    key = json.dumps([asdict(config.model), d.num_frames, d.crop_size, d.num_classes, d.features],
                     sort_keys=True, default=str)
    if key not in _BUILD_PROBLEMS:
        _BUILD_PROBLEMS[key] = _model_build_problem(config)
    if _BUILD_PROBLEMS[key] is not None:
        raise ConfigError(_BUILD_PROBLEMS[key])


def _model_build_problem(config: "Config") -> Optional[str]:
    m, d = config.model, config.data
    if d.features is None:
        backbone = _meta_backbone(m.backbone)
        if backbone is None:
            return None
        clip = f"clips of data.num_frames={d.num_frames} x data.crop_size={d.crop_size}"
        grid = _token_grid(m.backbone, d.num_frames, d.crop_size)
        if isinstance(grid, str):
            return f"{clip} are too small for model.backbone={m.backbone!r} ({grid}); use longer clips or larger crops"
        if min(grid) < 1:
            return f"{clip} give model.backbone={m.backbone!r} an empty token grid {tuple(grid)}; use longer clips"
        channels = int(backbone.out_channels)
        source = f"the channels of model.backbone={m.backbone!r}"
    else:
        info = _features_info(d.features)
        if info is None:  # the run says what is missing
            return None
        channels, grid = int(info["channels"]), tuple(info["grid"])
        source = f"the channels of the features in {d.features}"
    width = m.embed_dim or channels
    source = "model.embed_dim" if m.embed_dim else source
    for key, heads, used in (("model.num_heads", m.num_heads, m.use_transformer),
                             ("model.graph_heads", m.graph_heads, m.propagation == "gat")):
        if used and width % heads:
            divisors = ", ".join(str(h) for h in range(1, min(width, 64) + 1) if width % h == 0)
            return (f"{key}={heads} does not divide the token width {width} ({source}): each head takes "
                    f"width/heads channels; use one of {divisors}")
    try:  # the head on the backbone's token grid (the backbone itself was built above)
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            TAGHead(channels, d.num_classes, grid, **head_options(m))
    except (ValueError, TypeError, TaggnnError) as error:
        return f"the model of this config cannot be built: {error}"
    except Exception as error:  # a limit of the meta device, not of the config: the real build decides
        logger.debug("meta-device build check skipped: %s", error)
    return None


def flatten(values: Dict[str, Any]) -> Dict[str, Any]:
    """``{"section.key": value}`` of a config dict (mapping-valued keys stay whole)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{sub_key}": sub_value for sub_key, sub_value in value.items()})
        else:
            flat[key] = value
    return flat


def valid_keys() -> List[str]:
    return sorted(flatten(Config().to_dict()))


def _coerce(key: str, value: Any, annotation) -> Any:
    """Checks/converts ``value`` for a field annotated ``annotation`` (str, int, float, bool, Optional)."""
    origin = typing.get_origin(annotation)
    if origin is Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(key, value, args[0])
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key} expects true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} expects an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} expects a number, got {value!r}") from None
    if typing.get_origin(annotation) in (dict, Dict) or annotation in (dict, Dict):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else {}
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key} expects a mapping like {{heads: 4}}, got {value!r}")
        return dict(value)
    if typing.get_origin(annotation) in (list, List):  # a list of strings: [a, b], "a,b" or "a"
        if value is None:
            return []
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{key} expects a list of names like [a, b], got {value!r}")
        return list(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} expects a string, got {value!r}")
        value = str(value)
        return value
    raise ConfigError(f"{key}: unsupported type {annotation}")  # pragma: no cover


def _field_type(config: Config, key: str, source: str):
    """The annotation of config field ``key`` (``section.field``); unknown keys raise."""
    section_name, _, field_name = key.partition(".")
    section = getattr(config, section_name, None) if field_name else None
    if section is None or not dataclasses.is_dataclass(section) or field_name not in {f.name for f in fields(section)}:
        raise ConfigError(f"{source}: unknown config key {key!r}; valid keys: {', '.join(valid_keys())}")
    return typing.get_type_hints(type(section))[field_name]


def _is_text_field(annotation) -> bool:
    """Whether a field holds a string (``str`` or ``Optional[str]``)."""
    if typing.get_origin(annotation) is Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return len(args) == 1 and args[0] is str
    return annotation is str


def set_value(config: Config, key: str, value: Any, *, source: str = "--set") -> None:
    """Sets ``key`` to a Python ``value``, checked and converted for the field's type."""
    if key == "name" and not isinstance(value, dict):
        config.name = str(value)
        return
    key = migrate_key(key, source=source)
    annotation = _field_type(config, key, source)
    section_name, _, field_name = key.partition(".")
    setattr(getattr(config, section_name), field_name, _coerce(key, value, annotation))


def parse_text(key: str, text: str, annotation) -> Any:
    """The value of the text ``text`` (e.g. of ``--set key=text``) for a field annotated ``annotation``.

    The one reader of a value given as text: ``--set`` (of ``train``, ``train --resume``, ``eval``,
    ``predict``, ``features``, ``profile``) and the scalars of config files all go through it.

    * An empty text (``--set key=``) means "no value": ``None`` for an optional key, an empty list
      or mapping for a list or mapping key, the empty string for a string key (which its check
      then judges), and an error for a number or a boolean.
    * ``none`` / ``null`` (any case) clear an optional key.
    * String keys keep the text as written: ``0777``, ``010``, ``12:30``, ``~`` or ``yes`` stay
      those strings (YAML would read them as numbers, a time, null or a boolean); a quoted text
      (``'...'`` or ``"..."``) is unquoted.
    * Other keys read the text as YAML (``1e-3``, ``true``, ``{heads: 4}``), then it is checked
      as a value of the field's type.
    """
    stripped = text.strip()
    optional = typing.get_origin(annotation) is Union and type(None) in typing.get_args(annotation)
    if optional and stripped.lower() in ("", "none", "null"):
        return None
    if _is_text_field(annotation):
        quoted = len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\""
        if quoted:
            try:
                value = yaml.safe_load(stripped)
            except yaml.YAMLError as error:
                raise ConfigError(f"{key}: cannot read the quoted text {stripped!r} ({error})") from None
            if isinstance(value, str):
                return value
        return stripped
    if not stripped:
        return _coerce(key, "", annotation)
    inner = [a for a in typing.get_args(annotation) if a is not type(None)] if optional else [annotation]
    if inner and inner[0] in (int, float):
        try:
            return inner[0](stripped)  # 010 is 10 and 1e-3 a number, whatever YAML 1.1 says
        except ValueError:
            pass
    try:
        value = yaml.safe_load(stripped)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{key}: the value {text!r} is not valid YAML ({problem}); close its brackets and "
                          f"quotes, or quote the whole value") from None
    return _coerce(key, value, annotation)


def apply_override(config: Config, item: str, *, source: str = "--set") -> None:
    """Applies one ``key=value`` override, reading the value as :func:`parse_text` does (an old
    key name of :data:`RENAMED_KEYS` is read as its new one)."""
    if "=" not in item:
        raise ConfigError(f"{source} expects key=value, got {item!r}")
    key, text = item.split("=", 1)
    key = migrate_key(key.strip(), source=source)
    if key == "name":
        config.name = text.strip()
        return
    annotation = _field_type(config, key, source)
    section_name, _, field_name = key.partition(".")
    setattr(getattr(config, section_name), field_name, parse_text(f"{source} {key}", text, annotation))


def check_overrides(overrides: Sequence[str], *, source: str = "--set") -> None:
    """Reads every ``key=value`` of ``overrides`` (into a default config) before any work, so that
    an unknown key or an unreadable value is refused first, naming the key."""
    config = Config()
    for item in overrides:
        apply_override(config, item, source=source)


def apply_mapping(config: Config, values: Dict[str, Any], *, source: str,
                  text: Optional[Dict[str, Any]] = None) -> None:
    """Applies ``{section: {key: value}}``. ``text`` is the same YAML document read with every
    plain scalar as its text (:func:`read_yaml_text`): where YAML made a number, a boolean or a
    time of a scalar, the text is read as ``--set`` reads it (:func:`parse_text`), so string
    fields keep it as written (``root: 0777`` is ``'0777'``) and ``010`` is 10 everywhere."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(values).__name__}")
    text = text if isinstance(text, dict) else {}
    for key, value in values.items():
        if key in ("base", "description", "authors"):
            continue
        raw = text.get(key) if isinstance(key, str) else None
        if key == "name":
            config.name = str(raw if isinstance(raw, str) and not isinstance(value, str) and value is not None
                              else value)
        elif isinstance(value, dict):
            raw = raw if isinstance(raw, dict) else {}
            for sub_key, sub_value in value.items():
                full_key = migrate_key(f"{key}.{sub_key}", source=source)
                sub_raw = raw.get(sub_key) if isinstance(sub_key, str) else None
                if isinstance(sub_value, (bool, int, float)) and isinstance(sub_raw, str):
                    sub_value = parse_text(full_key, sub_raw, _field_type(config, full_key, source))
                set_value(config, full_key, sub_value, source=source)
        else:
            set_value(config, key, value, source=source)


class _TextLoader(yaml.SafeLoader):
    """A YAML loader that reads every plain scalar as its text (no numbers, booleans or nulls)."""


_TextLoader.yaml_implicit_resolvers = {}


def read_yaml_text(text: str) -> Any:
    """``text`` as YAML with every scalar kept as written (the twin of ``yaml.safe_load``)."""
    return yaml.load(text, Loader=_TextLoader)


def list_presets() -> List[str]:
    folder = resources.files("taggnn") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str) -> Tuple[Dict[str, Any], Dict[str, Any], str]:
    """A config file's values, the same document with its scalars as written, and its name."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text, source = path.read_text(), str(path)
    else:
        resource = resources.files("taggnn") / "configs" / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ConfigError(f"unknown config {name_or_path!r}: not a YAML file, and not a preset "
                              f"(presets: {', '.join(list_presets())})")
        text, source = resource.read_text(), f"preset {name_or_path}"
    try:
        values = yaml.safe_load(text) or {}
        as_written = read_yaml_text(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: invalid YAML ({error})") from error
    return values, as_written, source


def load_config(name_or_path: str = "synthgym_tiny", overrides: Sequence[str] = ()) -> Config:
    """A preset name or YAML file, then ``key=value`` overrides (dotted keys; each value is read
    for its field's type by :func:`parse_text`: string fields keep the text as written)."""
    chain, seen = [], set()
    current: Optional[str] = name_or_path
    while current is not None:
        if current in seen:
            raise ConfigError(f"config {name_or_path!r}: 'base' chain loops at {current!r}")
        seen.add(current)
        values, as_written, source = _read_yaml(current)
        chain.append((values, as_written, source))
        current = values.get("base") if isinstance(values, dict) else None
    config = Config()
    for values, as_written, source in reversed(chain):
        if values.get("authors") is not None:  # the authors' setup of a dataset, from its one table

            try:
                setup = authors_setup(str(values["authors"]))
            except ValueError as error:
                raise ConfigError(f"{source}: authors: {error}") from None
            for key, value in setup.items():
                set_value(config, key, value, source=f"{source} (the authors' setup)")
        apply_mapping(config, values, source=source, text=as_written)
    for item in overrides:
        apply_override(config, item, source="--set")
    return check_normalization(check_installed(validate(config)))


def weights_normalization(config: "Config") -> Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]:
    """The input mean and std ``model.weights`` were trained with, when it names an entry of the
    backbone's weights catalogue (None for a path, a URL or no weights)."""
    m = config.model
    if m.weights is None or config.data.features is not None:
        return None
    backbone = _meta_backbone(m.backbone)
    entry = None if backbone is None else backbone.weights_catalogue().get(m.weights)
    return None if entry is None else (tuple(entry.mean), tuple(entry.std))


def check_normalization(config: "Config") -> "Config":
    """Raises :class:`ConfigError` when ``data.normalization`` is not the normalisation the
    catalogue entry ``model.weights`` was trained with (unless ``data.keep_normalization``).
    :func:`load_config` calls it, before any work; ``Config.from_dict`` does not, so that a
    checkpoint of a run made before this check stays loadable."""
    expected = weights_normalization(config)
    d = config.data
    if expected is None or d.keep_normalization:
        return config
    given = NORMALIZATIONS[d.normalization]
    if all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip((*given[0], *given[1]), (*expected[0], *expected[1]))):
        return config
    fitting = [name for name, (mean, std) in NORMALIZATIONS.items()
               if all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip((*mean, *std), (*expected[0], *expected[1])))]
    advice = f"set data.normalization={fitting[0]}" if fitting else "give data.normalization of those statistics"
    raise ConfigError(f"data.normalization={d.normalization!r} (mean {given[0]}, std {given[1]}) is not the "
                      f"normalisation model.weights={config.model.weights!r} of model.backbone="
                      f"{config.model.backbone!r} was trained with (mean {expected[0]}, std {expected[1]}): "
                      f"{advice}, or data.keep_normalization=true to keep it on purpose")
