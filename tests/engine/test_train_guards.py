"""Guards of ``taggnn train`` / ``taggnn features``: inputs never overwritten, every split checked
before the first step, finite config values, exact epoch records after a mid-epoch resume,
finished runs not tested again, plain run names, complete printed commands."""
import json
import math
import random
import shutil

import pytest
import torch

from taggnn.cli import main
from taggnn.engine import load_checkpoint, load_config, train
from taggnn.engine.checkpoint import rng_state, save_checkpoint, set_rng_state
from taggnn.engine.trainer import checkpoint_problem
from taggnn.errors import ConfigError, TaggnnError, TrainingError

from ..helpers import SMALL, small_config


def records(folder, kind):
    lines = (folder / "log.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record.get("kind") == kind]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny run trained to the end (2 epochs, 12 steps) and tested."""
    out = tmp_path_factory.mktemp("finished") / "run"
    summary = train(small_config(), out, progress=False)
    assert summary["steps"] == 12 and "test" in summary
    return out


# ------------------------------------------------------- inputs are never outputs


def test_a_config_file_inside_the_run_folder_is_refused_and_kept(finished, tmp_path, capsys):
    run = tmp_path / "Ro"
    shutil.copytree(finished, run)
    before = (run / "config.yaml").read_text()
    assert main(["train", "--config", str(run / "config.yaml"), "--out", str(run), "--overwrite", "--no-progress",
                 "--set", "optim.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "config.yaml is an input of this run" in err and "copy it elsewhere first" in err
    assert len(err.strip().splitlines()) == 1
    assert (run / "config.yaml").read_text() == before
    assert (run / "last.pt").is_file() and (run / "summary.json").is_file()  # nothing removed


# ------------------------------------------- every split is checked before training


def test_a_header_only_test_csv_is_refused_before_the_first_step(tmp_path):
    from taggnn.data.synthgym import write_split

    videos = tmp_path / "videos"
    for split, count in (("train", 8), ("val", 4), ("test", 4)):
        write_split(videos, split, count=count, num_frames=8, size=32)
    header = (videos / "test.csv").read_text().splitlines()[0]
    (videos / "test.csv").write_text(header + "\n")
    config = load_config("synthgym_tiny", SMALL + [
        "data.dataset=csv", f"data.root={videos}", "train.epochs=1", f"data.train_csv={videos / 'train.csv'}",
        f"data.val_csv={videos / 'val.csv'}", f"data.test_csv={videos / 'test.csv'}"])
    with pytest.raises(TaggnnError):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()  # refused before any step


# ------------------------------------------------------------- config validation


@pytest.mark.parametrize("override,key", [("optim.lr=inf", "optim.lr"), ("optim.weight_decay=inf",
                                                                          "optim.weight_decay"),
                                          ("optim.grad_clip=nan", "optim.grad_clip"),
                                          ("model.pos_init_std=inf", "model.pos_init_std")])
def test_non_finite_floats_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"{key}=(inf|nan) is out of range \(allowed: a finite number"):
        load_config("synthgym_tiny", [override])


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".", "a\\b"])
def test_a_run_name_that_leaves_runs_is_refused(name):
    with pytest.raises(ConfigError, match="is not a plain folder name"):
        load_config("synthgym_tiny", [f"name={name}"])


def test_plain_run_names_are_accepted():
    assert load_config("synthgym_tiny", ["name=run..2"]).name == "run..2"


# --------------------------------------------------------- exact resume records


def test_the_epoch_record_after_a_mid_epoch_resume_equals_the_uninterrupted_one(finished, tmp_path):
    out = tmp_path / "resumed"
    train(small_config("train.max_steps=4"), out, progress=False)  # stopped at epoch 1, batch 4 of 6
    train(small_config(), out, resume=out / "last.pt", progress=False)
    full, resumed = records(finished, "epoch"), records(out, "epoch")
    assert [r["epoch"] for r in resumed] == [1, 2]
    for a, b in zip(full, resumed):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-9, abs=0)
        assert b["train_top1"] == a["train_top1"]


def test_python_random_state_survives_a_checkpoint(tmp_path):
    random.seed(5)
    random.random()
    save_checkpoint(tmp_path / "x.pt", {"model": {}, "config": {}, "rng": [rng_state()]})
    expected = [random.random() for _ in range(3)]
    random.seed(123)
    set_rng_state(load_checkpoint(tmp_path / "x.pt")["rng"][0])
    assert [random.random() for _ in range(3)] == expected


# ------------------------------------------------------------ finished runs


def test_resuming_a_finished_run_reports_its_results_without_testing_again(finished, tmp_path, capsys):
    run = tmp_path / "B"
    shutil.copytree(finished, run)
    log_before = (run / "log.jsonl").read_text()
    metrics_before = (run / "metrics_test.json").read_text()
    for _ in range(2):
        assert main(["train", "--resume", str(run / "last.pt"), "--no-progress"]) == 0
        assert "test top-1" in capsys.readouterr().out
    assert (run / "log.jsonl").read_text() == log_before
    assert (run / "metrics_test.json").read_text() == metrics_before


def test_resuming_into_another_folder_keeps_the_earlier_records(finished, tmp_path):
    out = tmp_path / "B"
    train(small_config(), out, resume=finished / "last.pt", progress=False)
    earlier = (finished / "log.jsonl").read_text().splitlines()
    assert (out / "log.jsonl").read_text().splitlines()[:len(earlier)] == earlier
    assert len(records(out, "epoch")) == 2


# ------------------------------------------------------------------- messages


def test_the_blow_up_message_reads_clearly():
    problem = checkpoint_problem({"w": torch.ones(1)}, ["w"], 2395.123, 16)
    assert problem == ("the mean training loss 2395.1 since the previous checkpoint exceeds the blow-up limit "
                       f"10 x ln(16 classes) = {10 * math.log(16):.1f}")


def test_the_features_hint_keeps_the_overrides(tmp_path, monkeypatch, capsys):
    import taggnn.engine.features as features

    monkeypatch.setattr(features, "extract_features", lambda *args, **kwargs: {})
    out = tmp_path / "F dir"
    assert main(["features", "--config", "synthgym_tiny", "--out", str(out), "--no-progress",
                 "--set", "data.num_frames=8", "--set", "name=my run"]) == 0
    hint = capsys.readouterr().out.strip().splitlines()[-1]
    assert hint == ("train the head alone on them: taggnn train --config synthgym_tiny --set data.num_frames=8 "
                    f"--set 'name=my run' --set 'data.features={out}'")


def test_train_refuses_any_input_among_its_outputs(finished, tmp_path):
    run = tmp_path / "Ro"
    shutil.copytree(finished, run)
    with pytest.raises(TrainingError, match="copy it elsewhere first"):
        train(small_config(), run, overwrite=True, inputs=[run / "log.jsonl"])


def test_a_features_test_split_of_another_backbone_is_refused_before_the_first_step(tmp_path, capsys):
    from .test_feature_cache import features, one_line_error, train_on

    folder, other = tmp_path / "features", tmp_path / "other"
    assert features(folder) == 0
    assert features(other, "--split", "test", extra=["train.seed=3"]) == 0  # another random backbone
    shutil.copy(other / "test.pt", folder / "test.pt")
    capsys.readouterr()
    assert train_on(folder, out=tmp_path / "run") == 2
    assert "test.pt was made with another backbone or settings" in one_line_error(capsys, "train")
    assert not (tmp_path / "run" / "last.pt").exists()  # refused before any step
