"""Export a trained model so that it runs without taggnn: TorchScript, ``torch.export``, ONNX.

=====================  ===========================================  ==============================
format                 written with                                 runs with
=====================  ===========================================  ==============================
``torchscript``        ``torch.jit.trace`` -> ``.pt``               ``torch.jit.load``
``exported-program``   ``torch.export.export`` -> ``.pt2``          ``torch.export.load``
``onnx``               ``torch.onnx.export(dynamo=True)`` -> .onnx  onnxruntime (``export`` extra)
=====================  ===========================================  ==============================

Back-ends: sparse tensors cannot be exported (they have no strides), so the graph stage of an
exported model is the ``structured`` propagation, which computes the same function (equal to
float rounding, tested against PyG's APPNP); ``edge_index`` stays as it is for TorchScript. The
input shape is fixed at export (batch, frames and crop given at export time); a model trained on
another clip length is adapted first with ``TAGHead.set_grid`` (the positional table is
interpolated). Every export is loaded back and compared with the eager model on the same input.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict

import torch
from torch import Tensor, nn

from ..utils.optional import require

logger = logging.getLogger(__name__)

FORMATS = {"torchscript": ".pt", "exported-program": ".pt2", "onnx": ".onnx"}


def exportable(model: nn.Module) -> nn.Module:
    """The model with its graph stage on the ``structured`` back-end when it used sparse tensors."""
    refiner = getattr(getattr(model, "head", None), "refiner", None)
    if refiner is not None and refiner.backend in ("csr", "sparse_tensor") and refiner.propagation in ("appnp", "gcn"):
        logger.info("export: graph stage %r -> 'structured' (same function; sparse tensors cannot be exported)",
                    refiner.backend)
        refiner.backend = "structured"
    return model


@torch.no_grad()
def export_model(model: nn.Module, example: Tensor, path: Path, fmt: str, *, atol: float = 1e-4) -> Dict[str, object]:
    """Writes ``model`` in format ``fmt``, loads it back and compares it with the eager model on
    ``example``; returns ``{"path", "format", "max_abs_diff", "verified"}``. Raises ``ValueError``
    when the difference exceeds ``atol``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":  # torch's ONNX exporter writes through onnxscript and onnx: refuse before any work
        for module in ("onnx", "onnxscript"):
            require(module, extra="export", feature="exporting to ONNX")
    model = exportable(model).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    expected = model(example)
    verified = True
    if fmt == "torchscript":
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))
        actual = torch.jit.load(str(path))(example)
    elif fmt == "exported-program":
        program = torch.export.export(model, (example,))
        torch.export.save(program, str(path))
        actual = torch.export.load(str(path)).module()(example)
    else:
        torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["clip"], output_names=["logits"])
        try:
            import onnxruntime
        except ImportError:
            logger.warning("onnxruntime is not installed (pip install 'taggnn[export]'): %s was not verified", path)
            return {"path": str(path), "format": fmt, "max_abs_diff": None, "verified": False}
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        actual = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: example.cpu().numpy()})[0])
    difference = float((actual.to(expected) - expected).abs().max())
    if difference > atol:
        raise ValueError(f"the exported {fmt} model differs from the eager one by {difference:.2e} (> {atol})")
    return {"path": str(path), "format": fmt, "max_abs_diff": difference, "verified": verified}
