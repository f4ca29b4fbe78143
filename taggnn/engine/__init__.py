"""Training, evaluation, metrics, checkpoints and DDP for TAG-Head models.

One concern a module: the config (:mod:`~taggnn.engine.config`), datasets and loaders (``data``), the
optimizer and schedule (``optimization``), the training loop (``trainer``), evaluation (``evaluation``),
checkpoints and resumption (``checkpoint``, ``resume``, ``health``), run folders (``runfolder``), trained
models for inference (``loading``), cached backbone features (``features``), experiment trackers
(``loggers``), figures (``plots``) and DDP (``distributed``)."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, ConfigError, list_presets, load_config, valid_keys
from .metrics import ClassificationMeter
from .trainer import TrainingError, evaluate, load_trained, train

__all__ = [
    "Config", "ConfigError", "load_config", "list_presets", "valid_keys", "ClassificationMeter",
    "train", "evaluate", "load_trained", "TrainingError", "save_checkpoint", "load_checkpoint",
]
