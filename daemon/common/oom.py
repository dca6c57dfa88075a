"""A process group's CUDA out-of-memory back-off, agreed through a restart. Stdlib only: the
worker writes the record, the supervisor and every rank read it.

One process answers an OOM by itself: it halves the micro-batch and runs the step again
(trainer/worker/train.py). A rank of a group cannot: the others are waiting in a collective
(DDP's gradient all-reduce, FSDP's all-gathers) that it would reach with other shapes or never.
So the rank that ran out of memory writes `oom_backoff.json` in the state directory (the
micro-batch the group takes next, or none when nothing is left to halve) and exits. torchrun
ends the group; the supervisor sees the record, restarts the group at once without counting a
failure while the micro-batch keeps shrinking (daemon/rules/restart.py), and every rank starts at
rank 0's reading of the record (broadcast, so a rank on another node agrees) from the newest
checkpoint. The record stays: it is the run's floor until the clips per step change, or until
a person deletes it (after moving to a larger GPU).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import read_json, write_json_atomic

NAME = "oom_backoff.json"


@dataclass(frozen=True)
class OomRecord:
    micro_batch: int | None   # the group's next micro-batch; None: it does not fit at the smallest
    clips_per_step: int       # the effective batch it was computed for
    step: int
    rank: int
    oom_backoffs: int         # back-offs so far, this one included
    error: str
    world: int                # the group's width: the memory a micro-batch takes per rank depends on it

    def usable(self, clips_per_step: int, world: int) -> int | None:
        """The micro-batch to start at, if this record is for this step size and width (at another
        width each rank's slice differs; a run that does not fit there backs off by itself)."""
        m = self.micro_batch
        if (m is None or self.clips_per_step != clips_per_step or self.world != world or m < world
                or clips_per_step % m or m % world):
            return None
        return m


def path(state_dir: Path) -> Path:
    return state_dir / NAME


def write(state_dir: Path, record: OomRecord) -> None:
    write_json_atomic(path(state_dir), asdict(record))


def read(state_dir: Path) -> OomRecord | None:
    """The record, or None when absent or not one (a damaged record is ignored, never fatal)."""
    data = read_json(path(state_dir))
    if data is None:
        return None
    ints = ("clips_per_step", "step", "rank", "oom_backoffs", "world")
    if any(type(data.get(k)) is not int or data[k] < 0 for k in ints) or data["world"] < 1:
        return None
    m = data.get("micro_batch")
    if m is not None and (type(m) is not int or m < 1):
        return None
    return OomRecord(m, data["clips_per_step"], data["step"], data["rank"], data["oom_backoffs"],
                     str(data.get("error") or "CUDA out of memory")[:500], data["world"])
