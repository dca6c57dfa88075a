"""Rank 0 reads the cluster watcher's stop request at step boundaries (trainer/worker/stop.py), as
if a signal had come, but only one that names its own group on this boot; the other ranks never
read it (they agree with rank 0 through the all-reduce: test_watch.py, test_watch_two_nodes.py).
StopRequest installs signal handlers, so each case runs in a process of its own."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from daemon.common import stopfile

PROBE = """
import os, sys
from pathlib import Path
from daemon.common import stopfile
from trainer.worker.stop import StopRequest
stop = StopRequest()
stop.watch(Path(sys.argv[1]))
group = {"self": os.getpid(), "parent": os.getppid()}[sys.argv[2]]
stopfile.request(stopfile.path(Path(sys.argv[1])), group, "budget cap reached", "now") if sys.argv[3] == "1" else None
print(stop.check())
"""


def probe(tmp_path, leader: str, write: bool, env: dict | None = None) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path), leader, "1" if write else "0"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_cluster_stop_request_for_this_worker_stops_it(tmp_path):
    assert probe(tmp_path, "self", True) == "stop requested: budget cap reached"


def test_cluster_stop_request_for_torchrun_stops_its_rank_0(tmp_path):
    import os

    env = {**os.environ, "TORCHELASTIC_RUN_ID": "x", "RANK": "0"}  # torchrun, our parent, leads the group
    assert probe(tmp_path, "parent", True, env) == "stop requested: budget cap reached"
    assert probe(tmp_path, "self", True, env) == "None"  # a request for a lone worker is not torchrun's


@pytest.mark.parametrize("rank", ["1", "3"])
def test_cluster_stop_request_is_rank_0s_to_read(tmp_path, rank):
    import os

    env = {**os.environ, "TORCHELASTIC_RUN_ID": "x", "RANK": rank}
    assert probe(tmp_path, "parent", True, env) == "None"


def test_cluster_stale_or_garbage_stop_request_stops_nothing(tmp_path):
    f = stopfile.path(tmp_path)
    f.write_text(json.dumps({"group_pid": 999999, "boot_id": stopfile.boot_id(), "reason": "an earlier job"}))
    assert probe(tmp_path, "self", False) == "None"
    f.write_text("{garbage")
    assert probe(tmp_path, "self", False) == "None"
