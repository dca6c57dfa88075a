"""The wall clock steps (NTP at boot, a VM resumed, a person's `date -s`); the heartbeat's age
must not. Its mtime is wall time: a step forward of more than a deadline made a training worker
look hung at once (SIGKILLed, restarted, counted as a crash), and a step back made its new beats
look older than its start (seen as "loading" until loading_timeout). Ages are now kept on the
supervisor's monotonic clock (daemon/heartbeat.py, Observed)."""
from __future__ import annotations

import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from conftest import write_config

from daemon.common import log as logs
from daemon.common.clock import Clock
from daemon.common.config import load_config
from daemon import heartbeat
from daemon.heartbeat import Beat


def beat_at(mtime: float) -> Beat:
    return Beat({"pid": 1, "activity": "training"}, mtime)


def test_a_version_first_seen_is_dated_by_its_wall_age():
    seen = heartbeat.Observed()
    assert seen.written(beat_at(1000.0), now_wall=1030.0, now_mono=500.0) == 470.0  # 30 s old
    assert seen.written(beat_at(1000.0), now_wall=1040.0, now_mono=510.0) == 470.0  # the same version


def test_a_step_forward_of_the_wall_clock_ages_nothing():
    seen = heartbeat.Observed()
    seen.written(beat_at(1000.0), now_wall=1001.0, now_mono=100.0)
    # the clock steps an hour forward between two looks; the same version, then a new one
    assert seen.written(beat_at(1000.0), now_wall=4601.5, now_mono=100.5) == 99.0
    assert seen.written(beat_at(1001.2), now_wall=4602.0, now_mono=101.0) >= 100.5  # written since the last look


def test_a_step_back_of_the_wall_clock_dates_nothing_in_the_future():
    seen = heartbeat.Observed()
    seen.written(beat_at(5000.0), now_wall=5001.0, now_mono=100.0)
    assert seen.written(beat_at(1401.0), now_wall=1401.5, now_mono=101.0) == 100.5


def test_no_beat_leaves_the_next_one_dated_after_this_look():
    seen = heartbeat.Observed()
    assert seen.written(None, now_wall=1000.0, now_mono=100.0) is None
    assert seen.written(beat_at(-5e9), now_wall=1000.0, now_mono=101.0) == 100.0  # a planted mtime: bounded


class SteppingClock(Clock):
    """The supervisor's wall clock, stepped by the test; the worker's files keep the real one."""

    def __init__(self) -> None:
        self.step_s = 0.0

    def now(self):
        return super().now() + timedelta(seconds=self.step_s)


@pytest.mark.slow
def test_a_training_worker_survives_the_wall_clock_stepping_an_hour_either_way(tmp_path):
    from daemon.supervisor import Supervisor

    cfg = load_config(write_config(tmp_path, {"train": {"device": "cpu", "cpu_threads": 1, "epochs": 400},
                                              "supervisor": {"heartbeat_timeout": "20s", "loading_timeout": "60s"}}))
    clock, log = SteppingClock(), logs.get("test")
    supervisor = Supervisor(cfg, log, clock=clock)
    supervisor.start()
    try:
        deadline = time.monotonic() + 180
        while (supervisor.state.trainer.step or 0) < 2:
            assert time.monotonic() < deadline, "the worker never trained"
            time.sleep(0.2)
        pid = supervisor.worker.pid
        for step_s in (3600.0, -3600.0):
            clock.step_s = step_s
            time.sleep(6)  # many ticks (100 ms) with the stepped clock
            t = supervisor.state.trainer
            assert supervisor.worker.pid == pid and t.restarts == 0, SimpleNamespace(step=step_s, pid=t.pid)
    finally:
        supervisor.shutdown()
