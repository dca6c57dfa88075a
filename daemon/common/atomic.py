"""Files other processes read: written atomically (temp file in the same directory, fsync,
rename, fsync the directory), read defensively.

A reader never sees half a file; a crash at any instant leaves the old or the new version.
Files are 0640 and directories 0750 (the unit's UMask=0027 says the same).
"""
from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

FILE_MODE = 0o640
DIR_MODE = 0o750


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic_with(path: Path, write: Callable[[IO[bytes]], Any], mode: int = FILE_MODE) -> Any:
    """Call ``write(f)`` on a temp file beside ``path``, then commit it as ``path``.

    Returns whatever ``write`` returned. On any error the temp file is removed and the
    old ``path`` (if any) is untouched.
    """
    path = Path(path)
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
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


def write_bytes_atomic(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    write_atomic_with(path, lambda f: f.write(data), mode)


def write_json_atomic(path: Path, obj: Any, mode: int = FILE_MODE) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    write_bytes_atomic(path, data, mode)


MAX_DEPTH = 64            # no file of ours nests deeper than a few levels
READ_LIMIT = 16 * 1024 * 1024


def _int(digits: str) -> int | float:
    """An integer of more digits than any figure of ours is read as a float (inf past its range),
    which every check already refuses: 1 and 400 zeros is valid JSON, and math.isfinite raised
    OverflowError on it (no ValueError: past every handler, a traceback at start and in status)."""
    return int(digits) if len(digits) <= 30 else float(digits)


def loads(raw: bytes | str, max_depth: int = MAX_DEPTH, **kw: Any) -> Any:
    """json.loads, with nesting deeper than `max_depth` refused as ValueError like any other bad
    JSON: a file nested 100,000 deep raised RecursionError through every reader (a traceback and
    a restart loop), and one a few hundred deep broke the recursive checks after it."""
    kw.setdefault("parse_int", _int)
    try:
        data = json.loads(raw, **kw)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > max_depth:
                raise ValueError(f"nested deeper than {max_depth} levels")
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return data


def read_bytes(path: Path, limit: int = READ_LIMIT) -> bytes:
    """A regular file's bytes, at most `limit` (OSError past it): a FIFO or a device planted at
    the path is refused instead of blocking the reader for ever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{path}: more than {limit} bytes")
    return data


def read_json(path: Path, limit: int = READ_LIMIT) -> dict | None:
    """A small JSON object written atomically by another process; None if absent or unreadable
    (a torn, non-UTF-8, too large, too deeply nested or non-object file reads as absent: the
    caller decides what that means)."""
    try:
        data = loads(read_bytes(Path(path), limit))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
