"""S3 objects onto disk by parallel ranged GETs, each object's digest computed as its bytes arrive.

Why not boto3's TransferConfig (s3transfer, which does parallel ranged GETs too): it hands out
no bytes (its callbacks get counts), so the digest would be a second pass over the file; a part
that drips passes every per-read timeout and s3transfer waits for it for ever; and its thread pool
is joined at interpreter exit, so a daemon stopped mid-restore waited for the whole download.

Each part is one GET of `bytes=a-b` with If-Match on the ETag the object was sized by (an object
replaced half-way is refused, never stitched from two), on a daemon thread of its own, with a
deadline: the call's plus a second a MiB, as every transfer here. A part past its deadline is
abandoned (its socket shut, so the thread ends) and asked again, PART_TRIES times in all. An
abandoned GET writes nothing more: each write is made under its attempt's lock while the attempt
is live, and abandoning takes that lock. Bytes go with pwrite to their offsets in a file whose
room is reserved first (a disk too small fails before a byte is fetched, not at 90 %); memory
holds one read a part. The digest of a marker's PIECES hash: each part's thread hashes its own
4 MiB pieces as they stream (parts are whole pieces). A plain SHA-256 goes in order, hashed by the
coordinating thread as contiguous parts complete, read back from the page cache just written.
"""
from __future__ import annotations

import errno
import hashlib
import os
import queue
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.checkpoints import PIECE, PIECES
from .s3_errors import MISSING, BadObject, error_code, unreadable

PART_BYTES = 16 << 20      # S3 serves ~50-100 MB/s a connection: 8 of these fill a 10 Gb/s link
PARTS_IN_FLIGHT = 8
PART_TRIES = 3             # the first GET of a part included
READ_BYTES = 1 << 20       # at most this much of one part in memory at a time
NOT_RESERVABLE = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS}


class _Abandoned(Exception):
    """Raised in an abandoned GET's thread at its next write: it ends there."""


class DiskError(OSError):
    """This disk could not take the bytes (full, quota, read-only): the bucket's copy is not at fault."""


@dataclass
class Target:
    """One object to one local path, as its marker describes it (`etag` from its HEAD)."""
    key: str
    path: Path
    size: int
    sha256: str
    scheme: str | None = None
    etag: str = ""


