"""More guards on what the commands write: ``--overwrite`` never replaces a training run's own
files or a checkpoint, exports and dumps written into a run folder are listed in its manifest,
``eval`` holds the run's lock and records which checkpoint state it evaluated, ``--dump`` keeps
the name it is given, a missing ``--checkpoint`` is named as such, and a shared model's results
never collide with the checkpoint's beside it."""
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from taggnn.cli import main, results_tag
from taggnn.engine.runfolder import MANIFEST_NAME, RUN_FILES, clear_run_folder, read_manifest
from taggnn.utils.outputs import TRAINING_OUTPUT, protected_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def quick_export(monkeypatch):
    """Exports that write their file (and an ONNX model's ``.data`` companion) without exporting,
    except safetensors; the real round trips are tested in tests/models/test_export.py."""
    import taggnn.models.export as export_module

    real = export_module._write_and_reload

    def quick(model, example, checks, path, fmt, metadata, dynamic_batch):
        if fmt == "safetensors":  # a folder, written for real (fast)
            return real(model, example, checks, path, fmt, metadata, dynamic_batch)
        path.write_text(f"{fmt} export")
        if fmt == "onnx":
            path.with_name(path.name + ".data").write_text("weights")
        return [model(clips) for clips in checks]

    monkeypatch.setattr(export_module, "_write_and_reload", quick)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------- files --overwrite keeps


def test_training_output_names_cover_the_run_files():
    assert all(TRAINING_OUTPUT.match(name) for name in RUN_FILES)
    assert TRAINING_OUTPUT.match("metrics_test.json") and TRAINING_OUTPUT.match("per_class_val.csv")
    for name in ("metrics_test.best.json", "best.onnx", "best.torchscript.pt", "best.pt2", "scores.npz"):
        assert not TRAINING_OUTPUT.match(name)


def test_export_overwrite_never_replaces_a_file_of_the_run(run, tmp_path, quick_export, capsys):
    for name in ("last.pt", "best.pt", "config.yaml", "log.jsonl", "summary.json", "metrics_test.json"):
        before = (run / name).read_bytes()
        source = "best.pt" if name != "best.pt" else "last.pt"
        assert main(["export", "--checkpoint", str(run / source), "--format", "torchscript", "--out",
                     str(run / name), "--overwrite"]) == 2
        err = one_line_error(capsys)
        assert "taggnn never writes over it, even with --overwrite" in err and MANIFEST_NAME in err, err
        assert (run / name).read_bytes() == before
    copy = tmp_path / "elsewhere" / "mine.pt"  # a training checkpoint outside any run folder, by content
    copy.parent.mkdir()
    shutil.copy(run / "last.pt", copy)
    assert protected_file(copy) == "a taggnn training checkpoint" and protected_file(run / "best.pt")
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--out", str(copy), "--overwrite"]) == 2
    assert "is a taggnn training checkpoint" in one_line_error(capsys)
    assert copy.read_bytes() == (run / "last.pt").read_bytes()
    # an earlier export of the same name is replaced
    for _ in range(2):
        assert main(["export", "--checkpoint", str(run / "best.pt"), "--format", "torchscript",
                     "--overwrite"]) == 0
    assert (run / "best.torchscript.pt").read_text() == "torchscript export"


def test_exports_and_dumps_in_a_run_folder_are_removed_by_overwrite(run, quick_export, capsys):
    pytest.importorskip("safetensors")
    for fmt in ("onnx", "exported-program", "torchscript"):
        assert main(["export", "--checkpoint", str(run / "best.pt"), "--format", fmt]) == 0
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--format", "safetensors"]) == 0
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--no-progress", "--dump",
                 str(run / "scores.npz")]) == 0
    written = {"best.onnx", "best.onnx.data", "best.pt2", "best.torchscript.pt", "best", "scores.npz",
               "metrics_test.last.json"}
    assert all((run / name).exists() for name in written) and (run / "best").is_dir()
    assert written <= set(read_manifest(run))
    clear_run_folder(run)  # what `taggnn train --out run --overwrite` does before it starts
    assert not [name for name in written if (run / name).exists()]
    assert not (run / "last.pt").exists() and [p.name for p in run.iterdir()] == [MANIFEST_NAME]


def test_an_export_that_writes_nothing_leaves_the_manifest_as_it_was(run, monkeypatch, capsys):
    """The names an export records before writing are taken off the manifest when it writes nothing
    (refused, failed) and for an ONNX model without a .data file, so that a later file of that name
    is not taken for taggnn's own by ``taggnn train --overwrite``."""
    pytest.importorskip("onnxscript")
    import taggnn.models.export as export_module

    def fails(*args):
        raise RuntimeError("the tracer cannot follow this model")

    monkeypatch.setattr(export_module, "_write_and_reload", fails)
    before = set(read_manifest(run))
    for fmt in ("onnx", "torchscript", "exported-program"):
        assert main(["export", "--checkpoint", str(run / "best.pt"), "--format", fmt]) == 2
        assert f"cannot be exported as {fmt}" in one_line_error(capsys)
        assert set(read_manifest(run)) == before
    assert not [p for p in run.iterdir() if p.name.startswith("best.") and p.name != "best.pt"]
    mine = run / "best.pt2"  # the user's own file of that name, which a failed --overwrite export leaves
    mine.write_text("mine")
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--overwrite"]) == 2
    assert "cannot be exported" in one_line_error(capsys)
    assert mine.read_text() == "mine" and set(read_manifest(run)) == before  # not listed as taggnn's
    mine.unlink()

    def one_file(model, example, checks, path, fmt, metadata, dynamic_batch):  # weights inside the .onnx
        path.write_text("onnx export")
        return [model(clips) for clips in checks]

    monkeypatch.setattr(export_module, "_write_and_reload", one_file)
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--format", "onnx"]) == 0
    assert set(read_manifest(run)) - before == {"best.onnx"}


