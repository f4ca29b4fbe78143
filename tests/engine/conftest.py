"""Fixtures shared by the engine tests."""
import shutil

import pytest

from taggnn.cli import main

from .test_trainer import SMALL

CLI_SMALL = [item for value in SMALL for item in ("--set", value)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny finished run (best.pt, last.pt and the final test's files); tests work on copies."""
    out = tmp_path_factory.mktemp("trained")
    assert main(["train", "--out", str(out), "--no-progress", *CLI_SMALL, "--set", "train.epochs=1",
                 "--set", "data.synth_train=16"]) == 0
    return out


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy, ignore=shutil.ignore_patterns("tensorboard", ".taggnn.lock"))
    return copy
