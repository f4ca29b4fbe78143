"""train.loggers: JSONL always, CSV, TensorBoard, W&B (offline) and MLflow (a file store under tmp)."""
import csv
import importlib.util
import json
import subprocess
import sys

import pytest

from taggnn.engine.config import Config, ConfigError, flatten, load_config
from taggnn.engine.loggers import LOGGERS, RunLog
from taggnn.engine.trainer import train

SMALL = ["data.num_frames=8", "data.crop_size=32", "data.short_side=32", "data.synth_size=32",
         "data.synth_train=16", "data.synth_val=16", "data.synth_test=16", "train.batch_size=8",
         "train.eval_batch_size=16", "model.ffn_dim=32", "train.epochs=1", "train.log_every=1"]
RECORDS = [{"kind": "train", "epoch": 1, "step": 1, "loss": 2.5, "lr": 0.001, "clips_per_s": 10.0},
           {"kind": "train", "epoch": 1, "step": 2, "loss": 2.25, "lr": 0.001, "clips_per_s": 11.0},
           {"kind": "epoch", "epoch": 1, "step": 2, "train_loss": 2.4, "train_top1": 0.25, "val_top1": 0.5}]
FINAL = {"top1": 0.75, "top5": 1.0, "mca": 0.5, "count": 16, "split": "test", "best_epoch": 1}


def log_a_run(folder, names, params):
    with RunLog.open(folder, names, run_name="tiny") as log:
        log.log_params(params)
        for record in RECORDS:
            log.write(record)
        log.log_final(FINAL)


