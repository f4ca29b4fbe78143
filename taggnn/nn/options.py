"""Checks of the head's string options, owned by the modules that implement them.

:func:`check_model_options` lets a configuration be validated before any model is built
(the ``taggnn`` command checks every value before work starts); the modules raise the same
messages when built directly.
"""
from __future__ import annotations

from typing import Any


def check_model_options(model: Any) -> None:
    """Raises ``ValueError`` naming the key and the valid choices for a bad propagation,
    back-end or graph-stage option of a ``ModelConfig``-like object."""
    from .refiner import check_refiner_options

    check_refiner_options(model.propagation, model.backend, key_prefix="model.")
