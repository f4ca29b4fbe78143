"""Typed run configuration: dataclasses, YAML presets, ``--set key=value`` overrides.

A config has four sections: ``data``, ``model``, ``optim`` and ``train``. Presets live in
``taggnn/configs/*.yaml`` (a preset may name a ``base:`` preset it overrides). Every key is
checked: an unknown key or a value of the wrong type is rejected with the list of valid keys.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import typing
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import yaml

from ..data.constants import NORMALIZATIONS, STYLES
from ..data.datasets import CSV_LAYOUTS
from ..data.decoders import DECODERS, check_decoder
from ..data.registry import DATASET_NAMES, dataset_problems
from ..data.video import SAMPLINGS
from ..errors import ConfigError, TaggnnError  # noqa: F401  (ConfigError re-exported)
from ..models.backbones import build_backbone, list_backbones
from ..models.tagnet import head_options
from ..nn import TAGHead
from ..nn.options import check_model_options
from ..nn.refiner import PROPAGATIONS, conv_arguments, pyg_conv_class
from ..utils.memory import MEMORY_CEILING, format_bytes, machine_memory  # noqa: F401  (re-exported)
from .loggers import LOGGERS, check_loggers

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    dataset: str = "synthgym"  # synthgym | finegym | haa500 | csv | folder
    root: Optional[str] = None  # dataset root (finegym, haa500, folder) or video root (csv)
    train_csv: Optional[str] = None  # csv: split files
    val_csv: Optional[str] = None
    test_csv: Optional[str] = None
    csv_layout: str = "flat"  # csv: videos at <root>/<FileName> (flat) or <root>/<Class>/<FileName> (authors)
    num_classes: int = 16  # finegym: 99 or 288; synthgym: 4/8/12/16
    version: str = "v1.1"  # finegym training split version
    holdout: float = 0.0  # finegym: fraction of each training class held out as split "holdout"
    holdout_min_clips: int = 10  # finegym: classes with fewer training clips hold out none
    num_frames: int = 16
    crop_size: int = 64
    short_side: Optional[int] = None  # default: crop * 126/112 (paper) or * 128/112 (authors)
    transform_style: str = "paper"  # paper | authors
    normalization: str = "slowfast"  # ig65m | kinetics | slowfast | imagenet
    flip: bool = True  # random horizontal flip when training (SynthGym: off, it swaps cw/ccw)
    sampling: str = "uniform"  # test-time frame sampling: uniform | linspace
    train_sampling: str = "random"  # uniform | random | linspace
    on_error: str = "raise"  # raise | skip
    num_workers: int = 0
    decode_threads: int = 0  # PyAV decoding threads per worker (0: FFmpeg's automatic choice)
    decoder: str = "pyav"  # pyav | torchcodec (extra torchcodec, needs FFmpeg's shared libraries)
    sampler: str = "random"  # random | balanced (classes equally likely) | sqrt (P ~ n_c^-1/2)
    persistent_workers: bool = False  # keep DataLoader workers alive between epochs
    pin_memory: Optional[bool] = None  # page-locked batches (default: on for CUDA)
    prefetch_factor: int = 2  # batches loaded ahead by each worker
    synth_train: int = 1600  # SynthGym split sizes
    synth_val: int = 320
    synth_test: int = 640
    synth_size: int = 64
    synth_long_tail: Optional[float] = None
    synth_task: str = "fine"  # fine: the 16 classes | pretrain: the pretrain_* splits with coarse (group) labels
    features: Optional[str] = None  # a folder written by `taggnn features`: train the head alone on cached features
    seed: int = 0  # the data's own seed: SynthGym's content, FineGym's hold-out (train.seed never changes the data)
    val_split: str = "val"  # the split used for model selection
    test_split: str = "test"  # evaluated once at the end


@dataclass
class ModelConfig:
    backbone: str = "r2plus1d_tiny"
    weights: Optional[str] = None  # backbone weights: catalogue name, path or URL
    freeze_backbone: bool = False
    num_layers: int = 2
    num_heads: int = 4
    ffn_dim: int = 256
    dropout: float = 0.1
    fast_cpu_dropout: bool = True  # bulk-drawn dropout masks on CPU (same distribution, ~3x cheaper)
    norm_first: bool = True
    use_transformer: bool = True
    intra: bool = True
    temporal: bool = True
    propagation: str = "appnp"
    K: int = 2
    alpha: float = 0.1
    backend: Optional[str] = None
    num_graph_layers: int = 2
    graph_heads: int = 8  # attention heads of GAT stacks
    pre_classifier_norm: bool = False
    head_dropout: float = 0.0
    pos_init_std: float = 0.02
    pos_init: str = "trunc_normal"  # trunc_normal (ViT convention) | normal (the authors' torch.randn)
    bn_momentum: Optional[float] = None  # override every backbone BatchNorm's momentum (authors: 0.9)
    bn_eps: Optional[float] = None  # override every backbone BatchNorm's eps (IG-65M port: 1e-3)
    embed_dim: Optional[int] = None  # project backbone features to this width first (2048-ch backbones)
    layer_scale: Optional[float] = None  # LayerScale init of every residual branch (0: the head starts as identity)
    readout: str = "mean"  # mean (paper) | max | softmax | powermean | attention | set2set
    post_graph: str = "none"  # none (paper) | ffn: residual per-node MLP after propagation
    edge_weights: str = "fixed"  # fixed (paper) | learned: one positive weight per edge type
    graph_kwargs: Dict[str, Any] = field(default_factory=dict)  # extra arguments of a torch_geometric.nn conv
    graph_activation: str = "relu"  # between the layers of a conv stack: relu | elu | gelu | none
    graph_residual: bool = False  # residual connections in a conv stack


@dataclass
class OptimConfig:
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    scheduler: str = "cosine"  # cosine | constant
    schedule_unit: str = "step"  # step: the schedule moves every step | epoch: once per epoch (the authors')
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: Optional[float] = None  # max global grad norm
    accumulate: int = 1  # gradient accumulation steps
    class_weights: str = "none"  # none | inverse | effective_number (loss weight per class)
    backbone_lr_mult: float = 1.0  # backbone learning rate = lr * this (the paper fine-tunes at 1e-5)
    no_decay_norm_bias: bool = True  # no weight decay on biases, norm weights, positional table, LayerScale


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 16
    eval_batch_size: int = 32
    seed: int = 0
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    eval_amp: str = "off"  # evaluation precision: off (float32, every preset) | bf16 | fp16 | train (= amp)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    checkpoint_every_steps: int = 0  # also checkpoint every N optimiser steps (0: per epoch only)
    eval_every: int = 1  # epochs between validation passes
    log_every: int = 10  # steps between JSON-lines log records
    deterministic: bool = False  # torch.use_deterministic_algorithms (exact resume on CPU)
    mca: str = "present"  # mean class accuracy over classes in the ground truth | union (mmaction2)
    max_steps: Optional[int] = None  # stop (with a checkpoint) after this many steps: for tests
    compile: bool = False  # torch.compile the model for training
    export_backbone: bool = False  # also write the best model's backbone weights as backbone.pt (pretraining)
    loggers: List[str] = field(default_factory=lambda: ["jsonl"])  # jsonl (always) csv tensorboard wandb mlflow


@dataclass
class EvalConfig:
    num_clips: int = 1  # temporal views per video at evenly spaced offsets (the paper: 1)
    num_crops: int = 1  # 1: centre crop (the paper) | 3: three crops along the long side
    average: str = "prob"  # combine the views' scores: prob (mean softmax) | logits (mean logit)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str = "run"

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


def _choices() -> Dict[str, Tuple[str, ...]]:
    """Valid values of every string option, taken from the modules that own them."""
    return {
        "data.dataset": DATASETS,
        "data.transform_style": STYLES,
        "data.normalization": tuple(NORMALIZATIONS),
        "data.sampling": SAMPLINGS,
        "data.train_sampling": SAMPLINGS,
        "data.on_error": ON_ERROR,
        "data.csv_layout": CSV_LAYOUTS,
        "data.sampler": ("random", "balanced", "sqrt"),
        "optim.class_weights": ("none", "inverse", "effective_number"),
        "data.synth_task": SYNTH_TASKS,
        "optim.optimizer": OPTIMIZERS,
        "optim.scheduler": SCHEDULERS,
        "optim.schedule_unit": ("step", "epoch"),
        "train.eval_amp": ("off", "bf16", "fp16", "train"),
        "model.pos_init": ("trunc_normal", "normal"),
        "train.amp": AMP_MODES,
        "train.mca": MCA_CONVENTIONS,
        "eval.average": ("prob", "logits"),
        "data.decoder": DECODERS,
    }


DATASETS = DATASET_NAMES  # the registered datasets (taggnn.data.registry), live
ON_ERROR = ("raise", "skip")
SYNTH_TASKS = ("fine", "pretrain")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "off")
MCA_CONVENTIONS = ("present", "union")


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

#: The allowed range of every numeric option (``None`` values, where a key is optional, skip the check).
RANGES: Dict[str, Range] = {
    "data.num_classes": AT_LEAST_1,
    "data.holdout": FRACTION,
    "data.holdout_min_clips": AT_LEAST_1,
    "data.num_frames": AT_LEAST_1,
    "data.crop_size": AT_LEAST_1,
    "data.short_side": AT_LEAST_1,
    "data.num_workers": AT_LEAST_0,
    "data.decode_threads": AT_LEAST_0,
    "data.prefetch_factor": AT_LEAST_1,
    "data.synth_train": AT_LEAST_1,
    "data.synth_val": AT_LEAST_1,
    "data.synth_test": AT_LEAST_1,
    "data.synth_size": Range(16),
    "data.synth_long_tail": AT_LEAST_1,
    "data.seed": AT_LEAST_0,
    "model.num_layers": AT_LEAST_1,
    "model.num_heads": AT_LEAST_1,
    "model.ffn_dim": AT_LEAST_1,
    "model.dropout": FRACTION,
    "model.K": Range(0, MAX_PROPAGATION_STEPS),
    "model.alpha": Range(0, 1, low_open=True),
    "model.num_graph_layers": Range(1, MAX_PROPAGATION_STEPS),
    "model.graph_heads": AT_LEAST_1,
    "model.head_dropout": FRACTION,
    "model.pos_init_std": AT_LEAST_0,
    "model.bn_momentum": Range(0, 1),
    "model.bn_eps": POSITIVE,
    "model.embed_dim": AT_LEAST_1,
    "model.layer_scale": AT_LEAST_0,
    "optim.backbone_lr_mult": AT_LEAST_0,
    "optim.lr": POSITIVE,
    "optim.weight_decay": AT_LEAST_0,
    "optim.momentum": FRACTION,
    "optim.warmup_epochs": AT_LEAST_0,
    "optim.min_lr": AT_LEAST_0,
    "optim.label_smoothing": FRACTION,
    "optim.grad_clip": POSITIVE,
    "optim.accumulate": AT_LEAST_1,
    "train.epochs": AT_LEAST_1,
    "train.batch_size": AT_LEAST_1,
    "train.eval_batch_size": AT_LEAST_1,
    "train.seed": AT_LEAST_0,
    "train.checkpoint_every_steps": AT_LEAST_0,
    "train.eval_every": AT_LEAST_1,
    "train.log_every": AT_LEAST_1,
    "train.max_steps": AT_LEAST_1,
    "eval.num_clips": AT_LEAST_1,
    "eval.num_crops": Range(1, 3),
}


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
            problems.append(f"{key}={flat[key]!r} is not one of {', '.join(choices)}")
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
    if config.eval.num_crops not in (1, 3):
        problems.append(f"eval.num_crops={config.eval.num_crops} is not 1 (centre) or 3 (along the long side)")
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
    annotation = _field_type(config, key, source)
    section_name, _, field_name = key.partition(".")
    setattr(getattr(config, section_name), field_name, _coerce(key, value, annotation))


def parse_text(key: str, text: str, annotation) -> Any:
    """The value of the text ``text`` (e.g. of ``--set key=text``) for a field annotated ``annotation``.

    String fields keep the text as written: ``0777``, ``010``, ``12:30``, ``~`` or ``yes`` stay
    those strings (YAML would read them as numbers, a time, null or a boolean); a quoted text
    (``'...'`` or ``"..."``) is unquoted. ``none`` / ``null`` (any case) clear an optional field.
    Other fields read the text as YAML (``1e-3``, ``true``, ``{heads: 4}``), then it is checked
    as a value of the field's type.
    """
    stripped = text.strip()
    optional = typing.get_origin(annotation) is Union and type(None) in typing.get_args(annotation)
    if optional and stripped.lower() in ("none", "null"):
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
        return None if optional else _coerce(key, "", annotation)
    inner = [a for a in typing.get_args(annotation) if a is not type(None)] if optional else [annotation]
    if inner and inner[0] in (int, float):
        try:
            return inner[0](stripped)  # 010 is 10 and 1e-3 a number, whatever YAML 1.1 says
        except ValueError:
            pass
    try:
        value = yaml.safe_load(stripped)
    except yaml.YAMLError as error:
        raise ConfigError(f"{key}: cannot read {stripped!r} ({error})") from None
    return _coerce(key, value, annotation)


def apply_override(config: Config, item: str, *, source: str = "--set") -> None:
    """Applies one ``key=value`` override, reading the value as :func:`parse_text` does."""
    if "=" not in item:
        raise ConfigError(f"{source} expects key=value, got {item!r}")
    key, text = item.split("=", 1)
    key = key.strip()
    if key == "name":
        config.name = text.strip()
        return
    annotation = _field_type(config, key, source)
    section_name, _, field_name = key.partition(".")
    setattr(getattr(config, section_name), field_name, parse_text(key, text, annotation))


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
        if key in ("base", "description"):
            continue
        raw = text.get(key) if isinstance(key, str) else None
        if key == "name":
            config.name = str(raw if isinstance(raw, str) and not isinstance(value, str) and value is not None
                              else value)
        elif isinstance(value, dict):
            raw = raw if isinstance(raw, dict) else {}
            for sub_key, sub_value in value.items():
                full_key = f"{key}.{sub_key}"
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
        apply_mapping(config, values, source=source, text=as_written)
    for item in overrides:
        apply_override(config, item, source="--set")
    return check_installed(validate(config))
