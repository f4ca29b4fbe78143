"""Every user error the ``taggnn`` command can meet ends as one line on stderr with exit code 2,
found before any work: no model built, no data read, no run folder made."""
import json
import os
import re
import socket
import sys

import numpy as np
import pytest
import torch

import taggnn.engine.config as config_module
import taggnn.utils.memory as memory_module
from taggnn.cli import main
from taggnn.engine import load_config
from taggnn.errors import ConfigError

from .helpers import CLI_SMALL, SMALL

GIB = 1 << 30


@pytest.fixture
def machine_with_64_gib(monkeypatch):
    """Memory checks compare against a fixed machine, so that they do not depend on this one."""
    monkeypatch.setattr(config_module, "machine_memory", lambda: 64 * GIB, raising=False)
    monkeypatch.setattr(memory_module, "machine_memory", lambda: 64 * GIB)  # what taggnn synth write reads


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith(f"taggnn {command}: error: "), err
    return err


@pytest.mark.parametrize("overrides,message", [
    (["model.backbone=bogus"], r"model.backbone='bogus' is not a registered backbone; choose one of .*r2plus1d_tiny"),
    (["model.num_heads=3"], r"model.num_heads=3 does not divide the token width 128 \(the channels of "
                            r"model.backbone='r2plus1d_tiny'\).*use one of 1, 2, 4, 8"),
    (["model.embed_dim=96", "model.num_heads=5"], r"model.num_heads=5 does not divide the token width 96 "
                                                  r"\(model.embed_dim\)"),
    (["model.propagation=gat", "model.graph_heads=3"], r"model.graph_heads=3 does not divide the token width 128"),
    (["data.num_classes=7"], r"data.num_classes=7 does not fit SynthGym.*use one of 4, 8, 12, 16"),
    (["data.num_classes=5"], r"data.num_classes=5 does not fit SynthGym"),
    (["data.num_frames=2"], r"data.num_frames=2 is too short for SynthGym"),
    (["data.num_frames=4", "data.crop_size=64", "data.short_side=64", "data.synth_size=64", "model.backbone=s3d"],
     r"clips of data.num_frames=4 x data.crop_size=64 are too small for model.backbone='s3d'"),
    (["train.device=tpu"], r"train.device='tpu' is not a device \(auto, cpu, cuda, cuda:N or mps\)"),
    (["model.graph_kwargs={bogus: 1}"], r"model.graph_kwargs=\{'bogus': 1\} are arguments of a torch_geometric.nn "
                                        r"convolution, but model.propagation='appnp' takes none"),
    (["model.propagation=GATv2Conv", "model.graph_kwargs={bogus: 1}"],
     r"model.graph_kwargs: GATv2Conv takes no argument 'bogus'; its arguments: in_channels, out_channels, heads"),
    (["model.propagation=GATv2Conv", "model.graph_kwargs={heads: 3}"],
     r"GATv2Conv concatenates 3 heads: channels \(128\) must be divisible by heads"),
    (["model.graph_kwargs={a: [1"], r"--set model.graph_kwargs: the value '\{a: \[1' is not valid YAML"),
    (["model.num_layers=0"], r"model.num_layers=0 is out of range \(allowed: >= 1\)"),
    (["model.K=100000000"], r"model.K=100000000 is out of range \(allowed: \[0, 1024\]\)"),
    (["model.num_graph_layers=100000000"], r"model.num_graph_layers=100000000 is out of range"),
    (["data.test_split=holdout"], r"data.test_split='holdout' is not a split of synthgym \(train, val, test\)"),
    (["model.ffn_dim=1000000000"], r"this run would allocate at least 1.9 TiB \(the TAG-Head's parameters "
                                   r"\(model.num_layers=2 x \(4 x 128\^2 \+ 2 x 128 x model.ffn_dim=1000000000\).*"
                                   r"more than the 64.0 GiB of memory of this machine"),
    (["data.num_frames=2000000"], r"this run would allocate at least .* GiB \(a batch of 16 clips of 3 x 2000000 x "
                                  r"32 x 32 .*: 366.2 GiB"),
    (["data.synth_size=100000"], r"one SynthGym clip of 8 x 100000 x 100000 x 3 being rendered "
                                 r"\(data.synth_size\): 894.1 GiB"),
])
def test_train_config_errors_are_one_line_before_any_work(overrides, message, tmp_path, capsys, machine_with_64_gib):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-progress", *CLI_SMALL,
                 *(item for value in overrides for item in ("--set", value))]) == 2
    err = one_line_error(capsys, "train")
    assert re.search(message, err), err
    assert not out.exists()  # refused before the run folder was made


