"""A FIFO planted at state.json, at ledger.journal or at a checkpoint marker, with the real
supervisor as systemd runs it (its own process, a real notify socket): it reaches READY, deals
with the FIFO in one logged line, and `amapiano-train status` answers. Before, each FIFO blocked
the supervisor in a read before READY (a start-limit failure under the unit, nothing watching
the instance) and blocked `status` for ever."""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from conftest import cli, write_config

pytestmark = pytest.mark.slow
LONG = {"train": {"epochs": 250}}
T0 = "2026-11-01T00:00:00Z"


def is_fifo(path: Path) -> bool:
    return stat.S_ISFIFO(os.lstat(path).st_mode)


def ready(d, notify_socket) -> None:
    """READY=1 from the supervisor (never read state.json before: this test's reader would block too)."""
    try:
        notify_socket.wait_for(lambda m: m.startswith("READY=1"), timeout=90)
    except AssertionError:
        raise AssertionError(f"no READY in 90 s (exit {d.proc.poll()}):\n{d.log_text()[-3000:]}") from None


def wait_for(check, what: str, d, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not in {timeout} s\n{d.log_text()[-3000:]}"
        assert d.proc.poll() is None, f"supervisor exited {d.proc.returncode}:\n{d.log_text()[-3000:]}"
        time.sleep(0.1)


def status(config: Path) -> str:
    r = cli("status", "--config", str(config), timeout=60)  # a status that blocks fails here
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    return r.stdout


def events_named(d, name: str) -> list[dict]:
    return [e for _, e in d.events() if e["event"] == name]


def test_a_fifo_state_file_is_moved_aside_and_the_run_rebuilt_from_the_journal(tmp_path, daemons, notify_socket):
    from daemon import journal

    config = write_config(tmp_path, LONG)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    journal.append(state_dir / journal.NAME, journal.record("run-7", T0, None, [], None, T0))
    os.mkfifo(state_dir / "state.json")
    d = daemons(config, {"NOTIFY_SOCKET": str(notify_socket.path)})
    ready(d, notify_socket)
    wait_for(lambda: (state_dir / "state.json").is_file(), "state.json written again", d)
    assert d.wait_state(lambda s: True)["run_id"] == "run-7"  # the run the journal holds, not a new one
    aside = list(state_dir.glob("state.json.bad.*"))
    assert len(aside) == 1 and is_fifo(aside[0])
    moved = events_named(d, "state.moved_aside")
    assert len(moved) == 1 and "not a regular file" in moved[0]["error"]
    assert "run-7" in status(config)


def test_a_fifo_journal_is_moved_aside_and_written_again_from_the_run(tmp_path, daemons, notify_socket):
    from daemon import journal
    from daemon.common.clock import Clock
    from daemon.state import State, save_state

    config = write_config(tmp_path, LONG)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    run = State.new(Clock().now())
    save_state(state_dir / "state.json", run, Clock().now())
    os.mkfifo(state_dir / journal.NAME)
    d = daemons(config, {"NOTIFY_SOCKET": str(notify_socket.path)})
    ready(d, notify_socket)
    wait_for(lambda: (state_dir / journal.NAME).is_file(), "the journal written again", d)
    assert journal.last(state_dir / journal.NAME)["run_id"] == run.run_id
    aside = list(state_dir.glob(f"{journal.NAME}.bad.*"))
    assert len(aside) == 1 and is_fifo(aside[0])
    assert len(events_named(d, "journal.moved_aside")) == 1
    assert run.run_id in status(config)


def test_a_fifo_marker_is_no_checkpoint_and_is_put_out_of_the_way(tmp_path, daemons, notify_socket):
    config = write_config(tmp_path, LONG)
    ckpt = tmp_path / "state" / "checkpoints"
    ckpt.mkdir(parents=True)
    os.mkfifo(ckpt / "step_00000999.json")
    d = daemons(config, {"NOTIFY_SOCKET": str(notify_socket.path)})
    ready(d, notify_socket)
    assert "phase" in status(config)
    # The worker trains from step 0 (the FIFO commits nothing) and its first prune moves it aside.
    state = d.wait_state(lambda s: (s["trainer"]["last_checkpoint_step"] or 0) >= 4, timeout=120)
    assert state["trainer"]["resumed_from_step"] is None
    wait_for(lambda: not os.path.lexists(ckpt / "step_00000999.json"), "the FIFO set aside", d, timeout=60)
    assert is_fifo(ckpt / "uncommitted" / "step_00000999.json")
