"""The worker's heartbeat as the supervisor reads it: every field type-checked, so a torn,
tampered or garbage file can only make fields unknown, never make a job raise."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common.atomic import read_json

INT_FIELDS = ("step", "total_steps", "epoch", "last_checkpoint_step", "resumed_from_step", "pid", "micro_batch",
              "grad_accum", "oom_backoffs")
FLOAT_FIELDS = ("train_loss", "val_loss", "best_val_loss", "lr", "samples_per_s", "checkpoint_write_s")
STR_FIELDS = ("activity", "last_checkpoint", "time")
MAX_STR = 4096


@dataclass(frozen=True)
class Beat:
    fields: dict[str, Any]      # only well-typed values
    written_s: float            # the file's mtime (wall seconds)


def _ok(key: str, v: Any) -> bool:
    if key in INT_FIELDS:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 62
    if key in FLOAT_FIELDS:  # an integer past a float's range (10**400 is valid JSON) is no figure either
        return isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e308 and math.isfinite(v)
    if key in STR_FIELDS:
        return isinstance(v, str) and len(v) <= MAX_STR
    return False


def read(path: Path) -> Beat | None:
    try:
        written = os.stat(path).st_mtime
    except OSError:
        return None
    data = read_json(path)
    if data is None:
        return None
    return Beat({k: (float(v) if k in FLOAT_FIELDS else v) for k, v in data.items() if _ok(k, v)}, written)


class Observed:
    """The heartbeat's age on this process's monotonic clock. Its mtime is wall time, and the wall
    clock steps (NTP at boot, a VM resumed, a person's `date -s`): a step forward by more than a
    deadline made a training worker look hung at once, a step back made its new beats look older
    than its start. Each version of the file is dated when it is first seen: by its age on the wall
    clock, but never before the previous look (it changed since) nor after this one."""

    def __init__(self) -> None:
        self.started: float | None = None   # the worker's start (or adoption), monotonic
        self._version: float | None = None  # the mtime last seen
        self._written = 0.0                 # when that version was written, monotonic
        self._looked: float | None = None   # the previous look, monotonic

    def at(self, beat: Beat | None, clock: Any) -> tuple[float, float | None]:
        """(now, when `beat` was written), both on `clock`'s monotonic time."""
        now = clock.monotonic()
        return now, self.written(beat, clock.now().timestamp(), now)

    def written(self, beat: Beat | None, now_wall: float, now_mono: float) -> float | None:
        if beat is not None and beat.written_s != self._version:
            age = max(0.0, now_wall - beat.written_s)
            if self._looked is not None:
                age = min(age, max(0.0, now_mono - self._looked))
            self._version, self._written = beat.written_s, now_mono - age
        self._looked = now_mono
        return None if beat is None else self._written


ABSORBED = ("step", "total_steps", "epoch", "train_loss", "val_loss", "best_val_loss", "lr", "samples_per_s",
            "activity", "last_checkpoint", "last_checkpoint_step", "resumed_from_step", "micro_batch", "grad_accum",
            "oom_backoffs")


def absorb(trainer: Any, beat: Beat | None) -> list:
    """Copy the heartbeat's well-typed fields into state.json's `trainer` section; an alert when
    the worker has just backed off its micro-batch after a CUDA out-of-memory error."""
    from .actions import SendAlert

    if beat is None:
        return []
    before = trainer.oom_backoffs
    for key in ABSORBED:
        if key in beat.fields:
            setattr(trainer, key, beat.fields[key])
    trainer.heartbeat_at = beat.fields.get("time", trainer.heartbeat_at)
    if trainer.oom_backoffs and trainer.oom_backoffs > (before or 0):
        return [SendAlert("oom", f"CUDA out of memory: micro-batch now {trainer.micro_batch} x {trainer.grad_accum}",
                          f"The worker ran out of GPU memory and halved its micro-batch (back-off "
                          f"{trainer.oom_backoffs}); the effective batch is unchanged and training goes on. "
                          "`amapiano-train plan` shows what fits this GPU.")]
    return []
