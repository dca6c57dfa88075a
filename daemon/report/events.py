"""One TensorBoard event file's scalars, read for the report's plots: fast, bounded in time and
points, and only the tags the plots draw.

TensorBoard's EventAccumulator turns every event into its data model (2.6 s per 100,000 events
here): the supervisor's file of a 35-day run on 8 GPUs holds 7.6 million events, past the report
child's 180 s. Here the records are split in large reads (a u64 length, its CRC, the event, its
CRC), an event that cannot hold a wanted tag is skipped by its bytes, and the rest are decoded
with TensorBoard's own proto: 0.12 s per 100,000. The CRCs are not checked: a damaged record
reads as a damaged event, which stops the file where it is, as a torn tail does.
"""
from __future__ import annotations

import math
import os
import re
import stat
import struct
import time
from pathlib import Path

Point = tuple[int, float, float]   # (step, wall time, value)

MAX_POINTS = 4000                  # per tag and file: evenly thinned past it, the newest point kept
MAX_RECORD = 1 << 20               # a scalar event is ~60 bytes: a larger length is damage
CHUNK = 16 << 20
_LENGTH = struct.Struct("<Q")


GPU_TAG = re.compile(r"gpu\d{0,3}/util_pct")   # daemon/ports/gpu.py's: all GPUs, and each by its index


def wanted(tag: str) -> bool:
    """The tags the plots draw: the trainer's losses, the supervisor's spend and GPU utilisation.
    The GPU plot names a curve by its tag: one planted as `gpu$\\nosuchcmd$/util_pct` was parsed as
    mathtext and failed the whole plot."""
    return tag in ("train/loss", "val/loss", "cost/total_usd") or GPU_TAG.fullmatch(tag) is not None


class Thinned:
    """At most about MAX_POINTS of a series, evenly spaced (every `stride`-th), the newest kept."""

    def __init__(self) -> None:
        self.points: list[Point] = []
        self.stride, self.seen, self.last = 1, 0, None

    def add(self, point: Point) -> None:
        if self.seen % self.stride == 0:
            self.points.append(point)
            if len(self.points) >= 2 * MAX_POINTS:
                self.points, self.stride = self.points[::2], self.stride * 2
        self.seen, self.last = self.seen + 1, point

    def result(self) -> list[Point]:
        return self.points + ([self.last] if self.points and self.points[-1] is not self.last else [])


def _records(path: Path):
    """Each record's event bytes, in order, until the end, a torn tail or a damaged length."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO swapped in since the stat: refused, not waited on
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file")
        data, pos = b"", 0
        while True:
            left = len(data) - pos
            if left >= 12 and (n := _LENGTH.unpack_from(data, pos)[0]) > MAX_RECORD:
                raise ValueError(f"a record of {n} bytes at {f.tell() - left}: damaged")
            if left < 12 or left < 16 + n:
                more = f.read(CHUNK)
                if not more:
                    return  # the end, or a record still being written
                data, pos = data[pos:] + more, 0
                continue
            yield data[pos + 12:pos + 12 + n]
            pos += 16 + n


def _value(v) -> float | None:
    if v.HasField("simple_value"):
        return v.simple_value
    vals = list(v.tensor.float_val) or list(v.tensor.double_val)  # a newer writer's scalar as a tensor
    return vals[0] if len(vals) == 1 else None


def read_file(path: Path, deadline: float) -> tuple[dict[str, list[Point]], str | None]:
    """{tag: points} of the wanted tags, and why the file was read only in part (None when whole)."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto.event_pb2 import Event

    series: dict[str, Thinned] = {}
    why = None
    try:
        for i, raw in enumerate(_records(path)):
            if i % 65536 == 0 and time.monotonic() > deadline:
                why = "read in part: past the time the report gives the event files"
                break
            if b"util_pct" not in raw and b"loss" not in raw and b"total_usd" not in raw:  # wanted()'s tags
                continue
            event = Event.FromString(raw)
            for v in event.summary.value:
                value = _value(v) if wanted(v.tag) else None
                if value is not None and math.isfinite(value) and math.isfinite(event.wall_time):
                    series.setdefault(v.tag, Thinned()).add((int(event.step), float(event.wall_time), float(value)))
    except (ValueError, DecodeError, OSError) as e:  # DecodeError is a ValueError in some protobufs
        why = f"read in part ({type(e).__name__}: {str(e)[:120]})"
    return {tag: s.result() for tag, s in series.items()}, why
