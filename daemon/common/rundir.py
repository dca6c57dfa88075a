"""The run's directories, checked before anything starts, and the one-supervisor-per-state-dir lock.

A state_dir or log_dir that is a file, on a read-only mount, or not ours is a configuration
problem: one line naming the path, exit 78, not a traceback that systemd retries. Two
supervisors on one state directory would write state.json in turn and double-count spend: the
second one finds the first's flock (held for the daemon's life; the kernel drops it however the
holder dies) and stops, naming the holder's pid.
"""
from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from pathlib import Path

from .atomic import DIR_MODE, FILE_MODE

LOCK_NAME = "supervisor.lock"


class RunDirError(Exception):
    """One line: the path and what is wrong with it."""


# A directory that exists but is full or read-only right now is a storage fault, not a config
# error: the daemon starts anyway and keeps watching (state.write_failed, an alert, retries).
TRANSIENT = (errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def writable_dir(path: Path, what: str) -> str | None:
    """Raises RunDirError when the path cannot be our directory; returns a warning when it is,
    but cannot be written to right now."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if not path.is_dir():
            raise NotADirectoryError(20, "not a directory")
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        if e.errno in TRANSIENT and path.is_dir():
            return f"{path}: the {what} cannot be written now ({e.strerror}); watching anyway"
        raise RunDirError(f"{path}: the {what} is not a writable directory ({e.strerror or e})") from None
    return None


def check_dirs(state_dir: Path, log_dir: Path, cache_dir: Path) -> list[str]:
    """The warnings for directories that exist but cannot be written right now."""
    found = [writable_dir(state_dir, "state directory ([run] state_dir)"),
             writable_dir(log_dir, "log directory ([run] log_dir)"),
             writable_dir(cache_dir, "cache directory ([run] cache_dir)")]
    return [w for w in found if w]


def hold_lock(state_dir: Path) -> int:
    """Take the supervisor's lock or raise RunDirError naming the holder; returns the fd to keep."""
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as e:
        try:  # a read-only or full state directory: flock works on a read-only descriptor too
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            if e.errno in TRANSIENT:
                return -1  # no lock file can exist there now; nothing else can write there either
            raise RunDirError(f"{path}: cannot open the supervisor lock ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunDirError(f"{path}: another supervisor (pid {holder}) already watches this state directory; "
                          "stop it first (systemctl stop amapiano-train)") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # read-only: the lock holds; only the pid note is missing
    return fd
