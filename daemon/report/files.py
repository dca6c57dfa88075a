"""What "the reports folder" is, for the S3 mirror: the reports (HTML, zip, JSON) and each HTML
report's clips. Not the export (the model: gigabytes, uploaded by its own decision) nor the
evaluation's raw samples (each report holds copies of the clips it plays); nothing that is not a
regular file (a link planted in the folder would upload what it points at). Standard library
only: the supervisor's mirror imports it."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from . import NAMES

SUFFIXES = (".html", ".zip", ".json")
CLIPS = {f"{name}_files" for name in NAMES.values()}   # the clips beside each <name>.html
MAX_BYTES = 256 * 1024 * 1024


def report_files(reports: Path) -> list[tuple[Path, str, tuple[int, int]]]:
    """(path, name under reports/, (size, mtime) to tell a changed file) for each file to mirror."""
    out = []
    try:
        entries = sorted(reports.iterdir())
        entries += [p for d in entries if d.name in CLIPS and d.is_dir() and not d.is_symlink()
                    for p in sorted(d.iterdir()) if p.suffix == ".wav"]
    except OSError:
        return []
    for path in entries:
        if path.parent == reports and path.suffix not in SUFFIXES:
            continue
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size <= MAX_BYTES:
            out.append((path, path.relative_to(reports).as_posix(), (st.st_size, st.st_mtime_ns)))
    return out
