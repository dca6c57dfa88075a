"""No child process (worker, evaluate, export) sees the supervisor's secrets: checked on the real
children, through /proc/PID/environ, as the kernel gave it to them."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from conftest import RecordingLog, write_config
from daemon.common.config import load_config
from daemon.common.launch import child_environment
from daemon.evaluation import Evaluation, Run
from daemon.worker import WorkerProcess

SECRETS = {"AMAPIANO_SMTP_PASSWORD": "hunter2", "CREDENTIALS_DIRECTORY": "/run/credentials/amapiano-train.service",
           "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "1", "AWS_SECRET_ACCESS_KEY": "x"}


class Clock:
    from daemon.common.clock import Clock as _C
    _c = _C()

    def now(self):
        return self._c.now()

    def monotonic(self):
        return self._c.monotonic()


def environ_of(pid: int) -> dict[str, str]:
    """The child's environment as the kernel holds it (read again while exec is still settling)."""
    import time

    for _ in range(200):
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        if raw:
            break
        time.sleep(0.01)
    return dict(kv.split("=", 1) for kv in raw.decode().split("\0") if "=" in kv)


@pytest.fixture
def secrets(monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AMAPIANO_DEMO_KEEP", "1")


def check(pid: int) -> None:
    try:
        env = environ_of(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
    assert not set(SECRETS) & set(env), sorted(set(SECRETS) & set(env))
    assert env.get("AMAPIANO_DEMO_KEEP") == "1" and "PATH" in env  # what it needs still passes


def test_the_worker_sees_no_secret(secrets, tmp_path):
    w = WorkerProcess(tmp_path / "config.toml", tmp_path / "failure.json")
    check(w.start())
    w.wait(10)


def test_evaluate_and_export_see_no_secret(secrets, tmp_path):
    cfg = load_config(write_config(tmp_path))
    ev = Evaluation(cfg, RecordingLog(), Clock(), None, "2026-01-01T00:00:00Z")
    ckpt = cfg.checkpoint_dir
    ckpt.mkdir(parents=True)
    (ckpt / "step_00000001.pt").write_bytes(b"x")
    (ckpt / "step_00000001.json").write_text('{"step": 1, "file": "step_00000001.pt", "bytes": 1, "sha256": "0"}')
    r = Run(stage="pausing", paused=False, final=True)
    ev._launch(r, worker_running=False)            # python -m trainer.evaluation evaluate
    assert r.proc.args[3] == "evaluate"
    check(r.proc.pid)
    r.proc.wait(10)
    ev._final_step(r, run=None)                     # python -m trainer.evaluation export
    assert r.proc.args[3] == "export"
    check(r.proc.pid)
    r.proc.wait(10)


def test_the_allow_list_drops_what_is_not_named():
    env = child_environment({"HOME": "/h", "LD_PRELOAD": "/evil.so", "SSH_AUTH_SOCK": "/s", **SECRETS})
    assert env == {"HOME": "/h", "PYTHONUNBUFFERED": "1"}
