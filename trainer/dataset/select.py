"""The MagnaTagATune Amapiano-proxy subset: read the annotations, select, split, write a manifest.

The real annotations_final.csv is TAB-separated, every field (header too) in double quotes,
CRLF line ends: `clip_id`, 188 tag columns of "0"/"1", `mp3_path`. It is read with pandas as
text, then checked row by row, so a damaged download is reported by file and line instead of
silently becoming NaN. No torch here: `dataset select` runs anywhere, on the file alone.

A clip is a candidate when it carries at least `min_tags` of the proxy tags; `top_n` instead
takes the N clips with the most proxy tags (ties broken by clip id). The split is a seeded
random one, or MTAT's usual one by the first character of mp3_path (0-b train, c valid; the
d-f test part is left out of the manifest).
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

# Traits of Amapiano that MTAT has tags for: house and deep-house grooves, the log drum (bass,
# percussion), the piano and its jazzy chords, electronic production. MTAT has no "soulful",
# "amapiano" or "log drum" tag.
DEFAULT_PROXY_TAGS = ("house", "deep", "dance", "electronic", "electro", "techno", "beat", "beats", "drums",
                      "drum", "percussion", "bass", "piano", "jazzy", "jazz", "synth", "funky", "tribal")
MP3_PATH = re.compile(r"^[0-9a-f]/[^/]+\.mp3$")


class DatasetError(Exception):
    """Bad dataset input; the text names the file (and line) and what to do."""


@dataclass(frozen=True)
class Selection:
    clips: list[dict]                 # manifest rows, in manifest order
    at_least: dict[int, int]          # k -> clips with >= k proxy tags
    candidates: int                   # clips meeting the rule, before the split sizes
    skipped_rows: list[str]           # "line N: why" for rows skipped with skip_bad_rows
    total_rows: int


def read_annotations(path: Path, skip_bad_rows: bool = False) -> tuple["object", list[str], list[str]]:
    """(DataFrame of text, tag names, skipped-row notes). Raises DatasetError naming file and line."""
    import csv

    import pandas as pd

    try:
        with open(path, "rb") as f:
            head = f.readline()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    header = [h.strip().strip('"') for h in head.decode("ascii", "replace").rstrip("\r\n").split("\t")]
    if len(header) < 3 or header[0] != "clip_id" or header[-1] != "mp3_path":
        raise DatasetError(f"{path}: line 1: expected a TAB-separated header \"clip_id\" ... \"mp3_path\" "
                           f"(got {header[:2]}...{header[-1:]}); is this annotations_final.csv?")
    tags = header[1:-1]
    dupes = sorted({t for t in tags if tags.count(t) > 1})
    if dupes:
        raise DatasetError(f"{path}: line 1: tag column(s) {dupes} appear twice")
    skipped: list[str] = []
    bad, good = _scan_lines(path, len(header))
    if bad:
        notes = [f"line {n}: {c} fields, expected {len(header)}" for n, c in bad]
        if not skip_bad_rows:
            raise DatasetError(f"{path}: {notes[0]}" + (f" (and {len(notes) - 1} more)" if len(notes) > 1 else "")
                               + "; re-download it, or pass --skip-bad-rows")
        skipped += notes
    try:  # rows with the wrong number of fields were found above and are left out here
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL,
                         skiprows=[n - 1 for n, _ in bad], encoding="ascii", skip_blank_lines=True)
    except (UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DatasetError(f"{path}: cannot parse ({str(e).splitlines()[0]})") from None
    if len(df) != len(good):
        raise DatasetError(f"{path}: {len(df)} rows parsed but {len(good)} well-formed lines counted; "
                           "stray quotes? re-download it")
    df["_line"] = good

    problems = []
    values = df[tags]
    not_binary = ~values.isin(["0", "1"]).all(axis=1)
    for i in df.index[not_binary]:
        row = values.loc[i]
        bad = [t for t in tags if row[t] not in ("0", "1")][:1]
        problems.append((i, f"line {df.at[i, '_line']}: tag '{bad[0]}' is {row[bad[0]]!r}, expected \"0\" or \"1\""))
    bad_id = ~df["clip_id"].str.fullmatch(r"\d+")
    for i in df.index[bad_id]:
        problems.append((i, f"line {df.at[i, '_line']}: clip_id {df.at[i, 'clip_id']!r} is not a number"))
    bad_path = ~df["mp3_path"].str.fullmatch(MP3_PATH.pattern)
    for i in df.index[bad_path]:
        problems.append((i, f"line {df.at[i, '_line']}: mp3_path {df.at[i, 'mp3_path']!r} is not like "
                            "\"f/artist-album-01-title-30-59.mp3\""))
    dup = df["clip_id"].duplicated(keep="first")
    for i in df.index[dup]:
        first = df.loc[df["clip_id"] == df.at[i, "clip_id"], "_line"].iloc[0]
        problems.append((i, f"line {df.at[i, '_line']}: clip_id {df.at[i, 'clip_id']} repeats line {first}"))
    if problems:
        problems.sort(key=lambda p: df.at[p[0], "_line"])
        if not skip_bad_rows:
            raise DatasetError(f"{path}: {problems[0][1]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1
                                                              else "") + "; fix the file, or pass --skip-bad-rows")
        skipped += [p[1] for p in problems]
        df = df.drop(index=sorted({p[0] for p in problems}))
    return df, tags, skipped


def _scan_lines(path: Path, expected: int) -> tuple[list[tuple[int, int]], list[int]]:
    """(lines with the wrong field count, with their count; line numbers of the good rows)."""
    bad, good = [], []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1 or not raw.strip():
                continue
            count = raw.rstrip(b"\r\n").count(b"\t") + 1
            if count == expected:
                good.append(n)
            else:
                bad.append((n, count))
    return bad, good


def describe(proxy: list[str], others: list[str]) -> str:
    """Text conditioning: the proxy word first, then the clip's own tags, proxy tags leading."""
    return ", ".join(["amapiano", *proxy, *others])


