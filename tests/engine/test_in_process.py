"""Many runs in one process (e.g. a study of short runs): train() leaves the process as it found it,
so a run trained after another one in the same process gives the results of a fresh process."""
import json
import logging
import os
import random
import subprocess
import sys

import numpy as np
import torch

from taggnn.engine import load_checkpoint, train

from ..helpers import small_config

# two short runs of another seed and determinism setting than each other
FIRST = ["train.epochs=1", "data.synth_train=16", "data.synth_val=8", "data.synth_test=8", "train.seed=3"]
SECOND = ["train.epochs=1", "data.synth_train=16", "data.synth_val=8", "data.synth_test=8", "train.seed=5",
          "train.deterministic=false"]

SEPARATE = """
import json, sys
from taggnn.engine import load_config, train
from tests.helpers import SMALL
summary = train(load_config("synthgym_tiny", SMALL + json.loads(sys.argv[1])), sys.argv[2], progress=False)
print(json.dumps({"test": summary["test"], "history": summary["history"]}))
"""


def _state():
    return {"python": random.getstate(), "numpy": np.random.get_state()[1].tolist(),
            "torch": torch.get_rng_state(), "deterministic": torch.are_deterministic_algorithms_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "threads": torch.get_num_threads(),
            "handlers": (list(logging.getLogger().handlers), list(logging.getLogger("taggnn").handlers))}


def test_runs_in_one_process_equal_runs_in_separate_processes(tmp_path):
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    before = _state()
    train(small_config(*FIRST), tmp_path / "first", progress=False)
    after_first = _state()
    second = train(small_config(*SECOND), tmp_path / "second", progress=False)
    after = _state()
    for state in (after_first, after):
        assert torch.equal(state.pop("torch"), before["torch"])
        assert state == {key: value for key, value in before.items() if key != "torch"}

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", SEPARATE, json.dumps(SECOND), str(tmp_path / "alone")],
                          capture_output=True, text=True, env=env, cwd=os.getcwd(), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    alone = json.loads(done.stdout.strip().splitlines()[-1])
    assert second["test"].pop("checkpoint") == str(tmp_path / "second" / "best.pt")
    assert second["test"] == {k: v for k, v in alone["test"].items() if k != "checkpoint"}
    for ours, theirs in zip(second["history"], alone["history"]):
        assert {k: v for k, v in ours.items() if k != "epoch_s"} == {k: v for k, v in theirs.items() if k != "epoch_s"}
    a = load_checkpoint(tmp_path / "second" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "alone" / "last.pt")["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)
