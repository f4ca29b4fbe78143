"""A file given where a taggnn checkpoint belongs is named for what it is, in one line."""
import pytest
import torch

from taggnn.cli import main
from taggnn.engine import load_checkpoint
from taggnn.errors import CheckpointError

EXPECTED = "expected a taggnn checkpoint: best.pt or last.pt"


def eval_error(path, capsys) -> str:
    assert main(["eval", "--checkpoint", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "weights_only" not in err and "likely succeed" not in err  # PyTorch's unpickling advice
    return err


def test_a_yaml_config_is_named_a_config(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  backbone: r2plus1d_tiny\ndata:\n  num_frames: 8\n")
    err = eval_error(config, capsys)
    assert "a YAML file that looks like a taggnn config (keys: model, data)" in err and EXPECTED in err
    assert "pickled" not in err
    (tmp_path / "notes.txt").write_text("best run so far\n")
    assert "a text file (first line: 'best run so far')" in eval_error(tmp_path / "notes.txt", capsys)
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "an empty file" in eval_error(tmp_path / "empty.pt", capsys)


def test_exports_are_named_exports(tmp_path, capsys):
    model, example = torch.nn.Linear(3, 2), torch.randn(1, 3)
    torch.jit.save(torch.jit.trace(model, example), str(tmp_path / "best.torchscript.pt"))
    err = eval_error(tmp_path / "best.torchscript.pt", capsys)
    assert "it is a TorchScript model" in err and EXPECTED in err
    torch.export.save(torch.export.export(model, (example,)), str(tmp_path / "best.pt2"))
    assert "it is a torch.export program" in eval_error(tmp_path / "best.pt2", capsys)


def test_an_onnx_model_is_named_onnx(tmp_path, capsys):
    pytest.importorskip("onnxscript")
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),), str(tmp_path / "model.onnx"), dynamo=True,
                      verbose=False)
    capsys.readouterr()
    err = eval_error(tmp_path / "model.onnx", capsys)
    assert "it is an ONNX model" in err and "pickled" not in err and EXPECTED in err
    (tmp_path / "model.onnx").rename(tmp_path / "renamed.bin")  # identified by content, not by name
    assert "it is an ONNX model" in eval_error(tmp_path / "renamed.bin", capsys)


def test_a_folder_is_named_a_folder(tmp_path, capsys):
    err = eval_error(tmp_path, capsys)
    assert "is a folder, not a checkpoint file, and holds no best.pt or last.pt" in err and "does not exist" not in err
    torch.save({"model": {}, "config": {}}, tmp_path / "best.pt")
    err = eval_error(tmp_path, capsys)
    assert f"is a folder, not a checkpoint file; it holds best.pt: pass {tmp_path / 'best.pt'}" in err
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_pickles_and_the_authors_files_keep_their_names(tmp_path):
    torch.save({"model": torch.nn.Linear(1, 1), "config": {}}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match=r"pickled Python objects \(torch.nn.modules.linear.Linear\)"):
        load_checkpoint(tmp_path / "pickled.pth")
    state = {"pos_embedding": torch.zeros(1), "classifier.1.weight": torch.zeros(1)}
    torch.save({"model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []},
                "scheduler_state_dict": {}, "epoch": 3, "best_val_acc": 0.5},
               tmp_path / "last_checkpoint.pth")
    with pytest.raises(CheckpointError, match=r"the authors' training checkpoint .*taggnn eval --reference"):
        load_checkpoint(tmp_path / "last_checkpoint.pth")
    torch.save(state, tmp_path / "best_model.pth")
    with pytest.raises(CheckpointError, match=r"the authors' TAG-Head checkpoint: evaluate it with taggnn eval "
                                              r"--reference"):
        load_checkpoint(tmp_path / "best_model.pth")
