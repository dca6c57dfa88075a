"""The cost ledger: what this run has spent, kept as plain data that survives restarts.

Compute is billed while the instance is up, so it accrues from the boot's own clock
(CLOCK_BOOTTIME) against the boot id: a daemon restart within a boot resumes from the
seconds already accounted (nothing lost, nothing counted twice, since the ledger and its
`accounted_boottime_s` are written together, atomically, in state.json), and a new boot is
counted from the boot itself, so the time the instance ran before the daemon came up is
paid for too. EBS storage is billed whether the instance runs or not: it accrues in wall time
and is shown apart. Spend lands in hourly buckets (the last 48 kept) and daily totals.

Everything here is a pure function of its arguments.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .common.clock import iso, parse_iso

HOURS_PER_MONTH = 730.0  # AWS bills EBS per GB-month of 730 hours
KEEP_HOURLY = 48
# No figure goes past this: more than ten years at the config's highest price ($10,000/h) is a
# broken price, not spend. Held at the bound (over any cap, so the cap fires), never inf or NaN,
# which state.json and the journal cannot hold.
MAX_LEDGER_USD = 1e12


@dataclass(frozen=True)
class Ledger:
    boot_id: str
    accounted_boottime_s: float            # seconds of this boot already paid for
    storage_accounted_at: str              # wall time up to which storage is paid for
    compute_usd: float = 0.0
    storage_usd: float = 0.0
    unpriced_s: float = 0.0                # instance time seen while the rate was unknown
    rate_usd_per_h: float | None = None
    rate_source: str = "unknown"           # "config", "spot g5.xlarge us-east-1a", "unknown"
    rate_updated_at: str | None = None
    boots: int = 1
    hourly: dict[str, float] = field(default_factory=dict)   # "2026-11-25T14" -> compute USD
    daily: dict[str, float] = field(default_factory=dict)    # "2026-11-25" -> compute USD

    @property
    def total_usd(self) -> float:
        return _bounded(self.compute_usd + self.storage_usd)

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["total_usd"] = round(self.total_usd, 6)
        return data

    @classmethod
    def from_json(cls, data: Any) -> "Ledger":
        """Raises ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError("cost: must be an object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("boot_id", "storage_accounted_at"):
            if not isinstance(values.get(name), str):
                raise ValueError(f"cost.{name}: missing or not a string")
        for name in ("accounted_boottime_s", "compute_usd", "storage_usd", "unpriced_s"):
            v = values.get(name, 0.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"cost.{name}: must be a finite number >= 0 (got {v!r})")
        rate = values.get("rate_usd_per_h")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                                 or not math.isfinite(rate) or rate < 0):
            raise ValueError(f"cost.rate_usd_per_h: must be a finite number >= 0 or null (got {rate!r})")
        if not isinstance(values.get("boots", 1), int) or isinstance(values.get("boots"), bool):
            raise ValueError("cost.boots: must be an integer")
        for name in ("hourly", "daily"):
            table = values.get(name, {})
            if not isinstance(table, dict) or not all(
                    isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for k, v in table.items()):
                raise ValueError(f"cost.{name}: must be an object of finite numbers")
        try:
            parse_iso(values["storage_accounted_at"])
        except ValueError:
            raise ValueError(f"cost.storage_accounted_at: not an ISO time ({values['storage_accounted_at']!r})") from None
        return cls(**values)


def new_ledger(boot_id: str, boottime_s: float, now: datetime) -> Ledger:
    """A run's ledger starts when the run does: the instance's earlier uptime is not its spend."""
    return Ledger(boot_id=boot_id, accounted_boottime_s=boottime_s, storage_accounted_at=iso(now))


def _bounded(usd: float) -> float:
    """usd held within [0, MAX_LEDGER_USD]; NaN is held at the bound: billed high, never at $0."""
    return MAX_LEDGER_USD if not usd <= MAX_LEDGER_USD else max(0.0, usd)


def _hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def _day(t: datetime) -> datetime:
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


