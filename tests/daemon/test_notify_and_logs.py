"""sd_notify over a real socket, and log lines that journald files under the right priority."""
from __future__ import annotations

import io
import json
import os

import structlog

from conftest import RecordingLog
from daemon.common import log as logs
from daemon.common.launch import child_environment
from daemon.ports.notify import Notifier


def notifier(monkeypatch, **env):
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    events = RecordingLog()
    return Notifier(events), events


def test_messages_arrive_on_the_socket(monkeypatch, notify_socket):
    n, events = notifier(monkeypatch, NOTIFY_SOCKET=str(notify_socket.path), WATCHDOG_USEC="4000000")
    assert n.watchdog_interval == 2.0  # half of WATCHDOG_USEC
    n.ready("RUNNING step 0")
    n.status("RUNNING step 0")          # unchanged: not sent again
    n.status("RUNNING step 10")
    n.watchdog()
    n.stopping("stopping")
    assert notify_socket.drain() == ["READY=1\nSTATUS=RUNNING step 0", "STATUS=RUNNING step 10",
                                     "WATCHDOG=1", "STOPPING=1\nSTATUS=stopping"]
    assert events.events == []


def test_no_socket_is_a_quiet_no_op(monkeypatch):
    n, events = notifier(monkeypatch)
    n.ready("x"), n.watchdog(), n.stopping()
    assert n.watchdog_interval is None and events.events == []


def test_a_broken_socket_is_logged_once(monkeypatch, tmp_path):
    n, events = notifier(monkeypatch, NOTIFY_SOCKET=str(tmp_path / "gone"))
    for _ in range(5):
        n.watchdog()
    assert events.pairs() == [("warning", "notify.failed")]


def test_watchdog_for_another_pid_is_not_ours(monkeypatch):
    n, _ = notifier(monkeypatch, WATCHDOG_USEC="4000000", WATCHDOG_PID=str(os.getpid() + 1))
    assert n.watchdog_interval is None
    n, _ = notifier(monkeypatch, WATCHDOG_USEC="4000000", WATCHDOG_PID=str(os.getpid()))
    assert n.watchdog_interval == 2


def test_worker_environment_has_no_notify_variables():
    env = child_environment({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "HOME": "/h",
                             "AMAPIANO_SMTP_PASSWORD": "secret", "CREDENTIALS_DIRECTORY": "/run/credentials/x"})
    assert env == {"HOME": "/h", "PYTHONUNBUFFERED": "1"}


def test_json_lines_carry_the_syslog_priority():
    out = io.StringIO()
    assert logs.configure("json", "debug", stream=out) == "json"
    log = structlog.get_logger("t")
    log.debug("a.debug")
    log.info("b.info", step=3)
    log.warning("c.warning")
    log.error("d.error", reason="x")
    lines = out.getvalue().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>"]
    body = json.loads(lines[1][3:])
    assert body["event"] == "b.info" and body["step"] == 3 and body["level"] == "info" and body["ts"].endswith("Z")


def test_log_level_filters():
    out = io.StringIO()
    logs.configure("json", "warning", stream=out)
    structlog.get_logger("t").info("hidden")
    structlog.get_logger("t").warning("shown")
    assert [json.loads(line[3:])["event"] for line in out.getvalue().splitlines()] == ["shown"]


def test_processes_sharing_one_stream_never_merge_two_lines(tmp_path):
    """The ranks of a process group write to the journal's one stream: every line must reach it
    whole (one write per line), or two half-lines make one unreadable one."""
    import subprocess
    import sys

    code = ("import sys; from daemon.common import log; log.configure('json', 'info');"
            "g = log.get('t'); [g.warning('rank.line', rank=sys.argv[1], i=i, pad='x' * 150) for i in range(1500)]")
    out = tmp_path / "journal"
    with open(out, "wb") as stream:
        procs = [subprocess.Popen([sys.executable, "-c", code, str(r)], stdout=stream, env={**os.environ,
                                  "PYTHONUNBUFFERED": "1"}) for r in range(4)]
        assert [p.wait(timeout=120) for p in procs] == [0] * 4
    lines = out.read_text().splitlines()
    assert len(lines) == 6000
    events = [json.loads(line[3:]) for line in lines]  # each one whole, after its <4> priority
    assert sorted((e["rank"], e["i"]) for e in events) == sorted((str(r), i) for r in range(4) for i in range(1500))
