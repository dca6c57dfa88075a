"""The run coming back from the bucket: its state.json before the run opens, then the newest
checkpoint that verifies, retried while the bucket cannot be read.

The bucket is untrusted input (DESIGN.md). Its state.json is judged by daemon/rules/restore.py
before it replaces anything, and a refusal is logged and alerted. What cannot be read is unknown,
never empty: when the bucket may hold the run but does not answer (403, throttling, an outage, a
timeout) and this disk has nothing to go on from (no run, or no checkpoint), the worker does not
start a new run from $0 or from step 0. The restore alerts once and tries again with backoff, on
its own thread (READY, the watchdog and SIGTERM never wait on it), until the bucket reads, or
until a person runs `amapiano-train start-fresh` (which writes FRESH in the state directory).

A run opened while the bucket could not be read is provisional (PROVISIONAL in the state
directory): once the bucket's run can be read, the supervisor exits EX_TEMPFAIL and, started
again by systemd, opens the bucket's run instead.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .. import journal
from ..common import checkpoints
from ..common.atomic import write_bytes_atomic, write_json_atomic
from ..common.clock import iso, parse_iso
from ..common.config import Config
from ..cost import Ledger
from ..rules.restore import Local, Theirs, judge
from ..state import NewerStateError, State, StateError, load_state
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
    tmp = cfg.state_file.with_name(".state.from-s3.json")
    write_bytes_atomic(tmp, raw)
    try:
        theirs = load_state(tmp)
    finally:
        tmp.unlink(missing_ok=True)
    if theirs is None:
        raise StateError("s3: state.json vanished while it was read")
    return theirs


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
        marker.unlink()
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
        (cfg.run.state_dir / PROVISIONAL).unlink(missing_ok=True)
    return result


def mark_provisional(cfg: Config, now: Any, why: str) -> None:
    if not (cfg.run.state_dir / PROVISIONAL).exists():
        write_json_atomic(cfg.run.state_dir / PROVISIONAL, {"since": iso(now), "why": why})


class Restorer:
    """The restore's thread: state.json (while the run is provisional), then the checkpoints."""

    def __init__(self, cfg: Config, log: Any, clock: Any, instance: Any, alert: Callable[[str, str, str], Any],
                 restored: StateRestore | None, reopen: Callable[[], Any]):
        self.cfg, self.log, self.clock, self.instance = cfg, log, clock, instance
        self._alert, self._reopen = alert, reopen
        self._queued = list(restored.alerts) if restored else []
        self.thread: threading.Thread | None = None
        self.waiting: dict | None = None   # state.json's mirror.restore while the worker waits
        self.adopted = False               # the bucket's run can be read now: reopen on it

    @property
    def pending(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    @property
    def provisional(self) -> bool:
        return (self.cfg.run.state_dir / PROVISIONAL).exists()

    def start(self) -> None:
        for kind, subject, body in self._queued:  # refusals found before the outbox ran
            self._alert(kind, subject, body)
        self._queued = []
        if self.cfg.aws.s3_bucket and not self.pending and not self.adopted:
            self.thread = threading.Thread(target=self._run, name="s3-restore", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        every = self.cfg.aws.mirror_every
        delay, tries, since = min(RETRY_FIRST_S, every), 0, iso(self.clock.now())
        while (why := self._try()) is not None:
            tries += 1
            self._wait_said(why, tries, delay, since)
            if self._sleep(delay):
                self._go_on_fresh()
                break
            delay = min(delay * 2, max(every, delay))
        else:
            if tries and not self.adopted:
                self.log.info("s3.restore_resolved", attempts=tries)
                self._alert("storage", "the run in S3 can be read again: the worker goes on",
                            f"After {tries} tries since {since}.")
        self.waiting = None
        (self.cfg.run.state_dir / FRESH).unlink(missing_ok=True)   # used, or no longer needed

    def _wait_said(self, why: str, tries: int, delay: float, since: str) -> None:
        """Each try logged; the first alerted (one alert for the outage, not one a try)."""
        self.log.warning("s3.restore_waiting", reason=why, attempt=tries, retry_in_s=round(delay, 1),
                         note="the worker waits; `amapiano-train start-fresh` goes on without the bucket")
        if tries == 1:
            self._alert("storage", "the worker waits for the run in S3", (
                f"s3://{self.cfg.aws.s3_bucket}/{self.cfg.aws.s3_prefix}/ may hold this run, but: {why}. "
                + ("Nothing on this disk to go on from, so no new run starts (it would begin at $0). "
                   if self.provisional else "No local checkpoint, so training would start again at step 0. ")
                + HOW_TO_GO_ON))
        self.waiting = {"status": "waiting", "reason": why, "since": since, "attempts": tries}

    def _sleep(self, seconds: float) -> bool:
        """Wait, watching for the person's switch; True if it was thrown."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (self.cfg.run.state_dir / FRESH).exists():
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        return (self.cfg.run.state_dir / FRESH).exists()

    def _go_on_fresh(self) -> None:
        self.log.warning("s3.restore_skipped", reason="a person ran start-fresh",
                         note="a new run" if self.provisional else "the worker starts from the local state")
        (self.cfg.run.state_dir / PROVISIONAL).unlink(missing_ok=True)
        self.waiting = None

    def _try(self) -> str | None:
        """One attempt; one that fails in a way nobody foresaw waits (and alerts) rather than let a
        worker start where it must not."""
        try:
            return self._attempt()
        except Exception as e:
            self.log.exception("s3.restore_failed", error=f"{type(e).__name__}: {e}")
            if self.provisional or checkpoints.newest(self.cfg.checkpoint_dir) is None:
                return f"the restore failed: {type(e).__name__}: {e}"
            return None

    def _attempt(self) -> str | None:
        """One try; None when nothing (more) is to be waited for, else why the worker waits."""
        aws = self.instance.aws
        if aws is None:  # the region comes from IMDS; the spot and price jobs keep asking
            if self.provisional or checkpoints.newest(self.cfg.checkpoint_dir) is None:
                return "no AWS region known yet (IMDS has not answered and [aws] region is empty)"
            self.log.warning("s3.restore_skipped", reason="no AWS region known yet",
                             note="starting from the local checkpoint")
            return None
        if self.provisional:
            try:
                result = judge_bucket_state(self.cfg, aws, self.clock.now(), write=False)
            except Exception as e:
                return f"state.json: {type(e).__name__}: {e}" if unreadable(e) else f"state.json refused: {e}"
            if result.outcome == "restored":
                self.adopted = True
                self.log.warning("s3.state_readable", note="reopening on the bucket's run (exit 75: systemd starts "
                                                           "the service again)")
                self._reopen()
                return None
            if result.outcome == "refused":
                return "its state.json was refused: " + "; ".join(result.reasons)
            (self.cfg.run.state_dir / PROVISIONAL).unlink(missing_ok=True)   # readable, and no run there
        return self._checkpoints(aws)

    def _checkpoints(self, aws: Aws) -> str | None:
        """The newest bucket checkpoint newer than the local ones that verifies; one that does not
        (a garbage marker, a damaged or missing object) is skipped for the one before it. One that
        cannot be read is waited for when there is no local checkpoint to go on from."""
        local = checkpoints.newest(self.cfg.checkpoint_dir)
        try:
            steps = aws.bucket_steps()
        except Exception as e:
            if unreadable(e) and local is None:
                return f"cannot list the bucket: {type(e).__name__}: {e}"
            self.log.error("s3.restore_failed", error=f"{type(e).__name__}: {e}",
                           note="starting from the newest local checkpoint")
            return None
        for step in reversed(steps):
            if local is not None and local.step >= step:
                self.log.info("s3.restore_not_needed", s3_step=step, local_step=local.step)
                return None
            try:
                path = self._download(aws, step)
            except Exception as e:  # the bucket is outside: anything may come
                if unreadable(e) and local is None:
                    return f"checkpoint step {step}: {type(e).__name__}: {e}"
                self.log.error("s3.checkpoint_refused", step=step, error=f"{type(e).__name__}: {e}",
                               note="trying the one before it")
                continue
            self.log.info("s3.restored", step=step, path=str(path))
            return None
        return None

    def _download(self, aws: Aws, step: int) -> Path:
        marker = aws.get_marker(step)
        if marker is None:
            raise BadObject("its marker is gone (pruned since the listing)")
        if (checkpoints.parse_marker(marker, step, self.cfg.checkpoint_dir) is None
                or marker.get("sha256") in checkpoints.set_aside_digests(self.cfg.checkpoint_dir)):
            raise BadObject("its step, file or manifest does not match its key, or these bytes were set aside "
                            "here before (checkpoints/corrupt/): not fetched again only to be refused again")
        self.log.info("s3.restoring", step=step, bucket=self.cfg.aws.s3_bucket)
        return aws.download_checkpoint(marker, self.cfg.checkpoint_dir)


def request_fresh_start(cfg: Config, by: str | None) -> tuple[bool, str]:
    """`amapiano-train start-fresh`: the person's switch, only while the daemon waits for the bucket."""
    try:
        state = load_state(cfg.state_file)
    except StateError as e:
        return False, f"{e}"
    waiting = ((state.mirror if state else None) or {}).get("restore")
    if not isinstance(waiting, dict) or waiting.get("status") != "waiting":
        return False, (f"{cfg.state_file}: nothing waits for the bucket (state.json's mirror.restore is not "
                       "\"waiting\"); start-fresh is only for a restore that cannot read S3")
    try:
        write_json_atomic(cfg.run.state_dir / FRESH, {"at": iso(datetime.now(timezone.utc)), "by": by,
                                                      "pid": os.getpid()})
    except OSError as e:
        return False, f"cannot write {cfg.run.state_dir / FRESH} ({e.strerror or e}); try with sudo"
    what = ("a new run begins (its spend counted from now)" if (cfg.run.state_dir / PROVISIONAL).exists()
            else "the worker starts from this disk's state")
    return True, f"the supervisor goes on without the bucket within a second or two: {what}"
