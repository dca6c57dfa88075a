"""The cluster stop request on the shared state directory (daemon/common/stopfile.py)."""
from __future__ import annotations

import json
import os

import pytest

from daemon.common import stopfile


def test_cluster_stop_request_names_its_group(tmp_path):
    f = stopfile.path(tmp_path)
    stopfile.request(f, 4242, "budget cap reached", "2026-12-03T14:00:00Z")
    assert stopfile.for_group(f, {4242}) == "budget cap reached"
    assert stopfile.for_group(f, {4243}) is None  # another group (an earlier job's) is not asked
    assert oct(f.stat().st_mode & 0o777) == "0o640"


@pytest.mark.parametrize("content", [
    b"", b"\x00\xff", b"[]", b'{"group_pid": "4242", "boot_id": "x", "reason": "r"}',
    b'{"group_pid": true, "boot_id": "x", "reason": "r"}', b'{"group_pid": 4242, "reason": "r"}',
    b"{" * 100000,
])
def test_cluster_garbage_stop_request_stops_nothing(tmp_path, content):
    f = stopfile.path(tmp_path)
    f.write_bytes(content)
    assert stopfile.for_group(f, {4242}) is None


def test_cluster_stop_request_from_another_boot_stops_nothing(tmp_path):
    """A request left on the bucket by a job on another machine, whose pid happens to match."""
    f = stopfile.path(tmp_path)
    f.write_text(json.dumps({"group_pid": os.getpid(), "boot_id": "another-boot", "reason": "old"}))
    assert stopfile.for_group(f, {os.getpid()}) is None
    assert stopfile.clear(f) and not f.exists() and not stopfile.clear(f)


def test_cluster_huge_stop_request_is_no_request(tmp_path):
    """Rank 0 reads the file once a second, on a bucket mount: a 16 MiB file (the general JSON
    limit) was fetched and parsed every second of training. A request is a few hundred bytes."""
    f = stopfile.path(tmp_path)
    stopfile.request(f, 4242, "budget cap reached", "now")
    with open(f, "ab") as out:
        out.write(b" " * (1 << 20))
    assert stopfile.for_group(f, {4242}) is None


def test_cluster_stop_request_planted_as_a_link_or_a_fifo_never_blocks_and_never_writes_through(tmp_path):
    """A FIFO or /dev/zero at the name reads as no request at once; a link to another job's request
    is replaced by ours, never written through (that job's request stays as it was)."""
    f = stopfile.path(tmp_path)
    os.mkfifo(f)
    assert stopfile.for_group(f, {4242}) is None
    f.unlink()
    f.symlink_to("/dev/zero")
    assert stopfile.for_group(f, {4242}) is None
    f.unlink()
    other = tmp_path / "other-job" / stopfile.NAME
    stopfile.request(other, 777, "the other job's", "then")
    f.symlink_to(other)
    stopfile.request(f, 4242, "budget cap reached", "now")
    assert not f.is_symlink() and stopfile.for_group(f, {4242}) == "budget cap reached"
    assert stopfile.for_group(other, {777}) == "the other job's"
