"""Red flags: early warnings before the milestone, each emailed once and listed in state.json.

    decide(snapshot, raised) -> (alerts, raised)

- validation loss not decreasing over `[red_flags] val_loss_stall` (3 days): a least-squares
  slope over the values logged in that window (at least 3 of them, and the window covered),
  not a comparison of two points;
- GPU utilisation under `min_gpu_util_pct` (50 %) for the last hour while the worker trains;
- spend over `max_cost_before_milestone_usd` ($400) before the milestone has been decided.
A flag that clears (the loss falls again, the GPU is busy again) re-arms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .actions import SendAlert


@dataclass(frozen=True)
class RedFlagSnapshot:
    now_s: float                                  # wall clock, seconds since the epoch
    val_history: tuple[tuple[float, float], ...]  # (wall seconds, validation loss), oldest first
    gpu_util_1h_pct: float | None                 # None: no GPU metrics
    training: bool                                # the worker runs and is not loading/evaluating
    spent_usd: float | None
    milestone_decided: bool
    stall_s: float
    min_gpu_util_pct: float
    max_cost_before_milestone_usd: float


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of loss against time (per day)."""
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in points) / var * 86400


def decide(s: RedFlagSnapshot, raised: frozenset[str]) -> tuple[list[SendAlert], frozenset[str]]:
    out: list[SendAlert] = []
    now_raised = set(raised)

    def flag(key: str, on: bool, subject: str, body: str) -> None:
        if on and key not in now_raised:
            now_raised.add(key)
            out.append(SendAlert("red_flag", subject, body))
        elif not on:
            now_raised.discard(key)

    window = [(t, v) for t, v in s.val_history if t >= s.now_s - s.stall_s]
    covered = bool(s.val_history) and s.val_history[0][0] <= s.now_s - s.stall_s * 0.9
    if len(window) >= 3 and covered:
        per_day = slope(window)
        flag("val_loss_stall", per_day >= 0, "red flag: validation loss not decreasing",
             f"Over the last {s.stall_s / 86400:g} days the validation loss trend is {per_day:+.4f} per day "
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


def load_history(data: object) -> list[tuple[float, float]]:
    """The validation-loss history kept in state.json; malformed points are dropped."""
    out = []
    for p in data if isinstance(data, list) else []:
        if (isinstance(p, list) and len(p) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        and math.isfinite(x) for x in p)):
            out.append((float(p[0]), float(p[1])))
    return out[-HISTORY_MAX:]


def record(history: list[tuple[float, float]], now_s: float, val_loss: float | None) -> list[tuple[float, float]]:
    """A new point each time the worker reports a different validation loss."""
    if val_loss is None or not math.isfinite(val_loss) or (history and history[-1][1] == val_loss):
        return history
    return (history + [(now_s, float(val_loss))])[-HISTORY_MAX:]


def snapshot(cfg: Any, now_s: float, history: list[tuple[float, float]], gpu_util_1h_pct: float | None,
             spent_usd: float | None, training: bool, milestone_decided: bool) -> RedFlagSnapshot:
    """The snapshot for [red_flags] `cfg`."""
    return RedFlagSnapshot(now_s, tuple(history), gpu_util_1h_pct, training, spent_usd, milestone_decided,
                           cfg.val_loss_stall, cfg.min_gpu_util_pct, cfg.max_cost_before_milestone_usd)


def section(raised: frozenset[str], history: list[tuple[float, float]]) -> dict:
    """state.json's `red_flags` section."""
    return {"raised": sorted(raised), "val_history": [list(p) for p in history[-HISTORY_MAX:]]}


def load(section: dict | None) -> tuple[frozenset[str], list[tuple[float, float]]]:
    """(raised, history) from state.json's `red_flags` section."""
    flags = section or {}
    return frozenset(x for x in flags.get("raised", []) if isinstance(x, str)), load_history(flags.get("val_history"))
