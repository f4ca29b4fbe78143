"""Atomic checkpoints with everything needed for an exact resume.

A checkpoint holds model, optimiser, scheduler and grad-scaler states, the epoch and step
(including the position inside the epoch), the RNG states of python, numpy, torch and CUDA,
the resolved config, the best validation score and the class names. It is written to a
temporary file and renamed, so a crash never leaves a half-written ``last.pt``. Loading uses
``weights_only=True``: RNG states are stored as tensors and plain Python values.
"""
from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import threading
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from ..errors import CheckpointError
from ..utils.identify import describe_file
from ..utils.outputs import TEMPORARY_NAME, temporary_path, write_atomic  # noqa: F401  (names re-exported)

CHECKPOINT_VERSION = 1

def rng_state() -> Dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Interrupted(BaseException):
    """Raised by the signal handler active while a checkpoint is written."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_raise():
    """Turns SIGTERM / SIGHUP into an exception while a checkpoint is written (main thread
    only), so that the temporary file is removed before the process ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = [name for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {}

    def handler(signum, frame):
        raise _Interrupted(signum)

    for name in names:
        number = getattr(signal, name)
        previous[number] = signal.signal(number, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def save_checkpoint(path: Union[str, os.PathLike], payload: Dict[str, Any]) -> Path:
    """Writes ``payload`` atomically (temporary file in the same folder, fsync, rename).

    On any failure or signal the temporary file is removed and the previous file at ``path``
    is left intact; a full disk raises :class:`~taggnn.errors.CheckpointError` saying so. A
    signal (SIGTERM, SIGHUP) received while writing is delivered again once cleaned up. The
    temporary file of a writer killed outright (SIGKILL) is removed when the next run starts in
    the folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(payload, checkpoint_version=CHECKPOINT_VERSION)
    try:
        with _signals_raise():
            write_atomic(path, lambda f: torch.save(payload, f))  # removes its temporary file on failure
    except _Interrupted as interrupted:
        signal.raise_signal(interrupted.signum)  # the default action (or the caller's handler) now
        raise
    except BaseException as error:
        if _is_no_space(error):
            kept = f"; the previous {path.name} is intact" if path.exists() else ""
            raise CheckpointError(f"no space left on device writing {path}{kept}: free some space and resume") \
                from error
        raise
    return path


def _is_no_space(error: BaseException) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error) or "file write failed" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


#: What ``taggnn`` expects where it reads a checkpoint (ends every identification message).
EXPECTED_CHECKPOINT = "expected a taggnn checkpoint: best.pt or last.pt of a run folder written by taggnn train"


def describe_foreign_checkpoint(data: Any) -> str:
    """What a loaded file that is not a taggnn checkpoint appears to be."""
    if isinstance(data, dict):
        keys = [str(k) for k in data]
        if isinstance(data.get("model_state_dict"), dict) and "optimizer_state_dict" in data:
            return ("the authors' training checkpoint (their train.py's last_checkpoint.pth: model_state_dict, "
                    "optimizer_state_dict, ...): evaluate it with taggnn eval --reference FILE --dataset "
                    "haa500|gym99|gym288, or load it with taggnn.models.load_reference_checkpoint")
        state = data.get("state_dict", data.get("model_state", data.get("model_state_dict", data)))
        state_keys = [str(k) for k in state] if isinstance(state, dict) else keys
        if any(k.startswith(("pos_embedding", "backbone.", "csnmodel.", "appnp")) for k in state_keys) and any(
                k.startswith(("classifier.", "mlp_head.")) for k in state_keys):
            return ("the authors' TAG-Head checkpoint: evaluate it with taggnn eval --reference FILE --dataset "
                    "haa500|gym99|gym288, or load it with taggnn.models.load_reference_checkpoint")
        if all(torch.is_tensor(v) for v in data.values()) and data:
            return (f"a plain state dict of {len(data)} tensors (first keys: {', '.join(keys[:3])}); backbone "
                    f"weights load with --set model.weights=<file>, the authors' checkpoints with "
                    f"taggnn.models.load_reference_checkpoint")
        return f"a mapping with keys {', '.join(keys[:6])}; a taggnn checkpoint has 'model' and 'config'"
    return f"a {type(data).__name__}, not a mapping"


def describe_folder(path: Union[str, os.PathLike]) -> str:
    """The message for a folder given where a checkpoint file is expected."""
    path = Path(path)
    present = [name for name in ("best.pt", "last.pt") if (path / name).is_file()]
    if present:
        return (f"{path} is a folder, not a checkpoint file; it holds {' and '.join(present)}: pass "
                f"{path / present[0]}")
    return f"{path} is a folder, not a checkpoint file, and holds no best.pt or last.pt; {EXPECTED_CHECKPOINT}"


def load_checkpoint(path: Union[str, os.PathLike], map_location: Optional[str] = "cpu") -> Dict[str, Any]:
    """A taggnn checkpoint written by :func:`save_checkpoint`, loaded with ``weights_only=True``.

    Anything else is refused with a one-line :class:`~taggnn.errors.CheckpointError` that says
    what the file looks like (a folder, an export, a config, the authors' checkpoint, ...) and
    what was expected.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(describe_folder(path))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    what = describe_file(path)  # exports, configs and text are named before torch.load sees them
    if what is None:
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as error:
            what = describe_file(path, error)
    if what is not None:
        raise CheckpointError(f"{path}: not a taggnn checkpoint: it is {what}; {EXPECTED_CHECKPOINT}")
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise CheckpointError(f"{path}: not a taggnn checkpoint; it looks like "
                              f"{describe_foreign_checkpoint(checkpoint)}")
    return checkpoint
