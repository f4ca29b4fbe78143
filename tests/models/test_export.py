"""train.compile and taggnn export."""
import json
import logging

import pytest
import torch

from taggnn.cli import main
from taggnn.engine import load_checkpoint, load_config, train
from taggnn.models import build_model
from taggnn.models.export import read_export_metadata

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


def _run_export(fmt, path):
    """A function clips -> logits of the export at ``path``, as its own runtime loads it."""
    if fmt == "exported-program":
        return torch.export.load(str(path)).module()
    if fmt == "torchscript":
        return torch.jit.load(str(path))
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda clips: torch.from_numpy(session.run(None, {"clip": clips.numpy()})[0])


@pytest.mark.parametrize("fmt", ["exported-program", "torchscript", "onnx"])
@pytest.mark.parametrize("traced_batch", [1, 3])
def test_the_exported_batch_is_dynamic_by_default(checkpoint, tmp_path, capsys, fmt, traced_batch):
    """Exported on a batch of 1 (or 3), the model runs on other batch sizes and equals the eager model
    there; the metadata and the printed line say the batch is free."""
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnxruntime")
    from taggnn.engine.trainer import load_trained

    out = tmp_path / f"model.{fmt}"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out),
                 "--batch", str(traced_batch)]) == 0
    assert "input (batch, 3, 8, 32, 32)" in capsys.readouterr().out
    assert read_export_metadata(out)["input_shape"] == ["batch", 3, 8, 32, 32]
    exported = _run_export(fmt, out)
    eager, _, _ = load_trained(checkpoint, torch.device("cpu"))
    eager.eval()
    torch.manual_seed(1)
    for batch in (1, 2, 5):
        clips = torch.randn(batch, 3, 8, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(exported(clips), eager(clips), atol=1e-4, rtol=1e-4)


def test_static_batch_fixes_the_batch(checkpoint, tmp_path, capsys):
    out = tmp_path / "model.pt2"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--batch", "2",
                 "--static-batch"]) == 0
    assert "input (2, 3, 8, 32, 32)" in capsys.readouterr().out
    assert read_export_metadata(out)["input_shape"] == [2, 3, 8, 32, 32]
    program = torch.export.load(str(out)).module()
    assert program(torch.randn(2, 3, 8, 32, 32)).shape == (2, 16)
    with pytest.raises(Exception):  # torch.export checks the input against the exported shape
        program(torch.randn(3, 3, 8, 32, 32))
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--out",
                 str(tmp_path / "shared"), "--static-batch"]) == 2
    assert "--static-batch do not apply to --format safetensors" in capsys.readouterr().err


def test_static_batch_fixes_the_torchscript_batch_too(checkpoint, tmp_path, capsys):
    """A TorchScript trace computes its shapes from the input: --static-batch still fixes the batch
    the metadata states, and the export says nothing on stderr about torch.jit's deprecation."""
    import warnings

    from taggnn.engine.trainer import load_trained

    out = tmp_path / "model.torchscript.pt"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out),
                     "--batch", "2", "--static-batch"]) == 0
    assert not [w for w in caught if "torch.jit" in str(w.message)], [str(w.message) for w in caught]
    assert "input (2, 3, 8, 32, 32)" in capsys.readouterr().out
    assert read_export_metadata(out)["input_shape"] == [2, 3, 8, 32, 32]
    exported = torch.jit.load(str(out))
    eager, _, _ = load_trained(checkpoint, torch.device("cpu"))
    torch.manual_seed(2)
    clips = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(exported(clips), eager.eval()(clips), atol=1e-4, rtol=1e-4)
    for batch in (1, 3):
        with pytest.raises(RuntimeError):
            exported(torch.randn(batch, 3, 8, 32, 32))


def test_export_at_another_clip_length(checkpoint, tmp_path, capsys):
    out = tmp_path / "long.pt2"
    assert main(["export", "--checkpoint", str(checkpoint), "--frames", "16", "--out", str(out)]) == 0
    program = torch.export.load(str(out)).module()
    assert program(torch.randn(1, 3, 16, 32, 32)).shape == (1, 16)


@pytest.mark.parametrize("fmt", ["exported-program", "torchscript", "onnx", "safetensors"])
def test_exports_carry_class_names_and_preprocessing(checkpoint, tmp_path, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
    if fmt == "safetensors":
        pytest.importorskip("safetensors")
    out = tmp_path / f"model.{fmt}"
    args = ["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]
    assert main(args + ([] if fmt == "safetensors" else ["--frames", "16"])) == 0
    assert "metadata: 16 class names, preprocessing" in capsys.readouterr().out
    saved = load_checkpoint(checkpoint)
    metadata = read_export_metadata(out)
    assert metadata["class_names"] == saved["classes"] and len(metadata["class_names"]) == 16
    assert metadata["num_classes"] == 16
    pre, data = metadata["preprocessing"], saved["config"]["data"]
    assert pre["num_frames"] == (data["num_frames"] if fmt == "safetensors" else 16)  # the export's clip length
    assert pre["crop_size"] == data["crop_size"] == 32
    assert pre["sampling"] == data["sampling"] and pre["normalization"] == data["normalization"] == "slowfast"
    assert pre["mean"] == pytest.approx([0.45] * 3) and pre["std"] == pytest.approx([0.225] * 3)


def test_onnx_export_is_quiet_and_one_file(checkpoint, tmp_path, capfd, caplog):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "export" / "model.onnx"
    with caplog.at_level(logging.INFO):
        assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    captured = capfd.readouterr()
    assert "[torch.onnx]" not in captured.out + captured.err
    assert not [r for r in caplog.records if not r.name.startswith("taggnn")], caplog.records[:3]
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]  # weights inside: no model.onnx.data
    assert captured.out.startswith(f"wrote {out} (onnx,")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["taggnn"])["num_classes"] == 16


