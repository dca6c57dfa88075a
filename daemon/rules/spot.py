"""The Spot rule: what an interruption or rebalance notice from IMDS asks of us. Pure.

    decide(snapshot, seen) -> (actions, seen)

An interruption (two minutes' notice): checkpoint and stop the worker for good on this
instance, upload that checkpoint and state.json, tell the person; AWS then stops or terminates
the instance. A rebalance recommendation: checkpoint now, keep training, upload. Each notice is
acted on once (`seen` is kept in state.json's `spot` section).

And what `auto` does to stop this instance (auto_stop): a one-time Spot instance cannot be
stopped, only terminated, which takes its disk; without a bucket to hold the run it is kept, in
one alert (kept_alert), rather than terminated or retried for ever.
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


KEPT = "kept running: a one-time Spot instance cannot be stopped, and terminating it would lose the run (no bucket)"


def auto_stop(can_stop: bool | None, has_bucket: bool) -> str:
    """What action "auto" does here: "ec2-stop" where stopping works (on-demand, persistent Spot
    that stops) or is not known yet (a refusal falls back to poweroff); "terminate" for a one-time
    Spot instance whose run a bucket holds (once the mirror confirms the newest checkpoint); else
    "keep": its disk holds the only checkpoints, and waiting for a confirmation that cannot come
    retried the terminate, and alerted, every 15 minutes for as long as the instance ran."""
    if can_stop or can_stop is None:
        return "ec2-stop"
    return "terminate" if has_bucket else "keep"


def kept_alert(reason: str, checkpoint_dir: str, newest_checkpoint: str | None) -> SendAlert:
    """The one alert of a kept instance: why, what still runs, and the way on."""
    return SendAlert("shutdown", f"the instance keeps running ({reason}): auto cannot stop a one-time Spot instance",
                     f"Reason: {reason}. Action: auto. This is a one-time Spot instance: AWS cannot stop it, only "
                     "terminate it, and a terminated instance takes its disk, which holds the run's only "
                     f"checkpoints ([aws] s3_bucket is not set; the newest is {newest_checkpoint or 'none'}). "
                     "So it is kept and nothing more is tried.\nTHE INSTANCE IS STILL RUNNING AND BILLING. The "
                     "worker is stopped; the budget alerts still come, and a rule whose action is not auto "
                     f"still acts.\nTo end it: copy {checkpoint_dir} off the instance, then terminate it "
                     "(scripts/gpu_instance.py terminate INSTANCE_ID --yes). Or set [aws] s3_bucket and restart "
                     "the service: auto then terminates once the bucket holds the newest checkpoint.")
