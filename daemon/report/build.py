"""Build one report: gather the inputs, draw the plots, copy the clips beside the page, write
`<name>.html` and `<name>.zip` atomically. A plot that fails or a clip that cannot be copied
costs that part (said in the page), never the page."""
from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.atomic import read_bytes, write_atomic_with, write_bytes_atomic
from ..common.config import Config
from .html import page
from .inputs import Inputs, gather
from .files import MAX_BYTES as MIRRORED_BYTES
from .values import obj, seq, text
from .listen import MAX_ROWS
from .plots import PLOTS, why_not

MAX_CLIP_BYTES = 64 * 1024 * 1024   # a 30 s clip is ~2 MB; what is larger is not a sample of ours
# All of one report's clips. keep_wavs clips of up to 300 s each can make gigabytes: copied, zipped
# and mirrored whole, 2 GB took 114 s of the report child's 180 s and 4 GB of the state disk, and
# its zip was past what the mirror uploads, though the mail names its bucket key. Under this cap
# the zip stays mirrored; the clips past it stay where the evaluation wrote them.
MAX_CLIPS_BYTES = MIRRORED_BYTES * 3 // 4


@dataclass
class Built:
    html: Path
    zip: Path | None
    clips: int
    notes: list[str] = field(default_factory=list)


def _clip_bytes(source: Any, reports: Path, room: int) -> tuple[bytes | None, str | None]:
    """A sample's WAV bytes, or why not. The path comes from the metrics JSON: only a regular
    .wav file inside the reports folder is taken (a path to /etc/shadow or ../state.json in a
    metrics file would otherwise be copied beside the report and up to the bucket), and only
    while it fits in the `room` left of MAX_CLIPS_BYTES."""
    if not isinstance(source, str) or not source or "\x00" in source:
        return None, None
    path = Path(source)
    try:
        real = path.resolve(strict=True)
        real.relative_to(reports.resolve())
        size = os.stat(real)
    except (OSError, ValueError, RuntimeError):
        return None, f"{source[:200]}: not a file inside {reports}: not copied"
    if real.suffix.lower() != ".wav" or not stat.S_ISREG(size.st_mode):
        return None, f"{source[:200]}: not a .wav file: not copied"
    if size.st_size > room:
        return None, (f"{source[:200]}: past the {MAX_CLIPS_BYTES >> 20} MiB a report's clips may take "
                      "(its zip must fit the mirror): not copied, it stays there")
    try:
        data = read_bytes(real, min(MAX_CLIP_BYTES, room))
    except OSError as e:
        return None, f"{source[:200]}: unreadable ({e}): not copied"
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None, f"{source[:200]}: not WAV audio: not copied"
    return data, None


def _clip_folder(folder: Path) -> None:
    """`<name>_files` as a folder of ours: a link planted there (to a folder whose .wav files would
    be written over and removed as stale), a file or a FIFO is removed first."""
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            folder.unlink()
    except FileNotFoundError:
        pass
    folder.mkdir(mode=0o750, exist_ok=True)


def copy_clips(inp: Inputs, out: Path) -> dict:
    """{"pairs": {i: {"model"|"baseline": relative link}}, "files": [paths], "notes": [...]}; the
    clips go to `<name>_files/`, where a clip from an earlier build that is not linked now is removed.
    Pair by pair: the clips left out past MAX_CLIPS_BYTES are the last pairs'."""
    ev, folder = obj(inp.evaluation), out / f"{inp.name}_files"
    result: dict = {"pairs": {}, "files": [], "notes": []}
    sides = {side: seq(obj(ev.get(side)).get("samples"))[:MAX_ROWS] for side in ("model", "baseline")}
    try:
        _clip_folder(folder)
    except OSError as e:
        result["notes"].append(f"{folder}: cannot be made ({e.strerror or e}): no clip copied")
        return result
    room = MAX_CLIPS_BYTES
    for i, side in [(i, side) for i in range(MAX_ROWS) for side in sides if i < len(sides[side])]:
        data, why = _clip_bytes(obj(sides[side][i]).get("file"), inp.cfg.reports_dir, room)
        if why:
            result["notes"].append(f"{side} clip {i + 1}: {why}")
        if data is None:
            continue
        target = folder / f"{side}_{i + 1:03d}.wav"
        try:
            write_bytes_atomic(target, data)
        except OSError as e:
            result["notes"].append(f"{target}: cannot be written ({e.strerror or e}): not copied")
            continue
        room -= len(data)
        result["pairs"].setdefault(i, {})[side] = f"{folder.name}/{target.name}"
        result["files"].append(target)
    try:
        for stale in set(folder.glob("*.wav")) - set(result["files"]):
            stale.unlink(missing_ok=True)
        if not result["files"]:
            folder.rmdir()  # a report with nothing to play leaves no empty folder (one with a file stays)
    except OSError:
        pass  # a stale clip left costs nothing: the page does not link it
    return result


def _zip(path: Path, html: bytes, name: str, files: list[Path]) -> None:
    def write(f) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr(f"{name}/{name}.html", html)
            for clip in files:
                # stored: audio does not deflate (a few %), and deflating 192 MiB costs the child a minute
                z.write(clip, f"{name}/{clip.parent.name}/{clip.name}", compress_type=zipfile.ZIP_STORED)
    write_atomic_with(path, write)


def draw(inp: Inputs) -> dict[str, tuple[str, bytes | None, str | None]]:
    plots = {}
    for key, title, fn in PLOTS:
        try:
            png = fn(inp)
            plots[key] = (title, png, None if png else why_not(inp, key))
        except Exception as e:  # a plot of bad numbers: the page says so and goes on
            plots[key] = (title, None, f"the plot failed ({type(e).__name__}: {str(e)[:200]})")
    return plots


def _matplotlib_cache(cfg: Config) -> None:
    """matplotlib keeps its font cache under ~, which the service cannot write (ProtectHome=yes):
    rebuilt in a temp dir at every report, with a warning each time. The run's cache dir instead."""
    folder = cfg.run.cache_dir / "matplotlib"
    try:
        folder.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError:
        return
    if "MPLCONFIGDIR" not in os.environ and os.access(folder, os.W_OK):
        os.environ["MPLCONFIGDIR"] = str(folder)


def build(cfg: Config, kind: str, out: Path | None = None, clock: Any = None, scalars: bool = False) -> Built:
    """Write the report of `kind` into `out` (default: the reports folder). Raises OSError only
    when the page itself cannot be written."""
    from .scalars import write_figures

    out = Path(out or cfg.reports_dir)
    inp = gather(cfg, kind, clock)
    if scalars and inp.evaluation is not None and kind != "now":
        from ..common.clock import Clock

        why = write_figures(cfg.tensorboard_dir, kind, inp.evaluation, inp.decision, (clock or Clock()).now())
        if why:
            inp.notes.append(why)
    out.mkdir(mode=0o750, parents=True, exist_ok=True)
    _matplotlib_cache(cfg)
    clips = copy_clips(inp, out)
    html = page(inp, draw(inp), clips).encode("utf-8")
    target = out / f"{inp.name}.html"
    try:
        write_bytes_atomic(target, html)
    except OSError as e:  # named for the page: the temp file beside it that failed is gone
        raise OSError(e.errno, e.strerror or str(e), str(target)) from None
    archive: Path | None = out / f"{inp.name}.zip"
    try:
        _zip(archive, html, inp.name, clips["files"])
    except OSError as e:
        inp.notes.append(f"{archive}: cannot be written ({e.strerror or e})")
        archive = None
    return Built(target, archive, len(clips["files"]), [text(n, 1000) for n in inp.notes + clips["notes"]])
