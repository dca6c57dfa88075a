"""When a cluster watcher ends its SkyPilot job, and with which exit status. Pure.

    decide(snapshot) -> JobEnd | None

On one instance the supervisor restarts the worker and stops the machine itself. On a cluster
SkyPilot does both, and reads one thing from us: the job's exit status (the head node's: the
other nodes' run scripts exit 0 and leave it to the watcher, scripts/skypilot/amapiano-train.yaml).

- A rule stopped the group (budget cap, idle, a NO-GO) or training completed: exit 0. The job
  SUCCEEDED, job_recovery does not run it again, and autostop (or the jobs controller) takes the
  nodes down.
- The group stalled (the liveness rule killed it), stopped without our asking (a SIGTERM from
  SkyPilot or the machine), backed off after a CUDA OOM, or a Spot notice came: exit 75, which
  the task lists in `job_recovery.recover_on_exit_codes`, so SkyPilot recovers it every time,
  from the newest checkpoint. The ledger lives on the bucket: the budget cap bounds the retries.
- A crash: exit 1, retried `max_restarts_on_errors` times.
- FAILED (a bad config or data file): 78 or 65; a retry cannot fix it, but only a person can
  tell SkyPilot not to try (max_restarts_on_errors still counts it).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..common import exits
from ..states import Phase

RECOVER = exits.PREEMPTED   # scripts/skypilot/amapiano-train.yaml: job_recovery.recover_on_exit_codes
RECOVERED_KINDS = ("preempted", "oom_backoff")


@dataclass(frozen=True)
class JobSnapshot:
    group_running: bool            # SkyPilot's group (torchrun) is alive on this node
    adopted: bool                  # we have seen it at least once
    waited_s: float                # since the watcher started, while no group was seen
    adopt_limit_s: float           # how long a run script may take to start it
    busy: bool                     # an evaluation, the completion or a shutdown is under way
    halted: bool                   # a rule's shutdown (or the completion's) was carried out
    halt_reason: str | None
    phase: Phase
    exit_kind: str | None          # the group's last exit, as the restart rule names it
    exit_code: int | None
    killed: str | None             # why the liveness rule killed the group, if it did
    unwatched_exit: int | None = None  # the status of a group that ended before we adopted it (None: signal)
    unwatched: bool = False        # such a group's status is in the pid file


@dataclass(frozen=True)
class JobEnd:
    code: int
    reason: str


def decide(s: JobSnapshot) -> JobEnd | None:
    if s.group_running:
        return None
    if s.halted:  # before busy: a cap reached while the milestone evaluates must not bill on for it
        return JobEnd(exits.OK, f"{s.halt_reason or 'stopped by a rule'}: the group checkpointed and stopped")
    if s.busy:
        return None
    if not s.adopted:
        if s.unwatched:
            return _unwatched(s.unwatched_exit)
        if s.waited_s > s.adopt_limit_s:
            return JobEnd(exits.FAILED, f"no training group appeared on this node in {s.waited_s:.0f} s")
        return None
    if s.phase is Phase.COMPLETED:
        return JobEnd(exits.OK, "training completed")
    if s.phase is Phase.FAILED:
        code = s.exit_code if s.exit_code in (exits.CONFIG, exits.DATAERR) else exits.FAILED
        return JobEnd(code, "the run FAILED: a retry cannot fix it (state.json's failure says why)")
    if s.phase is Phase.HALTED:
        return JobEnd(RECOVER, "Spot interruption: the group checkpointed; SkyPilot recovers the job")
    if s.phase is Phase.STOPPING:
        return None  # a rule's stop: its shutdown stages end it (halted)
    if s.killed:
        return JobEnd(RECOVER, f"the group stalled ({s.killed}); ended so that SkyPilot's recovery restarts it")
    if s.exit_kind in RECOVERED_KINDS:
        return JobEnd(RECOVER, f"the group stopped without our asking ({s.exit_kind}); SkyPilot recovers the job")
    return JobEnd(exits.FAILED, f"the group crashed ({s.exit_kind}, exit {s.exit_code}); "
                                "SkyPilot retries it max_restarts_on_errors times")


def _unwatched(code: int | None) -> JobEnd:
    """The group ended before the watcher was up to adopt it: waiting loading_timeout for it would
    bill every node for nothing. Its own status says what SkyPilot should do."""
    said = f"the group ended (exit {code if code is not None else 'by a signal'}) before the watcher adopted it"
    if code == exits.OK:
        return JobEnd(exits.OK, f"{said}: training completed")
    if code in (exits.CONFIG, exits.DATAERR):
        return JobEnd(code, f"{said}: its config or data is unusable, a retry cannot fix it")
    if code == exits.PREEMPTED:
        return JobEnd(RECOVER, f"{said}: it stopped without our asking; SkyPilot recovers the job")
    return JobEnd(exits.FAILED, f"{said}: a crash; SkyPilot retries it max_restarts_on_errors times")
