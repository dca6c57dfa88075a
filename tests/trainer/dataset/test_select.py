"""`dataset select` on the real MagnaTagATune annotations, and on synthetic files with bad rows."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, cli
from trainer.dataset.select import DEFAULT_PROXY_TAGS, DatasetError, read_manifest, select

# The real file lives in the workplace's shared/ beside the checkout (or set AMAPIANO_MTAT_DIR).
_CANDIDATES = [Path(os.environ["AMAPIANO_MTAT_DIR"])] if os.environ.get("AMAPIANO_MTAT_DIR") else []
_CANDIDATES += [REPO.parent / "shared" / "data" / "mtat", Path("/work/shared/data/mtat")]
REAL = next((d / "annotations_final.csv" for d in _CANDIDATES if (d / "annotations_final.csv").exists()),
            _CANDIDATES[0] / "annotations_final.csv")
needs_real = pytest.mark.skipif(not REAL.exists(), reason="the real MTAT annotations are not here")


@needs_real
def test_counts_match_an_independent_pandas_computation(tmp_path):
    out = tmp_path / "manifest.jsonl"
    result = cli("dataset", "select", "--annotations", str(REAL), "--out", str(out))
    assert result.returncode == 0, result.stderr
    # Independently: pandas' C parser, numbers, vectorised sums.
    df = pd.read_csv(REAL, sep="\t")
    n = df[list(DEFAULT_PROXY_TAGS)].sum(axis=1)
    expected = [int((n >= k).sum()) for k in range(1, 5)]
    assert f"clips with >= 1, 2, 3, 4 proxy tags: {', '.join(f'{x:,}' for x in expected)}" in result.stdout
    assert len(df) == 25863
    clips = read_manifest(out)  # validates every line
    assert {c["clip_id"] for c in clips} == set(df.loc[n >= 3, "clip_id"])
    assert len(clips) == expected[2] == 2413  # what the real file gives, not the seed's hoped-for 8,000
    assert "nothing is padded" in result.stdout
    by_id = df.set_index("clip_id")
    for c in clips[:50]:
        row = by_id.loc[c["clip_id"]]
        assert c["mp3_path"] == row["mp3_path"]
        assert set(c["tags"]) == {t for t in df.columns[1:-1] if row[t] == 1}
        assert c["proxy_tags"] == [t for t in DEFAULT_PROXY_TAGS if row[t] == 1]
        assert c["description"].startswith("amapiano, " + ", ".join(c["proxy_tags"]))
    valid = sum(c["split"] == "valid" for c in clips)
    assert valid == round(2413 * 0.2)


@needs_real
def test_top_n_mtat_split_and_determinism():
    a = select(REAL, top_n=3000, split="mtat")
    assert a.candidates == 3000 and all(c["split"] in ("train", "valid") for c in a.clips)
    assert all(c["mp3_path"][0] <= "b" for c in a.clips if c["split"] == "train")
    assert all(c["mp3_path"][0] == "c" for c in a.clips if c["split"] == "valid")
    counts = sorted((len(c["proxy_tags"]) for c in select(REAL, top_n=3000).clips), reverse=True)
    assert counts[-1] >= 2  # the top 3000 reach down to 2 proxy tags (4,165 have >= 2)
    r1, r2 = select(REAL, seed=1), select(REAL, seed=1)
    r3 = select(REAL, seed=2)
    assert [c["split"] for c in r1.clips] == [c["split"] for c in r2.clips]
    assert [c["split"] for c in r1.clips] != [c["split"] for c in r3.clips]


@needs_real
def test_a_tag_that_is_not_in_mtat_is_named(tmp_path):
    result = cli("dataset", "select", "--annotations", str(REAL), "--tags", "house,soulful,piano",
                 "--out", str(tmp_path / "m.jsonl"))
    assert result.returncode == 65
    assert "proxy tag(s) ['soulful'] are not columns" in result.stderr and str(REAL) in result.stderr
    assert not (tmp_path / "m.jsonl").exists()


TAGS = ["house", "piano", "drums", "rock", "beat"]


def synthetic(path: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    """The real format: TAB-separated, every field quoted, CRLF."""
    header = header or ["clip_id", *TAGS, "mp3_path"]
    lines = ["\t".join(f'"{h}"' for h in header)] + ["\t".join(f'"{v}"' for v in r) for r in rows]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


def row(cid, bits, path=None):
    return [str(cid), *bits, path or f"{cid % 16:x}/artist-album-01-title-{cid}-{cid + 29}.mp3"]


GOOD = [row(2, "11101"), row(6, "01100"), row(10, "11111"), row(14, "00010"), row(18, "10101")]


def test_synthetic_selection(tmp_path):
    sel = select(synthetic(tmp_path / "a.csv", GOOD), ["house", "piano", "drums", "beat"], min_tags=3)
    assert sel.at_least == {1: 4, 2: 4, 3: 3, 4: 2}
    assert [c["clip_id"] for c in sel.clips] == [2, 10, 18]


@pytest.mark.parametrize("bad, message", [
    (row(22, "1x101"), "line 7: tag 'piano' is 'x', expected \"0\" or \"1\""),
    (row(2, "11101"), "line 7: clip_id 2 repeats line 2"),
    (row(22, "11101", path="nowhere.mp3"), "line 7: mp3_path 'nowhere.mp3' is not like"),
    (["22", "1", "1", "mp3.mp3"], "line 7: 4 fields, expected 7"),
    (["abc", *"11101", "a/artist-album-01-title-1-30.mp3"], "line 7: clip_id 'abc' is not a number"),
])
def test_a_malformed_row_is_named_by_line(tmp_path, bad, message):
    path = synthetic(tmp_path / "bad.csv", GOOD + [bad])
    with pytest.raises(DatasetError) as e:
        select(path, ["house", "piano"])
    assert str(e.value).startswith(f"{path}: {message}")
    skipped = select(path, ["house", "piano"], min_tags=1, skip_bad_rows=True)
    assert skipped.skipped_rows[0].startswith(message.split(":")[0]) and skipped.total_rows == 5


def test_not_an_annotations_file(tmp_path):
    path = synthetic(tmp_path / "x.csv", GOOD, header=["id", *TAGS, "path"])
    with pytest.raises(DatasetError, match="line 1: expected a TAB-separated header"):
        select(path)


def test_cli_lists_skipped_rows_and_the_manifest_round_trips(tmp_path):
    path = synthetic(tmp_path / "bad.csv", GOOD + [row(22, "1x101")])
    out = tmp_path / "m.jsonl"
    stop = cli("dataset", "select", "--annotations", str(path), "--tags", "house,piano,drums", "--out", str(out))
    assert stop.returncode == 65 and "--skip-bad-rows" in stop.stderr and not out.exists()
    ok = cli("dataset", "select", "--annotations", str(path), "--tags", "house,piano,drums", "--min-tags", "2",
             "--skip-bad-rows", "--out", str(out))
    assert ok.returncode == 0, ok.stderr
    assert "skipped" in ok.stderr and "line 7" in ok.stderr
    clips = read_manifest(out)
    assert [c["clip_id"] for c in clips] == [2, 6, 10, 18]
    lines = out.read_text().splitlines()
    assert json.loads(lines[0])["split"] in ("train", "valid")


def test_bad_manifest_is_named(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"clip_id": 1, "mp3_path": "0/a.mp3", "tags": [], "proxy_tags": [], "split": "train", '
                 '"description": "x"}\n{"clip_id": "2"}\n')
    with pytest.raises(DatasetError, match=r"m.jsonl: line 2: field 'clip_id' missing or not int"):
        read_manifest(m)


@pytest.mark.parametrize("flag", [["--top", "-5"], ["--top", "0"], ["--min-tags", "0"], ["--min-tags", "x"]])
def test_select_refuses_counts_below_one(tmp_path, flag):
    """--min-tags 0 once fell back to the default 3 and --top -5 selected nothing, silently."""
    from conftest import cli

    r = cli("dataset", "select", "--annotations", str(tmp_path / "a.csv"), "--out", str(tmp_path / "m.jsonl"), *flag)
    assert r.returncode == 2 and "must be" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m.jsonl").exists()


@pytest.mark.parametrize("content, message", [
    (b"[1]\n", "line 1: not a JSON object"),              # was AttributeError: 'list' object has no attribute 'get'
    (b"\xff\xfe{}\n", "not UTF-8 text"),                 # was UnicodeDecodeError
])
def test_a_manifest_that_is_not_objects_is_named(tmp_path, content, message):
    m = tmp_path / "m.jsonl"
    m.write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        read_manifest(m)


@pytest.mark.parametrize("args, words", [
    (["--min-tags", "4", "--tags", "nothing-has-this"], "are not columns"),  # an unknown tag is named
    (["--min-tags", "4", "--tags", "piano"], "no clip has what was asked"),  # one tag cannot give 4: empty, refused
    (["--tags", ""], "no proxy tags given"),                # once the default list, silently
    (["--out-is-dir"], "is a directory"),                   # once IsADirectoryError after the summary
    (["--out-nowhere"], "does not exist"),                  # once made the directories silently
])
def test_select_refuses_what_would_write_nothing_useful(tmp_path, args, words):
    out = tmp_path / "m.jsonl"
    if args == ["--out-is-dir"]:
        args, out = [], tmp_path
    elif args == ["--out-nowhere"]:
        args, out = [], tmp_path / "no" / "such" / "m.jsonl"
    r = cli("dataset", "select", "--annotations", str(REAL), "--out", str(out), *args)
    assert r.returncode == 65 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "m.jsonl").exists() and not (tmp_path / "no").exists()


@pytest.mark.parametrize("flag", [["--train-size", "-1"], ["--valid-size", "0"]])
def test_select_refuses_split_sizes_below_one(tmp_path, flag):
    r = cli("dataset", "select", "--annotations", str(REAL), "--out", str(tmp_path / "m.jsonl"), *flag)
    assert r.returncode == 2 and "must be at least 1" in r.stderr and not (tmp_path / "m.jsonl").exists()


@pytest.mark.parametrize("out", ["/proc/x", "/sys/amapiano-manifest.jsonl"])
def test_an_out_that_cannot_be_written_is_one_line(tmp_path, out):
    """A directory that exists but takes no files (once a FileNotFoundError traceback)."""
    path = synthetic(tmp_path / "a.csv", GOOD)
    r = cli("dataset", "select", "--annotations", str(path), "--tags", "house,piano,drums", "--out", out)
    assert r.returncode == 65 and f"--out {out}: cannot write" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
