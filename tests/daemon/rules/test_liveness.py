"""The liveness rule as a table: a slow disk is not a hang, a frozen worker still is.

A checkpoint's background write can take ~40 s for 5 GB on EBS gp3; while the loop waits for it
the heartbeat stays on "checkpointing" (or "stopped"/"completed" around a stop or the end). The
worker's heartbeat says how long its writes took (`checkpoint_write_s`), and those activities are
allowed WRITE_FACTOR times that, however short checkpoint_timeout is.
"""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon import heartbeat
from daemon.rules import liveness
from daemon.rules.liveness import Allowances, LivenessMemory, LivenessSnapshot, decide, is_fresh

ALLOW = Allowances(training=10.0, loading=60.0, validating=20.0, checkpointing=30.0)
PID, STARTED = 4242, 1000.0


def beat_snap(now, activity, written, write_s=None, pid=PID, beat_pid=PID):
    return LivenessSnapshot(now, pid, STARTED, beat_pid, activity, written, write_s)


def run(snaps, memory=None):
    """The rule over a sequence of ticks: each tick's kill reason (or None), and the memory."""
    memory, out = memory or LivenessMemory(), []
    for s in snaps:
        hung, memory = decide(s, ALLOW, memory)
        out.append(hung)
    return out, memory


@pytest.mark.parametrize("activity", ["checkpointing", "stopped", "completed"])
def test_a_slow_disk_write_is_allowed_six_times_its_measured_seconds(activity):
    # The worker measured a 40 s background write; its heartbeat then waits on the next one.
    out, _ = run([beat_snap(1100 + age, activity, 1100.0, write_s=40.0) for age in (0, 31, 120, 239)])
    assert out == [None, None, None, None], "40 s writes: 240 s before a wait is a hang, not checkpoint_timeout's 30"


@pytest.mark.parametrize("activity", ["checkpointing", "stopped", "completed"])
def test_a_frozen_worker_is_still_hung_past_six_writes(activity):
    out, _ = run([beat_snap(1100 + age, activity, 1100.0, write_s=40.0) for age in (0, 241)])
    assert out[0] is None and out[1] is not None
    assert f"while {activity}" in out[1] and "deadline 240 s" in out[1]


def test_without_a_measured_write_checkpoint_timeout_rules():
    out, _ = run([beat_snap(1100 + age, "checkpointing", 1100.0) for age in (0, 29, 31)])
    assert out[:2] == [None, None] and "deadline 30 s" in out[2]


def test_the_write_allowance_is_not_a_training_allowance():
    # Training beats at every log interval whatever the disk does: its deadline stays heartbeat_timeout.
    out, _ = run([beat_snap(1100 + age, "training", 1100.0, write_s=40.0) for age in (0, 9, 11)])
    assert out[:2] == [None, None] and "while training" in out[2] and "deadline 10 s" in out[2]


def test_a_restarted_worker_keeps_the_measured_write_until_it_measures_its_own():
    # The first worker measured 40 s writes; it is killed; the next one's heartbeat has no write
    # yet (its first save is still in flight) but the disk is the same disk.
    _, memory = run([beat_snap(1100, "training", 1100.0, write_s=40.0)])
    out, memory = run([beat_snap(1300 + age, "checkpointing", 1300.0, pid=PID + 1, beat_pid=PID + 1)
                       for age in (0, 200)], memory)
    assert out == [None, None]
    assert liveness.deadline("checkpointing", ALLOW, memory) == 240.0


def test_the_longest_write_is_kept_not_the_last():
    _, memory = run([beat_snap(1100, "training", 1100.0, write_s=40.0),
                     beat_snap(1200, "training", 1200.0, write_s=5.0)])
    assert liveness.deadline("checkpointing", ALLOW, memory) == 240.0


def test_another_workers_heartbeat_teaches_the_write_but_counts_as_loading():
    # The file is the previous worker's (another pid): its write figure is this disk's, its
    # activity says nothing about the new worker, which is loading.
    out, memory = run([beat_snap(STARTED + 30, "checkpointing", 900.0, write_s=40.0, beat_pid=PID - 1)])
    assert out == [None] and memory.write_s == 40.0
    out, _ = run([beat_snap(STARTED + 61, "checkpointing", 900.0, write_s=40.0, beat_pid=PID - 1)], memory)
    assert "while loading" in out[0]


@pytest.mark.parametrize("garbage", [1e12, 1e300, -5.0, float("nan")])
def test_an_absurd_write_figure_cannot_make_a_frozen_worker_immortal(garbage):
    out, memory = run([beat_snap(1100, "checkpointing", 1100.0, write_s=garbage),
                       beat_snap(1100 + 6 * liveness.MAX_WRITE_S + 1, "checkpointing", 1100.0, write_s=garbage)])
    assert out[0] is None and out[1] is not None
    assert liveness.deadline("checkpointing", ALLOW, memory) <= 6 * liveness.MAX_WRITE_S


def test_is_fresh_follows_the_same_deadline():
    memory = run([beat_snap(1100, "checkpointing", 1100.0, write_s=40.0)])[1]
    assert is_fresh(beat_snap(1300, "checkpointing", 1100.0, write_s=40.0), ALLOW, memory)
    assert not is_fresh(beat_snap(1341, "checkpointing", 1100.0, write_s=40.0), ALLOW, memory)


@given(write_s=st.floats(min_value=0.0, max_value=liveness.MAX_WRITE_S),
       age=st.floats(min_value=0.0, max_value=10 * liveness.MAX_WRITE_S))
def test_checkpointing_is_hung_exactly_past_the_larger_of_the_allowances(write_s, age):
    out, _ = run([beat_snap(1100 + age, "checkpointing", 1100.0, write_s=write_s)])
    limit = max(ALLOW.checkpointing, liveness.WRITE_FACTOR * write_s)
    assert (out[0] is not None) == (age > limit)


def test_the_heartbeat_carries_the_write_seconds_to_the_rule(tmp_path):
    path = tmp_path / "heartbeat.json"
    path.write_text(json.dumps({"pid": PID, "activity": "checkpointing", "checkpoint_write_s": 41.5}))
    beat = heartbeat.read(path)
    assert beat.fields["checkpoint_write_s"] == 41.5
    s = liveness.snapshot(beat.written_s + 100, PID, beat.written_s - 10, beat)
    assert s.checkpoint_write_s == 41.5
    assert decide(s, ALLOW, LivenessMemory())[0] is None  # 100 s > checkpoint_timeout's 30, < 6 x 41.5
    path.write_text(json.dumps({"pid": PID, "activity": "checkpointing", "checkpoint_write_s": "41.5"}))
    assert "checkpoint_write_s" not in heartbeat.read(path).fields
