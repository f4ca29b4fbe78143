"""Detection of optional compiled extensions (the ``ext`` extra).

torch-scatter and torch-sparse are optional: PyG 2.8 and taggnn run fully
without them. Code that needs them asks here and gets a clear error.
"""
from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache

_INSTALL_HINT = (
    "install the optional extra with `pip install --no-build-isolation "
    "torch-scatter torch-sparse` (or `make install-ext`)"
)


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
    """Returns the ``torch_sparse`` module or raises naming :obj:`feature`."""
    if not has_torch_sparse():
        raise ImportError(f"{feature} needs torch-sparse, which is not importable here; {_INSTALL_HINT}")
    import torch_sparse

    return torch_sparse