def _spread(buckets: dict[str, float], start: datetime, end: datetime, usd: float, floor, step: timedelta,
            key_len: int) -> dict[str, float]:
    """buckets plus usd spread evenly over [start, end], split at bucket boundaries."""
    out = dict(buckets)
    total = (end - start).total_seconds()
    if total <= 0:
        key = iso(end)[:key_len]
        out[key] = out.get(key, 0.0) + usd
        return out
    t = start
    while t < end:
        nxt = min(end, floor(t) + step)
        key = iso(floor(t))[:key_len]
        out[key] = out.get(key, 0.0) + usd * (nxt - t).total_seconds() / total
        t = nxt
    return out


def accrue(ledger: Ledger, boot_id: str, boottime_s: float, now: datetime, rate_usd_per_h: float | None,
           rate_source: str, ebs_usd_per_h: float) -> Ledger:
    """The ledger brought up to `now`."""
    rate_usd_per_h = None if rate_usd_per_h is None else _bounded(rate_usd_per_h)
    ebs_usd_per_h = _bounded(ebs_usd_per_h)
    boots = ledger.boots
    if boot_id == ledger.boot_id:
        seconds = max(0.0, boottime_s - ledger.accounted_boottime_s)
    else:  # a new boot: the instance has been billed since it came up
        seconds, boots = max(0.0, boottime_s), boots + 1
    compute, unpriced = ledger.compute_usd, ledger.unpriced_s + seconds
    hourly, daily = ledger.hourly, ledger.daily
    if rate_usd_per_h is not None and unpriced > 0:
        usd = _bounded(unpriced * rate_usd_per_h / 3600.0)
        start = now - timedelta(seconds=unpriced)
        hourly = _spread(hourly, start, now, usd, _hour, timedelta(hours=1), 13)
        daily = _spread(daily, start, now, usd, _day, timedelta(days=1), 10)
        compute, unpriced = _bounded(compute + usd), 0.0
    if len(hourly) > KEEP_HOURLY:
        hourly = dict(sorted(hourly.items())[-KEEP_HOURLY:])
    stored_since = parse_iso(ledger.storage_accounted_at)
    storage_hours = max(0.0, (now - stored_since).total_seconds() / 3600.0)
    return dataclasses.replace(
        ledger, boot_id=boot_id, accounted_boottime_s=boottime_s, boots=boots,
        compute_usd=compute, unpriced_s=unpriced, hourly=hourly, daily=daily,
        storage_usd=_bounded(ledger.storage_usd + storage_hours * ebs_usd_per_h),
        storage_accounted_at=iso(now) if storage_hours > 0 else ledger.storage_accounted_at,
        rate_usd_per_h=rate_usd_per_h if rate_usd_per_h is not None else ledger.rate_usd_per_h,
        rate_source=rate_source if rate_usd_per_h is not None else ledger.rate_source)


@dataclass(frozen=True)
class Forecast:
    steps_per_s: float | None
    hours_to_completion: float | None
    at_completion_usd: float | None
    at_milestone_usd: float | None


def forecast(total_usd: float, rate_usd_per_h: float | None, ebs_usd_per_h: float, steps_per_s: float | None,
             steps_left: int | None, hours_to_milestone: float | None) -> Forecast:
    """Projected spend if the instance runs on at today's rate and the worker at its measured pace;
    a figure that overflows (a pace near zero, a broken price) is unknown, never inf in state.json."""
    def known(x: float | None) -> float | None:
        return x if x is not None and math.isfinite(x) else None

    per_h = None if rate_usd_per_h is None else rate_usd_per_h + ebs_usd_per_h
    hours = None
    if steps_per_s and steps_per_s > 0 and steps_left is not None:
        hours = known(steps_left / steps_per_s / 3600.0)
    at_completion = total_usd + hours * per_h if hours is not None and per_h is not None else None
    at_milestone = (total_usd + max(0.0, hours_to_milestone) * per_h
                    if hours_to_milestone is not None and per_h is not None else None)
    return Forecast(steps_per_s, hours, known(at_completion), known(at_milestone))


def ebs_usd_per_hour(gb: float, usd_per_gb_month: float) -> float:
    return _bounded(gb * usd_per_gb_month / HOURS_PER_MONTH)
