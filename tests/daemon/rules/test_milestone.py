"""The milestone rule as a table: paired evidence, degenerate evidence, and when it is due."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from daemon.rules.milestone import (CONDITIONAL, GO, INCONCLUSIVE, NO_GO, Evidence, MilestoneSnapshot, Progress, decide,
                              forecast, is_due)

GOOD = Evidence(n=32, improvement_mean=8.0, improvement_ci=(4.0, 12.0), p_value=0.001)


def snap(auth=(45.0, (40.0, 50.0)), cost=300.0, loss=2.5, evidence=GOOD):
    mean, ci = auth if auth else (None, None)
    return MilestoneSnapshot(mean, ci, cost, loss, min_authenticity=35.0, max_cost=600.0, max_val_loss=3.5,
                             evidence=evidence)


def ev(**kw) -> Evidence:
    return Evidence(**{**GOOD.__dict__, **kw})


# Degenerate evidence first: none of it may become a decision.
@pytest.mark.parametrize("evidence, says", [
    (ev(identical=32, improvement_mean=0.0, improvement_ci=(0.0, 0.0), p_value=1.0), "32 of 32 model/baseline pairs are identical"),
    (ev(identical=1), "1 of 32 model/baseline pairs are identical"),
    (ev(improvement_ci=(3.0, 3.0)), "improvement interval has zero width"),
    (ev(silent=4), "4 sample(s) are silent or constant"),
    (ev(failed=1), "1 generation(s) failed"),
    (ev(n=3), "3 pairs cannot reach p < 0.05"),
])
def test_degenerate_evidence_is_inconclusive(evidence, says):
    v = decide(snap(evidence=evidence))
    assert v.decision == INCONCLUSIVE and v.checks == {"evidence": "degenerate"}
    assert any(says in r for r in v.reasons), v.reasons


def test_a_zero_width_authenticity_interval_is_inconclusive():
    """The demo's old [26.1, 26.1]: every sample the same score."""
    v = decide(snap(auth=(26.1, (26.1, 26.1))))
    assert v.decision == INCONCLUSIVE and "authenticity interval has zero width" in v.reasons[0]


@pytest.mark.parametrize("kw, decision, check", [
    ({}, GO, None),                                                            # above threshold AND significantly better
    ({"evidence": ev(improvement_mean=1.0, improvement_ci=(-2.0, 4.0), p_value=0.3)}, CONDITIONAL,
     ("improvement", "close")),                                                # above threshold, not better: not GO
    ({"evidence": ev(improvement_mean=2.0, improvement_ci=(0.5, 4.0), p_value=0.08)}, CONDITIONAL,
     ("improvement", "close")),                                                # interval above 0, p not under alpha
    ({"evidence": ev(improvement_mean=-5.0, improvement_ci=(-9.0, -1.0), p_value=0.99)}, NO_GO,
     ("improvement", "miss")),                                                 # worse than the baseline
    ({"evidence": ev(improvement_mean=None, improvement_ci=None, p_value=None)}, CONDITIONAL, ("improvement", "unknown")),
    ({"auth": (30.0, (25.0, 34.0))}, NO_GO, ("authenticity", "miss")),         # better than baseline, still under 35 %
    ({"auth": (36.0, (31.0, 41.0))}, CONDITIONAL, ("authenticity", "close")),
    ({"cost": 650.0}, NO_GO, ("cost", "miss")),
    ({"cost": 590.0}, CONDITIONAL, ("cost", "close")),
    ({"loss": 3.9}, NO_GO, ("val_loss", "miss")),
    ({"loss": 3.45}, CONDITIONAL, ("val_loss", "close")),
    ({"loss": None}, CONDITIONAL, ("val_loss", "unknown")),
    ({"auth": None}, CONDITIONAL, ("authenticity", "unknown")),
    ({"auth": (36.0, (31.0, 41.0)), "cost": 700.0}, NO_GO, ("cost", "miss")),
])
def test_decisions(kw, decision, check):
    v = decide(snap(**kw))
    assert v.decision == decision
    if check:
        assert v.checks[check[0]] == check[1]
    assert len(v.reasons) == 4


def test_reasons_say_which_part_failed():
    v = decide(snap(evidence=ev(improvement_mean=1.0, improvement_ci=(-2.0, 4.0), p_value=0.3)))
    assert "authenticity 45.0 % (95 % CI 40.0-50.0) is above 35 %" in v.reasons[0]
    assert "improvement over the baseline +1.0 points (95 % CI -2.0 to +4.0, p = 0.3): not significant" in v.reasons[1]
    assert "below 35 %" in decide(snap(auth=(30.0, (25.0, 34.0)))).reasons[0]


T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("when, progress, due", [
    (("duration", 3600.0), Progress(T0 + timedelta(minutes=59), T0), False),
    (("duration", 3600.0), Progress(T0 + timedelta(hours=1), T0), True),
    (("share", 0.625), Progress(T0, T0, step=None, total_steps=None), False),        # no heartbeat yet: unknown
    (("share", 0.625), Progress(T0, T0, step=624, total_steps=1000), False),
    (("share", 0.625), Progress(T0, T0, step=625, total_steps=1000), True),
    (("epoch", 12.0), Progress(T0, T0, step=599, total_steps=1000, epochs=20), False),
    (("epoch", 12.0), Progress(T0, T0, step=600, total_steps=1000, epochs=20), True),
    (("epoch", 30.0), Progress(T0, T0, step=1000, total_steps=1000, epochs=20), True),  # past the last: at the end
    (("epoch", 12.0), Progress(T0, T0, step=900, total_steps=1000, epochs=None), False),
])
def test_is_due(when, progress, due):
    assert is_due(when, progress) is due


def test_forecast_extrapolates_the_steps_so_far():
    p = Progress(T0 + timedelta(hours=1), T0, step=100, total_steps=1000)
    assert forecast(("share", 0.625), p) == T0 + timedelta(hours=6.25)
    assert forecast(("duration", 86400.0), p) == T0 + timedelta(days=1)
    assert forecast(("share", 0.5), Progress(T0, T0, step=0, total_steps=1000)) is None
