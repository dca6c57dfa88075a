"""The idle rule: no training progress and no busy GPU for `[idle] timeout` stops the instance.

    decide(timer, snapshot, cfg) -> (timer, actions)

Idle means no step progress AND (with GPU metrics) no reading at or over the threshold, for
the whole window; a worker that says it is loading, validating or checkpointing is busy. An
unknown GPU reading proves nothing either way. The warning email goes out `warn_before` the
deadline, and the shutdown never comes sooner than `warn_before` after the warning (a daemon
that was down past the deadline warns first, then waits). `amapiano-train hold` pushes the
deadline out; any activity cancels a warned shutdown.

The timer is plain data in CLOCK_BOOTTIME seconds with the boot id: after a reboot its
readings mean nothing, so it starts afresh.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ..actions import Action, SendAlert, Shutdown
from ..common.atomic import read_json
from ..common.clock import iso, parse_iso

BUSY_ACTIVITIES = frozenset({"loading", "validating", "checkpointing", "evaluating"})


@dataclass(frozen=True)
class IdleTimer:
    boot_id: str
    last_active_s: float             # boottime of the last sign of activity
    last_step: int | None = None
    warned_at_s: float | None = None
    warned_deadline_s: float | None = None


@dataclass(frozen=True)
class IdleSnapshot:
    boot_id: str
    now_s: float                     # CLOCK_BOOTTIME
    step: int | None                 # the worker's last reported step
    activity: str | None
    worker_running: bool
    gpu_busy: bool | None            # since the last check; None: no known reading
    hold_until_s: float | None       # from `amapiano-train hold`, in boottime seconds


@dataclass(frozen=True)
class IdleRule:
    timeout_s: float
    warn_before_s: float
    action: str
    ending: str = "instance will be stopped"   # on a cluster: the SkyPilot job ends


def deadline(timer: IdleTimer, snap: IdleSnapshot, rule: IdleRule) -> float:
    return max(timer.last_active_s + rule.timeout_s, snap.hold_until_s or 0.0)


def shutdown_at(timer: IdleTimer, snap: IdleSnapshot, rule: IdleRule) -> float:
    """The deadline, but never sooner than warn_before after the warning went out."""
    due = deadline(timer, snap, rule)
    if timer.warned_at_s is not None:
        due = max(due, timer.warned_at_s + rule.warn_before_s)
    return due


def _minutes(seconds: float) -> str:
    """A duration for an email subject: "15 min", "1 h 45 min"; seconds below two minutes."""
    if seconds < 120:
        return f"{max(0, round(seconds))} s"
    m = round(seconds / 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def decide(timer: IdleTimer | None, snap: IdleSnapshot, rule: IdleRule) -> tuple[IdleTimer, list[Action]]:
    if timer is None or timer.boot_id != snap.boot_id:
        return IdleTimer(snap.boot_id, snap.now_s, snap.step), []
    progressed = snap.step is not None and (timer.last_step is None or snap.step > timer.last_step)
    busy = snap.worker_running and snap.activity in BUSY_ACTIVITIES
    if progressed or busy or snap.gpu_busy is True:
        actions: list[Action] = []
        if timer.warned_at_s is not None:
            why = "training progressed" if progressed else "the worker is busy" if busy else "the GPU is busy"
            actions.append(SendAlert("idle", "idle shutdown cancelled", f"Activity came back ({why}); "
                                     "the idle shutdown is off until the next idle period."))
        return IdleTimer(snap.boot_id, snap.now_s, snap.step), actions

    timer = replace(timer, last_step=snap.step if snap.step is not None else timer.last_step)
    due = deadline(timer, snap, rule)
    if snap.now_s >= due - rule.warn_before_s and timer.warned_deadline_s != due:
        idle_for = snap.now_s - timer.last_active_s
        timer = replace(timer, warned_at_s=snap.now_s, warned_deadline_s=due)
        stop_in = shutdown_at(timer, snap, rule) - snap.now_s
        return timer, [SendAlert(
            "idle", f"idle shutdown in {_minutes(stop_in)}",
            f"Nothing has trained for {_minutes(idle_for)} (no step progress"
            f"{'' if snap.gpu_busy is None else ', GPU under the threshold'}). In {_minutes(stop_in)} the "
            f"{rule.ending} (action '{rule.action}').\n"
            "To postpone it: amapiano-train hold 2h   (any training activity also cancels it)")]
    if timer.warned_at_s is not None and snap.now_s >= shutdown_at(timer, snap, rule):
        return timer, [Shutdown(rule.action, f"idle for {_minutes(snap.now_s - timer.last_active_s)}")]
    return timer, []


# -- its memory and its page in state.json --------------------------------------------------------
def load_timer(section: dict | None) -> IdleTimer | None:
    """The timer kept in state.json's `idle` section; anything malformed starts a fresh one."""
    data = (section or {}).get("timer")
    if not isinstance(data, dict):
        return None
    try:
        timer = IdleTimer(**data)
    except TypeError:
        return None
    numbers = (timer.last_active_s, timer.warned_at_s, timer.warned_deadline_s)
    if not isinstance(timer.boot_id, str) or any(x is not None and not isinstance(x, (int, float)) for x in numbers):
        return None
    return timer


# A hold is for a person at work on the instance now; `hold 3650d` switched the idle rule off for
# ten years, and an idle GPU bills all the while. A week covers a long weekend. The command refuses
# more, and a hold file written by hand is read as at most this.
MAX_HOLD_S = 7 * 86400.0


def hold_until_s(hold_file: Path, now_s: float, now: datetime) -> float | None:
    """`amapiano-train hold`'s deadline in boottime seconds, at most MAX_HOLD_S after the hold file
    was written (its mtime: a cap counted from each tick would move with the clock and never end);
    a garbage hold file, or an `until` without a time zone, is no hold."""
    hold = read_json(hold_file)
    if not hold or not isinstance(hold.get("until"), str):
        return None
    try:
        until = parse_iso(hold["until"])
        written = datetime.fromtimestamp(hold_file.stat().st_mtime, timezone.utc)
        left = min((until - now).total_seconds(), (written - now).total_seconds() + MAX_HOLD_S)
    except (ValueError, OverflowError, TypeError, OSError):  # TypeError: a time without a zone
        return None
    return now_s + left


def describe(timer: IdleTimer, snap: IdleSnapshot, rule: IdleRule, now: datetime) -> dict:
    """The idle section of state.json, as of this check (wall times for people)."""
    def wall(s: float | None) -> str | None:
        return None if s is None else iso(now + timedelta(seconds=s - snap.now_s))

    return {"timer": asdict(timer), "last_active_at": wall(timer.last_active_s),
            "idle_for_s": round(max(0.0, snap.now_s - timer.last_active_s), 1),
            "timeout_s": rule.timeout_s, "action": rule.action, "warned_at": wall(timer.warned_at_s),
            "checked_at": iso(now), "gpu_busy": snap.gpu_busy, "hold_until": wall(snap.hold_until_s),
            "shutdown_due_at": wall(shutdown_at(timer, snap, rule))}
