"""The checkpoint layout, without torch: the one place that knows how checkpoints are named,
committed, ranked and checked. The worker, the supervisor, the S3 mirror, evaluate and export
all read it from here.

`step_00001000.pt` is committed by its marker `step_00001000.json` (size, SHA-256, step, and
the validation loss measured at that very step, if any). A checkpoint exists only once its
marker does, so "newest" is the highest valid marker. A marker is trusted as little as a
bucket object: its step must match its name and its `file` must be the .pt beside it.

A sharded checkpoint (FSDP: one file per process, written by torch.distributed.checkpoint) is
the directory `step_00001000.dcp/`, committed the same way by its marker, whose `manifest` names
every file in it with its size and SHA-256, and whose `sha256` is the hash of that manifest.

Which checkpoints this disk's trainer wrote itself is noted in `written-here.json` (not a step_
name, so never mirrored or restored): one the bucket brought back, or anyone planted, is not in
it, and the trainer trusts it less (trainer/worker/checkpoint.py's load_latest).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import DIR_MODE, loads, read_bytes, write_json_atomic

PREFIX = "step_"
MARKER_SUFFIX = ".json"
DATA_SUFFIX = ".pt"
SHARDED_SUFFIX = ".dcp"
_NAME = re.compile(r"^step_(\d{8,})$")
CHUNK = 1 << 22


def stem(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def data_path(directory: Path, step: int) -> Path:
    return directory / f"{stem(step)}{DATA_SUFFIX}"


def sharded_path(directory: Path, step: int) -> Path:
    return directory / f"{stem(step)}{SHARDED_SUFFIX}"


def marker_path(directory: Path, step: int) -> Path:
    return directory / f"{stem(step)}{MARKER_SUFFIX}"


def step_of(name: str) -> int | None:
    """The step a checkpoint file name stands for (`step_00001000.pt` -> 1000), else None."""
    base = name.rsplit(".", 1)[0] if "." in name else name
    m = _NAME.match(base)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Marker:
    step: int
    path: Path            # the .pt, or the .dcp directory of a sharded checkpoint
    meta: dict[str, Any]  # the marker's JSON

    @property
    def val_loss(self) -> float | None:
        # Only a validation run at this very step ranks a checkpoint as "best".
        v = self.meta.get("val_loss")
        if self.meta.get("val_step") != self.step or not isinstance(v, (int, float)) or isinstance(v, bool):
            return None
        return float(v) if v == v else None  # NaN never ranks

    @property
    def sharded(self) -> bool:
        return self.path.suffix == SHARDED_SUFFIX

    @property
    def marker(self) -> Path:
        return self.path.with_suffix(MARKER_SUFFIX)


def read_marker(path: Path) -> Marker | None:
    """One marker, checked: valid JSON object, step matching its name, `file` the .pt beside it."""
    step = step_of(path.name)
    if step is None or path.suffix != MARKER_SUFFIX:
        return None
    try:
        # Bounded, and a FIFO or a device planted here is refused, never waited on or read for ever
        # (too deeply nested is bad JSON too).
        meta = loads(read_bytes(path))
    except (OSError, ValueError):
        return None
    return parse_marker(meta, step, path.parent)


def parse_marker(meta: Any, step: int, directory: Path) -> Marker | None:
    """A marker's JSON (from disk or from a bucket) checked against the step its name says."""
    if not isinstance(meta, dict) or type(meta.get("step")) is not int or meta["step"] != step:
        return None  # 60.0 or true is not step 60 or 1
    file = meta.get("file", f"{stem(step)}{DATA_SUFFIX}")
    sharded = file == f"{stem(step)}{SHARDED_SUFFIX}"
    if file != f"{stem(step)}{DATA_SUFFIX}" and not sharded:
        return None  # a marker may not point anywhere but at its own .pt or .dcp
    if type(meta.get("bytes")) is not int or meta["bytes"] < 0 or not isinstance(meta.get("sha256"), str):
        return None
    if meta.get("hash") not in HASHES or (sharded and meta.get("hash") is not None):
        return None  # a hash this version cannot check (a sharded marker hashes its manifest)
    if sharded and not _valid_manifest(meta.get("manifest")):
        return None
    return Marker(step, (sharded_path if sharded else data_path)(directory, step), meta)


