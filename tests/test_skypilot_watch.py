"""The task's run: section on a cluster's head node, for real: the watcher it starts beside
torchrun enforces the person's budget cap, and the job's exit status is the one SkyPilot must see
(scripts/skypilot/amapiano-train.yaml; the watcher's rules one by one: tests/daemon/test_watch.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import yaml
from conftest import REPO, write_config
from test_skypilot import TASK

from daemon.common import exits
from daemon.common.atomic import read_json


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_cluster_run_script_starts_the_watcher_whose_budget_cap_ends_the_job_not_to_be_retried(tmp_path):
    run = yaml.safe_load(TASK.read_text())["run"]
    assert run.count("--master_port=29500") == 1
    run = run.replace("--master_port=29500", f"--master_port={free_port()}")  # tests run side by side
    cfg = write_config(tmp_path, {"train": {"device": "cpu", "cpu_threads": 1, "epochs": 400},
                                  "supervisor": {"stop_timeout": "90s"},
                                  "budget": {"max_usd": 25.0, "hourly_rate_usd": 1800.0, "check_every": "500ms"}})
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SKYPILOT_", "NOTIFY_", "WATCHDOG_"))},
           "CONFIG": str(cfg), "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "SKYPILOT_NUM_NODES": "1",
           "SKYPILOT_NUM_GPUS_PER_NODE": "1", "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NODE_IPS": "127.0.0.1"}
    # $25 at $1,800/h: 50 s of the ledger, time for torchrun to start and train a few steps.
    out = subprocess.run(["bash", "-c", run], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert out.returncode == exits.OK, out.stdout[-3000:] + out.stderr[-3000:]
    assert state["phase"] == "HALTED" and state["shutdown"]["reason"] == "budget cap reached", state["shutdown"]
    beat = json.loads((tmp_path / "state" / "heartbeat.json").read_text())
    assert beat["activity"] == "stopped" and beat["last_checkpoint_step"] == beat["step"] > 0, beat
    pid, status = (tmp_path / "amapiano-train-group.pid").read_text().split()
    assert status == "1" and state["cluster"]["job_end"]["exit"] == exits.OK  # torchrun's 1; the job's 0


@pytest.mark.slow
def test_cluster_run_script_stops_the_group_when_its_watcher_dies(tmp_path):
    """A watcher SIGKILLed (the OOM killer) left the group training with no budget cap in force
    until the job ended by itself: the head now stops the group at a checkpoint and ends the job
    75, which SkyPilot recovers with a new watcher."""
    run = yaml.safe_load(TASK.read_text())["run"].replace("--master_port=29500", f"--master_port={free_port()}")
    cfg = write_config(tmp_path, {"train": {"device": "cpu", "cpu_threads": 1, "epochs": 400},
                                  "supervisor": {"stop_timeout": "90s"}})
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SKYPILOT_", "NOTIFY_", "WATCHDOG_"))},
           "CONFIG": str(cfg), "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "SKYPILOT_NUM_NODES": "1",
           "SKYPILOT_NUM_GPUS_PER_NODE": "1", "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NODE_IPS": "127.0.0.1"}
    job = subprocess.Popen(["bash", "-c", run], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    beat_file = tmp_path / "state" / "heartbeat.json"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # the group trains, watched
            beat = read_json(beat_file) or {}
            if (beat.get("step") or 0) >= 3:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the group never trained")
        watcher = subprocess.run(["pgrep", "-f", f"amapiano-train watch --config {cfg}"], capture_output=True, text=True)
        [pid] = watcher.stdout.split()
        os.kill(int(pid), signal.SIGKILL)
        out, err = job.communicate(timeout=240)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == exits.PREEMPTED, err[-3000:]
    assert "the watcher ended (137) while the group trains; stopping the group" in err
    beat = read_json(beat_file)
    assert beat["activity"] == "stopped" and beat["last_checkpoint_step"] == beat["step"] > 0, beat
