"""The S3 mirror of the run: every committed checkpoint and state.json go up continuously (and at
once on a Spot notice), and come back on a fresh disk. Transfers run on their own threads; the
scheduler thread only starts them.

An upload counts once the bucket confirms its size and SHA-256. The bucket is pruned like the
local directory (the last K plus the best). Nothing from the bucket is trusted: a marker's step
must match its key and its `file` must be its own .pt or .dcp (a sharded checkpoint, whose
manifest names only plain files), every local path is resolved inside the checkpoint
directory, bytes (every shard's) are checked against the marker's SHA-256 before they are committed,
a state.json must load as one and pass daemon/rules/restore.py before it replaces anything, what
cannot be read is waited for (daemon/ports/restore.py), and nothing is unpickled.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..common import checkpoints
from ..common.clock import iso, parse_iso
from ..common.config import Config
from ..report.files import report_files
from .instance import Instance
from .bucket_state import StateRestore, restore_state
from .restore import Restorer

__all__ = ["Mirror", "restore_state"]


class Mirror:
    def __init__(self, cfg: Config, log: Any, clock: Any, instance: Instance,
                 worker_running: Callable[[], bool], alert: Callable[[str, str, str], Any], section: dict | None,
                 restored: StateRestore | None = None, reopen: Callable[[], Any] = lambda: None):
        self.cfg, self.log, self.clock, self.instance = cfg, log, clock, instance
        self._worker_running, self._alert = worker_running, alert
        self.records: dict[str, dict] = {}
        self.confirmed: dict = {k: v for k, v in (section or {}).items() if k in ("step", "at", "state_at")}
        self._lock = threading.Lock()
        self.uploads: list[threading.Thread] = []
        self.restorer = Restorer(cfg, log, clock, instance, alert, restored, reopen)
        self._failed = False
        self._reports_sent: dict[str, tuple[int, int]] = {}  # reports/ name -> (size, mtime) confirmed up

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.aws.s3_bucket) and self.instance.aws is not None

    # -- restore (daemon/ports/restore.py) ---------------------------------------------------
    def start_restore(self) -> None:
        self.restorer.start()

    @property
    def restore_pending(self) -> bool:
        return self.restorer.pending

    @property
    def restoring(self) -> threading.Thread | None:
        return self.restorer.thread

    @property
    def reopen_wanted(self) -> bool:
        """The bucket's run can be read now, and this one is provisional: start again on it."""
        return self.restorer.adopted

    # -- upload -------------------------------------------------------------------------------
    def sync(self) -> None:
        """The continuous mirror's job: upload what is newer than the bucket's copy (one at a time)."""
        newest = checkpoints.newest(self.cfg.checkpoint_dir)
        if not self.enabled or newest is None or self.uploads_pending or self.restore_pending:
            return
        if newest.step > (self.confirmed.get("step") or -1) or self._state_due() or self._reports_due():
            self._start(newest.step, "mirror", wait=False)

    def _state_due(self) -> bool:
        at = self.confirmed.get("state_at")
        return at is None or (self.clock.now() - parse_iso(at)).total_seconds() >= self.cfg.aws.mirror_every

    def upload_after(self, min_step: int, why: str) -> None:
        """A notice: the checkpoint the worker is writing now, as soon as it is committed."""
        if self.enabled:
            self._start(min_step, why, wait=True)

    def _start(self, min_step: int, why: str, wait: bool) -> None:
        thread = threading.Thread(target=self._upload, args=(min_step, why, wait), name=f"s3-{why}", daemon=True)
        self.uploads.append(thread)
        self.uploads = [t for t in self.uploads if t.is_alive() or t is thread]
        thread.start()

    @property
    def uploads_pending(self) -> bool:
        return any(t.is_alive() for t in self.uploads)

    def wait(self, timeout: float) -> None:
        """On the way out: an upload in flight is what saves the run on a replacement instance."""
        deadline = time.monotonic() + timeout
        for t in list(self.uploads):
            t.join(max(0.0, deadline - time.monotonic()))

    def _wait_for_checkpoint(self, min_step: int, why: str) -> checkpoints.Marker | None:
        deadline = self.clock.monotonic() + max(120.0, self.cfg.supervisor.stop_timeout)
        while self.clock.monotonic() < deadline:
            newest = checkpoints.newest(self.cfg.checkpoint_dir)
            if newest and newest.step >= min_step and (not self._worker_running() or newest.step > min_step
                                                       or why == "rebalance"):
                return newest
            time.sleep(0.2)
        return checkpoints.newest(self.cfg.checkpoint_dir)

    def _upload(self, min_step: int, why: str, wait: bool) -> None:
        newest = self._wait_for_checkpoint(min_step, why) if wait else checkpoints.newest(self.cfg.checkpoint_dir)
        record: dict[str, Any] = {"step": newest.step if newest else None, "started_at": iso(self.clock.now())}
        started, what = self.clock.monotonic(), "checkpoint"  # what: the alert names what failed
        try:
            if newest is None:
                raise FileNotFoundError(f"{self.cfg.checkpoint_dir}: no checkpoint to upload")
            aws = self.instance.aws
            if newest.step > (self.confirmed.get("step") or -1):
                record["objects"] = aws.upload_checkpoint(newest)
            if not self.restorer.provisional:  # a placeholder run never overwrites the bucket's
                what = "state.json"
                aws.upload_state(self.cfg.state_file)
                self._upload_reports(aws)
            now = iso(self.clock.now())
            with self._lock:
                self.confirmed = {"step": max(newest.step, self.confirmed.get("step") or -1), "at": now,
                                  "state_at": now}
            try:  # the upload counts whatever the pruning does
                pruned = self._prune(aws, self.confirmed["step"])
            except Exception as e:
                self.log.warning("s3.prune_failed", error=f"{type(e).__name__}: {e}", note="tried again next upload")
                pruned = []
            record.update(confirmed_at=now, seconds=round(self.clock.monotonic() - started, 2), pruned=pruned)
            self.log.info("s3.uploaded", why=why, step=record["step"], seconds=record["seconds"],
                          bucket=self.cfg.aws.s3_bucket, pruned=pruned or None)
            self._failed = False
        except Exception as e:
            record["error"] = f"{type(e).__name__}: {e}"
            self.log.error("s3.upload_failed", why=why, what=what, error=record["error"])
            if why != "mirror" or not self._failed:  # the continuous mirror alerts once per outage
                self._alert("spot" if why != "mirror" else "storage", f"{what} upload to S3 failed", record["error"])
            self._failed = True
        with self._lock:
            self.records[why] = record

    def _reports_due(self) -> bool:
        return any(self._reports_sent.get(name) != seen for _, name, seen in report_files(self.cfg.reports_dir))

    def reports_unsent(self) -> bool:
        """A report written since the last upload is not in the bucket yet (a provisional run sends none)."""
        return self.enabled and not self.restorer.provisional and self._reports_due()

    def _upload_reports(self, aws: Any) -> None:
        """The reports folder (daemon/report/files.py), each file once per change; a failure costs
        the reports (tried again next time), never the checkpoint's upload."""
        sent = []
        for path, name, seen in report_files(self.cfg.reports_dir):
            if self._reports_sent.get(name) == seen:
                continue
            try:
                aws.upload_report(path, name)
            except Exception as e:
                self.log.warning("s3.reports_upload_failed", file=name, error=f"{type(e).__name__}: {e}")
                break
            self._reports_sent[name] = seen
            sent.append(name)
        if sent:
            self.log.info("s3.reports_uploaded", files=len(sent), bucket=self.cfg.aws.s3_bucket)

    def _prune(self, aws: Any, uploaded: int) -> list[int]:
        """The bucket keeps what the local directory keeps: the last K and the best, ranked among
        the steps up to the one just uploaded. Nothing is deleted that is not understood: steps
        above it (not this run's to judge), markers that cannot be read now (a timeout is not
        garbage) or do not parse stay; the restore skips what does not verify."""
        steps = [s for s in aws.bucket_steps() if s <= uploaded]
        if len(steps) <= self.cfg.train.keep_checkpoints:
            return []
        markers = []
        for step in steps:
            try:
                meta = aws.get_marker(step)
            except Exception as e:
                self.log.warning("s3.marker_unreadable", step=step, error=f"{type(e).__name__}: {e}")
                continue
            if (marker := checkpoints.parse_marker(meta, step, Path("."))) is not None:
                markers.append(marker)
        keep = checkpoints.kept(markers, self.cfg.train.keep_checkpoints) | {uploaded}
        gone = [m.step for m in markers if m.step not in keep]
        for step in gone:
            aws.delete_checkpoint(step)
        return gone

    def confirmed_newest(self) -> bool:
        """The newest local checkpoint and a state.json written after it are confirmed in the bucket."""
        newest = checkpoints.newest(self.cfg.checkpoint_dir)
        with self._lock:
            step, state_at = self.confirmed.get("step"), self.confirmed.get("state_at")
        return self.enabled and newest is not None and step is not None and step >= newest.step and state_at is not None

    def upload_records(self) -> dict[str, dict]:
        with self._lock:
            return {k: dict(v) for k, v in self.records.items()}

    def section(self) -> dict | None:
        """state.json's `mirror` section."""
        if not self.cfg.aws.s3_bucket:
            return None
        with self._lock:
            return {"bucket": self.cfg.aws.s3_bucket, "prefix": self.cfg.aws.s3_prefix, **self.confirmed,
                    "last": self.records.get("mirror"), "enabled": self.enabled,
                    **({"restore": dict(waiting)} if (waiting := self.restorer.waiting) else {})}

