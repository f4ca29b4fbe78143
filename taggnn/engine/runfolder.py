"""Run folders: the lock that keeps a second process out, the manifest of the files a run
wrote, and the checks that decide what a new command may do with a folder.

- The lock ``.taggnn.lock`` (a :class:`~taggnn.utils.lockfile.LockFile`) names its owner (PID,
  host, boot and the process's start time), and is written to a temporary file first and then
  hard-linked into place, so it is never empty or half written. A lock whose owner is gone is
  stale and taken over: a dead PID, a PID now used by another process (its start time differs),
  or this very PID when this process does not hold it (a restarted container whose trainer is
  PID 1 again).
- The manifest ``.taggnn-manifest.json`` lists every file a run wrote into the folder (written
  before the file itself, atomically). ``--overwrite`` removes exactly those files and never an
  input of the command (its ``--config``, ``model.weights``, ...); files that no manifest lists
  (an older taggnn's run, your own files) are never removed: such a folder is refused.
- Temporary files of writers that were killed (``.last.pt.<pid>.tmp``, ...) are removed when the
  next run starts in the folder, once their writer is gone.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence

from ..errors import TrainingError
from ..utils.lockfile import LockFile, folder_mutex, process_alive, process_identity, process_start_time
from ..utils.outputs import MANIFEST_NAME, TEMPORARY_NAME, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "LOCK_NAME", "MANIFEST_NAME", "RUN_FILES", "RUN_PATTERNS", "RunLock", "process_alive", "process_identity",
    "existing_run_files", "read_manifest", "record_outputs", "forget_outputs", "check_run_folder", "clear_run_folder",
    "remove_stale_temporaries", "write_text_atomic",
]

LOCK_NAME = ".taggnn.lock"
#: Names of the files (and the ``tensorboard`` folder) a training run writes into its folder.
RUN_FILES = ("last.pt", "best.pt", "config.yaml", "log.jsonl", "summary.json", "backbone.pt", "tensorboard",
             "log.csv", "params.csv")
#: Patterns of the evaluation outputs a run (or ``taggnn eval``) writes into a run folder.
RUN_PATTERNS = ("metrics_*.json", "per_class_*.csv", "confusion_*.png", "skipped_*.txt")


class RunLock(LockFile):
    """The lock ``.taggnn.lock`` of a run folder: two processes never write into one run. A
    :class:`~taggnn.utils.lockfile.LockFile` whose errors are :class:`~taggnn.errors.TrainingError`
    naming the folder; a lock of an ended process is taken over with a warning, one that cannot
    be written leaves nothing behind."""

    def __init__(self, folder: Path):
        super().__init__(Path(folder) / LOCK_NAME, error=TrainingError)


# ------------------------------------------------------------------------ the manifest


def read_manifest(folder: Path) -> Optional[List[str]]:
    """The names a run recorded in ``folder``'s manifest; ``None`` without a (readable) manifest."""
    try:
        data = json.loads((Path(folder) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        return None
    return [name for name in files if _plain_name(name)]


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def _write_manifest(folder: Path, names: Iterable[str]) -> None:
    write_text_atomic(Path(folder) / MANIFEST_NAME,
                      json.dumps({"format": 1, "files": sorted(set(names))}, indent=1) + "\n")


def record_outputs(folder: Path, names: Iterable[str]) -> None:
    """Adds ``names`` (files or folders directly in ``folder``) to its manifest, creating it when
    missing. Call it *before* writing the files, so that no file of a run is ever unlisted."""
    folder = Path(folder)
    names = [Path(name).name for name in names]
    with folder_mutex(folder):
        recorded = read_manifest(folder) or []
        if set(names) - set(recorded):
            _write_manifest(folder, recorded + names)


def forget_outputs(folder: Path, names: Iterable[str]) -> None:
    """Removes ``names`` from ``folder``'s manifest: files a command recorded with
    :func:`record_outputs` and then did not write (a refused or failed export)."""
    folder = Path(folder)
    names = {Path(name).name for name in names}
    with folder_mutex(folder):
        recorded = read_manifest(folder)
        if recorded is not None and names & set(recorded):
            _write_manifest(folder, [name for name in recorded if name not in names])


def existing_run_files(folder: Path) -> List[Path]:
    """The files in ``folder`` that a run would have written (by name)."""
    folder = Path(folder)
    found = [folder / name for name in RUN_FILES if (folder / name).exists()]
    for pattern in RUN_PATTERNS:
        found += sorted(folder.glob(pattern))
    return found


def _inside(path: Path, inputs: Sequence[Path]) -> bool:
    """Whether removing ``path`` would remove one of ``inputs``."""
    path = path.resolve()
    return any(item == path or path in item.parents for item in inputs)


def _quote(value: Any) -> str:
    return shlex.quote(str(value))


def _resolved(paths: Iterable[Any]) -> List[Path]:
    return [Path(p).resolve() for p in paths if p is not None and str(p)]


def check_run_folder(out: Path, *, resume: Optional[Path] = None, overwrite: bool = False,
                     inputs: Iterable[Any] = (), outputs: Iterable[str] = ()) -> None:
    """Refuses what a command may not do with the run folder ``out`` (removes nothing).

    - ``--resume`` in the checkpoint's own folder continues that run (``--overwrite`` is refused).
    - A new run, or ``--resume`` into another folder, needs a folder without a run: one holding a
      recorded run is refused unless ``overwrite``; a folder with run files that no manifest
      lists (an older taggnn's run, ``taggnn eval``'s results, your own ``config.yaml``) is refused.
    - ``overwrite`` is refused when an input of the command that the old run wrote (e.g. its
      ``backbone.pt`` as ``model.weights``) would be written over by this run (``outputs``);
      the run's ``config.yaml`` as ``--config`` is kept and rewritten.

    Args:
        out: The run folder (it exists).
        resume: The checkpoint ``--resume`` continues, if any.
        overwrite: Whether the files of a recorded run in ``out`` may be removed.
        inputs: Files and folders the command reads (kept by :func:`clear_run_folder`).
        outputs: Names of the files this run writes into ``out``.
    """
    out = Path(out)
    inputs = _resolved(inputs)
    own = resume is not None and Path(resume).resolve().parent == out.resolve()
    if own:
        if overwrite:
            raise TrainingError(f"--overwrite would remove the run that --resume {resume} continues; continue it "
                                f"without --overwrite: taggnn train --resume {_quote(resume)}")
        return
    recorded = read_manifest(out)
    listed = set(recorded or [])
    present = [name for name in sorted(listed) if (out / name).exists()]
    if present and not overwrite:
        shown = ", ".join(present[:4]) + (" ..." if len(present) > 4 else "")
        if resume is not None:
            raise TrainingError(
                f"{out} already holds a run ({shown}) and --resume {resume} continues another one; continue it in "
                f"its own folder: taggnn train --resume {_quote(resume)}, choose an empty --out, or add --overwrite "
                f"to remove the run in {out} first")
        go_on = (f"continue it with: taggnn train --resume {_quote(out / 'last.pt')}; "
                 if (out / "last.pt").is_file() else "")
        raise TrainingError(
            f"{out} already holds a run ({shown}); {go_on}add --overwrite to this command to start over (it "
            f"removes only the files listed in {out / MANIFEST_NAME}), or choose another --out")
    unlisted = [p.name for p in existing_run_files(out) if p.name not in listed]
    if unlisted:
        older = (f"; an older taggnn's run continues with: taggnn train --resume {_quote(out / 'last.pt')}"
                 if resume is None and "last.pt" in unlisted and recorded is None else "")
        raise TrainingError(
            f"{out} holds files that no taggnn manifest ({MANIFEST_NAME}) lists: {', '.join(unlisted[:6])}"
            f"{' ...' if len(unlisted) > 6 else ''} (written by an older taggnn, `taggnn eval` or by hand); taggnn "
            f"never removes or writes over them: move them out of {out}, or choose another --out{older}")
    if overwrite:
        kept_inputs = {name for name in present if _inside(out / name, inputs)}
        conflicts = sorted(kept_inputs & set(outputs) - {"config.yaml"})
        if conflicts:
            raise TrainingError(
                f"{', '.join(str(out / name) for name in conflicts)} is an input of this command and this run would "
                f"write its own {conflicts[0]} over it; copy it out of {out} and use the copy, or choose another --out")


def clear_run_folder(out: Path, *, inputs: Iterable[Any] = ()) -> List[Path]:
    """Removes the files ``out``'s manifest lists, except inputs of the command; returns them.

    Call it holding the folder's :class:`RunLock`, after :func:`check_run_folder` allowed it.
    """
    out = Path(out)
    inputs = _resolved(inputs)
    removed, kept = [], []
    with folder_mutex(out):
        for name in read_manifest(out) or []:
            path = out / name
            if not (path.exists() or path.is_symlink()):
                continue
            if _inside(path, inputs):
                kept.append(name)
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        _write_manifest(out, kept)
    if removed:
        logger.warning("--overwrite: removed %d files of the previous run in %s%s", len(removed), out,
                       f" (kept {', '.join(kept)}: inputs of this command)" if kept else "")
    return removed


def remove_stale_temporaries(folder: Path) -> List[Path]:
    """Removes the temporary files (``.<name>.<pid>.tmp``) of writers that are gone: their PID
    runs no process, or a process that started after the file was last written (a reused PID),
    or it is this process's PID (an earlier process with the same PID; call this before this
    process writes into ``folder``). Returns the removed paths."""
    removed = []
    for entry in sorted(Path(folder).iterdir()):
        match = TEMPORARY_NAME.match(entry.name)
        if match is None or not entry.is_file():
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and process_alive(pid):
            started = process_start_time(pid)
            if started is None or started <= entry.stat().st_mtime + 2.0:
                continue  # its writer may still run
        entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        logger.warning("%s: removed %d temporary files of writers that were stopped (%s)", folder, len(removed),
                       ", ".join(p.name for p in removed[:3]))
    return removed
