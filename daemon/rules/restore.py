"""Whether the bucket's state.json may become this disk's run.

    judge(local, theirs, now) -> ("restore" | "keep" | "refuse", reasons)

Anyone with the instance role can write the bucket, so its state.json is a claim, not a fact. It
never replaces a local run (state.json or the journal) with another run_id, never lowers the
spend below what this disk holds, and nothing dated in the future (beyond clock skew) is taken at
all. An older copy of our own run is simply not needed ("keep"); a refusal is logged and alerted.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ..common.clock import iso

SKEW = timedelta(minutes=5)   # clocks of two instances may disagree this much
CENT = 0.005                  # the ledger is rounded in state.json; below half a cent is the same spend


@dataclass(frozen=True)
class Local:
    """What this disk holds of a run (None instead: nothing at all)."""
    run_ids: frozenset[str]         # state.json's and the journal's
    updated_at: datetime | None     # the newer of the two
    spend_usd: float                # the most either holds


@dataclass(frozen=True)
class Theirs:
    run_id: str
    updated_at: datetime | None
    spend_usd: float


def judge(local: Local | None, theirs: Theirs, now: datetime) -> tuple[str, list[str]]:
    reasons = []
    if theirs.updated_at is not None and theirs.updated_at > now + SKEW:
        # In UTC: the bucket's string may carry any offset, and its wall time with a Z was hours off.
        reasons.append(f"its updated_at {iso(theirs.updated_at)} is in the future "
                       f"(more than {SKEW.seconds // 60} min after this clock)")
    if local is not None and theirs.run_id not in local.run_ids:
        reasons.append(f"it is another run ({theirs.run_id}, this disk's is {', '.join(sorted(local.run_ids))})")
    if reasons:
        return "refuse", reasons
    if local is None:
        return "restore", []
    if theirs.updated_at is None or (local.updated_at is not None and theirs.updated_at <= local.updated_at):
        return "keep", ["the local state is as new or newer"]
    if theirs.spend_usd < local.spend_usd - CENT:
        return "refuse", [f"its spend ${theirs.spend_usd:,.2f} is less than the ${local.spend_usd:,.2f} "
                          "this disk has recorded"]
    return "restore", []
