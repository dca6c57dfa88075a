"""The run journal: an append-only copy, beside state.json, of what must never be lost.

state.json is rewritten every tick; if it is lost, damaged or moved aside (the exit-65 advice),
the run must not start over at $0 with a new run_id and a new milestone date. Each cost check
appends one line (run_id, started_at, the ledger's totals, the budget alerts already sent, the
milestone's due time and decision, whether the completion is done), fsynced. A torn last line is
skipped. Past MAX_BYTES the journal is compacted to its last line (atomically), so it stays small
on a weeks-long run. Anything but a regular file at its path (a FIFO, a directory, a link to a
device) reads as no journal, never blocks, and is moved aside at the next record, which starts
the journal again from the run in memory (state.json's ledger).
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .common.atomic import FILE_MODE, loads, read_bytes, write_bytes_atomic
from .common.clock import is_utc_time
from .cost import Ledger

NAME = "ledger.journal"
MAX_BYTES = 256 * 1024


def record(run_id: str, started_at: str, ledger: Ledger | None, budget_fired: list[str],
           milestone: dict | None, at: str) -> dict:
    led = None if ledger is None else {k: v for k, v in ledger.to_json().items() if k not in ("hourly", "daily")}
    m = {k: (milestone or {}).get(k) for k in ("due_at", "status", "decision", "decided_at")}
    done = (milestone or {}).get("completion")
    # A run rebuilt from here must not evaluate, export and announce its completion a second time.
    m["completion"] = {"status": done["status"]} if isinstance(done, dict) and isinstance(done.get("status"), str) \
        else None
    return {"run_id": run_id, "started_at": started_at, "at": at, "ledger": led, "budget_fired": budget_fired,
            "milestone": m}


def _line(rec: dict) -> bytes:
    return (json.dumps(rec, allow_nan=False, separators=(",", ":")) + "\n").encode()


def replace(path: Path, rec: dict) -> None:
    """The journal as this one record: a run taken from the bucket in place of a provisional one."""
    write_bytes_atomic(path, _line(rec))


def append(path: Path, rec: dict) -> str | None:
    """Append one record (fsynced). Returns where a planted non-file was moved, if one was."""
    line = _line(rec)
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    aside = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        # Opening a FIFO to write waits for a reader for ever; a directory or /dev/zero takes
        # nothing. Kept for a look; the record below starts the journal again.
        aside = path.with_name(f"{path.name}.bad.{str(rec['at']).replace('-', '').replace(':', '')}")
        os.replace(path, aside)
    if st is None or aside is not None or st.st_size + len(line) > MAX_BYTES:
        write_bytes_atomic(path, line)
        return str(aside) if aside else None
    # O_NONBLOCK: a FIFO planted since the stat fails (ENXIO) instead of waiting for a reader.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, FILE_MODE)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def last(path: Path) -> dict | None:
    """The newest complete, well-formed record, or None."""
    try:
        lines = read_bytes(path).splitlines()  # bounded; a FIFO or a device is refused, never waited on
    except OSError:
        return None
    for raw in reversed(lines):
        try:
            rec = loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("run_id"), str) and is_utc_time(rec.get("started_at")):
            return rec
    return None


def ledger_of(rec: dict) -> Ledger | None:
    """The ledger a record carries (its totals; the hourly breakdown starts afresh), if valid."""
    try:
        return Ledger.from_json(rec.get("ledger")) if rec.get("ledger") else None
    except ValueError:
        return None


def describe(rec: dict[str, Any]) -> str:
    total = (rec.get("ledger") or {}).get("total_usd")
    return f"run {rec['run_id']} started {rec['started_at']}, spend ${total if total is not None else 0:,.2f}"
