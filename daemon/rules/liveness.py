"""The liveness rule: a worker whose heartbeat is older than its activity's deadline is hung. Pure.

    decide(snapshot, allowances, memory) -> (kill_reason | None, memory)

A frozen worker (SIGSTOP, a deadlocked data loader, a hung CUDA call) still "runs" as a process
and its last heartbeat may say "validating" forever; it is never busy, it is dead. Each activity
has an allowance from the config; loading, validation and checkpointing grow to three times the
longest such span this run has measured, so a slow disk is not mistaken for a hang. A heartbeat
from an earlier worker (another pid) counts as "loading" since this worker started.

Checkpoints are written in the background (trainer/worker/async_save.py): the loop waits on a
write only at the next save, a stop or the end, with its heartbeat on "checkpointing", "stopped"
or "completed" and unwritten until the write commits. The heartbeat's `checkpoint_write_s` (the
longest write the worker has measured) allows those activities WRITE_FACTOR times that: a 5 GB
write on EBS gp3 takes ~40 s, and a disk that slows down (burst credits spent) can take several
times its last figure. The longest figure any worker reported is kept, so a restarted worker's
first wait on the same disk is allowed it too; a figure past MAX_WRITE_S is not believed beyond
it, so no heartbeat can make a frozen worker immortal.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

LEARNED = ("loading", "validating", "checkpointing")
LEARN_FACTOR = 3.0
WAITING_ON_WRITE = ("checkpointing", "completed", "stopped")
WRITE_FACTOR = 6.0
MAX_WRITE_S = 3600.0  # 40 GB (MusicGen-large with AdamW) at 125 MB/s is ~330 s


@dataclass(frozen=True)
class Allowances:
    training: float
    loading: float
    validating: float
    checkpointing: float

    @classmethod
    def of(cls, s: Any) -> "Allowances":
        """From the config's [supervisor] section."""
        return cls(s.heartbeat_timeout, s.loading_timeout, s.validation_timeout, s.checkpoint_timeout)

    def base(self, activity: str | None) -> float:
        if activity in ("validating",):
            return self.validating
        if activity in ("checkpointing", "completed", "stopped"):
            return self.checkpointing
        if activity in (None, "loading"):
            return self.loading
        return self.training


@dataclass(frozen=True)
class LivenessSnapshot:
    now_s: float                   # seconds on one clock with the two below (the supervisor's monotonic one)
    worker_pid: int | None         # None: no worker running
    worker_started_s: float | None
    beat_pid: int | None
    beat_activity: str | None
    beat_written_s: float | None   # when the heartbeat was written (heartbeat.Observed)
    checkpoint_write_s: float | None = None   # the heartbeat's longest background write


@dataclass(frozen=True)
class LivenessMemory:
    longest: dict[str, float] = field(default_factory=dict)   # activity -> longest span measured
    current: tuple[int, str, float] | None = None             # (pid, activity, since)
    write_s: float = 0.0                                      # the longest checkpoint write reported


def deadline(activity: str | None, allow: Allowances, memory: LivenessMemory) -> float:
    learned = LEARN_FACTOR * memory.longest.get(activity or "loading", 0.0)
    writes = WRITE_FACTOR * memory.write_s if activity in WAITING_ON_WRITE else 0.0
    return max(allow.base(activity), learned, writes)


def _written(s: LivenessSnapshot, memory: LivenessMemory) -> LivenessMemory:
    """Keep the longest write any worker reported (capped): the disk outlives the worker."""
    w = s.checkpoint_write_s
    if w is None or not w > 0.0:  # unknown, or nonsense (NaN, negative): nothing learned
        return memory
    return replace(memory, write_s=max(memory.write_s, min(w, MAX_WRITE_S)))


def _observe(s: LivenessSnapshot, activity: str, memory: LivenessMemory) -> LivenessMemory:
    """Record how long the previous activity lasted, when the activity changes."""
    cur = memory.current
    if cur is not None and cur[0] == s.worker_pid and cur[1] == activity:
        return memory
    longest = dict(memory.longest)
    if cur is not None and cur[0] == s.worker_pid and cur[1] in LEARNED:
        longest[cur[1]] = max(longest.get(cur[1], 0.0), s.now_s - cur[2])
    return replace(memory, longest=longest, current=(s.worker_pid, activity, s.now_s) if s.worker_pid is not None
                   else None)


def decide(s: LivenessSnapshot, allow: Allowances, memory: LivenessMemory) -> tuple[str | None, LivenessMemory]:
    if s.worker_pid is None or s.worker_started_s is None:
        return None, replace(memory, current=None)
    ours = s.beat_pid == s.worker_pid and s.beat_written_s is not None and s.beat_written_s >= s.worker_started_s - 1
    activity = s.beat_activity if ours else "loading"
    since = s.beat_written_s if ours else s.worker_started_s
    memory = _observe(s, activity or "loading", _written(s, memory))
    age, limit = s.now_s - since, deadline(activity, allow, memory)
    if age > limit:
        return (f"hung: no heartbeat for {age:.0f} s while {activity or 'loading'} "
                f"(deadline {limit:.0f} s)"), memory
    return None, memory


def is_fresh(s: LivenessSnapshot, allow: Allowances, memory: LivenessMemory) -> bool:
    """The heartbeat is this worker's and within its deadline: its activity can be believed."""
    if s.worker_pid is None or s.beat_pid != s.worker_pid or s.beat_written_s is None:
        return False
    return s.now_s - s.beat_written_s <= deadline(s.beat_activity, allow, memory)


def snapshot(now_s: float, worker_pid: int | None, worker_started_s: float | None, beat: Any,
             written_s: float | None = None) -> LivenessSnapshot:
    """From the heartbeat as daemon/heartbeat.py read it (or None); `written_s` dates it on the
    clock of `now_s` (the supervisor's monotonic one), else its mtime does."""
    f = beat.fields if beat else {}
    written = written_s if written_s is not None else (beat.written_s if beat else None)
    return LivenessSnapshot(now_s, worker_pid, worker_started_s, f.get("pid"), f.get("activity"),
                            written, f.get("checkpoint_write_s"))
