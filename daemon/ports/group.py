"""A training group the watcher did not start: SkyPilot's torchrun on this node, behind the same
few methods as daemon/worker.py's child (start, poll, signal, wait, pid, running), so the
lifecycle, the executor and every rule treat it as they treat our own worker.

The run script (scripts/skypilot/amapiano-train.yaml) says where it is: it writes `PID` to the
pid file once it has started torchrun and `PID STATUS` once torchrun has ended (bash's status:
128 + N for signal N). Starting is adopting: the watcher never launches a process. Asking to
stop is the stop-request file (daemon/common/stopfile.py), which rank 0 reads at step boundaries
on every node's behalf; asking for a checkpoint and the stack dump are signals to this node's
ranks; killing a stalled group kills this node's ranks and torchrun, which breaks the rendezvous
on every node, so the whole job ends and SkyPilot's recovery can restart it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from .. import heartbeat
from ..common import exits, stopfile
from ..common.atomic import read_bytes
from ..common.clock import iso
from ..rules.restart import WorkerExit
from ..worker import WorkerProcess, children

STATUS_WAIT_S = 5.0   # torchrun gone, its status not written yet: the run script is a moment behind
MAX_PID_FILE = 256


def read_pid_file(path: Path) -> tuple[int, int | None] | None:
    """(pid, exit status or None while running) from the run script's pid file; None if unreadable."""
    try:  # bounded, and a FIFO or a device planted there is refused: open() on a FIFO waits for ever
        words = read_bytes(path, MAX_PID_FILE).decode("ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    if not 1 <= len(words) <= 2 or not all(w.isdigit() and len(w) < 10 for w in words):
        return None
    pid = int(words[0])
    return (pid, int(words[1]) if len(words) == 2 else None) if pid > 1 else None


def is_trainer(pid: int, config: Path | None = None) -> bool:
    """A pid file can outlive its process, and the pid be taken by another: only a process running
    the trainer (`python -m trainer`, or torchrun's `... -m trainer`) on this watcher's config (the run
    script gives both the same --config) is adopted, signalled or killed. "trainer" anywhere in an
    argv (`vim trainer`), or another job's trainer on this machine, is not our group."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read(65536).split(b"\0")]
    except OSError:
        return False
    if not any(argv[i:i + 2] == ["-m", "trainer"] for i in range(len(argv) - 1)):
        return False
    return config is None or _same_file(pid, _config_arg(argv[argv.index("trainer"):]), config)


def _config_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _same_file(pid: int, arg: str | None, config: Path) -> bool:
    """The trainer's --config (relative to its own working directory) is our config file."""
    if arg is None:
        return False
    try:
        return os.path.samefile(os.path.join(f"/proc/{pid}/cwd", arg), config)
    except OSError:
        return False


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (torchrun's parent, the run script, reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] not in ("Z", "X", "")


def returncode(status: int | None) -> int:
    """bash's status as Popen's: 128 + N is signal N (negative); unknown is a crash."""
    if status is None:
        return 1
    if status > 128 and (status - 128) in signal.valid_signals():
        return -(status - 128)
    return status


class WatchedGroup(WorkerProcess):
    """The group SkyPilot's run script started on this node."""

    pausable = False  # stopping the group ends the job: a milestone evaluation runs beside it

    def __init__(self, pid_file: Path, failure_file: Path, heartbeat_file: Path, stop_file: Path, clock: Any,
                 why: Callable[[], str] = lambda: "stop requested", config: Path | None = None):
        super().__init__(pid_file, failure_file, nproc=2)  # nproc > 1: rank 0's failure file has the real status
        self.pid_file, self.stop_file, self.heartbeat_file = pid_file, stop_file, heartbeat_file
        self.clock, self.why, self.config = clock, why, config
        # The run script starts the watcher before torchrun: a failure file already there is an earlier job's.
        self._stale = self._mtime(failure_file)
        self._pid: int | None = None
        self._adopted_at: float | None = None
        self._gone_at: float | None = None

    def _seen(self) -> int | None:
        """The group's pid while it runs, from the pid file (adopted or not)."""
        found = read_pid_file(self.pid_file)
        if found is None or found[1] is not None:
            return None
        return found[0] if alive(found[0]) and is_trainer(found[0], self.config) else None

    @property
    def pid(self) -> int | None:
        return self._pid if self._pid is not None else self._seen()

    @property
    def running(self) -> bool:
        pid = self.pid
        return pid is not None and alive(pid) and (read_pid_file(self.pid_file) or (0, 0))[1] is None

    @property
    def unread(self) -> bool:
        """Adopted, and how it ended not read yet (it may be gone a moment before its status is written)."""
        return self._pid is not None

    def command(self) -> list[str]:
        return ["(adopted from", str(self.pid_file) + ")"]

    def start(self) -> int:
        """Adopt the running group: from now on its exit is ours to read."""
        pid = self._seen()
        if pid is None:
            raise RuntimeError(f"no running group in {self.pid_file}")
        self._pid, self._gone_at, self._adopted_at = pid, None, self.clock.now().timestamp()
        self._stale = self._mtime(self.failure_file)   # an earlier run's failure file is not this group's
        self._oom_before = self._mtime(self.oom_file)
        return pid

    def ended_unwatched(self) -> WorkerExit | None:
        """How a group that ended before we adopted it ended, once the run script has written its
        status (a bad config, or training already complete on a relaunch, exits within seconds)."""
        found = read_pid_file(self.pid_file)
        if self._pid is not None or found is None or found[1] is None:
            return None
        return self.ended(returncode(found[1]))

    def poll(self) -> WorkerExit | None:
        if self._pid is None or alive(self._pid):
            return None
        found = read_pid_file(self.pid_file)
        status = found[1] if found is not None and found[0] == self._pid else None
        if status is None:
            self._gone_at = self._gone_at or self.clock.monotonic()
            if self.clock.monotonic() - self._gone_at < STATUS_WAIT_S:
                return None
        self._pid = None
        return self._told(self.ended(returncode(status)))

    def _told(self, ended: WorkerExit) -> WorkerExit:
        """torchrun exits 1 whatever its ranks did, and a group of one process writes no status of its
        own: the heartbeat's last word, written since we adopted it, says a stop or a completion."""
        if ended.code != 1 or ended.error_type is not None:
            return ended
        beat = heartbeat.read(self.heartbeat_file)
        if beat is None or self._adopted_at is None or beat.written_s < self._adopted_at - 1:
            return ended
        code = {"stopped": exits.PREEMPTED, "completed": exits.OK}.get(beat.fields.get("activity"))
        return ended if code is None else replace(ended, code=code)

    def signal(self, sig: int) -> None:
        pid = self.pid
        if pid is None:
            return
        if sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            try:
                stopfile.request(self.stop_file, pid, self.why(), iso(self.clock.now()))
                return
            except OSError:  # a read-only or full state dir: this node's ranks take SIGTERM as the same stop
                sig = signal.SIGTERM
        ranks = children(pid)
        for target in (ranks or [pid]) + ([pid] if ranks and sig == signal.SIGKILL else []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, sig)

    def wait(self, timeout: float) -> WorkerExit | None:
        deadline = time.monotonic() + timeout
        while True:
            if (ended := self.poll()) is not None or self._pid is None or time.monotonic() >= deadline:
                return ended
            time.sleep(0.1)
