"""A FIFO, a directory or a link to /dev/zero planted where the daemon keeps its own files
(state.json, ledger.journal, a checkpoint marker, written-here.json) is refused at once, never
read for ever: a plain read_bytes() blocked the supervisor before READY and `status` on a FIFO,
and read /dev/zero until memory ran out.

Each case runs in a child process with a memory limit and a deadline, so that the code before the
fix fails these tests (a timeout, a MemoryError) instead of taking the test machine down with it.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KINDS = ("fifo", "directory", "dev-zero")


def plant(path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_text("{}")
    else:
        path.symlink_to("/dev/zero")


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # /dev/zero read whole stops here


def child(code: str, timeout: float = 30) -> str:
    """Run `code` (daemon imported from the repository) in a bounded child; its stdout."""
    try:
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                           cwd=REPO, timeout=timeout, preexec_fn=_limit, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"blocked for {timeout} s: the reader waited on the planted file") from None
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


@pytest.mark.parametrize("kind", KINDS)
def test_a_planted_state_file_is_one_clear_error_at_once(tmp_path, kind):
    state = tmp_path / "state.json"
    plant(state, kind)
    out = child(f"""
        from pathlib import Path
        from daemon.state import StateError, load_state
        try:
            load_state(Path({str(state)!r}))
        except StateError as e:
            print(e)
    """)
    assert out.startswith(str(state)) and "move it aside" in out, out
    assert ("not a regular file" if kind != "directory" else "Is a directory") in out, out


@pytest.mark.parametrize("kind", KINDS)
def test_a_planted_journal_reads_as_none_and_is_moved_aside_at_the_next_record(tmp_path, kind):
    path = tmp_path / "ledger.journal"
    plant(path, kind)
    out = child(f"""
        from pathlib import Path
        from daemon import journal
        path = Path({str(path)!r})
        print(journal.last(path))
        journal.append(path, journal.record("run-1", "2026-12-01T00:00:00Z", None, [], None, "2026-12-03T10:00:00Z"))
        print(journal.last(path)["run_id"])
    """)
    assert out.splitlines() == ["None", "run-1"], out
    assert path.is_file() and not path.is_symlink()
    aside = list(tmp_path.glob("ledger.journal.bad.*"))
    assert [p.name for p in aside] == ["ledger.journal.bad.20261203T100000Z"]
    assert not aside[0].is_file()  # the planted thing itself, kept for a look


@pytest.mark.parametrize("kind", KINDS)
def test_a_planted_marker_is_no_checkpoint_and_the_good_one_still_counts(tmp_path, kind):
    import hashlib
    import json

    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    blob = b"weights"
    (ckpt / "step_00000004.pt").write_bytes(blob)
    (ckpt / "step_00000004.json").write_text(json.dumps(
        {"step": 4, "file": "step_00000004.pt", "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}))
    plant(ckpt / "step_00000008.json", kind)
    plant(ckpt / "written-here.json", kind)
    out = child(f"""
        from pathlib import Path
        from daemon.common import checkpoints
        d = Path({str(ckpt)!r})
        print([m.step for m in checkpoints.list_checkpoints(d)], [p.name for p in checkpoints.garbage_markers(d)],
              checkpoints.is_own(checkpoints.newest(d)))
    """)
    assert out == "[4] ['step_00000008.json'] False", out


def test_status_on_a_fifo_state_file_answers_at_once_in_one_line(tmp_path):
    from conftest import cli, write_config

    config = write_config(tmp_path)
    (tmp_path / "state").mkdir()
    os.mkfifo(tmp_path / "state" / "state.json")
    try:
        r = cli("status", "--config", str(config), timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError("status blocked on the FIFO for 60 s") from None
    assert r.returncode == 65 and r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    assert "state.json: cannot read (not a regular file); move it aside" in r.stderr
