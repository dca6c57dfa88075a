"""Red flags as a table: a trend, not two points; once each; re-armed when they clear."""
from __future__ import annotations

import dataclasses

import pytest

from daemon.rules.red_flags import RedFlagSnapshot, decide

DAY = 86400.0


def snap(history=(), gpu=None, training=True, spent=10.0, decided=False, now=10 * DAY):
    return RedFlagSnapshot(now_s=now, val_history=tuple((t, v, None) for t, v in history), gpu_util_1h_pct=gpu,
                           training=training, spent_usd=spent, milestone_decided=decided, stall_s=3 * DAY,
                           stall_share=None, min_gpu_util_pct=50.0, max_cost_before_milestone_usd=400.0)


def by_steps(points, step, total=1200, share=0.15):
    """A run of hours: (step, loss) points; the window is 15 % of its 1,200 steps (180)."""
    return RedFlagSnapshot(now_s=1e9, val_history=tuple((1e9 - 5 * (step - st), v, st) for st, v in points),
                           gpu_util_1h_pct=None, training=True, spent_usd=1.0, milestone_decided=False, stall_s=None,
                           stall_share=share, min_gpu_util_pct=50.0, max_cost_before_milestone_usd=400.0,
                           step=step, total_steps=total)


def test_a_share_of_training_lets_the_stall_flag_fire_in_a_run_of_hours():
    """The plan's "3 days" never fits a run that ends in hours; 15 % of the steps does."""
    flat = [(st, 2.0 + (0.01 if st % 120 else 0.0)) for st in range(60, 661, 60)]  # 11 values, no trend down
    alerts, _ = decide(by_steps(flat, 660), frozenset())
    assert subjects(alerts) == ["red flag: validation loss not decreasing"]
    assert "15 % of training (180 steps)" in alerts[0].body and "per 1,000 steps" in alerts[0].body
    falling = [(st, 3.0 - st / 1000) for st in range(60, 661, 60)]
    assert decide(by_steps(falling, 660), frozenset())[0] == []
    early = [(st, 2.0) for st in (60, 120)]  # the window not yet covered by three values
    assert decide(by_steps(early, 130), frozenset())[0] == []
    no_total = dataclasses.replace(by_steps(flat, 660), total_steps=None)  # before the worker said
    assert decide(no_total, frozenset())[0] == []


def test_the_history_keeps_the_step_and_still_reads_the_old_two_number_points():
    from daemon.rules.red_flags import load, record, section

    history = record([], 100.0, 2.5, 60)
    history = record(history, 200.0, 2.4, 120)
    raised, back = load(section(frozenset({"val_loss_stall"}), history))
    assert back == [(100.0, 2.5, 60.0), (200.0, 2.4, 120.0)] and raised == {"val_loss_stall"}
    assert load({"val_history": [[1.0, 2.0], [2.0, "x"], [3.0, 1.5, 9]]})[1] == [(1.0, 2.0, None), (3.0, 1.5, 9.0)]


def test_the_window_is_a_duration_or_a_share_and_nothing_else(tmp_path):
    from conftest import write_config

    from daemon.common.config import ConfigError, load_config

    assert load_config(write_config(tmp_path, {"red_flags": {"val_loss_stall": "3d"}})).red_flags.val_loss_stall == "3d"
    for bad in ("epoch 3", "150%", "0%", "soon"):
        with pytest.raises(ConfigError, match="val_loss_stall.*a duration .* or a share of training"):
            load_config(write_config(tmp_path, {"red_flags": {"val_loss_stall": bad}}))


def subjects(alerts):
    return [a.subject for a in alerts]


def test_a_flat_or_rising_trend_over_three_days_is_flagged_once():
    rising = [(6 * DAY + i * DAY / 4, 2.0 + 0.01 * i) for i in range(17)]
    alerts, raised = decide(snap(rising), frozenset())
    assert subjects(alerts) == ["red flag: validation loss not decreasing"]
    again, raised = decide(snap(rising), raised)
    assert again == []


def test_a_falling_trend_with_noise_is_not_flagged_and_two_points_are_not_a_trend():
    falling = [(6 * DAY + i * DAY / 4, 2.0 - 0.02 * i + (0.05 if i % 2 else -0.05)) for i in range(17)]
    assert decide(snap(falling), frozenset())[0] == []
    two = [(7 * DAY, 2.0), (9.9 * DAY, 2.1)]
    assert decide(snap(two), frozenset())[0] == []
    short = [(9 * DAY + i * 3600, 2.0 + 0.01 * i) for i in range(10)]  # only a day of history
    assert decide(snap(short), frozenset())[0] == []


def test_low_gpu_while_training_and_rearm():
    alerts, raised = decide(snap(gpu=30.0), frozenset())
    assert subjects(alerts) == ["red flag: GPU utilisation low"]
    assert decide(snap(gpu=30.0, training=False), frozenset())[0] == []  # not training: not this flag
    _, raised = decide(snap(gpu=90.0), raised)
    assert "gpu_util_low" not in raised
    assert subjects(decide(snap(gpu=20.0), raised)[0]) == ["red flag: GPU utilisation low"]


def test_spend_before_the_milestone():
    assert subjects(decide(snap(spent=401.0), frozenset())[0]) == ["red flag: spend high before the milestone"]
    assert decide(snap(spent=401.0, decided=True), frozenset())[0] == []


@pytest.mark.parametrize("section", [None, "x", 5, [], {"raised": None}, {"raised": 5}, {"raised": "abc"},
                                     {"raised": [1, "gpu_util_low"], "val_history": "x"}])
def test_a_hostile_red_flags_section_loads_as_what_can_be_read(section):
    """Found by the hostile tester: {"raised": null} in state.json (or the bucket's copy) crashed
    the supervisor at start with a traceback; "abc" became three flags."""
    from daemon.rules.red_flags import load

    raised, history = load(section)
    assert raised <= {"gpu_util_low"} and history == []
