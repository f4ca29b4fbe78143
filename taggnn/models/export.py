"""Export a trained model so that it runs without taggnn: TorchScript, ``torch.export``, ONNX.

=====================  ===========================================  ==============================
format                 written with                                 runs with
=====================  ===========================================  ==============================
``torchscript``        ``torch.jit.trace`` -> ``.torchscript.pt``   ``torch.jit.load``
``exported-program``   ``torch.export.export`` -> ``.pt2``          ``torch.export.load``
``onnx``               ``torch.onnx.export(dynamo=True)`` -> .onnx  onnxruntime (``export`` extra)
``safetensors``        a folder: ``model.safetensors`` +            taggnn: ``from_pretrained``
                       ``config.json`` + ``README.md``              (``hub`` extra)
=====================  ===========================================  ==============================

``safetensors`` is the format to share a model (:mod:`taggnn.models.hub`): the weights and the
config that rebuilds the model, no pickle; it runs with taggnn (``TAGNet.from_pretrained``,
``taggnn eval/predict --checkpoint DIR``).

The default output is named after the checkpoint with the format's suffix (``best.pt`` ->
``best.torchscript.pt``, ``best.pt2``, ``best.onnx``, the folder ``best`` for safetensors), never
a checkpoint's own ``.pt`` name. An export is written in a temporary folder, loaded back and
checked there, and only then moved to its place: a failed or unverified export never replaces an
existing file.

Back-ends: sparse tensors cannot be exported (they have no strides), so the graph stage of an
exported model is the ``structured`` propagation, which computes the same function (equal to
float rounding, tested against PyG's APPNP); ``edge_index`` stays as it is for TorchScript. The
input shape is fixed at export (batch, frames and crop given at export time); a model trained on
another clip length is adapted first with ``TAGHead.set_grid`` (the positional table is
interpolated). Every export is loaded back and compared with the eager model on the same input.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Dict, Union

import torch
from torch import Tensor, nn

from ..utils.optional import require
from ..utils.outputs import atomic_output
from .tagnet import load_pretrained, save_pretrained_folder

logger = logging.getLogger(__name__)

#: Suffix of each format's default file name (``<checkpoint stem><suffix>``); safetensors
#: writes a folder named after the checkpoint's stem.
FORMATS = {"torchscript": ".torchscript.pt", "exported-program": ".pt2", "onnx": ".onnx", "safetensors": ""}


def default_export_path(checkpoint: Union[str, Path], fmt: str) -> Path:
    """``<folder>/<stem><suffix>`` of a checkpoint: ``runs/a/best.pt`` -> ``runs/a/best.torchscript.pt``,
    ``runs/a/best.pt2`` or ``runs/a/best.onnx``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + FORMATS[fmt])


def exportable(model: nn.Module) -> nn.Module:
    """The model with its graph stage on the ``structured`` back-end when it used sparse tensors."""
    refiner = getattr(getattr(model, "head", None), "refiner", None)
    if refiner is not None and refiner.backend in ("csr", "sparse_tensor") and refiner.propagation in ("appnp", "gcn"):
        logger.info("export: graph stage %r -> 'structured' (same function; sparse tensors cannot be exported)",
                    refiner.backend)
        refiner.backend = "structured"
    return model


@torch.no_grad()
def export_model(model: nn.Module, example: Tensor, path: Path, fmt: str, *, atol: float = 1e-4,
                 overwrite: bool = True) -> Dict[str, object]:
    """Writes ``model`` in format ``fmt``, loads it back and compares it with the eager model on
    ``example``; returns ``{"path", "format", "max_abs_diff", "verified"}``. Raises ``ValueError``
    when the difference exceeds ``atol``; then nothing is written at ``path``.

    The export is staged in a temporary folder next to ``path`` and moved to ``path`` (with an
    ONNX model's external ``.data`` file, when the exporter writes one) only once checked. With
    ``overwrite=False`` an existing file at the destination is refused.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":  # torch's ONNX exporter writes through onnxscript and onnx: refuse before any work
        for module in ("onnx", "onnxscript"):
            require(module, extra="export", feature="exporting to ONNX")
    model = (model if fmt == "safetensors" else exportable(model)).eval()  # safetensors keeps any back-end
    path = Path(path)
    expected = model(example)
    with atomic_output(path, overwrite=overwrite) as staged:
        actual = _write_and_reload(model, example, staged, fmt)
        if actual is not None:
            difference = float((actual.to(expected) - expected).abs().max())
            if difference > atol:
                raise ValueError(f"the exported {fmt} model differs from the eager one by {difference:.2e} "
                                 f"(> {atol}); nothing was written")
    if actual is None:
        logger.warning("onnxruntime is not installed (pip install 'taggnn[export]'): %s was not verified", path)
        return {"path": str(path), "format": fmt, "max_abs_diff": None, "verified": False}
    return {"path": str(path), "format": fmt, "max_abs_diff": difference, "verified": True}


def _write_and_reload(model: nn.Module, example: Tensor, path: Path, fmt: str):
    """Writes the export at ``path`` and returns its output on ``example`` (``None`` when ONNX
    cannot be run here)."""
    if fmt == "torchscript":
        with warnings.catch_warnings():  # the tracer's notes on Python-side values and its deprecation notice
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
            traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
            return torch.jit.load(str(path))(example)
    if fmt == "exported-program":
        program = torch.export.export(model, (example,))
        torch.export.save(program, str(path))
        return torch.export.load(str(path)).module()(example)
    if fmt == "safetensors":  # a folder: model.safetensors + config.json + README.md
        save_pretrained_folder(model, path)
        return load_pretrained(path)(example)
    torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["clip"], output_names=["logits"])
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: example.cpu().numpy()})[0])
