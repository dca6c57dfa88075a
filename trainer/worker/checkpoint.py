"""Step checkpoints that commit, the torch half: save, load, quarantine, prune.

Naming, markers, "newest", "best" and the SHA-256 check live in daemon/common/checkpoints.py
(torch-free: the supervisor, the S3 mirror, evaluate and export read the same layout). Here:
the .pt is written to a temp name, fsynced and renamed, its SHA-256 computed on the way out;
then the marker (size, hash, step, losses) is written the same way. torch.load does not notice
flipped bytes, so loading verifies size and hash first; a damaged checkpoint is moved to
corrupt/ with a warning and the previous one is used. Kept: the last `keep` plus the best.

Nothing is unpickled by a general unpickler: a .pt is loaded weights-only, and a sharded one's
DCP metadata through an allow-list (a checkpoint the S3 restore brought down is any bytes anyone
with the bucket's role wrote). What is set aside (corrupt/, uncommitted/) is never overwritten.
"""
from __future__ import annotations

import contextlib
import functools
import pickle
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from daemon.common import checkpoints as layout
from daemon.common import refused
from daemon.common.atomic import write_atomic_with
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
        elif p.is_file() and orphan:
            # A kill between the rename and the marker, or a marker someone deleted: maybe intact, so
            # kept beside any kept before, never deleted (nothing tells the two apart, and the first
            # needs a kill inside two small JSON writes: a kill storm leaves a few at most).
            layout.set_aside(directory / "uncommitted", p)
            removed.append(p.name)
    return removed


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


def save(directory: Path, step: int, payload: dict, meta: dict, clock: Clock | None = None,
         on_written: Any = None) -> Marker:
    """Commit one checkpoint atomically; returns its marker. `on_written()`, when given, runs once
    the bytes are in the temp file, before the fsync and the rename (a test's pause)."""
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
        if on_written is not None:
            on_written()
        return w

    with ThreadPoolExecutor(layout.hash_threads(), thread_name_prefix="sha256") as pool:
        w = write_atomic_with(path, write)
    meta = {"step": step, "file": path.name, "bytes": w.hash.size, "sha256": w.hash.hexdigest(), "hash": layout.PIECES,
            "format": FORMAT, "time": iso((clock or Clock()).now()), **meta}
    layout.commit(directory, step, meta)
    return Marker(step, path, meta)