def select(path: Path, proxy_tags: Iterable[str] = DEFAULT_PROXY_TAGS, min_tags: int = 3, top_n: int = 0,
           split: str = "random", train_size: int = 8000, valid_size: int = 2000, seed: int = 1337,
           skip_bad_rows: bool = False) -> Selection:
    proxy_tags = list(dict.fromkeys(t.strip() for t in proxy_tags if t.strip()))
    df, tags, skipped = read_annotations(path, skip_bad_rows)
    unknown = [t for t in proxy_tags if t not in tags]
    if unknown:
        close = {t: [c for c in tags if t in c or c in t][:3] for t in unknown}
        raise DatasetError(f"{path}: proxy tag(s) {unknown} are not columns of this file"
                           + "".join(f"; for '{t}' maybe {c}" for t, c in close.items() if c))
    if not proxy_tags:
        raise DatasetError("no proxy tags given")
    flags = df[tags] == "1"
    n_proxy = flags[proxy_tags].sum(axis=1)
    at_least = {k: int((n_proxy >= k).sum()) for k in range(1, 5)}
    df = df.assign(_n=n_proxy)
    if top_n:
        chosen = df.sort_values(["_n", "clip_id"], ascending=[False, True], key=lambda s: s if s.name == "_n"
                                else s.astype(int)).head(top_n)
        chosen = chosen[chosen["_n"] > 0]
    else:
        chosen = df[df["_n"] >= min_tags]
    chosen = chosen.assign(_id=chosen["clip_id"].astype(int)).sort_values("_id")
    rows = []
    for _, r in chosen.iterrows():
        clip_tags = [t for t in tags if r[t] == "1"]
        proxy = [t for t in proxy_tags if r[t] == "1"]
        others = [t for t in clip_tags if t not in proxy]
        rows.append({"clip_id": int(r["clip_id"]), "mp3_path": r["mp3_path"], "tags": clip_tags,
                     "proxy_tags": proxy, "description": describe(proxy, others)})
    if split == "mtat":
        for row in rows:
            first = row["mp3_path"][0]
            row["split"] = "train" if first <= "b" else "valid" if first == "c" else "test"
        train = [r for r in rows if r["split"] == "train"][:train_size]
        valid = [r for r in rows if r["split"] == "valid"][:valid_size]
    elif split == "random":
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        n_valid = min(valid_size, round(len(rows) * valid_size / (train_size + valid_size)))
        valid = [rows[i] for i in order[:n_valid]]
        train = [rows[i] for i in order[n_valid:n_valid + train_size]]
        for r in train:
            r["split"] = "train"
        for r in valid:
            r["split"] = "valid"
    else:
        raise DatasetError(f"split must be \"random\" or \"mtat\" (got {split!r})")
    clips = sorted(train + valid, key=lambda r: r["clip_id"])
    return Selection(clips=clips, at_least=at_least, candidates=len(rows), skipped_rows=skipped,
                     total_rows=len(df))


MANIFEST_FIELDS = {"clip_id": int, "mp3_path": str, "tags": list, "proxy_tags": list, "split": str,
                   "description": str}


def write_manifest(path: Path, clips: list[dict]) -> None:
    from daemon.common.atomic import write_atomic_with

    def write(f):
        for c in clips:
            f.write((json.dumps({k: c[k] for k in MANIFEST_FIELDS}, ensure_ascii=False) + "\n").encode())

    write_atomic_with(path, write)


def read_manifest(path: Path) -> list[dict]:
    """The manifest, validated; DatasetError names the file and line."""
    clips, seen = [], set()
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text; write it again with `amapiano-train dataset select`") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror}); run `amapiano-train dataset select` first") from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: line {n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path}: line {n}: not a JSON object")
        for key, tp in MANIFEST_FIELDS.items():
            if not isinstance(row.get(key), tp) or isinstance(row.get(key), bool):
                raise DatasetError(f"{path}: line {n}: field '{key}' missing or not {tp.__name__}")
        if row["split"] not in ("train", "valid"):
            raise DatasetError(f"{path}: line {n}: field 'split' is {row['split']!r}, not train/valid")
        if not MP3_PATH.match(row["mp3_path"]):
            raise DatasetError(f"{path}: line {n}: field 'mp3_path' {row['mp3_path']!r} is not an MTAT path")
        if row["clip_id"] in seen:
            raise DatasetError(f"{path}: line {n}: clip_id {row['clip_id']} appears twice")
        seen.add(row["clip_id"])
        clips.append(row)
    if not clips:
        raise DatasetError(f"{path}: no clips")
    return clips
