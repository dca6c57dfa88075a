"""Background checkpoints under pressure, with real worker processes (issue 18's hostile cases):
a save due at every step on a slow disk (at most one in flight, markers never out of order, the
newest marker always the newest step), and a SIGTERM during a background write followed by a
resume that is exact. The disk is slowed by the worker's test hook AMAPIANO_TEST_SLOW_SAVE_S."""
from __future__ import annotations

import re
import signal
import time

import pytest
from conftest import write_config
from test_async_checkpoint import assert_same_curve, events, start, wait_until, writing
from test_exact_resume import heartbeat

from daemon.common import checkpoints as layout

pytestmark = pytest.mark.slow  # one to three worker processes of ~10 s each
TEMP = re.compile(r"^\.(step_\d{8})\.pt\..*\.tmp$")


def test_a_save_due_at_every_step_keeps_one_in_flight_and_the_markers_in_order(tmp_path):
    state = tmp_path / "state"
    ckpts = state / "checkpoints"
    worker = start(write_config(tmp_path, {"train": {"checkpoint_every": 1}}), slow="0.25")
    newest, most_in_flight, went_back = 0, 0, []
    while worker.poll() is None:
        if ckpts.exists():
            names = [p.name for p in ckpts.iterdir()]
            in_flight = {m.group(1) for n in names if (m := TEMP.match(n))}
            most_in_flight = max(most_in_flight, len(in_flight))
            steps = [layout.step_of(n) for n in names if n.endswith(layout.MARKER_SUFFIX) and n.startswith("step_")]
            top = max((s for s in steps if s is not None), default=0)
            if top < newest:
                went_back.append((newest, top))
            newest = max(newest, top)
        time.sleep(0.005)
    out = worker.stdout.read()
    assert worker.returncode == 0, out[-3000:]
    assert most_in_flight == 1, f"{most_in_flight} checkpoint writes at once"
    assert not went_back, f"the newest marker went back: {went_back}"
    saved = [e["step"] for e in events(out) if e["event"] == "checkpoint.saved"]
    assert saved == list(range(1, 25)), saved
    assert layout.newest(ckpts).step == 24 == heartbeat(state)["last_checkpoint_step"]
    assert [m.step for m in layout.list_checkpoints(ckpts)][-3:] == [22, 23, 24]  # and the best, kept


def test_a_sigterm_during_a_background_write_then_a_resume_is_exact(tmp_path):
    ref, victim = tmp_path / "ref", tmp_path / "victim"
    ref.mkdir(), victim.mkdir()
    reference = start(write_config(ref))
    config = write_config(victim)
    state = victim / "state"
    worker = start(config, slow="3@8")
    wait_until(worker, lambda: writing(state / "checkpoints", 8) and (heartbeat(state).get("step") or 0) > 8,
               "step past 8 while step 8's checkpoint is written")
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=90)
    assert worker.returncode == 75, out[-3000:]
    stopped = next(e for e in events(out) if e["event"] == "train.preempted")["step"]
    assert stopped > 8 and layout.newest(state / "checkpoints").step == stopped

    out, _ = start(config).communicate(timeout=120)
    assert next(e for e in events(out) if e["event"] == "train.resumed")["step"] == stopped, out[-3000:]
    out_ref, _ = reference.communicate(timeout=120)
    assert reference.returncode == 0, out_ref[-3000:]
    assert_same_curve(ref, victim)


def test_a_worker_whose_memory_cgroup_cannot_hold_a_snapshot_saves_blocking_says_why_and_completes(tmp_path):
    """A real worker in a cgroup (v1 here) limited to 1 GiB: room for its training (~0.3 GiB), not
    for its training, a snapshot and the 1 GiB reserve. It saves blocking, says why once, and completes."""
    import os

    from test_async_save_hostile import memory_cgroup

    with memory_cgroup(1 << 30) as cgroup:
        procs = str(cgroup / "cgroup.procs")
        worker = start(write_config(tmp_path), preexec_fn=lambda: open(procs, "w").write(str(os.getpid())))
        out, _ = worker.communicate(timeout=180)
        peak = int((cgroup / "memory.max_usage_in_bytes").read_text())
    assert worker.returncode == 0, f"peak {peak / 2**30:.2f} GiB\n{out[-3000:]}"
    log = events(out)
    [said] = [e for e in log if e["event"] == "checkpoint.blocking"]
    assert "cgroup" in said["reason"] and "blocking" in said["reason"]
    assert all(e["blocking"] for e in log if e["event"] == "checkpoint.saved")
    assert layout.newest(tmp_path / "state" / "checkpoints").step == 24
