"""The S3 mirror of the run: committed checkpoints and state.json go up, and come back on a
fresh disk. Transfers run on their own threads; the scheduler thread only starts them.

Nothing from the bucket is trusted: a marker's step must match its key, its `file` must be its
own .pt, every local path is resolved inside the checkpoint directory, and the bytes are
checked against the marker's SHA-256 before they are committed. Nothing from it is unpickled.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from .common import checkpoints
from .common.clock import iso
from .common.config import Config
from .instance import Instance


class Mirror:
    def __init__(self, cfg: Config, log: Any, clock: Any, instance: Instance,
                 worker_running: Callable[[], bool], alert: Callable[[str, str, str], Any]):
        self.cfg, self.log, self.clock, self.instance = cfg, log, clock, instance
        self._worker_running, self._alert = worker_running, alert
        self.records: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.uploads: list[threading.Thread] = []
        self.restoring: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.aws.s3_bucket) and self.instance.aws is not None

    # -- restore ---------------------------------------------------------------------------
    def start_restore(self) -> None:
        if self.enabled:
            self.restoring = threading.Thread(target=self._restore, name="s3-restore", daemon=True)
            self.restoring.start()

    @property
    def restore_pending(self) -> bool:
        return self.restoring is not None and self.restoring.is_alive()

    def _restore(self) -> None:
        try:
            found = self.instance.aws.newest_s3_checkpoint()
            local = checkpoints.newest(self.cfg.checkpoint_dir)
            if found is None or (local is not None and local.step >= found[0]):
                self.log.info("s3.restore_not_needed", s3_step=found[0] if found else None,
                              local_step=local.step if local else None)
                return
            step, marker = found
            if (not isinstance(marker, dict) or marker.get("step") != step
                    or marker.get("file") != checkpoints.data_path(self.cfg.checkpoint_dir, step).name
                    or checkpoints.inside(self.cfg.checkpoint_dir, str(marker.get("file"))) is None):
                raise ValueError(f"s3 marker for step {step}: its step or file field does not match its key")
            self.log.info("s3.restoring", step=step, bucket=self.cfg.aws.s3_bucket)
            path = self.instance.aws.download_checkpoint(marker, self.cfg.checkpoint_dir)
            self.log.info("s3.restored", step=step, path=str(path))
        except Exception as e:
            self.log.error("s3.restore_failed", error=f"{type(e).__name__}: {e}",
                           note="starting from the newest local checkpoint")

    # -- upload ----------------------------------------------------------------------------
    def upload_after(self, min_step: int, why: str) -> None:
        if not self.enabled:
            return
        thread = threading.Thread(target=self._upload, args=(min_step, why), name=f"s3-upload-{why}", daemon=True)
        self.uploads.append(thread)
        thread.start()

    @property
    def uploads_pending(self) -> bool:
        return any(t.is_alive() for t in self.uploads)

    def wait(self, timeout: float) -> None:
        """On the way out: an upload in flight is what saves the run on a replacement instance."""
        for t in self.uploads:
            t.join(max(0.0, timeout))

    def _wait_for_checkpoint(self, min_step: int, why: str) -> checkpoints.Marker | None:
        deadline = self.clock.monotonic() + max(120.0, self.cfg.supervisor.stop_timeout)
        while self.clock.monotonic() < deadline:
            newest = checkpoints.newest(self.cfg.checkpoint_dir)
            if newest and newest.step >= min_step and (not self._worker_running() or newest.step > min_step
                                                       or why == "rebalance"):
                return newest
            time.sleep(0.2)
        return checkpoints.newest(self.cfg.checkpoint_dir)

    def _upload(self, min_step: int, why: str) -> None:
        """Wait for a checkpoint at or past `min_step`, then put it (and state.json) in the bucket."""
        newest = self._wait_for_checkpoint(min_step, why)
        record: dict[str, Any] = {"step": newest.step if newest else None, "started_at": iso(self.clock.now())}
        started = self.clock.monotonic()
        try:
            if newest is None:
                raise FileNotFoundError(f"{self.cfg.checkpoint_dir}: no checkpoint to upload")
            record["objects"] = self.instance.aws.upload_checkpoint(newest.path)
            self.instance.aws.upload_file(self.cfg.state_file, "state.json")
            record.update(confirmed_at=iso(self.clock.now()), seconds=round(self.clock.monotonic() - started, 2))
            self.log.info("spot.uploaded", why=why, step=record["step"], seconds=record["seconds"],
                          bucket=self.cfg.aws.s3_bucket)
        except Exception as e:
            record["error"] = f"{type(e).__name__}: {e}"
            self.log.error("spot.upload_failed", why=why, error=record["error"])
            self._alert("spot", "checkpoint upload to S3 failed", record["error"])
        with self._lock:
            self.records[why] = record

    def upload_records(self) -> dict[str, dict]:
        with self._lock:
            return {k: dict(v) for k, v in self.records.items()}
