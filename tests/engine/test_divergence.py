"""Divergence: a checkpoint is kept only while it can continue the run (the blow-up rule), a
resume refuses one that cannot, and every advice is a command that works (each is run here)."""
import math
import re
import shlex
import shutil

import pytest
import torch

import taggnn.engine.trainer as trainer_module
from taggnn.cli import main
from taggnn.engine import load_checkpoint, train
from taggnn.engine.trainer import MAX_HEALTHY_WEIGHT, checkpoint_problem, loss_limit
from taggnn.errors import TrainingError

from ..helpers import CLI_SMALL, small_config


def commands(message: str):
    return [command.strip() for command in re.findall(r"taggnn train [^;(),]+", message)]


def run_command(command: str) -> int:
    return main(shlex.split(command)[1:] + ["--no-progress"])


def test_the_blow_up_rule():
    names = ["w"]
    assert checkpoint_problem({"w": torch.ones(3)}, names, 2.0, 16) is None
    assert "NaN or infinity" in checkpoint_problem({"w": torch.tensor([1.0, math.nan])}, names, 2.0, 16)
    assert "exploded" in checkpoint_problem({"w": torch.tensor([2 * MAX_HEALTHY_WEIGHT])}, names, 2.0, 16)
    assert checkpoint_problem({"w": torch.ones(1), "running_var": torch.tensor([1e9])}, names, None, 16) is None
    assert loss_limit(16) == pytest.approx(10 * math.log(16))
    assert "blow-up limit" in checkpoint_problem({"w": torch.ones(1)}, names, 30.0, 16)
    assert "blow-up limit" in checkpoint_problem({"w": torch.ones(1)}, names, math.nan, 16)


@pytest.fixture(scope="module")
def blown_up(tmp_path_factory):
    """A run whose weights explode (finite, x1e6) at step 3 and turn NaN at step 4; then the
    command its message advises is run. Returns the message, the exit code of the advice and
    the folder."""
    out = tmp_path_factory.mktemp("blown_up")
    real_step = trainer_module.Trainer._optimizer_step

    def explode(self):
        real_step(self)
        with torch.no_grad():
            for p in self.model.parameters():
                if self.step == 3:
                    p.mul_(1e6)
                elif self.step == 4:
                    p.fill_(math.nan)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_module.Trainer, "_optimizer_step", explode)
        with pytest.raises(TrainingError) as error:
            train(small_config("train.epochs=1", "train.checkpoint_every_steps=1"), out, progress=False)
    message = str(error.value)
    kept_step = load_checkpoint(out / "last.pt")["step"]
    advised = commands(message)
    code = run_command(advised[0]) if len(advised) == 1 else None
    return message, kept_step, code, out


def test_an_exploded_run_stops_at_its_last_healthy_checkpoint(blown_up):
    message, kept_step, code, out = blown_up
    assert "exploded" in message and "at step 3" in message
    assert re.search(r"last good checkpoint .*last.pt from step 2", message) and kept_step == 2
    assert commands(message) == [f"taggnn train --resume {out / 'last.pt'} --set optim.lr=0.0002"]
    assert code == 0  # the advice continues from a checkpoint that can, to the end
    assert load_checkpoint(out / "last.pt")["step"] == 6 and (out / "metrics_test.json").is_file()


@pytest.mark.parametrize("ruin", ["nan", "explode"])
def test_resume_refuses_a_checkpoint_that_cannot_continue(blown_up, tmp_path, capsys, ruin):
    out = tmp_path / "run"
    shutil.copytree(blown_up[-1], out)  # finished by the advice: best.pt and last.pt
    checkpoint = load_checkpoint(out / "last.pt")
    key = next(k for k, v in checkpoint["model"].items() if v.is_floating_point() and v.numel() > 1)
    checkpoint["model"][key] = checkpoint["model"][key] * (math.nan if ruin == "nan" else 1e6)
    torch.save(checkpoint, out / "last.pt")
    assert main(["train", "--resume", str(out / "last.pt"), "--config", str(out / "config.yaml"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot continue the run" in err
    assert ("NaN or infinity" if ruin == "nan" else "exploded") in err
    advised = commands(err)
    assert advised == [f"taggnn train --resume {out / 'best.pt'} --set optim.lr=2e-05"]  # 10x below the run's
    assert run_command(advised[0]) == 0


def test_a_run_that_fails_before_its_first_checkpoint_advises_commands_that_work(tmp_path, monkeypatch, capsys):
    real = trainer_module.F.cross_entropy
    monkeypatch.setattr(trainer_module.F, "cross_entropy", lambda *a, **k: real(*a, **k) * math.nan)
    command = ["train", "--out", str(tmp_path), "--no-progress", *CLI_SMALL, "--set", "train.max_steps=1"]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "no checkpoint was written before it" in err and "--resume" not in err
    monkeypatch.setattr(trainer_module.F, "cross_entropy", real)
    assert main(command) == 2  # the folder holds the failed run: refused, without advising a missing last.pt
    refusal = capsys.readouterr().err
    assert "already holds a run" in refusal and "--resume" not in refusal and "--overwrite" in refusal
    advised = commands(err)
    fresh = tmp_path.parent / f"{tmp_path.name}_lr0.0002"  # a new folder: the run's config.yaml stays an input
    assert advised == [f"taggnn train --config {tmp_path / 'config.yaml'} --out {fresh} --set optim.lr=0.0002"]
    assert run_command(advised[0]) == 0
    checkpoint = load_checkpoint(fresh / "last.pt")
    assert checkpoint["step"] == 1 and checkpoint["config"]["optim"]["lr"] == 2e-4
