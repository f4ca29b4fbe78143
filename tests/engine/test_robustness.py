"""Regression tests of the engine: no silent wrong results, no lost runs, clean errors."""
import errno
import json

import pytest
import torch

import taggnn.engine.checkpoint as checkpoint_module
import taggnn.engine.trainer as trainer_module
from taggnn.cli import main
from taggnn.engine import load_checkpoint, load_config, train
from taggnn.engine.checkpoint import save_checkpoint
from taggnn.errors import CheckpointError, ConfigError, TaggnnError, TrainingError

from ..helpers import CLI_SMALL, SMALL, small_config

# ---------------------------------------------------------------- 1. silent wrong results


@pytest.mark.parametrize("override,message", [
    ("optim.grad_clip=-1", r"optim.grad_clip=-1(\.0)? is out of range \(allowed: > 0\)"),
    ("train.epochs=0", r"train.epochs=0 is out of range \(allowed: >= 1\)"),
    ("train.batch_size=0", r"train.batch_size=0 is out of range"),
    ("optim.lr=-0.1", r"optim.lr=-0.1 is out of range \(allowed: > 0\)"),
    ("train.eval_batch_size=0", r"train.eval_batch_size=0 is out of range"),
    ("train.eval_every=0", r"train.eval_every=0 is out of range"),
    ("optim.accumulate=0", r"optim.accumulate=0 is out of range"),
    ("data.num_workers=-1", r"data.num_workers=-1 is out of range \(allowed: >= 0\)"),
    ("optim.label_smoothing=1", r"optim.label_smoothing=1(\.0)? is out of range \(allowed: \[0, 1\)\)"),
    ("model.K=-1", r"model.K=-1 is out of range"),
    ("model.alpha=0", r"model.alpha=0(\.0)? is out of range \(allowed: \(0, 1\]\)"),
    ("optim.min_lr=1", r"optim.min_lr=1(\.0)? exceeds optim.lr"),
    ("optim.lr=nan", r"optim.lr=nan is out of range"),
])
def test_config_ranges_are_checked_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("synthgym_tiny", [override])


def test_every_numeric_key_has_a_range():
    from dataclasses import fields

    from taggnn.engine.config import RANGES, Config

    config = Config()
    numeric = {f"{section}.{f.name}" for section in ("data", "model", "optim", "train", "eval")
               for f in fields(getattr(config, section)) if "int" in str(f.type) or "float" in str(f.type)}
    assert numeric - set(RANGES) == set()


def test_cli_range_error_is_one_line(capsys):
    assert main(["train", "--set", "optim.grad_clip=-1", "--set", "train.epochs=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "optim.grad_clip" in err and "train.epochs" in err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--out", str(out), "--no-progress", *CLI_SMALL, "--set", "train.epochs=1"]) == 0
    return out


def test_non_finite_checkpoint_is_refused(run, tmp_path, capsys):
    checkpoint = load_checkpoint(run / "best.pt")
    key = next(k for k, v in checkpoint["model"].items() if v.is_floating_point())
    checkpoint["model"][key] = checkpoint["model"][key] * float("nan")
    torch.save(checkpoint, tmp_path / "nan.pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "nan.pt"), "--no-progress"]) == 2
    assert "hold NaN or infinity" in capsys.readouterr().err
    from taggnn.data.synthgym import write_split

    write_split(tmp_path / "v", "test", count=1, num_frames=8, size=32)
    assert main(["predict", str(tmp_path / "v" / "test" / "000000.mp4"), "--checkpoint",
                 str(tmp_path / "nan.pt")]) == 2
    assert "hold NaN or infinity" in capsys.readouterr().err


def test_eval_refuses_a_dataset_with_other_class_names(run, tmp_path, capsys):
    from taggnn.data.synthgym import write_split

    write_split(tmp_path, "test", count=4, num_frames=8, size=32)
    csv = (tmp_path / "test.csv").read_text().replace("turn 0.5 cw", "somersault")
    (tmp_path / "test.csv").write_text(csv)
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--no-progress", "--set", "data.dataset=csv",
                 "--set", f"data.root={tmp_path}", "--set", f"data.test_csv={tmp_path / 'test.csv'}"]) == 2
    err = capsys.readouterr().err
    assert "in the training split" in err and "somersault" in err


