"""Money: the hourly price, the spend ledger and the budget, as the daemon keeps them.

The arithmetic is daemon/cost.py's (the ledger) and the decision daemon/rules/budget.py's (pure);
this module keeps their memory between checks and turns a check into actions. The price is the
config's fixed rate, else the live Spot price; while neither is known the ceiling price is
charged (never $0), and state.json's `rate_source` says so.

The live price is fetched on an outside thread (`refresh_price`, daemon/outside_jobs.py), never on
the tick's or on the way to READY: EC2 may take minutes to answer. It hands the price over in one
assignment, so a check never reads a new rate with an old source.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any

from .rules import budget as budget_rule
from . import journal
from .actions import Action, SendAlert, StopWorker
from .common.clock import iso, parse_iso
from .common.config import Config
from .cost import Forecast, Ledger, accrue, ebs_usd_per_hour, forecast, new_ledger
from .ports.instance import Instance

PACE_WINDOW_S = 1800.0


class Money:
    GO_ON = "`systemctl restart amapiano-train`"  # after raising the cap

    def __init__(self, cfg: Config, log: Any, clock: Any, instance: Instance, cost: dict | None,
                 budget: dict | None, run: tuple[str, str] = ("", "")):
        self.cfg, self.log, self.clock, self.instance = cfg, log, clock, instance
        self.run_id, self.started_at = run
        self.journal_path = cfg.state_file.with_name(journal.NAME)
        self._journal_failed = False
        b = cfg.budget
        # (USD/hour, where it came from, when): replaced whole by the price thread
        self.price: tuple[float, str, str | None] = (b.hourly_rate_usd, "config", None) if b.hourly_rate_usd \
            else (b.ceiling_usd_per_hour, "ceiling (price unknown)", None)
        self.ebs_per_h = ebs_usd_per_hour(b.ebs_gb, b.ebs_usd_per_gb_month)
        self.ledger: Ledger | None = Ledger.from_json(cost) if cost else None
        self.fired = frozenset(x for x in (budget or {}).get("fired", []) if isinstance(x, str)
                               and not x.startswith("gpu:"))
        self.forecast: Forecast | None = None
        self._pace: deque[tuple[float, int]] = deque()

    @property
    def rate(self) -> float:
        return self.price[0]

    @property
    def rate_source(self) -> str:
        return self.price[1]

    @property
    def spent(self) -> float | None:
        return self.ledger.total_usd if self.ledger else None

    @property
    def over_cap(self) -> bool:
        return self.ledger is not None and self.ledger.total_usd >= self.cfg.budget.max_usd

    def refresh_price(self) -> bool:
        """The live Spot price, when we know where we run; keeps the last one on a failure.
        False while there is none yet (the outside thread then tries again sooner)."""
        if self.cfg.budget.hourly_rate_usd:
            return True
        inst = self.instance
        if not inst.refresh() or inst.aws is None:
            return False
        ident = inst.identity
        try:
            found = inst.aws.spot_price(ident["instanceType"], ident["availabilityZone"], self.clock.now())
        except Exception as e:
            self.log.warning("cost.price_failed", error=f"{type(e).__name__}: {e}", keeping=self.rate,
                             source=self.rate_source)
            return self.price[2] is not None
        if found is None or not math.isfinite(found[0]) or found[0] < 0:
            self.log.warning("cost.price_missing", instance_type=ident["instanceType"], keeping=self.rate)
            return self.price[2] is not None
        price, at = found
        if price != self.rate:
            self.log.info("cost.rate", usd_per_h=price, source="spot", price_time=iso(at))
        self.price = (price, f"spot {ident['instanceType']} {ident['availabilityZone']}", iso(self.clock.now()))
        return True

    def accrue(self) -> Ledger:
        now, boot_id, boottime = self.clock.now(), self.clock.boot_id(), self.clock.boottime()
        if self.ledger is None:
            self.ledger = new_ledger(boot_id, boottime, now)
        before = self.ledger
        rate, source, _ = self.price
        self.ledger = accrue(self.ledger, boot_id, boottime, now, rate, source, self.ebs_per_h)
        if self.ledger.boots != before.boots:
            self.log.info("cost.new_boot", boots=self.ledger.boots, counted_since_boot_s=round(boottime, 1),
                          compute_usd=round(self.ledger.compute_usd, 4))
        return self.ledger

    def _steps_per_s(self, step: int | None) -> float | None:
        now = self.clock.monotonic()
        if step is None:
            return None
        if self._pace and step < self._pace[-1][1]:
            self._pace.clear()  # resumed from an earlier checkpoint
        self._pace.append((now, step))
        while len(self._pace) > 2 and now - self._pace[0][0] > PACE_WINDOW_S:
            self._pace.popleft()
        (t0, s0), (t1, s1) = self._pace[0], self._pace[-1]
        return (s1 - s0) / (t1 - t0) if t1 - t0 >= 5 and s1 > s0 else None

    def check(self, step: int | None, total_steps: int | None, milestone: dict | None) -> list[Action]:
        """Bring the ledger to now, journal it, forecast, and let the budget rule decide."""
        ledger = self.accrue()
        due = (milestone or {}).get("due_at") or (milestone or {}).get("due_forecast")  # share of training: forecast
        hours_to_milestone = ((parse_iso(due) - self.clock.now()).total_seconds() / 3600
                              if isinstance(due, str) else None)
        left = total_steps - step if total_steps is not None and step is not None else None
        self.forecast = forecast(ledger.total_usd, self.rate, self.ebs_per_h, self._steps_per_s(step), left,
                                 hours_to_milestone if hours_to_milestone and hours_to_milestone > 0 else None)
        snap = budget_rule.BudgetSnapshot(
            spent_usd=ledger.total_usd, cap_usd=self.cfg.budget.max_usd,
            fractions=tuple(self.cfg.budget.alert_fractions), projected_usd=self.forecast.at_completion_usd,
            rate_usd_per_h=self.rate, action=self.cfg.budget.action, go_on=self.GO_ON)
        actions, self.fired = budget_rule.decide(snap, self.fired)
        self._journal(milestone)
        return actions

    def _journal(self, milestone: dict | None) -> None:
        """The second copy of the ledger (daemon/journal.py); a failure is logged once, never fatal."""
        rec = journal.record(self.run_id, self.started_at, self.ledger, sorted(self.fired), milestone,
                             iso(self.clock.now()))
        try:
            if aside := journal.append(self.journal_path, rec):  # a FIFO, directory or device was there
                self.log.error("journal.moved_aside", moved_to=aside, note="the journal starts again from this run")
            self._journal_failed = False
        except (OSError, ValueError) as e:
            if not self._journal_failed:
                self.log.error("journal.write_failed", path=str(self.journal_path), error=str(e))
            self._journal_failed = True

    def held_over_cap(self) -> list[Action]:
        """Restarted over the cap (the instance was started again): the worker stays stopped and
        the person hears why; the idle rule, with its warning, stops the instance later."""
        spent, cap = self.spent or 0.0, self.cfg.budget.max_usd
        return [StopWorker("budget cap reached"),
                SendAlert("budget", "budget cap reached: the worker stays stopped",
                          f"Spent ${spent:,.2f} of ${cap:,.2f}. Raise [budget] max_usd and restart the service "
                          "to go on.")]

    def scalars(self) -> dict[str, float | None]:
        return {"cost/total_usd": self.spent, "cost/rate_usd_per_h": self.rate}

    def to_json(self) -> tuple[dict | None, dict | None]:
        """state.json's `cost` and `budget` sections."""
        if self.ledger is None:
            return None, None
        f = self.forecast
        rate, source, at = self.price
        cost = {**self.ledger.to_json(), "rate_usd_per_h": rate, "rate_source": source,
                "rate_updated_at": at or self.ledger.rate_updated_at, "ebs_usd_per_h": self.ebs_per_h,
                "forecast": None if f is None else {
                    "steps_per_s": f.steps_per_s, "hours_to_completion": f.hours_to_completion,
                    "at_completion_usd": f.at_completion_usd, "at_milestone_usd": f.at_milestone_usd}}
        budget = {"max_usd": self.cfg.budget.max_usd, "left_usd": self.cfg.budget.max_usd - self.ledger.total_usd,
                  "fired": sorted(self.fired), "action": self.cfg.budget.action}
        return cost, budget
