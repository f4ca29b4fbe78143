"""Run folders: the lock comes before any removal, ``--overwrite`` removes only what a run's
manifest lists (never an input of the command), ``--resume`` never mixes two runs, locks and
temporary files of processes that are gone are recognised, and every advice is a command that
works (each is run here)."""
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch

import taggnn.engine.trainer as trainer_module
from taggnn.cli import main
from taggnn.engine import load_checkpoint, train
from taggnn.engine.runfolder import MANIFEST_NAME, RunLock, process_identity, read_manifest, record_outputs
from taggnn.errors import TrainingError

from ..helpers import CLI_SMALL, small_config


def commands(message: str):
    """The ``taggnn train ...`` commands a message advises."""
    return [command.strip() for command in re.findall(r"taggnn train [^;(),]+", message)]


def run_command(command: str) -> int:
    return main(shlex.split(command)[1:] + ["--no-progress"])


def files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != "log.jsonl"}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run of one epoch stopped at train.max_steps=2 (a last.pt, no best.pt yet)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    assert main(["train", "--out", str(out), "--no-progress", *CLI_SMALL, "--set", "train.epochs=1",
                 "--set", "train.max_steps=2"]) == 0
    return out


@pytest.fixture(scope="module")
def finished(stopped, tmp_path_factory):
    """The stopped run, resumed to its end (best.pt, metrics, summary)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    shutil.copytree(stopped, out)
    train(small_config("train.epochs=1"), out, resume=out / "last.pt", progress=False)
    return out


# ------------------------------------------------------------------ --overwrite

PAUSED_TRAINER = """
import sys
import taggnn.engine.trainer as trainer
real = trainer.Trainer.save_last
def save_last(self, *args, **kwargs):
    real(self, *args, **kwargs)
    if not getattr(trainer, "paused", False):
        trainer.paused = True
        print("checkpointed", flush=True)
        sys.stdin.readline()
