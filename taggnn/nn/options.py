"""Checks of the head's string options, owned by the modules that implement them.

:func:`check_model_options` lets a configuration be validated before any model is built
(the ``taggnn`` command checks every value before work starts); the modules raise the same
messages when built directly.
"""
from __future__ import annotations

from typing import Any

from .head import POST_GRAPH
from .readout import readout_names
from .refiner import ACTIVATIONS, check_refiner_options


def check_model_options(model: Any) -> None:
    """Raises ``ValueError`` naming the key and the valid choices for a bad propagation,
    back-end or graph-stage option of a ``ModelConfig``-like object."""
    check_refiner_options(model.propagation, model.backend, model.edge_weights, key_prefix="model.")
    for key, value, choices in (("readout", model.readout, readout_names()),
                                ("post_graph", model.post_graph, POST_GRAPH),
                                ("graph_activation", model.graph_activation, tuple(ACTIVATIONS))):
        if value not in choices:
            raise ValueError(f"model.{key} must be one of {', '.join(choices)}, got {value!r}")
    if model.layer_scale is not None and not model.norm_first:
        raise ValueError("model.layer_scale needs pre-norm blocks (model.norm_first=true)")
