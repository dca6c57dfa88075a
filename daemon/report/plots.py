"""The report's four plots, drawn with matplotlib (Agg: no display) as PNG bytes.

Each returns None when there is nothing to draw (the report says "not available"); nothing a
file holds is drawn as text (a prompt with `$` would be parsed as mathtext): pairs are numbered
and the table beside the plot names them.
"""
from __future__ import annotations

import io
from datetime import datetime
from typing import Any

from ..common.clock import is_utc_time, parse_iso
from .inputs import Inputs
from .values import num, obj, seq, text

MODEL, BASELINE, LIMIT, MARK = "#c0392b", "#7f8c8d", "#2c3e50", "#8e44ad"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "svg.hashsalt": "amapiano", "figure.dpi": 100})
    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def _time(value: Any) -> datetime | None:
    return parse_iso(value) if is_utc_time(value) else None


def _start(inp: Inputs, points: list) -> float | None:
    started = _time(obj(inp.state).get("started_at"))
    return started.timestamp() if started else (points[0][1] if points else None)


def loss(inp: Inputs) -> bytes | None:
    """Training and validation loss against steps, the baseline's validation loss as a line."""
    train, val = inp.scalars.get("train/loss", []), inp.scalars.get("val/loss", [])
    if not val:  # no event files: the validation losses the red-flag rule kept in state.json
        val = [(int(p[2]), p[0], p[1]) for p in seq(obj(obj(inp.state).get("red_flags")).get("val_history"))
               if isinstance(p, list) and len(p) == 3 and all(num(x) is not None for x in p)]
    if not train and not val:
        return None
    ev = obj(inp.evaluation)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.4))
    if train:
        ax.plot([p[0] for p in train], [p[2] for p in train], color="#95a5a6", lw=1, label="training loss")
    if val:
        ax.plot([p[0] for p in val], [p[2] for p in val], color=MODEL, lw=1.8, marker="o", ms=3,
                label="validation loss")
    if (base := num(obj(ev.get("baseline")).get("val_loss"))) is not None:
        ax.axhline(base, color=BASELINE, ls="--", lw=1.2, label=f"baseline (pre-trained) validation loss {base:.3g}")
    limit = num(obj(obj(inp.decision).get("thresholds")).get("max_val_loss"))
    if limit is not None:
        ax.axhline(limit, color=LIMIT, ls=":", lw=1, label=f"milestone maximum {limit:.3g}")
    step = obj(ev.get("checkpoint")).get("step")
    if isinstance(step, int) and not isinstance(step, bool) and 0 <= step < 1e12:
        ax.axvline(step, color=MARK, lw=1, alpha=0.6, label=f"evaluated checkpoint (step {step})")
        if (mv := num(obj(ev.get("model")).get("val_loss"))) is not None:
            ax.plot([step], [mv], marker="D", color=MARK, ms=6, ls="none", label=f"model at evaluation {mv:.3g}")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7, loc="upper right")
    return _png(fig)


def _spend_points(inp: Inputs) -> list[tuple[float, float]]:
    """(wall seconds, dollars): the supervisor's cost scalar, else state.json's hourly ledger."""
    points = [(p[1], p[2]) for p in inp.scalars.get("cost/total_usd", [])]
    if points:
        return points
    total, out = 0.0, []
    for hour, usd in sorted(obj(obj(inp.state).get("cost")).get("hourly", {}).items()):
        start = _time(f"{hour}:00:00Z") if isinstance(hour, str) else None
        if start is not None and (usd := num(usd)) is not None:
            total += usd
            out.append((start.timestamp() + 3600, total))
    return out


def _clock(span_s: float) -> tuple[float, str]:
    """(seconds per unit, axis label) for a span of wall time: a demo's minutes, a run's days."""
    if span_s < 2 * 3600:
        return 60.0, "minutes since the run started"
    if span_s < 72 * 3600:
        return 3600.0, "hours since the run started"
    return 86400.0, "days since the run started"


def spend(inp: Inputs) -> bytes | None:
    """Spend against the budget, with the forecast to completion and the milestone marked."""
    points = _spend_points(inp)
    if not points:
        return None
    t0 = _start(inp, [(0, w, v) for w, v in points]) or points[0][0]
    forecast = obj(obj(inp.state).get("cost")).get("forecast")
    ahead, at_end = num(obj(forecast).get("hours_to_completion")), num(obj(forecast).get("at_completion_usd"))
    ahead = ahead if ahead is not None and at_end is not None and 0 < ahead < 1e5 else None
    unit, xlabel = _clock(points[-1][0] - t0 + (ahead or 0) * 3600)
    xs = [(w - t0) / unit for w, _ in points]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.4))
    ax.plot(xs, [v for _, v in points], color=MODEL, lw=1.8, label=f"spent ${points[-1][1]:,.2f}")
    if ahead is not None:
        ax.plot([xs[-1], xs[-1] + ahead * 3600 / unit], [points[-1][1], at_end], color=MODEL, ls="--", lw=1,
                label=f"forecast at completion ${at_end:,.2f}")
    cap = num(obj(obj(inp.decision).get("thresholds")).get("max_cost_usd"))
    cap = inp.cfg.milestone.max_cost_usd if cap is None else cap
    ax.axhline(cap, color=BASELINE, ls="--", lw=1, label=f"milestone spend limit ${cap:,.2f}")
    budget = num(obj(obj(inp.state).get("budget")).get("max_usd")) or inp.cfg.budget.max_usd
    seen = max([v for _, v in points] + [at_end or 0.0, cap])
    if budget <= 3 * seen:  # else the cap would flatten every other line: it is named, not drawn
        ax.axhline(budget, color=LIMIT, ls=":", lw=1.2, label=f"budget cap ${budget:,.2f}")
        ax.set_ylim(0, budget * 1.08)
    else:
        ax.set_ylim(0, seen * 1.25)
        ax.plot([], [], color=LIMIT, ls=":", label=f"budget cap ${budget:,.2f} (above this scale)")
    ms = obj(obj(inp.state).get("milestone"))
    when = _time(obj(inp.decision).get("decided_at")) or _time(ms.get("due_at")) or _time(ms.get("due_forecast"))
    if when is not None:
        ax.axvline((when.timestamp() - t0) / unit, color=MARK, lw=1, label="milestone")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("US dollars")
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def pairs(ev: dict) -> list[tuple[float, float]]:
    """(model, baseline) authenticity per pair: same prompt, same seed."""
    model, base = seq(obj(ev.get("model")).get("samples")), seq(obj(ev.get("baseline")).get("samples"))
    out = []
    for a, b in zip(model, base):
        x, y = num(obj(a).get("score_pct")), num(obj(b).get("score_pct"))
        if x is not None and y is not None:
            out.append((x, y))
    return out


