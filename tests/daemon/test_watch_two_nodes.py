"""The watcher on a real two-node cluster (tests/cluster_harness.py: two network namespaces joined by
a veth pair, state on one shared directory): `amapiano-train watch` on the head node bills both nodes,
and its budget cap stops both nodes' ranks at one committed step, then ends the job."""
from __future__ import annotations

import json

import pytest
from cluster_harness import Cluster, cluster  # noqa: F401 - cluster: the fixture
from conftest import AMAPIANO_TRAIN, write_config
from test_watch import CPU, RUN_SCRIPT, heartbeat, wait_for_step

from daemon.common import checkpoints as layout
from daemon.common import exits

pytestmark = [pytest.mark.slow, pytest.mark.timeout(700)]  # its waits: 240 + 240 + 120 s at most


def test_two_nodes_watched_from_the_head_bill_both_and_the_budget_cap_stops_both_at_one_step(tmp_path, cluster):
    cfg = write_config(tmp_path, CPU, {"train": {"nproc_per_node": 1, "strategy": "fsdp"}},
                       {"budget": {"max_usd": 8.0, "hourly_rate_usd": 1800.0, "check_every": "500ms"}})
    pid_file, failure = tmp_path / "group.pid", tmp_path / "failure.json"
    args = ["--config", str(cfg), "--failure-file", str(failure), "--log-format", "json"]
    port = cluster.port()
    # As the task's run: does: on the head, torchrun behind the script that writes its pid file.
    head = cluster.start(cluster.head, ["bash", "-c", RUN_SCRIPT, "run", *cluster.torchrun_argv(cluster.head, args, port)],
                         tmp_path / "node0.log", {"PIDFILE": str(pid_file)})
    other = cluster.start(cluster.nodes[1], cluster.torchrun_argv(cluster.nodes[1], args, port), tmp_path / "node1.log")
    wait_for_step(tmp_path, 2, timeout=240)
    watcher = cluster.start(cluster.head, [*AMAPIANO_TRAIN, "watch", "--config", str(cfg), "--group-pid-file",
                                           str(pid_file), "--failure-file", str(failure), "--log-format", "json"],
                            tmp_path / "watcher.log")
    assert Cluster.wait([watcher], timeout=240) == [exits.OK], watcher.output()[-4000:]
    # Both nodes' torchruns end by themselves: their ranks left at the agreed step (75), nobody killed them.
    assert Cluster.wait([head, other], timeout=120) == [0, 1], other.output()[-3000:]
    assert pid_file.read_text().split()[1] == "1" and "exitcode  : 75" in other.output(), other.output()[-3000:]

    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["phase"] == "HALTED" and state["shutdown"]["reason"] == "budget cap reached", state["shutdown"]
    cost = state["cost"]
    assert (cost["nodes"], cost["node_rate_usd_per_h"], cost["rate_usd_per_h"]) == (2, 1800.0, 3600.0), cost
    assert cost["compute_usd"] >= 8.0 and state["cluster"]["job_end"]["exit"] == exits.OK
    beat = heartbeat(tmp_path)
    assert beat["activity"] == "stopped" and beat["last_checkpoint_step"] == beat["step"], beat
    # One step for both nodes: the checkpoint committed at the stop holds both ranks' shards of that step.
    newest = layout.newest(tmp_path / "state" / "checkpoints")
    assert newest.step == beat["step"] and newest.meta["sharded"] == 2 and layout.verify(newest) is None
    assert json.loads(failure.read_text())["exit"] == exits.PREEMPTED