@pytest.mark.parametrize("overrides,message", [
    ([], r"data.num_classes=8 does not fit FineGym: use 99 \(Gym99\) or 288 \(Gym288\)"),
    (["data.num_classes=5"], r"data.num_classes=5 does not fit FineGym"),
    (["data.num_classes=99", "data.version=v2"], r"data.version='v2' is not a FineGym split version"),
    (["data.num_classes=99", "data.test_split=holdout"], r"data.test_split='holdout' needs data.holdout > 0"),
    (["data.num_classes=99"], r"FineGym: .*annotations/gym99_train_element_v1.1.txt not found"),
])
def test_finegym_config_errors_are_one_line(overrides, message, tmp_path, capsys):
    root = tmp_path / "finegym"  # no annotation files
    root.mkdir()
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-progress", "--set", "data.dataset=finegym",
                 "--set", f"data.root={root}", "--set", "data.num_classes=8",
                 *(item for value in overrides for item in ("--set", value))]) == 2
    assert re.search(message, one_line_error(capsys, "train"))
    assert not out.exists()


@pytest.mark.parametrize("override,message", [
    ("model.ffn_dim=1000000000", r"this run would allocate at least 1.9 TiB"),
    ("data.num_frames=200000", r"this run would allocate at least 595.1 GiB \(a batch of 64 clips of 3 x 200000 x "
                               r"64 x 64 .*: 585.9 GiB"),
])
def test_memory_bombs_of_the_default_config_are_refused(override, message, tmp_path, capsys, machine_with_64_gib):
    assert main(["train", "--out", str(tmp_path / "run"), "--set", override]) == 2
    assert re.search(message, one_line_error(capsys, "train"))
    assert not (tmp_path / "run").exists()


def test_memory_is_compared_with_the_machine(monkeypatch):
    config = load_config("synthgym_tiny", SMALL)
    parts = config_module.minimum_memory(config, 128)
    assert list(parts.values()) == [
        4 * 16 * 3 * 8 * 32 * 32,  # the larger of a training and an evaluation batch of clips, float32
        4 * 8 * 32 * 32 * 3,  # one SynthGym clip being rendered
        4 * 2 * (4 * 128 ** 2 + 2 * 128 * 32),  # 2 layers of 4C^2 + 2CF
    ]
    assert config_module.machine_memory() > GIB
    monkeypatch.setattr(config_module, "machine_memory", lambda: 1 << 20)
    with pytest.raises(ConfigError, match=r"would allocate at least 2.2 MiB.*more than the 1.0 MiB of memory"):
        config_module.check_memory(config, 128)


def test_validation_leaves_the_random_state_alone():
    torch.manual_seed(3)
    state = torch.random.get_rng_state()
    load_config("synthgym_tiny", SMALL + ["model.ffn_dim=48", "model.propagation=gat", "model.graph_heads=4"])
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("argv,message", [
    (["eval", "--checkpoint", "CKPT", "--device", "quantum"], r"--device 'quantum' is not a device: use auto, cpu"),
    (["predict", "v.mp4", "--checkpoint", "CKPT", "--device", "cuda:x"], r"--device 'cuda:x' is not a device"),
    (["predict", "v.mp4", "--checkpoint", "CKPT", "--topk", "-1"],
     r"argument --topk: expected an integer >= 1, got -1"),
    (["predict", "v.mp4", "--checkpoint", "CKPT", "--topk", "0"], r"argument --topk: expected an integer >= 1, got 0"),
    (["export", "--checkpoint", "CKPT", "--batch", "0"], r"argument --batch: expected an integer >= 1, got 0"),
    (["export", "--checkpoint", "CKPT", "--frames", "-3"], r"argument --frames: expected an integer >= 1, got -3"),
    (["tsne", "--checkpoint", "CKPT", "--max-clips", "0"], r"argument --max-clips: expected an integer >= 2, got 0"),
])
def test_bad_arguments_are_one_line_before_the_checkpoint_is_read(argv, message, tmp_path, capsys):
    argv = [str(tmp_path / "missing.pt") if a == "CKPT" else a for a in argv]
    assert main(argv) == 2
    assert re.search(message, one_line_error(capsys, argv[0])), argv


def test_cuda_device_on_a_machine_without_one(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["profile", "--no-latency", "--device", "cuda", *CLI_SMALL]) == 2
    assert "--device cuda: no CUDA device is available on this machine" in one_line_error(capsys, "profile")


