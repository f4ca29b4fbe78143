"""What the commands write never replaces a checkpoint, a run's own results or a user's file by
surprise: export, eval (results and --dump), tsne, profile --json and synth write."""
import json
import shutil

import pytest
import torch

from taggnn.cli import main, results_tag
from taggnn.engine import load_checkpoint, load_config
from taggnn.models import build_model_from_config

RUN_RESULTS = ("metrics_test.json", "per_class_test.csv", "confusion_test.png")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------ export


def test_export_without_out_never_writes_over_the_checkpoint(run, capsys):
    before = (run / "best.pt").read_bytes()
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--format", "torchscript"]) == 0
    assert (run / "best.pt").read_bytes() == before  # the old default name was best.pt itself
    assert load_checkpoint(run / "best.pt")["model"]
    scripted = torch.jit.load(str(run / "best.torchscript.pt"))
    assert scripted(torch.randn(1, 3, 8, 32, 32)).shape == (1, 16)
    assert "wrote" in capsys.readouterr().out and not list(run.glob(".*.tmp"))


def test_export_refuses_an_existing_file_and_never_replaces_its_input(run, monkeypatch, capsys):
    import taggnn.models.export as export_module

    target = run / "model.pt2"
    target.write_text("mine")
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--out", str(target)]) == 2
    assert "already exists; pass --overwrite" in one_line_error(capsys) and target.read_text() == "mine"
    before = (run / "best.pt").read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["export", "--checkpoint", str(run / "best.pt"), "--format", "torchscript", "--out",
                     str(run / "best.pt"), *extra]) == 2
        assert "is the file this command reads" in one_line_error(capsys)
    assert (run / "best.pt").read_bytes() == before

    def quick(model, example, checks, path, fmt, metadata, dynamic_batch):  # real ones: tests/models/test_export.py
        path.write_text("new export")
        return [model(clips) for clips in checks]

    monkeypatch.setattr(export_module, "_write_and_reload", quick)
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--out", str(target), "--overwrite"]) == 0
    assert target.read_text() == "new export" and not list(run.glob(".*tmp"))


def test_a_failed_export_leaves_the_previous_file(run, monkeypatch, capsys):
    import taggnn.models.export as export_module

    target = run / "best.pt2"
    target.write_text("previous export")

    def broken(model, example, checks, path, fmt, metadata, dynamic_batch):
        path.write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(export_module, "_write_and_reload", broken)
    # the exporter's failure is one line naming it (exit 2), and nothing replaces the previous file
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--overwrite"]) == 2
    assert "exporter crashed" in one_line_error(capsys)
    assert target.read_text() == "previous export" and not list(run.glob(".*tmp"))


# -------------------------------------------------------------------------------- eval


def test_eval_of_last_keeps_the_runs_final_results(run, capsys):
    before = {name: (run / name).read_bytes() for name in RUN_RESULTS}
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--no-progress"]) == 0
    assert "metrics_test.last.json" in capsys.readouterr().out
    assert {name: (run / name).read_bytes() for name in RUN_RESULTS} == before
    last = json.loads((run / "metrics_test.last.json").read_text())
    assert last["checkpoint"] == str(run / "last.pt") and (run / "per_class_test.last.csv").exists()
    # best.pt too is tagged: an evaluation may run on another device or precision than training's test
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--no-progress"]) == 0
    assert {name: (run / name).read_bytes() for name in RUN_RESULTS} == before
    best = json.loads((run / "metrics_test.best.json").read_text())
    assert best["top1"] == json.loads(before["metrics_test.json"])["top1"]


def test_eval_tag_combines_checkpoint_and_overrides(run):
    assert results_tag("test", [], run / "last.pt") == "test.last"
    assert results_tag("val", ["data.num_frames=8", "eval.average=logits"], run / "best.pt") == \
        "val.best.data.num_frames=8_eval.average=logits"
    assert results_tag("test", ["data.root=/a b"], run / "my run.pt") == "test.my-run.data.root=-a-b"
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--no-progress", "--set",
                 "train.eval_batch_size=3"]) == 0
    tagged = json.loads((run / "metrics_test.last.train.eval_batch_size=3.json").read_text())
    assert tagged["overrides"] == ["train.eval_batch_size=3"] and tagged["checkpoint"].endswith("last.pt")


