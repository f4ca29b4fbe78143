import json

import pytest
import torch

import taggnn.engine.trainer as trainer_module
from taggnn.engine import TrainingError, load_checkpoint, load_config, train
from taggnn.engine.config import ConfigError

from ..helpers import SMALL, small_config


def test_resume_mid_epoch_equals_an_uninterrupted_run(tmp_path):
    full = train(small_config(), tmp_path / "full", progress=False)
    assert full["epochs_done"] == 2 and full["steps"] == 12

    stopped = train(small_config("train.max_steps=4"), tmp_path / "resumed", progress=False)
    assert stopped["stopped_early"] and stopped["steps"] == 4
    checkpoint = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert checkpoint["epoch"] == 0 and checkpoint["batches_done"] == 4  # killed mid-epoch
    resumed = train(small_config(), tmp_path / "resumed", resume=tmp_path / "resumed" / "last.pt", progress=False)
    assert resumed["steps"] == 12

    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert full["test"]["top1"] == resumed["test"]["top1"]


def test_outputs_of_a_run(tmp_path):
    summary = train(small_config("train.epochs=1"), tmp_path, progress=False)
    for name in ("last.pt", "best.pt", "config.yaml", "log.jsonl", "metrics_test.json", "per_class_test.csv",
                 "summary.json", "confusion_test.png"):
        assert (tmp_path / name).exists(), name
    metrics = json.loads((tmp_path / "metrics_test.json").read_text())
    assert {"top1", "top5", "mca", "mca_present", "mca_union", "count"} <= set(metrics) and metrics["count"] == 16
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "epoch" and "val_top1" in r for r in records)
    assert summary["best"]["epoch"] == 1
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert checkpoint["classes"][0] == "turn 0.5 cw" and checkpoint["config"]["train"]["epochs"] == 1


def test_testing_the_last_epoch_reuses_its_pass_for_the_final_test(tmp_path, monkeypatch):
    """train(test_last=True, plots=False): the last epoch's test metrics in the summary; when that
    epoch is the best, the final test is that same pass, with the figures of an ordinary run."""
    ordinary = train(small_config("train.epochs=1"), tmp_path / "ordinary", progress=False)
    calls = {"n": 0}
    real = trainer_module.evaluate

    def counted(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate", counted)
    both = train(small_config("train.epochs=1"), tmp_path / "both", progress=False, test_last=True, plots=False)
    assert both["best"]["epoch"] == 1 and calls["n"] == 2  # one validation, one test pass for both tests
    assert both["test"] == {**ordinary["test"], "checkpoint": str(tmp_path / "both" / "best.pt")}
    assert {k: both["test_last"][k] for k in ("top1", "top5", "mca", "count")} == {
        k: both["test"][k] for k in ("top1", "top5", "mca", "count")} and both["test_last"]["num_classes"] == 16
    assert (tmp_path / "ordinary" / "confusion_test.png").is_file()
    assert not (tmp_path / "both" / "confusion_test.png").exists()
    assert (tmp_path / "both" / "per_class_test.csv").read_text() == (
        tmp_path / "ordinary" / "per_class_test.csv").read_text()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = trainer_module.F.cross_entropy

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(trainer_module.F, "cross_entropy", poisoned)
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at epoch 1, batch 4.*last good checkpoint"):
        train(small_config("train.checkpoint_every_steps=1"), tmp_path, progress=False)
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert checkpoint["step"] == 3
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def test_resume_with_another_config_says_what_differs(tmp_path):
    train(small_config("train.max_steps=1"), tmp_path, progress=False)
    with pytest.raises(ConfigError, match=r"written by another config; these values differ .*model.K: 2 -> 3"):
        train(small_config("model.K=3"), tmp_path, resume=tmp_path / "last.pt", progress=False)


def test_training_on_decoded_videos_with_a_broken_clip(tmp_path):
    from taggnn.data.synthgym import write_split

    for split, count in (("train", 16), ("val", 8), ("test", 8)):
        write_split(tmp_path / "videos", split, count=count, num_frames=8, size=32)
    (tmp_path / "videos" / "train" / "000003.mp4").write_bytes(b"broken")  # a corrupt file
    config = load_config("synthgym_tiny", SMALL + [
        "data.dataset=csv", f"data.root={tmp_path / 'videos'}", "data.on_error=skip", "train.epochs=1",
        f"data.train_csv={tmp_path / 'videos' / 'train.csv'}", f"data.val_csv={tmp_path / 'videos' / 'val.csv'}",
        f"data.test_csv={tmp_path / 'videos' / 'test.csv'}"])
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["test"]["count"] == 8
    assert summary["history"][0]["skipped_clips"] == 1


def test_mixed_precision_off_cuda_is_float32_and_says_so(caplog):
    from taggnn.engine.optimization import autocast_dtype

    cpu = torch.device("cpu")
    with caplog.at_level("WARNING", logger="taggnn"):
        assert autocast_dtype("auto", cpu) is None and autocast_dtype("off", cpu) is None
        assert not caplog.records  # the default: float32 off CUDA, nothing to say
        assert autocast_dtype("bf16", cpu) is None
    assert "bf16 runs on CUDA only: this cpu run computes in float32" in caplog.text
