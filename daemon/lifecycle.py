"""The run's lifecycle: its phase, the transitions allowed between phases, and why the worker is
held. One place decides what a worker exit means; daemon/executor.py carries it out.

    STARTING -> RUNNING -> (BACKOFF | STARTING) -> RUNNING ...      crash, restart (daemon/rules/restart.py)
    RUNNING -> PAUSED -> STARTING -> RUNNING                        the milestone needs the GPU
    RUNNING -> STOPPING -> HALTED                                   a rule stops the run (budget, idle, NO-GO)
    RUNNING -> HALTED                                               Spot interruption: AWS acts, we upload
    RUNNING -> COMPLETED | FAILED                                   the worker finished, or we gave up
    any live phase -> STOPPING -> STOPPED                           systemctl stop

A transition not in ALLOWED is a bug: it is logged at error level and refused.

Every phase that stops the worker for good is told: a rule's halt, a Spot interruption and a
completion by their own alerts, FAILED by `gave_up` here (once per failure, restarts included).
"""
from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from .actions import SendAlert
from .common.config import SupervisorConfig
from .rules.restart import RestartHistory, WorkerExit, decide
from .states import Phase, log_transition

P = Phase
_LIVE = frozenset({P.STARTING, P.RUNNING, P.BACKOFF, P.PAUSED})
ALLOWED: dict[Phase, frozenset[Phase]] = {
    P.STARTING: frozenset({P.RUNNING, P.PAUSED, P.STOPPING, P.STOPPED, P.HALTED, P.FAILED, P.COMPLETED}),
    P.RUNNING: frozenset({P.STARTING, P.BACKOFF, P.PAUSED, P.STOPPING, P.STOPPED, P.HALTED, P.FAILED,
                          P.COMPLETED}),
    P.BACKOFF: frozenset({P.RUNNING, P.STARTING, P.PAUSED, P.STOPPING, P.STOPPED, P.HALTED}),
    P.PAUSED: frozenset({P.STARTING, P.RUNNING, P.STOPPING, P.STOPPED, P.HALTED, P.COMPLETED}),
    P.STOPPING: frozenset({P.STOPPED, P.HALTED, P.COMPLETED, P.FAILED}),
    # Terminal for this daemon's life; the next start begins again at STARTING.
    P.STOPPED: frozenset(), P.FAILED: frozenset(), P.HALTED: frozenset(), P.COMPLETED: frozenset(),
}
assert all(p in ALLOWED for p in Phase)


class HoldKind(str, enum.Enum):
    PAUSE = "pause"   # until released (milestone evaluation)
    HALT = "halt"     # for good: a rule stopped the run
    SPOT = "spot"     # for good on this instance: AWS takes it back


@dataclass(frozen=True)
class Hold:
    kind: HoldKind
    reason: str


Outcome = Literal["complete", "fail", "restart", "held"]
RESTART = "systemctl restart amapiano-train"


def way_on(ended: WorkerExit) -> str:
    """What a person does about a FAILED run, by how the worker ended."""
    if ended.kind == "config":
        return f"fix the config or data file it names (`amapiano-train config check FILE`), then: {RESTART}"
    if ended.kind == "does_not_fit":
        return f"take a GPU with more memory, or a smaller model or batch (`amapiano-train plan`), then: {RESTART}"
    return f"read why in the journal (`journalctl -u amapiano-train -p err`), fix the cause, then: {RESTART}"


def failure_alert(reason: str, ended: WorkerExit, checkpoint_step: int | None) -> SendAlert:
    """FAILED, told. Its key is the reason at this checkpoint: after a daemon restart with nothing
    fixed the worker fails the same way and nobody is told twice; a failure after progress is new."""
    said = f"The worker said: {ended.message}\n" if ended.message and ended.message not in reason else ""
    kept = "no checkpoint yet" if checkpoint_step is None else f"the checkpoint of step {checkpoint_step} is kept"
    body = (f"The run FAILED: {reason}\n{said}\nThe way on: {way_on(ended)}.\nThe worker is not started again ({kept}). "
            "The supervisor stays up, and so does the instance: it bills until the idle rule or the budget cap "
            "stops it, or you do.")
    key = hashlib.sha256(f"{checkpoint_step}|{reason}".encode()).hexdigest()[:16]
    short = reason if len(reason) <= 100 else reason[:99] + "…"
    return SendAlert("failed", f"run FAILED: {short}", body, once=f"failed:{key}")


