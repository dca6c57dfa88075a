"""The cluster watcher against a hostile node (issue 20): what SkyPilot's run script, a neighbour
process or the shared state directory can put in its way. Each case failed on the watcher of
d6d26bc: a FIFO at the group's pid file, a planted or unwritable stop request, a digit that is
not ASCII, a group gone before it was seen or never there (a stranger with "trainer" in its argv
is in tests/daemon/ports/test_group.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import AMAPIANO_TRAIN, REPO, write_config
from test_watch import Group, Watch, heartbeat, wait_for_step

from daemon.common import exits, stopfile
from daemon.common.clock import Clock
from daemon.ports.group import WatchedGroup, alive

READ_PID = "import sys; from daemon.ports.group import read_pid_file; print(read_pid_file(sys.argv[1]))"


def group(tmp_path: Path, config: Path | None = None) -> WatchedGroup:
    return WatchedGroup(tmp_path / "group.pid", tmp_path / "failure.json", tmp_path / "heartbeat.json",
                        stopfile.path(tmp_path), Clock(), config=config)


def test_cluster_pid_file_fifo_or_device_never_blocks_the_watcher(tmp_path):
    """A FIFO at the pid file blocked the watcher's every tick for ever (open() waits for a writer)."""
    for planted in ("fifo", "zero"):
        pid_file = tmp_path / f"{planted}.pid"
        os.mkfifo(pid_file) if planted == "fifo" else pid_file.symlink_to("/dev/zero")
        out = subprocess.run([sys.executable, "-c", READ_PID, str(pid_file)], cwd=REPO, capture_output=True,
                             text=True, timeout=15)
        assert out.returncode == 0 and out.stdout.strip() == "None", (planted, out.stderr[-2000:])


def test_cluster_pid_file_naming_this_configs_trainer_is_adopted(tmp_path):
    """The other side of the check above: the run script's own group (this config) is the group."""
    config = write_config(tmp_path)
    me = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "trainer", "--config",
                           config.name], cwd=tmp_path)
    try:
        time.sleep(0.3)
        (tmp_path / "group.pid").write_text(f"{me.pid}\n")
        assert group(tmp_path, config).running
    finally:
        me.kill()
        me.wait()


def test_cluster_planted_stop_request_is_moved_aside_and_the_request_still_written(tmp_path):
    """A directory at stop-request.json raised IsADirectoryError out of the watcher's start (a
    traceback, exit 1, every relaunch); now it is kept aside for a look, like the journal's."""
    f = stopfile.path(tmp_path)
    f.mkdir()
    (f / "x").write_text("keep me")
    assert stopfile.clear(f) and not f.exists()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(f"{stopfile.NAME}.bad.")]
    assert len(aside) == 1 and (aside[0] / "x").read_text() == "keep me"
    os.mkfifo(f)
    stopfile.request(f, 4242, "budget cap reached", "now")
    assert stopfile.for_group(f, {4242}) == "budget cap reached"


def test_cluster_unwritable_stop_request_falls_back_to_signalling_this_nodes_ranks(tmp_path):
    """The state dir read-only (a bucket mount remounted ro, a full disk): the request cannot be
    written, so the watcher signals the head's ranks itself (SIGTERM: the same agreed stop) instead
    of letting an OSError through its executor and waiting stop_timeout to kill them."""
    (tmp_path / "ro").write_text("a file, so nothing can be made under it")
    config = write_config(tmp_path)
    rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "trainer", "--config",
                             str(config)])
    try:
        time.sleep(0.3)
        (tmp_path / "group.pid").write_text(f"{rank.pid}\n")
        g = WatchedGroup(tmp_path / "group.pid", tmp_path / "failure.json", tmp_path / "heartbeat.json",
                         stopfile.path(tmp_path / "ro"), Clock(), config=config)
        assert not stopfile.clear(stopfile.path(tmp_path / "ro"))  # never raises either
        g.signal(signal.SIGTERM)
        assert rank.wait(10) == -signal.SIGTERM
    finally:
        rank.kill()
        rank.wait()


RO_PROBE = """
import os, signal, subprocess, sys, time
from pathlib import Path
from daemon.common import stopfile
from daemon.common.clock import Clock
from daemon.ports.group import WatchedGroup
state, config = Path(sys.argv[1]), Path(sys.argv[2])
rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "trainer", "--config", str(config)])
time.sleep(0.3)
pid_file = Path(sys.argv[3])
pid_file.write_text(f"{rank.pid}\\n")
g = WatchedGroup(pid_file, pid_file.with_name("f.json"), state / "heartbeat.json", stopfile.path(state), Clock(),
                 config=config)
print("cleared", stopfile.clear(stopfile.path(state)))
g.signal(signal.SIGTERM)
print("rank", rank.wait(10))
"""


