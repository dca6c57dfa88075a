"""TensorBoard for the report, both ways, without torch: the curves it draws (the trainer's
train/loss and val/loss, the supervisor's cost and GPU scalars) read from the event files, and
the milestone's and completion's figures written as scalars at the evaluated checkpoint's step.

Each event file is read on its own (regular files only, bounded in size and points): a FIFO or
a damaged file planted in the log directory costs its curve, never the report. A worker
restarted from a checkpoint starts a new file at that step; its points replace the old file's
from there on, as TensorBoard's purge does (the trainer's directory only: the supervisor's
points are drawn against wall time, and a restarted supervisor starts at step 0).
"""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any

Point = tuple[int, float, float]   # (step, wall time, value)

RUNS = ("train", "supervisor")     # the writers' subdirectories (trainer/worker/train.py, daemon/tensorboard.py)
MAX_POINTS = 4000                  # per tag and file: TensorBoard's own reservoir sampling keeps the shape
MAX_FILE_BYTES = 1 << 30
FIGURES = "evaluation"             # where the report child writes the milestone's figures


def _files(directory: Path) -> tuple[list[Path], list[str]]:
    problems, files = [], []
    for path in sorted(directory.glob("*tfevents*")):
        try:
            st = os.stat(path)
        except OSError as e:
            problems.append(f"{path}: unreadable ({e.strerror})")
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
            problems.append(f"{path}: not a regular event file under 1 GiB: left out")
            continue
        files.append(path)
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name)), problems


def _load(path: Path) -> dict[str, list[Point]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": MAX_POINTS, "tensors": 1, "images": 1,
                                                     "audio": 1, "histograms": 1, "compressedHistograms": 1})
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("scalars", []):
        out[tag] = [(int(e.step), float(e.wall_time), float(e.value)) for e in acc.Scalars(tag)
                    if math.isfinite(e.value) and math.isfinite(e.wall_time)]
    return out


def read(logdir: Path) -> tuple[dict[str, list[Point]], list[str]]:
    """{tag: points} from the trainer's and the supervisor's event files, and what was left out."""
    series: dict[str, list[Point]] = {}
    problems: list[str] = []
    for run in RUNS:
        directory = logdir / run
        if not directory.is_dir():
            continue
        files, bad = _files(directory)
        problems += bad
        for path in files:
            try:
                loaded = _load(path)
            except Exception as e:  # a damaged record: tensorboard's errors are many and not ours
                problems.append(f"{path}: unreadable ({type(e).__name__}): left out")
                continue
            for tag, points in loaded.items():
                old = series.get(tag, [])
                if run == "train" and points:  # the restarted worker's curve replaces the old one from its step
                    old = [p for p in old if p[0] < points[0][0]]
                series[tag] = old + points
    for tag, points in series.items():
        points.sort(key=lambda p: (p[0], p[1]) if tag.startswith(("train/", "val/")) else (p[1], p[0]))
    if not series:
        problems.append(f"{logdir}: no TensorBoard scalars yet")
    return series, problems


def figures(kind: str, evaluation: dict, decision: dict | None) -> tuple[int | None, dict[str, float | None]]:
    """(the evaluated checkpoint's step, {tag: value}) for the milestone's or completion's figures."""
    from ..reports import DECISION_SCALAR
    from .values import num, obj

    model, base, comp = obj(evaluation.get("model")), obj(evaluation.get("baseline")), obj(evaluation.get("comparison"))
    step = obj(evaluation.get("checkpoint")).get("step")
    fad = lambda side: num(obj(side.get("fad_clap")).get("fad_inf")) or num(obj(side.get("fad_clap")).get("fad"))  # noqa: E731
    out = {"authenticity_pct": num(obj(model.get("authenticity")).get("mean_pct")),
           "baseline_authenticity_pct": num(obj(base.get("authenticity")).get("mean_pct")),
           "improvement_pct": num(comp.get("improvement_pct")), "p_value": num(comp.get("p_value")),
           "fad_model": fad(model), "fad_baseline": fad(base), "val_loss": num(model.get("val_loss")),
           "baseline_val_loss": num(base.get("val_loss"))}
    if kind == "milestone" and decision is not None:
        out["decision"] = DECISION_SCALAR.get(decision.get("decision"))
    prefix = "milestone" if kind == "milestone" else "completion"
    valid = type(step) is int and 0 <= step < 2 ** 62
    return (step if valid else None), {f"{prefix}/{k}": v for k, v in out.items()}


def write_figures(logdir: Path, kind: str, evaluation: dict, decision: dict | None, now: Any) -> str | None:
    """The figures as scalars at their step (a process of our own: one writer per process).
    Returns why not, or None when written."""
    from ..tensorboard import ScalarWriter

    step, values = figures(kind, evaluation, decision)
    if step is None:
        return "the evaluation names no checkpoint step: its figures are not in TensorBoard"
    writer = ScalarWriter(logdir / FIGURES)
    writer.write_at(values, now, step)
    writer.close()
    return None
