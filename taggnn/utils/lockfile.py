"""An exclusive lock file that recognises the locks of processes that have ended.

The lock file holds ``<pid> <process start time> <host>``. It is created atomically with its
content (written to a private temporary file, then hard-linked to the lock name, which fails
if the name exists), so no other process ever reads a half-written lock. A lock whose process
no longer runs on this host, or whose PID now belongs to a process started at another time
(the PID was reused), is stale and taken over with a warning.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Callable, Optional, Tuple

logger = logging.getLogger(__name__)

__all__ = ["LockFile", "process_start_time"]


def process_start_time(pid: int) -> Optional[str]:
    """The start time of process ``pid`` in clock ticks after boot (Linux ``/proc``), or
    :obj:`None` where unknown (no such process, or no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[19] if len(fields) > 19 else None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LockFile:
    """An exclusive lock held as the file ``path`` (a context manager).

    Args:
        path: The lock file.
        busy_error (callable): Builds the exception raised when a live process holds the lock,
            from the message (default: :class:`RuntimeError`).
        what (str): What the lock protects, for messages (e.g. ``"the features folder x"``).
    """

    def __init__(self, path, *, busy_error: Callable[[str], Exception] = RuntimeError, what: str = ""):
        self.path = Path(path)
        self.busy_error = busy_error
        self.what = what or str(self.path.parent)
        self.held = False

    @staticmethod
    def identity() -> str:
        pid = os.getpid()
        return f"{pid} {process_start_time(pid) or '-'} {socket.gethostname()}"

    @staticmethod
    def parse(text: str) -> Tuple[Optional[int], Optional[str], Optional[str]]:
        parts = text.split()
        if len(parts) != 3 or not parts[0].isdigit():
            return None, None, None
        return int(parts[0]), (None if parts[1] == "-" else parts[1]), parts[2]

    def stale(self, text: str) -> bool:
        """Whether the lock content ``text`` names a process that no longer holds it."""
        pid, started, host = self.parse(text)
        if pid is None or host != socket.gethostname():
            return False  # unreadable, or another host's: never taken over
        if not _process_alive(pid):
            return True
        now = process_start_time(pid)
        return started is not None and now is not None and now != started

    def __enter__(self) -> "LockFile":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = self.identity()
        private = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        private.write_text(me)
        try:
            for _ in range(3):
                try:
                    self._create(private, me)
                except FileExistsError:
                    if self._take_over_stale():
                        continue
                    owner = self._read()
                    pid, _, host = self.parse(owner)
                    holder = f"process {pid} on {host}" if pid is not None else "another process"
                    raise self.busy_error(
                        f"{self.what} is in use by {holder} (lock {self.path}); wait for it to finish, "
                        f"or remove {self.path} if that process is gone") from None
                self.held = True
                return self
        finally:
            private.unlink(missing_ok=True)
        raise self.busy_error(f"could not lock {self.path}: it keeps changing hands")

    def _create(self, private: Path, content: str) -> None:
        """Creates the lock with its content in one step; raises FileExistsError if it exists."""
        try:
            os.link(private, self.path)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: exclusive create, then write
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            with os.fdopen(fd, "w") as f:
                f.write(content)

    def _read(self) -> str:
        try:
            return self.path.read_text()
        except OSError:
            return ""

    def _take_over_stale(self) -> bool:
        """Removes the lock if it is stale; ``True`` when the caller should try again."""
        text = self._read()
        if not text:
            return not self.path.exists()  # released meanwhile
        if not self.stale(text):
            return False
        # Move it aside under a private name, then check it is still the stale one: a live
        # lock taken meanwhile by another process is put back.
        aside = self.path.with_name(f"{self.path.name}.{os.getpid()}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True
        moved = aside.read_text()
        if moved != text:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        pid, _, _ = self.parse(text)
        logger.warning("%s: taking over the stale lock of process %s, which no longer runs", self.path, pid)
        return True

    def __exit__(self, *exc) -> None:
        if self.held:
            if self._read() == self.identity():
                self.path.unlink(missing_ok=True)
            self.held = False
