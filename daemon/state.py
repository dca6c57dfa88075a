"""state.json: the one file a person reads (`jq`, `amapiano-train status`).

One schema, read and written here alone, atomically, by the supervisor only. Sections that a
newer issue adds (cost, gpu, idle, ...) and this version does not know are kept as they are,
so an older binary never drops them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .common.atomic import loads, read_bytes, write_json_atomic
from .common.clock import is_utc_time, iso
from .states import Phase

SCHEMA_VERSION = 1
MAX_BYTES = 16 * 1024 * 1024
MAX_EXTRA_BYTES = 64 * 1024
MOVE_ASIDE = ("move it aside (mv state.json state.json.bad) and start again: the run (its id, spend, milestone "
              "date and budget alerts) is rebuilt from ledger.journal beside it")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


class StateError(Exception):
    """state.json cannot be used; the text names the file and the field."""


class NewerStateError(StateError):
    """Written by a newer amapiano-train: never moved aside or overwritten by this one."""


@dataclass
class TrainerState:
    pid: int | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    last_exit_reason: str | None = None
    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    best_val_loss: float | None = None
    lr: float | None = None
    samples_per_s: float | None = None
    activity: str | None = None
    last_checkpoint: str | None = None
    last_checkpoint_step: int | None = None
    resumed_from_step: int | None = None
    heartbeat_at: str | None = None
    micro_batch: int | None = None     # after any CUDA OOM back-off (the effective batch is unchanged)
    grad_accum: int | None = None
    oom_backoffs: int | None = None


@dataclass
class Failure:
    reason: str
    at: str
    exit_code: int | None = None
    message: str | None = None


@dataclass
class State:
    run_id: str
    started_at: str
    phase: str = Phase.STARTING.value
    phase_since: str | None = None
    updated_at: str | None = None
    schema_version: int = SCHEMA_VERSION
    trainer: TrainerState = field(default_factory=TrainerState)
    failure: Failure | None = None
    # Money and machine (issue 3); plain data owned by daemon/cost.py, gpu.py, idle.py, budget.py.
    cost: dict[str, Any] | None = None       # the ledger (daemon/cost.py) plus rate and forecast
    budget: dict[str, Any] | None = None     # cap, left, alerts fired
    gpu: dict[str, Any] | None = None        # NVML readings and rolling averages
    idle: dict[str, Any] | None = None       # the idle timer, deadline, hold
    spot: dict[str, Any] | None = None       # interruption / rebalance notices and the S3 upload
    shutdown: dict[str, Any] | None = None   # a shutdown the daemon carried out, and why
    milestone: dict[str, Any] | None = None  # due time, status, decision, report (daemon/evaluation.py)
    red_flags: dict[str, Any] | None = None  # raised flags and the validation-loss history (daemon/rules/red_flags.py)
    mirror: dict[str, Any] | None = None     # the S3 mirror: what is confirmed in the bucket (daemon/ports/mirror.py)
    instance: dict[str, Any] | None = None   # where we run and what stopping it can do (daemon/ports/instance.py)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # sections from newer code, kept verbatim

    @classmethod
    def new(cls, now: datetime) -> "State":
        return cls(run_id=uuid.uuid4().hex[:12], started_at=iso(now), phase_since=iso(now), updated_at=iso(now))

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        extra = data.pop("extra")
        ordered = {"schema_version": data.pop("schema_version"), "run_id": data.pop("run_id"),
                   "phase": data.pop("phase")}
        ordered.update(data)
        ordered.update({k: v for k, v in extra.items() if k not in ordered})
        return ordered


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _well_typed(cls: type, key: str, value: Any) -> bool:
    """A value of the declared type (None allowed where the default is None); finite numbers only."""
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    if value is None:
        return f.default is None
    hint = str(f.type)
    if "int" in hint and "float" not in hint:
        return isinstance(value, int) and not isinstance(value, bool)
    if "float" in hint:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if "str" in hint:
        return isinstance(value, str) and len(value) <= 4096
    return True


def _typed(cls: type, data: Any, where: str, path: Path) -> Any:
    """A section as its dataclass; an ill-typed optional field reads as unknown (its default)."""
    if not isinstance(data, dict):
        raise StateError(f"{path}: field '{where}' must be an object")
    known = {k: v for k, v in data.items() if k in _fields(cls) and _well_typed(cls, k, v)}
    try:
        return cls(**known)
    except TypeError as e:
        raise StateError(f"{path}: field '{where}' is incomplete ({e})") from None


TIME_KEYS = re.compile(r"(_at|_until|due_forecast)$")           # UTC ISO 8601 timestamps
NUMBER_KEYS = re.compile(r"_(usd|s|pct|h|w|c|mb|per_h|per_s)$")   # figures with a unit
STRING_LISTS = {"fired", "raised"}                                # alerts sent, flags raised
OBJECTS = {"forecast", "timer", "completion", "last", "interruption", "rebalance", "upload"}


def _clean(value: Any) -> Any:
    """A section with every field the daemon or `status` reads by kind checked: an ill-typed
    timestamp, figure, list or object reads as unknown (dropped), never a crash each tick."""
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, v in value.items():
        if v is None:
            out[key] = v
        elif TIME_KEYS.search(key):
            if is_utc_time(v):
                out[key] = v
        elif NUMBER_KEYS.search(key):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[key] = v
        elif key in STRING_LISTS:
            out[key] = [x for x in v if isinstance(x, str)] if isinstance(v, list) else []
        elif key in OBJECTS and not isinstance(v, dict):
            continue
        else:
            out[key] = _clean(v)
    return out


def load_state(path: Path) -> State | None:
    """The state file, or None when there is none yet. Raises StateError if unusable."""
    try:
        # Bounded, and never a FIFO or a device: a plain read blocked the supervisor before READY,
        # and `status`, on a FIFO planted here, and read /dev/zero until memory ran out.
        raw = read_bytes(path, MAX_BYTES)
    except FileNotFoundError:
        return None
    except OSError as e:
        why = e.strerror or str(e).removeprefix(f"{path}: ")
        raise StateError(f"{path}: cannot read ({why}); {MOVE_ASIDE}") from None
    return parse_state(raw, path)


def parse_state(raw: bytes, path: Path | str) -> State:
    """A state file's bytes (named `path` in messages) as a State; raises StateError if unusable.
    The bucket's copy is judged from its bytes: no temp file on a disk that may refuse one."""
    if len(raw) > MAX_BYTES:
        raise StateError(f"{path}: {len(raw)} bytes, more than a state file can be ({MAX_BYTES}); {MOVE_ASIDE}")
    try:
        data = loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise StateError(f"{path}: not UTF-8 text; {MOVE_ASIDE}") from None
    except (json.JSONDecodeError, ValueError) as e:
        raise StateError(f"{path}: not valid JSON ({getattr(e, 'msg', e)}); {MOVE_ASIDE}") from None
    if not isinstance(data, dict):
        raise StateError(f"{path}: must hold a JSON object")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StateError(f"{path}: field 'schema_version' is missing or not a positive integer; {MOVE_ASIDE}")
    if version > SCHEMA_VERSION:
        raise NewerStateError(f"{path}: field 'schema_version' is {version}, newer than this amapiano-train "
                         f"understands ({SCHEMA_VERSION}); upgrade amapiano-train")
    if not isinstance(data.get("run_id"), str) or not 0 < len(data["run_id"]) <= 64:
        raise StateError(f"{path}: field 'run_id' is missing or not a short string; {MOVE_ASIDE}")
    if not is_utc_time(data.get("started_at")):
        raise StateError(f"{path}: field 'started_at' is missing or not a UTC ISO 8601 time; {MOVE_ASIDE}")
    # The ledger (`cost`) checks itself strictly below: a figure of it dropped would be spend lost.
    data = {k: (v if k in ("run_id", "started_at", "alerts", "cost") or k not in _fields(State) else _clean(v))
            for k, v in data.items()}
    if isinstance(data.get("cost"), dict) and "forecast" in data["cost"]:
        data["cost"] = {**data["cost"], "forecast": _clean({"forecast": data["cost"]["forecast"]}).get("forecast")}
    for key in ("phase_since", "updated_at"):
        if not is_utc_time(data.get(key)):
            data[key] = None
    if data.get("phase") not in {p.value for p in Phase}:
        raise StateError(f"{path}: field 'phase' is {data.get('phase')!r}, not a known phase; {MOVE_ASIDE}")
    trainer = _typed(TrainerState, data.get("trainer") or {}, "trainer", path)
    for name in ("cost", "budget", "gpu", "idle", "spot", "shutdown", "milestone", "red_flags", "mirror", "instance"):
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise StateError(f"{path}: field '{name}' must be an object")
    if data.get("cost") is not None:
        from .cost import Ledger

        try:
            Ledger.from_json(data["cost"])
        except ValueError as e:
            raise StateError(f"{path}: field {e}; {MOVE_ASIDE}") from None
    alerts = data.get("alerts", [])
    if not isinstance(alerts, list) or not all(isinstance(a, dict) and isinstance(a.get("subject"), str)
                                               and isinstance(a.get("status"), str) for a in alerts):
        raise StateError(f"{path}: field 'alerts' must be a list of alert objects")
    failure = data.get("failure")
    failure = _typed(Failure, failure, "failure", path) if failure is not None else None
    top = {k: v for k, v in data.items() if k in _fields(State) and k not in ("trainer", "failure", "extra")}
    # Sections from newer code are kept verbatim, unless one is too large to rewrite every tick.
    extra = {k: v for k, v in data.items() if k not in _fields(State)
             and len(json.dumps(v, default=str)) <= MAX_EXTRA_BYTES}
    return State(**top, trainer=trainer, failure=failure, extra=extra)


