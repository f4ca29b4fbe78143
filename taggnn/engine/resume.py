"""The config a resumed run continues with: the checkpoint's, changed only in the keys that
may change on resume (:data:`taggnn.engine.config.RESUMABLE_KEYS`), and the check that a
run's config and its checkpoint's agree."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import AbstractSet, Optional, Sequence

from .checkpoint import load_checkpoint
from .config import RESUMABLE_KEYS, Config, ConfigError, apply_override, flatten, load_config, set_value, validate
from .runfolder import _quote

__all__ = ["resume_config", "check_resume_config"]

logger = logging.getLogger(__name__)


def _resumable() -> AbstractSet[str]:
    """The keys that may change on resume (``resumable=True`` in their field's metadata)."""
    return set(RESUMABLE_KEYS)


def check_resume_config(saved: Config, current: Config, path: Path) -> None:
    """Raises :class:`ConfigError` when ``current`` differs from the config ``saved`` in the
    checkpoint ``path`` in a key that cannot change on resume."""
    resumable = _resumable()
    differences = [line for line in saved.diff(current) if line.split(":")[0] not in resumable]
    if differences:
        raise ConfigError(
            f"{path} was written by another config; these values differ (checkpoint -> now): "
            + "; ".join(differences) + ". Resume with the checkpoint's config or start a new run.")


def resume_config(checkpoint_path: Path, *, config: Optional[str] = None, overrides: Sequence[str] = (),
                  rerun_options: str = "") -> Config:
    """The config a resumed run continues with: the one saved in the checkpoint, changed only in
    the keys of :data:`~taggnn.engine.config.RESUMABLE_KEYS`. ``train.max_steps`` limits one invocation: it is not
    taken from the checkpoint (the resumed run goes on to ``train.epochs``) unless given again.

    Args:
        checkpoint_path: The checkpoint ``--resume`` continues.
        config: A preset or YAML file given explicitly (``--config``); its values of
            resumable keys are taken.
        overrides: ``key=value`` items (``--set``).
        rerun_options: Options to repeat in the suggested command (e.g. ``" --out B"``).

    Raises:
        ConfigError: A key that cannot change on resume is given a value other than the
            checkpoint's (the message names each such key and a command that resumes).
    """
    path = Path(checkpoint_path)
    saved = Config.from_dict(load_checkpoint(path)["config"], source=str(path))
    if config is not None:
        given, source = load_config(config, overrides), f"--config {config}" + (" with --set" if overrides else "")
    else:
        given, source = Config.from_dict(saved.to_dict(), source=str(path)), "--set"
        for item in overrides:  # read as every --set is
            apply_override(given, item, source="--set")
        validate(given)
    resumable = _resumable()
    ours, theirs = flatten(saved.to_dict()), flatten(given.to_dict())
    changed = [key for key in sorted(ours) if ours[key] != theirs.get(key)]
    fixed = [key for key in changed if key not in resumable]
    if fixed:
        keep = [item for item in overrides if item.split("=", 1)[0].strip() in resumable]
        command = (f"taggnn train --resume {_quote(path)}" + "".join(f" --set {_quote(item)}" for item in keep)
                   + rerun_options)
        raise ConfigError(
            f"--resume {path} continues with the config saved in the checkpoint; {source} gives other values of "
            f"keys that cannot change on resume: "
            + "; ".join(f"{key}: {ours[key]!r} -> {theirs.get(key)!r}" for key in fixed)
            + f". Resume without them: {command} (keys that may change on resume: "
            f"{', '.join(sorted(resumable))}), or start a new run")
    resumed = Config.from_dict(saved.to_dict(), source=str(path))
    for key in changed:
        set_value(resumed, key, theirs[key], source=source)
        logger.info("resuming with %s = %r (the checkpoint has %r)", key, theirs[key], ours[key])
    given_keys = {item.split("=", 1)[0].strip() for item in overrides}
    if config is None and "train.max_steps" not in given_keys:
        resumed.train.max_steps = None  # a limit of one invocation: the resumed run goes on to train.epochs
    return validate(resumed)
