"""Checkpoints written in the background: the step loop stops only to copy its state.

`Saver.start` copies the step's whole payload (model, optimizer, scheduler, scaler, every RNG, the
data position) into host memory: pinned, from the GPU; a plain copy on the CPU (torch's DCP stager,
whose buffers are kept and reused from one save to the next). One thread then writes, hashes,
fsyncs, renames and commits that copy with the same code as a blocking save
(trainer/worker/checkpoint.py's `save`: temp file, fsync, rename, then the marker), so a kill at any
moment of the write leaves the previous checkpoint committed and a temp file that `clean_partial`
removes at the next start. Training changes the live tensors the moment the copy is taken; the
copy is the step's state, so resuming from it is exact.

- At most one save in flight: the next `start` is made only after `wait` (the buffers are reused).
- An error in the background (a full disk) is raised in the loop by `poll` or `wait`.
- A host that cannot hold the copy (MemAvailable, or any memory cgroup's limit over the process, v1
  or v2, less a reserve) saves blocking, in the loop, with the live tensors, as before; the log
  says why, once.
- FSDP (`start_sharded`): torch.distributed.checkpoint.async_save with the same stager, on a gloo
  group of its own (trainer/worker/distributed.py), so the background collectives never meet
  training's; every rank writes its shards, rank 0 commits once they are all written.
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from daemon.common import checkpoints as layout
from daemon.common.atomic import fsync_dir
from daemon.common.checkpoints import Marker
from daemon.common.clock import Clock, iso

from .memory import GIB, HOST_RESERVE

# Test-only, never set in production: "S" holds every checkpoint write S seconds once its bytes
# are in the temp file (before the rename and the marker), "S@STEP" only step STEP's, "S%N" those of
# the steps that N divides; several, comma-separated, the first that names the step wins ("6@12,1":
# step 12's 6 s, every other 1 s: a disk that slows down). The kill tests
# (tests/trainer/worker/test_async_checkpoint.py, the chaos suite) land inside the write.
SLOW_SAVE = "AMAPIANO_TEST_SLOW_SAVE_S"
MEMINFO, CGROUP, OWN_CGROUP = Path("/proc/meminfo"), Path("/sys/fs/cgroup"), Path("/proc/self/cgroup")


@dataclass(frozen=True)
class Committed:
    """A save that ended: its marker (None on a rank that commits nothing), what prune removed,
    the seconds the loop was blocked for it and the seconds it took to the marker."""

    step: int
    marker: Marker | None
    pruned: list[int]
    stall_s: float
    write_s: float
    blocking: bool

    def log(self, log: Any) -> None:
        assert self.marker is not None
        log.info("checkpoint.saved", step=self.step, path=str(self.marker.path), bytes=self.marker.meta["bytes"],
                 stall_s=round(self.stall_s, 3), write_s=round(self.write_s, 3), blocking=self.blocking,
                 pruned=self.pruned or None)


def host_available(meminfo: Path = MEMINFO, cgroup: Path = CGROUP, own: Path = OWN_CGROUP) -> int | None:
    """Bytes this process can still take: MemAvailable, capped by every memory limit over it; None when unknown."""
    found = None
    try:
        for line in meminfo.read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "MemAvailable" and value.split()[1:] == ["kB"]:
                found = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None if found is None else min([found, *cgroup_rooms(cgroup, own)])


def cgroup_rooms(root: Path, own: Path) -> list[int]:
    """Room left under each memory limit over this process: its own cgroup's and every one above it
    (a systemd unit's MemoryMax= is at system.slice/NAME.service, not at the root), cgroup v2's
    memory.max or v1's memory.limit_in_bytes; reclaimable page cache (inactive_file) is room."""
    places = [(root, "/", ("memory.max", "memory.current", "inactive_file"))]  # a container's namespace root
    try:
        lines = own.read_text().splitlines()
    except (OSError, ValueError):
        lines = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if path.startswith("/") and controllers == "" and line.startswith("0:"):
            places.append((root, path, ("memory.max", "memory.current", "inactive_file")))
        elif path.startswith("/") and "memory" in controllers.split(","):
            places.append((root / "memory", path, ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                   "total_inactive_file")))
    rooms = []
    for base, path, names in places:
        here = base / path.strip("/")
        while True:
            if (room := _room(here, *names)) is not None:
                rooms.append(room)
            if here == base or base not in here.parents:
                break
            here = here.parent
    return rooms