@pytest.mark.parametrize("argv,message", [
    (["--count", "-1"], r"argument --count: expected an integer >= 1, got -1"),
    (["--num-frames", "2"], r"argument --num-frames: expected an integer >= 4 \(a move needs 4 frames\), got 2"),
    (["--size", "8"], r"argument --size: expected an integer >= 16 pixels, got 8"),
    (["--num-classes", "5"], r"argument --num-classes: invalid choice: 5 \(choose from 4, 8, 12, 16\)"),
    (["--seed", "-2"], r"argument --seed: expected an integer >= 0, got -2"),
    (["--long-tail", "0.5"], r"argument --long-tail: expected a number >= 1 \(an imbalance ratio\), got 0.5"),
    (["--long-tail", "nan"], r"argument --long-tail: expected a number >= 1"),
    (["--fps", "0"], r"argument --fps: expected an integer >= 1, got 0"),
    (["--num-frames", "16", "--size", "100000"], r"one clip of --num-frames 16 x --size 100000 x 100000 x 3 needs "
                                                 r"at least 1.7 TiB to render, more than the 64.0 GiB"),
])
def test_synth_write_arguments_are_one_line(argv, message, tmp_path, capsys, machine_with_64_gib):
    out = tmp_path / "synth"
    assert main(["synth", "write", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("taggnn synth"), err
    assert re.search(message, err), err
    assert not out.exists()


def test_predict_refuses_a_head_only_checkpoint(tmp_path, capsys):
    from taggnn.data import write_video
    from taggnn.engine.checkpoint import save_checkpoint
    from taggnn.engine.features import FEATURES_FORMAT, FEATURES_VERSION
    from taggnn.models import build_model_from_config

    features = tmp_path / "features"  # what `taggnn features` records of 8 frames of 32x32 (tiny backbone)
    features.mkdir()
    (features / "info.json").write_text(json.dumps({  # a manifest as taggnn features writes it
        "format": FEATURES_FORMAT, "version": FEATURES_VERSION, "fingerprint": "0" * 64, "fields": {},
        "channels": 128, "grid": [2, 2, 2], "settings": {}, "splits": {}}))
    config = load_config("synthgym_tiny", SMALL + [f"data.features={features}"])
    model = build_model_from_config(config, 16)
    save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "config": config.to_dict(),
                                           "classes": [str(c) for c in range(16)], "num_classes": 16})
    video = tmp_path / "clip.mp4"
    write_video(video, np.zeros((8, 32, 32, 3), np.uint8), fps=8)
    assert main(["predict", str(video), "--checkpoint", str(tmp_path / "best.pt"), "--device", "cpu"]) == 2
    err = one_line_error(capsys, "predict")
    assert f"holds a head trained on cached backbone features (data.features={features}): it has no backbone, " \
           "so it cannot take videos" in err


# ------------------------------------------------------------------ multi-process launch

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TAGGNN_RENDEZVOUS_TIMEOUT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("variables,message", [
    ({"WORLD_SIZE": "2"}, r"WORLD_SIZE=2 asks for 2 processes, but RANK, MASTER_ADDR, MASTER_PORT are not set: "
                          r"launch the run with torchrun"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, r"but MASTER_ADDR, MASTER_PORT are not set"),
    ({"WORLD_SIZE": "two"}, r"the environment variable WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "PORT"},
     r"the environment variable RANK=2 is out of range \(allowed: in \[0, 1\]\)"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "PORT",
      "TAGGNN_RENDEZVOUS_TIMEOUT": "soon"}, r"TAGGNN_RENDEZVOUS_TIMEOUT='soon' is not a number of seconds > 0"),
])
def test_launch_environment_is_checked_before_joining(variables, message, tmp_path, capsys, monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, str(free_port()) if value == "PORT" else value)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-progress", *CLI_SMALL]) == 2
    assert re.search(message, one_line_error(capsys, "train"))
    assert not out.exists()


def _train_in_child(environment, out, stderr_path):  # runs in a forked process
    os.environ.update(environment)
    with open(stderr_path, "w") as stderr:
        os.dup2(stderr.fileno(), 2)  # also what the C++ side of torch.distributed writes
        sys.stderr = stderr
        code = main(["train", "--out", str(out), "--no-progress", *CLI_SMALL])
        stderr.flush()
    os._exit(code)


def test_a_missing_peer_is_given_up_after_the_rendezvous_timeout(tmp_path):
    """Rank 0 of 2 with no rank 1: one line and exit code 2 after TAGGNN_RENDEZVOUS_TIMEOUT
    seconds, where the process group used to wait for 30 minutes."""
    import multiprocessing

    environment = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(free_port()), "TAGGNN_RENDEZVOUS_TIMEOUT": "1"}
    out, stderr_path = tmp_path / "run", tmp_path / "stderr.txt"
    child = multiprocessing.get_context("fork").Process(target=_train_in_child, args=(environment, out, stderr_path))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("rank 0 still waited for its missing peer after 60 s")
    err = stderr_path.read_text()
    assert child.exitcode == 2, err
    errors = [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and re.match(
        r"taggnn train: error: rank 0 of 2 could not join the process group at 127.0.0.1:\d+ within 1 s \(.*\): "
        r"start all 2 processes .* or wait longer with TAGGNN_RENDEZVOUS_TIMEOUT=<seconds>$", errors[0]), err
    assert not out.exists()
