"""The milestone rule: GO, CONDITIONAL GO or NO-GO from the evaluation's figures.

    decide(snapshot) -> Verdict

NO-GO when a threshold is clearly missed (authenticity's whole 95 % interval under the
minimum, spend over the cap, validation loss over the maximum); CONDITIONAL GO when the
interval straddles the minimum, a figure is within `margin` of its threshold, or a figure is
unknown; GO otherwise. Each figure gives one reason, so the report says why.
"""
from __future__ import annotations

from dataclasses import dataclass

GO, CONDITIONAL, NO_GO = "GO", "CONDITIONAL GO", "NO-GO"


@dataclass(frozen=True)
class MilestoneSnapshot:
    authenticity_mean: float | None
    authenticity_ci: tuple[float, float] | None
    cost_usd: float | None
    val_loss: float | None
    min_authenticity: float
    max_cost: float
    max_val_loss: float
    margin: float = 0.05          # a figure within 5 % of its threshold is "close"


@dataclass(frozen=True)
class Verdict:
    decision: str
    reasons: tuple[str, ...]
    checks: dict[str, str]        # figure -> "pass" | "close" | "miss" | "unknown"


def _upper_check(name: str, value: float | None, limit: float, margin: float, unit: str) -> tuple[str, str]:
    if value is None:
        return "unknown", f"{name} unknown"
    if value > limit:
        return "miss", f"{name} {value:.4g}{unit} is over the limit {limit:.4g}{unit}"
    if value > limit * (1 - margin):
        return "close", f"{name} {value:.4g}{unit} is within {margin:.0%} of the limit {limit:.4g}{unit}"
    return "pass", f"{name} {value:.4g}{unit} is under the limit {limit:.4g}{unit}"


def decide(s: MilestoneSnapshot) -> Verdict:
    checks, reasons = {}, []
    if s.authenticity_mean is None or s.authenticity_ci is None:
        checks["authenticity"], why = "unknown", "authenticity unknown"
    else:
        lo, hi = s.authenticity_ci
        m = s.min_authenticity
        if hi < m:
            checks["authenticity"], why = "miss", f"authenticity {s.authenticity_mean:.1f} % (95 % CI {lo:.1f}-{hi:.1f}) is below {m:g} %"
        elif lo < m:
            checks["authenticity"], why = "close", f"authenticity {s.authenticity_mean:.1f} % (95 % CI {lo:.1f}-{hi:.1f}) straddles {m:g} %"
        elif lo < m * (1 + s.margin):
            checks["authenticity"], why = "close", f"authenticity 95 % CI {lo:.1f}-{hi:.1f} is within {s.margin:.0%} of {m:g} %"
        else:
            checks["authenticity"], why = "pass", f"authenticity {s.authenticity_mean:.1f} % (95 % CI {lo:.1f}-{hi:.1f}) is above {m:g} %"
    reasons.append(why)
    checks["cost"], why = _upper_check("spend", s.cost_usd, s.max_cost, s.margin, " USD")
    reasons.append(why)
    checks["val_loss"], why = _upper_check("validation loss", s.val_loss, s.max_val_loss, s.margin, "")
    reasons.append(why)
    values = set(checks.values())
    decision = NO_GO if "miss" in values else CONDITIONAL if values & {"close", "unknown"} else GO
    return Verdict(decision, tuple(reasons), checks)
