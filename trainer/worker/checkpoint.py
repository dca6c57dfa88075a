"""Step checkpoints that commit, the torch half: save, load, quarantine, prune.

Naming, markers, "newest", "best" and the SHA-256 check live in daemon/common/checkpoints.py
(torch-free: the supervisor, the S3 mirror, evaluate and export read the same layout). Here:
the .pt is written to a temp name, fsynced and renamed, its SHA-256 computed on the way out;
then the marker (size, hash, step, losses) is written the same way. torch.load does not notice
flipped bytes, so loading verifies size and hash first; a damaged checkpoint is moved to
corrupt/ with a warning and the previous one is used. Kept: the last `keep` plus the best.
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
import shutil
from pathlib import Path
from typing import Any

import torch

from daemon.common import checkpoints as layout
from daemon.common.atomic import write_atomic_with, write_json_atomic
from daemon.common.checkpoints import Marker, best, list_checkpoints, newest  # noqa: F401 - re-exported
from daemon.common.clock import Clock, iso

FORMAT = 1
EXTRA = "extra.pt"  # in a sharded checkpoint (trainer/worker/distributed.py): what is not sharded
QUARANTINE = "corrupt"


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the text names the file and what is wrong."""


class CorruptCheckpoint(CheckpointError):
    """The bytes on disk are not the bytes written (size or SHA-256 differs)."""


class CheckpointsDamaged(Exception):
    """Newer checkpoints were quarantined at start, and an S3 mirror may hold them intact: the
    worker exits (75, nothing lost) so that the supervisor's restore runs before it falls back."""


class _HashingWriter:
    """A write-only file that hashes what passes through it (the marker's digest, computed once).

    Each write is cut into its 4 MiB pieces (daemon/common/checkpoints.py's PieceHash), hashed on
    a pool of threads while this one writes the same bytes: hashlib and the file write both let go
    of the GIL, so a save costs about the write instead of one core's SHA-256 of the whole file.
    Each write returns only when its pieces are hashed, because torch may reuse the buffer once
    write returns.
    """

    PARALLEL = 1 << 20  # smaller writes (zip headers, small tensors) are hashed inline

    def __init__(self, f, pool):
        self._f, self._pool = f, pool
        self.hash = layout.PieceHash()  # its size: the bytes written so far
        self.error: OSError | None = None  # torch's zip writer hides it behind an "enforce fail"

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        jobs = self.hash.split(view)
        hashing = [self._pool.submit(h.update, part) for h, part in jobs] if view.nbytes >= self.PARALLEL else []
        if not hashing:
            for h, part in jobs:
                h.update(part)
        try:
            return self._f.write(view)
        except OSError as e:
            self.error = e
            raise
        finally:
            for job in hashing:
                job.result()

    def flush(self) -> None:
        self._f.flush()


def clean_partial(directory: Path) -> list[str]:
    """Remove what a kill mid-write left: temp files, and checkpoint .pt files whose marker never came."""
    removed: list[str] = []
    if not directory.exists():
        return removed
    for p in directory.iterdir():
        step = layout.step_of(p.name)
        orphan = (p.suffix in (layout.DATA_SUFFIX, layout.SHARDED_SUFFIX) and step is not None
                  and not layout.marker_path(directory, step).exists())
        temp = p.name.startswith(".") and p.name.endswith(".tmp")  # daemon.common.atomic's temp names
        if p.is_dir() and (temp or orphan):  # a sharded checkpoint that never committed: shards of no step
            shutil.rmtree(p)
            removed.append(p.name)
        elif p.is_file() and temp:
            p.unlink()
            removed.append(p.name)
        elif p.is_file() and orphan:  # uncommitted, but maybe intact (a lost marker): kept for a look
            _keep_uncommitted(directory, p)
            removed.append(p.name)
    return removed


