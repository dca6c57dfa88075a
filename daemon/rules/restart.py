"""What to do when the worker exits: a pure policy over plain data.

    decide(history, exit, checkpoint_step, now, cfg, jitter) -> (Decision, RestartHistory)

Restart with exponential backoff and jitter while training makes progress; give up (FAILED)
after `max_restarts_without_progress` restarts in which the newest checkpoint did not advance,
or after `max_crashes` crashes within `crash_window`. A preemption exit (the worker
checkpointed on request) is not a failure; a config error (78) fails at once.

CUDA out of memory comes in three kinds. One worker process answers an OOM in training itself
(it halves the micro-batch, doubles the accumulation and goes on: the supervisor sees only the
heartbeat's `oom_backoffs`). A process group cannot (daemon/common/oom.py): the rank records the
group's smaller micro-batch and exits, and the group is restarted at once, no failure counted,
as long as each such restart is at a smaller micro-batch than the last. When nothing is left to
halve the worker exits with `DoesNotFit`: the model does not fit this GPU, a restart would fail
the same way, so it fails at once. Any other OOM (outside a training step) is a crash.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ..common.config import SupervisorConfig
from ..common import exits


DOES_NOT_FIT = "DoesNotFit"  # trainer/worker/setup.py's exception: OOM at the smallest micro-batch
OOM_BACKOFF = "OomBackOff"   # a process group's back-off, recorded by the rank that ran out (common/oom.py)
MAX_BACKOFF_RESTARTS = 16    # halving from any real micro-batch reaches 1 long before


@dataclass(frozen=True)
class WorkerExit:
    """How the worker ended: exit code or signal, plus its failure file if it wrote one."""

    code: int | None            # exit status, or None when killed by a signal
    signal: str | None = None   # "SIGKILL", ...
    error_type: str | None = None
    message: str | None = None
    micro_batch: int | None = None  # a group back-off's next micro-batch

    @property
    def kind(self) -> Literal["completed", "preempted", "config", "killed", "does_not_fit", "oom_backoff", "oom",
                              "crash"]:
        if self.code == exits.OK:
            return "completed"
        if self.code == exits.PREEMPTED:
            return "preempted"
        if self.code in (exits.CONFIG, exits.DATAERR):
            return "config"
        if self.error_type == DOES_NOT_FIT:
            return "does_not_fit"
        if self.error_type == OOM_BACKOFF and type(self.micro_batch) is int and self.micro_batch >= 1:
            return "oom_backoff"
        text = f"{self.error_type or ''} {self.message or ''}".lower()
        if "out of memory" in text or "outofmemory" in text:
            return "oom"
        if self.signal is not None:
            return "killed"
        return "crash"

    def describe(self) -> str:
        how = f"signal={self.signal}" if self.signal else f"exit={self.code}"
        what = f" {self.error_type}: {self.message}" if self.error_type else ""
        return f"{self.kind} ({how}){what}"


@dataclass(frozen=True)
class RestartHistory:
    """The policy's memory. crash_times are monotonic seconds."""

    crash_times: tuple[float, ...] = ()
    consecutive_failures: int = 0
    restarts_without_progress: int = 0
    checkpoint_step: int | None = None
    backoff_micro: int | None = None  # the smallest micro-batch a group back-off has restarted at
    backoff_restarts: int = 0         # free restarts for group back-offs (each halves: few in a real run)
    idle_preemptions: int = 0         # exits 75 in a row without checkpoint progress


@dataclass(frozen=True)
class Decision:
    action: Literal["restart", "fail", "complete"]
    delay: float = 0.0
    reason: str = ""


def backoff_delay(failures: int, cfg: SupervisorConfig, jitter: float) -> float:
    """initial * 2^(failures-1), capped, times (1 ± restart_jitter); jitter is in [0, 1)."""
    base = min(cfg.restart_backoff_max, cfg.restart_backoff_initial * 2.0 ** min(max(failures - 1, 0), 60))
    return base * (1 + cfg.restart_jitter * (2 * jitter - 1))


def decide(history: RestartHistory, exit: WorkerExit, checkpoint_step: int | None, now: float,
           cfg: SupervisorConfig, jitter: float) -> tuple[Decision, RestartHistory]:
    kind = exit.kind
    if kind == "completed":
        return Decision("complete", reason="all epochs done"), history
    if kind == "config":
        return Decision("fail", reason=f"worker rejected its config or data: {exit.message or exit.describe()}"), history
    if kind == "does_not_fit":
        return Decision("fail", reason=f"the model does not fit this GPU even at micro-batch 1: {exit.message}"), history

    progressed = checkpoint_step is not None and (history.checkpoint_step is None
                                                  or checkpoint_step > history.checkpoint_step)
    if (kind == "oom_backoff" and history.backoff_restarts < MAX_BACKOFF_RESTARTS
            and (history.backoff_micro is None or exit.micro_batch < history.backoff_micro)):
        # Agreed by the group through this restart; each one at least halves the micro-batch, so
        # there are few. The same or a larger micro-batch again is a crash like any other.
        return Decision("restart", reason=f"a rank ran out of GPU memory: the group restarts at micro-batch "
                                          f"{exit.micro_batch}"), replace(
            history, backoff_micro=exit.micro_batch, backoff_restarts=history.backoff_restarts + 1)
    if kind == "preempted":
        # It checkpointed on request: come back at once, and it is no failure. Exits 75 in a row
        # with no new checkpoint (nobody asked, or something keeps asking) back off like crashes.
        idle = 0 if progressed else history.idle_preemptions + 1
        delay = backoff_delay(idle - 1, cfg, jitter) if idle > 1 else 0.0
        return Decision("restart", delay=delay, reason="worker checkpointed on request"), replace(
            history, checkpoint_step=checkpoint_step if progressed else history.checkpoint_step, idle_preemptions=idle)

    recent = tuple(t for t in history.crash_times if now - t < cfg.crash_window) + (now,)
    if progressed:
        history = replace(history, consecutive_failures=0, restarts_without_progress=0,
                          checkpoint_step=checkpoint_step)
    history = replace(history, crash_times=recent,
                      consecutive_failures=history.consecutive_failures + 1,
                      restarts_without_progress=history.restarts_without_progress + (0 if progressed else 1))

    if len(recent) >= cfg.max_crashes:
        return Decision("fail", reason=(f"{len(recent)} crashes within {cfg.crash_window:g}s "
                                        f"(last: {exit.describe()})")), history
    if history.restarts_without_progress >= cfg.max_restarts_without_progress:
        at = "no checkpoint yet" if history.checkpoint_step is None else f"stuck at step {history.checkpoint_step}"
        return Decision("fail", reason=(f"{history.restarts_without_progress} restarts without checkpoint "
                                        f"progress ({at}; last: {exit.describe()})")), history
    delay = backoff_delay(history.consecutive_failures, cfg, jitter)
    return Decision("restart", delay=delay, reason=exit.describe()), history
