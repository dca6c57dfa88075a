"""`dataset fetch`: the metadata files by HTTP (resumed), and the person's audio parts checked,
joined and extracted, all resumable.

MagnaTagATune's audio comes as mp3.zip.001..003, downloaded by hand (the site's terms) into
<cache_dir>/mtat/. They are one zip cut in three: joined in order into mp3.zip (with progress),
then extracted into <cache_dir>/mtat/audio/, skipping members already there at full size. A
download goes to <name>.part and resumes with an HTTP Range request; a server that ignores
the range makes it start over, never append twice. Nothing here imports torch.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Callable

from daemon.common.atomic import fsync_dir

CHUNK = 1 << 20


class FetchError(Exception):
    """A file is missing or damaged; the text names it and what to do."""


def md5_of(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def _bar(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not enabled)


def download(url: str, dest: Path, expected_md5: str = "", attempts: int = 5, timeout: float = 30,
             progress: bool = True, log: Any = None) -> Path:
    """dest from url, resuming a partial download; verified by MD5 when one is given."""
    if dest.exists() and (not expected_md5 or md5_of(dest) == expected_md5):
        return dest
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_error = None
    for attempt in range(1, attempts + 1):
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                if have and resp.status != 206:
                    have = 0  # the server sent the whole file: start over
                total = resp.length + have if resp.length is not None else None
                with open(part, "ab" if have else "wb") as f, _bar(total, dest.name, progress) as bar:
                    bar.update(have)
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
                    f.flush()
                    os.fsync(f.fileno())
                if total is not None and part.stat().st_size < total:
                    raise ConnectionError(f"got {part.stat().st_size} of {total} bytes")
            break
        except urllib.error.HTTPError as e:
            if e.code == 416:  # range past the end: the .part is complete (or bogus); check below
                break
            raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            last_error = e
            if log:
                log.warning("fetch.retry", url=url, attempt=attempt, have_bytes=part.stat().st_size
                            if part.exists() else 0, error=str(e))
    else:
        raise FetchError(f"{url}: failed after {attempts} attempts ({last_error}); run fetch again to resume")
    if expected_md5:
        got = md5_of(part)
        if got != expected_md5:
            part.unlink()
            raise FetchError(f"{dest.name}: MD5 {got} != expected {expected_md5}; the partial file was removed, "
                             "run fetch again")
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest


def check_parts(directory: Path, parts: list[str], md5s: list[str], progress: bool = True) -> list[Path]:
    """The audio parts, present, non-empty and (when checksums are configured) intact."""
    paths = [directory / p for p in parts]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FetchError(f"{directory}: missing {', '.join(missing)}; download them from the MagnaTagATune "
                         f"site into {directory}")
    empty = [p.name for p in paths if p.stat().st_size == 0]
    if empty:
        raise FetchError(f"{directory}: {', '.join(empty)} empty; download again")
    for path, want in zip(paths, md5s):
        if want:
            with _bar(path.stat().st_size, f"md5 {path.name}", progress) as bar:
                got = md5_of(path, bar.update)
            if got != want:
                raise FetchError(f"{path}: MD5 {got} != expected {want}: damaged or incomplete; download it again")
    return paths


def join_parts(paths: list[Path], dest: Path, progress: bool = True) -> Path:
    """Concatenate the parts, in order, into dest (atomically); skipped when dest is complete."""
    total = sum(p.stat().st_size for p in paths)
    if dest.exists() and dest.stat().st_size == total:
        return dest
    tmp = dest.with_name(dest.name + ".joining")
    with open(tmp, "wb") as out, _bar(total, dest.name, progress) as bar:
        for p in paths:
            with open(p, "rb") as f:
                while chunk := f.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    return dest


def extract(archive: Path, dest: Path, progress: bool = True) -> int:
    """Extract the MP3s; members already there at full size are skipped. Returns files extracted."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise FetchError(f"{archive}: not a complete zip (a part missing or out of order?); "
                         "check the parts and run fetch again") from None
    done = 0
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        from tqdm import tqdm

        for m in tqdm(members, unit="file", desc="extract", disable=not progress):
            target = dest / m.filename
            if not target.resolve().is_relative_to(dest.resolve()):
                raise FetchError(f"{archive}: member {m.filename!r} points outside {dest}")
            if target.exists() and target.stat().st_size == m.file_size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            try:
                with zf.open(m) as src, open(tmp, "wb") as out:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
            except (zipfile.BadZipFile, EOFError, OSError) as e:
                tmp.unlink(missing_ok=True)
                raise FetchError(f"{archive}: member {m.filename}: {e}") from None
            os.replace(tmp, target)
            done += 1
    return done