def test_onnx_weights_beyond_the_single_file_limit_go_to_a_named_data_file(checkpoint, tmp_path, capsys,
                                                                          monkeypatch):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    import taggnn.models.export as export

    monkeypatch.setattr(export, "ONNX_SINGLE_FILE_LIMIT", 0)  # as if the weights were over 2 GB
    out = tmp_path / "export" / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert text.startswith(f"wrote {out} and model.onnx.data (its weights, to keep beside it) (onnx,")
    assert read_export_metadata(out)["num_classes"] == 16


class _HeadOnly(torch.nn.Module):
    """A TAG-Head on backbone features (B, 16, 2, 3, 3), as a model to export."""

    def __init__(self, **graph):
        super().__init__()
        from taggnn.nn import TAGHead

        self.head = TAGHead(16, 3, (2, 3, 3), num_heads=2, ffn_dim=16, **graph)

    def forward(self, x):
        return self.head(x)


@pytest.mark.parametrize("fmt", ["exported-program", "torchscript", "onnx"])
@pytest.mark.parametrize("graph, backend", [
    (dict(graph_spatial="grid4"), "stencil"),
    (dict(graph_spatial="grid8", graph_temporal="window:2"), "stencil"),
    (dict(graph_temporal="cube:1"), "stencil"),  # built on csr: export moves it to the stencil back-end
    (dict(graph_spatial="none"), "structured"),
    (dict(graph_spatial="grid4", edge_weights="learned"), "stencil"),
    (dict(graph_spatial="radius:1", propagation="gcn"), "stencil"),
    (dict(propagation="gat"), "edge_index"),  # a PyG convolution on the batch's edge list
    (dict(graph_spatial="grid4", propagation="gat"), "edge_index"),
    (dict(backend="edge_index"), "edge_index"),  # the authors' path: PyG's APPNP on edge_index
])
def test_heads_on_every_static_graph_export_with_a_dynamic_batch(tmp_path, monkeypatch, fmt, graph, backend):
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnxruntime")
    import taggnn.models.export as export_module
    from taggnn.models.export import export_model

    torch.manual_seed(0)
    model = _HeadOnly(**graph).eval()
    torch.manual_seed(1)
    clips = {batch: torch.randn(batch, 16, 2, 3, 3) for batch in (1, 2, 5)}
    with torch.no_grad():
        eager = {batch: model(x) for batch, x in clips.items()}  # on the back-end it was built with
    built_with = model.head.refiner.backend
    exported_backends = []
    real_write = export_module._write_and_reload

    def spy(model, *args):
        exported_backends.append(model.head.refiner.backend)
        return real_write(model, *args)

    monkeypatch.setattr(export_module, "_write_and_reload", spy)
    result = export_model(model, clips[1], tmp_path / f"m.{fmt}", fmt)
    assert exported_backends == [backend] and result["verified"] and result["dynamic_batch"]
    assert model.head.refiner.backend == built_with  # the caller's model keeps its own back-end
    assert read_export_metadata(tmp_path / f"m.{fmt}")["format_version"] == 2
    exported = _run_export(fmt, tmp_path / f"m.{fmt}")
    for batch, x in clips.items():
        torch.testing.assert_close(exported(x), eager[batch], atol=1e-5, rtol=1e-5)


def test_a_model_that_cannot_run_on_the_example_is_refused_in_one_error(checkpoint, tmp_path, capsys, monkeypatch):
    """The eager run on the example (e.g. out of memory for a very long clip) is a one-line error."""
    from taggnn.models.tagnet import TAGNet

    def out_of_memory(self, clips):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 TB\nmore")

    monkeypatch.setattr(TAGNet, "forward", out_of_memory)
    out = tmp_path / "m.pt2"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--frames", "64"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot run on the export's example input (2, 3, 64, 32, 32)" in err, err
    assert "not enough memory" in err and not out.exists()


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program", "onnx"])
def test_a_knn_graph_is_refused_before_any_tracing(tmp_path, monkeypatch, fmt):
    """kNN edges are rebuilt from the features at every forward: every tracing format refuses them
    at once (no exporter is called), says why and points to safetensors; nothing is written."""
    from taggnn.errors import ConfigError
    from taggnn.models.export import export_model

    def no_exporter(*args, **kwargs):
        raise AssertionError("an exporter was called")

    for name in ("jit.trace", "export.export", "onnx.export"):
        module, attribute = name.split(".")
        monkeypatch.setattr(getattr(torch, module), attribute, no_exporter)
    torch.manual_seed(0)
    with pytest.raises(ConfigError) as error:
        export_model(_HeadOnly(graph_dynamic="knn:2").eval(), torch.randn(1, 16, 2, 3, 3), tmp_path / "m", fmt)
    message = str(error.value)
    assert f"cannot be exported as {fmt}" in message and "'knn:2'" in message and "\n" not in message
    assert "\x1b[" not in message
    assert "--format safetensors keeps it" in message and "may trace it" not in message
    assert list(tmp_path.iterdir()) == []


def test_metadata_of_an_onnx_file_named_without_its_suffix(checkpoint, tmp_path, capsys):
    """``--out`` takes any name; read_export_metadata recognises an ONNX model by its content."""
    pytest.importorskip("onnxscript")
    out = tmp_path / "model"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    capsys.readouterr()
    assert read_export_metadata(out)["num_classes"] == 16
