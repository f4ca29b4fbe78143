"""Outputs that never replace a file by surprise, and that appear whole or not at all.

A command that writes a file the user names (or a default name) checks it first with
:func:`check_output`: an existing file is refused unless the command was given
``--overwrite``, and a file the command reads is refused always. The file itself is written
through :func:`atomic_output`, so that a failure half-way leaves the previous file (or no
file) instead of a truncated one. A file that a training run wrote into its folder (its
checkpoints, config, log and results, as the folder's manifest :data:`MANIFEST_NAME` lists them)
or any taggnn training checkpoint is never replaced, even with ``--overwrite``. Single files that
taggnn writes for itself (manifests, checkpoints) go through :func:`write_atomic`: a temporary
file ``.<name>.<pid>.tmp``, flushed to disk, then renamed into place.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickletools
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Optional, Union

from ..errors import TaggnnError

PathLike = Union[str, os.PathLike]

__all__ = [
    "OutputExistsError", "check_output", "atomic_output", "same_path", "TEMPORARY_NAME", "temporary_path",
    "write_synced", "write_atomic", "write_text_atomic", "MANIFEST_NAME", "TRAINING_OUTPUT", "protected_file",
]

#: The manifest of a run folder: the names of the files taggnn wrote there (see
#: :mod:`taggnn.engine.runfolder`).
MANIFEST_NAME = ".taggnn-manifest.json"
#: Names of the files a training run writes into its folder: its checkpoints, config, logs, backbone,
#: tensorboard folder and the results of its own evaluations (``metrics_test.json``; ``taggnn eval``
#: tags its results with the checkpoint, ``metrics_test.best.json``, so they never match).
TRAINING_OUTPUT = re.compile(r"^(last\.pt|best\.pt|config\.yaml|log\.jsonl|log\.csv|params\.csv|summary\.json|"
                             r"backbone\.pt|tensorboard|metrics_[^.]+\.json|per_class_[^.]+\.csv|"
                             r"confusion_[^.]+\.png|skipped_[^.]+\.txt)$")

#: Name of a temporary file being written: ``.<final name>.<pid of the writer>.tmp`` beside the final
#: file, so that a later run can tell whether its writer is gone (see
#: :func:`taggnn.engine.runfolder.remove_stale_temporaries`).
TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


class OutputExistsError(TaggnnError, FileExistsError):
    """An output file exists (or is an input of the command) and would be replaced."""


def same_path(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name the same file (resolving links and relative parts)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _listed_in_manifest(path: Path) -> bool:
    try:
        data = json.loads((path.parent / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    files = data.get("files") if isinstance(data, dict) else None
    return isinstance(files, list) and path.name in files


def _is_training_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a ``torch.save`` zip whose top-level dictionary holds ``model`` and
    ``config`` (a taggnn training checkpoint); reads the pickle's opcodes only, loads nothing."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return False
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1 or any("/code/" in n for n in archive.namelist()):
                return False
            with archive.open(pickles[0]) as f:
                strings = {arg for op, arg, _ in pickletools.genops(f) if isinstance(arg, str)
                           and op.name.endswith("UNICODE")}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return False
    return {"model", "config"} <= strings


def protected_file(path: PathLike) -> Optional[str]:
    """Why no command may replace ``path`` even with ``--overwrite``: a file that a taggnn training
    run wrote into its folder (its manifest lists it and its name is one of
    :data:`TRAINING_OUTPUT`), or a taggnn training checkpoint anywhere; ``None`` for other files."""
    path = Path(path)
    if not os.path.lexists(path):
        return None
    if TRAINING_OUTPUT.match(path.name) and _listed_in_manifest(path):
        return f"a file of the taggnn run in {path.parent} (listed in its {MANIFEST_NAME})"
    if path.is_file() and _is_training_checkpoint(path):
        return "a taggnn training checkpoint"
    return None


def check_output(path: PathLike, *, overwrite: bool = False, inputs: Iterable[PathLike] = (),
                 what: str = "output", flag: str = "--overwrite", folder_of: Optional[Iterable[str]] = None) -> Path:
    """Refuses to write ``path`` over an input of the command, a folder or an existing file.

    With ``folder_of`` (the names of the files such a folder holds) the output is a folder
    instead: a file there is refused, an existing non-empty folder needs ``flag``, and even with
    it a folder holding any other file is refused (it is not an earlier output of this kind).

    Args:
        path: The file the command is about to write.
        overwrite: Whether the user allowed replacing an existing file (``flag``).
        inputs: Files the command reads; ``path`` may never be one of them.
        what: How the message names the output (e.g. ``"--dump"``).
        flag: The option that allows replacing an existing file.
        folder_of: For a folder output, the names of the files it holds when written.

    A file of a training run or a training checkpoint (:func:`protected_file`) is refused even
    with ``overwrite``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputExistsError: with a one-line message saying what to do.
    """
    path = Path(path)
    for source in inputs:
        if same_path(path, source):
            raise OutputExistsError(f"{what} {path} is the file this command reads; writing it would destroy "
                                    f"the input: choose another output path")
    if folder_of is not None:
        if os.path.lexists(path) and not path.is_dir():
            raise OutputExistsError(f"{what} {path} is a file; give a folder name")
        held = sorted(item.name for item in path.iterdir()) if path.is_dir() else []
        others = [name for name in held if name not in set(folder_of)]
        if others:
            raise OutputExistsError(f"{what} {path} holds other files ({', '.join(others[:4])}); choose a new or "
                                    f"empty folder")
        if held and not overwrite:
            raise OutputExistsError(f"{what} {path} already holds {', '.join(held)}; pass {flag} to replace them, "
                                    f"or choose another folder")
        return path
    if path.is_dir():
        raise OutputExistsError(f"{what} {path} is a folder; give a file name")
    protected = protected_file(path)
    if protected:
        raise OutputExistsError(f"{what} {path} is {protected}; taggnn never writes over it, even with {flag}: "
                                f"choose another path")
    if os.path.lexists(path) and not overwrite:
        raise OutputExistsError(f"{what} {path} already exists; pass {flag} to replace it, or choose another path")
    return path


@contextlib.contextmanager
def atomic_output(path: PathLike, *, overwrite: bool = True, flag: str = "--overwrite") -> Iterator[Path]:
    """Yields a path of the same name inside a hidden temporary folder next to ``path``.

    Everything written in that folder (the file, and companions such as an ONNX model's
    ``.data`` file) is moved next to ``path`` when the block ends without error; on any error
    the temporary folder is removed and the files already at the destination are untouched.
    With ``overwrite=False`` a companion that appeared at the destination meanwhile is refused.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_path(path)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging / path.name
        written = sorted(staging.iterdir())
        if not overwrite:
            for item in written:
                destination = path.parent / item.name
                if item.is_dir() and destination.is_dir() and not any(destination.iterdir()):
                    continue  # a folder output into an empty folder
                check_output(destination, flag=flag)
        for item in written:  # the main file last: its companions are in place when it appears
            if item.name != path.name:
                os.replace(item, path.parent / item.name)
        staged = staging / path.name
        if staged.is_dir() and path.is_dir():  # a folder output replaces the previous folder whole
            previous = path.parent / f".{path.name}.{os.getpid()}.old"
            os.replace(path, previous)
            os.replace(staged, path)
            shutil.rmtree(previous, ignore_errors=True)
        elif staged.exists():
            os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def temporary_path(path: PathLike) -> Path:
    """Where this process writes ``path`` before renaming it into place (``.<name>.<pid>.tmp``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_synced(path: PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Calls ``write(file)`` on the new file ``path`` and flushes it to disk; on any failure or
    interruption ``path`` is removed, so nothing is left behind."""
    path = Path(path)
    try:
        with open(path, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def write_atomic(path: PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Calls ``write(file)`` on a temporary file beside ``path`` (:func:`temporary_path`), flushes
    it to disk and renames it to ``path``: ``path`` holds the old or the new content, never a part
    of it. On any failure or interruption the temporary file is removed."""
    path = Path(path)
    tmp = temporary_path(path)
    write_synced(tmp, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` with :func:`write_atomic`."""
    return write_atomic(path, lambda f: f.write(text.encode()))
