"""tests/cluster_harness.py itself: two nodes that reach each other only over their veth, with
SkyPilot's environment, nothing left behind by a failing test, and 127.0.0.1 (said, not skipped)
where namespaces cannot be made."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cluster_harness import PREFIX, Cluster

SERVER = """
import os, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((os.environ["SKYPILOT_NODE_IPS"].splitlines()[0], int(os.environ["PORT"]))); s.listen(1)
print("listening", flush=True)
c, _ = s.accept(); print("got", c.recv(100).decode(), flush=True)
"""
CLIENT = """
import os, socket, time
head = os.environ["SKYPILOT_NODE_IPS"].splitlines()[0]
for _ in range(200):
    try:
        c = socket.create_connection((head, int(os.environ["PORT"])), timeout=5); break
    except OSError:
        time.sleep(0.05)
c.sendall(("node %s of %s via %s" % (os.environ["SKYPILOT_NODE_RANK"], os.environ["SKYPILOT_NUM_NODES"],
                                     os.environ["GLOO_SOCKET_IFNAME"])).encode())
"""


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_two_nodes_reach_each_other_and_nothing_is_left_after_a_failing_test(tmp_path):
    with pytest.raises(RuntimeError, match="the test failed"), Cluster() as c:
        port = str(c.port())
        server = c.start(c.head, [sys.executable, "-c", SERVER], tmp_path / "head.log", {"PORT": port})
        client = c.start(c.nodes[1], [sys.executable, "-c", CLIENT], tmp_path / "node1.log", {"PORT": port})
        assert Cluster.wait([client, server], timeout=60) == [0, 0], server.output() + client.output()
        assert f"got node 1 of 2 via {c.nodes[1].ifname}" in server.output()
        if c.mode == "netns":
            assert c.head.address.startswith("10.77.") and c.nodes[1].address != c.head.address
            # A node is not this machine's network: our own loopback is not reachable from it.
            probe = c.start(c.nodes[1], [sys.executable, "-c", "import os; print(os.readlink('/proc/self/ns/net'))"],
                            tmp_path / "ns.log")
            Cluster.wait([probe], timeout=30)
            assert probe.output().strip() != os.readlink("/proc/self/ns/net")
        lingering = c.start(c.nodes[1], ["sleep", "600"], tmp_path / "sleep.log")
        made = list(c._namespaces)
        raise RuntimeError("the test failed")
    assert lingering.proc.poll() is not None, "a node's process outlived its cluster"
    assert not any(name in namespaces() for name in made)


def test_two_nodes_run_on_loopback_and_say_so_where_namespaces_cannot_be_made(tmp_path, monkeypatch):
    """An `ip` that refuses everything (a container without CAP_SYS_ADMIN): 127.0.0.1, a warning, and
    processes that still run with SkyPilot's environment."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ip").write_text("#!/bin/sh\necho 'mount --make-shared /run/netns failed: Operation not permitted' >&2\n"
                             "exit 1\n")
    (fake / "ip").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    with pytest.warns(UserWarning, match=r"2 nodes on 127\.0\.0\.1.*Operation not permitted"), Cluster() as c:
        assert c.mode == "loopback" and {n.address for n in c.nodes} == {"127.0.0.1"}
        port = str(c.port())
        server = c.start(c.head, [sys.executable, "-c", SERVER], tmp_path / "head.log", {"PORT": port})
        client = c.start(c.nodes[1], [sys.executable, "-c", CLIENT], tmp_path / "node1.log", {"PORT": port})
        assert Cluster.wait([client, server], timeout=60) == [0, 0], server.output() + client.output()
        assert "got node 1 of 2 via lo" in server.output()


def test_stale_namespaces_of_a_killed_test_process_are_removed(tmp_path):
    """A pytest SIGKILLed mid-test cannot close its cluster: the next cluster removes what it left."""
    if Cluster._why_loopback() is not None:
        pytest.skip(f"no namespaces here ({Cluster._why_loopback()}): nothing for a test to leave behind")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{PREFIX}{dead.pid}-000000-n0"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with Cluster() as c:
            assert c.mode == "netns"
            assert stale not in namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
