"""Optional packages: which ``taggnn`` extra installs each, and clear errors when one is missing.

The extras (see ``pyproject.toml``): ``ext`` (torch-scatter, torch-sparse: compiled, PyG 2.8 and
taggnn run fully without them), ``zoo`` (pytorchvideo's model builders), ``export`` (onnx,
onnxscript, onnxruntime for ``taggnn export --format onnx``) and ``plot`` (matplotlib: without it
the figures are skipped, nothing fails). A feature that cannot run without its package calls
:func:`require` (or :func:`require_torch_sparse`), which raises
:class:`~taggnn.errors.MissingExtraError` naming the extra; the ``taggnn`` command prints it as one
line and exits with code 2.
"""
from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache
from types import ModuleType
from typing import Optional

from ..errors import MissingExtraError

__all__ = ["install_hint", "require", "has_torch_scatter", "has_torch_sparse", "require_torch_sparse"]


def install_hint(extra: str) -> str:
    """The command that installs the optional extra ``extra``."""
    if extra == "ext":  # compiled against the installed torch: no isolated build environment
        return ("pip install --no-build-isolation torch-scatter torch-sparse "
                "(the 'ext' extra; from a clone also `make install-ext`)")
    return f"pip install 'taggnn[{extra}]'"


def require(module: str, *, extra: str, feature: str, package: Optional[str] = None) -> ModuleType:
    """Imports and returns ``module``, or raises :class:`~taggnn.errors.MissingExtraError` naming
    :obj:`feature`, the missing package and the extra that installs it.

    Args:
        module (str): The module to import, e.g. ``"onnxscript"`` or ``"pytorchvideo.models.hub"``.
        extra (str): The ``taggnn`` extra that installs it, e.g. ``"export"``.
        feature (str): What needs it, for the message, e.g. ``"taggnn export --format onnx"``.
        package (str, optional): The distribution's name when it differs from the top-level
            module's (default: the first component of :obj:`module`).
    """
    parts = module.split(".")
    try:  # parent by parent, as an import statement does: a parent blocked in sys.modules counts as missing
        for end in range(1, len(parts) + 1):
            loaded = importlib.import_module(".".join(parts[:end]))
        return loaded
    except ImportError as error:
        package = package or parts[0]
        raise MissingExtraError(f"{feature} needs {package}: {install_hint(extra)} ({error})",
                                extra=extra) from error


@lru_cache(maxsize=None)
def _importable(name: str) -> bool:
    if importlib.util.find_spec(name) is None:
        return False
    try:
        importlib.import_module(name)
    except Exception:  # a broken build (e.g. compiled against another torch)
        return False
    return True


def has_torch_sparse() -> bool:
    """Whether ``torch_sparse`` is installed and imports."""
    return _importable("torch_sparse")


def has_torch_scatter() -> bool:
    """Whether ``torch_scatter`` is installed and imports."""
    return _importable("torch_scatter")


def require_torch_sparse(feature: str):
    """Returns the ``torch_sparse`` module or raises :class:`~taggnn.errors.MissingExtraError`
    naming :obj:`feature` and the ``ext`` extra."""
    if not has_torch_sparse():
        raise MissingExtraError(f"{feature} needs torch-sparse, which is not importable here; {install_hint('ext')}",
                                extra="ext")
    import torch_sparse

    return torch_sparse
