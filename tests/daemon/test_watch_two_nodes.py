"""The watcher on a two-node cluster (tests/cluster_harness.py: two network namespaces, state on one
shared directory, torchrun --nnodes 2 on each as SkyPilot's run: starts it): on the head node it
bills both nodes in one ledger, and its budget cap stops every rank of both nodes at one step."""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from cluster_harness import cluster  # noqa: F401 - the fixture
from conftest import write_config
from test_watch import Watch, heartbeat, wait_for_step

from daemon.common import exits

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def write_pid_file(proc, path: Path) -> threading.Thread:
    """What the run script does for the watcher: torchrun's pid, then 'PID STATUS' once it ends
    (`ip netns exec` execs torchrun, so the Popen's pid is torchrun's own)."""
    def write(text: str) -> None:
        path.with_suffix(".tmp").write_text(text)
        path.with_suffix(".tmp").replace(path)

    write(f"{proc.pid}\n")
    waiter = threading.Thread(target=lambda: write(f"{proc.pid} {proc.wait()}\n"), daemon=True)
    waiter.start()
    return waiter


def test_two_nodes_cluster_watcher_bills_both_and_its_cap_stops_every_rank_at_one_step(tmp_path, cluster):
    cfg = write_config(tmp_path, {"train": {"device": "cpu", "cpu_threads": 1, "epochs": 400},
                                  "supervisor": {"stop_timeout": "120s"},
                                  "budget": {"max_usd": 8.0, "hourly_rate_usd": 1800.0, "check_every": "500ms"}})
    failure = tmp_path / "failure.json"
    nodes = cluster.torchrun(["--config", str(cfg), "--failure-file", str(failure), "--log-format", "json"],
                             logs=tmp_path)
    pid_file = tmp_path / "group.pid"
    write_pid_file(nodes[0].proc, pid_file)
    wait_for_step(tmp_path, 2, timeout=300)
    watch = Watch(cfg, SimpleNamespace(pid_file=pid_file, failure=failure), nodes=cluster.size)
    try:
        assert watch.exit_code(timeout=300) == exits.OK, watch.log_text()[-4000:]
        codes = cluster.wait(nodes, timeout=120)
    finally:
        watch.kill()
    outputs = "\n".join(f"--- node {n.node.rank} ({cluster.mode}):\n{n.output()[-3000:]}" for n in nodes)
    state = watch.state()
    assert state["shutdown"]["reason"] == "budget cap reached" and state["phase"] == "HALTED", state["shutdown"]
    cost = state["cost"]
    assert cost["nodes"] == 2 and cost["rate_usd_per_h"] == 2 * cost["node_rate_usd_per_h"] == 3600.0, cost
    beat = heartbeat(tmp_path)
    assert beat["activity"] == "stopped" and beat["last_checkpoint_step"] == beat["step"] > 2, beat
    assert json.loads(failure.read_text())["exit"] == exits.PREEMPTED  # rank 0, on the head
    # Each node's torchrun saw its rank exit 75 (checkpointed on request), none killed or crashed.
    assert codes == [1, 1], outputs
    for n in nodes:
        assert re.search(r"exitcode\s*:\s*75\b", n.output()), outputs
