"""checkpoints/corrupt/refused.json against whatever can be planted there (issue 18's hostile cases):
the restore reads it before each download, so it never blocks, never raises and never grows past
its KEEP; what cannot be read is no refusal (one more download, never a checkpoint lost)."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest

from daemon.common import refused

DIGEST = "ab" * 32


def plant(path, kind: str) -> None:
    if kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "deep":
        path.write_text('{"refused": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif kind == "wrong types":
        path.write_text(json.dumps({"refused": [None, "x", 5, {"sha256": 5}, {"sha256": ["a"]}, {"step": "1"}]}))
    elif kind == "a million entries":  # 14 MB: under the read limit, so it is parsed
        path.write_text(json.dumps({"refused": [{"sha256": ""}] * 10**6}, separators=(",", ":")))
    elif kind == "over the read limit":
        path.write_text(json.dumps({"refused": [{"sha256": DIGEST}] * 250_000}))


def bounded(fn, seconds: float):
    """fn() on a thread, which must end within `seconds` (a FIFO would block a plain read for ever)."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} still running after {seconds} s"
    return out[0] if out else None


@pytest.mark.parametrize("kind", ["garbage", "fifo", "dev-zero", "directory", "deep", "wrong types",
                                  "a million entries", "over the read limit"])
def test_a_planted_record_never_blocks_or_raises_and_is_rewritten_small(tmp_path, kind):
    path = tmp_path / "corrupt" / refused.RECORD
    path.parent.mkdir()
    plant(path, kind)
    began = time.monotonic()
    found = bounded(lambda: refused.digests(tmp_path), 60)
    assert found is not None and DIGEST not in found
    bounded(lambda: refused.record(tmp_path, 40, DIGEST, "does not load"), 60)
    assert time.monotonic() - began < 60
    if kind == "directory":  # nothing can be written there: one more download, never a failed start
        assert refused.digests(tmp_path) == set()
        return
    assert path.is_file() and not path.is_symlink() and os.path.getsize(path) < 64 * 1024
    assert refused.digests(tmp_path) == {DIGEST} | ({""} if kind == "a million entries" else set())


def test_the_record_keeps_only_the_newest_refusals(tmp_path):
    for step in range(refused.KEEP + 10):
        refused.record(tmp_path, step, f"{step:064x}", "x" * 10_000)
    entries = json.loads((tmp_path / "corrupt" / refused.RECORD).read_text())["refused"]
    assert len(entries) == refused.KEEP and entries[-1]["step"] == refused.KEEP + 9
    assert all(len(e["reason"]) <= 300 for e in entries)