def save_state(path: Path, state: State, now: datetime) -> None:
    state.updated_at = iso(now)
    write_json_atomic(path, state.to_json())


def open_run(path: Path, now: datetime, log: Any) -> State:
    """The run's state at a daemon start: the same run_id and started_at across restarts. With no
    state.json, the run is rebuilt from the journal beside it if there is one (a state file lost or
    moved aside), else a new run begins. Raises StateError if the file is unusable."""
    from . import journal

    journal_path = path.with_name(journal.NAME)
    try:
        state = load_state(path)
    except NewerStateError:
        raise
    except StateError as e:
        if journal.last(journal_path) is None:
            raise  # nothing to rebuild from: a person decides (exit 65, the file untouched)
        aside = path.with_name(f"{path.name}.bad.{now.strftime('%Y%m%dT%H%M%SZ')}")
        try:
            os.replace(path, aside)  # kept for a look; the run goes on from the journal
            log.error("state.moved_aside", error=str(e), moved_to=str(aside), note="rebuilding the run from the journal")
        except OSError as oe:  # a read-only or full disk: leave it; the next state write replaces it
            log.error("state.unreadable", error=str(e), move_aside_failed=str(oe),
                      note="rebuilding the run from the journal")
        state = None
    rec = journal.last(journal_path) if state is None else None
    if rec is not None:
        state = State(run_id=rec["run_id"], started_at=rec["started_at"], phase_since=iso(now))
        ledger = journal.ledger_of(rec)
        state.cost = ledger.to_json() if ledger else None
        state.budget = {"fired": [x for x in rec.get("budget_fired") or [] if isinstance(x, str)]}
        ms = _clean({k: v for k, v in (rec.get("milestone") or {}).items() if isinstance(v, str)})
        done = (rec.get("milestone") or {}).get("completion")
        if isinstance(done, dict) and isinstance(done.get("status"), str):
            ms["completion"] = {"status": done["status"]}
        state.milestone = ms or None
        log.warning("run.rebuilt_from_journal", state_file=str(path), summary=journal.describe(rec))
    elif state is None:
        state = State.new(now)
        log.info("run.created", run_id=state.run_id, state_file=str(path))
    else:
        log.info("run.resumed", run_id=state.run_id, started_at=state.started_at, previous_phase=state.phase)
    state.phase, state.phase_since, state.failure = Phase.STARTING.value, iso(now), None
    state.trainer.pid = None
    state.shutdown = None  # a restart re-checks everything (the budget before the worker starts)
    return state