def commit(directory: Path, step: int, meta: dict[str, Any]) -> None:
    """Commit checkpoint `step` (its bytes already in place) by writing its marker; first noted as
    written here, so that every committed checkpoint of ours is known as ours."""
    record_own(directory, step, meta["sha256"])
    write_json_atomic(marker_path(directory, step), meta)


OWN = "written-here.json"
OWN_LIMIT = 1 << 20  # a few dozen bytes a checkpoint: anything larger is not ours


def _read_own(directory: Path) -> dict[str, str]:
    try:
        own = loads(read_bytes(directory / OWN, OWN_LIMIT))
    except (OSError, ValueError):
        return {}  # unreadable: nothing is known as ours, so nothing is trusted more
    return {k: v for k, v in own.items() if isinstance(v, str)} if isinstance(own, dict) else {}


def record_own(directory: Path, step: int, sha256: str) -> None:
    """Note that this process wrote checkpoint `step` with this digest; the notes of checkpoints
    no longer committed as written are dropped, so the file stays as small as the directory."""
    committed = {str(m.step): m.meta["sha256"] for m in list_checkpoints(directory)}
    own = {k: v for k, v in _read_own(directory).items() if committed.get(k) == v}
    write_json_atomic(directory / OWN, {**own, str(step): sha256})


def is_own(marker: Marker) -> bool:
    """Whether this disk's trainer wrote the bytes `marker` commits (not the bucket, not anyone else)."""
    return _read_own(marker.path.parent).get(str(marker.step)) == marker.meta.get("sha256")


def list_checkpoints(directory: Path) -> list[Marker]:
    """Committed checkpoints, oldest first (unreadable or inconsistent markers are skipped)."""
    try:
        candidates = [p for p in directory.glob(f"{PREFIX}*{MARKER_SUFFIX}") if not p.name.startswith(".")]
    except OSError:
        return []
    return sorted((m for p in candidates if (m := read_marker(p)) is not None), key=lambda m: m.step)


def garbage_markers(directory: Path) -> list[Path]:
    """Marker-named files that are not valid markers: never a checkpoint, safe to remove."""
    try:
        names = list(directory.glob(f"{PREFIX}*{MARKER_SUFFIX}"))
    except OSError:
        return []
    return [p for p in names if read_marker(p) is None and step_of(p.name) is not None]


def newest(directory: Path) -> Marker | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def best(directory: Path) -> Marker | None:
    return best_of(list_checkpoints(directory))


def best_of(markers: list[Marker]) -> Marker | None:
    """The lowest validation loss measured at its own step; ties go to the later step."""
    ranked = [m for m in markers if m.val_loss is not None]
    return min(ranked, key=lambda m: (m.val_loss, -m.step)) if ranked else None


def kept(markers: list[Marker], keep: int) -> set[int]:
    """The steps a prune keeps: the newest `keep` and the best (local directory and bucket alike)."""
    steps = {m.step for m in markers[-keep:]} if keep > 0 else set()
    top = best_of(markers)
    if top is not None:
        steps.add(top.step)
    return steps


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


# A marker's `hash`: how its `sha256` was computed. Absent (older markers) or "sha256": the
# file's SHA-256. PIECES: the SHA-256 of the concatenated SHA-256 digests of the file's 4 MiB
# pieces. Same integrity, but the pieces hash on every core at once, where one SHA-256 is one
# core's 1-2 GB/s: slower than a local NVMe disk, so it set the speed of a save.
PIECE = CHUNK
PIECES = "sha256-pieces-4MiB"
HASHES = (None, "sha256", PIECES)


def hash_threads() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0))))


class PieceHash:
    """The PIECES digest of a byte stream fed in order. `split` cuts each write at piece
    boundaries into (piece's hasher, bytes) jobs: no two jobs of one write share a hasher, so they
    can run in parallel; the caller finishes them before the next write (a piece can go on there)."""

    def __init__(self) -> None:
        self.pieces: list[Any] = []
        self.size = 0

    def split(self, data: Any) -> list[tuple[Any, memoryview]]:
        view, jobs, at = memoryview(data).cast("B"), [], 0
        while at < view.nbytes:
            index, offset = divmod(self.size, PIECE)
            if index == len(self.pieces):
                self.pieces.append(hashlib.sha256())
            take = min(PIECE - offset, view.nbytes - at)
            jobs.append((self.pieces[index], view[at:at + take]))
            at, self.size = at + take, self.size + take
        return jobs

    def hexdigest(self) -> str:
        return hashlib.sha256(b"".join(p.digest() for p in self.pieces)).hexdigest()