# ------------------------------------------------------------------- 2. never lose a run


def test_resume_without_out_continues_in_the_runs_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "elsewhere" / "run1"
    assert main(["train", "--out", str(out), "--no-progress", *CLI_SMALL, "--set", "train.max_steps=2"]) == 0
    assert "test not evaluated: stopped at train.max_steps=2" in capsys.readouterr().out
    assert not (out / "metrics_test.json").exists()
    assert main(["train", "--resume", str(out / "last.pt"), "--no-progress", *CLI_SMALL]) == 0
    assert (out / "metrics_test.json").exists() and not (tmp_path / "runs").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 12 and "test" in summary
    # resuming a finished run says so
    again = train(small_config(), out, resume=out / "last.pt", progress=False)
    assert again["already_finished"] and again["steps"] == 12


def test_a_folder_holding_a_run_is_refused_unless_overwrite(run, capsys):
    assert main(["train", "--out", str(run), "--no-progress", *CLI_SMALL, "--set", "train.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err and "--resume" in err


def test_overwrite_starts_over(tmp_path):
    train(small_config("train.max_steps=1"), tmp_path, progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    summary = train(small_config("train.max_steps=2"), tmp_path, progress=False, overwrite=True)
    assert summary["steps"] == 2 and (tmp_path / "notes.txt").read_text() == "mine"


def test_a_locked_folder_is_refused_and_a_stale_lock_taken_over(tmp_path):
    import socket
    import subprocess
    import sys

    lock = tmp_path / trainer_module.LOCK_NAME
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        lock.write_text(f"{other.pid} {socket.gethostname()}")  # a live process holds it
        with pytest.raises(TrainingError, match="in use by another taggnn process"):
            train(small_config("train.max_steps=1"), tmp_path, progress=False)
    finally:
        other.communicate(b"")
    lock.write_text(f"999999999 {socket.gethostname()}")  # no such process
    summary = train(small_config("train.max_steps=1"), tmp_path, progress=False)
    assert summary["steps"] == 1 and not lock.exists()


def test_non_finite_weights_keep_the_last_finite_checkpoint_and_resume_with_lower_lr(tmp_path, monkeypatch):
    real_step = trainer_module.Trainer._optimizer_step

    def ruin(self):
        real_step(self)
        if self.step == 3:  # the loss of this step was finite; the update ruins the weights
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))

    monkeypatch.setattr(trainer_module.Trainer, "_optimizer_step", ruin)
    with pytest.raises(TrainingError, match=r"weights became non-finite .* at step 3; kept the last good checkpoint "
                                            r".*last.pt from step 2.*--set optim.lr=0.0002"):
        train(small_config("train.checkpoint_every_steps=1"), tmp_path, progress=False)
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert checkpoint["step"] == 2
    assert not trainer_module.non_finite_parameters(checkpoint["model"])
    monkeypatch.setattr(trainer_module.Trainer, "_optimizer_step", real_step)
    resumed = train(small_config("train.checkpoint_every_steps=1", "optim.lr=1e-4"), tmp_path,
                    resume=tmp_path / "last.pt", progress=False)
    assert resumed["steps"] == 12 and "test" in resumed
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert max(lrs) <= 1e-4 * (1 + 1e-6)


def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.ones(2)}, "config": {}})
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"no space left on device writing .*last.pt; the previous last.pt "
                                              r"is intact"):
        save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.zeros(2)}, "config": {}})
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["model"]["w"], torch.ones(2))


def test_an_interrupted_save_removes_its_temporary_file(tmp_path, monkeypatch):
    def interrupted(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "last.pt", {"model": {}, "config": {}})
    assert list(tmp_path.iterdir()) == []


