"""The bucket's state.json at start, before the run opens: judged by daemon/rules/restore.py against
this disk (never another run_id, never less spend, nothing dated ahead) before it replaces anything.
A run opened while the bucket could not say is provisional (PROVISIONAL in the state directory).

Files here are the state directory's: a read-only or full disk costs a marker, never the start
(chaos seeds 721571723 and 45119020 once ended in an OSError traceback and exit 1 here).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import journal
from ..common.atomic import write_bytes_atomic, write_json_atomic
from ..common.clock import iso, parse_iso
from ..common.config import Config
from ..cost import Ledger
from ..rules.restore import Local, Theirs, judge
from ..state import NewerStateError, State, StateError, load_state, parse_state
from .aws import Aws, BadObject, error_code, unreadable

PROVISIONAL = "provisional-run.json"   # this directory's run was opened while the bucket could not be read
FRESH = "start-fresh.json"             # a person's word: go on without the bucket
START_TIMEOUT_S = 20.0                 # state.json at start: before READY (TimeoutStartSec is 120 s)
RETRY_FIRST_S = 10.0
HOW_TO_GO_ON = ("It tries again with backoff and goes on by itself once the bucket can be read and trusted. "
                "To go on without it instead: sudo amapiano-train start-fresh")


@dataclass
class StateRestore:
    outcome: str                 # off | absent | restored | kept | refused | unreadable
    provisional: bool = False    # nothing local and the bucket's run unknown: the worker waits
    reasons: list[str] = field(default_factory=list)
    alerts: list[tuple[str, str, str]] = field(default_factory=list)   # for the outbox, once it runs
    theirs: dict = field(default_factory=dict)   # the bucket's run_id, updated_at and spend, for the log


def _local(cfg: Config) -> Local | None:
    """What this disk holds of a run: state.json's and the journal's ids, time and spend. None:
    nothing, or only a provisional run (the bucket's run may take its place)."""
    if (cfg.run.state_dir / PROVISIONAL).exists():
        return None
    ids, times, spends = set(), [], [0.0]
    try:
        state = load_state(cfg.state_file)
    except NewerStateError:
        raise
    except StateError:
        state = None
    if state is not None:
        ids.add(state.run_id)
        times += [parse_iso(state.updated_at)] if state.updated_at else []
        spends.append(Ledger.from_json(state.cost).total_usd if state.cost else 0.0)
    rec = journal.last(cfg.state_file.with_name(journal.NAME))
    if rec is not None:
        ids.add(rec["run_id"])
        times += [parse_iso(rec["at"])] if isinstance(rec.get("at"), str) else []
        ledger = journal.ledger_of(rec)
        spends.append(ledger.total_usd if ledger else 0.0)
    return Local(frozenset(ids), max(times) if times else None, max(spends)) if ids else None


def _theirs(cfg: Config, raw: bytes) -> State:
    """The bucket's bytes as a state file this version understands (StateError if not)."""
    return parse_state(raw, f"s3://{cfg.aws.s3_bucket}/{cfg.aws.s3_prefix}/state.json")


def judge_bucket_state(cfg: Config, aws: Aws, now: Any, timeout_s: float | None = None,
                       write: bool = True) -> StateRestore:
    """Read the bucket's state.json and judge it against this disk; with `write`, a restore
    replaces state.json (and, over a provisional run, its journal). Raises what the read raised
    when the bucket could not be asked."""
    try:
        local = _local(cfg)
    except NewerStateError as e:  # open_run refuses it (exit 65): nothing is replaced
        return StateRestore("kept", reasons=[str(e)])
    try:
        raw = aws.get_state(timeout_s)
    except BadObject as e:
        return StateRestore("refused", provisional=local is None, reasons=[str(e)])
    except Exception as e:
        if error_code(e) != "NoSuchBucket":
            raise
        return StateRestore("absent", reasons=[f"{type(e).__name__}: {e}"])  # an answer: nothing there
    if raw is None:
        return StateRestore("absent")
    try:
        theirs = _theirs(cfg, raw)
    except (StateError, OSError) as e:
        return StateRestore("refused", provisional=local is None,
                            reasons=[f"not a state file this version can use ({e})"])
    spend = Ledger.from_json(theirs.cost).total_usd if theirs.cost else 0.0
    verdict, reasons = judge(local, Theirs(theirs.run_id, parse_iso(theirs.updated_at) if theirs.updated_at
                                           else None, spend), now)
    result = StateRestore({"restore": "restored", "keep": "kept", "refuse": "refused"}[verdict],
                          provisional=local is None and verdict == "refuse", reasons=reasons,
                          theirs={"s3_run_id": theirs.run_id, "s3_updated_at": theirs.updated_at,
                                  "s3_spend_usd": round(spend, 2)})
    if verdict != "restore" or not write:
        return result
    write_bytes_atomic(cfg.state_file, raw)
    marker = cfg.run.state_dir / PROVISIONAL
    if marker.exists():  # the provisional run's journal would speak for it: the bucket's run replaces it
        ledger = Ledger.from_json(theirs.cost) if theirs.cost else None
        journal.replace(cfg.state_file.with_name(journal.NAME), journal.record(
            theirs.run_id, theirs.started_at, ledger, list((theirs.budget or {}).get("fired") or []),
            theirs.milestone, theirs.updated_at or iso(now)))
        set_mark(marker, None)
    return result


def restore_state(cfg: Config, log: Any, instance: Any, timeout_s: float = START_TIMEOUT_S) -> StateRestore:
    """Before the run opens: the bucket's state.json replaces a missing or older local one of the
    same run (run_id, ledger, milestone, alerts sent, red flags), never another run's or a lower
    spend. With nothing local and a bucket that cannot tell, the run opened next is provisional.
    Never raises (beyond a local state.json of a newer version, which open_run reports)."""
    if not cfg.aws.s3_bucket:
        return StateRestore("off")
    instance.refresh()
    try:
        if instance.aws is None:
            raise TimeoutError("no AWS region known yet (IMDS has not answered and [aws] region is empty)")
        result = judge_bucket_state(cfg, instance.aws, instance.clock.now(), timeout_s)
    except Exception as e:  # the bucket is outside: anything may come
        provisional = _local(cfg) is None and unreadable(e)
        if provisional:
            mark_provisional(cfg, instance.clock.now(), f"{type(e).__name__}: {e}")
        log.error("s3.state_restore_failed", error=f"{type(e).__name__}: {e}",
                  note="nothing local: the worker waits for the bucket" if provisional else "keeping the local state")
        return StateRestore("unreadable" if unreadable(e) else "absent", provisional=provisional)
    if result.outcome == "restored":
        log.warning("s3.state_restored", bucket=cfg.aws.s3_bucket, **result.theirs,
                    note="the run comes back from the bucket")
    elif result.outcome == "kept":
        log.info("s3.state_not_needed", note=result.reasons[0], **result.theirs)
    elif result.outcome == "refused":
        local = _local(cfg)
        mine = ", ".join(sorted(local.run_ids)) if local else "none"
        log.warning("s3.state_refused", reason="; ".join(result.reasons), local_run=mine, **result.theirs,
                    note="the worker waits for a person" if result.provisional else "keeping the local run")
        result.alerts.append(("storage", "the bucket's state.json was refused", (
            f"s3://{cfg.aws.s3_bucket}/{cfg.aws.s3_prefix}/state.json was not restored: "
            + "; ".join(result.reasons) + f". This disk's run: {mine}. Someone with write access to the "
            "bucket may have put it there; look at it before trusting the bucket."
            + (f" Nothing local to go on from: the worker waits. {HOW_TO_GO_ON}" if result.provisional else ""))))
        if result.provisional:
            mark_provisional(cfg, instance.clock.now(), "the bucket's state.json was refused")
    else:  # an answer, and nothing there: a provisional run is the run now
        if result.reasons:
            log.error("s3.state_restore_failed", error=result.reasons[0],
                      note="the bucket does not exist: nothing to restore (check [aws] s3_bucket)")
        set_mark(cfg.run.state_dir / PROVISIONAL, None)
    return result


def mark_provisional(cfg: Config, now: Any, why: str) -> None:
    if not (cfg.run.state_dir / PROVISIONAL).exists():
        set_mark(cfg.run.state_dir / PROVISIONAL, {"since": iso(now), "why": why})


def set_mark(path: Path, doc: dict | None) -> bool:
    """Write (or with None remove) a marker file; False where the disk refused it."""
    try:
        if doc is None:
            path.unlink(missing_ok=True)
        else:
            write_json_atomic(path, doc)
    except OSError:
        return False
    return True
