"""The states a person sees, and the one way a transition is logged. Stdlib only."""
from __future__ import annotations

import enum
from typing import Any


class Phase(str, enum.Enum):
    """Phase of the run, as written to state.json and shown by `amapiano-train status`."""

    STARTING = "STARTING"    # supervisor up, worker not yet launched
    RUNNING = "RUNNING"      # worker alive and training
    BACKOFF = "BACKOFF"      # worker died; waiting before the next restart
    PAUSED = "PAUSED"        # worker checkpointed and stopped for the milestone evaluation; resumes after
    STOPPING = "STOPPING"    # asked to stop; worker is checkpointing
    STOPPED = "STOPPED"      # stopped on request; resumes on the next start
    FAILED = "FAILED"        # gave up restarting; a person must look (state.json says why)
    HALTED = "HALTED"        # stopped by a rule (budget cap, idle, Spot interruption); `shutdown` says why
    COMPLETED = "COMPLETED"  # all epochs done

    def is_terminal(self) -> bool:
        return self in (Phase.STOPPED, Phase.FAILED, Phase.HALTED, Phase.COMPLETED)


def log_transition(log: Any, old: Phase, new: Phase, **why: Any) -> None:
    """One line per transition: `worker RUNNING -> BACKOFF exit=137 ...`."""
    if old is new:
        return
    level = "error" if new is Phase.FAILED else "warning" if new in (Phase.BACKOFF, Phase.HALTED) else "info"
    detail = " ".join(f"{k}={v}" for k, v in why.items() if v is not None)
    getattr(log, level)("phase.changed", old=old.value, new=new.value,
                        summary=f"worker {old.value} -> {new.value} {detail}".strip(), **why)
