"""The supervisor's TensorBoard scalars: on the training step's axis, so cost lines up with loss."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import RecordingLog
from daemon.tensorboard import ScalarWriter

T0 = datetime(2026, 11, 26, 0, 0, tzinfo=timezone.utc)


def test_points_sit_at_the_furthest_training_step_and_keep_their_wall_time(tmp_path):
    w = ScalarWriter(tmp_path / "supervisor")
    # before the worker reports a step; training; a worker restarted from an earlier checkpoint
    for i, (step, usd) in enumerate([(None, 0.1), (5, 0.2), (10, 0.3), (7, 0.4), (12, 0.5)]):
        w.write({"cost/total_usd": usd, "gpu/util_pct": None}, T0 + timedelta(minutes=i), step)
    w.close()
    acc = EventAccumulator(str(tmp_path / "supervisor"))
    acc.Reload()
    points = acc.Scalars("cost/total_usd")
    assert [p.step for p in points] == [0, 5, 10, 10, 12]  # never backwards
    assert [round(p.value, 3) for p in points] == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert [p.wall_time for p in points] == [(T0 + timedelta(minutes=i)).timestamp() for i in range(5)]
    assert "gpu/util_pct" not in acc.Tags()["scalars"]  # unknown: no point, not a zero


def test_an_unwritable_log_dir_costs_the_curves_not_the_daemon(tmp_path):
    (tmp_path / "blocker").write_text("a file")
    log = RecordingLog()
    w = ScalarWriter(tmp_path / "blocker" / "supervisor", log)
    w.write({"cost/total_usd": 1.0}, T0, 3)
    w.write({"cost/total_usd": 2.0}, T0, 4)
    assert log.pairs() == [("error", "tensorboard.write_failed")]  # once


def test_a_step_no_event_can_hold_is_ignored_and_the_writer_goes_on(tmp_path):
    w = ScalarWriter(tmp_path / "supervisor")
    for step in (10**30, 3.5, True, -4, 7):
        w.write({"cost/total_usd": 1.0}, T0, step)
    w.close()
    acc = EventAccumulator(str(tmp_path / "supervisor"))
    acc.Reload()
    assert [p.step for p in acc.Scalars("cost/total_usd")] == [0, 0, 0, 0, 7]
