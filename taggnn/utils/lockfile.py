"""An exclusive lock file that recognises the locks of processes that have ended.

The lock holds ``{"pid", "host", "identity"}``, where the identity tells a process apart from a
later one with the same PID (the boot and the process's start time). It appears complete or not
at all: written to a private temporary file, flushed to disk, then hard-linked to the lock's name,
which fails while a lock exists. A lock is stale, and taken over with a warning, when its process
is gone: no process with its PID (or only a zombie), a process with another identity (the PID was
reused), or this process's own PID while this process does not hold it (a restarted container
whose process is PID 1 again); or when the file is empty. A lock of another host is never taken
over. Takeover and release happen under a flock of the folder, so two processes never both take
one stale lock over. A lock that cannot be written (a full disk) leaves nothing behind and raises
a one-line error.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Set

from .outputs import temporary_path, write_synced

logger = logging.getLogger(__name__)

__all__ = ["LockFile", "folder_mutex", "process_alive", "process_identity", "process_start_time"]

_HELD: Set[str] = set()  # the lock files this process holds (resolved paths)


# ------------------------------------------------------------------------ processes


def process_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this host (it may be another process than the
    one that wrote a file: compare :func:`process_identity`). A zombie runs no more."""
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


@contextlib.contextmanager
def folder_mutex(folder: Path) -> Iterator[None]:
    """Serialises read-modify-write of the files of a folder (its lock, its manifest) between
    processes (flock on the folder itself where the platform has it)."""
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


# --------------------------------------------------------------------------- the lock


class LockFile:
    """An exclusive lock held as the file ``path``: a context manager (:meth:`release` ends it
    early). See the module's description for when a lock is stale.

    Args:
        path: The lock file (its folder is created when missing).
        error (callable): Builds the exception raised, from a one-line message, when a live
            process holds the lock or the lock cannot be written (default :class:`RuntimeError`).
        what (str): What the lock protects, as messages name it (default: the lock's folder).
    """

    def __init__(self, path, *, error: Callable[[str], Exception] = RuntimeError, what: str = ""):
        self.path = Path(path)
        self.error = error
        self.what = what or str(self.path.parent)
        self.held = False
        self.text = ""  # what this process wrote into the lock

    def __enter__(self) -> "LockFile":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        self.text = json.dumps({"pid": pid, "host": socket.gethostname(), "identity": process_identity(pid)})
        for _ in range(3):
            if self._create():
                self.held = True
                _HELD.add(str(self.path.resolve()))
                return self
            with folder_mutex(self.path.parent):
                text = self._read()
                if text is None:  # released meanwhile: try again
                    continue
                owner = _parse_owner(text)
                stale = self._stale(owner, text)
                if stale is None:
                    raise self.error(
                        f"{self.what} is in use by another taggnn process ({_describe(owner, text)}); wait for it "
                        f"to finish, or remove {self.path} if that process is gone")
                logger.warning("%s: taking over a stale lock (%s)", self.path, stale)
                self.path.unlink(missing_ok=True)
        raise self.error(f"could not lock {self.path}: other processes keep taking it")  # pragma: no cover

    def _create(self) -> bool:
        """Creates the lock with its full contents; False when a lock exists."""
        tmp = temporary_path(self.path)
        try:
            write_synced(tmp, lambda f: f.write(self.text.encode()))
        except OSError as error:
            raise self._write_failed(error) from None
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
            self.path.unlink(missing_ok=True)
            raise self._write_failed(error) from None
        finally:
            os.close(fd)
        return True

    def _write_failed(self, error: OSError) -> Exception:
        return self.error(
            f"cannot lock {self.what}: writing {self.path} failed ({error.strerror or error}); nothing was left "
            f"behind: free some space (or fix the folder's permissions) and run again")

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
        """Removes the lock, unless another process took it over meanwhile."""
        if not self.held:
            return
        self.held = False
        _HELD.discard(str(self.path.resolve()))
        with folder_mutex(self.path.parent):
            if self._read() == self.text:
                self.path.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        self.release()


def _parse_owner(text: str) -> Optional[Dict[str, Any]]:
    """The owner a lock names: ``{"pid", "host", "identity"}``; also the plain-text locks of older
    taggnn versions, ``<pid> <host>`` and ``<pid> <start ticks or -> <host>``."""
    try:
        owner = json.loads(text)
        if isinstance(owner, dict) and isinstance(owner.get("pid"), int):
            return owner
    except ValueError:
        pass
    parts = text.split()
    if len(parts) == 2 and parts[0].isdigit():
        return {"pid": int(parts[0]), "host": parts[1], "identity": None}
    if len(parts) == 3 and parts[0].isdigit():
        ticks = parts[1] if parts[1].isdigit() else None
        return {"pid": int(parts[0]), "host": parts[2], "identity": ticks and f"{_boot_id()}:{ticks}"}
    return None


def _describe(owner: Optional[Dict[str, Any]], text: str) -> str:
    if owner is None:
        return f"unknown: the lock holds {text.strip()[:60]!r}"
    return f"process {owner['pid']} on {owner.get('host')}"