def test_eval_refuses_results_of_another_checkpoint_in_its_out(run, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(run / "best.pt", other / "best.pt")
    results = tmp_path / "results"
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--out", str(results), "--no-progress"]) == 0
    first = (results / "metrics_test.best.json").read_text()
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--out", str(results), "--no-progress"]) == 0
    capsys.readouterr()  # the same checkpoint again refreshes its own results
    assert main(["eval", "--checkpoint", str(other / "best.pt"), "--out", str(results), "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert f"holds the results of {run / 'best.pt'}" in err and "--overwrite" in err
    assert (results / "metrics_test.best.json").read_text() == first
    assert main(["eval", "--checkpoint", str(other / "best.pt"), "--out", str(results), "--no-progress",
                 "--overwrite"]) == 0
    assert json.loads((results / "metrics_test.best.json").read_text())["checkpoint"] == str(other / "best.pt")


def test_eval_dump_refuses_an_existing_file_before_evaluating(run, tmp_path, capsys):
    import numpy as np

    dump = tmp_path / "scores.csv"
    dump.write_text("my spreadsheet")
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--no-progress", "--dump", str(dump)]) == 2
    err = one_line_error(capsys)
    assert "--dump" in err and "already exists; pass --overwrite" in err
    assert dump.read_text() == "my spreadsheet" and not (run / "metrics_test.last.json").exists()
    (tmp_path / "scores.npz").write_text("mine")
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--no-progress", "--dump",
                 str(tmp_path / "scores.npz")]) == 2
    assert "scores.npz already exists" in one_line_error(capsys)
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--no-progress", "--dump",
                 str(tmp_path / "scores.npz"), "--overwrite"]) == 0
    assert np.load(tmp_path / "scores.npz")["probabilities"].shape == (16, 16)


# ------------------------------------------------------------------------ tsne, profile


def test_tsne_refuses_an_existing_figure(run, tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")  # without it the embeddings go to tsne.npz
    figure = tmp_path / "tsne.png"
    figure.write_text("last week's figure")
    command = ["tsne", "--checkpoint", str(run / "best.pt"), "--max-clips", "16", "--out", str(figure),
               "--device", "cpu"]
    assert main(command) == 2
    assert "already exists; pass --overwrite" in one_line_error(capsys)
    assert figure.read_text() == "last week's figure"
    assert main([*command[:-4], "--out", str(run / "best.pt"), "--device", "cpu", "--overwrite"]) == 2
    assert "is the file this command reads" in one_line_error(capsys)
    # the figure itself (written through the same atomic path): tests/test_cli.py::test_tsne


def test_profile_json_refuses_an_existing_file(tmp_path, capsys):
    target = tmp_path / "profile.json"
    target.write_text("{}")
    command = ["profile", "--config", "synthgym_tiny", "--no-latency", "--json", str(target)]
    assert main(command) == 2
    assert "--json" in one_line_error(capsys) and target.read_text() == "{}"
    assert main([*command, "--overwrite"]) == 0
    model = build_model_from_config(load_config("synthgym_tiny"), 16)
    assert json.loads(target.read_text())["params"]["total"] == sum(p.numel() for p in model.parameters())


# -------------------------------------------------------------------------------- synth


SYNTH = ["--count", "2", "--num-frames", "8", "--size", "32"]


def test_synth_write_refuses_a_folder_holding_other_data(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "test.csv").write_text("FileName,Class,TotalFrames,ClassEncoded\nclip.mp4,Jump,20,3\n")
    for extra in ([], ["--overwrite"]):
        assert main(["synth", "write", str(tmp_path), "--split", "test", *SYNTH, *extra]) == 2
        err = one_line_error(capsys)
        assert "did not write" in err and "notes.txt" in err and "test.csv" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "test.csv"]
    assert (tmp_path / "test.csv").read_text().endswith("clip.mp4,Jump,20,3\n")


def test_synth_write_adds_splits_and_rewrites_one_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["synth", "write", str(out), "--split", "test", *SYNTH]) == 0
    assert main(["synth", "write", str(out), "--split", "val", *SYNTH]) == 0  # another split: its own files
    capsys.readouterr()
    before = (out / "test.csv").read_text()
    assert main(["synth", "write", str(out), "--split", "test", *SYNTH[:1], "1", *SYNTH[2:]]) == 2
    err = one_line_error(capsys)
    assert "already holds the SynthGym 'test' split (2 clips)" in err and "--overwrite" in err
    assert (out / "test.csv").read_text() == before
    assert main(["synth", "write", str(out), "--split", "test", "--count", "1", *SYNTH[2:], "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "test").iterdir()) == ["000000.mp4"]  # no stale clip left
    assert len((out / "test.csv").read_text().splitlines()) == 2
    assert len((out / "val.csv").read_text().splitlines()) == 3
