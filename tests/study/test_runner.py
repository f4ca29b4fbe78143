"""`taggnn study run`: ordinary run folders, resumable, the same results with any number of workers."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taggnn.cli import main
from taggnn.errors import ConfigError
from taggnn.study import LocalExecutor, parse_spec, run_study

SMALL = ["data.num_frames=8", "data.crop_size=32", "data.short_side=32", "data.synth_size=32", "data.synth_train=32",
         "data.synth_val=16", "data.synth_test=16", "train.batch_size=8", "train.eval_batch_size=16",
         "model.ffn_dim=32", "train.epochs=3", "train.deterministic=true", "train.checkpoint_every_steps=2",
         "train.device=cpu", "model.freeze_backbone=true"]
ROOT = Path(__file__).resolve().parents[2]


def spec_text(rows="[B, B+TE]", seeds="2", extra="", reference="B+TE"):
    return (f"base: synthgym_tiny\nset: [{', '.join(SMALL)}]\nseeds: {seeds}\nreference: {reference}\nrows: {rows}\n"
            f"head_only: true\nselect: last\n{extra}")


def metrics(records):
    return {(r["row"], r["seed"]): r["metrics"] for r in records}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny study, run once by one worker with one thread."""
    out = tmp_path_factory.mktemp("study") / "study"
    with LocalExecutor(1, threads=1) as executor:
        records = run_study(parse_spec(spec_text()), out, executor=executor, progress=False)
    return out, records


def test_every_run_is_an_ordinary_run_folder_sharing_one_feature_cache(reference):
    out, records = reference
    assert [(r["row"], r["seed"], r["status"]) for r in records] == [
        ("B", 0, "done"), ("B", 1, "done"), ("B+TE", 0, "done"), ("B+TE", 1, "done")]
    features = list((out / "features").iterdir())
    assert len(features) == 1  # one backbone setting: extracted once for every row and seed
    for record in records:
        folder = out / record["folder"]
        assert record["folder"] == f"runs/{record['row']}/seed-{record['seed']}"
        assert (folder / "last.pt").is_file() and (folder / "best.pt").is_file()
        config = (folder / "config.yaml").read_text()
        assert f"features: {features[0]}" in config and f"seed: {record['seed']}" in config
        assert set(record["metrics"]) == {"top1", "top5", "mca"} and record["num_classes"] == 16
        assert all(0 <= value <= 100 for value in record["metrics"].values()) and record["error"] is None
        last = json.loads((folder / "metrics_test_last.json").read_text())
        assert record["metrics"]["top1"] == pytest.approx(100 * last["top1"])
    assert json.loads((out / "records.json").read_text()) == records


def test_the_last_epoch_is_tested_in_the_run_as_from_its_last_pt(reference, tmp_path):
    """The run tests its last epoch's weights itself (no second loading); the figures are those of
    testing ``last.pt`` afterwards, and a study run writes no confusion plot."""
    from taggnn.engine.config import Config
    from taggnn.study.runner import _evaluate_last

    out, records = reference
    for record in records:
        folder = out / record["folder"]
        assert not (folder / "confusion_test.png").exists()
        assert (folder / "metrics_test.json").is_file() and (folder / "per_class_test.csv").is_file()
        in_run = json.loads((folder / "metrics_test_last.json").read_text())
        copy = tmp_path / record["folder"]
        shutil.copytree(folder, copy)
        _evaluate_last(copy, Config.from_dict(_config(folder)))
        again = json.loads((copy / "metrics_test_last.json").read_text())
        assert {k: v for k, v in again.items() if k != "checkpoint"} == {
            k: v for k, v in in_run.items() if k != "checkpoint"}
        summary = json.loads((folder / "summary.json").read_text())
        if summary["best"]["epoch"] == summary["epochs_done"]:  # the final test reused the last epoch's pass
            assert summary["test"]["top1"] == in_run["top1"]


def _config(folder):
    import yaml

    return yaml.safe_load((folder / "config.yaml").read_text())


