"""train.compile and taggnn export (issue [I] sect. 3)."""
import pytest
import torch

from taggnn.cli import main
from taggnn.engine import load_config, train
from taggnn.models import build_model

from ..engine.test_trainer import SMALL


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(load_config("synthgym_tiny", SMALL + ["train.epochs=1", "data.synth_train=16"]), out, progress=False)
    return out / "best.pt"


@pytest.mark.parametrize("backend", ["csr", "structured"])
def test_compiled_and_eager_agree(backend):
    torch.manual_seed(0)
    model = build_model("r2plus1d_tiny", 5, num_frames=8, crop_size=32, num_heads=4, ffn_dim=16,
                        backend=backend).eval()
    clip = torch.randn(2, 3, 8, 32, 32)
    eager = model(clip)
    compiled = torch.compile(model, backend="aot_eager")  # traces forward and backward (autograd Function incl.)
    torch.testing.assert_close(compiled(clip), eager, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(compiled(clip).sum(), list(model.head.parameters()), allow_unused=True)
    reference = torch.autograd.grad(model(clip).sum(), list(model.head.parameters()), allow_unused=True)
    for a, b in zip(grads, reference):
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["exported-program", "torchscript", "onnx"])
def test_export_round_trips(checkpoint, tmp_path, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"model.{fmt}"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "max |exported - eager|" in text and out.stat().st_size > 1000


def test_export_at_another_clip_length(checkpoint, tmp_path, capsys):
    out = tmp_path / "long.pt2"
    assert main(["export", "--checkpoint", str(checkpoint), "--frames", "16", "--out", str(out)]) == 0
    program = torch.export.load(str(out)).module()
    assert program(torch.randn(1, 3, 16, 32, 32)).shape == (1, 16)