def digest_file(path: Path, scheme: str | None = None) -> str:
    """The file's digest as a marker with this `hash` records it (pieces read and hashed on
    hash_threads() threads)."""
    if scheme in (None, "sha256"):
        return sha256_file(path)
    if scheme != PIECES:
        raise ValueError(f"unknown hash {scheme!r}")
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size

        def piece(i: int) -> bytes:
            return hashlib.sha256(os.pread(fd, PIECE, i * PIECE)).digest()

        with ThreadPoolExecutor(hash_threads(), thread_name_prefix="sha256") as pool:
            digests = list(pool.map(piece, range((size + PIECE - 1) // PIECE)))
    finally:
        os.close(fd)
    return hashlib.sha256(b"".join(digests)).hexdigest()


def _valid_manifest(manifest: Any) -> bool:
    return isinstance(manifest, dict) and bool(manifest) and all(
        isinstance(name, str) and "/" not in name and name not in ("", ".", "..") and isinstance(entry, dict)
        and type(entry.get("bytes")) is int and entry["bytes"] >= 0 and isinstance(entry.get("sha256"), str)
        for name, entry in manifest.items())


def manifest_of(directory: Path) -> dict[str, dict[str, Any]]:
    """Every file of a sharded checkpoint directory (flat, as torch.distributed.checkpoint writes
    it): name -> {bytes, sha256}."""
    return {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(directory.iterdir()) if p.is_file()}


def manifest_sha256(manifest: dict[str, dict[str, Any]]) -> str:
    """What a sharded checkpoint's marker commits: the hash of its manifest, in one canonical form."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def verify_sharded(marker: Marker) -> str | None:
    manifest = marker.meta["manifest"]
    if manifest_sha256(manifest) != marker.meta.get("sha256"):
        return f"{marker.marker}: its manifest does not match its SHA-256 (damaged or edited)"
    if not marker.path.is_dir():
        return f"{marker.path}: missing (its marker exists)"
    extra = sorted(p.name for p in marker.path.iterdir() if p.name not in manifest)
    if extra:
        return f"{marker.path}: holds files its marker does not list: {', '.join(extra)}"
    for name, entry in manifest.items():
        path = inside(marker.path, name)
        if path is None or not path.is_file():
            return f"{marker.path / name}: missing (its marker lists it)"
        if path.stat().st_size != entry["bytes"]:
            return f"{path}: size is {path.stat().st_size} bytes, its marker says {entry['bytes']}"
        if sha256_file(path) != entry["sha256"]:
            return f"{path}: SHA-256 does not match its marker (damaged on disk)"
    return None


def verify(marker: Marker) -> str | None:
    """None if the checkpoint's bytes are the ones its marker committed, else what is wrong."""
    if marker.sharded:
        return verify_sharded(marker)
    if not marker.path.is_file():
        return f"{marker.path}: missing or not a file (its marker exists)"
    size = marker.path.stat().st_size
    if size != marker.meta.get("bytes"):
        return f"{marker.path}: size is {size} bytes, its marker says {marker.meta.get('bytes')}"
    if digest_file(marker.path, marker.meta.get("hash")) != marker.meta.get("sha256"):
        return f"{marker.path}: SHA-256 does not match its marker (damaged on disk)"
    return None


def set_aside(dest: Path, *paths: Path) -> Path:
    """Move `paths` (a marker and its bytes, or one file) into `dest` under their names, or, where
    one is taken, all under one number (step_00000020.1.pt, .1.json): nothing there is replaced."""
    dest.mkdir(mode=DIR_MODE, exist_ok=True)
    for n in itertools.count():
        names = [p.name if n == 0 else p.name.replace(".", f".{n}.", 1) for p in paths]
        if not any(os.path.lexists(dest / name) for name in names):
            break
    for path, name in zip(paths, names):  # the marker first: it is what makes a checkpoint "committed"
        if os.path.lexists(path):
            os.replace(path, dest / name)
    return dest


def inside(directory: Path, name: str) -> Path | None:
    """`directory/name` if it stays inside `directory` (no `..`, no absolute path, no symlink
    out), else None. For every path taken from a marker, a bucket key or another process."""
    if not name or "\x00" in name:
        return None
    base = directory.resolve()
    target = (base / name).resolve()
    return target if target != base and target.is_relative_to(base) else None