class Lifecycle:
    def __init__(self, log: Any, now_iso: Any, cfg: SupervisorConfig, checkpoint_step: int | None,
                 restarts: int = 0, phase: Phase = P.STARTING):
        self.log, self._now_iso, self.cfg = log, now_iso, cfg
        self.phase, self.since = phase, now_iso()
        self.hold: Hold | None = None
        self.next_start: float | None = None   # monotonic time of the next (re)start
        self.asked_to_exit = False             # SIGUSR1 sent to the running worker
        self.kill_reason: str | None = None    # why we SIGKILLed it (a hang), for its exit line
        self.history = RestartHistory(checkpoint_step=checkpoint_step)
        self.refused = 0
        self.launches, self.restarts = 0, restarts

    # -- transitions ------------------------------------------------------------------------
    def to(self, new: Phase, **why: Any) -> bool:
        if new is self.phase:
            return True
        if new not in ALLOWED[self.phase]:
            self.refused += 1
            self.log.error("lifecycle.refused", old=self.phase.value, new=new.value,
                           summary=f"transition {self.phase.value} -> {new.value} is not allowed", **why)
            return False
        log_transition(self.log, self.phase, new, **why)
        self.phase, self.since = new, self._now_iso()
        return True

    @property
    def live(self) -> bool:
        return self.phase in _LIVE

    # -- holds --------------------------------------------------------------------------------
    def hold_worker(self, kind: HoldKind, reason: str) -> bool:
        """No (re)start from now on; a halt or Spot hold outranks a pause. True if it changed."""
        if self.hold is not None and (self.hold.kind is not HoldKind.PAUSE or kind is HoldKind.PAUSE):
            return False
        self.hold, self.next_start = Hold(kind, reason), None
        self.log.info("worker.held", reason=reason, kind=kind.value)
        return True

    def release(self, now: float) -> bool:
        if self.hold is None or self.hold.kind is not HoldKind.PAUSE:
            return False
        self.hold, self.next_start = None, now
        self.log.info("worker.released")
        if self.phase is P.PAUSED:
            self.to(P.STARTING, released=True)
        return True

    def may_start(self, now: float) -> bool:
        return (self.next_start is not None and now >= self.next_start and self.hold is None and self.live)

    def started(self, pid: int, from_step: int | None) -> None:
        self.next_start, self.asked_to_exit, self.kill_reason = None, False, None
        self.to(P.RUNNING, pid=pid, from_step=from_step)

    # -- what an exit means --------------------------------------------------------------------
    def worker_exited(self, ended: WorkerExit, step: int | None, now: float, jitter: float) -> tuple[Outcome, str]:
        """Decide and transition; returns (outcome, reason). The caller acts on "complete"."""
        if self.hold is not None:
            if ended.kind == "completed":
                self.to(P.COMPLETED, exit=ended.code)
                return "complete", "all epochs done"
            if self.hold.kind is HoldKind.PAUSE:
                self.to(P.PAUSED, reason=self.hold.reason)
            elif self.hold.kind is HoldKind.SPOT:
                self.to(P.HALTED, reason=self.hold.reason)
            else:
                self.to(P.STOPPING, reason=self.hold.reason)
            return "held", self.hold.reason
        decision, self.history = decide(self.history, ended, step, now, self.cfg, jitter)
        if decision.action == "complete":
            self.to(P.COMPLETED, exit=ended.code)
            return "complete", decision.reason
        if decision.action == "fail":
            self.to(P.FAILED, exit=ended.code, reason=decision.reason)
            return "fail", decision.reason
        self.next_start = now + decision.delay
        self.to(P.BACKOFF if decision.delay > 0 else P.STARTING, exit=ended.code, kind=ended.kind,
                restart_in_s=round(decision.delay, 1), failures_in_a_row=self.history.consecutive_failures)
        return "restart", decision.reason

    def gave_up(self, reason: str, ended: WorkerExit, checkpoint_step: int | None) -> list[SendAlert]:
        """After a "fail": said at error level (journalctl -p err), and the alert that tells it."""
        self.log.error("worker.gave_up", reason=reason, hint=way_on(ended))
        return [failure_alert(reason, ended, checkpoint_step)]

    def halted(self, reason: str) -> None:
        """A rule's shutdown was carried out (or skipped): HALTED unless the run already ended."""
        if not self.phase.is_terminal():
            self.to(P.HALTED, reason=reason)

    def stopping_for_good(self) -> None:
        """systemctl stop: the daemon is going away."""
        if not self.phase.is_terminal():
            self.to(P.STOPPING)

    def stopped(self, completed: bool, **why: Any) -> None:
        if self.phase.is_terminal():
            return
        if completed:
            self.to(P.COMPLETED, **why)
        else:
            self.to(P.STOPPED, **why)
