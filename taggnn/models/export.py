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
exported model is the ``structured`` propagation on the paper's edge families and the ``stencil``
one on any other translation-invariant graph (:func:`exportable`); both compute the same function
(equal to float rounding, tested against PyG's APPNP). PyG convolutions (``gat``) and the
``edge_index`` back-end trace on the batch's edge list. A graph with input-dependent (kNN) edges is
refused before any tracing (a one-line :class:`~taggnn.errors.ConfigError`): no exporter records
edges rebuilt from the features.

Input shape: the batch dimension is dynamic by default (``torch.export``'s ``Dim("batch")``, an
ONNX ``batch`` dimension; a TorchScript trace computes every shape from its input), and
``dynamic_batch=False`` fixes it to the example's. Frames and crop are fixed at export (the graph
and the positional table depend on them); a model trained on another clip length is adapted first
with ``TAGHead.set_grid`` (the positional table is interpolated). Every export is loaded back and
compared with the eager model on the example and, when its batch is dynamic, on a batch of
another size.

Metadata: every export carries what a user of the file needs besides the weights, under the key
``taggnn`` (:func:`export_metadata`, read back with :func:`read_export_metadata`): the class names,
the number of classes, the input shape (``["batch", 3, T, H, W]`` with a dynamic batch; this
made it ``format_version`` 2) and the preprocessing (``num_frames``, ``crop_size``,
``short_side``, ``sampling``, ``normalization``, ``mean``, ``std``, ...). ONNX stores it in the
model's ``metadata_props`` (``onnxruntime``: ``session.get_modelmeta().custom_metadata_map``),
TorchScript and ``torch.export`` as the extra file ``taggnn.json`` (``torch.jit.load(path,
_extra_files={"taggnn.json": ""})``, ``torch.export.load(path, extra_files=...)``), and
safetensors in ``config.json``.