@dataclass(eq=False)
class _Attempt:
    """One GET of one part, on its own thread."""
    target: "_File"
    start: int
    end: int
    deadline: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    live: bool = True
    error: BaseException | None = None
    body: Any = None

    def write(self, data: bytes, at: int) -> None:
        with self.lock:
            if not self.live:
                raise _Abandoned()
            view = memoryview(data)
            try:
                while view.nbytes:
                    n = os.pwrite(self.target.fd, view, at)
                    view, at = view[n:], at + n
            except OSError as e:
                raise DiskError(e.errno, f"{e.strerror}: writing {self.target.t.path}") from None

    def piece(self, index: int, digest: bytes) -> None:
        with self.lock:
            if self.live:
                self.target.pieces[index] = digest

    def abandon(self) -> None:
        with self.lock:
            self.live = False
        sock = getattr(getattr(getattr(self.body, "_raw_stream", None), "connection", None), "sock", None)
        if sock is not None:   # wakes the thread out of a read that a drip would keep going for ever
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _File:
    """One target while it downloads: its file (room reserved), its parts, its digest so far."""

    def __init__(self, t: Target, part_bytes: int):
        self.t, self.by_pieces = t, t.scheme == PIECES
        step = max(PIECE, part_bytes // PIECE * PIECE) if self.by_pieces else max(1, part_bytes)
        self.parts = [(a, min(a + step, t.size)) for a in range(0, t.size, step)]
        self.pieces = [b""] * -(-t.size // PIECE)
        self.done: set[int] = set()          # the starts of the parts complete
        self.ordered, self.hashed = hashlib.sha256(), 0
        self.fd = os.open(t.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            reserve(self.fd, t.size, t.path)
        except BaseException:
            os.close(self.fd)
            raise

    def completed(self, start: int) -> None:
        """A part is all on disk: a plain SHA-256 takes in what is now contiguous from where it stands."""
        self.done.add(start)
        if self.by_pieces:
            return
        ends = dict(self.parts)
        while self.hashed in self.done:
            at, end = self.hashed, ends[self.hashed]
            while at < end:
                data = os.pread(self.fd, min(READ_BYTES, end - at), at)
                if not data:
                    raise DiskError(errno.EIO, f"{self.t.path}: short read at {at}")
                self.ordered.update(data)
                at += len(data)
            self.hashed = end

    def finish(self, where: str) -> None:
        digest = hashlib.sha256(b"".join(self.pieces)).hexdigest() if self.by_pieces else self.ordered.hexdigest()
        if digest != self.t.sha256:
            raise BadObject(f"{where}: SHA-256 does not match its marker")
        try:
            os.fsync(self.fd)
            os.fchmod(self.fd, 0o640)
        except OSError as e:
            raise DiskError(e.errno, f"{e.strerror}: {self.t.path}") from None

    def close(self) -> None:
        os.close(self.fd)


def reserve(fd: int, size: int, path: Path) -> None:
    """The file's room taken before a byte is fetched (a file system that cannot: sized only)."""
    if size == 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in NOT_RESERVABLE:
            raise DiskError(e.errno, f"{e.strerror}: no room for {size} bytes at {path}") from None
        os.ftruncate(fd, size)


class Download:
    """Targets fetched together, PARTS_IN_FLIGHT parts at a time, each verified; `run` raises
    BadObject (the bucket's bytes are not the marker's), DiskError, or what the bucket answered
    (TimeoutError, botocore's errors, ConnectionError) once a part has had its PART_TRIES."""

    def __init__(self, s3: Any, bucket: str, targets: list[Target], call_timeout_s: float, bytes_per_s: float,
                 part_bytes: int | None = None, in_flight: int | None = None):
        self.s3, self.bucket, self.targets, self.call_timeout_s = s3, bucket, targets, call_timeout_s
        self.bytes_per_s = bytes_per_s   # a part's deadline: the call's plus a second a MiB, as every transfer's
        self.part_bytes, self.in_flight = part_bytes or PART_BYTES, max(1, in_flight or PARTS_IN_FLIGHT)
        # A backstop over the parts' own deadlines: the room for each part's tries, and a MiB a second.
        self.limit = call_timeout_s * (PART_TRIES + 1) + sum(t.size for t in targets) / bytes_per_s
        self.finished: queue.Queue[_Attempt] = queue.Queue()

    def where(self, t: Target) -> str:
        return f"s3://{self.bucket}/{t.key}"

    def run(self) -> None:
        files: list[_File] = []
        try:
            for t in self.targets:   # every file's room first: a disk too small fails before any GET
                files.append(_File(t, self.part_bytes))
            self._fetch(files)
            for f in files:
                f.finish(self.where(f.t))
        finally:
            for f in files:
                f.close()

    def _fetch(self, files: list[_File]) -> None:
        todo = deque((f, a, b) for f in files for a, b in f.parts)
        tries: dict[tuple[int, int], int] = {}
        live: set[_Attempt] = set()
        deadline = time.monotonic() + self.limit
        try:
            while todo or live:
                while todo and len(live) < self.in_flight:
                    f, a, b = todo.popleft()
                    tries[id(f), a] = tries.get((id(f), a), 0) + 1
                    live.add(self._start(f, a, b))
                ended: list[tuple[_Attempt, BaseException]] = []
                try:
                    done = self.finished.get(timeout=max(0.0, min([x.deadline for x in live] + [deadline])
                                                         - time.monotonic()))
                except queue.Empty:
                    done = None
                if done is not None and done in live:
                    live.discard(done)
                    if done.error is None:
                        done.target.completed(done.start)
                    else:
                        ended.append((done, done.error))
                now = time.monotonic()
                if now >= deadline:
                    raise TimeoutError(f"s3.download: no answer in {self.limit:g} s")
                for late in [x for x in live if now >= x.deadline]:
                    live.discard(late)
                    late.abandon()
                    ended.append((late, TimeoutError(f"{self.where(late.target.t)} bytes {late.start}-{late.end - 1}: "
                                                     f"no answer in {self.part_limit(late.end - late.start):g} s")))
                for attempt, error in ended:
                    if (end := self._end(attempt, error, tries[id(attempt.target), attempt.start])) is not None:
                        raise end
                    todo.appendleft((attempt.target, attempt.start, attempt.end))
        finally:
            for x in live:
                x.abandon()

    def part_limit(self, size: int) -> float:
        return self.call_timeout_s + size / self.bytes_per_s

    def _start(self, f: _File, start: int, end: int) -> _Attempt:
        attempt = _Attempt(f, start, end, time.monotonic() + self.part_limit(end - start))
        threading.Thread(target=self._get, args=(attempt,), name="s3-part", daemon=True).start()
        return attempt

    def _end(self, a: _Attempt, e: BaseException, tries: int) -> BaseException | None:
        """What ends the download after this failed GET, or None to ask for the part again."""
        where = self.where(a.target.t)
        if isinstance(e, (BadObject, DiskError)):
            return e
        if error_code(e) == "PreconditionFailed":
            return BadObject(f"{where}: changed in the bucket while it downloaded (no longer ETag {a.target.t.etag})")
        if error_code(e) in MISSING:
            return BadObject(f"{where}: gone from the bucket while it downloaded")
        if error_code(e) == "InvalidRange":  # an answer about the object, not an outage: never waited for
            return BadObject(f"{where}: holds fewer than {a.target.t.size} bytes (bytes {a.start}-{a.end - 1} "
                             "are past its end), not what its marker and HEAD say")
        if tries < PART_TRIES:
            return None
        if isinstance(e, TimeoutError):
            return TimeoutError(f"{e} ({tries} tries)")
        if unreadable(e):
            return e
        return ConnectionError(f"{where} bytes {a.start}-{a.end - 1}: {type(e).__name__}: {e} ({tries} tries)")

    def _get(self, a: _Attempt) -> None:
        """One part's GET, on its own thread: its bytes to their offsets, its pieces hashed."""
        f, want = a.target, a.end - a.start
        try:
            r = self.s3.get_object(Bucket=self.bucket, Key=f.t.key, Range=f"bytes={a.start}-{a.end - 1}",
                                   **({"IfMatch": f.t.etag} if f.t.etag else {}))
            a.body = r["Body"]
            if r.get("ContentLength") != want:
                raise BadObject(f"{self.where(f.t)} bytes {a.start}-{a.end - 1}: {r.get('ContentLength')} bytes "
                                f"arrived, the range holds {want}")
            raw = a.body._raw_stream   # urllib3's: read1 returns what one read brought, so a drip cannot hold it
            at, h = a.start, None
            while at < a.end and (data := raw.read1(min(READ_BYTES, a.end - at))):
                a.write(data, at)
                h = self._hash(a, h, data, at) if f.by_pieces else None
                at += len(data)
            if at != a.end:
                raise ConnectionError(f"{self.where(f.t)} bytes {a.start}-{a.end - 1}: the connection ended "
                                      f"after {at - a.start} bytes")
        except BaseException as e:   # handed to the coordinating thread
            a.error = e
            if a.body is not None:
                a.body.close()
        finally:
            self.finished.put(a)

    @staticmethod
    def _hash(a: _Attempt, h: Any, data: bytes, at: int) -> Any:
        """A part's bytes into its pieces' hashers; a piece's digest is kept once it is whole."""
        view = memoryview(data)
        while view.nbytes:
            index, inner = divmod(at, PIECE)
            if inner == 0:
                h = hashlib.sha256()
            take = min(PIECE - inner, view.nbytes)
            h.update(view[:take])
            view, at = view[take:], at + take
            if at % PIECE == 0 or at == a.target.t.size:
                a.piece(index, h.digest())
        return h