trainer.Trainer.save_last = save_last
from taggnn.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_overwrite_of_a_folder_another_process_trains_in_removes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    live = subprocess.Popen([sys.executable, "-c", PAUSED_TRAINER, "train", "--out", str(out), "--no-progress",
                             *CLI_SMALL, "--set", "train.epochs=1", "--set", "train.checkpoint_every_steps=1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "checkpointed", live.stderr.read()
        before = files(out)
        assert {"last.pt", "config.yaml"} <= set(before)
        assert main(["train", "--out", str(out), "--overwrite", "--no-progress", *CLI_SMALL,
                     "--set", "train.max_steps=1"]) == 2
        assert "in use by another taggnn process" in capsys.readouterr().err
        assert files(out) == before  # nothing removed, nothing written
        live.stdin.write("\n")
        live.stdin.flush()
        assert live.wait(timeout=600) == 0, live.stderr.read()
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
    metrics = json.loads((out / "metrics_test.json").read_text())
    assert os.path.isfile(metrics["checkpoint"])
    assert {"last.pt", "best.pt", "config.yaml", "log.jsonl", "metrics_test.json"} <= set(read_manifest(out))


def test_overwrite_keeps_the_commands_inputs_and_refuses_files_no_manifest_lists(stopped, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    from taggnn.models import build_backbone

    # a backbone.pt the previous run wrote (recorded), now the next run's model.weights
    torch.save(build_backbone("r2plus1d_tiny").state_dict(), out / "backbone.pt")
    record_outputs(out, ["backbone.pt"])
    weights = (out / "backbone.pt").read_bytes()
    (out / "notes.txt").write_text("mine")
    shutil.copy(out / "config.yaml", tmp_path / "config.yaml")  # the run's own config.yaml is a file it writes
    assert main(["train", "--config", str(tmp_path / "config.yaml"), "--out", str(out), "--overwrite", "--no-progress",
                 "--set", f"model.weights={out / 'backbone.pt'}", "--set", "train.max_steps=1"]) == 0
    assert (out / "backbone.pt").read_bytes() == weights and (out / "notes.txt").read_text() == "mine"
    assert load_checkpoint(out / "last.pt")["step"] == 1 and (out / "config.yaml").is_file()
    assert {"backbone.pt", "config.yaml", "last.pt"} <= set(read_manifest(out))

    # files that no manifest lists (an older taggnn's run, or the user's own) are never removed
    older = tmp_path / "older"
    shutil.copytree(stopped, older)
    (older / MANIFEST_NAME).unlink()
    before = files(older)
    assert main(["train", "--out", str(older), "--overwrite", "--no-progress", *CLI_SMALL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no taggnn manifest" in err and "last.pt" in err and "move them" in err
    assert files(older) == before
    advised = commands(err)
    assert advised == [f"taggnn train --resume {older / 'last.pt'}"]
    stopped_at_max_steps = json.loads((older / "summary.json").read_text())["test_skipped"]
    assert commands(stopped_at_max_steps.replace(str(stopped), str(older))) == advised  # the same advice
    assert run_command(advised[0]) == 0  # an older run continues, and is recorded from then on
    assert json.loads((older / "summary.json").read_text())["steps"] == 6
    assert {"last.pt", "best.pt", "summary.json", "metrics_test.json"} <= set(read_manifest(older))


def test_a_folder_holding_a_run_is_refused_with_advice_that_works(stopped, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    assert main(["train", "--out", str(out), "--no-progress", *CLI_SMALL, "--set", "train.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "add --overwrite" in err
    assert commands(err) == [f"taggnn train --resume {out / 'last.pt'}"]
    # the config of a user inside the folder, not written by a run: refused, never written over
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("train:\n  max_steps: 1\n")
    assert main(["train", "--config", str(mine / "config.yaml"), "--out", str(mine), "--overwrite",
                 "--no-progress", *CLI_SMALL]) == 2
    assert "config.yaml" in capsys.readouterr().err
    assert (mine / "config.yaml").read_text() == "train:\n  max_steps: 1\n"


# ----------------------------------------------------------------------- --resume


def test_resume_into_a_folder_holding_another_run_is_refused(stopped, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(stopped, a)
    shutil.copytree(stopped, b)
    before = files(b)
    assert main(["train", "--resume", str(a / "last.pt"), "--out", str(b), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and f"taggnn train --resume {a / 'last.pt'}" in commands(err)
    assert files(b) == before


def test_resume_into_an_empty_folder_makes_a_complete_run_there(finished, tmp_path):
    b = tmp_path / "b"
    assert main(["train", "--resume", str(finished / "last.pt"), "--out", str(b), "--no-progress"]) == 0
    metrics = json.loads((b / "metrics_test.json").read_text())
    assert metrics["checkpoint"] == str(b / "best.pt")
    assert (b / "best.pt").read_bytes() == (finished / "best.pt").read_bytes()


def test_resume_continues_with_the_checkpoints_own_config(stopped, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    # a key that cannot change on resume is refused, naming it; an equal value is no change
    assert main(["train", "--resume", str(out / "last.pt"), "--set", "model.K=3", "--set", "data.num_frames=8",
                 "--set", "optim.lr=5e-4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "model.K: 2 -> 3" in err and "data.num_frames" not in err.split("may change")[0]
    assert main(["train", "--resume", str(out / "last.pt"), "--config", "synthgym_tiny", "--no-progress"]) == 2
    assert "data.num_frames: 8 -> 16" in capsys.readouterr().err
    advised = commands(err)
    assert advised == [f"taggnn train --resume {out / 'last.pt'} --set optim.lr=5e-4"]
    assert run_command(advised[0]) == 0  # the run was started with --set overrides: no need to repeat them
    config = load_checkpoint(out / "last.pt")["config"]
    assert config["data"]["num_frames"] == 8 and config["optim"]["lr"] == 5e-4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and "test" in summary


# -------------------------------------------------------------------------- locks


def test_a_lock_naming_this_process_or_an_empty_lock_is_stale(tmp_path):
    lock = tmp_path / trainer_module.LOCK_NAME
    lock.write_text(f"{os.getpid()} {socket.gethostname()}")  # a restarted container: PID 1 again
    with RunLock(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    lock.write_text("")  # left by a lock writer on a full disk
    with RunLock(tmp_path):
        assert lock.read_text()
    with RunLock(tmp_path):
        with pytest.raises(TrainingError, match="in use by another taggnn process"):
            RunLock(tmp_path).__enter__()  # held by this process: not stale


def test_a_lock_of_a_live_process_is_refused_and_a_reused_pid_recognised(tmp_path):
    lock = tmp_path / trainer_module.LOCK_NAME
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        owner = {"pid": other.pid, "host": socket.gethostname(), "identity": process_identity(other.pid)}
        lock.write_text(json.dumps(owner))
        with pytest.raises(TrainingError, match=f"in use by another taggnn process \\(process {other.pid}"):
            RunLock(tmp_path).__enter__()
        if owner["identity"] is not None:  # the same PID, another process: stale
            lock.write_text(json.dumps(dict(owner, identity="0:1")))
            with RunLock(tmp_path):
                assert json.loads(lock.read_text())["pid"] == os.getpid()
    finally:
        other.communicate(b"")


LIMITED_LOCK = """
import resource, signal, sys
from taggnn.engine.trainer import RunLock
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # every write fails, like a full disk
try:
    with RunLock(sys.argv[1]):
        pass
except Exception as error:
    print(type(error).__name__, error)
"""


def test_a_lock_that_cannot_be_written_leaves_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-c", LIMITED_LOCK, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.startswith("TrainingError cannot lock") and "nothing was left behind" in done.stdout
    assert list(tmp_path.iterdir()) == []
    with RunLock(tmp_path):  # and a later run locks the folder
        pass


KILLED_WRITER = """
import sys
import taggnn.engine.checkpoint as checkpoint
def stuck(obj, f, *args, **kwargs):
    f.write(b"partial")
    f.flush()
    print("writing", flush=True)
    sys.stdin.readline()
checkpoint.torch.save = stuck
checkpoint.save_checkpoint(sys.argv[1], {"model": {}, "config": {}})
"""


def test_temporary_files_of_killed_writers_are_removed_on_the_next_start(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(out / "last.pt")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    killed = out / f".last.pt.{writer.pid}.tmp"
    assert killed.read_bytes() == b"partial"
    ours = out / f".best.pt.{os.getpid()}.tmp"  # an earlier process with this PID
    ours.write_bytes(b"partial")
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        live = out / f".summary.json.{alive.pid}.tmp"  # a writer that still runs
        live.write_bytes(b"partial")
        train(small_config("train.max_steps=1"), out, progress=False)
        assert not killed.exists() and not ours.exists() and live.exists()
    finally:
        alive.communicate(b"")


def test_eval_results_in_a_run_folder_are_listed_and_removed_by_overwrite(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--split", "val", "--no-progress"]) == 0
    assert (out / "metrics_val.last.json").is_file() and "metrics_val.last.json" in read_manifest(out)
    assert main(["train", "--out", str(out), "--overwrite", "--no-progress", *CLI_SMALL,
                 "--set", "train.epochs=1", "--set", "train.max_steps=1"]) == 0
    assert not (out / "metrics_val.last.json").exists()
