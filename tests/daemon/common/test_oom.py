"""oom_backoff.json: the group's agreed micro-batch, read as little trusted as any file."""
from __future__ import annotations

import json

import pytest

from daemon.common import oom


def test_round_trip_and_what_a_start_may_use(tmp_path):
    oom.write(tmp_path, oom.OomRecord(4, 16, 7, 1, 1, "CUDA out of memory", 2))
    record = oom.read(tmp_path)
    assert record == oom.OomRecord(4, 16, 7, 1, 1, "CUDA out of memory", 2)
    assert record.usable(16, 2) == 4
    assert record.usable(32, 2) is None  # another effective batch: the record is for another run shape
    assert record.usable(16, 1) is None and record.usable(16, 4) is None  # another width: other slices per rank
    assert oom.OomRecord(2, 16, 7, 1, 1, "x", 8).usable(16, 8) is None  # fewer clips than ranks
    assert oom.OomRecord(None, 16, 7, 1, 2, "does not fit", 2).usable(16, 2) is None


@pytest.mark.parametrize("content", [b"\x00garbage", b"[]", b'{"micro_batch": "4"}',
                                     json.dumps({"micro_batch": 0, "clips_per_step": 16, "step": 1, "rank": 0,
                                                 "oom_backoffs": 1, "world": 2}).encode(),
                                     json.dumps({"micro_batch": 4, "clips_per_step": True, "step": 1, "rank": 0,
                                                 "oom_backoffs": 1, "world": 2}).encode(),
                                     json.dumps({"micro_batch": 2.0, "clips_per_step": 16, "step": 1, "rank": 0,
                                                 "oom_backoffs": 1, "world": 2}).encode(),
                                     json.dumps({"micro_batch": 4, "clips_per_step": 16, "step": 1, "rank": 0,
                                                 "oom_backoffs": 1}).encode()])
def test_a_damaged_record_is_no_record(tmp_path, content):
    oom.path(tmp_path).write_bytes(content)
    assert oom.read(tmp_path) is None
