"""Red flags: early warnings before the milestone, each emailed once and listed in state.json.

    decide(snapshot, raised) -> (alerts, raised)

- validation loss not decreasing over `[red_flags] val_loss_stall`: a least-squares slope over
  the values logged in that window (at least 3 of them, and the window covered), not a
  comparison of two points. The window is a share of the training steps ("15%", the default,
  so the flag can fire in a run of hours as in one of weeks) or a duration ("3d");
- GPU utilisation under `min_gpu_util_pct` (50 %) for the last hour while the worker trains;
- spend over `max_cost_before_milestone_usd` ($400) before the milestone has been decided.
A flag that clears (the loss falls again, the GPU is busy again) re-arms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..actions import SendAlert
from ..common.config_sections import parse_window


Point = tuple[float, float, float | None]  # (wall seconds, validation loss, training step or None)


@dataclass(frozen=True)
class RedFlagSnapshot:
    now_s: float                                  # wall clock, seconds since the epoch
    val_history: tuple[Point, ...]                # oldest first
    gpu_util_1h_pct: float | None                 # None: no GPU metrics
    training: bool                                # the worker runs and is not loading/evaluating
    spent_usd: float | None
    milestone_decided: bool
    stall_s: float | None                         # the window as a duration, or
    stall_share: float | None                     # as a share of the training steps
    min_gpu_util_pct: float
    max_cost_before_milestone_usd: float
    step: int | None = None                       # where training stands, of
    total_steps: int | None = None


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of loss against x (seconds or steps), per unit of x."""
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in points) / var


def stall_window(s: RedFlagSnapshot) -> tuple[list[tuple[float, float]], bool, str, str, float]:
    """The (x, loss) points in the stall window, whether the history covers the window, the
    window and the trend's unit in words, and the unit's size in x."""
    if s.stall_s is not None:
        points, start, span = [(t, v) for t, v, _ in s.val_history], s.now_s - s.stall_s, s.stall_s
        what, unit, per = f"{s.stall_s / 86400:g} days", "day", 86400.0
    elif s.stall_share is not None and s.step is not None and s.total_steps:
        span = s.stall_share * s.total_steps
        points, start = [(st, v) for _, v, st in s.val_history if st is not None], s.step - span
        what, unit, per = f"{s.stall_share * 100:g} % of training ({span:.0f} steps)", "1,000 steps", 1000.0
    else:
        return [], False, "", "", 1.0  # the total number of steps is not known yet
    covered = bool(points) and points[0][0] <= start + 0.1 * span
    return [(x, v) for x, v in points if x >= start], covered, what, unit, per


def decide(s: RedFlagSnapshot, raised: frozenset[str]) -> tuple[list[SendAlert], frozenset[str]]:
    out: list[SendAlert] = []
    now_raised = set(raised)

    def flag(key: str, on: bool, subject: str, body: str) -> None:
        if on and key not in now_raised:
            now_raised.add(key)
            out.append(SendAlert("red_flag", subject, body))
        elif not on:
            now_raised.discard(key)

    window, covered, what, unit, per = stall_window(s)
    if len(window) >= 3 and covered:
        trend = slope(window) * per
        flag("val_loss_stall", trend >= 0, "red flag: validation loss not decreasing",
             f"Over the last {what} the validation loss trend is {trend:+.4f} per {unit} "
             f"({len(window)} values, from {window[0][1]:.4f} to {window[-1][1]:.4f}).")
    if s.gpu_util_1h_pct is not None and s.training:
        flag("gpu_util_low", s.gpu_util_1h_pct < s.min_gpu_util_pct, "red flag: GPU utilisation low",
             f"GPU utilisation averaged {s.gpu_util_1h_pct:.0f} % over the last hour while training "
             f"(threshold {s.min_gpu_util_pct:g} %): data loading or a small batch is wasting the GPU.")
    if s.spent_usd is not None and not s.milestone_decided:
        flag("spend_before_milestone", s.spent_usd > s.max_cost_before_milestone_usd,
             "red flag: spend high before the milestone",
             f"${s.spent_usd:,.2f} spent before the milestone (threshold "
             f"${s.max_cost_before_milestone_usd:,.2f}).")
    return out, frozenset(now_raised)


HISTORY_MAX = 2000


def load_history(data: object) -> list[Point]:
    """The validation-loss history kept in state.json ([t, loss] or [t, loss, step]); malformed
    points are dropped."""
    out: list[Point] = []
    for p in data if isinstance(data, list) else []:
        if (isinstance(p, list) and len(p) in (2, 3) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                             and math.isfinite(x) for x in p)):
            out.append((float(p[0]), float(p[1]), float(p[2]) if len(p) == 3 else None))
    return out[-HISTORY_MAX:]


def record(history: list[Point], now_s: float, val_loss: float | None, step: int | None = None) -> list[Point]:
    """A new point each time the worker reports a different validation loss."""
    if val_loss is None or not math.isfinite(val_loss) or (history and history[-1][1] == val_loss):
        return history
    return (history + [(now_s, float(val_loss), None if step is None else float(step))])[-HISTORY_MAX:]


def snapshot(cfg: Any, now_s: float, history: list[Point], gpu_util_1h_pct: float | None,
             spent_usd: float | None, training: bool, milestone_decided: bool,
             step: int | None = None, total_steps: int | None = None) -> RedFlagSnapshot:
    """The snapshot for [red_flags] `cfg`."""
    kind, value = parse_window(cfg.val_loss_stall)
    return RedFlagSnapshot(now_s, tuple(history), gpu_util_1h_pct, training, spent_usd, milestone_decided,
                           value if kind == "duration" else None, value if kind == "share" else None,
                           cfg.min_gpu_util_pct, cfg.max_cost_before_milestone_usd, step, total_steps)


def section(raised: frozenset[str], history: list[Point]) -> dict:
    """state.json's `red_flags` section."""
    return {"raised": sorted(raised),
            "val_history": [[t, v] if st is None else [t, v, st] for t, v, st in history[-HISTORY_MAX:]]}


def load(section: dict | None) -> tuple[frozenset[str], list[Point]]:
    """(raised, history) from state.json's `red_flags` section."""
    flags = section if isinstance(section, dict) else {}
    raised = flags.get("raised") if isinstance(flags.get("raised"), list) else []
    return frozenset(x for x in raised if isinstance(x, str)), load_history(flags.get("val_history"))
