"""The checkpoint digest: 4 MiB pieces hashed in parallel, one answer however the bytes arrive."""
from __future__ import annotations

import hashlib
import json
import os
import random

import pytest

from daemon.common import checkpoints


def _blob(n: int) -> bytes:
    return random.Random(n).randbytes(n)


@pytest.mark.parametrize("size", [0, 1, checkpoints.PIECE - 1, checkpoints.PIECE, 3 * checkpoints.PIECE + 12345])
def test_streamed_in_any_cut_it_is_the_digest_of_the_file(tmp_path, size):
    blob = _blob(size)
    path = tmp_path / "f"
    path.write_bytes(blob)
    rng = random.Random(size)
    h, at = checkpoints.PieceHash(), 0
    while at < size:  # writes of every size: inside one piece, across two, several pieces at once
        n = rng.choice([1, 100, 70_000, checkpoints.PIECE - 3, 2 * checkpoints.PIECE + 7])
        for hasher, part in h.split(memoryview(blob)[at:at + n]):
            hasher.update(part)
        at += n
    want = hashlib.sha256(b"".join(hashlib.sha256(blob[i:i + checkpoints.PIECE]).digest()
                                   for i in range(0, size, checkpoints.PIECE))).hexdigest()
    assert h.hexdigest() == checkpoints.digest_file(path, checkpoints.PIECES) == want
    assert checkpoints.digest_file(path) == hashlib.sha256(blob).hexdigest()  # the plain scheme


def test_one_flipped_byte_anywhere_is_found_and_old_markers_still_verify(tmp_path):
    blob = _blob(2 * checkpoints.PIECE + 10)
    d = tmp_path / "ckpt"
    d.mkdir()
    data = checkpoints.data_path(d, 7)
    data.write_bytes(blob)
    for meta in ({"hash": checkpoints.PIECES, "sha256": checkpoints.digest_file(data, checkpoints.PIECES)},
                 {"sha256": hashlib.sha256(blob).hexdigest()}):  # a marker from before pieces
        checkpoints.marker_path(d, 7).write_text(json.dumps({"step": 7, "file": data.name, "bytes": len(blob), **meta}))
        marker = checkpoints.newest(d)
        assert checkpoints.verify(marker) is None
        with open(data, "r+b") as f:
            f.seek(checkpoints.PIECE + 5)
            f.write(b"\xff" if blob[checkpoints.PIECE + 5] != 0xFF else b"\x00")
        assert "SHA-256 does not match" in checkpoints.verify(marker)
        data.write_bytes(blob)


def test_a_marker_with_a_hash_this_version_cannot_check_is_no_checkpoint(tmp_path):
    data = checkpoints.data_path(tmp_path, 7)
    data.write_bytes(b"x")
    checkpoints.marker_path(tmp_path, 7).write_text(json.dumps(
        {"step": 7, "file": data.name, "bytes": 1, "sha256": "0" * 64, "hash": "md5"}))
    assert checkpoints.newest(tmp_path) is None


def test_hash_threads_follow_the_cpus_this_process_may_use():
    assert 1 <= checkpoints.hash_threads() <= min(8, len(os.sched_getaffinity(0)))


def test_a_checkpoint_path_that_is_a_directory_is_a_message_not_a_traceback(tmp_path):
    data = checkpoints.data_path(tmp_path, 7)
    data.mkdir()
    checkpoints.marker_path(tmp_path, 7).write_text(json.dumps(
        {"step": 7, "file": data.name, "bytes": data.stat().st_size, "sha256": "0" * 64, "hash": checkpoints.PIECES}))
    assert "not a file" in checkpoints.verify(checkpoints.newest(tmp_path))
