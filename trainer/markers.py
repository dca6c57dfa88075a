"""Committed checkpoints as their markers say, without torch: what the supervisor may read.

`step_00001000.json` beside `step_00001000.pt` commits the checkpoint; the marker holds its size,
hash, step and the validation loss measured at that very step (if any). trainer/checkpoint.py
writes and loads the .pt files; this is the half that only reads markers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Marker:
    step: int
    path: Path            # the .pt
    meta: dict[str, Any]  # the marker's JSON

    @property
    def val_loss(self) -> float | None:
        # Only a validation run at this very step ranks a checkpoint as "best".
        return self.meta.get("val_loss") if self.meta.get("val_step") == self.step else None


def list_checkpoints(directory: Path) -> list[Marker]:
    """Committed checkpoints, oldest first (unreadable markers are skipped)."""
    out = []
    for marker in directory.glob("step_*.json"):
        try:
            meta = json.loads(marker.read_text())
            step = int(meta["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out.append(Marker(step, marker.with_suffix(".pt"), meta))
    return sorted(out, key=lambda m: m.step)


def best(directory: Path) -> Marker | None:
    ranked = [m for m in list_checkpoints(directory) if m.val_loss is not None]
    return min(ranked, key=lambda m: m.val_loss) if ranked else None