# ------------------------------------------------------------------------------ eval


def test_eval_refuses_a_run_folder_another_process_holds(run, tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from taggnn.engine.runfolder import RunLock
            with RunLock({str(run)!r}):
                print("held", flush=True)
                sys.stdin.read()
        """)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["eval", "--checkpoint", str(run / "last.pt"), "--no-progress"]) == 2
        err = one_line_error(capsys)
        assert "in use by another taggnn process" in err and "--out DIR" in err
        assert not (run / "metrics_test.last.json").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--no-progress"]) == 0
    assert not (run / ".taggnn.lock").exists()  # released


def test_eval_records_the_checkpoint_state_it_evaluated(run, tmp_path):
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--no-progress", "--out",
                 str(tmp_path / "results")]) == 0
    state = json.loads((tmp_path / "results" / "metrics_test.last.json").read_text())["checkpoint_state"]
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (checkpoint["epoch"], checkpoint["step"])
    assert state["bytes"] == (run / "last.pt").stat().st_size
    assert state["mtime"] == (run / "last.pt").stat().st_mtime
    assert state["sha256"] == hashlib.sha256((run / "last.pt").read_bytes()).hexdigest()[:16]


@pytest.mark.parametrize("name", ["scores.txt", "scores", "last.pt"])
def test_eval_dump_accepts_only_npz_and_csv(run, name, capsys):
    before = (run / "last.pt").read_bytes()
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--no-progress", "--dump", str(run / name)]) == 2
    err = one_line_error(capsys)
    assert ".npz (numpy) or .csv" in err
    assert (run / "last.pt").read_bytes() == before and not list(run.glob("*.npz"))
    assert not (run / "metrics_test.last.json").exists()  # refused before any work


def test_eval_dump_prints_the_file_it_wrote(run, tmp_path, capsys):
    dump = tmp_path / "scores.CSV"
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--no-progress", "--dump", str(dump)]) == 0
    assert f"to {dump}\n" in capsys.readouterr().out
    assert dump.read_text().startswith("path,label,predicted")


def test_eval_names_a_missing_or_unusable_checkpoint(tmp_path, capsys):
    missing = tmp_path / "runs" / "demo" / "best.pt"
    assert main(["eval", "--checkpoint", str(missing)]) == 2
    err = one_line_error(capsys)
    assert "no such file or folder" in err and "Hub" not in err.split(";")[0]
    assert main(["eval", "--checkpoint", "/dev/null"]) == 2
    assert "is not a regular file (a character device)" in one_line_error(capsys)
    (tmp_path / "empty.pt").write_bytes(b"")
    assert main(["eval", "--checkpoint", str(tmp_path / "empty.pt")]) == 2
    assert "empty" in one_line_error(capsys)
    assert main(["eval", "--checkpoint", "someone/tiny-model"]) == 2
    assert "is a Hub model: give --out DIR" in one_line_error(capsys)


def test_shared_model_results_never_collide_with_its_checkpoint(run, capsys):
    pytest.importorskip("safetensors")
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--format", "safetensors"]) == 0
    assert results_tag("test", [], run / "best") == "test.best-shared"
    assert results_tag("test", [], run / "best" / "model.safetensors") == "test.best-shared"
    assert results_tag("val", [], "someone/tiny-tagnet") == "val.tiny-tagnet-shared"
    assert results_tag("test", [], run / "best.pt") == "test.best"
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--no-progress"]) == 0
    assert main(["eval", "--checkpoint", str(run / "best"), "--no-progress"]) == 0
    shared = json.loads((run / "metrics_test.best-shared.json").read_text())
    assert shared["checkpoint"] == str(run / "best")
    assert json.loads((run / "metrics_test.best.json").read_text())["checkpoint"] == str(run / "best.pt")
    assert "metrics_test.best-shared.json" in read_manifest(run)


# --------------------------------------------------------------------------- weights


def test_download_failure_advice_names_the_cli_option(tmp_path, monkeypatch):
    from taggnn.errors import WeightsError
    from taggnn.models.weights import fetch

    def no_network(url, dst, hash_prefix=None, progress=True):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsError, match=r"--set model\.weights=/path/to/r2plus1d_34-449a7af9\.pth \(or weights="):
        fetch("https://example.invalid/r2plus1d_34-449a7af9.pth", cache_dir=tmp_path)
