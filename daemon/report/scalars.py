"""TensorBoard for the report, both ways, without torch: the curves it draws (the trainer's
train/loss and val/loss, the supervisor's cost and GPU scalars) read from the event files, and
the milestone's and completion's figures written as scalars at the evaluated checkpoint's step.

Each event file is read on its own (regular files only, bounded in size, points and time;
daemon/report/events.py): a FIFO or a damaged file planted in the log directory costs its curve,
never the report. A worker
restarted from a checkpoint starts a new file at that step; its points replace the old file's
from there on, as TensorBoard's purge does (the trainer's directory only: the supervisor's
points are drawn against wall time, and a restarted supervisor starts at step 0).
"""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

from .events import Point, read_file

RUNS = ("train", "supervisor")     # the writers' subdirectories (trainer/worker/train.py, daemon/tensorboard.py)
MAX_FILE_BYTES = 1 << 30
READ_S = 60.0                      # all the event files together: a third of the report child's 180 s
FIGURES = "evaluation"             # where the report child writes the milestone's figures


def _files(directory: Path) -> tuple[list[Path], list[str]]:
    problems: list[str] = []
    files: list[tuple[float, str, Path]] = []
    for path in sorted(directory.glob("*tfevents*")):
        try:
            st = os.stat(path)
        except OSError as e:
            problems.append(f"{path}: unreadable ({e.strerror})")
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
            problems.append(f"{path}: not a regular event file under 1 GiB: left out")
            continue
        files.append((st.st_mtime, path.name, path))  # the stat taken: a file gone since raised here
    return [path for *_, path in sorted(files)], problems


def read(logdir: Path) -> tuple[dict[str, list[Point]], list[str]]:
    """{tag: points} from the trainer's and the supervisor's event files, and what was left out."""
    series: dict[str, list[Point]] = {}
    problems: list[str] = []
    deadline = time.monotonic() + READ_S
    for run in RUNS:
        directory = logdir / run
        if not directory.is_dir():
            continue
        files, bad = _files(directory)
        problems += bad
        for path in files:
            loaded, why = read_file(path, deadline)
            if why:
                problems.append(f"{path}: {why}")
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
