"""A CUDA out-of-memory error halves the micro-batch and doubles the accumulation, and training goes
on: same clips per step, same data order, the back-off in the heartbeat and the checkpoint, and a
kill/resume across it resumes at the smaller micro-batch. Simulated on the CPU through the worker's
test hook AMAPIANO_TEST_OOM_ABOVE (micro-batches above N clips raise torch.OutOfMemoryError)."""
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

from daemon.common import exits
from trainer.worker import checkpoint

# 4 x 2 = 8 clips a step, 8 steps an epoch, 24 steps; no dropout so that the halves add up to
# the whole up to float rounding, and the loss curves of both runs can be compared.
NO_DROPOUT = {"model": {"tiny": {"dropout": 0.0}}}


def train(config: Path, oom_above: str | None = None, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "AMAPIANO_TEST_OOM_ABOVE"}
    if oom_above:
        env["AMAPIANO_TEST_OOM_ABOVE"] = oom_above
    return subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(config), "--log-format", "json",
                             "--failure-file", str(config.parent / "failure.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **kw)


def events(out: str, name: str) -> list[dict]:
    return [json.loads(line[line.index("{"):]) for line in out.splitlines() if f'"event":"{name}"' in line]


def heartbeat(state: Path) -> dict:
    try:
        return json.loads((state / "heartbeat.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def train_losses(state_dir: Path) -> dict[int, float]:
    """Per-step training loss as the checkpoint markers recorded it."""
    return {m.step: m.meta["train_loss"] for m in checkpoint.list_checkpoints(state_dir / "checkpoints")}


@pytest.mark.slow
def test_oom_at_the_first_step_backs_off_twice_and_finishes_with_the_same_losses(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    keep_all = {"train": {"keep_checkpoints": 10}}
    reference, backed_off = train(write_config(a, NO_DROPOUT, keep_all)), train(write_config(b, NO_DROPOUT, keep_all), "1")
    out_a, _ = reference.communicate(timeout=180)
    out_b, _ = backed_off.communicate(timeout=180)
    assert reference.returncode == exits.OK, out_a[-2000:]
    assert backed_off.returncode == exits.OK, out_b[-2000:]
    backoffs = events(out_b, "train.oom_backoff")
    assert [(e["micro_batch_from"], e["micro_batch"], e["grad_accum"]) for e in backoffs] == [(4, 2, 4), (2, 1, 8)]
    assert all(e["step"] == 0 and e["during"] == "training" for e in backoffs)
    beat = heartbeat(b / "state")
    assert beat["activity"] == "completed" and beat["step"] == 24
    assert (beat["micro_batch"], beat["grad_accum"], beat["oom_backoffs"]) == (1, 8, 2)
    ref, got = train_losses(a / "state"), train_losses(b / "state")
    assert sorted(got) == sorted(ref)  # the same steps: the effective batch, and the order, kept
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-4), step  # differs only in float rounding


@pytest.mark.slow
def test_oom_mid_run_then_kill_and_resume_keeps_the_smaller_micro_batch(tmp_path):
    config = write_config(tmp_path, {"train": {"epochs": 40}})  # 320 steps: still running when killed
    state = tmp_path / "state"
    worker = train(config, "2@6")  # from step 6 on, micro-batches of more than 2 clips run out of memory
    deadline = time.monotonic() + 120
    while (heartbeat(state).get("last_checkpoint_step") or 0) < 12:  # past the back-off and a checkpoint
        assert worker.poll() is None, worker.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    out, _ = worker.communicate(timeout=30)
    [backoff] = events(out, "train.oom_backoff")
    assert (backoff["step"], backoff["micro_batch"], backoff["grad_accum"]) == (6, 2, 4)
    assert checkpoint.load(checkpoint.newest(state / "checkpoints"))["micro_batch"] == 2

    # Resumed with the hook still armed: it starts at micro-batch 2, so it never runs out of memory again.
    config = write_config(tmp_path, {"train": {"epochs": 40, "checkpoint_every": 4}})
    resumed = train(config, "2@6")
    deadline = time.monotonic() + 120
    while (heartbeat(state).get("step") or 0) < backoff["step"] + 20:
        assert resumed.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    resumed.send_signal(signal.SIGUSR1)
    out, _ = resumed.communicate(timeout=60)
    assert resumed.returncode == exits.PREEMPTED, out[-3000:]
    [started] = events(out, "train.resumed")
    assert (started["micro_batch"], started["grad_accum"]) == (2, 4)
    assert not events(out, "train.oom_backoff")
    assert heartbeat(state)["oom_backoffs"] == 1


@pytest.mark.slow
def test_oom_at_micro_batch_1_is_does_not_fit_for_the_supervisor(tmp_path):
    from daemon.rules.restart import WorkerExit

    worker = train(write_config(tmp_path), "0")
    out, _ = worker.communicate(timeout=120)
    assert worker.returncode == exits.FAILED, out[-2000:]
    failure = json.loads((tmp_path / "failure.json").read_text())
    assert failure["type"] == "DoesNotFit" and "micro-batch 1" in failure["message"]
    assert len(events(out, "train.oom_backoff")) == 2  # 4 -> 2 -> 1, then nothing left
    assert WorkerExit(code=worker.returncode, error_type=failure["type"], message=failure["message"]).kind \
        == "does_not_fit"
