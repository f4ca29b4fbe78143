"""Study files: a base config, shared overrides, rows of further overrides, and seeds.

A study file (YAML)::

    base: synthgym_frozen            # a preset or a config file
    set: [train.epochs=6]            # overrides of every run
    seeds: 10                        # 0..9, or a list [0, 1, 2]
    reference: B+TE                  # the row every other row is compared to
    rows: table4                     # table4 | stages | all, or a list of row names (taggnn.study.rows)
    extra_rows:                      # further rows: name -> overrides
      Full+attention: [model.readout=attention]
    metric: top1                     # top1 | top5 | mca
    select: last                     # last epoch | best validation epoch
    head_only: true                  # the backbone's features cached once, shared by every run

A seed enters a run as ``train.seed`` (the initialisation and the data order), never as
``data.seed`` (the dataset's content): every row sees the same data. Every row's config is built
and range-checked (:func:`~taggnn.engine.config.load_config`) when the file is read, before any
run starts.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from ..engine.config import Config, apply_override, flatten, load_config, validate
from ..errors import ConfigError
from .rows import ALIASES, ROW_SETS, ROWS, canonical_row, is_plain_name, row_overrides, row_slug

__all__ = ["StudySpec", "load_spec", "parse_spec", "KEYS", "METRICS", "SELECTS", "config_hash"]

KEYS = ("base", "set", "seeds", "reference", "rows", "extra_rows", "metric", "select", "head_only", "description")
METRICS = ("top1", "top5", "mca")
SELECTS = ("last", "best")


@dataclass
class StudySpec:
    """A study read from its file: ``rows`` maps each row's name (in order) to its overrides."""

    base: str
    overrides: List[str]
    seeds: List[int]
    reference: str
    rows: Dict[str, List[str]]
    metric: str = "top1"
    select: str = "last"
    head_only: bool = False
    description: str = ""
    text: str = ""
    source: str = "study"
    configs: Dict[str, Config] = field(default_factory=dict, repr=False)

    def row_config(self, row: str, seed: Optional[int] = None) -> Config:
        """The config of ``row`` (checked), with ``train.seed = seed`` when a seed is given."""
        config = Config.from_dict(self.configs[row].to_dict(), source=f"{self.source}: row {row}")
        if seed is not None:
            config.train.seed = seed
        return config

    def slug(self, row: str) -> str:
        return row_slug(row)

    def describe(self) -> Dict[str, Any]:
        """The study's description as the report reads it."""
        return {"rows": list(self.rows), "reference": self.reference, "metric": self.metric, "seeds": self.seeds,
                "select": self.select, "base": self.base, "head_only": self.head_only, "spec": self.text}


def config_hash(config: Config) -> str:
    """SHA-256 of a resolved config (its flattened values)."""
    return hashlib.sha256(json.dumps(flatten(config.to_dict()), sort_keys=True, default=str).encode()).hexdigest()


