"""Fixtures shared by the test modules."""
import random
import shutil

import numpy as np
import pytest
import torch

from taggnn.cli import main

from .helpers import CLI_SMALL


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state, whatever ran before it: ``torch.randn`` in a test
    draws the same numbers alone, in a module, or in the whole suite in any order."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny finished run (best.pt, last.pt and the final test's files); tests work on copies."""
    out = tmp_path_factory.mktemp("trained")
    assert main(["train", "--out", str(out), "--no-progress", *CLI_SMALL, "--set", "train.epochs=1",
                 "--set", "data.synth_train=16"]) == 0
    return out


@pytest.fixture
def run(trained, tmp_path):
    """A private copy of :func:`trained` that a test may change."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy, ignore=shutil.ignore_patterns("tensorboard", ".taggnn.lock"))
    return copy
