"""The supervisor as systemd runs it: a real process, a real notify socket, real signals."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import write_config

pytestmark = pytest.mark.slow
LONG = {"train": {"epochs": 250}}  # 2,000 steps: still running when the test stops it


def worker_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_notify_protocol_and_sigterm_checkpoint(tmp_path, daemons, notify_socket):
    config = write_config(tmp_path, LONG)
    d = daemons(config, {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000"})

    ready = notify_socket.wait_for(lambda m: m.startswith("READY=1"), timeout=60)
    assert "STATUS=" in ready
    state = d.wait_state(lambda s: s["phase"] == "RUNNING" and (s["trainer"]["step"] or 0) >= 5)
    env = worker_env(state["trainer"]["pid"])
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env  # only the supervisor talks to systemd
    assert env["AMAPIANO_SUPERVISOR_PID"] == str(d.proc.pid)
    notify_socket.wait_for(lambda m: m == "WATCHDOG=1", timeout=10)
    status = notify_socket.wait_for(lambda m: m.startswith("STATUS=RUNNING step"), timeout=20)
    assert "loss" in status

    assert d.stop() == 0
    notify_socket.wait_for(lambda m: m.startswith("STOPPING=1"), timeout=5)
    state = d.state()
    assert state["phase"] == "STOPPED"
    t = state["trainer"]
    assert t["pid"] is None and t["last_exit_code"] == 75
    # The worker checkpointed the very step it stopped at: nothing is lost.
    assert t["last_checkpoint_step"] == t["step"] > 0
    assert (d.state_dir / "checkpoints" / f"step_{t['step']:08d}.json").exists()
    events = d.events()
    names = [e["event"] for _, e in events]
    assert "supervisor.ready" in names and "worker.stop_requested" in names and names[-1] == "supervisor.stopped"
    assert all(p == 6 for p, e in events if e["level"] == "info")

    # Started again, the same run resumes where it stopped.
    d2 = daemons(config)
    state2 = d2.wait_state(lambda s: s["phase"] == "RUNNING" and s["trainer"]["resumed_from_step"] is not None)
    assert state2["run_id"] == state["run_id"] and state2["trainer"]["resumed_from_step"] == t["step"]
    assert d2.stop() == 0


def test_crash_loop_ends_in_failed_not_a_money_burning_loop(tmp_path, daemons):
    empty = tmp_path / "no-model-here"
    empty.mkdir()
    config = write_config(tmp_path, {"model": {"source": "pretrained", "pretrained": str(empty)},
                                     "supervisor": {"max_restarts_without_progress": 3}})
    d = daemons(config)
    state = d.wait_state(lambda s: s["phase"] == "FAILED", timeout=120)
    assert "3 restarts without checkpoint progress (no checkpoint yet" in state["failure"]["reason"]
    assert state["failure"]["exit_code"] == 1 and "no-model-here" in (state["failure"]["message"] or "")
    assert state["trainer"]["restarts"] == 2
    time.sleep(1.0)
    assert d.proc.poll() is None, "FAILED keeps the daemon up, so systemd does not restart it into the same loop"
    assert d.state()["trainer"]["restarts"] == 2  # and nothing more is started
    events = d.events()
    gave_up = [(p, e) for p, e in events if e["event"] == "worker.gave_up"]
    assert len(gave_up) == 1 and gave_up[0][0] == 3  # error priority: journalctl -p err shows it
    assert [p for p, e in events if e["event"] == "worker.exited"] == [4, 4, 4]  # warnings
    assert d.stop() == 0
    assert d.state()["phase"] == "FAILED"  # a stop does not hide the failure


def test_bad_data_config_fails_at_once(tmp_path, daemons):
    config = write_config(tmp_path, {"data": {"source": "cache"}})
    d = daemons(config)
    state = d.wait_state(lambda s: s["phase"] == "FAILED", timeout=90)
    assert state["trainer"]["restarts"] == 0 and state["failure"]["exit_code"] == 78
    assert "token cache" in state["failure"]["reason"]
    assert d.stop() == 0


def test_a_hung_scheduler_stops_the_watchdog_pings(tmp_path, monkeypatch, notify_socket):
    """In-process: the watchdog job shares the one scheduler thread, so a stuck job silences it."""
    import threading

    from daemon.common import log as logs
    from daemon.common.config import load_config
    from daemon.supervisor import Supervisor

    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    logs.configure("json", "warning")
    sup = Supervisor(load_config(write_config(tmp_path, LONG)), logs.get("test"))
    release = threading.Event()
    hung = threading.Event()
    sup.start()
    try:
        notify_socket.wait_for(lambda m: m == "WATCHDOG=1", timeout=30)

        def stuck() -> None:
            hung.set()
            release.wait(30)

        sup.add_job(stuck, 0.1, "stuck")
        assert hung.wait(5)
        time.sleep(0.3)  # a ping already on its way may land
        hang_seen = len(notify_socket.drain())
        time.sleep(1.5)  # more than 5 watchdog intervals of 0.2 s
        assert "WATCHDOG=1" not in notify_socket.drain()[hang_seen:]
        sup._scheduler.remove_job("stuck")
        release.set()
        notify_socket.wait_for(lambda m: m == "WATCHDOG=1", timeout=10, since=hang_seen)
    finally:
        release.set()
        sup.shutdown()



def test_a_notify_socket_nobody_reads_never_stalls_the_daemon(tmp_path, daemons):
    """A full notify queue once blocked the scheduler thread in sendall(): state.json froze while
    the worker trained on, unwatched. Messages that cannot go now are dropped instead."""
    import socket
    import tempfile
    import time

    path = Path(tempfile.mkdtemp(prefix="nfy", dir="/tmp")) / "n"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # fills after a few messages
    sock.bind(str(path))
    try:
        d = daemons(write_config(tmp_path, LONG), {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"})
        first = d.wait_state(lambda s: (s["trainer"]["step"] or 0) >= 3, timeout=90)
        time.sleep(3)  # hundreds of pings and STATUS lines against a full queue
        later = d.wait_state(lambda s: (s["trainer"]["step"] or 0) > first["trainer"]["step"] + 5, timeout=60)
        assert later["updated_at"] >= first["updated_at"]
        assert d.stop() == 0
    finally:
        sock.close()
