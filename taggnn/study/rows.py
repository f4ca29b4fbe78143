"""The named rows of ablation studies: each a list of ``key=value`` overrides of a base config.

:data:`TABLE4` holds the rows of the paper's Table 4 (B: backbone + mean pool + linear; TE: the
transformer encoder; IF-FC: the intra-frame fully connected graph; TAT: the temporal
graph), :data:`STAGES` further graph stages and head variants. Every row name is also usable on
a command line without quoting: names with spaces have an alias (:data:`ALIASES`) that also names
the row's run folders.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List

from ..engine.config import Config, apply_override
from ..errors import ConfigError

__all__ = ["TABLE4", "STAGES", "ROWS", "ALIASES", "ROW_SETS", "canonical_row", "row_overrides", "row_slug",
           "is_plain_name", "model_options"]

TABLE4: Dict[str, List[str]] = {
    "B": ["model.use_transformer=false", "model.intra=false", "model.temporal=false"],
    "B+TE": ["model.intra=false", "model.temporal=false"],
    "B+TE+IF-FC": ["model.temporal=false"],
    "B+TE+TAT": ["model.intra=false"],
    "Full": [],
}
STAGES: Dict[str, List[str]] = {
    "Full+attention": ["model.readout=attention"],
    "Full+max": ["model.readout=max"],
    "Full+ffn": ["model.post_graph=ffn"],
    "Full+learned-w": ["model.edge_weights=learned"],
    "Full+RGCN": ["model.propagation=RGCNConv", "model.num_graph_layers=1", "model.graph_residual=true"],
    "Full+GCNx2": ["model.propagation=gcn", "model.num_graph_layers=2"],
    "Full (LS=0)": ["model.layer_scale=0.0"],  # a head that starts as the identity
    "B+TE (LS=0)": ["model.intra=false", "model.temporal=false", "model.layer_scale=0.0"],
}
ROWS: Dict[str, List[str]] = {**TABLE4, **STAGES}
#: Command-line names of the rows whose names hold spaces or parentheses.
ALIASES: Dict[str, str] = {"Full-LS0": "Full (LS=0)", "B+TE-LS0": "B+TE (LS=0)"}
#: Named groups of rows (``rows: table4`` in a study file).
ROW_SETS: Dict[str, List[str]] = {"table4": list(TABLE4), "stages": list(STAGES), "all": list(ROWS)}

_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_+.=-]*$")


def is_plain_name(name: str) -> bool:
    """Whether ``name`` can be a folder name and a shell word without quoting."""
    return bool(_PLAIN.match(name))


def canonical_row(name: str) -> str:
    """The row ``name`` or its alias names (e.g. ``Full-LS0`` -> ``Full (LS=0)``)."""
    if name in ROWS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    known = [row if is_plain_name(row) else next(a for a, r in ALIASES.items() if r == row) for row in ROWS]
    raise ConfigError(f"unknown row {name!r}; the named rows are {', '.join(known)} (or define it under extra_rows "
                      f"as a list of key=value overrides)")


def row_overrides(name: str) -> List[str]:
    """The overrides of a named row (or alias)."""
    return list(ROWS[canonical_row(name)])


def row_slug(name: str) -> str:
    """The name of a row's run folder: the row's name, or its alias when the name needs quoting."""
    if is_plain_name(name):
        return name
    for alias, row in ALIASES.items():
        if row == name:
            return alias
    raise ConfigError(f"row name {name!r} names a folder: use letters, digits and _ + . = - only")


def model_options(name: str) -> Dict[str, Any]:
    """The ``model.*`` values a named row sets, as keyword arguments (e.g. of
    :class:`~taggnn.nn.TAGHead`): ``{"use_transformer": False, "intra": False, ...}``."""
    config, default = Config(), Config()
    for item in row_overrides(name):
        if not item.startswith("model."):
            raise ConfigError(f"row {name!r} sets {item.split('=', 1)[0]}, not a model option")
        apply_override(config, item, source=f"row {name}")
    return {key: value for key, value in vars(config.model).items() if value != getattr(default.model, key)}