def test_cluster_state_dir_remounted_read_only_neither_raises_nor_leaves_the_group_unasked(tmp_path):
    """A real read-only mount (a tmpfs remounted ro in a mount namespace of the test's own): EROFS
    on the old request's removal and on the new request, and the head's rank still gets the stop."""
    config = write_config(tmp_path)
    script = ('d="$1"; shift; mount -t tmpfs none "$d" && echo "{}" > "$d/stop-request.json" && '
              'mount -o remount,ro "$d" && exec "$@"')
    (tmp_path / "ro").mkdir()
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(tmp_path / "ro"),
                          sys.executable, "-c", RO_PROBE, str(tmp_path / "ro"), str(config), str(tmp_path / "g.pid")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    if out.returncode != 0 and "Operation not permitted" in out.stderr:
        pytest.skip(f"no mount namespace here: {out.stderr.strip()[-200:]}")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stdout.split() == ["cleared", "False", "rank", str(-signal.SIGTERM)], out.stdout


@pytest.mark.parametrize("nodes", ["²", "٣", "1_000", " 2 x", "1000000000", "-1", "2.0"])
def test_cluster_num_nodes_not_ascii_digits_is_one_line_and_78(tmp_path, nodes):
    """'²'.isdigit() is True and int('²') raises: a traceback, exit 1, and SkyPilot retried it."""
    cfg = write_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYPILOT_")}
    out = subprocess.run([*AMAPIANO_TRAIN, "watch", "--config", str(cfg), "--group-pid-file", str(tmp_path / "p")],
                         capture_output=True, text=True, env={**env, "SKYPILOT_NUM_NODES": nodes}, timeout=60)
    assert out.returncode == exits.CONFIG and "SKYPILOT_NUM_NODES" in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


@pytest.fixture
def job():
    """Start SkyPilot's side (the run script's group) and the watcher; both gone after the test."""
    started: list = []

    def start(config: Path, argv: list[str], group_ended: bool = False) -> tuple[int, Watch]:
        group = Group(config, argv=argv)
        started.append(group)
        if group_ended:  # the run script has written its status before the watcher is up
            group.proc.wait(60)
        watch = Watch(config, group)
        started.append(watch)
        return watch.exit_code(120), watch

    yield start
    for thing in reversed(started):
        thing.kill()


