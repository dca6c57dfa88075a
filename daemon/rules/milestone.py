"""The milestone rule: GO, CONDITIONAL GO, NO-GO or INCONCLUSIVE from the evaluation's figures,
and when the milestone is due.

    decide(snapshot) -> Verdict
    is_due(when, progress) -> bool;  forecast(when, progress) -> ISO time or None

The question (H0: fine-tuning does not make the model more Amapiano-like than the pre-trained
one) is answered on paired samples: model and baseline generate from the same prompts and
seeds, and the evaluation reports the mean improvement with a paired bootstrap interval and a
one-sided Wilcoxon signed-rank p-value.

- INCONCLUSIVE, never a decision, when the evidence is degenerate: a failed generation, model
  and baseline audio identical, a silent or constant sample, a zero-width interval, or too few
  pairs for the test to reach `alpha` at all (2^-n > alpha). The milestone runs again later.
- NO-GO when a figure clearly misses: the model's whole 95 % interval under the minimum
  authenticity, the improvement's whole interval at or under 0, spend over the cap,
  validation loss over the maximum.
- CONDITIONAL GO when a figure is close (the interval straddles the minimum, the improvement is
  not significant, a figure within `margin` of its limit) or unknown.
- GO when the model is above the minimum AND significantly better than the baseline, and spend
  and loss are under their limits. Each figure gives one reason, so the report says which failed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

GO, CONDITIONAL, NO_GO, INCONCLUSIVE = "GO", "CONDITIONAL GO", "NO-GO", "INCONCLUSIVE"


@dataclass(frozen=True)
class Evidence:
    """What the evaluation says about its own samples (trainer/evaluation/paired.py)."""

    n: int = 0                     # pairs scored
    failed: int = 0                # generations that raised or gave no audio
    identical: int = 0             # pairs whose model and baseline audio are the same bytes
    silent: int = 0                # samples (either side) silent or constant
    improvement_mean: float | None = None
    improvement_ci: tuple[float, float] | None = None
    p_value: float | None = None


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
    evidence: Evidence = field(default_factory=Evidence)
    alpha: float = 0.05


@dataclass(frozen=True)
class Verdict:
    decision: str
    reasons: tuple[str, ...]
    checks: dict[str, str]        # figure -> "pass" | "close" | "miss" | "unknown" | "degenerate"


def degenerate(s: MilestoneSnapshot) -> list[str]:
    """Why the evidence cannot carry a decision; empty when it can."""
    e, why = s.evidence, []
    if e.failed:
        why.append(f"{e.failed} generation(s) failed")
    if e.n and e.identical:
        why.append(f"{e.identical} of {e.n} model/baseline pairs are identical audio")
    if e.silent:
        why.append(f"{e.silent} sample(s) are silent or constant")
    if 2.0 ** -e.n > s.alpha:
        why.append(f"{e.n} pairs cannot reach p < {s.alpha:g} (a signed-rank test needs 2^-n <= alpha)")
    for name, ci in (("authenticity", s.authenticity_ci), ("improvement", e.improvement_ci)):
        if ci is not None and ci[1] - ci[0] <= 0:
            why.append(f"the {name} interval has zero width ({ci[0]:.1f}-{ci[1]:.1f})")
    return why


def _upper_check(name: str, value: float | None, limit: float, margin: float, unit: str) -> tuple[str, str]:
    if value is None:
        return "unknown", f"{name} unknown"
    if value > limit:
        return "miss", f"{name} {value:.4g}{unit} is over the limit {limit:.4g}{unit}"
    if value > limit * (1 - margin):
        return "close", f"{name} {value:.4g}{unit} is within {margin:.0%} of the limit {limit:.4g}{unit}"
    return "pass", f"{name} {value:.4g}{unit} is under the limit {limit:.4g}{unit}"


def _authenticity(s: MilestoneSnapshot) -> tuple[str, str]:
    if s.authenticity_mean is None or s.authenticity_ci is None:
        return "unknown", "authenticity unknown"
    lo, hi = s.authenticity_ci
    m, fig = s.min_authenticity, f"authenticity {s.authenticity_mean:.1f} % (95 % CI {lo:.1f}-{hi:.1f})"
    if hi < m:
        return "miss", f"{fig} is below {m:g} %"
    if lo < m:
        return "close", f"{fig} straddles {m:g} %"
    if lo < m * (1 + s.margin):
        return "close", f"authenticity 95 % CI {lo:.1f}-{hi:.1f} is within {s.margin:.0%} of {m:g} %"
    return "pass", f"{fig} is above {m:g} %"


def _improvement(s: MilestoneSnapshot) -> tuple[str, str]:
    e = s.evidence
    if e.improvement_mean is None or e.improvement_ci is None or e.p_value is None:
        return "unknown", "improvement over the baseline unknown"
    lo, hi = e.improvement_ci
    fig = f"improvement over the baseline {e.improvement_mean:+.1f} points (95 % CI {lo:+.1f} to {hi:+.1f}, p = {e.p_value:.3g})"
    if hi <= 0:
        return "miss", f"{fig}: not better than the baseline"
    if e.p_value >= s.alpha or lo <= 0:
        return "close", f"{fig}: not significant at {s.alpha:g}"
    return "pass", f"{fig}: significant at {s.alpha:g}"


def decide(s: MilestoneSnapshot) -> Verdict:
    if why := degenerate(s):
        return Verdict(INCONCLUSIVE, tuple(f"degenerate evidence: {w}" for w in why), {"evidence": "degenerate"})
    checks, reasons = {}, []
    for name, (check, why) in (("authenticity", _authenticity(s)), ("improvement", _improvement(s)),
                               ("cost", _upper_check("spend", s.cost_usd, s.max_cost, s.margin, " USD")),
                               ("val_loss", _upper_check("validation loss", s.val_loss, s.max_val_loss, s.margin, ""))):
        checks[name] = check
        reasons.append(why)
    values = set(checks.values())
    decision = NO_GO if "miss" in values else CONDITIONAL if values & {"close", "unknown"} else GO
    return Verdict(decision, tuple(reasons), checks)


@dataclass(frozen=True)
class Progress:
    """Where the run stands: the wall clock, when it started, and the heartbeat's steps."""

    now: datetime
    started: datetime
    step: int | None = None
    total_steps: int | None = None
    epochs: int | None = None       # [train] epochs, for "epoch N"


def target_step(when: tuple[str, float], p: Progress) -> int | None:
    """The optimizer step the milestone waits for, for a share or an epoch; None for a duration
    or while the total is unknown (the worker has not written a heartbeat yet)."""
    kind, value = when
    if kind == "duration" or not p.total_steps:
        return None
    share = value if kind == "share" else min(1.0, value / p.epochs) if p.epochs else None
    return None if share is None else max(1, round(share * p.total_steps))


def is_due(when: tuple[str, float], p: Progress) -> bool:
    if when[0] == "duration":
        return p.now >= p.started + timedelta(seconds=when[1])
    target = target_step(when, p)
    return target is not None and p.step is not None and p.step >= target


def forecast(when: tuple[str, float], p: Progress) -> datetime | None:
    """When it will be due: exact for a duration, else extrapolated from the steps so far."""
    if when[0] == "duration":
        return p.started + timedelta(seconds=when[1])
    target = target_step(when, p)
    if target is None or not p.step or p.step <= 0:
        return None
    if p.step >= target:
        return p.now
    per_step = (p.now - p.started).total_seconds() / p.step
    return p.now + timedelta(seconds=per_step * (target - p.step))
