"""The stop request on the shared state directory: how a watcher that did not start the group asks
it to checkpoint and stop (daemon/watch.py writes it, trainer/worker/stop.py reads it). Stdlib only.

A signal needs a parent; on a SkyPilot cluster the watcher is the group's neighbour, not its parent,
and the other nodes' ranks are on other machines. The file is read by rank 0 only (on the head
node, beside the watcher, so the bucket mount's cache shows it at once), at step boundaries; the
ranks then agree on it through the same all-reduce as on a signal (trainer/worker/distributed.py).

A request names the group it is for: the head node's boot id and the pid of the process that leads
the group there (torchrun, or the worker itself when it runs alone). A request left from an earlier
job, on the bucket for weeks, names a group that is gone, and stops nothing. Garbage is no request.
"""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

from .atomic import read_json, write_json_atomic

NAME = "stop-request.json"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
MAX_REASON = 500
# Ours is under 7 KiB (500 characters of reason, escaped): rank 0 reads it every second, maybe through
# a bucket mount, and a 16 MiB file (the general JSON limit) was fetched and parsed each time.
MAX_FILE = 16384


def path(state_dir: Path) -> Path:
    return Path(state_dir) / NAME


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"


def request(file: Path, group_pid: int, reason: str, at: str) -> None:
    """Ask the group led by group_pid (on this boot) to checkpoint and stop (OSError if it cannot)."""
    _aside(file)
    write_json_atomic(file, {"group_pid": group_pid, "boot_id": boot_id(), "reason": reason[:MAX_REASON], "at": at})


def read(file: Path) -> dict[str, Any] | None:
    """The request as written, or None (absent, unreadable, or not one of ours)."""
    data = read_json(file, MAX_FILE)
    if not isinstance(data, dict):
        return None
    pid, boot, reason = data.get("group_pid"), data.get("boot_id"), data.get("reason")
    if not (isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 and isinstance(boot, str)
            and isinstance(reason, str)):
        return None
    return data


def for_group(file: Path, group_pids: set[int]) -> str | None:
    """The reason, when the file asks one of group_pids (on this boot) to stop; else None."""
    data = read(file)
    if data is None or data["boot_id"] != boot_id() or data["group_pid"] not in group_pids:
        return None
    return data["reason"][:MAX_REASON] or "stop requested"


def _aside(file: Path) -> bool:
    """A directory planted at the name (no rename replaces it) is kept beside it for a look, as
    the journal keeps its planted non-files; True if there was one."""
    try:
        if not stat.S_ISDIR(os.lstat(file).st_mode):
            return False
    except OSError:
        return False
    os.replace(file, file.with_name(f"{file.name}.bad.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}"))
    return True


def clear(file: Path) -> bool:
    """Remove a request (an earlier job's) or whatever was planted there; True if there was one.
    Never raises: a read-only state dir leaves it, and the group it names is gone anyway."""
    try:
        if _aside(file):
            return True
        os.unlink(file)
        return True
    except OSError:
        return False