def _keep_uncommitted(directory: Path, pt: Path) -> None:
    """A .pt without its marker: a kill between the rename and the marker (the usual case), or a
    marker someone deleted. Never deleted outright: the newest one is kept in uncommitted/ (only
    one, so a kill storm of 5 GB checkpoints cannot fill the disk); it is not a checkpoint."""
    dest = directory / "uncommitted"
    dest.mkdir(exist_ok=True)
    os.replace(pt, dest / pt.name)
    kept = sorted(dest.glob(f"{layout.PREFIX}*{layout.DATA_SUFFIX}"), key=lambda q: layout.step_of(q.name) or -1)
    for old in kept[:-1]:
        old.unlink(missing_ok=True)


@contextlib.contextmanager
def _no_zip_crc32():
    """torch.save without the zip format's CRC-32 of each record (a second full pass over the bytes):
    the marker's SHA-256 already covers them, and torch.load does not need it."""
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(before)


def save(directory: Path, step: int, payload: dict, meta: dict, clock: Clock | None = None) -> Marker:
    """Commit one checkpoint atomically; returns its marker."""
    directory.mkdir(parents=True, exist_ok=True)
    path = layout.data_path(directory, step)
    payload = {"format": FORMAT, "step": step, **payload}

    def write(f):
        w = _HashingWriter(f, pool)
        try:
            with _no_zip_crc32():
                torch.save(payload, w)
        except Exception:
            if w.error is not None:  # say what really happened: "No space left on device", ...
                raise OSError(w.error.errno, f"{w.error.strerror} while writing checkpoint {path}") from None
            raise
        return w

    with ThreadPoolExecutor(layout.hash_threads(), thread_name_prefix="sha256") as pool:
        w = write_atomic_with(path, write)
    meta = {"step": step, "file": path.name, "bytes": w.hash.size, "sha256": w.hash.hexdigest(), "hash": layout.PIECES,
            "format": FORMAT, "time": iso((clock or Clock()).now()), **meta}
    write_json_atomic(layout.marker_path(directory, step), meta)
    return Marker(step, path, meta)


def load(marker: Marker, map_location: str | torch.device = "cpu", full: bool = True) -> dict:
    """Verify and load one checkpoint (a sharded one: whole, or with full=False only what is not
    sharded, for ranks that load their shards themselves).

    CorruptCheckpoint if its bytes are damaged or missing; CheckpointError if intact bytes do
    not load (a code or version problem: the file is fine and must not be thrown away).
    """
    wrong = layout.verify(marker)
    if wrong is not None:
        raise CorruptCheckpoint(wrong)
    try:
        if marker.sharded:
            payload = torch.load(marker.path / EXTRA, map_location=map_location, weights_only=True)
            if full:
                payload.update(load_full(marker.path))
        else:
            payload = torch.load(marker.path, map_location=map_location, weights_only=True)
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{marker.path}: intact (SHA-256 matches) but does not load with this "
                              f"version of amapiano-train/torch ({type(e).__name__}: {first_line})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("step") != marker.step:
        raise CheckpointError(f"{marker.path}: not a format-{FORMAT} checkpoint of step {marker.step}")
    return payload