def test_running_again_skips_finished_runs(reference, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    again = run_study(parse_spec(spec_text()), out, progress=False)
    assert metrics(again) == metrics(reference[1])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == before


def test_two_workers_give_the_same_metrics(reference, tmp_path):
    with LocalExecutor(2, threads=1) as executor:
        records = run_study(parse_spec(spec_text()), tmp_path / "study", executor=executor, progress=False)
    assert metrics(records) == metrics(reference[1])


def test_new_seeds_extend_a_study_and_a_changed_row_is_refused(reference, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError) as error:
        run_study(parse_spec(spec_text(extra="extra_rows:\n  X: [model.readout=max]\n").replace(
            "model.ffn_dim=32", "model.ffn_dim=16")), out, progress=False)
    assert "row B: model.ffn_dim: 32 -> 16" in str(error.value) and "--overwrite" in str(error.value)
    assert not (out / "runs" / "X").exists()
    # --overwrite starts over, removing only what taggnn wrote
    spec = parse_spec(spec_text(rows="[B]", seeds="[0]", reference="B").replace("model.ffn_dim=32", "model.ffn_dim=16"))
    records = run_study(spec, out, overwrite=True, progress=False)
    assert [r["status"] for r in records] == ["done"] and (out / "notes.txt").read_text() == "mine"
    assert not (out / "runs" / "B+TE").exists() and not (out / "runs" / "B" / "seed-1").exists()


def test_a_failed_run_is_reported_and_run_again(reference, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(seeds="3"))
    blocked = out / "runs" / "B" / "seed-2"
    blocked.mkdir(parents=True)
    (blocked / "config.yaml").write_text("my own file\n")  # a file taggnn did not write: the run is refused
    assert main(["study", "run", str(spec), "--out", str(out), "--workers", "1", "--threads", "1",
                 "--no-progress"]) == 1
    printed = capsys.readouterr()
    assert "failed: runs/B/seed-2: TrainingError" in printed.out and "did not finish" in printed.err
    assert main(["study", "status", str(out), "--json"]) == 0
    status = {(r["row"], r["seed"]): r for r in json.loads(capsys.readouterr().out)}
    assert status[("B", 2)]["status"] == "failed" and "no taggnn manifest" in status[("B", 2)]["error"]
    assert status[("B+TE", 2)]["status"] == "done" and status[("B", 0)]["metrics"] == reference[1][0]["metrics"]
    (blocked / "config.yaml").unlink()
    assert main(["study", "run", str(spec), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert main(["study", "status", str(out)]) == 0
    assert "B                     3    0    0    0" in capsys.readouterr().out


def _start(spec, out, *extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "taggnn", "study", "run", str(spec), "--out", str(out),
                             "--workers", "1", "--threads", "1", "--no-progress", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(folder: Path, process) -> int:
    """The PID holding the run folder's lock once its first last.pt is written."""
    while not (folder / "last.pt").is_file():
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    return json.loads((folder / ".taggnn.lock").read_text())["pid"]


@pytest.mark.parametrize("victim", ["worker", "driver"])
def test_a_killed_process_resumes_to_the_same_results(reference, tmp_path, victim):
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(rows="[B+TE]", seeds="[1]"))
    out = tmp_path / "study"
    process = _start(spec, out)
    folder = out / "runs" / "B+TE" / "seed-1"
    worker = _wait_for_checkpoint(folder, process)
    assert worker != process.pid  # the run trains in a worker process
    os.kill(worker if victim == "worker" else process.pid, signal.SIGKILL)
    if victim == "driver":
        process.wait()
        process = _start(spec, out)  # the worker died with its driver; the lock it left is stale
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    if victim == "worker":
        assert "ended (killed by signal 9): running it again" in err
    records = json.loads((out / "records.json").read_text())
    assert metrics(records) == {("B+TE", 1): metrics(reference[1])[("B+TE", 1)]}
