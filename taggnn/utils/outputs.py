"""Outputs that never replace a file by surprise, and that appear whole or not at all.

A command that writes a file the user names (or a default name) checks it first with
:func:`check_output`: an existing file is refused unless the command was given
``--overwrite``, and a file the command reads is refused always. The file itself is written
through :func:`atomic_output`, so that a failure half-way leaves the previous file (or no
file) instead of a truncated one.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator, Union

from ..errors import TaggnnError

PathLike = Union[str, os.PathLike]

__all__ = ["OutputExistsError", "check_output", "atomic_output", "same_path"]


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


def check_output(path: PathLike, *, overwrite: bool = False, inputs: Iterable[PathLike] = (),
                 what: str = "output", flag: str = "--overwrite") -> Path:
    """Refuses to write ``path`` over an input of the command, a folder or an existing file.

    Args:
        path: The file the command is about to write.
        overwrite: Whether the user allowed replacing an existing file (``flag``).
        inputs: Files the command reads; ``path`` may never be one of them.
        what: How the message names the output (e.g. ``"--dump"``).
        flag: The option that allows replacing an existing file.

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
    if path.is_dir():
        raise OutputExistsError(f"{what} {path} is a folder; give a file name")
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
    staging = path.parent / f".{path.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging / path.name
        written = sorted(staging.iterdir())
        if not overwrite:
            for item in written:
                check_output(path.parent / item.name, flag=flag)
        for item in written:  # the main file last: its companions are in place when it appears
            if item.name != path.name:
                os.replace(item, path.parent / item.name)
        if (staging / path.name).exists():
            os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
