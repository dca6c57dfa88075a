"""Checkpoints the worker refused as not its own: intact (their bytes match their marker's digest)
but planted or unloadable, set aside into corrupt/. Recorded by digest so that the restore does not
fetch the same bytes from the bucket again at every start (gigabytes each time, for a checkpoint
that will be refused again). A checkpoint damaged on disk is never recorded: its marker's digest is
the right one, so the bucket's intact copy of it must still come back."""
from __future__ import annotations

from pathlib import Path

from .atomic import read_json, write_json_atomic

RECORD = "refused.json"   # in checkpoints/corrupt/, beside what was set aside
KEEP = 64                 # the newest refusals; a bucket cannot grow the file without bound


def record(checkpoint_dir: Path, step: int, sha256: object, reason: str) -> None:
    """Best effort: a disk that cannot take the record costs one more download, never the start."""
    if not isinstance(sha256, str):
        return
    path = checkpoint_dir / "corrupt" / RECORD
    kept = [r for r in _entries(path) if r.get("sha256") != sha256]
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        write_json_atomic(path, {"refused": (kept + [{"step": step, "sha256": sha256, "reason": reason[:300]}])[-KEEP:]})
    except OSError:
        pass


def digests(checkpoint_dir: Path) -> set[str]:
    return {r["sha256"] for r in _entries(checkpoint_dir / "corrupt" / RECORD) if isinstance(r.get("sha256"), str)}


def _entries(path: Path) -> list[dict]:
    entries = (read_json(path) or {}).get("refused")
    return [r for r in entries if isinstance(r, dict)] if isinstance(entries, list) else []
