"""`taggnn study run | status | report` on the command line: one-line errors (exit code 2), the
status of a study being run, the seeds a difference needs."""
import json
import os
import signal
import sys

import pytest

from taggnn.cli import main

from .helpers import copy_study, spec_text, start_driver, wait_for_checkpoint


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_a_missing_study_file(tmp_path, capsys):
    assert main(["study", "run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "study")]) == 2
    err = one_line_error(capsys)
    assert err.startswith("taggnn study: error: cannot read the study file") and "nope.yaml" in err
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("action", ["status", "report"])
@pytest.mark.parametrize("exists", [True, False])
def test_a_folder_that_is_not_a_study(tmp_path, capsys, action, exists):
    folder = tmp_path / "folder"
    if exists:
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
    assert main(["study", action, str(folder)]) == 2
    err = one_line_error(capsys)
    assert f"{folder} is not a study folder (no study.json)" in err and "taggnn study run SPEC --out" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == (["folder", "notes.txt"] if exists else [])


@pytest.mark.parametrize("option, value, message", [
    ("--workers", "0", "argument --workers: expected an integer >= 1, got 0"),
    ("--threads", "-2", "argument --threads: expected an integer >= 1, got -2"),
    ("--workers", "two", "argument --workers: expected an integer >= 1, got 'two'"),
])
def test_bad_workers_or_threads(tmp_path, capsys, option, value, message):
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text())
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "study"), option, value]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "study").exists()


def test_the_ray_executor_without_ray_names_the_extra(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text())
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "study"), "--executor", "ray"]) == 2
    err = one_line_error(capsys)
    assert "the Ray executor (--executor ray) needs ray: pip install 'taggnn[ray]'" in err
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "study"), "--executor", "ray",
                 "--workers", "2"]) == 2
    assert "--workers applies to --executor local only" in one_line_error(capsys)
    assert not (tmp_path / "study").exists()


@pytest.mark.slow
def test_status_while_a_driver_runs_shows_the_running_run(tiny_study, tmp_path, capsys):
    out = copy_study(tiny_study[0], tmp_path / "study")
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(extra="extra_rows:\n  long: [train.epochs=500]\n"))  # a new row, a long run
    process = start_driver(spec, out)
    worker = None
    try:
        worker = wait_for_checkpoint(out / "runs" / "long" / "seed-0", process)
        os.kill(worker, signal.SIGSTOP)  # it holds its run's lock, stopped mid-run
        assert main(["study", "status", str(out), "--json"]) == 0
        status = {(r["row"], r["seed"]): r["status"] for r in json.loads(capsys.readouterr().out)}
        assert status == {("B", 0): "done", ("B", 1): "done", ("B+TE", 0): "done", ("B+TE", 1): "done",
                          ("long", 0): "running", ("long", 1): "pending"}
        assert main(["study", "status", str(out)]) == 0
        assert "long                  0    1    0    1  -" in capsys.readouterr().out.splitlines()
    finally:
        process.kill()  # its worker ends with it
        process.communicate()
        if worker is not None:
            try:
                os.kill(worker, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_report_with_mde_prints_the_seeds_needed(tiny_study, tmp_path, capsys):
    out = copy_study(tiny_study[0], tmp_path / "study")
    assert main(["study", "report", str(out), "--mde", "0.5"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    [compared] = [entry for entry in report["rows"] if entry["name"] == "B"]
    needed = compared["vs_reference"]["seeds_for_mde"]
    assert (f"seeds to detect a true difference of 0.5 points to B+TE with 80% power: B: {needed or '-'}"
            in printed.splitlines())
    assert "seeds for Δ=0.5" in (out / "report.md").read_text()
    assert main(["study", "report", str(out), "--mde", "-1"]) == 2
    assert "mde must be a positive number" in one_line_error(capsys)


def test_a_narrower_study_file_names_the_rows_it_leaves_out(tiny_study, tmp_path, capsys):
    out = copy_study(tiny_study[0], tmp_path / "study")
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(spec_text(rows="[B+TE]"))
    assert main(["study", "run", str(narrow), "--out", str(out), "--workers", "1", "--threads", "1",
                 "--no-progress"]) == 0  # every run is finished: nothing trains
    text = (out / "report.md").read_text()
    assert "The folder also holds rows this study file does not list (not reported here): B." in text
    assert json.loads((out / "report.json").read_text())["study"]["other_rows"] == ["B"]
    assert [row["name"] for row in json.loads((out / "report.json").read_text())["rows"]] == ["B+TE"]
