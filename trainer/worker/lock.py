"""One worker per state directory: an flock on state_dir/worker.lock, held for the process's life.

Two workers on one run would interleave checkpoints. That can happen when a supervisor dies
without systemd around to kill its cgroup (the orphan notices and checkpoints, which takes a
moment) or when someone runs `amapiano-train train` by hand beside the service. The new
worker waits for the old one to finish its checkpoint, then goes on; the kernel drops the
lock however the holder dies.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any


class WorkerLocked(RuntimeError):
    pass


def acquire(state_dir: Path, log: Any, timeout: float = 120.0, poll: float = 0.25) -> int:
    """Take the lock (waiting up to timeout for a previous worker); returns the fd to keep open."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "worker.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + timeout
    warned = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            if time.monotonic() >= deadline:
                os.close(fd)
                raise WorkerLocked(f"{path}: another worker (pid {holder}) still holds this run after "
                                   f"{timeout:g}s; stop it first") from None
            if not warned:
                log.warning("worker.waiting_for_lock", lock=str(path), holder_pid=holder, timeout_s=timeout)
                warned = True
            time.sleep(poll)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
