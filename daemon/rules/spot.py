"""The Spot rule: what an interruption or rebalance notice from IMDS asks of us. Pure.

    decide(snapshot, seen) -> (actions, seen)

An interruption (two minutes' notice): checkpoint and stop the worker for good on this
instance, upload that checkpoint and state.json, tell the person; AWS then stops or terminates
the instance. A rebalance recommendation: checkpoint now, keep training, upload. Each notice is
acted on once (`seen` is kept in state.json's `spot` section).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..actions import Action, CheckpointWorker, SendAlert, SpotInterrupted, Upload


@dataclass(frozen=True)
class SpotSnapshot:
    interruption: dict | None     # IMDS spot/instance-action: {"action": ..., "time": ...}
    rebalance: dict | None        # IMDS events/recommendations/rebalance: {"noticeTime": ...}
    step: int
    has_bucket: bool


def decide(s: SpotSnapshot, seen: frozenset[str]) -> tuple[list[Action], frozenset[str]]:
    if s.interruption and "interruption" not in seen:
        when, what = s.interruption.get("time"), s.interruption.get("action")
        return [SpotInterrupted(str(when) if when else None),
                SendAlert("spot", f"Spot interruption at {when}: checkpointing",
                          f"AWS will {what} the instance at {when}. The worker is writing a checkpoint at "
                          f"step {s.step}{' and it goes to S3' if s.has_bucket else ''}; the next start "
                          "resumes from it."),
                Upload("interruption", s.step)], seen | {"interruption"}
    if s.rebalance and not {"rebalance", "interruption"} & seen:
        return [CheckpointWorker("Spot rebalance recommendation"),
                SendAlert("spot", "Spot rebalance recommendation: checkpointing early",
                          "The instance is at elevated risk of interruption. A checkpoint is being written "
                          "now and training goes on."),
                Upload("rebalance", s.step)], seen | {"rebalance"}
    return [], seen


def notes(new: frozenset[str], s: SpotSnapshot, now: str) -> dict[str, dict]:
    """What state.json records of each notice when it is first seen."""
    return {k: {"notice": s.interruption if k == "interruption" else s.rebalance, "seen_at": now, "step": s.step}
            for k in new}


def section(notes_seen: dict[str, dict], uploads: dict[str, dict]) -> dict | None:
    """state.json's `spot` section: each notice with its upload's record."""
    out = {k: {**v, **({"upload": uploads[k]} if k in uploads else {})} for k, v in notes_seen.items()}
    return out or None


def load(section: dict | None) -> tuple[frozenset[str], dict]:
    """(notices seen, their records) from state.json's `spot` section."""
    notes = {k: v for k, v in (section or {}).items() if k in ("interruption", "rebalance") and isinstance(v, dict)}
    return frozenset(notes), notes
