"""`amapiano-train watch` on a SkyPilot-like layout: a training group the watcher did not start
(a real torchrun, started by the test as SkyPilot's run script starts it, its pid in a pid file),
state on a shared directory, SKYPILOT_* in the environment. The budget cap, the idle rule, the
milestone and the liveness rule each end the group and the job with the status SkyPilot acts on;
the ledger bills every node.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import AMAPIANO_TRAIN, Daemon, write_config

from daemon.common import exits, stopfile
from daemon.ports.group import alive
from daemon.rules import job_end
from daemon.worker import children, group_command

CPU = {"train": {"device": "cpu", "cpu_threads": 1, "epochs": 400},
       "supervisor": {"stop_timeout": "90s"}}  # a stop within it; ranks exit slowly on a busy 2-core machine
# What the task's run: section does around torchrun (scripts/skypilot/amapiano-train.yaml).
RUN_SCRIPT = ('"$@" & G=$!; echo "$G" > "$PIDFILE.tmp"; mv "$PIDFILE.tmp" "$PIDFILE"; S=0; wait "$G" || S=$?; '
              'echo "$G $S" > "$PIDFILE.tmp"; mv "$PIDFILE.tmp" "$PIDFILE"')


class Group:
    """SkyPilot's side: torchrun started by a shell that writes its pid, then its status."""

    def __init__(self, config: Path, argv: list[str] | None = None, nproc: int = 1):
        self.pid_file = config.parent / "group.pid"
        self.failure = config.parent / "failure.json"
        argv = argv or group_command(nproc, ["--config", str(config), "--failure-file", str(self.failure),
                                             "--log-format", "json"])
        self.log = open(config.parent / "group.log", "w")
        self.proc = subprocess.Popen(["bash", "-c", RUN_SCRIPT, "run", *argv], env={**os.environ,
                                     "PIDFILE": str(self.pid_file), "HF_HUB_OFFLINE": "1"},
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def torchrun(self) -> int:
        deadline = time.monotonic() + 30
        while not self.pid_file.exists():
            assert time.monotonic() < deadline, "the run script never wrote the pid file"
            time.sleep(0.05)
        return int(self.pid_file.read_text().split()[0])

    def ranks(self) -> list[int]:
        return children(self.torchrun())

    def status(self, timeout: float = 120) -> int:
        """torchrun's exit status as the run script saw it."""
        self.proc.wait(timeout)
        return int(self.pid_file.read_text().split()[1])

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in self.ranks() if self.pid_file.exists() else []:  # SIGSTOPped ranks die too
            os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()


class Watch(Daemon):
    """`amapiano-train watch` as the run script starts it on the head node."""

    def __init__(self, config: Path, group: Group, nodes: int = 2):  # noqa: super().__init__ starts `supervise`
        self.config, self.state_dir = config, config.parent / "state"
        self.log_path = config.parent / "watcher.log"
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env.update(SKYPILOT_NUM_NODES=str(nodes), SKYPILOT_NODE_RANK="0", SKYPILOT_NUM_GPUS_PER_NODE="1",
                   SKYPILOT_NODE_IPS="127.0.0.1", HF_HUB_OFFLINE="1")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([*AMAPIANO_TRAIN, "watch", "--config", str(config), "--group-pid-file",
                                      str(group.pid_file), "--failure-file", str(group.failure), "--log-format",
                                      "json"], stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def exit_code(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the watcher never ended the job:\n{self.log_text()[-4000:]}") from None


@pytest.fixture
def cluster():
    started: list = []

    def start(config: Path, after_step: int = 0, **kw) -> tuple[Group, Watch]:
        group = Group(config, **kw)
        started.append(group)
        if after_step:  # a watcher may come up after the group: it adopts it where it stands
            wait_for_step(config.parent, after_step)
        watch = Watch(config, group)
        started.append(watch)
        return group, watch

    yield start
    for thing in reversed(started):
        thing.kill()


def heartbeat(root: Path) -> dict:
    try:
        return json.loads((root / "state" / "heartbeat.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_for_step(root: Path, step: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (heartbeat(root).get("step") or 0) < step:
        assert time.monotonic() < deadline, f"never reached step {step}: {heartbeat(root)}"
        time.sleep(0.1)
    return heartbeat(root)


def assert_checkpointed_and_stopped(root: Path, group: Group, ranks: int = 1) -> None:
    """Every rank left at one step boundary, which rank 0 committed: the group's agreed stop."""
    beat = heartbeat(root)
    assert beat["activity"] == "stopped" and beat["last_checkpoint_step"] == beat["step"], beat
    if ranks > 1:
        assert json.loads(group.failure.read_text())["exit"] == exits.PREEMPTED  # rank 0's own status: 75
    assert group.status() == 1  # torchrun's own 1 when its ranks exit 75: they ended, nobody killed them


@pytest.mark.slow
def test_cluster_budget_cap_stops_both_ranks_at_one_step_bills_every_node_and_ends_the_job(tmp_path, cluster):
    cfg = write_config(tmp_path, CPU, {"train": {"nproc_per_node": 2}},
                       {"budget": {"max_usd": 8.0, "hourly_rate_usd": 1800.0, "check_every": "500ms",
                                   "alert_fractions": [0.25]}})
    group, watch = cluster(cfg, nproc=2, after_step=2)
    began = time.monotonic()
    assert watch.exit_code() == exits.OK, watch.log_text()[-4000:]  # not retried by job_recovery
    lasted = time.monotonic() - began
    state = watch.state()
    assert state["phase"] == "HALTED" and state["shutdown"]["reason"] == "budget cap reached", state["shutdown"]
    assert "the job ends" in state["shutdown"]["result"]
    assert_checkpointed_and_stopped(tmp_path, group, ranks=2)
    cost = state["cost"]
    assert cost["nodes"] == 2 and cost["node_rate_usd_per_h"] == 1800.0 and cost["rate_usd_per_h"] == 3600.0
    assert cost["rate_source"] == "2 nodes x config"
    # $1/s for the two nodes: the cap's $8, and never more than the watcher's life at that rate.
    assert 8.0 <= cost["compute_usd"] <= lasted * 1.0 + 0.5, (cost["compute_usd"], lasted)
    subjects = [a["subject"] for a in state["alerts"]]
    assert any("25 % of the budget" in s for s in subjects) and any("budget cap reached" in s for s in subjects)
    assert state["cluster"]["nodes"] == 2 and state["cluster"]["job_end"]["exit"] == exits.OK
    assert stopfile.read(stopfile.path(tmp_path / "state"))["group_pid"] == group.torchrun()


def test_cluster_watch_outside_skypilot_is_one_line_and_78(tmp_path):
    cfg = write_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYPILOT_")}
    for nodes in (None, "0", "two", "99999"):
        run_env = env if nodes is None else {**env, "SKYPILOT_NUM_NODES": nodes}
        out = subprocess.run([*AMAPIANO_TRAIN, "watch", "--config", str(cfg), "--group-pid-file",
                              str(tmp_path / "pid")], capture_output=True, text=True, env=run_env, timeout=60)
        assert out.returncode == exits.CONFIG and "SKYPILOT_NUM_NODES" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


@pytest.mark.slow
def test_cluster_liveness_rule_ends_a_stalled_group_for_skypilot_to_recover(tmp_path, cluster):
    """A rank frozen (SIGSTOP) holds every other rank in its collective: no heartbeat progress.
    The watcher kills this node's ranks and torchrun and ends the job with the status SkyPilot
    recovers (75, recover_on_exit_codes)."""
    cfg = write_config(tmp_path, CPU, {"supervisor": {"heartbeat_timeout": "4s", "loading_timeout": "10m",
                                                      "checkpoint_timeout": "4s", "validation_timeout": "4s"}})
    group, watch = cluster(cfg, after_step=2)
    watch.wait_state(lambda s: s["phase"] == "RUNNING" and (s["trainer"].get("step") or 0) >= 2)
    frozen = group.ranks()
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    assert watch.exit_code() == job_end.RECOVER, watch.log_text()[-4000:]
    state = watch.state()
    assert "hung: no heartbeat" in state["trainer"]["last_exit_reason"], state["trainer"]
    assert state["cluster"]["job_end"]["exit"] == job_end.RECOVER and "stalled" in state["cluster"]["job_end"]["reason"]
    assert group.status() == 128 + signal.SIGKILL  # torchrun killed, so the rendezvous breaks on every node
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in frozen):  # gone (a zombie at most, for its new parent to reap)
        assert time.monotonic() < deadline, "a frozen rank outlived the job"
        time.sleep(0.1)


@pytest.mark.slow
def test_cluster_idle_rule_ends_a_job_whose_second_node_never_joins(tmp_path, cluster):
    """torchrun waits for a node that never comes: nothing trains on a cluster that bills. The idle
    rule warns, asks the group to stop, ends it past stop_timeout, and ends the job (not retried)."""
    cfg = write_config(tmp_path, CPU, {"supervisor": {"loading_timeout": "10m", "stop_timeout": "5s"},
                                       "idle": {"timeout": "6s", "warn_before": "3s", "check_every": "500ms"}})
    port = free_port()
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", "0", "--nproc-per-node",
            "1", "--master-addr", "127.0.0.1", "--master-port", str(port), "--max-restarts", "0", "-m", "trainer",
            "--config", str(cfg)]
    group, watch = cluster(cfg, argv=argv)
    assert watch.exit_code() == exits.OK, watch.log_text()[-4000:]
    state = watch.state()
    assert state["shutdown"]["reason"].startswith("idle for"), state["shutdown"]
    subjects = [a["subject"] for a in state["alerts"]]
    assert any("idle shutdown in" in s for s in subjects) and any("ending the SkyPilot job now" in s for s in subjects)
    assert not any("stopping the instance" in s for s in subjects)  # the watcher stops no instance
    assert state["phase"] == "HALTED" and group.status() == 128 + signal.SIGKILL
    assert heartbeat(tmp_path) == {}  # it never trained: the idle rule, not a stop it answered


@pytest.mark.slow
def test_cluster_milestone_runs_beside_the_group_and_its_no_go_stops_it(tmp_path, cluster):
    cfg = write_config(tmp_path, CPU, {"milestone": {"at": "3s", "max_val_loss": 0.001, "samples": 6,
                                                      "sample_seconds": 0.3}})
    group, watch = cluster(cfg, after_step=2)
    assert watch.exit_code(timeout=300) == exits.OK, watch.log_text()[-4000:]
    state = watch.state()
    assert state["milestone"]["decision"] == "NO-GO" and state["phase"] == "HALTED", state["milestone"]
    assert state["shutdown"]["reason"] == "milestone NO-GO"
    assert (tmp_path / "state" / "reports" / "abort_report.json").is_file()
    evaluating = [e for _, e in watch.events() if e["event"] == "milestone.evaluating"]
    assert evaluating and evaluating[0]["pause_worker"] is False  # stopping the group would end the job
    assert_checkpointed_and_stopped(tmp_path, group)


@pytest.mark.slow
def test_cluster_sigterm_is_recorded_as_a_cancel_and_the_group_checkpoints(tmp_path, cluster):
    """`sky jobs cancel` (or the node going away) SIGTERMs the job: the group checkpoints and
    stops, state.json says why, and the status (75) has a lost node recovered."""
    cfg = write_config(tmp_path, CPU)
    group, watch = cluster(cfg, after_step=2)
    watch.wait_state(lambda s: s["phase"] == "RUNNING")
    watch.proc.send_signal(signal.SIGTERM)
    assert watch.exit_code() == job_end.RECOVER, watch.log_text()[-4000:]
    state = watch.state()
    assert "cancelled" in state["shutdown"]["reason"] and state["phase"] == "STOPPED", state["shutdown"]
    assert state["trainer"]["last_exit_reason"].startswith("preempted (exit=75)")  # a stop, not a crash
    assert_checkpointed_and_stopped(tmp_path, group)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_cluster_watcher_lost_mid_run_is_recorded_by_the_next_and_the_group_adopted_again(tmp_path, cluster):
    """The head node's watcher dies without a word (a preemption takes the node, an OOM kill): the
    next one, on the same shared state, says so in state.json and watches the group as it stands."""
    cfg = write_config(tmp_path, CPU)
    group, first = cluster(cfg, after_step=2)
    first.wait_state(lambda s: s["phase"] == "RUNNING")
    first.kill()  # SIGKILL: no stop, no last state.json
    second = Watch(cfg, group)
    try:
        state = second.wait_state(lambda s: (s.get("cluster") or {}).get("previous_job") and s["phase"] == "RUNNING")
        assert state["cluster"]["previous_job"]["phase"] == "RUNNING"
        assert "preemption" in state["cluster"]["previous_job"]["ended"]
        step = state["trainer"]["step"]
        second.wait_state(lambda s: (s["trainer"].get("step") or 0) > step)  # the same group, still training
        assert group.proc.poll() is None
    finally:
        second.kill()
