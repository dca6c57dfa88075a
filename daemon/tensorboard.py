"""The supervisor's TensorBoard writer (one per process): scalars without torch.

The step of every point is the whole seconds since the run started, so the curves line up
across daemon restarts (a counter would start again at 0 and draw over itself).
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any


class ScalarWriter:
    def __init__(self, logdir: Path, run_started: datetime, log: Any = None):
        self.logdir, self.run_started, self.log = logdir, run_started, log
        self._writer = None
        self._failed = False

    def write(self, scalars: dict[str, float | None], now: datetime) -> None:
        """One point per known value (None is unknown: no point), then flush. A full or
        read-only log disk costs the curves, never the daemon."""
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        try:
            if self._writer is None:
                self.logdir.mkdir(mode=0o750, parents=True, exist_ok=True)
                self._writer = EventFileWriter(str(self.logdir))
            step = int((now - self.run_started).total_seconds())
            for tag, value in scalars.items():
                if value is not None:
                    self._writer.add_event(Event(wall_time=now.timestamp(), step=step, summary=Summary(
                        value=[Summary.Value(tag=tag, simple_value=float(value))])))
            self._writer.flush()
            self._failed = False
        except OSError as e:
            if not self._failed and self.log is not None:
                self.log.error("tensorboard.write_failed", logdir=str(self.logdir), error=str(e))
            self._failed = True

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                pass