def paired(inp: Inputs) -> bytes | None:
    """Authenticity per prompt, model against baseline, and the bootstrap interval of the difference."""
    ev = obj(inp.evaluation)
    scored = pairs(ev)
    if not scored:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4), gridspec_kw={"width_ratios": [3, 1]})
    xs = list(range(1, len(scored) + 1))
    # one artist for all the pairs' lines: one each made 100,000 pairs take 156 s (the child has 180)
    left.vlines(xs, [b for _, b in scored], [m for m, _ in scored], color="#bdc3c7", lw=1, zorder=1)
    left.scatter(xs, [b for _, b in scored], color=BASELINE, label="baseline (pre-trained)", zorder=2, s=18)
    left.scatter(xs, [m for m, _ in scored], color=MODEL, label="model (fine-tuned)", zorder=3, s=18)
    if (minimum := num(obj(obj(inp.decision).get("thresholds")).get("min_authenticity_pct"))) is not None:
        left.axhline(minimum, color=LIMIT, ls=":", lw=1, label=f"milestone minimum {minimum:g} %")
    left.set_xlabel("pair (prompt and seed; see the table)")
    left.set_ylabel("authenticity %")
    left.legend(fontsize=7, loc="lower right")  # "best" searches every point: slow past thousands
    diffs = [m - b for m, b in scored]
    right.scatter([0.0] * len(diffs), diffs, color="#bdc3c7", s=12, zorder=1)
    comp = obj(ev.get("comparison"))
    mean, ci = num(comp.get("improvement_pct")), seq(comp.get("ci95_pct"))
    if mean is not None and len(ci) == 2 and all(num(c) is not None for c in ci):
        right.errorbar([0.0], [mean], yerr=[[max(0.0, mean - ci[0])], [max(0.0, ci[1] - mean)]], fmt="o",
                       color=MODEL, capsize=6, lw=2, zorder=2)
        p = num(comp.get("p_value"))
        right.set_title(f"{mean:+.2f} points\n95 % CI {ci[0]:+.2f} to {ci[1]:+.2f}"
                        + (f"\np = {p:.3g}" if p is not None else ""), fontsize=8)
    right.axhline(0, color=LIMIT, lw=1)
    right.set_xticks([])
    right.set_ylabel("model minus baseline (points)")
    return _png(fig)


def gpu(inp: Inputs) -> bytes | None:
    """GPU utilisation over time, where NVML measured it."""
    tags = sorted(t for t in inp.scalars if t.endswith("/util_pct") and t.startswith("gpu"))
    series = {t: inp.scalars[t] for t in tags if inp.scalars[t]}
    if not series:
        return None
    t0 = _start(inp, min(series.values(), key=lambda s: s[0][1])) or 0.0
    unit, xlabel = _clock(max(p[1] for s in series.values() for p in s) - t0)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 2.8))
    for tag, points in series.items():
        label = "all GPUs, 1-minute average" if tag == "gpu/util_pct" else tag.split("/")[0]
        ax.plot([(p[1] - t0) / unit for p in points], [p[2] for p in points], lw=1.5 if tag == "gpu/util_pct" else 0.8,
                label=label)
    threshold = inp.cfg.idle.gpu_util_threshold_pct
    ax.axhline(threshold, color=LIMIT, ls=":", lw=1, label=f"idle threshold {threshold:g} %")
    ax.set_ylim(0, 105)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("utilisation %")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def why_not(inp: Inputs, key: str) -> str:
    """Why a plot has nothing to draw, in the words a person needs."""
    gpu_state = obj(obj(inp.state).get("gpu"))
    return {"loss": "no loss logged yet (no TensorBoard scalars, no validation history in state.json)",
            "spend": "no spend recorded yet",
            "paired": "no evaluation yet: the milestone generates both sides' clips and scores them",
            "gpu": f"not measured ({text(gpu_state.get('error'), 200)})" if gpu_state.get("error")
            else "no GPU readings (NVML) in the TensorBoard files"}[key]


PLOTS = (("loss", "Loss", loss), ("spend", "Spend against the budget", spend),
         ("paired", "Authenticity per prompt: model against baseline", paired),
         ("gpu", "GPU utilisation", gpu))