def load(marker: Marker, map_location: str | torch.device = "cpu", full: bool = True) -> dict:
    """Verify and load one checkpoint (a sharded one: whole, or with full=False only what is not
    sharded, for ranks that load their shards themselves).

    CorruptCheckpoint if its bytes are damaged or missing; CheckpointError if intact bytes do
    not load (a pickle that names code, another step's payload, or a code or version problem).
    """
    wrong = layout.verify(marker)
    if wrong is not None:
        raise CorruptCheckpoint(wrong)
    try:
        with warnings.catch_warnings(action="ignore", category=UserWarning):  # torch's, on a pickle it refuses
            if marker.sharded:
                payload = torch.load(marker.path / EXTRA, map_location=map_location, weights_only=True)
                reader = _safe_dcp()[0](marker.path)
                reader.read_metadata()  # refused here, in one line (torch's loader would log a traceback), and
                payload.update(_load_whole(reader) if full else {})  # before the ranks load their shards
            else:
                payload = torch.load(marker.path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{marker.path}: intact (SHA-256 matches) but does not load ({_why(e)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("step") != marker.step:
        raise CheckpointError(f"{marker.path}: not a format-{FORMAT} checkpoint of step {marker.step}")
    return payload


def _why(e: BaseException) -> str:
    """The line of an error that says what is wrong (not weights_only's advice to turn it off)."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip() and not x.strip().startswith(_ADVICE)]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _load_whole(reader: Any) -> dict:
    """A sharded checkpoint's model and optimizer, whole, in this one process (no process group):
    what a single process, evaluate and export load. The optimizer's state is keyed by name."""
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict = {}
    try:
        _load_state_dict(state, storage_reader=reader, planner=_safe_dcp()[2](), no_dist=True)
    except CheckpointException as e:  # a BaseException, holding each rank's: the first, for load() to catch
        raise next(iter(e.failures.values()))[0] from None
    return {"model": state["model"], "optimizer": state["optimizer"], "optimizer_keys": "fqn"}


def dcp_load_args(path: Path) -> dict:
    """What torch.distributed.checkpoint.load needs to read a sharded checkpoint running nothing in it."""
    return {"storage_reader": _safe_dcp()[0](path), "planner": _safe_dcp()[1]()}


# Every global a real save of our model and its AdamW state pickles into DCP's `.metadata`
# (tests/trainer/worker/test_checkpoint_trust.py loads one), and the dtypes: constructors of plain
# records. Whatever else a `.metadata` names (os.system, builtins.eval...) is refused.
_METADATA_GLOBALS = {
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) not in _METADATA_GLOBALS and not dtype:
            raise pickle.UnpicklingError(f".metadata names {module}.{name}, no part of DCP metadata: refused, not run")
        return super().find_class(module, name)


@functools.cache
def _safe_dcp() -> tuple[type, type, type]:
    """torch.distributed.checkpoint's reader and its two load planners, made safe: the reader
    unpickles `.metadata` (torch: pickle.load) through the allow-list and reads items only from
    files of the checkpoint's own directory; the planners load the non-tensor items, optimizer
    hyperparameters, weights-only (torch: weights_only=False), as torch already loads the tensors."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
            with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
                raise pickle.UnpicklingError(f".metadata holds a {type(metadata).__name__}, not DCP metadata")
            for item in metadata.storage_data.values():  # no stream transforms (decompressors): we write none
                name = getattr(item, "relative_path", None)
                if not isinstance(name, str) or "/" in name or layout.inside(Path(self.path), name) is None \
                        or getattr(item, "transform_descriptors", None):
                    raise pickle.UnpicklingError(f".metadata reads an item from {name!r}, outside the checkpoint"
                                                 " or through a transform")
            if getattr(metadata, "storage_meta", None) is None:  # as torch's read_metadata does
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class WeightsOnlyBytes:
        def load_bytes(self, read_item: Any, value: Any) -> None:
            item = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], item)
            else:
                self.state_dict[read_item.dest_index.fqn] = item

    return (Reader, type("LoadPlanner", (WeightsOnlyBytes, DefaultLoadPlanner), {}),
            type("WholeLoadPlanner", (WeightsOnlyBytes, _EmptyStateDictLoadPlanner), {}))


def quarantine(marker: Marker) -> Path:
    """Move a damaged checkpoint (and its marker) into corrupt/, keeping the bytes for a look."""
    return layout.set_aside(marker.path.parent / QUARANTINE, marker.marker, marker.path)


def load_latest(directory: Path, log: Any, map_location: str | torch.device = "cpu",
                full: bool = True, quarantined: list[int] | None = None) -> tuple[Marker, dict] | None:
    """The newest checkpoint that verifies and loads; damaged newer ones are quarantined with a
    warning (their steps appended to `quarantined`: an S3 mirror may hold them intact), and so
    are intact ones this disk's trainer did not write that do not load (planted or restored: the
    bucket holds the same bytes, so they are not appended).

    An intact checkpoint of our own that fails to load raises CheckpointError: a version problem,
    and falling back past it would silently throw away training.
    """
    for marker in reversed(list_checkpoints(directory)):
        try:
            return marker, load(marker, map_location, full)
        except CorruptCheckpoint as e:
            log.warning("checkpoint.corrupt", step=marker.step, error=str(e), moved_to=str(quarantine(marker)),
                        note="falling back to the previous checkpoint")
            if quarantined is not None:
                quarantined.append(marker.step)
        except CheckpointError as e:
            if layout.is_own(marker):
                raise CheckpointError(f"{e}; this trainer wrote it, so amapiano-train or torch changed: "
                                      "it is kept and nothing older is trained on in its place") from None
            refused.record(directory, marker.step, marker.meta.get("sha256"), str(e))  # not fetched again
            log.warning("checkpoint.refused", step=marker.step, error=str(e), moved_to=str(quarantine(marker)),
                        note="not written here (restored from the bucket?): falling back to the previous checkpoint")
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
        layout.set_aside(directory / "uncommitted", junk)
    for m in markers:
        if m.step not in keeping:
            m.marker.unlink(missing_ok=True)  # un-commit first
            if m.path.is_dir():
                shutil.rmtree(m.path)
            else:
                m.path.unlink(missing_ok=True)
            removed.append(m.step)
    return removed


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
