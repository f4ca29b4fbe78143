"""Checks of the head's string options, owned by the modules that implement them.

:func:`check_model_options` lets a configuration be validated before any model is built
(the ``taggnn`` command checks every value before work starts); the modules raise the same
messages when built directly.
"""
from __future__ import annotations

import inspect
from typing import Any

from ..graph.families import parse_dynamic, parse_spatial, parse_temporal
from .conv_stack import pyg_conv_class
from .head import POST_GRAPH, parse_edge_attr
from .propagation import propagation_names
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
    check_graph_options(model)
    if model.layer_scale is not None and not model.norm_first:
        raise ValueError("model.layer_scale needs pre-norm blocks (model.norm_first=true)")


def check_graph_options(model: Any) -> None:
    """Raises ``ValueError`` (a :class:`~taggnn.errors.ConfigError`) naming the key for a bad edge family
    (``model.graph_spatial``, ``graph_temporal``, ``graph_dynamic``), bad edge features
    (``model.graph_edge_attr``) or edge features the propagation cannot read."""
    parse_spatial(getattr(model, "graph_spatial", "full"), "model.graph_spatial")
    parse_temporal(getattr(model, "graph_temporal", "aligned"), "model.graph_temporal")
    parse_dynamic(getattr(model, "graph_dynamic", None), "model.graph_dynamic")
    edge_attr = parse_edge_attr(getattr(model, "graph_edge_attr", None), "model.graph_edge_attr")
    if edge_attr is not None and model.propagation != "none":
        conv = None if model.propagation in propagation_names() else pyg_conv_class(model.propagation)
        if conv is None or "edge_dim" not in inspect.signature(conv.__init__).parameters:
            raise ValueError(f"model.graph_edge_attr={model.graph_edge_attr!r} gives edge features, which only a "
                             f"convolution with an edge_dim argument reads (model.propagation=TransformerConv, "
                             f"GINEConv, GATv2Conv, ...), but model.propagation={model.propagation!r} takes none; "
                             f"choose such a convolution or set model.graph_edge_attr=none")
