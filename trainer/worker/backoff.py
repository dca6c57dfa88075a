"""What a CUDA out-of-memory error does to the micro-batch: halved in this process, or, in a
process group, recorded for the whole group, which restarts from it (daemon/common/oom.py says
why a rank cannot back off alone)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from daemon.common import oom

from .memory import smaller_micro_batch


class DoesNotFit(RuntimeError):
    """CUDA ran out of memory at micro-batch 1: no back-off is left, and a restart cannot help."""


class GroupBackOff(RuntimeError):
    """This rank ran out of memory: the group restarts at the recorded micro-batch."""


def next_micro(state_dir: Path, dist: Any, clips_per_step: int, micro: int, step: int, backoffs: int,
               error: str, where: str) -> int:
    """The micro-batch to go on with in this process. Raises DoesNotFit when nothing is left to
    halve, and GroupBackOff (after writing the group's record) in a process group."""
    smaller = smaller_micro_batch(clips_per_step, micro, dist.world)
    at = f"micro-batch {micro} over {dist.world} processes" if dist.world > 1 else "micro-batch 1"
    does_not_fit = (f"{error} at {at} while {where} (step {step}, after {backoffs} back-offs): this model does "
                    f"not fit this GPU; see `amapiano-train plan`")
    if dist.world > 1:
        oom.write(state_dir, oom.OomRecord(smaller, clips_per_step, step, dist.rank, backoffs + 1,
                                           error if smaller else does_not_fit, dist.world))
    if smaller is None:
        raise DoesNotFit(does_not_fit)
    if dist.world > 1:
        raise GroupBackOff(f"{error} on rank {dist.rank} while {where} at step {step}: the group restarts "
                           f"at micro-batch {smaller} x {clips_per_step // smaller}")
    return smaller


def recorded(state_dir: Path, dist: Any, clips_per_step: int) -> oom.OomRecord | None:
    """An earlier group back-off this run starts from: rank 0's reading, the same on every rank."""
    record = dist.gather(oom.read(state_dir))[0]
    return record if record is not None and record.usable(clips_per_step, dist.world) else None
