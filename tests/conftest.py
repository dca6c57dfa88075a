"""Shared helpers: configs built from the shipped demo.toml, and the CLI as a real process."""
from __future__ import annotations

import copy
import contextlib
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_TOML = REPO / "etc" / "amapiano-train" / "demo.toml"
PROD_TOML = REPO / "etc" / "amapiano-train" / "config.toml"

# A run small enough for a test: 64 clips, 8 steps an epoch, 24 steps in all, ~2 s on one core.
FAST = {
    "data": {"frames": 24, "synthetic_train_clips": 64, "synthetic_valid_clips": 8},
    "train": {"epochs": 3, "batch_size": 4, "grad_accum_steps": 2, "log_every": 1, "val_every": 8,
              "checkpoint_every": 4, "keep_checkpoints": 3},
    "supervisor": {"poll_interval": "100ms", "restart_backoff_initial": "200ms", "restart_backoff_max": "1s",
                   "stop_timeout": "20s"},
    # Money and machine stay out of the way unless a test asks for them.
    "idle": {"timeout": "1h", "warn_before": "10m", "action": "none"},
    "budget": {"max_usd": 1000.0, "hourly_rate_usd": 1.0, "action": "none"},
    "aws": {"imds_url": ""},
    "milestone": {"at": "30d", "dry_run": False, "completion_action": "none", "samples": 1,
                  "sample_seconds": 0.2},
}


# The console script a person types, when the package is installed (scripts/setup.sh).
_SCRIPT = Path(sys.executable).with_name("amapiano-train")
AMAPIANO_TRAIN = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "daemon.cli"]


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def dump_toml(table: dict, prefix: str = "") -> str:
    lines, subs = [], []
    for k, v in table.items():
        (subs if isinstance(v, dict) else lines).append((k, v))
    out = [f"{k} = {_toml_value(v)}" for k, v in lines]
    for k, v in subs:
        name = f"{prefix}.{k}" if prefix else k
        out += ["", f"[{name}]", dump_toml(v, name)]
    return "\n".join(out)


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def write_config(directory: Path, *overrides: dict, name: str = "config.toml") -> Path:
    """demo.toml + FAST + overrides, written to directory/name (state etc. under directory)."""
    table = tomllib.loads(DEMO_TOML.read_text())
    for over in (FAST, *overrides):
        table = merge(table, over)
    path = directory / name
    path.write_text(dump_toml(table) + "\n")
    return path


def cli(*args: str, env: dict | None = None, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """`amapiano-train ARGS` as a real process (the console script's entry point)."""
    full_env = {**os.environ, **(env or {})}
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        if env is None or key not in env:
            full_env.pop(key, None)
    return subprocess.run([*AMAPIANO_TRAIN, *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, **kw)


class RecordingLog:
    """The daemon's and the worker's logger (log.warning("event", key=value)) as a list a test reads:
    any level name records (level, event, kwargs) in .events, in call order. The helpers below are
    views of .events; a test that needs another shape reads .events itself."""

    def __init__(self):
        self.events: list[tuple[str, str, dict]] = []

    def __getattr__(self, level: str):
        if level.startswith("_"):  # copy, pickle and pytest look up dunders: none is a log level
            raise AttributeError(level)
        return lambda event, **kw: self.events.append((level, event, kw))

    def named(self, event: str) -> list[tuple[str, dict]]:
        """(level, kwargs) of each record of this event."""
        return [(lv, kw) for lv, ev, kw in self.events if ev == event]

    def at(self, level: str) -> list[tuple[str, dict]]:
        """(event, kwargs) of each record at this level."""
        return [(ev, kw) for lv, ev, kw in self.events if lv == level]

    def names(self) -> list[str]:
        """Every event's name, in order."""
        return [ev for _, ev, _ in self.events]

    def pairs(self) -> list[tuple[str, str]]:
        """(level, event) of every record, in order."""
        return [(lv, ev) for lv, ev, _ in self.events]


@contextlib.contextmanager
def tmpfs(where: Path, options: str, why: str = "mounting a tmpfs needs root"):
    """A tmpfs mounted at `where` (made here) for a full or read-only disk; the test is skipped
    without root. Unmounted however the test ends, until nothing is mounted there (a test may have
    stacked another mount on it)."""
    if os.geteuid() != 0:
        pytest.skip(why)
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        while subprocess.run(["mountpoint", "-q", str(where)], check=False).returncode == 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path)


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        """Everything received so far (without waiting)."""
        while True:
            try:
                self.messages.append(self.sock.recv(65536, socket.MSG_DONTWAIT).decode())
            except BlockingIOError:
                return self.messages

    def wait_for(self, predicate, timeout: float = 60, since: int = 0) -> str:
        """The first message (from index `since` on) that matches, waiting up to timeout."""
        import time

        deadline = time.monotonic() + timeout
        checked = since
        while time.monotonic() < deadline:
            self.drain()
            for m in self.messages[checked:]:
                if predicate(m):
                    return m
            checked = max(checked, len(self.messages))
            time.sleep(0.02)
        raise AssertionError(f"no matching notify message in {timeout}s; got {self.messages[-10:]}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path_factory):
    # AF_UNIX paths are limited to 108 bytes: keep it short.
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="nfy", dir="/tmp"))
    s = NotifySocket(d / "notify")
    yield s
    s.close()
    import shutil

    shutil.rmtree(d, ignore_errors=True)