def test_sigterm_while_saving_removes_the_temporary_file(tmp_path):
    import subprocess
    import sys

    script = f"""
import os, signal, torch
import taggnn.engine.checkpoint as c
real = torch.save
def slow(obj, f, *a, **k):
    f.write(b"partial")
    os.kill(os.getpid(), signal.SIGTERM)
    real(obj, f, *a, **k)
c.torch.save = slow
c.save_checkpoint({str(tmp_path / 'last.pt')!r}, {{"model": {{}}, "config": {{}}}})
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == -15  # killed by SIGTERM, as without the handler
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_are_self_contained(tmp_path):
    from taggnn.models import build_backbone

    weights = tmp_path / "backbone.pt"
    torch.save(build_backbone("r2plus1d_tiny").state_dict(), weights)
    train(small_config("train.epochs=1", f"model.weights={weights}"), tmp_path / "run", progress=False)
    weights.unlink()  # moved away after training
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--no-progress"]) == 0


def test_eval_with_overrides_keeps_the_runs_own_metrics(run):
    before = (run / "metrics_test.json").read_text()
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--no-progress", "--set",
                 "train.eval_batch_size=3"]) == 0
    assert (run / "metrics_test.json").read_text() == before
    tagged = json.loads((run / "metrics_test.best.train.eval_batch_size=3.json").read_text())
    assert tagged["overrides"] == ["train.eval_batch_size=3"] and tagged["split"] == "test"


def test_training_counts_and_lists_skipped_clips(tmp_path):
    from taggnn.data.synthgym import write_split

    for split, count in (("train", 16), ("val", 8), ("test", 8)):
        write_split(tmp_path / "videos", split, count=count, num_frames=8, size=32)
    for name in ("000001.mp4", "000005.mp4"):
        (tmp_path / "videos" / "test" / name).write_bytes(b"broken")
    config = load_config("synthgym_tiny", SMALL + [
        "data.dataset=csv", f"data.root={tmp_path / 'videos'}", "data.on_error=skip", "train.epochs=1",
        *(f"data.{s}_csv={tmp_path / 'videos' / (s + '.csv')}" for s in ("train", "val", "test"))])
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["test"]["count"] == 6 and summary["test"]["skipped"] == 2
    listed = (tmp_path / "run" / "skipped_test.txt").read_text().split()
    assert sorted(p.rsplit("/", 1)[1] for p in listed) == ["000001.mp4", "000005.mp4"]


# --------------------------------------------------------------------------- 3. errors


def test_foreign_checkpoints_say_what_they_are(tmp_path, capsys):
    torch.save({"pos_embedding": torch.zeros(1), "classifier.1.weight": torch.zeros(1)}, tmp_path / "authors.pth")
    with pytest.raises(CheckpointError, match="authors' TAG-Head checkpoint.*load_reference_checkpoint"):
        load_checkpoint(tmp_path / "authors.pth")
    torch.save({"w": torch.zeros(1)}, tmp_path / "state.pth")
    with pytest.raises(CheckpointError, match="plain state dict of 1 tensors"):
        load_checkpoint(tmp_path / "state.pth")
    torch.save({"model": torch.nn.Linear(1, 1), "config": {}}, tmp_path / "pickled.pth")
    assert main(["eval", "--checkpoint", str(tmp_path / "pickled.pth")]) == 2
    err = capsys.readouterr().err
    assert "pickled Python objects" in err and "weights_only=False" not in err and "likely succeed" not in err


def test_error_hierarchy_mixes_the_builtins():
    from taggnn.errors import AnnotationError, VideoError, WeightsError

    assert issubclass(ConfigError, ValueError) and issubclass(AnnotationError, ValueError)
    assert issubclass(CheckpointError, ValueError) and issubclass(TrainingError, RuntimeError)
    assert issubclass(VideoError, RuntimeError) and issubclass(WeightsError, RuntimeError)
    for cls in (ConfigError, AnnotationError, CheckpointError, TrainingError, VideoError, WeightsError):
        assert issubclass(cls, TaggnnError)


def test_synth_help_names_itself(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--help"])
    assert exit_info.value.code == 0
    assert "usage: taggnn synth" in capsys.readouterr().out
    assert main(["synth", "write", "/tmp/x", "--count", "0"]) == 2
