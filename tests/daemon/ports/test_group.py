"""The cluster's training group as the watcher sees it (daemon/ports/group.py): what the run
script's pid file may hold, and which processes it may lead the watcher to signal."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from daemon.common import stopfile
from daemon.common.clock import Clock
from daemon.ports.group import WatchedGroup, read_pid_file, returncode


def group(tmp_path, config=None) -> WatchedGroup:
    return WatchedGroup(tmp_path / "group.pid", tmp_path / "failure.json", tmp_path / "heartbeat.json",
                        stopfile.path(tmp_path), Clock(), config=config)


@pytest.mark.parametrize("content", [b"", b"\x00\xff", b"abc", b"-5", b"1", b"0", b"12 34 56", b"9" * 100000,
                                     b"12 -3", "١٢".encode()])
def test_cluster_garbage_pid_file_is_no_group(tmp_path, content):
    (tmp_path / "group.pid").write_bytes(content)
    g = group(tmp_path)
    assert read_pid_file(tmp_path / "group.pid") is None and not g.running and g.pid is None


SLEEP = ["-c", "import time; time.sleep(60)"]


@pytest.mark.parametrize("argv", [SLEEP, [*SLEEP, "trainer"],  # `vim trainer`, `ls trainer`: it was adopted
                                  [*SLEEP, "-m", "trainer", "--config", "/elsewhere/other.toml"]])  # another job's
def test_cluster_pid_file_naming_another_process_adopts_and_signals_nothing(tmp_path, argv):
    """A stale pid file whose pid now belongs to something else, even a process that mentions
    "trainer" or trains another config: never adopted, never killed, never asked to stop."""
    other = subprocess.Popen([sys.executable, *argv])
    try:
        (tmp_path / "group.pid").write_text(f"{other.pid}\n")
        g = group(tmp_path, tmp_path / "config.toml")
        assert not g.running
        g.signal(signal.SIGKILL)
        g.signal(signal.SIGUSR1)
        assert other.poll() is None and not stopfile.path(tmp_path).exists()
    finally:
        other.kill()
        other.wait()


def test_cluster_group_status_reads_as_popen_would(tmp_path):
    assert read_pid_file(tmp_path / "none") is None
    (tmp_path / "group.pid").write_text("4242 137\n")
    assert read_pid_file(tmp_path / "group.pid") == (4242, 137)
    assert returncode(137) == -signal.SIGKILL and returncode(1) == 1 and returncode(0) == 0
    assert returncode(None) == 1  # gone without a word: a crash, never a completion
