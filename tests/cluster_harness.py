"""Two "nodes" on this one machine, for the multi-node tests: what SkyPilot gives a task.

Each node is a network namespace of its own, the namespaces joined by a veth pair on an address
range of the test's own (10.77.X.0/24, X random); every node sees the same filesystem (state on a
shared directory, as the bucket mount is on a cluster) and runs what SkyPilot's `run:` runs, with
SkyPilot's environment (SKYPILOT_NUM_NODES, SKYPILOT_NODE_RANK, SKYPILOT_NODE_IPS, ...): torchrun
with `--nnodes N --node_rank R --master_addr HEAD`, gloo bound to the node's veth.

Where namespaces cannot be made (not root, no `ip`, a kernel or container that refuses them, or
AMAPIANO_TEST_CLUSTER=loopback), every node runs on 127.0.0.1 instead and the harness says so, once
per cluster, as a warning (pytest's summary shows it) and on stderr: the same tests still run.

The namespaces (and with them the veth pair) and every process started here are removed when the
cluster closes, however the test ended; namespaces left by a test process that was itself killed
are removed by the next cluster made on this machine.

    with Cluster() as cluster:
        nodes = cluster.torchrun(["--config", str(cfg)], logs=tmp_path)
        assert cluster.wait(nodes, timeout=300) == [0, 0]
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PREFIX = "amapiano-test-"  # namespace names: PREFIX + owner pid + "-" + token + "-n" + node rank


@dataclass
class Node:
    """One machine of the cluster: its rank, address, and the namespace it runs in (None: loopback)."""

    rank: int
    address: str
    ifname: str
    netns: str | None = None

    def wrap(self, argv: list[str]) -> list[str]:
        """argv as run on this node (inside its namespace)."""
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)


@dataclass
class Launched:
    """A process started on a node (`ip netns exec` execs it, so pid is the command's own)."""

    node: Node
    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale() -> None:
    """Namespaces of test processes that died without closing their cluster (SIGKILLed pytest)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    for line in listed.splitlines():
        name = line.split()[0] if line.strip() else ""
        owner = name[len(PREFIX):].split("-")[0] if name.startswith(PREFIX) else ""
        if owner.isdigit() and not _pid_alive(int(owner)):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Cluster:
    """Two nodes: namespaces joined by a veth pair, or both on 127.0.0.1 where that is impossible."""

    def __init__(self) -> None:
        self.size = nodes = 2
        self.launched: list[Launched] = []
        self._namespaces: list[str] = []
        self._veth: str | None = None
        self.loopback_reason = self._why_loopback()
        if self.loopback_reason is None:
            try:
                self.nodes = self._make_namespaces()
                self.mode = "netns"
            except (subprocess.SubprocessError, OSError) as e:
                self._remove_namespaces()
                self.loopback_reason = f"making the namespaces failed: {getattr(e, 'stderr', '') or e}".strip()
        if self.loopback_reason is not None:
            self.mode = "loopback"
            self.nodes = [Node(r, "127.0.0.1", "lo") for r in range(nodes)]
            line = (f"cluster_harness: {nodes} nodes on 127.0.0.1, not in network namespaces "
                    f"({self.loopback_reason})")
            print(line, file=sys.stderr)
            warnings.warn(line, stacklevel=2)

    # -- the network ---------------------------------------------------------------------
    @staticmethod
    def _why_loopback() -> str | None:
        if os.environ.get("AMAPIANO_TEST_CLUSTER") == "loopback":
            return "AMAPIANO_TEST_CLUSTER=loopback"
        if os.geteuid() != 0:
            return "not root"
        if shutil.which("ip") is None:
            return "no `ip` (iproute2)"
        return None

    def _make_namespaces(self) -> list[Node]:
        """A namespace a node, the two joined by one veth pair: head 10.77.X.1, the other 10.77.X.2."""
        _sweep_stale()
        token = secrets.token_hex(3)
        subnet = f"10.77.{secrets.randbelow(254) + 1}"
        nodes = [Node(r, f"{subnet}.{r + 1}", f"am{token}n{r}", f"{PREFIX}{os.getpid()}-{token}-n{r}")
                 for r in range(2)]
        for node in nodes:
            _run("ip", "netns", "add", node.netns)
            self._namespaces.append(node.netns)
            _run("ip", "-n", node.netns, "link", "set", "lo", "up")
        self._veth = nodes[0].ifname  # removed by hand only if it never reached its namespace
        _run("ip", "link", "add", nodes[0].ifname, "type", "veth", "peer", "name", nodes[1].ifname)
        for node in nodes:
            _run("ip", "link", "set", node.ifname, "netns", node.netns)
            _run("ip", "-n", node.netns, "addr", "add", f"{node.address}/24", "dev", node.ifname)
            _run("ip", "-n", node.netns, "link", "set", node.ifname, "up")
        return nodes

    def _remove_namespaces(self) -> None:
        for name in self._namespaces:  # a namespace takes its end of each veth with it
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self._namespaces = []
        if self._veth:
            subprocess.run(["ip", "link", "del", self._veth], capture_output=True, timeout=30)
            self._veth = None

    @property
    def head(self) -> Node:
        return self.nodes[0]

    def port(self) -> int:
        """A rendezvous port for one launch (a fresh one each: the last one may linger in TIME_WAIT)."""
        if self.mode == "loopback":
            return _free_port()
        return 20000 + secrets.randbelow(30000)  # the head's namespace has nothing else listening

    # -- processes -----------------------------------------------------------------------
    def env(self, node: Node, nproc_per_node: int = 1) -> dict[str, str]:
        """What a process on this node sees: SkyPilot's variables, gloo on the node's interface,
        and only what Python needs from this process's environment (no secret passes)."""
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV")}
        return {**keep, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                "GLOO_SOCKET_IFNAME": node.ifname, "SKYPILOT_NUM_NODES": str(self.size),
                "SKYPILOT_NODE_RANK": str(node.rank), "SKYPILOT_NUM_GPUS_PER_NODE": str(nproc_per_node),
                "SKYPILOT_NODE_IPS": "\n".join(n.address for n in self.nodes)}

    def start(self, node: Node, argv: list[str], log: Path, env: dict[str, str] | None = None,
              nproc_per_node: int = 1) -> Launched:
        """argv on `node`, its stdout and stderr into `log`, in a session of its own (killed at close)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(node.wrap(argv), stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                    env={**self.env(node, nproc_per_node), **(env or {})}, start_new_session=True)
        launched = Launched(node, proc, log)
        self.launched.append(launched)
        return launched

    def torchrun_argv(self, node: Node, worker_args: list[str], port: int, nproc_per_node: int = 1) -> list[str]:
        """What SkyPilot's `run:` runs on each node (scripts/skypilot/amapiano-train.yaml)."""
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(self.size),
                "--nproc_per_node", str(nproc_per_node), "--node_rank", str(node.rank),
                "--master_addr", self.head.address, "--master_port", str(port), "--max_restarts", "0",
                "--monitor_interval", "0.2", "-m", "trainer", *worker_args]

    def torchrun(self, worker_args: list[str], logs: Path, nproc_per_node: int = 1,
                 env: dict[str, str] | None = None) -> list[Launched]:
        """The trainer on every node, as one group; node R's output in logs/node{R}-{n}.log."""
        port, n = self.port(), len(self.launched) // self.size
        return [self.start(node, self.torchrun_argv(node, worker_args, port, nproc_per_node),
                           logs / f"node{node.rank}-{n}.log", env, nproc_per_node) for node in self.nodes]

    @staticmethod
    def wait(launched: list[Launched], timeout: float) -> list[int]:
        """Every process's exit status, waiting up to timeout for all of them together."""
        deadline = time.monotonic() + timeout
        codes = []
        for one in launched:
            try:
                codes.append(one.proc.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                tails = "\n".join(f"--- node {x.node.rank}:\n{x.output()[-3000:]}" for x in launched)
                raise AssertionError(f"node {one.node.rank} still running after {timeout:g}s\n{tails}") from None
        return codes

    def close(self) -> None:
        for one in self.launched:
            if one.proc.poll() is None:
                try:
                    os.killpg(one.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                one.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        self._remove_namespaces()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def cluster():
    """Two nodes for one test, removed at its end whatever happened."""
    made = Cluster()
    try:
        yield made
    finally:
        made.close()
