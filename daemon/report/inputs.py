"""What a report is made of, read defensively: state.json, the milestone's and the completion's
JSON, the TensorBoard scalars and the config's digest. Every file here was written by another
process or can be edited by hand: an absent or unusable one is a note ("not available"), a
value of the wrong kind reads as unknown, and nothing read is trusted to be markup-free
(daemon/report/html.py escapes it all)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.atomic import read_bytes, read_json
from ..common.clock import Clock, iso
from ..common.config import Config
from . import NAMES, scalars as tb
from .values import obj


@dataclass
class Inputs:
    kind: str                                   # "milestone" | "completion" | "now"
    cfg: Config
    generated_at: str
    state: dict | None = None                   # state.json as its loader checked it
    decision: dict | None = None                # week_5_metrics.json: the milestone's figures and verdict
    evaluation: dict | None = None              # the evaluation shown: model, baseline, comparison, samples
    completion: dict | None = None              # completion_report.json
    abort: dict | None = None                   # abort_report.json (a NO-GO's next step)
    scalars: dict[str, list[tb.Point]] = field(default_factory=dict)
    digest: str | None = None                   # sha256 of config.toml, 12 hex
    notes: list[str] = field(default_factory=list)   # what could not be read, said in the report

    @property
    def name(self) -> str:
        return NAMES[self.kind]


def _json(path: Path, notes: list[str]) -> dict | None:
    data = read_json(path)
    if data is None and (path.exists() or path.is_symlink()):
        notes.append(f"{path.name}: unreadable (not a JSON object, damaged or too large): left out")
    return data


def _state(cfg: Config, notes: list[str]) -> dict | None:
    from ..state import StateError, load_state

    try:
        state = load_state(cfg.state_file)
    except StateError as e:
        notes.append(f"state.json: {e}")
        return None
    if state is None:
        notes.append(f"{cfg.state_file}: no state file yet (the run's id, spend and GPU are not available)")
        return None
    return state.to_json()


def digest(path: Path | None) -> str | None:
    try:
        return hashlib.sha256(read_bytes(path, 1024 * 1024)).hexdigest()[:12] if path else None
    except OSError:
        return None


def gather(cfg: Config, kind: str, clock: Any = None) -> Inputs:
    """Everything a report of `kind` shows; never raises for a bad input file."""
    now = (clock or Clock()).now()
    inp = Inputs(kind=kind, cfg=cfg, generated_at=iso(now) or "", digest=digest(cfg.source))
    notes, reports = inp.notes, cfg.reports_dir
    inp.state = _state(cfg, notes)
    inp.decision = _json(reports / "week_5_metrics.json", notes)
    if inp.decision is not None and not isinstance(inp.decision.get("decision"), str):
        notes.append("week_5_metrics.json: holds no decision: left out")
        inp.decision = None
    inp.completion = _json(reports / "completion_report.json", notes) if kind != "milestone" else None
    if obj(inp.decision).get("decision") == "NO-GO":
        inp.abort = _json(reports / "abort_report.json", notes)
    final = obj(obj(inp.completion).get("final_evaluation"))
    inp.evaluation = (final or inp.decision) if kind == "completion" else inp.decision
    if not isinstance(obj(inp.evaluation).get("model"), dict):
        inp.evaluation = None
    inp.scalars, problems = tb.read(cfg.tensorboard_dir)
    notes.extend(problems)
    return inp
