"""The budget rule: warn at fractions of the cap, warn when the forecast passes it, stop at it.

    decide(snapshot, fired) -> (actions, fired)

`fired` is the set of alerts already sent (kept in state.json), so each goes out once; the
forecast warning re-arms once the forecast is back under 95 % of the cap.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..actions import Action, SendAlert, Shutdown, StopWorker


@dataclass(frozen=True)
class BudgetSnapshot:
    spent_usd: float
    cap_usd: float
    fractions: tuple[float, ...]
    projected_usd: float | None      # at completion, from the measured pace
    rate_usd_per_h: float | None
    action: str                      # the shutdown action at the cap
    go_on: str = "`systemctl restart amapiano-train`"   # on a cluster: launch the job again


def _money(x: float | None) -> str:
    return "unknown" if x is None else f"${x:,.2f}"


def decide(s: BudgetSnapshot, fired: frozenset[str]) -> tuple[list[Action], frozenset[str]]:
    actions: list[Action] = []
    fired = set(fired)
    status = (f"Spent {_money(s.spent_usd)} of {_money(s.cap_usd)} "
              f"({100 * s.spent_usd / s.cap_usd:.0f} %); rate {_money(s.rate_usd_per_h)}/h; "
              f"forecast at completion {_money(s.projected_usd)}.")
    if s.spent_usd >= s.cap_usd:
        if "cap" not in fired:
            fired.add("cap")
            actions += [SendAlert("budget", f"budget cap reached: stopping ({_money(s.spent_usd)})",
                                  f"{status}\nThe worker is checkpointing and stopping; then the shutdown "
                                  f"action '{s.action}'. To go on: raise [budget] max_usd and {s.go_on}."),
                        StopWorker("budget cap reached"), Shutdown(s.action, "budget cap reached")]
        return actions, frozenset(fired)
    for f in sorted(s.fractions):
        key = f"fraction:{f:g}"
        if s.spent_usd >= f * s.cap_usd and key not in fired:
            fired.add(key)
            actions.append(SendAlert("budget", f"{100 * f:g} % of the budget spent", status))
    if s.projected_usd is not None:
        if s.projected_usd > s.cap_usd and "projection" not in fired:
            fired.add("projection")
            actions.append(SendAlert("budget", f"forecast {_money(s.projected_usd)} passes the "
                                               f"{_money(s.cap_usd)} cap",
                                     f"{status}\nAt this pace the run will not finish within the budget."))
        elif s.projected_usd < 0.95 * s.cap_usd:
            fired.discard("projection")
    return actions, frozenset(fired)