ONNX: the model is one ``.onnx`` file when its weights fit in ONNX's 2 GB protobuf limit; a larger
one keeps its weights in ``<name>.onnx.data`` beside it, which the result (``files``) names. The
exporter's progress messages and its INFO logging are silenced unless the ``taggnn`` logger is at
DEBUG level (``taggnn -v``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from ..errors import ConfigError, TaggnnError
from ..utils.optional import require
from ..utils.outputs import atomic_output
from ..utils.version import __version__
from .hub import preprocessing_info, read_config
from .tagnet import load_pretrained, save_pretrained_folder

logger = logging.getLogger(__name__)

#: Suffix of each format's default file name (``<checkpoint stem><suffix>``); safetensors
#: writes a folder named after the checkpoint's stem.
FORMATS = {"torchscript": ".torchscript.pt", "exported-program": ".pt2", "onnx": ".onnx", "safetensors": ""}

#: The name of the metadata: an ONNX ``metadata_props`` key, a TorchScript / ``torch.export`` extra file.
METADATA_KEY = "taggnn"
METADATA_FILE = "taggnn.json"
#: ONNX keeps a model in one file up to protobuf's 2 GB; the weights above this size go to ``<name>.onnx.data``.
ONNX_SINGLE_FILE_LIMIT = 1_800_000_000


def default_export_path(checkpoint: Union[str, Path], fmt: str) -> Path:
    """``<folder>/<stem><suffix>`` of a checkpoint: ``runs/a/best.pt`` -> ``runs/a/best.torchscript.pt``,
    ``runs/a/best.pt2`` or ``runs/a/best.onnx``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + FORMATS[fmt])


def exportable(model: nn.Module) -> nn.Module:
    """The model with its graph stage off sparse tensors, which no exporter follows: on the
    ``structured`` back-end for the paper's edge families, on ``stencil`` for any other
    translation-invariant graph (both compute the same function); a graph neither takes (kNN,
    custom edges) keeps its back-end and the exporter says whether it can follow it."""
    refiner = getattr(getattr(model, "head", None), "refiner", None)
    if refiner is None or refiner.backend not in ("csr", "sparse_tensor"):
        return model
    before = refiner.backend
    for candidate in ("structured", "stencil"):
        try:
            refiner.backend = candidate
        except ValueError:  # ConfigError: this back-end does not take the graph or the propagation
            continue
        logger.info("export: graph stage %r -> %r (same function; sparse tensors cannot be exported)",
                    before, candidate)
        break
    return model


def export_metadata(model: nn.Module, example: Tensor, *, dynamic_batch: bool = True) -> Dict[str, Any]:
    """What an export of ``model`` for inputs shaped like ``example`` carries besides its weights:
    ``class_names`` (``None`` when the model records none), ``num_classes``, ``input_shape`` (its
    first entry the string ``"batch"`` when the batch dimension is dynamic),
    ``input`` / ``output`` names and ``preprocessing`` (clip length and crop size of this export,
    frame sampling, resize, normalisation with its ``mean`` and ``std``), from the model's
    ``pretrained_metadata`` (recorded by :func:`~taggnn.models.tagnet.record_config`, e.g. by
    :func:`~taggnn.engine.trainer.load_trained`)."""

    meta = dict(getattr(model, "pretrained_metadata", None) or {})
    preprocessing = dict(meta.get("preprocessing") or {})
    if hasattr(model, "backbone") and example.dim() == 5:  # a clip (B, 3, T, H, W): this export's clip size
        frames, height, width = example.shape[2:]
        if not preprocessing:
            preprocessing = preprocessing_info(num_frames=frames, crop_size=height)
        preprocessing["num_frames"] = int(frames)
        preprocessing["crop_size"] = int(height) if height == width else [int(height), int(width)]
    shape = list(example.shape)
    if dynamic_batch:
        shape[0] = "batch"
    return {"format_version": 2, "taggnn_version": __version__, "class_names": meta.get("class_names"),
            "num_classes": getattr(model, "num_classes", None), "input_shape": shape,
            "input": "clip", "output": "logits", "dataset": meta.get("dataset"), "preprocessing": preprocessing}


@torch.no_grad()
def export_model(model: nn.Module, example: Tensor, path: Path, fmt: str, *, atol: float = 1e-4,
                 overwrite: bool = True, metadata: Optional[Mapping[str, Any]] = None,
                 dynamic_batch: bool = True) -> Dict[str, object]:
    """Writes ``model`` in format ``fmt``, loads it back and compares it with the eager model on
    ``example`` (and, with ``dynamic_batch``, on a batch of another size); returns ``{"path",
    "files", "format", "max_abs_diff", "verified", "metadata", "dynamic_batch"}`` (``files``: every
    file written, e.g. an ONNX model's ``.data`` file). Raises ``ValueError`` when a difference
    exceeds ``atol``; then nothing is written at ``path``.

    The export is staged in a temporary folder next to ``path`` and moved to ``path`` (with an
    ONNX model's external ``.data`` file, when its weights need one) only once checked. With
    ``overwrite=False`` an existing file at the destination is refused.

    Args:
        metadata: Stored in the export (see the module's notes); default :func:`export_metadata`.
        dynamic_batch: Keep the batch dimension free (the default; safetensors always is) or fix
            it to ``example.size(0)``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":  # torch's ONNX exporter writes through onnxscript and onnx: refuse before any work
        for module in ("onnx", "onnxscript"):
            require(module, extra="export", feature="exporting to ONNX")
    refiner = getattr(getattr(model, "head", None), "refiner", None)
    backend, training = (refiner.backend if refiner is not None else None), model.training
    try:
        return _export_model(model, example, Path(path), fmt, atol=atol, overwrite=overwrite, metadata=metadata,
                             dynamic_batch=dynamic_batch)
    finally:  # the caller's model as it was: its back-end (exportable() may switch it) and its mode
        if refiner is not None and refiner.backend != backend:
            refiner.backend = backend
        model.train(training)


def _export_model(model: nn.Module, example: Tensor, path: Path, fmt: str, *, atol: float, overwrite: bool,
                  metadata: Optional[Mapping[str, Any]], dynamic_batch: bool) -> Dict[str, object]:
    model = (model if fmt == "safetensors" else exportable(model)).eval()  # safetensors keeps any back-end
    if fmt != "safetensors":
        _refuse_input_dependent_edges(model, fmt)
    dynamic_batch = dynamic_batch or fmt == "safetensors"
    metadata = dict(metadata if metadata is not None else export_metadata(model, example,
                                                                          dynamic_batch=dynamic_batch))
    traced_on, checks = example, [example]
    if dynamic_batch and example.size(0) == 1:  # torch.export specialises a size-1 dimension: trace on two clips
        traced_on = example.repeat(2, *[1] * (example.dim() - 1))  # (2, ...)
        checks.append(traced_on)
    elif dynamic_batch:
        checks.append(example[:1])  # (1, ...)
    try:
        expected = [model(clips) for clips in checks]
    except RuntimeError as error:  # e.g. out of memory for a very long clip
        raise ConfigError(f"the model cannot run on the export's example input {tuple(traced_on.shape)}: "
                          f"{_first_line(error)}; nothing was written") from error
    with atomic_output(path, overwrite=overwrite) as staged:
        try:
            actual = _write_and_reload(model, traced_on, checks, staged, fmt, metadata, dynamic_batch)
        except TaggnnError:
            raise
        except Exception as error:  # the tracer / exporter cannot follow this model's code
            raise ConfigError(f"this model cannot be exported as {fmt}: {_graph_stage(model)}the exporter stopped "
                              f"with {type(error).__name__}: {_first_line(error)}; nothing was written. "
                              f"--format safetensors keeps any model; another --format may trace it") from error
        files = [path] + ([path.with_name(path.name + ".data")]
                          if fmt == "onnx" and staged.with_name(staged.name + ".data").exists() else [])
        if actual is not None:
            difference = 0.0
            for clips, got, want in zip(checks, actual, expected):
                difference = max(difference, float((got.to(want) - want).abs().max()))
                if difference > atol:
                    raise ValueError(f"the exported {fmt} model differs from the eager one by {difference:.2e} "
                                     f"(> {atol}) on a batch of {clips.size(0)}; nothing was written")
    result = {"path": str(path), "files": [str(f) for f in files], "format": fmt, "metadata": metadata,
              "dynamic_batch": dynamic_batch}
    if actual is None:
        logger.warning("onnxruntime is not installed (pip install 'taggnn[export]'): %s was not verified", path)
        return dict(result, max_abs_diff=None, verified=False)
    return dict(result, max_abs_diff=difference, verified=True)


def _refuse_input_dependent_edges(model: nn.Module, fmt: str) -> None:
    """Refuses, before any tracing, a graph stage with kNN edges: they are rebuilt from the features
    at every forward, which no exporter records (a trace would keep the example's edges, or fail
    after minutes)."""
    graph = getattr(getattr(getattr(model, "head", None), "refiner", None), "graph", None)
    dynamic = getattr(graph, "dynamic", None)
    if dynamic:
        raise ConfigError(f"this model cannot be exported as {fmt}: its graph stage has {dynamic!r} edges "
                          f"(model.graph_dynamic), rebuilt from the features at every forward, which no exporter "
                          f"traces; nothing was written. --format safetensors keeps it (it runs with taggnn)")


def _graph_stage(model: nn.Module) -> str:
    """``"its graph stage (back-end 'stencil', spatial 'grid8', ...) is in the way: "`` or ``""``."""
    refiner = getattr(getattr(model, "head", None), "refiner", None)
    if refiner is None:
        return ""
    graph = getattr(refiner, "graph", None)
    families = ", ".join(f"{name} {getattr(graph, name)!r}" for name in ("spatial", "temporal", "dynamic")
                         if getattr(graph, name, None) is not None)
    return f"its graph stage (back-end {refiner.backend!r}{', ' + families if families else ''}) may be in the way; "


def _first_line(error: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # the exporter colours its messages
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else "no message")[:300]


def read_export_metadata(path: Union[str, Path]) -> Dict[str, Any]:
    """The metadata (:func:`export_metadata`) of an export written by :func:`export_model`: an
    ``.onnx`` file, a TorchScript or ``torch.export`` file, or a safetensors folder (its
    ``config.json``'s ``class_names``, ``num_classes`` and ``preprocessing``)."""
    path = Path(path)
    if path.is_dir() or path.name == "model.safetensors":
        config = read_config(path if path.is_dir() else path.parent)
        return {key: config.get(key) for key in ("class_names", "num_classes", "preprocessing", "dataset")}
    if path.suffix == ".onnx" or (path.is_file() and not zipfile.is_zipfile(path)):  # an ONNX file by any name
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        props = {prop.key: prop.value for prop in model.metadata_props}
        return json.loads(props[METADATA_KEY]) if METADATA_KEY in props else {}
    # TorchScript and torch.export files are zip archives holding extra files as <archive>/extra/<name>
    with zipfile.ZipFile(path) as archive:
        names = [name for name in archive.namelist() if name.endswith(f"/extra/{METADATA_FILE}")]
        return json.loads(archive.read(names[0])) if names else {}


@contextlib.contextmanager
def _quiet_onnx_exporter() -> Iterator[bool]:
    """Silences the INFO messages of the ONNX exporter's libraries (onnxscript, onnx_ir,
    torch.onnx) unless the ``taggnn`` logger is at DEBUG level; yields whether to be verbose."""
    verbose = logging.getLogger("taggnn").isEnabledFor(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [item.level for item in loggers]
    if not verbose:
        for item in loggers:
            item.setLevel(logging.WARNING)
    try:
        yield verbose
    finally:
        for item, level in zip(loggers, levels):
            item.setLevel(level)


def _weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


class _FixedBatch(nn.Module):
    """``model`` on exactly ``batch`` clips, for a TorchScript trace with a fixed batch: the trace
    computes every other shape from its input, so the batch is fixed by a reshape to the constant
    ``batch`` (a batch of another size fails there, as it does in ``torch.export`` and ONNX)."""

    def __init__(self, model: nn.Module, batch: int):
        super().__init__()
        self.model = model
        self.batch = int(batch)

    def forward(self, clips: Tensor) -> Tensor:
        return self.model(clips.reshape(self.batch, *clips.shape[1:]))


def _write_and_reload(model: nn.Module, example: Tensor, checks: List[Tensor], path: Path, fmt: str,
                      metadata: Mapping[str, Any], dynamic_batch: bool) -> Optional[List[Tensor]]:
    """Writes the export (with ``metadata``), traced on ``example``, at ``path``; returns its outputs
    on each of ``checks`` (``None`` when ONNX cannot be run here)."""
    text = json.dumps(metadata)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    if fmt == "torchscript":  # a trace records shape arithmetic, not the example's sizes
        traced_model = model if dynamic_batch else _FixedBatch(model, example.size(0))
        with warnings.catch_warnings():  # the tracer's notes on Python-side values and its deprecation notices
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
            traced = torch.jit.trace(traced_model, example, check_trace=False)
            torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: text})
            loaded = torch.jit.load(str(path))
        return [loaded(clips) for clips in checks]
    if fmt == "exported-program":
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
        torch.export.save(program, str(path), extra_files={METADATA_FILE: text})
        loaded = torch.export.load(str(path)).module()
        return [loaded(clips) for clips in checks]
    if fmt == "safetensors":  # a folder: model.safetensors + config.json (class names, preprocessing) + README.md
        save_pretrained_folder(model, path)
        loaded = load_pretrained(path)
        return [loaded(clips) for clips in checks]
    with _quiet_onnx_exporter() as verbose:
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["clip"], output_names=["logits"],
                                    dynamic_shapes=dynamic_shapes, verbose=verbose)
        program.model.metadata_props[METADATA_KEY] = text
        program.save(str(path), external_data=_weight_bytes(model) > ONNX_SINGLE_FILE_LIMIT)
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [torch.from_numpy(session.run(None, {name: clips.cpu().numpy()})[0]) for clips in checks]