@pytest.fixture
def offline_trackers(tmp_path, monkeypatch):
    """W&B offline and MLflow in a file store, both under tmp."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "taggnn-tests")
    yield tmp_path / "mlruns"
    wandb_teardown()


def wandb_teardown():
    """Stops W&B's service, as at the end of a process: its files are then complete on disk
    (``run.finish()`` may return before the offline writer has flushed), and the next test
    gets a fresh service that reads the environment again."""
    if sys.modules.get("wandb") is not None:
        sys.modules["wandb"].teardown()


# ------------------------------------------------------------------ config


def test_loggers_key_defaults_to_jsonl_and_takes_lists():
    assert Config().train.loggers == ["jsonl"] and LOGGERS == ("jsonl", "csv", "tensorboard", "wandb", "mlflow")
    assert load_config("synthgym_tiny", ["train.loggers=[csv, jsonl]"]).train.loggers == ["csv", "jsonl"]
    assert load_config("synthgym_tiny", ["train.loggers=csv"]).train.loggers == ["csv"]
    assert load_config("synthgym_tiny", ["train.loggers=csv,jsonl"]).train.loggers == ["csv", "jsonl"]
    with pytest.raises(ConfigError, match=r"train.loggers: 'neptune' is not one of jsonl, csv, tensorboard, wandb"):
        load_config("synthgym_tiny", ["train.loggers=[csv, neptune]"])
    with pytest.raises(ConfigError, match=r"train.loggers expects a list of names"):
        load_config("synthgym_tiny", ["train.loggers=[1, 2]"])


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow"])
def test_a_missing_logger_is_one_config_error_naming_the_extra(monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # as where it is not installed
    with pytest.raises(ConfigError) as caught:
        load_config("synthgym_tiny", [f"train.loggers=[csv, {name}]"])
    message = str(caught.value)
    assert "\n" not in message and f"pip install 'taggnn[{name}]'" in message
    # a checkpoint's config naming it stays loadable (to evaluate where the logger is not installed)
    saved = load_config("synthgym_tiny").to_dict()
    saved["train"]["loggers"] = [name]
    assert Config.from_dict(saved).train.loggers == [name]


def test_cli_refuses_a_missing_logger_in_one_line_before_any_work(tmp_path):
    program = ("import sys; sys.modules['wandb'] = None  # as where it is not installed\n"
               "from taggnn.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", program, "train", "--set", "train.loggers=[jsonl, wandb]",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'taggnn[wandb]'" in lines[0], result.stderr
    assert not (tmp_path / "run").exists()  # refused before any work


# ---------------------------------------------------------------- backends


def test_jsonl_is_always_written_and_other_ranks_write_nothing(tmp_path):
    log_a_run(tmp_path, [], {"optim.lr": 0.001, "name": "tiny"})
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["params", "train", "train", "epoch", "test"]
    assert records[0]["params"] == {"optim.lr": 0.001, "name": "tiny"}
    assert records[3] == RECORDS[2] and records[4]["top1"] == 0.75
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]  # nothing else unless asked

    other = tmp_path / "other"
    other.mkdir()
    with RunLog.open(None, ["csv", "jsonl"]) as log:  # a non-main rank
        assert log.loggers == []
        log.log_params({"a": 1})
        log.write(RECORDS[0])
        log.log_final(FINAL)
    assert list(other.iterdir()) == []


def test_csv_widens_its_header_and_continues_on_resume(tmp_path):
    params = {"optim.lr": 0.001, "model.graph_kwargs": {"heads": 4}, "train.loggers": ["csv"], "train.max_steps": None}
    log_a_run(tmp_path, ["csv"], params)
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["kind"] for r in rows] == ["train", "train", "epoch", "test"]
    assert rows[1]["loss"] == "2.25" and rows[1]["val_top1"] == ""
    assert rows[2]["val_top1"] == "0.5" and rows[2]["loss"] == ""
    assert rows[3]["test_top1"] == "0.75" and rows[3]["test_split"] == "test"
    with open(tmp_path / "params.csv", newline="") as f:
        assert dict(csv.reader(f)) == {"key": "value", "optim.lr": "0.001", "model.graph_kwargs": '{"heads": 4}',
                                       "train.loggers": '["csv"]', "train.max_steps": ""}
    with RunLog.open(tmp_path, ["csv"]) as log:  # a resumed run appends under the same header
        log.write({"kind": "train", "epoch": 2, "step": 3, "loss": 2.0, "lr": 0.001, "clips_per_s": 9.0})
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and rows[4]["step"] == "3" and rows[4]["loss"] == "2.0"
    assert not list(tmp_path.glob(".*.tmp"))


def test_tensorboard_scalars_config_and_hparams(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_a_run(tmp_path, ["tensorboard"], {"optim.lr": 0.001, "train.loggers": ["tensorboard"]})
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.5), (2, 2.25)]
    assert [e.value for e in events.Scalars("epoch/val_top1")] == [0.5]
    assert [(e.step, e.value) for e in events.Scalars("test/top1")] == [(2, 0.75)]
    assert "config/text_summary" in events.Tags()["tensors"]
    plugins = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugins and b"optim.lr" in plugins["_hparams_/session_start_info"]


def test_wandb_offline_run_in_the_run_folder(tmp_path, offline_trackers):
    pytest.importorskip("wandb")
    log_a_run(tmp_path, ["wandb"], {"optim.lr": 0.001, "data.num_frames": 8})
    wandb_teardown()
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1  # WANDB_DIR unset: W&B's files go to the run folder
    data = runs[0].read_bytes()  # the offline run's record stream (keys and JSON values as written)
    for key in (b"data.num_frames", b"optim.lr", b"train/loss", b"epoch/val_top1", b"test/top1", b"tiny"):
        assert key in data, key


def test_wandb_dir_from_the_environment(tmp_path, offline_trackers, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run").mkdir()
    log_a_run(tmp_path / "run", ["wandb"], {"optim.lr": 0.001})
    wandb_teardown()
    assert len(list((tmp_path / "elsewhere" / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    assert not (tmp_path / "run" / "wandb").exists()


def test_mlflow_params_metrics_and_status(tmp_path, offline_trackers):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    params = flatten(Config().to_dict())
    log_a_run(tmp_path, ["mlflow"], params)
    with pytest.raises(RuntimeError, match="stopped"):
        with RunLog.open(tmp_path, ["mlflow"], run_name="failing"):
            raise RuntimeError("stopped")
    client = MlflowClient(offline_trackers.as_uri())
    experiment = client.get_experiment_by_name("taggnn-tests")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"tiny", "failing"}
    run = runs["tiny"]
    assert run.info.status == "FINISHED" and runs["failing"].info.status == "FAILED"
    assert len(run.data.params) == len(params) > 100 and run.data.params["optim.lr"] == "0.001"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.5), (2, 2.25)]
    assert run.data.metrics["epoch/val_top1"] == 0.5 and run.data.metrics["test/top1"] == 0.75


def test_mlflow_store_that_cannot_be_opened_is_one_config_error(tmp_path, offline_trackers, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://tracking")
    with pytest.raises(ConfigError) as caught:
        RunLog.open(tmp_path, ["csv", "mlflow"])
    message = str(caught.value)
    assert "\n" not in message and "'nosuchscheme://tracking'" in message and "MLFLOW_TRACKING_URI" in message


# ------------------------------------------------------------- a real run


def test_a_training_run_reports_to_every_logger(tmp_path, offline_trackers):
    names = ["jsonl", "csv"] + [name for name in ("tensorboard", "wandb", "mlflow") if importlib.util.find_spec(name)]
    config = load_config("synthgym_tiny", SMALL + [f"train.loggers=[{', '.join(names)}]"])
    summary = train(config, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert records[0]["kind"] == "params" and records[0]["params"]["train.loggers"] == names
    assert records[-1]["kind"] == "test" and records[-1]["top1"] == summary["test"]["top1"]
    with open(run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["kind"] for r in rows] == ["train", "train", "epoch", "test"]
    assert float(rows[-1]["test_top1"]) == summary["test"]["top1"]
    if "tensorboard" in names:
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    if "wandb" in names:
        wandb_teardown()
        assert b"test/top1" in next((run / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
    if "mlflow" in names:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(offline_trackers.as_uri())
        (found,) = client.search_runs([client.get_experiment_by_name("taggnn-tests").experiment_id])
        assert found.data.metrics["test/top1"] == summary["test"]["top1"] and found.info.run_name == config.name
        assert found.data.params["data.num_frames"] == "8"