@pytest.mark.slow
def test_cluster_group_gone_before_it_was_adopted_ends_the_job_at_once_and_says_so(tmp_path, job):
    """torchrun exits before the watcher is up to adopt it (a bad config, training already complete
    on a relaunch): the run script has written its status, and the watcher waited loading_timeout
    (30 min by default) billing every node for nothing, then exited 1 for SkyPilot to retry."""
    cfg = write_config(tmp_path, {"supervisor": {"loading_timeout": "10m"}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochs = -1\n")
    code, watch = job(cfg, [sys.executable, "-m", "trainer", "--config", str(bad)], group_ended=True)
    assert code == exits.CONFIG, watch.log_text()[-4000:]  # the trainer's own 78: a retry cannot fix it
    assert_told(watch, "before the watcher adopted it")


@pytest.mark.slow
def test_cluster_group_that_never_starts_ends_the_job_and_a_person_is_told(tmp_path, job):
    """No trainer ever behind the pid file (the run script's torchrun never started): the job ends
    after loading_timeout (exit 1, retried), with an alert and state.json saying why; a stop
    request planted as a directory does not stop the watcher from starting."""
    cfg = write_config(tmp_path, {"supervisor": {"loading_timeout": "10s"}})
    stopfile.path(tmp_path / "state").mkdir(parents=True)
    code, watch = job(cfg, ["bash", "-c", "exec sleep 600"])  # a group that is no trainer: never adopted
    assert code == exits.FAILED, watch.log_text()[-4000:]
    assert_told(watch, "no training group appeared")


def assert_told(watch: Watch, reason: str) -> None:
    """state.json and an alert say why the job ended; nothing crashed on the way."""
    state = watch.state()
    assert reason in state["cluster"]["job_end"]["reason"], state["cluster"]
    assert any("the job ends (" in a["subject"] and reason in a["subject"] for a in state["alerts"]), \
        state["alerts"]
    assert "Traceback" not in watch.log_text()


def test_cluster_second_watcher_on_one_state_dir_is_refused_before_it_touches_anything(tmp_path):
    """Two watchers on one state dir would keep two ledgers and end the job twice: the second is
    one line and 78 (the state dir's lock), and the first watches on."""
    cfg = write_config(tmp_path)
    env = {**os.environ, "SKYPILOT_NUM_NODES": "2"}
    cmd = [*AMAPIANO_TRAIN, "watch", "--config", str(cfg), "--group-pid-file", str(tmp_path / "group.pid")]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "state" / "state.json").exists():
            assert time.monotonic() < deadline and first.poll() is None, "the first watcher never wrote its state"
            time.sleep(0.1)
        planted = stopfile.path(tmp_path / "state")
        planted.write_text("left for the first watcher")
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == exits.CONFIG and "already watches this state directory" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and planted.exists() and first.poll() is None
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_cluster_cap_reached_while_rank_0_is_frozen_still_ends_the_group_and_the_job(tmp_path):
    """The stop request needs rank 0 to read it; a rank frozen (SIGSTOP, a hung NFS read) never
    will. stop_timeout later the group is killed, and the job ends 0 (a cap: never recovered)."""
    cfg = write_config(tmp_path, {"train": {"device": "cpu", "cpu_threads": 1, "epochs": 400}},
                       {"supervisor": {"stop_timeout": "10s"}},
                       {"budget": {"max_usd": 6.0, "hourly_rate_usd": 1800.0, "check_every": "500ms"}})
    group = Group(cfg)
    watch = None
    try:
        wait_for_step(tmp_path, 2)
        frozen = group.ranks()
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        watch = Watch(cfg, group)
        assert watch.exit_code(180) == exits.OK, watch.log_text()[-4000:]
        state = watch.state()
        assert state["shutdown"]["reason"] == "budget cap reached" and state["phase"] == "HALTED", state["shutdown"]
        assert group.status() == 128 + signal.SIGKILL  # torchrun killed: every node's rendezvous breaks
        assert not any(alive(pid) for pid in frozen)
    finally:
        for thing in (watch, group):
            if thing is not None:
                thing.kill()


@pytest.mark.slow
def test_cluster_job_end_alert_is_delivered_before_the_watcher_exits(tmp_path, job, smtp_sink):
    """The job's end was queued as an alert and the watcher exited at once: a mail server that
    refused the first try (down, greylisting) never got the retry, and nobody was told."""
    email = {"transport": "smtp", "to": ["me@example.com"], "smtp_host": "127.0.0.1", "smtp_port": smtp_sink.port,
             "smtp_starttls": False, "retry_every": "5s", "shutdown_wait": "60s"}
    cfg = write_config(tmp_path, {"supervisor": {"loading_timeout": "10s"}, "email": email})

    def up_after_the_first_try() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            log = (tmp_path / "watcher.log").read_text() if (tmp_path / "watcher.log").exists() else ""
            if "alert.retrying" in log and "cluster.job_ends" in log:
                smtp_sink.up()
                return
            time.sleep(0.05)

    threading.Thread(target=up_after_the_first_try, daemon=True).start()
    code, watch = job(cfg, ["bash", "-c", "exec sleep 600"])
    assert code == exits.FAILED, watch.log_text()[-4000:]
    subjects = [m["Subject"] for m in smtp_sink.messages]
    assert any("the job ends" in s and "no training group appeared" in s for s in subjects), \
        (subjects, watch.log_text()[-3000:])


@pytest.mark.slow
def test_cluster_watcher_cancelled_mid_checkpoint_lets_the_write_finish_and_the_group_stop_on_it(tmp_path,
                                                                                                monkeypatch):
    """`sky jobs cancel` lands while rank 0 is inside a checkpoint write (held 4 s by the test-only
    slow save): the write commits, the group stops at one committed step, the job ends 75."""
    monkeypatch.setenv("AMAPIANO_TEST_SLOW_SAVE_S", "4")
    cfg = write_config(tmp_path, {"train": {"device": "cpu", "cpu_threads": 1, "epochs": 400}},
                       {"supervisor": {"stop_timeout": "90s"}})
    group = Group(cfg)
    watch = Watch(cfg, group)
    try:
        watch.wait_state(lambda s: s["phase"] == "RUNNING", timeout=120)
        ckpt = tmp_path / "state" / "checkpoints"
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".") and p.name.endswith(".tmp") for p in ckpt.glob("*")):
            assert time.monotonic() < deadline, "no checkpoint write in flight"
            time.sleep(0.05)
        watch.proc.send_signal(signal.SIGTERM)
        assert watch.exit_code(180) == exits.PREEMPTED, watch.log_text()[-4000:]
        beat = heartbeat(tmp_path)
        assert beat["activity"] == "stopped" and beat["last_checkpoint_step"] == beat["step"] >= 4, beat
        assert not any(p.name.endswith(".tmp") for p in ckpt.glob("*"))  # the write in flight committed
        assert group.status() == 1  # torchrun's 1 for its rank's 75: nobody killed it
    finally:
        watch.kill()
        group.kill()
