"""taggnn's error types: one hierarchy, each mixed with the builtin it replaces.

Every error a user can cause (a bad config value, an unreadable video, a malformed
annotation line, a wrong weights file or checkpoint, a run that cannot go on) raises a
subclass of :class:`TaggnnError`. Each is also an instance of the builtin exception code
caught before this hierarchy existed (``ConfigError`` is a ``ValueError``, ...), so
``except ValueError`` keeps working. The ``taggnn`` command prints any of them as one line
and exits with code 2.
"""
from __future__ import annotations

import os
from typing import Union

__all__ = [
    "TaggnnError", "ConfigError", "VideoError", "AnnotationError", "WeightsError", "CheckpointError",
    "TrainingError", "GraphTooLargeError", "MissingExtraError",
]


class TaggnnError(Exception):
    """Base class of taggnn's own errors: the message says what was expected, what came,
    and how to fix it."""


class ConfigError(TaggnnError, ValueError):
    """A configuration key or value is not valid (unknown key, wrong type, out of range)."""


class VideoError(TaggnnError, RuntimeError):
    """A video cannot be read: the message names the file and the cause."""

    def __init__(self, path: Union[str, os.PathLike], cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return type(self), (self.path, self.cause)


class AnnotationError(TaggnnError, ValueError):
    """A malformed or inconsistent annotation file: the message names the file and line."""

    def __init__(self, path: Union[str, os.PathLike], line_number: int, problem: str, line: str = ""):
        self.path, self.line_number, self.problem, self.line = str(path), line_number, problem, line
        snippet = f": {line.strip()[:80]!r}" if line else ""
        where = f"{path}:{line_number}" if line_number else f"{path}"
        super().__init__(f"{where}: {problem}{snippet}")

    def __reduce__(self):
        return type(self), (self.path, self.line_number, self.problem, self.line)


class WeightsError(TaggnnError, RuntimeError):
    """Weights cannot be fetched, verified or loaded into a model."""


class CheckpointError(TaggnnError, ValueError):
    """A file is not a usable taggnn checkpoint, or cannot be written."""


class TrainingError(TaggnnError, RuntimeError):
    """The run cannot go on (e.g. a non-finite loss); the message says what to do."""


class GraphTooLargeError(TaggnnError, MemoryError):
    """A graph's edge list would not fit in memory; refused before allocating it."""


class MissingExtraError(TaggnnError, ImportError):
    """A feature needs an optional package that is not installed: the message names the
    ``taggnn`` extra that installs it (``pip install 'taggnn[export]'``, ...)."""

    def __init__(self, message: str, extra: str):
        self.extra = extra
        super().__init__(message)

    def __reduce__(self):  # picklable across DataLoader worker processes
        return type(self), (str(self), self.extra)
