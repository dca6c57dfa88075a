"""Step checkpoints that commit: `step_00001000.pt` plus its marker `step_00001000.json`.

The .pt is written to a temp name, fsynced and renamed, its SHA-256 computed on the way out;
then the marker (size, hash, step, losses) is written the same way. A checkpoint exists only
once its marker does, so "latest" is the highest marker, and the supervisor finds it from file
names alone. torch.load does not notice flipped bytes, so loading checks size and hash first;
a damaged checkpoint is moved to corrupt/ with a warning and the previous one is used.
Kept: the last `keep` checkpoints plus the best by validation loss.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from daemon.common.atomic import write_atomic_with, write_json_atomic
from daemon.common.clock import Clock, iso

from daemon.common.checkpoints import Marker, best, list_checkpoints  # noqa: F401 - the torch-free half, re-exported

FORMAT = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the text names the file and what is wrong."""


class CorruptCheckpoint(CheckpointError):
    """The bytes on disk are not the bytes written (size or SHA-256 differs)."""


class _HashingWriter:
    """A write-only file that hashes what passes through it."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None  # torch's zip writer hides it behind an "enforce fail"

    def write(self, data) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.size += view.nbytes
        try:
            return self._f.write(view)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self._f.flush()


def _pt(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}.pt"


def clean_partial(directory: Path) -> list[str]:
    """Remove what a kill mid-write left: temp files, and .pt files whose marker never came."""
    removed = []
    if not directory.exists():
        return removed
    for p in directory.iterdir():
        orphan = p.suffix == ".pt" and not p.with_suffix(".json").exists()
        if p.is_file() and (p.name.startswith(".") and p.name.endswith(".tmp") or orphan):
            p.unlink()
            removed.append(p.name)
    return removed


def save(directory: Path, step: int, payload: dict, meta: dict, clock: Clock | None = None) -> Marker:
    """Commit one checkpoint atomically; returns its marker."""
    directory.mkdir(parents=True, exist_ok=True)
    path = _pt(directory, step)
    payload = {"format": FORMAT, "step": step, **payload}

    def write(f):
        w = _HashingWriter(f)
        try:
            torch.save(payload, w)
        except Exception:
            if w.error is not None:  # say what really happened: "No space left on device", ...
                raise OSError(w.error.errno, f"{w.error.strerror} while writing checkpoint {path}") from None
            raise
        return w

    w = write_atomic_with(path, write)
    meta = {"step": step, "file": path.name, "bytes": w.size, "sha256": w.sha.hexdigest(),
            "format": FORMAT, "time": iso((clock or Clock()).now()), **meta}
    write_json_atomic(path.with_suffix(".json"), meta)
    return Marker(step, path, meta)


def _verify(marker: Marker) -> None:
    size = marker.path.stat().st_size
    if size != marker.meta.get("bytes"):
        raise CorruptCheckpoint(f"{marker.path}: size is {size} bytes, its marker says {marker.meta.get('bytes')}")
    sha = hashlib.sha256()
    with open(marker.path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha.update(chunk)
    if sha.hexdigest() != marker.meta.get("sha256"):
        raise CorruptCheckpoint(f"{marker.path}: SHA-256 does not match its marker (damaged on disk)")


def load(marker: Marker, map_location: str | torch.device = "cpu") -> dict:
    """Verify and load one checkpoint.

    CorruptCheckpoint if its bytes are damaged or missing; CheckpointError if intact bytes do
    not load (a code or version problem: the file is fine and must not be thrown away).
    """
    try:
        _verify(marker)
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{marker.path}: missing (its marker exists)") from None
    try:
        payload = torch.load(marker.path, map_location=map_location, weights_only=True)
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{marker.path}: intact (SHA-256 matches) but does not load with this "
                              f"version of amapiano-train/torch ({type(e).__name__}: {first_line})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("step") != marker.step:
        raise CheckpointError(f"{marker.path}: not a format-{FORMAT} checkpoint of step {marker.step}")
    return payload


def quarantine(marker: Marker) -> Path:
    """Move a damaged checkpoint (and its marker) into corrupt/, keeping the bytes for a look."""
    dest = marker.path.parent / "corrupt"
    dest.mkdir(exist_ok=True)
    marker_file = marker.path.with_suffix(".json")
    if marker_file.exists():
        os.replace(marker_file, dest / marker_file.name)  # first: it is what makes it "committed"
    if marker.path.exists():
        os.replace(marker.path, dest / marker.path.name)
    return dest


def load_latest(directory: Path, log: Any, map_location: str | torch.device = "cpu") -> tuple[Marker, dict] | None:
    """The newest checkpoint that verifies; damaged newer ones are quarantined with a warning.

    An intact checkpoint that fails to load raises CheckpointError: falling back past it
    would silently throw away training.
    """
    for marker in reversed(list_checkpoints(directory)):
        try:
            return marker, load(marker, map_location)
        except CorruptCheckpoint as e:
            where = quarantine(marker)
            log.warning("checkpoint.corrupt", step=marker.step, error=str(e), moved_to=str(where),
                        note="falling back to the previous checkpoint")
    return None


def prune(directory: Path, keep: int) -> list[int]:
    """Delete all but the newest `keep` checkpoints and the best by validation loss."""
    markers = list_checkpoints(directory)
    kept = {m.step for m in markers[-keep:]}
    ranked = [m for m in markers if m.val_loss is not None]
    if ranked:
        kept.add(min(ranked, key=lambda m: m.val_loss).step)
    removed = []
    for m in markers:
        if m.step not in kept:
            m.path.with_suffix(".json").unlink(missing_ok=True)  # un-commit first
            m.path.unlink(missing_ok=True)
            removed.append(m.step)
    return removed
