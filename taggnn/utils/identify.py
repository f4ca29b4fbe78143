"""What a file is, from its first bytes: for messages about a file given in the wrong place.

``taggnn`` reads checkpoints and weights with ``torch.load(weights_only=True)``; when a user
passes something else (an export, a config, a folder's listing, the authors' training file),
PyTorch's own error says little (a YAML file "holds pickled objects") or gives advice taggnn
must not relay (load with ``weights_only=False``). :func:`describe_file` names the file instead.
"""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Optional, Union

import yaml

__all__ = ["describe_file"]


def describe_file(path: Union[str, os.PathLike], error: Optional[BaseException] = None) -> Optional[str]:
    """What a file that is not a ``torch.save`` file looks like, from its first bytes: a TorchScript
    model, a ``torch.export`` program, an ONNX model, a YAML or JSON file, other text, an empty
    file. For a file that may be one, ``None``; given ``error`` (what ``torch.load`` raised on it),
    what that error says about it (pickled Python objects, unknown bytes) instead of ``None``."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "an empty file (0 bytes)"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return "a damaged zip archive (a torch.save file cut short?)"
        if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
            return ("a TorchScript model (taggnn export --format torchscript writes these; run it with "
                    "torch.jit.load)")
        if any(n.endswith("/archive_format") for n in names) or any(n.endswith("/models/model.json") for n in names):
            return "a torch.export program (taggnn export --format exported-program; run it with torch.export.load)"
        if not any(n.endswith("data.pkl") for n in names):
            return f"a zip archive of {len(names)} files that is not a PyTorch save (first: {', '.join(names[:3])})"
    elif head[:1] == b"\x08" and (path.suffix == ".onnx" or b"pytorch" in head[:32] or b"onnx" in head[:64]):
        return "an ONNX model (taggnn export --format onnx writes these; run it with onnxruntime)"
    elif b"\x00" not in head and head[:1] != b"\x80":  # not a pickle (protocol 2+ starts with 0x80)
        return _describe_text(path, head)
    if error is None:
        return None
    message = str(error)
    global_name = re.search(r"GLOBAL ([\w.]+)", message)
    if global_name or "Unsupported global" in message:
        found = f" ({global_name.group(1)})" if global_name else ""
        return (f"a file of pickled Python objects{found}, which taggnn never loads (only tensors and plain values "
                f"are safe); it was not written by taggnn")
    first = next((line.strip() for line in message.splitlines() if line.strip()), "unknown content")
    if "weights_only" in first or "Weights only" in first:  # PyTorch's advice to unpickle anything: not relayed
        first = "not a PyTorch file of tensors"
    return f"not readable as a PyTorch file ({first[:160]})"


def _describe_text(path: Path, head: bytes) -> str:
    """A text file: YAML (a taggnn config?), JSON, or other text."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "a binary file of unknown format"
    try:
        data = yaml.safe_load(path.read_text()) if path.stat().st_size < (1 << 20) else None
    except (yaml.YAMLError, UnicodeDecodeError):
        data = None
    kind = "a JSON file" if text.lstrip().startswith(("{", "[")) or path.suffix == ".json" else "a YAML file"
    if isinstance(data, dict):
        keys = ", ".join(str(k) for k in list(data)[:6])
        if {"model", "data"} & set(map(str, data)):
            return (f"{kind} that looks like a taggnn config (keys: {keys}); a config goes to --config, "
                    f"a trained model's checkpoint to --checkpoint")
        return f"{kind} (keys: {keys})"
    first = text.strip().splitlines()[0][:60] if text.strip() else ""
    return f"a text file (first line: {first!r})"
