"""The milestone rule as a table."""
from __future__ import annotations

import pytest

from daemon.milestone import CONDITIONAL, GO, NO_GO, MilestoneSnapshot, decide


def snap(auth=(45.0, (40.0, 50.0)), cost=300.0, loss=2.5):
    mean, ci = auth if auth else (None, None)
    return MilestoneSnapshot(mean, ci, cost, loss, min_authenticity=35.0, max_cost=600.0, max_val_loss=3.5)


@pytest.mark.parametrize("kw, decision, check", [
    ({}, GO, None),
    ({"auth": (30.0, (25.0, 34.0))}, NO_GO, ("authenticity", "miss")),
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
    assert len(v.reasons) == 3


def test_reasons_say_the_figures():
    v = decide(snap(auth=(30.0, (25.0, 34.0))))
    assert "authenticity 30.0 % (95 % CI 25.0-34.0) is below 35 %" in v.reasons[0]
