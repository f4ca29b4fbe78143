"""The lock file of run folders and feature caches: which locks are stale (taken over) and which
are refused, a lock that cannot be written leaves nothing, and of several processes taking over
one stale lock exactly one gets it."""
import errno
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taggnn.utils.lockfile import LockFile, process_alive, process_identity

HOST = socket.gethostname()

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


class Busy(Exception):
    """The error a caller asks for."""


def owner(pid, identity=None, host=HOST):
    return json.dumps({"pid": pid, "host": host, "identity": identity})


def start_ticks(pid):
    return process_identity(pid).rpartition(":")[2]


def state(pid):
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


@pytest.fixture
def sleeper():
    """A live process other than this one (it ends when its stdin is closed)."""
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield process
    process.communicate(b"")


def test_this_pid_is_stale_unless_this_process_holds_the_lock(tmp_path, caplog):
    path = tmp_path / "x.lock"
    # this PID and even this process's identity, but written by an earlier life (a restarted container)
    path.write_text(owner(os.getpid(), process_identity(os.getpid())))
    with caplog.at_level("WARNING", logger="taggnn"):
        with LockFile(path, error=Busy) as held:
            assert path.read_text() == held.text
            with pytest.raises(Busy, match="in use by another taggnn process"):
                LockFile(path, error=Busy).__enter__()  # now this process holds it: not stale
            assert path.read_text() == held.text
    assert f"names this process's PID {os.getpid()}" in caplog.text
    assert not path.exists()


@needs_proc
@pytest.mark.parametrize("written", ["json", "pid ticks host"])
def test_a_reused_pid_is_stale(tmp_path, sleeper, caplog, written):
    path = tmp_path / "x.lock"
    other_start = str(int(start_ticks(sleeper.pid)) + 1)  # the same PID, a process started at another time
    path.write_text(owner(sleeper.pid, process_identity(sleeper.pid).rpartition(":")[0] + ":" + other_start)
                    if written == "json" else f"{sleeper.pid} {other_start} {HOST}")
    with caplog.at_level("WARNING", logger="taggnn"):
        with LockFile(path, error=Busy):
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"PID {sleeper.pid} now belongs to another process" in caplog.text
    assert sleeper.poll() is None and not path.exists()


@needs_proc
@pytest.mark.parametrize("written", ["json", "pid ticks host", "pid host", "another host"])
def test_the_lock_of_a_live_process_or_of_another_host_is_refused(tmp_path, sleeper, written):
    path = tmp_path / "x.lock"
    pid = sleeper.pid if written != "another host" else 999999999  # no such PID here
    text = {"json": owner(pid, process_identity(pid)), "pid ticks host": f"{pid} {start_ticks(sleeper.pid)} {HOST}",
            "pid host": f"{pid} {HOST}", "another host": owner(pid, "x:1", host="elsewhere")}[written]
    path.write_text(text)
    host = "elsewhere" if written == "another host" else HOST
    with pytest.raises(Busy, match=rf"^the cache is in use by another taggnn process \(process {pid} on "
                                   rf"{re.escape(host)}\); wait for it to finish, or remove .*x.lock if"):
        LockFile(path, error=Busy, what="the cache").__enter__()
    assert path.read_text() == text and sorted(p.name for p in tmp_path.iterdir()) == ["x.lock"]


@needs_proc
def test_a_zombie_an_ended_process_and_an_empty_lock_are_stale(tmp_path, caplog):
    path = tmp_path / "x.lock"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = process_identity(child.pid)
    for _ in range(100000):  # until it has ended; it stays a zombie while not waited for
        if state(child.pid) == "Z":
            break
        time.sleep(0.01)
    assert state(child.pid) == "Z" and not process_alive(child.pid)
    with caplog.at_level("WARNING", logger="taggnn"):
        path.write_text(owner(child.pid, identity))
        with LockFile(path, error=Busy):
            pass
        assert f"process {child.pid} is gone" in caplog.text
        child.wait()
        path.write_text(owner(child.pid, identity))  # reaped: no process at all
        with LockFile(path, error=Busy):
            pass
        path.write_text(" \n")  # an empty lock
        with LockFile(path, error=Busy) as held:
            assert path.read_text() == held.text
    assert "the lock file is empty" in caplog.text and not path.exists()


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_lock_that_cannot_be_written_leaves_nothing(tmp_path, monkeypatch, hard_links):
    real_fsync, calls = os.fsync, []

    def full_disk(fd):
        calls.append(fd)
        if hard_links or len(calls) > 1:  # without hard links: the lock itself fails
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    def no_link(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "fsync", full_disk)
    if not hard_links:
        monkeypatch.setattr(os, "link", no_link)
    with pytest.raises(Busy, match=r"^cannot lock the cache: writing .*x.lock failed \(No space left on device\); "
                                   r"nothing was left behind"):
        LockFile(tmp_path / "x.lock", error=Busy, what="the cache").__enter__()
    assert list(tmp_path.iterdir()) == [] and len(calls) == (1 if hard_links else 2)
    monkeypatch.setattr(os, "fsync", real_fsync)
    with LockFile(tmp_path / "x.lock") as held:  # once there is space (with or without hard links)
        assert (tmp_path / "x.lock").read_text() == held.text
    assert list(tmp_path.iterdir()) == []


RACE = """
import os, sys, time
import taggnn.utils.lockfile as lockfile
path, takers, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
alive = lockfile.process_alive
lockfile.process_alive = lambda pid: time.sleep(0.05) or alive(pid)  # a wide gap between reading and removing
for _ in range(rounds):
    with open(path, "w") as f:
        f.write(sys.argv[4])  # a stale lock
    go, result, finish = os.pipe(), os.pipe(), os.pipe()
    children = []
    for _ in range(takers):
        child = os.fork()
        if child == 0:
            os.close(go[1])
            os.close(finish[1])
            os.read(go[0], 1)  # every taker starts at once
            try:
                lock = lockfile.LockFile(path).__enter__()
            except RuntimeError:
                os.write(result[1], b"0")
                os._exit(0)
            os.write(result[1], b"1")
            os.read(finish[0], 1)  # holds the lock until every taker has tried
            lock.release()
            os._exit(0)
        children.append(child)
    os.close(go[1])
    results = b""
    while len(results) < takers:
        results += os.read(result[0], takers)
    os.close(finish[1])
    for child in children:
        os.waitpid(child, 0)
    print(results.count(b"1"), os.path.exists(path))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_of_several_processes_taking_over_a_stale_lock_exactly_one_gets_it(tmp_path):
    stale = owner(999999999, "x:1")  # no such PID
    done = subprocess.run([sys.executable, "-c", RACE, str(tmp_path / "x.lock"), "5", "3", stale],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:-1] == ["1 False"] * 3
    assert list(tmp_path.iterdir()) == []