class Daemon:
    """`amapiano-train supervise` as a real process, its stdout (JSON log lines) in a file."""

    def __init__(self, config: Path, env: dict | None = None):
        self.config = config
        self.state_dir = config.parent / "state"
        n = len(list(config.parent.glob("supervisor*.log")))
        self.log_path = config.parent / ("supervisor.log" if n == 0 else f"supervisor-{n + 1}.log")
        full_env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        full_env.update({"HF_HUB_OFFLINE": "1", **(env or {})})
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([*AMAPIANO_TRAIN, "supervise", "--config", str(config),
                                      "--log-format", "json"], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=full_env, start_new_session=True)

    def state(self) -> dict:
        import json

        try:
            return json.loads((self.state_dir / "state.json").read_text())
        except (FileNotFoundError, ValueError):  # not there yet, or garbage a test wrote
            return {}

    def wait_state(self, predicate, timeout: float = 90) -> dict:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if state and predicate(state):
                return state
            assert self.proc.poll() is None, f"supervisor exited {self.proc.returncode}:\n{self.log_text()[-3000:]}"
            time.sleep(0.05)
        raise AssertionError(f"state never matched in {timeout}s; last: {self.state()}\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def events(self) -> list[tuple[int, dict]]:
        """(priority, event) for every line; asserts every line has the journald prefix."""
        import json
        import re

        out = []
        for line in self.log_text().splitlines():
            m = re.fullmatch(r"<([0-7])>(\{.*\})", line)
            assert m, f"log line without a <priority> prefix: {line!r}"
            out.append((int(m.group(1)), json.loads(m.group(2))))
        return out

    def stop(self, timeout: float = 60) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the worker too, whatever happened
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        if not self._log.closed:
            self._log.close()


@pytest.fixture
def daemons():
    started: list[Daemon] = []

    def start(config: Path, env: dict | None = None) -> Daemon:
        d = Daemon(config, env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


# ---------------------------------------------------------------- real servers on 127.0.0.1

class SmtpSink:
    """aiosmtpd on 127.0.0.1: what arrived, and a switch to have it down."""

    def __init__(self):
        from aiosmtpd.controller import Controller

        self.messages: list = []
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                from email import message_from_bytes

                sink.messages.append(message_from_bytes(envelope.content))
                return "250 OK"

        self._controller_cls, self._handler = Controller, Handler()
        self.port = _free_port()
        self.controller = None

    def up(self) -> None:
        self.controller = self._controller_cls(self._handler, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def down(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp_sink():
    sink = SmtpSink()
    yield sink
    sink.down()


@pytest.fixture(scope="session")
def moto_server():
    """moto's HTTP server on 127.0.0.1 for EC2, S3 and SES; tests reset it through its API."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_server, monkeypatch):
    """Credentials and region for boto3, and a clean moto backend."""
    import urllib.request

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=10)
    return moto_server


@pytest.fixture
def imds():
    from imds_server import ImdsServer

    server = ImdsServer()
    yield server
    server.close()


# ---------------------------------------------------------------- the fault suite's report

FAULT_REPORT: list[str] = []


@pytest.fixture
def fault_report():
    """Tests that inject faults say what they injected; it is printed at the end of the run."""
    return FAULT_REPORT.append


def pytest_terminal_summary(terminalreporter):
    if FAULT_REPORT:
        terminalreporter.section("faults injected")
        for line in FAULT_REPORT:
            terminalreporter.write_line(line)