def _strings(value: Any, key: str, source: str) -> List[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{source}: {key} expects a list of key=value strings, got {value!r}")
    return list(value)


def load_spec(path) -> StudySpec:
    """Reads and checks a study file (see the module's docstring)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read the study file {path}: {error.strerror or error}") from None
    return parse_spec(text, source=str(path), folder=path.parent)


def parse_spec(text: str, *, source: str = "study", folder: Optional[Path] = None) -> StudySpec:
    """Checks a study file's text and builds the config of every row (raises :class:`ConfigError`)."""
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: invalid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping with keys {', '.join(KEYS)}, got {type(values).__name__}")
    unknown = [key for key in values if key not in KEYS]
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; a study file has the keys {', '.join(KEYS)}")
    if "base" not in values or not isinstance(values["base"], str):
        raise ConfigError(f"{source}: base expects a preset name or a config file, got {values.get('base')!r}")
    base = values["base"]
    if folder is not None and base.endswith((".yaml", ".yml")) and not Path(base).is_absolute():
        if not Path(base).is_file() and (folder / base).is_file():
            base = str(folder / base)  # a config file next to the study file
    overrides = _strings(values.get("set", []), "set", source)
    seeds = values.get("seeds", 3)
    if isinstance(seeds, bool) or not (isinstance(seeds, int) or isinstance(seeds, list)):
        raise ConfigError(f"{source}: seeds expects a count or a list of integers, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ConfigError(f"{source}: seeds must be >= 1, got {seeds}")
        seeds = list(range(seeds))
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"{source}: seeds expects a list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{source}: seeds lists a seed twice: {seeds}")
    rows: Dict[str, List[str]] = {}
    named = values.get("rows", [])
    if isinstance(named, str):
        if named not in ROW_SETS:
            raise ConfigError(f"{source}: rows expects {', '.join(ROW_SETS)} or a list of row names, got {named!r}")
        named = ROW_SETS[named]
    if not isinstance(named, list) or not all(isinstance(name, str) for name in named):
        raise ConfigError(f"{source}: rows expects {', '.join(ROW_SETS)} or a list of row names, got {named!r}")
    for name in named:
        try:
            row = canonical_row(name)
        except ConfigError as error:
            raise ConfigError(f"{source}: rows: {error}") from None
        if row in rows:
            raise ConfigError(f"{source}: rows lists the row {row!r} twice: {named}")
        rows[row] = row_overrides(name)
    extra = values.get("extra_rows") or {}
    if not isinstance(extra, dict):
        raise ConfigError(f"{source}: extra_rows expects a mapping name -> list of key=value, got {extra!r}")
    for name, items in extra.items():
        name = str(name)
        if not is_plain_name(name):
            raise ConfigError(f"{source}: extra_rows: row name {name!r} names a folder and a command-line word: use "
                              f"letters, digits and _ + . = - only")
        if name in rows:
            raise ConfigError(f"{source}: extra_rows: row {name!r} is already among rows")
        for other in rows:  # one run folder per row, also on a case-insensitive file system
            if row_slug(other).casefold() == row_slug(name).casefold():
                raise ConfigError(f"{source}: extra_rows: row {name!r} would share the run folder "
                                  f"runs/{row_slug(other)} with row {other!r}; give it another name")
        rows[name] = _strings(items, f"extra_rows: {name}", source)
    if not rows:
        raise ConfigError(f"{source}: no rows: give rows (e.g. table4) and/or extra_rows")
    reference = values.get("reference", next(iter(rows)))
    if not isinstance(reference, str):
        raise ConfigError(f"{source}: reference expects a row name, got {reference!r}")
    try:
        reference = canonical_row(reference) if reference not in rows else reference
    except ConfigError:
        reference = reference
    if reference not in rows:
        raise ConfigError(f"{source}: reference {reference!r} is not one of the rows ({', '.join(rows)})")
    metric, select = values.get("metric", "top1"), values.get("select", "last")
    if metric not in METRICS:
        raise ConfigError(f"{source}: metric expects one of {', '.join(METRICS)}, got {metric!r}")
    if select not in SELECTS:
        raise ConfigError(f"{source}: select expects one of {', '.join(SELECTS)}, got {select!r}")
    head_only = values.get("head_only", False)
    if not isinstance(head_only, bool):
        raise ConfigError(f"{source}: head_only expects true or false, got {head_only!r}")
    spec = StudySpec(base=base, overrides=overrides, seeds=seeds, reference=reference, rows=rows, metric=metric,
                     select=select, head_only=head_only, description=str(values.get("description") or ""),
                     text=text, source=source)
    for row, items in rows.items():
        spec.configs[row] = build_row_config(spec, row, items)
    for name in extra:  # a built-in row's name (or alias) keeps the built-in definition
        builtin = ALIASES.get(str(name), str(name))
        if builtin in ROWS:
            own = flatten(spec.configs[str(name)].to_dict())
            theirs = flatten(build_row_config(spec, builtin, ROWS[builtin]).to_dict())
            changed = [f"{key}={own[key]!r}" for key in sorted(own) if own[key] != theirs.get(key)]
            if changed:
                definition = "; ".join(ROWS[builtin]) or "no overrides"
                raise ConfigError(f"{source}: extra_rows: {name!r} is the name of a built-in row ({definition}) but "
                                  f"is defined otherwise here ({', '.join(changed[:4])}); give it another name")
    return spec


def build_row_config(spec: StudySpec, row: str, items: List[str]) -> Config:
    """The base, the shared overrides, then the row's: checked as ``taggnn train`` checks them."""
    try:
        config = load_config(spec.base, spec.overrides)
    except ConfigError as error:
        raise ConfigError(f"{spec.source}: base/set: {error}") from None
    for item in items:  # its messages name the row: "<file>: row X: unknown config key ..."
        apply_override(config, item, source=f"{spec.source}: row {row}")
    try:
        validate(config)
    except ConfigError as error:
        raise ConfigError(f"{spec.source}: row {row}: {error}") from None
    if spec.head_only and config.data.features is not None:
        raise ConfigError(f"{spec.source}: row {row}: head_only computes the features itself; remove data.features "
                          f"(or set head_only: false to use {config.data.features})")
    return config
