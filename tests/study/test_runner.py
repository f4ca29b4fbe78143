"""`taggnn study run`: ordinary run folders, resumable, the same results with any number of workers."""
import json
import os
import shutil
import signal

import pytest

from taggnn.cli import main
from taggnn.errors import ConfigError
from taggnn.study import LocalExecutor, parse_spec, run_study

from .helpers import copy_study, metrics, spec_text, start_driver, wait_for_checkpoint


def test_every_run_is_an_ordinary_run_folder_sharing_one_feature_cache(tiny_study):
    out, records = tiny_study
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


def test_the_last_epoch_is_tested_in_the_run_as_from_its_last_pt(tiny_study, tmp_path):
    """The run tests its last epoch's weights itself (no second loading); the figures are those of
    testing ``last.pt`` afterwards, and a study run writes no confusion plot."""
    from taggnn.engine.config import Config
    from taggnn.study.runner import _evaluate_last

    out, records = tiny_study
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


def test_running_again_skips_finished_runs(tiny_study, tmp_path):
    out = copy_study(tiny_study[0], tmp_path / "copy")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    again = run_study(parse_spec(spec_text()), out, progress=False)
    assert metrics(again) == metrics(tiny_study[1])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == before


def test_one_worker_gives_the_same_metrics_as_two(tiny_study, tmp_path):
    out = copy_study(tiny_study[0], tmp_path / "copy", runs=False)  # the cached features, no run
    with LocalExecutor(1, threads=1) as executor:
        records = run_study(parse_spec(spec_text()), out, executor=executor, progress=False)
    assert [r["status"] for r in records] == ["done"] * 4
    assert metrics(records) == metrics(tiny_study[1])


def test_new_seeds_extend_a_study_and_a_changed_row_is_refused(tiny_study, tmp_path):
    out = copy_study(tiny_study[0], tmp_path / "copy")
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


def test_a_failed_run_is_reported_and_run_again(tiny_study, tmp_path, capsys):
    out = copy_study(tiny_study[0], tmp_path / "copy")
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
    assert status[("B+TE", 2)]["status"] == "done" and status[("B", 0)]["metrics"] == tiny_study[1][0]["metrics"]
    (blocked / "config.yaml").unlink()
    assert main(["study", "run", str(spec), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert main(["study", "status", str(out)]) == 0
    assert "B                     3    0    0    0" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["worker", "driver"])
def test_a_killed_process_resumes_to_the_same_results(tiny_study, tmp_path, victim):
    out = copy_study(tiny_study[0], tmp_path / "study")
    folder = out / "runs" / "B+TE" / "seed-1"
    shutil.rmtree(folder)  # this run starts from scratch; the others are done
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text())
    process = start_driver(spec, out)
    worker = wait_for_checkpoint(folder, process)
    assert worker != process.pid  # the run trains in a worker process
    os.kill(worker if victim == "worker" else process.pid, signal.SIGKILL)
    if victim == "driver":
        process.wait()
        process = start_driver(spec, out)  # the worker died with its driver; the lock it left is stale
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    if victim == "worker":
        assert "ended (killed by signal 9): running it again" in err
    records = json.loads((out / "records.json").read_text())
    assert metrics(records) == metrics(tiny_study[1])
