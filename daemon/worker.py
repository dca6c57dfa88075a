"""The trainer worker as a child process: start, poll, signal, and read why it died.

The mechanics only; what to do about an exit is daemon/restart.py's business.
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from .common.atomic import read_json
from .common.launch import python_command, spawn
from .restart import WorkerExit


class WorkerProcess:
    """One run of `python -m trainer --config FILE`, with its failure file."""

    def __init__(self, config_path: Path, failure_file: Path, extra_args: tuple[str, ...] = ()):
        self.config_path = config_path
        self.failure_file = failure_file
        self.extra_args = extra_args
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self) -> list[str]:
        return python_command("trainer", "--config", str(self.config_path),
                              "--failure-file", str(self.failure_file), *self.extra_args)

    def start(self) -> int:
        self.failure_file.unlink(missing_ok=True)
        self._proc = spawn(self.command(), AMAPIANO_SUPERVISOR_PID=str(os.getpid()))
        return self._proc.pid

    def poll(self) -> WorkerExit | None:
        """None while running; how it ended once it has (reaps the child)."""
        if self._proc is None:
            return None
        rc = self._proc.poll()
        if rc is None:
            return None
        self._proc = None
        failure = read_json(self.failure_file) or {}
        if rc < 0:
            return WorkerExit(code=None, signal=signal.Signals(-rc).name,
                              error_type=failure.get("type"), message=failure.get("message"))
        return WorkerExit(code=rc, error_type=failure.get("type"), message=failure.get("message"))

    def signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

    def wait(self, timeout: float) -> WorkerExit | None:
        if self._proc is None:
            return None
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.poll()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