def load_full(path: Path) -> dict:
    """A sharded checkpoint's model and optimizer, whole, in this one process (no process group):
    what a single process, evaluate and export load. The optimizer's state is keyed by name."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict = {}
    _load_state_dict(state, storage_reader=FileSystemReader(path), planner=_EmptyStateDictLoadPlanner(),
                     no_dist=True)
    return {"model": state["model"], "optimizer": state["optimizer"], "optimizer_keys": "fqn"}


def quarantine(marker: Marker) -> Path:
    """Move a damaged checkpoint (and its marker) into corrupt/, keeping the bytes for a look."""
    dest = marker.path.parent / QUARANTINE
    dest.mkdir(exist_ok=True)
    if marker.marker.exists():
        os.replace(marker.marker, dest / marker.marker.name)  # first: it is what makes it "committed"
    if marker.path.exists():
        os.replace(marker.path, dest / marker.path.name)
    return dest


def load_latest(directory: Path, log: Any, map_location: str | torch.device = "cpu",
                full: bool = True, quarantined: list[int] | None = None) -> tuple[Marker, dict] | None:
    """The newest checkpoint that verifies; damaged newer ones are quarantined with a warning
    (their steps appended to `quarantined`).

    An intact checkpoint that fails to load raises CheckpointError: falling back past it
    would silently throw away training.
    """
    for marker in reversed(list_checkpoints(directory)):
        try:
            return marker, load(marker, map_location, full)
        except CorruptCheckpoint as e:
            where = quarantine(marker)
            log.warning("checkpoint.corrupt", step=marker.step, error=str(e), moved_to=str(where),
                        note="falling back to the previous checkpoint")
            if quarantined is not None:
                quarantined.append(marker.step)
    damaged = sorted((directory / "corrupt").glob(f"{layout.PREFIX}*{layout.MARKER_SUFFIX}"))
    if damaged:  # never start again at step 0 silently when training existed
        raise CheckpointError(f"{directory}: no intact checkpoint left ({len(damaged)} damaged, in corrupt/); "
                              f"to start over from step 0 on purpose, move {directory / 'corrupt'} aside")
    return None


def prune(directory: Path, keep: int) -> list[int]:
    """Delete all but what layout.kept keeps (the newest `keep` and the best); returns the steps removed."""
    markers = list_checkpoints(directory)
    keeping = layout.kept(markers, keep)
    removed = []
    for junk in layout.garbage_markers(directory):  # unreadable markers commit nothing: out of the way
        (directory / "uncommitted").mkdir(exist_ok=True)
        os.replace(junk, directory / "uncommitted" / junk.name)
    for m in markers:
        if m.step not in keeping:
            m.marker.unlink(missing_ok=True)  # un-commit first
            if m.path.is_dir():
                shutil.rmtree(m.path)
            else:
                m.path.unlink(missing_ok=True)
            removed.append(m.step)
    return removed


def _param_names(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> list[str]:
    """The optimizer's parameters, in its own order, by their names in the model."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def optimizer_by_index(osd: dict, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict:
    """A name-keyed optimizer state (torch.distributed.checkpoint's) as optimizer.load_state_dict takes it."""
    index = {n: i for i, n in enumerate(_param_names(optimizer, model))}
    return {"state": {index[n]: s for n, s in osd["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]}


def optimizer_by_name(osd: dict, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict:
    names = _param_names(optimizer, model)
    return {"state": {names[i]: s for i, s in osd["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in osd["param_groups"]]}


def check_weights(marker: Marker, weights: Any, expected: dict[str, torch.Tensor]) -> None:
    """CheckpointError, one line, unless `weights` fit `expected` (a model's state_dict) name for
    name and shape for shape and are all finite: checked before any work is spent on them (an
    intact checkpoint of another model, or one whose training diverged into NaN)."""
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{marker.path}: field 'model' is not a table of tensors")
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{marker.path}: not this config's model ({len(missing)} weights missing, e.g. "
                              f"{(missing or ['-'])[0]}; {len(unexpected)} unknown, e.g. {(unexpected or ['-'])[0]})")
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{marker.path}: weight {name} has shape {tuple(tensor.shape)}, this config's "
                                  f"model has {tuple(expected[name].shape)}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{marker.path}: weight {name} holds NaN or infinity (the training diverged "
                                  f"before step {marker.step}); use an earlier checkpoint")


def committed(directory: Path, path: Path) -> Marker:
    """The marker of the committed checkpoint at `path` in `directory` (a person's --checkpoint)."""
    target = Path(path).resolve()
    for marker in list_checkpoints(directory):
        if marker.path.resolve() == target:
            return marker
    raise CheckpointError(f"{path}: not a committed checkpoint in {directory} (see `ls {directory}`)")
