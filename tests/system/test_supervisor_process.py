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


# -- a hostile metadata service: READY, the watchdog and SIGTERM never wait on it -------------------

def imds_config(tmp_path, imds, **aws) -> Path:
    """On "EC2" by our IMDS alone (no region in the config), the price from EC2: everything outside-bound."""
    return write_config(tmp_path, LONG, {"aws": {"imds_url": imds.url, "region": "", "spot_poll": "300ms", **aws},
                                         "budget": {"hourly_rate_usd": 0.0}})


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_dripping_metadata_service_delays_nothing(tmp_path, daemons, notify_socket, imds, fault_report):
    """Token at once, then the identity a byte every 0.5 s: start() once sat in that read for good
    (no READY, no WATCHDOG, no state.json, no worker; SIGTERM ignored). Here each IMDS request may
    take 10 s (the most the config allows), so only keeping IMDS off those paths can pass."""
    imds.set_fault("slow")
    started = time.monotonic()
    d = daemons(imds_config(tmp_path, imds, imds_timeout="10s"),
                {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000"})
    notify_socket.wait_for(lambda m: m.startswith("READY=1"), timeout=45)
    ready_s = time.monotonic() - started
    notify_socket.wait_for(lambda m: m == "WATCHDOG=1", timeout=10)
    # training: so the stop below is the worker's checkpoint, while the identity is still dripping
    state = d.wait_state(lambda s: s.get("cost") and (s["trainer"]["step"] or 0) >= 2, timeout=90)
    assert state["instance"] is None and state["cost"]["rate_source"].startswith("ceiling")  # unknown: the ceiling
    assert state["cost"]["rate_usd_per_h"] > 0
    assert imds.sent_bytes > 0  # the identity was being dripped all along
    stopping = time.monotonic()
    assert d.stop(timeout=30) == 0
    stop_s = time.monotonic() - stopping
    assert stop_s < 20, f"SIGTERM took {stop_s:.1f} s"
    assert d.state()["phase"] == "STOPPED"
    fault_report(f"IMDS dripping (10 s per request allowed): READY {ready_s:.1f} s after the process started, "
                 f"SIGTERM to exit {stop_s:.1f} s")


def test_a_metadata_service_that_slows_mid_run_stalls_no_job(tmp_path, daemons, notify_socket, imds):
    """The Spot notices were read on the scheduler's thread: a slow answer there silenced the watchdog."""
    d = daemons(imds_config(tmp_path, imds, imds_timeout="10s"),
                {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000"})
    d.wait_state(lambda s: s.get("instance") and s["phase"] == "RUNNING", timeout=60)
    imds.set_fault("slow")
    time.sleep(1.0)  # the next notice read is dripping now
    seen, before = len(notify_socket.drain()), d.state()["updated_at"]
    time.sleep(4.0)
    pings = notify_socket.drain()[seen:].count("WATCHDOG=1")
    assert pings >= 3, f"{pings} WATCHDOG=1 in 4 s while IMDS dripped (interval 0.5 s)"
    d.wait_state(lambda s: s["updated_at"] > before, timeout=30)
    assert d.stop(timeout=30) == 0


@pytest.mark.parametrize("kind", ["short", "undecodable", "huge"])
def test_a_garbled_metadata_reply_is_unknown_and_retried(tmp_path, daemons, notify_socket, imds, kind,
                                                         fault_report):
    """Cut short (IncompleteRead) and not UTF-8 (UnicodeDecodeError) were tracebacks and exit 1;
    200 MiB was read whole, and again at each retry."""
    imds.huge_bytes = 200 * 2**20
    imds.set_fault(kind)
    d = daemons(imds_config(tmp_path, imds), {"NOTIFY_SOCKET": str(notify_socket.path),
                                              "WATCHDOG_USEC": "1000000"})
    notify_socket.wait_for(lambda m: m.startswith("READY=1"), timeout=45)
    d.wait_state(lambda s: s["phase"] == "RUNNING", timeout=60)
    import re

    for _ in range(200):  # the second try (backoff 2 s) too
        unknown = [e for _, e in d.events() if e["event"] == "aws.identity_unknown"]
        if len(unknown) >= 2:
            break
        time.sleep(0.1)
    assert len(unknown) >= 2 and unknown[-1]["level"] == "warning"  # the first miss off EC2 is info
    says = {"short": "cut short", "undecodable": "not UTF-8", "huge": "over 64 KiB"}[kind]
    assert says in unknown[0]["reason"]
    assert "Traceback" not in d.log_text() and not re.search(r"job\.failed", d.log_text())
    peak = peak_rss_mib(d.proc.pid)
    assert peak < 250, f"supervisor peak RSS {peak:.0f} MiB"
    imds.clear_faults()
    state = d.wait_state(lambda s: s.get("instance"), timeout=40)  # retried with backoff: known once IMDS answers
    assert state["instance"]["instance_id"] == "i-0123456789abcdef0"
    assert d.stop(timeout=30) == 0
    fault_report(f"IMDS reply {kind}: 'unknown', retried, READY and the worker as usual; supervisor peak RSS "
                 f"{peak:.0f} MiB")
