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
