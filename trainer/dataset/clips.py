"""`dataset copy`: the selected MP3s into the dataset directory, each verified by MD5.

Each clip is copied to a temp name, fsynced and renamed, then re-read and compared by MD5
with its source. Progress is a JSON line per finished clip (copied.jsonl), so a rerun skips
what is done. A missing or unreadable clip is skipped and listed in copy_report.json, never
the end of the run. The total audio duration is summed from the files' headers.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from daemon.common.atomic import write_json_atomic

from .fetch import md5_of


def _duration(path: Path) -> float | None:
    import soundfile as sf

    try:
        return float(sf.info(str(path)).duration)
    except Exception:
        return None


def copy_clips(manifest: list[dict], source: Path, dest: Path, log: Any, progress: bool = True) -> dict:
    from tqdm import tqdm

    dest.mkdir(parents=True, exist_ok=True)
    ledger = dest / "copied.jsonl"
    done: dict[int, dict] = {}
    if ledger.exists():
        for line in ledger.read_text().splitlines():
            try:
                row = json.loads(line)
                done[row["clip_id"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut by a kill: that clip is simply done again
    problems: list[dict] = []
    copied = 0
    with open(ledger, "a") as out, tqdm(manifest, unit="clip", desc="copy", disable=not progress) as bar:
        for clip in bar:
            target = dest / clip["mp3_path"]
            prior = done.get(clip["clip_id"])
            if prior and target.exists() and target.stat().st_size == prior["bytes"]:
                continue
            src = source / clip["mp3_path"]
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp")
                shutil.copyfile(src, tmp)
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, target)
                want, got = md5_of(src), md5_of(target)
                if want != got:
                    target.unlink()
                    raise OSError(f"MD5 after copy {got} != source {want}")
            except OSError as e:
                problems.append({"clip_id": clip["clip_id"], "mp3_path": clip["mp3_path"],
                                 "error": f"{type(e).__name__}: {e.strerror or e}"})
                log.warning("copy.skipped", clip_id=clip["clip_id"], path=str(src), error=problems[-1]["error"])
                continue
            row = {"clip_id": clip["clip_id"], "bytes": target.stat().st_size, "md5": got,
                   "seconds": _duration(target)}
            out.write(json.dumps(row) + "\n")
            out.flush()
            done[clip["clip_id"]] = row
            copied += 1
    wanted = {c["clip_id"] for c in manifest}
    seconds = sum(r.get("seconds") or 0.0 for cid, r in done.items() if cid in wanted)
    report = {"clips": len(manifest), "copied_now": copied, "present": len(wanted & done.keys()),
              "skipped": problems, "audio_seconds": round(seconds, 1), "audio_hours": round(seconds / 3600, 3)}
    write_json_atomic(dest / "copy_report.json", report)
    return report
