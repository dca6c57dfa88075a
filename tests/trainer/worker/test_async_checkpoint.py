"""Checkpoints written in the background, with real worker processes: training goes on while a
checkpoint is written; a SIGKILL in the middle of that write leaves the previous checkpoint
committed and the resumed run exact; a stop or the end of training waits for the write to commit.

The background write is made slow on purpose with the worker's test-only hook
AMAPIANO_TEST_SLOW_SAVE_S ("S@STEP": the write of step STEP's checkpoint holds S seconds once its
bytes are in the temp file, before the rename and the marker), so the kill lands inside it.
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
from conftest import write_config
from test_exact_resume import heartbeat, losses

from daemon.common import checkpoints as layout

pytestmark = pytest.mark.slow  # each runs one to three worker processes of ~10 s
SLOW = "AMAPIANO_TEST_SLOW_SAVE_S"


def start(config: Path, slow: str | None = None, **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != SLOW}
    if slow:
        env[SLOW] = slow
    return subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(config), "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **popen)


def events(out: str) -> list[dict]:
    return [json.loads(line[line.index("{"):]) for line in out.splitlines() if line.lstrip("<0123456789>").startswith("{")]


def writing(directory: Path, step: int) -> list[Path]:
    """The temp files of step's checkpoint: its bytes written, not yet renamed."""
    return sorted(directory.glob(f".{layout.stem(step)}.pt.*.tmp")) if directory.exists() else []


def wait_until(proc: subprocess.Popen, condition, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"worker ended before {what}: {proc.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.01)


def assert_same_curve(ref: Path, victim: Path) -> None:
    """The interrupted run's curve is the reference's: every step once, the same losses."""
    want, got = losses(ref / "logs" / "tensorboard" / "train"), losses(victim / "logs" / "tensorboard" / "train")
    assert [s for s, _ in got["train/loss"]] == list(range(1, 25)), "one curve: no gaps or doubles"
    assert [v for _, v in got["train/loss"]] == pytest.approx([v for _, v in want["train/loss"]], abs=1e-6)
    assert [v for _, v in got["val/loss"]] == pytest.approx([v for _, v in want["val/loss"]], abs=1e-6)


def test_a_sigkill_during_the_background_write_keeps_the_previous_checkpoint_and_resume_is_exact(tmp_path):
    ref, victim = tmp_path / "ref", tmp_path / "victim"
    ref.mkdir(), victim.mkdir()
    reference = start(write_config(ref))
    config = write_config(victim)
    ckpts = victim / "state" / "checkpoints"
    worker = start(config, slow="120@8")  # step 8's write never ends by itself
    # Training goes on past step 8 while step 8's checkpoint is still being written.
    wait_until(worker, lambda: writing(ckpts, 8) and (heartbeat(victim / "state").get("step") or 0) > 8,
               "step past 8 while step 8's checkpoint is written")
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    assert [m.step for m in layout.list_checkpoints(ckpts)] == [4], "step 8 never committed; step 4 kept"
    assert layout.verify(layout.newest(ckpts)) is None
    [partial] = writing(ckpts, 8)

    out, _ = start(config).communicate(timeout=120)
    log = events(out)
    assert any(e["event"] == "checkpoint.partial_removed" and partial.name in e["files"] for e in log), out[-3000:]
    resumed = next(e for e in log if e["event"] == "train.resumed")
    assert resumed["step"] == 4
    out_ref, _ = reference.communicate(timeout=120)
    assert reference.returncode == 0, out_ref[-3000:]
    assert_same_curve(ref, victim)
    assert not writing(ckpts, 8) and layout.newest(ckpts).step == 24


def test_a_sigterm_during_a_background_save_waits_for_it_to_commit_then_checkpoints_the_stop(tmp_path):
    state = tmp_path / "state"
    ckpts = state / "checkpoints"
    worker = start(write_config(tmp_path, {"train": {"epochs": 400}}), slow="4@8")
    wait_until(worker, lambda: writing(ckpts, 8) and (heartbeat(state).get("step") or 0) > 8,
               "step past 8 while step 8's checkpoint is written")
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=90)
    assert worker.returncode == 75, out[-3000:]
    log = [e["event"] for e in events(out)]
    saved = [e["step"] for e in events(out) if e["event"] == "checkpoint.saved"]
    assert 8 in saved and log.index("train.preempted") > log.index("checkpoint.saved"), out[-3000:]
    beat = heartbeat(state)
    assert beat["activity"] == "stopped" and beat["last_checkpoint_step"] == beat["step"] > 8
    committed = {m.step: m for m in layout.list_checkpoints(ckpts)}
    assert {8, beat["step"]} <= set(committed), "the write in flight and the stop's step both committed"
    assert all(layout.verify(m) is None for m in committed.values())
    assert not list(ckpts.glob(".*.tmp"))


def test_completion_waits_for_the_last_checkpoint_to_commit(tmp_path):
    state = tmp_path / "state"
    worker = start(write_config(tmp_path), slow="3@24")  # the last step's write is the slow one
    out, _ = worker.communicate(timeout=120)
    assert worker.returncode == 0, out[-3000:]
    log = events(out)
    names = [e["event"] for e in log]
    last = [i for i, e in enumerate(log) if e["event"] == "checkpoint.saved" and e["step"] == 24]
    assert last and last[0] < names.index("train.completed"), out[-3000:]
    beat = heartbeat(state)
    assert beat["activity"] == "completed" and beat["last_checkpoint_step"] == 24
    newest = layout.newest(state / "checkpoints")
    assert newest.step == 24 and layout.verify(newest) is None
