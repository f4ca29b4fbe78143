"""Run folders: the lock that keeps a second process out, the manifest of the files a run
wrote, and the checks that decide what a new command may do with a folder.

- The lock ``.taggnn.lock`` names its owner (PID, host, and the process's start time), and is
  written to a temporary file first and then hard-linked into place, so it is never empty or
  half written. A lock whose owner is gone is stale and taken over: a dead PID, a PID now used
  by another process (its start time differs), or this very PID when this process does not hold
  it (a restarted container whose trainer is PID 1 again).
- The manifest ``.taggnn-manifest.json`` lists every file a run wrote into the folder (written
  before the file itself, atomically). ``--overwrite`` removes exactly those files and never an
  input of the command (its ``--config``, ``model.weights``, ...); files that no manifest lists
  (an older taggnn's run, your own files) are never removed: such a folder is refused.
- Temporary files of writers that were killed (``.last.pt.<pid>.tmp``, ...) are removed when the
  next run starts in the folder, once their writer is gone.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import socket
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set

from ..errors import TrainingError
from .checkpoint import TEMPORARY_NAME, temporary_path

logger = logging.getLogger(__name__)

__all__ = [
    "LOCK_NAME", "MANIFEST_NAME", "RUN_FILES", "RUN_PATTERNS", "RunLock", "process_alive", "process_identity",
    "existing_run_files", "read_manifest", "record_outputs", "check_run_folder", "clear_run_folder",
    "remove_stale_temporaries", "write_text_atomic",
]

LOCK_NAME = ".taggnn.lock"
MANIFEST_NAME = ".taggnn-manifest.json"
#: Names of the files (and the ``tensorboard`` folder) a training run writes into its folder.
RUN_FILES = ("last.pt", "best.pt", "config.yaml", "log.jsonl", "summary.json", "backbone.pt", "tensorboard",
             "log.csv", "params.csv")
#: Patterns of the evaluation outputs a run (or ``taggnn eval``) writes into a run folder.
RUN_PATTERNS = ("metrics_*.json", "per_class_*.csv", "confusion_*.png", "skipped_*.txt")

_HELD: Set[str] = set()  # lock files this process holds


# ------------------------------------------------------------------------ processes


def process_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this host (it may be another process than the
    one that wrote a file: compare :func:`process_identity`)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    except OSError:
        return False
    try:  # a zombie (killed, not yet reaped by its parent) runs no more
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _proc_start_ticks(pid: int) -> Optional[int]:
    """The start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces and parentheses
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_identity(pid: int) -> Optional[str]:
    """What tells a process apart from a later one with the same PID: the boot and the start
    time of the process (``/proc`` on Linux; psutil's creation time elsewhere, when installed);
    ``None`` where neither is available (then only the PID is compared)."""
    ticks = _proc_start_ticks(pid)
    if ticks is not None:
        return f"{_boot_id()}:{ticks}"
    try:
        import psutil

        return f"created:{psutil.Process(pid).create_time():.2f}"
    except Exception:
        return None


def process_start_time(pid: int) -> Optional[float]:
    """When a process started (seconds since the epoch), or ``None`` where unknown."""
    ticks = _proc_start_ticks(pid)
    if ticks is not None:
        try:
            boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                        if line.startswith("btime "))
            return boot + ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, StopIteration, ValueError):
            return None
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:
        return None


# ---------------------------------------------------------------------- small writes


