"""Red flags as a table: a trend, not two points; once each; re-armed when they clear."""
from __future__ import annotations

from daemon.red_flags import RedFlagSnapshot, decide

DAY = 86400.0


def snap(history=(), gpu=None, training=True, spent=10.0, decided=False, now=10 * DAY):
    return RedFlagSnapshot(now_s=now, val_history=tuple(history), gpu_util_1h_pct=gpu, training=training,
                           spent_usd=spent, milestone_decided=decided, stall_s=3 * DAY, min_gpu_util_pct=50.0,
                           max_cost_before_milestone_usd=400.0)


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
