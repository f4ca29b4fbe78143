"""Training, evaluation, metrics, checkpoints and DDP for TAG-Head models."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, ConfigError, list_presets, load_config, valid_keys
from .metrics import ClassificationMeter
from .trainer import TrainingError, evaluate, load_trained, train

__all__ = [
    "Config", "ConfigError", "load_config", "list_presets", "valid_keys", "ClassificationMeter",
    "train", "evaluate", "load_trained", "TrainingError", "save_checkpoint", "load_checkpoint",
]