@contextlib.contextmanager
def _folder_mutex(folder: Path) -> Iterator[None]:
    """Serialises read-modify-write of a folder's lock and manifest between processes (flock on
    the folder itself where the platform has it)."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _write_synced(path: Path, data: bytes) -> None:
    """``data`` into a new file ``path`` (flushed to disk); on any failure nothing is left."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename: ``path`` holds the old
    or the new text, never a part of it."""
    path = Path(path)
    tmp = temporary_path(path)
    _write_synced(tmp, text.encode())
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- the lock


class RunLock:
    """An exclusive lock file in a run folder: two processes never write into one run.

    The lock holds ``{"pid", "host", "identity"}`` and appears complete or not at all (written to
    a temporary file, then hard-linked to ``.taggnn.lock``, which fails when a lock exists). A
    lock is stale, and taken over with a warning, when its process is gone: no process with its
    PID, a process whose start time differs (the PID was reused), or this process's own PID while
    this process does not hold it (a restarted container); or when the file is empty (left by an
    older taggnn on a full disk). A lock that cannot be written (a full disk) leaves nothing behind.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self.held = False
        self.text = ""

    def __enter__(self) -> "RunLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(), "identity": process_identity(os.getpid())}
        self.text = json.dumps(me)
        for _ in range(3):
            if self._create():
                self.held = True
                _HELD.add(str(self.path.resolve()))
                return self
            with _folder_mutex(self.path.parent):
                text = self._read()
                if text is None:  # released meanwhile: try again
                    continue
                owner = _parse_owner(text)
                stale = self._stale(owner, text)
                if stale is None:
                    raise TrainingError(
                        f"{self.path.parent} is in use by another taggnn process ({_describe(owner, text)}); wait "
                        f"for it to finish, or remove {self.path} if that process is gone")
                logger.warning("%s: taking over a stale lock (%s)", self.path, stale)
                self.path.unlink(missing_ok=True)
        raise TrainingError(f"could not lock {self.path}: other processes keep taking it")  # pragma: no cover

    def _create(self) -> bool:
        """Creates the lock with its full contents; False when a lock exists."""
        tmp = temporary_path(self.path)
        try:
            _write_synced(tmp, self.text.encode())
        except OSError as error:
            raise TrainingError(
                f"cannot lock {self.path.parent}: writing {self.path} failed ({error.strerror or error}); nothing "
                f"was left behind: free some space (or fix the folder's permissions) and run again") from None
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create, then write
            return self._create_without_link()
        finally:
            tmp.unlink(missing_ok=True)

    def _create_without_link(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self.text.encode())
            os.fsync(fd)
        except OSError as error:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise TrainingError(f"cannot lock {self.path.parent}: writing {self.path} failed "
                                f"({error.strerror or error}); nothing was left behind: free some space and run "
                                f"again") from None
        os.close(fd)
        return True

    def _read(self) -> Optional[str]:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return "?"

    def _stale(self, owner: Optional[Dict[str, Any]], text: str) -> Optional[str]:
        """Why the lock is stale, or ``None`` while its owner may run."""
        if not text.strip():
            return "the lock file is empty"
        if owner is None or owner.get("host") != socket.gethostname():
            return None  # not ours to judge
        pid = owner["pid"]
        if pid == os.getpid():
            if str(self.path.resolve()) in _HELD:
                return None  # this process holds it
            return f"it names this process's PID {pid}, left by an earlier process with the same PID"
        if not process_alive(pid):
            return f"process {pid} is gone"
        identity, now = owner.get("identity"), process_identity(pid)
        if identity and now and identity != now:
            return f"PID {pid} now belongs to another process"
        return None

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        _HELD.discard(str(self.path.resolve()))
        with _folder_mutex(self.path.parent):
            if self._read() == self.text:  # never remove a lock another process took over
                self.path.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        self.release()


def _parse_owner(text: str) -> Optional[Dict[str, Any]]:
    try:
        owner = json.loads(text)
        if isinstance(owner, dict) and isinstance(owner.get("pid"), int):
            return owner
    except ValueError:
        pass
    parts = text.split()  # an older taggnn's "<pid> <host>"
    if len(parts) == 2 and parts[0].isdigit():
        return {"pid": int(parts[0]), "host": parts[1], "identity": None}
    return None


def _describe(owner: Optional[Dict[str, Any]], text: str) -> str:
    if owner is None:
        return f"unknown: the lock holds {text.strip()[:60]!r}"
    return f"process {owner['pid']} on {owner.get('host')}"


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
    with _folder_mutex(folder):
        recorded = read_manifest(folder) or []
        if set(names) - set(recorded):
            _write_manifest(folder, recorded + names)


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
    with _folder_mutex(out):
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
