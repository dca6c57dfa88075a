"""Two nodes, for real on one machine (tests/cluster_harness.py: two network namespaces joined by a
veth pair, state on one shared directory), each running torchrun --nnodes 2 --nproc_per_node 1 as
SkyPilot's `run:` does: the same run as one node of the same width (torchrun --standalone
--nproc_per_node 2), DDP and FSDP; and a rank SIGKILLed on node 1 ends the whole group, after which
both nodes relaunched (SkyPilot's job recovery) resume from the newest checkpoint with the curve of
an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import os
import random
import signal
import time
from pathlib import Path

import pytest
from cluster_harness import Cluster, cluster  # noqa: F401 - cluster: the fixture
from conftest import write_config
from test_distributed import BASE, STEPS, assert_same, curve, run_worker, width
from test_exact_resume import heartbeat, losses

from daemon.common import checkpoints as layout
from daemon.worker import children

# A cluster run is ~20 s of CPU a node; the bounds below are for a 2-core machine shared with others.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ARGS = ["--log-format", "json"]


def worker_args(root: Path, config: Path) -> list[str]:
    return ["--config", str(config), "--failure-file", str(root / "failure.json"), *ARGS]


def run_two_nodes(cluster: Cluster, root: Path, config: Path) -> None:
    nodes = cluster.torchrun(worker_args(root, config), logs=root)
    codes = cluster.wait(nodes, timeout=300)
    assert codes == [0, 0], "\n".join(f"--- node {n.node.rank}:\n{n.output()[-3000:]}" for n in nodes)


def weights_digest(state_dir: Path) -> str:
    """SHA-256 of the newest checkpoint's model tensors, name by name (either strategy, loaded whole)."""
    from trainer.worker import checkpoint

    payload = checkpoint.load(layout.newest(state_dir / "checkpoints"))
    h = hashlib.sha256()
    for name, tensor in sorted(payload["model"].items()):
        h.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def one_node(tmp_path_factory):
    """The reference per strategy, made once: one node, two processes (torchrun --standalone)."""
    made: dict[str, Path] = {}

    def reference(strategy: str) -> Path:
        if strategy not in made:
            root = tmp_path_factory.mktemp(f"one-node-{strategy}")
            run_worker(write_config(root, BASE, width(2, strategy)), 2)
            made[strategy] = root
        return made[strategy]
    return reference


def assert_same_run(got: Path, want: Path) -> None:
    """What a person compares: the loss curve, the validation curve, the final weights."""
    assert_same(curve(got), curve(want), 1e-6)
    have, expect = losses(got / "logs" / "tensorboard" / "train"), losses(want / "logs" / "tensorboard" / "train")
    assert [v for _, v in have["val/loss"]] == pytest.approx([v for _, v in expect["val/loss"]], abs=1e-6)
    assert weights_digest(got / "state") == weights_digest(want / "state")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_nodes_train_as_one_node_of_the_same_width(tmp_path, cluster, one_node, strategy):
    run_two_nodes(cluster, tmp_path, write_config(tmp_path, BASE, width(1, strategy)))
    assert heartbeat(tmp_path / "state")["step"] == STEPS
    if strategy == "fsdp":  # both nodes wrote their shards into the one shared directory
        newest = layout.newest(tmp_path / "state" / "checkpoints")
        assert newest.sharded and newest.meta["sharded"] == 2 and layout.verify(newest) is None
    assert_same_run(tmp_path, one_node(strategy))


def net_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_nodes_a_rank_killed_on_node_1_ends_the_group_and_the_relaunch_resumes_the_curve(
        tmp_path, cluster, one_node, strategy):
    seed = random.randrange(1 << 30)
    kill_at = random.Random(seed).randrange(6, STEPS - 6)  # past the first checkpoint (4), before the end
    config = write_config(tmp_path, BASE, width(1, strategy))
    nodes = cluster.torchrun(worker_args(tmp_path, config), logs=tmp_path)
    deadline = time.monotonic() + 240
    while (heartbeat(tmp_path / "state").get("step") or 0) < kill_at:
        assert all(n.proc.poll() is None for n in nodes), f"a node ended before the kill (seed {seed})"
        assert time.monotonic() < deadline, f"step {kill_at} not reached (seed {seed})"
        time.sleep(0.02)
    [victim], [head_rank] = children(nodes[1].proc.pid), children(nodes[0].proc.pid)
    if cluster.mode == "netns":  # the ranks really are on two networks, neither this process's
        assert len({net_namespace(victim), net_namespace(head_rank), net_namespace(os.getpid())}) == 3
    os.kill(victim, signal.SIGKILL)
    codes = cluster.wait(nodes, timeout=180)  # the head's rank finds its peer gone; nobody waits forever
    assert all(code != 0 for code in codes), codes
    killed_at = heartbeat(tmp_path / "state")["step"]
    assert killed_at < STEPS, f"the group went on after the kill (seed {seed})"

    run_two_nodes(cluster, tmp_path, config)  # SkyPilot's recovery: the same run on both nodes again
    beat = heartbeat(tmp_path / "state")
    assert beat["step"] == STEPS and 4 <= (beat.get("resumed_from_step") or 0) <= killed_at, (beat, seed)
    assert_same_run(tmp_path, one_node(strategy))
