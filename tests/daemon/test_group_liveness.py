"""The liveness rule on a group of ranks (torchrun, nproc_per_node 2, on one instance): rank 0
writes the heartbeat with its own pid, not torchrun's, and a training group must still be seen as
training. It was seen as "loading" since its start, and killed as hung at every loading_timeout
(30 min by default) while it trained."""
from __future__ import annotations

import json
import re
import time

import pytest
from conftest import write_config

pytestmark = pytest.mark.slow


def test_a_training_group_outlives_loading_timeout_and_a_frozen_one_does_not(tmp_path, daemons):
    import os
    import signal

    from daemon.worker import children

    cfg = write_config(tmp_path, {"train": {"device": "cpu", "cpu_threads": 1, "epochs": 400, "nproc_per_node": 2},
                                  "supervisor": {"loading_timeout": "30s", "heartbeat_timeout": "5s",
                                                 "checkpoint_timeout": "5s", "validation_timeout": "5s"}})
    d = daemons(cfg)
    first = d.wait_state(lambda s: (s["trainer"].get("step") or 0) >= 2, timeout=240)["trainer"]["pid"]
    time.sleep(40)  # past loading_timeout since the group started, while it trains
    state = d.state()
    assert state["trainer"]["pid"] == first and state["trainer"]["restarts"] == 0, d.log_text()[-3000:]
    assert '"worker.hung"' not in d.log_text()
    beat = json.loads((tmp_path / "state" / "heartbeat.json").read_text())
    for rank in children(first):  # the hang the rule is for: rank 0 frozen, the heartbeat stops
        if rank == beat["pid"]:
            os.kill(rank, signal.SIGSTOP)
    d.wait_state(lambda s: s["trainer"]["restarts"] >= 1, timeout=120)
    assert re.search(r"hung: no heartbeat for \d+ s while (training|checkpointing|validating)", d.log_text())
