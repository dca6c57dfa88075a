"""The one place that acts: it carries out the actions every policy and collaborator returns.

Nothing else in the daemon signals the worker, sends mail, starts a shutdown or an upload.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import time
from typing import Any, Callable

from . import actions as A
from .lifecycle import HoldKind, Lifecycle
from .ports.mail import Outbox
from .ports.mirror import Mirror
from .ports.shutdown import ShutdownStages
from .worker import WorkerProcess

DUMP_TIMEOUT_S = 10.0


class Executor:
    def __init__(self, log: Any, clock: Any, lifecycle: Lifecycle, worker: WorkerProcess, outbox: Outbox,
                 shutdown: ShutdownStages, mirror: Mirror, checkpoint_step: Callable[[], int | None]):
        self.log, self.clock, self.lifecycle, self.worker = log, clock, lifecycle, worker
        self.outbox, self.shutdown, self.mirror = outbox, shutdown, mirror
        self._checkpoint_step = checkpoint_step

    def execute(self, actions: list[A.Action]) -> None:
        for action in actions:
            handler = getattr(self, f"_{type(action).__name__}")
            handler(action)

    # -- the worker ----------------------------------------------------------------------------
    def _StartWorker(self, _: A.StartWorker) -> None:
        from_step = self._checkpoint_step()
        pid = self.worker.start()
        lc = self.lifecycle
        lc.launches += 1
        if lc.launches > 1:
            lc.restarts += 1
            self.log.info("worker.restarted", pid=pid, attempt=lc.restarts, from_step=from_step)
        else:
            self.log.info("worker.started", pid=pid, from_step=from_step, command=" ".join(self.worker.command()))
        lc.started(pid, from_step)

    def _ask_to_exit(self) -> None:
        """SIGUSR1: checkpoint at the next step boundary and exit 75 (once per worker)."""
        if self.worker.running and not self.lifecycle.asked_to_exit:
            self.lifecycle.asked_to_exit = True
            self.worker.signal(signal.SIGUSR1)

    def _CheckpointWorker(self, a: A.CheckpointWorker) -> None:
        self.worker.signal(signal.SIGUSR2)
        self.log.info("worker.checkpoint_requested", reason=a.reason)

    def _StopWorker(self, a: A.StopWorker) -> None:
        self.lifecycle.hold_worker(HoldKind.HALT, a.reason)
        self._ask_to_exit()

    def _PauseWorker(self, a: A.PauseWorker) -> None:
        if self.lifecycle.hold_worker(HoldKind.PAUSE, a.reason):
            self._ask_to_exit()

    def _ReleaseWorker(self, _: A.ReleaseWorker) -> None:
        self.lifecycle.release(self.clock.monotonic())

    def _SpotInterrupted(self, a: A.SpotInterrupted) -> None:
        self.lifecycle.hold_worker(HoldKind.SPOT, "Spot interruption")
        self.log.warning("spot.interruption", deadline=a.deadline, step=self._checkpoint_step())
        self._ask_to_exit()

    def _KillWorker(self, a: A.KillWorker) -> None:
        pid = self.worker.pid
        if pid is None or not self.worker.running:
            return
        self.log.error("worker.hung", pid=pid, reason=a.reason, note="dumping its stack, then SIGKILL")
        self._dump_stack(pid)
        self.lifecycle.kill_reason = a.reason
        self.worker.signal(signal.SIGKILL)

    def _dump_stack(self, pid: int) -> None:
        """py-spy's dump when installed (it reads a stopped process too); else SIGQUIT, which the
        worker's faulthandler answers with every thread's stack on stderr (the journal)."""
        spy = shutil.which("py-spy")
        if spy:
            try:
                out = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True,
                                     timeout=DUMP_TIMEOUT_S, stdin=subprocess.DEVNULL)
                self.log.error("worker.stack", pid=pid, tool="py-spy", stack=(out.stdout or out.stderr)[-8000:])
                return
            except (OSError, subprocess.TimeoutExpired) as e:
                self.log.warning("worker.stack_failed", tool="py-spy", error=str(e))
        self.worker.signal(signal.SIGQUIT)
        time.sleep(0.5)

    def stop_now(self, timeout: float):
        """systemctl stop: SIGTERM (the worker checkpoints), SIGKILL after `timeout`. Returns its exit."""
        self.worker.signal(signal.SIGTERM)
        self.log.info("worker.stop_requested", pid=self.worker.pid, timeout_s=timeout)
        ended = self.worker.wait(timeout)
        if ended is None:
            self.log.error("worker.stop_timeout", pid=self.worker.pid, timeout_s=timeout,
                           note="sending SIGKILL; work since the last checkpoint is lost")
            self.worker.signal(signal.SIGKILL)
            ended = self.worker.wait(30)
        return ended

    # -- the world -----------------------------------------------------------------------------
    def _SendAlert(self, a: A.SendAlert) -> None:
        self.outbox.send(a.kind, a.subject, a.body, once=a.once, attachments=a.attachments,
                         attachments_at=a.attachments_at)

    def _Shutdown(self, a: A.Shutdown) -> None:
        if self.shutdown.begin(a.action, a.reason, self.clock.monotonic()):
            self.lifecycle.hold_worker(HoldKind.HALT, a.reason)
            self._ask_to_exit()

    def _Upload(self, a: A.Upload) -> None:
        self.mirror.upload_after(a.min_step, a.why)
