"""The cost ledger: accrues by the boot's clock, survives restarts, never counts twice."""
from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest

from daemon.cost import MAX_LEDGER_USD, Ledger, accrue, ebs_usd_per_hour, forecast, new_ledger

T0 = datetime(2026, 11, 25, 13, 30, tzinfo=timezone.utc)


def run(ledger, boot, uptime, minutes, rate=3.6, ebs=0.0):
    return accrue(ledger, boot, uptime, T0 + timedelta(minutes=minutes), rate, "config", ebs)


def test_accrues_per_second_at_the_hourly_rate():
    ledger = new_ledger("boot-a", 1000.0, T0)
    ledger = run(ledger, "boot-a", 1000.0 + 1800, 30)  # half an hour at $3.60/h
    assert ledger.compute_usd == pytest.approx(1.80)
    assert ledger.hourly == {"2026-11-25T13": pytest.approx(1.80)}
    ledger = run(ledger, "boot-a", 1000.0 + 3600, 60)
    assert ledger.compute_usd == pytest.approx(3.60)
    assert ledger.hourly == {"2026-11-25T13": pytest.approx(1.80), "2026-11-25T14": pytest.approx(1.80)}
    assert ledger.daily == {"2026-11-25": pytest.approx(3.60)}


def test_replaying_the_same_reading_adds_nothing():
    ledger = run(new_ledger("boot-a", 0.0, T0), "boot-a", 600.0, 10)
    again = run(ledger, "boot-a", 600.0, 10)
    assert again.compute_usd == ledger.compute_usd
    backwards = run(ledger, "boot-a", 300.0, 10)  # a clock that went back can't refund
    assert backwards.compute_usd == ledger.compute_usd


def test_a_new_boot_is_counted_from_the_boot():
    ledger = run(new_ledger("boot-a", 0.0, T0), "boot-a", 3600.0, 60)
    # The instance was stopped, started again, and the daemon came up 10 minutes after boot.
    ledger = run(ledger, "boot-b", 600.0, 600)
    assert ledger.boots == 2 and ledger.boot_id == "boot-b"
    assert ledger.compute_usd == pytest.approx(3.60 + 0.60)


def test_unknown_rate_is_remembered_and_charged_once_known():
    ledger = accrue(new_ledger("b", 0.0, T0), "b", 1800.0, T0 + timedelta(minutes=30), None, "", 0.0)
    assert ledger.compute_usd == 0 and ledger.unpriced_s == 1800 and ledger.rate_source == "unknown"
    ledger = accrue(ledger, "b", 3600.0, T0 + timedelta(minutes=60), 2.0, "spot g5.xlarge us-east-1a", 0.0)
    assert ledger.compute_usd == pytest.approx(2.0) and ledger.unpriced_s == 0
    assert ledger.rate_source == "spot g5.xlarge us-east-1a"


def test_storage_accrues_in_wall_time_and_is_shown_apart():
    per_h = ebs_usd_per_hour(200, 0.08)
    assert per_h == pytest.approx(200 * 0.08 / 730)
    ledger = run(new_ledger("a", 0.0, T0), "a", 3600.0, 60, ebs=per_h)
    # Stopped for 10 hours (no compute), then a new boot.
    ledger = run(ledger, "b", 0.0, 660, ebs=per_h)
    assert ledger.compute_usd == pytest.approx(3.60)
    assert ledger.storage_usd == pytest.approx(11 * per_h)
    assert ledger.total_usd == pytest.approx(3.60 + 11 * per_h)


def test_json_round_trip_and_bad_fields():
    ledger = run(new_ledger("a", 5.0, T0), "a", 905.0, 15)
    assert Ledger.from_json(ledger.to_json()) == ledger
    for bad, field in [({**ledger.to_json(), "compute_usd": -1}, "cost.compute_usd"),
                       ({**ledger.to_json(), "compute_usd": "12"}, "cost.compute_usd"),
                       ({**ledger.to_json(), "boot_id": None}, "cost.boot_id"),
                       ({**ledger.to_json(), "storage_accounted_at": "yesterday"}, "cost.storage_accounted_at")]:
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
            Ledger.from_json(bad)


def test_forecast():
    f = forecast(total_usd=100.0, rate_usd_per_h=4.0, ebs_usd_per_h=0.0, steps_per_s=0.5, steps_left=3600,
                 hours_to_milestone=24.0)
    assert f.hours_to_completion == pytest.approx(2.0)
    assert f.at_completion_usd == pytest.approx(108.0)
    assert f.at_milestone_usd == pytest.approx(196.0)
    unknown = forecast(100.0, 4.0, 0.0, None, 3600, None)
    assert unknown.at_completion_usd is None and unknown.at_milestone_usd is None


@pytest.mark.parametrize("rate, ebs", [(1e308, 0.0), (float("inf"), 0.0), (float("nan"), 0.0), (3.6, 1e308),
                                       (3.6, float("inf")), (1e308, 1e308)])
def test_no_figure_is_ever_infinite_or_nan(rate, ebs):
    """The config refuses such prices, but a price from outside (a pricing reply) or a config from
    before that rule must still never put `"total_usd": Infinity` in state.json (status then exits
    65 and the journal cannot be written): a figure past the ledger's bound is held at the bound,
    which is over any cap, so the cap fires."""
    ledger = new_ledger("a", 0.0, T0)
    for minutes in (60, 10 * 365 * 24 * 60):  # an hour, then ten years stopped and a new boot
        ledger = run(ledger, "a" if minutes == 60 else "b", 3600.0, minutes, rate=rate, ebs=ebs)
        data = ledger.to_json()
        json.dumps(data, allow_nan=False)  # raises on inf or nan
        assert Ledger.from_json(data) == ledger
        assert 0 < ledger.total_usd <= MAX_LEDGER_USD and math.isfinite(ledger.total_usd)
    assert ebs_usd_per_hour(1e308, 1e308) <= MAX_LEDGER_USD
    f = forecast(ledger.total_usd, rate, ebs, 1e-300, 10**9, 1e300)
    assert all(x is None or math.isfinite(x) for x in (f.hours_to_completion, f.at_completion_usd, f.at_milestone_usd))
