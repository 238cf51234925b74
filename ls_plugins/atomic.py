"""Atomic file output: write to a temporary file beside the target, then rename over it.

Readers never see a half-written file, and an interrupted run (or a crash of the machine) leaves
the old file or the new one, never a mix: the temporary file is flushed to disk (``fsync``)
before the rename, and the directory after it.  The temporary file is created with mode
``0o666`` so that the kernel applies the process's umask, as for any new file; the umask itself
is never changed (that would race with other threads creating files).
"""
from __future__ import annotations

import json
import os
import secrets
from typing import Callable


def _create_temporary(directory: str, name: str) -> str:
    """Create an empty, new file ``.tmp-<random>-<name>`` in ``directory`` (mode 0o666 & ~umask)."""
    while True:
        path = os.path.join(directory, f".tmp-{secrets.token_hex(6)}-{name}")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return path
        except FileExistsError:
            continue


def _fsync(path: str, *, directory: bool = False) -> None:
    """Flush ``path``'s data (a file) or its entries (a directory) to disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # some systems (Windows) cannot open a directory: nothing to flush there
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems refuse fsync on directories; files must sync
            raise
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp_path)``, then rename ``tmp_path`` over ``path`` (same directory).

    ``write`` writes the whole content to the (existing, empty) temporary path, e.g. with
    ``open(tmp_path, "w")``, ``torch.save`` or ``savefig``.  If it raises, the temporary file is
    removed and ``path`` keeps its old content.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = _create_temporary(directory, os.path.basename(path))
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync(directory, directory=True)


def write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    atomic_write(path, write)


def write_json(path: str, data) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")
