"""The run coming back from the bucket once the daemon runs: the newest checkpoint that verifies,
and the bucket's state.json while the run is provisional, retried while the bucket cannot be read
(the state.json judged at start is daemon/ports/bucket_state.py's).

What cannot be read is unknown, never empty: when the bucket may hold the run but does not answer
(403, throttling, an outage, a timeout) and this disk has nothing to go on from (no run, or no
checkpoint), the worker does not start a new run from $0 or from step 0. The restore alerts once
and tries again with backoff, on its own thread (READY, the watchdog and SIGTERM never wait on it),
until the bucket reads, or until a person runs `amapiano-train start-fresh` (which writes FRESH in
the state directory). Once the bucket's run can be read, a provisional run has the supervisor exit
EX_TEMPFAIL and, started again by systemd, open the bucket's run instead. A disk without room for
the checkpoint is waited for the same way (with a local checkpoint, the worker goes on from it):
it is not the bucket's copy that is at fault, and every older one would meet the same disk.

The bytes come by parallel ranged GETs, verified as they arrive (daemon/ports/ranged_get.py).
"""
from __future__ import annotations

import errno
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..common import checkpoints, refused
from ..common.atomic import write_json_atomic
from ..common.clock import iso
from ..common.config import Config
from ..state import StateError, load_state
from .aws import Aws, BadObject, unreadable
from .bucket_state import FRESH, HOW_TO_GO_ON, PROVISIONAL, StateRestore, judge_bucket_state, set_mark

RETRY_FIRST_S = 10.0
NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


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
        set_mark(self.cfg.run.state_dir / FRESH, None)   # used, or no longer needed

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
        set_mark(self.cfg.run.state_dir / PROVISIONAL, None)
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
            set_mark(self.cfg.run.state_dir / PROVISIONAL, None)   # readable, and no run there
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
            began = time.monotonic()
            try:
                path, size = self._download(aws, step)
            except Exception as e:  # the bucket is outside: anything may come
                if (unreadable(e) or no_room(e)) and local is None:
                    return f"checkpoint step {step}: {type(e).__name__}: {e}"
                if no_room(e):  # this disk's fault: every older checkpoint would meet it too
                    self.log.error("s3.restore_failed", step=step, error=f"{type(e).__name__}: {e}",
                                   note="starting from the newest local checkpoint")
                    return None
                self.log.error("s3.checkpoint_refused", step=step, error=f"{type(e).__name__}: {e}",
                               note="trying the one before it")
                continue
            seconds = time.monotonic() - began
            self.log.info("s3.restored", step=step, path=str(path), bytes=size, seconds=round(seconds, 2),
                          mb_per_s=round(size / 1e6 / max(seconds, 1e-6), 1))
            return None
        return None

    def _download(self, aws: Aws, step: int) -> tuple[Path, int]:
        marker = aws.get_marker(step)
        if marker is None:
            raise BadObject("its marker is gone (pruned since the listing)")
        if checkpoints.parse_marker(marker, step, self.cfg.checkpoint_dir) is None:
            raise BadObject("its step, file or manifest does not match its key")
        if marker.get("sha256") in refused.digests(self.cfg.checkpoint_dir):
            raise BadObject("the worker refused these very bytes before (checkpoints/corrupt/refused.json)")
        self.log.info("s3.restoring", step=step, bucket=self.cfg.aws.s3_bucket, bytes=marker["bytes"])
        return aws.download_checkpoint(marker, self.cfg.checkpoint_dir), marker["bytes"]


def no_room(e: BaseException) -> bool:
    """This disk could not take the checkpoint (full, a quota, read-only): not the bucket's fault."""
    return isinstance(e, OSError) and e.errno in NO_ROOM


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
