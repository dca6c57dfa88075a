"""Asking the worker to stop (SIGUSR1, SIGTERM, SIGINT, or the supervisor vanishing), or only
to checkpoint now and go on (SIGUSR2: a Spot rebalance recommendation).

Installed first thing in `python -m trainer`, before torch is imported (seconds; minutes for a
cold model load), so a stop that arrives during start-up is remembered instead of killing the
process with the default action. The training loop reads it at step boundaries.

On a cluster the watcher is not the group's parent: it asks through a file on the shared state
directory (daemon/common/stopfile.py), which rank 0 reads here, at most once a second, as if a
signal had come; the ranks agree on it as on a signal (distributed.AgreedStop).
"""
from __future__ import annotations

import faulthandler
import os
import signal
import time
from pathlib import Path
from typing import Any

FILE_EVERY_S = 1.0  # a stat a second, not one a step: the state dir may be a bucket mount


class StopRequest:
    def __init__(self) -> None:
        self.reason: str | None = None
        self.checkpoint_requested = False
        self._parent = int(os.environ.get("AMAPIANO_SUPERVISOR_PID", "0")) or None
        self._via_torchrun = "TORCHELASTIC_RUN_ID" in os.environ  # the supervisor is torchrun's parent
        self._file: Path | None = None
        self._file_read_at = float("-inf")
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGUSR2, self._on_checkpoint)
        # A hung worker is sent SIGQUIT before SIGKILL: every thread's stack goes to stderr (the
        # journal), from C, so it works even when the Python main loop is stuck.
        faulthandler.register(signal.SIGQUIT, all_threads=True)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.reason = signal.Signals(signum).name

    def _on_checkpoint(self, _signum: int, _frame: Any) -> None:
        self.checkpoint_requested = True

    def take_checkpoint_request(self) -> bool:
        requested, self.checkpoint_requested = self.checkpoint_requested, False
        return requested

    def _supervisor(self) -> int | None:
        if not self._via_torchrun:
            return os.getppid()
        try:
            with open(f"/proc/{os.getppid()}/stat") as f:
                stat = f.read()
            return int(stat[stat.rfind(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            return None

    def watch(self, state_dir: Path) -> None:
        """Read the watcher's stop request in state_dir too (rank 0 only: it speaks for the group)."""
        if int(os.environ.get("RANK", "0")) == 0:
            from daemon.common import stopfile

            self._file = stopfile.path(state_dir)

    def _requested(self) -> str | None:
        now = time.monotonic()
        if self._file is None or now - self._file_read_at < FILE_EVERY_S:
            return None
        self._file_read_at = now
        from daemon.common import stopfile

        # The group's leader on this node: torchrun (our parent), or this process when it runs alone.
        leader = os.getppid() if self._via_torchrun else os.getpid()
        why = stopfile.for_group(self._file, {leader})
        return None if why is None else f"stop requested: {why}"

    def check(self) -> str | None:
        if self.reason is None and self._parent and self._supervisor() != self._parent:
            self.reason = "supervisor gone"  # never train on, unwatched
        if self.reason is None:
            self.reason = self._requested()
        return self.reason