def _room(cgroup: Path, limit: str, usage: str, cache: str) -> int | None:
    try:
        most = (cgroup / limit).read_text().strip()
        if not most.isdigit():
            return None  # "max": no limit here
        used = int((cgroup / usage).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        stat = dict(line.split(" ", 1) for line in (cgroup / "memory.stat").read_text().splitlines() if " " in line)
        used -= min(used, int(stat.get(cache, "0")))
    except (OSError, ValueError):
        pass
    return int(most) - used


def tensor_bytes(obj: Any) -> int:
    """Bytes of the distinct storages under `obj` (dicts, lists, tuples; a DTensor's local shard)."""
    seen: dict[tuple[str, int], int] = {}
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif isinstance(x, torch.Tensor):
            local = x.to_local() if hasattr(x, "to_local") else x
            storage = local.untyped_storage()
            seen[(str(local.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def no_room(need: int, held: int, available: int | None, reserve: int = HOST_RESERVE) -> str | None:
    """Why a copy of `need` bytes does not fit the host (None: it fits, or the host is unknown).
    `held`: the bytes of the copy kept from the previous save, which this one reuses."""
    if available is None or need <= available + held - reserve:
        return None
    return (f"the snapshot needs {need / GIB:.1f} GiB of host memory and {(available + held) / GIB:.1f} GiB is "
            f"available (MemAvailable or the cgroup's limit, {reserve / GIB:.0f} GiB kept in reserve): saving "
            "blocking, the loop waits for each write")


def hold_seconds(step: int, value: str | None = None) -> float | None:
    """SLOW_SAVE's pause for this step's write, or None (unset, no item names the step, unreadable)."""
    for item in (os.environ.get(SLOW_SAVE, "") if value is None else value).split(","):
        seconds, mark, rest = item.strip().replace("%", "@%", 1).partition("@")
        try:
            pause, number = float(seconds), int(rest.lstrip("%")) if mark else None
        except ValueError:
            return None
        if not 0 <= pause <= 86_400:  # NaN, negative or past time_t: time.sleep would fail the write
            return None
        if number is None or (step % number == 0 if rest.startswith("%") and number > 0 else step == number):
            return pause
    return None


def test_hold(step: int) -> Callable[[], None] | None:
    """SLOW_SAVE's pause for this step's write, as a call, or None."""
    pause = hold_seconds(step)
    return None if pause is None else lambda: time.sleep(pause)


class Saver:
    """One background writer, one save at a time, and the host copy it writes from."""

    def __init__(self, log: Any, device: torch.device, meminfo: Path = MEMINFO, cgroup: Path = CGROUP):
        self.log, self.cuda = log, device.type == "cuda"
        self._host = (meminfo, cgroup)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        self._job: Future | None = None
        self._stager: Any = None
        self._held = 0  # bytes of the kept copy
        self._refused: str | None = None  # the reason last logged for saving blocking
        import torch.distributed.checkpoint.staging  # noqa: F401 - now, not in the first save's stall (~1 s)

    @property
    def stager(self) -> Any:
        """torch's DCP stager: a deep copy into host memory whose buffers are cached per source storage."""
        if self._stager is None:
            from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

            self._stager = DefaultStager(StagingOptions(use_pinned_memory=self.cuda, use_shared_memory=False,
                                                        use_async_staging=False, use_non_blocking_copy=self.cuda))
        return self._stager

    def start(self, step: int, payload: Any, commit: Callable[[Any], tuple[Marker | None, list[int]]],
              since: float, stage: Callable[[Any], Any] | None = None) -> None:
        """Copy `payload` (with `stage`, else the stager) and run commit(copy) in the background; or,
        where the host cannot hold the copy, commit(payload) here. `since`: when the loop stopped."""
        assert self._job is None, "one save at a time: wait() first"
        need = tensor_bytes(payload)
        why = no_room(need, self._held, host_available(*self._host))
        if why != self._refused:
            if why:
                self.log.warning("checkpoint.blocking", step=step, reason=why, snapshot_bytes=need)
            else:
                self.log.info("checkpoint.background", step=step, snapshot_bytes=need)
            self._refused = why
        if why:
            self._release()
            done: Future = Future()
            done.set_result(self._run(step, commit, payload, since, time.monotonic(), True))
            self._job = done
            return
        copy = (stage or self.stager.stage)(payload)
        self._held = need
        self._job = self._pool.submit(self._run, step, commit, copy, since, time.monotonic(), False)

    @staticmethod
    def _run(step: int, commit: Callable, payload: Any, since: float, copied: float, blocking: bool) -> Committed:
        marker, pruned = commit(payload)
        now = time.monotonic()
        return Committed(step, marker, pruned, (now if blocking else copied) - since, now - copied, blocking)

    def poll(self) -> Committed | None:
        """The save that has ended since the last look (its error raised here), else None."""
        return self.wait() if self._job is not None and self._job.done() else None

    def wait(self) -> Committed | None:
        """Until the save in flight has committed (its error raised here); None when none was."""
        job, self._job = self._job, None
        return job.result() if job is not None else None

    def _release(self) -> None:
        if self._stager is not None:
            self._stager.close()
            self._stager, self._held = None, 0

    def close(self) -> None:
        """Wait for the save in flight, then free the copy and the thread."""
        try:
            self.wait()
        finally:
            self._release()
            self._pool.shutdown(wait=True)


def commit_file(directory: Path, step: int, meta: dict, clock: Clock | None, keep: int) -> Callable:
    """A single-file checkpoint's commit (rank 0; DDP and one process): save, then prune."""
    from . import checkpoint

    def commit(payload: dict) -> tuple[Marker, list[int]]:
        marker = checkpoint.save(directory, step, payload, meta, clock, on_written=test_hold(step))
        return marker, checkpoint.prune(directory, keep)
    return commit


def start_sharded(saver: Saver, group: Any, directory: Path, step: int, payload: dict, meta: dict,
                  clock: Clock | None, keep: int, since: float) -> None:
    """FSDP: every rank writes its shards into a temporary directory through DCP's async_save (or
    blocking save) on the group's checkpoint group; once they all have, rank 0 writes what is not
    sharded, renames the directory and writes its marker over a manifest of the files."""
    import torch.distributed.checkpoint as dcp

    from . import checkpoint

    final = layout.sharded_path(directory, step)
    tmp = directory / f".{final.name}.tmp"
    if group.rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    group.barrier()
    parts = {"sharded": {"model": payload.pop("model"), "optimizer": payload.pop("optimizer")}, "extra": payload}
    pg = group.checkpoint_group

    def stage(live: dict) -> dict:
        written = dcp.async_save(live["sharded"], checkpoint_id=tmp, process_group=pg, async_stager=saver.stager)
        return {"written": written, "extra": saver.stager.stage(live["extra"])}

    def commit(copy: dict) -> tuple[Marker | None, list[int]]:
        if "written" in copy:
            copy["written"].result()  # rank 0's resolves once every rank's shards and .metadata are written
        else:
            dcp.save(copy["sharded"], checkpoint_id=tmp, process_group=pg)
        if group.rank != 0:
            return None, []
        extra = {"format": checkpoint.FORMAT, "step": step, **copy["extra"]}
        with open(tmp / checkpoint.EXTRA, "wb") as f:
            torch.save(extra, f)
            f.flush()
            os.fsync(f.fileno())
        if (hold := test_hold(step)) is not None:
            hold()
        manifest = layout.manifest_of(tmp)
        shutil.rmtree(final, ignore_errors=True)  # an uncommitted one of this step, from a kill
        os.replace(tmp, final)
        fsync_dir(directory)
        layout.commit(directory, step, {
            "step": step, "file": final.name, "bytes": sum(e["bytes"] for e in manifest.values()),
            "sha256": layout.manifest_sha256(manifest), "manifest": manifest, "format": checkpoint.FORMAT,
            "sharded": group.world, "time": iso((clock or Clock()).now()), **meta})
        return layout.read_marker(layout.marker_path(directory, step)), checkpoint.prune(directory, keep)

    saver.start(step, parts, commit, since, stage)
