"""Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory.

A reader never sees half a file; a crash at any instant leaves the old or the new version.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic_with(path: Path, write: Callable[[IO[bytes]], Any], mode: int = 0o644) -> Any:
    """Call ``write(f)`` on a temp file beside ``path``, then commit it as ``path``.

    Returns whatever ``write`` returned. On any error the temp file is removed and the
    old ``path`` (if any) is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return result


def write_bytes_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    write_atomic_with(path, lambda f: f.write(data), mode)


def write_json_atomic(path: Path, obj: Any, mode: int = 0o644) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    write_bytes_atomic(path, data, mode)
