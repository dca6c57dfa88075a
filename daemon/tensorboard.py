"""The supervisor's TensorBoard writer (one per process): scalars without torch.

The step of every point is the training step (the furthest one trained so far: a worker
restarted from an earlier checkpoint does not draw the curves backwards), so cost and GPU
utilisation line up with the loss; 0 before the worker reports one. Each point keeps its wall
time: TensorBoard's "relative" and "wall" x-axes show the same curves over time.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any


class ScalarWriter:
    def __init__(self, logdir: Path, log: Any = None):
        self.logdir, self.log = logdir, log
        self._writer = None
        self._failed = False
        self.step = 0

    def write(self, scalars: dict[str, float | None], now: datetime, step: int | None = None) -> None:
        """One point per known value (None is unknown: no point) at the training step, then flush.
        A full or read-only log disk costs the curves, never the daemon."""
        if type(step) is int and self.step < step < 2 ** 62:  # an event's step is an int64
            self.step = step
        self.write_at(scalars, now, self.step)

    def write_at(self, scalars: dict[str, float | None], now: datetime, step: int) -> None:
        """At exactly `step` (an evaluation's figures at the step of the checkpoint it evaluated),
        leaving the furthest step as it is."""
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        try:
            if self._writer is None:
                self.logdir.mkdir(mode=0o750, parents=True, exist_ok=True)
                self._writer = EventFileWriter(str(self.logdir))
            for tag, value in scalars.items():
                if value is not None:
                    self._writer.add_event(Event(wall_time=now.timestamp(), step=step, summary=Summary(
                        value=[Summary.Value(tag=tag, simple_value=float(value))])))
            self._writer.flush()
            self._failed = False
        except (OSError, ValueError) as e:  # a full disk; a value protobuf refuses
            if not self._failed and self.log is not None:
                self.log.error("tensorboard.write_failed", logdir=str(self.logdir), error=str(e))
            self._failed = True

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                pass
