"""Two processes through torchrun on the CPU (gloo), DDP and FSDP: the same guarantees as one.

A SIGKILL of one rank ends the group and the supervisor restarts it from the newest checkpoint,
and the curve equals an uninterrupted 2-process run; 2 processes x accum 1 train as 1 process x
accum 2; a 2-process checkpoint resumes in 1 process.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_config
from test_exact_resume import heartbeat, losses

from daemon.common import checkpoints as layout
from daemon.worker import children, group_command

pytestmark = pytest.mark.slow
STEPS = 32  # 4 epochs of 8 steps; checkpoint every 4
BASE = {"train": {"epochs": 4, "device": "cpu", "cpu_threads": 1, "val_every": 8},
        "model": {"tiny": {"dropout": 0.0}}}  # one process draws 2 dropout masks where 2 draw 1 each


def width(n: int, strategy: str = "ddp", **train) -> dict:
    return {"train": {"nproc_per_node": n, "strategy": strategy, **train}}


def run_worker(config: Path, nproc: int) -> subprocess.CompletedProcess:
    args = ["--config", str(config), "--log-format", "json"]
    command = group_command(nproc, args) if nproc > 1 else [sys.executable, "-m", "trainer", *args]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def curve(root: Path) -> list[tuple[int, float]]:
    return losses(root / "logs" / "tensorboard" / "train")["train/loss"]


def assert_same(got: list, want: list, tol: float) -> None:
    assert [s for s, _ in got] == [s for s, _ in want], "one curve: no gaps or doubles"
    for (step, have), (_, expect) in zip(got, want):
        assert have == pytest.approx(expect, abs=tol), step


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_sigkill_of_one_rank_restarts_the_group_and_the_curve_is_unbroken(tmp_path, daemons, strategy):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    ref, victim = tmp_path / "ref", tmp_path / "victim"
    ref.mkdir(), victim.mkdir()
    overrides = (BASE, width(2, strategy))
    run_worker(write_config(ref, *overrides), 2)

    d = daemons(write_config(victim, *overrides))
    kill_at = rng.randrange(6, STEPS - 6)
    state = d.wait_state(lambda s: s.get("phase") == "RUNNING" and (s["trainer"].get("step") or 0) >= kill_at,
                         timeout=90)
    torchrun = state["trainer"]["pid"]
    ranks = children(torchrun)
    assert len(ranks) == 2, ranks
    os.kill(rng.choice(ranks), signal.SIGKILL)
    d.wait_state(lambda s: s.get("phase") == "COMPLETED", timeout=120)
    # torchrun's own lines (its banner, the dead rank's report) reach the journal unprefixed.
    events = [json.loads(line[3:]) for line in d.log_text().splitlines() if line[:3] in ("<6>", "<4>", "<3>")]
    start = next(e for e in events if e["event"] == "worker.started")
    assert "torch.distributed.run" in start["command"] and "--max-restarts 0" in start["command"]
    restarts = [e for e in events if e["event"] == "worker.restarted"]
    assert len(restarts) == 1 and restarts[0]["from_step"] >= 4, f"one restart of the whole group (seed {seed})"
    assert (heartbeat(victim / "state").get("resumed_from_step") or 0) >= 4
    assert_same(curve(victim), curve(ref), 1e-6)
    assert d.stop() == 0


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_accum_1_train_as_one_process_accum_2(tmp_path, strategy):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    run_worker(write_config(one, BASE, width(1, batch_size=4, grad_accum_steps=2)), 1)
    run_worker(write_config(two, BASE, width(2, strategy, batch_size=8, grad_accum_steps=1)), 2)
    assert_same(curve(two), curve(one), 1e-5)
    got, want = losses(two / "logs" / "tensorboard" / "train"), losses(one / "logs" / "tensorboard" / "train")
    assert [v for _, v in got["val/loss"]] == pytest.approx([v for _, v in want["val/loss"]], abs=1e-5)
    if strategy == "fsdp":
        newest = layout.newest(two / "state" / "checkpoints")
        assert newest.sharded and layout.verify(newest) is None and newest.meta["sharded"] == 2


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path, strategy):
    """Step 16 of a 2-process run, taken on by 1 process: the same clips per step in the same
    order, so the rest of the curve is the 2-process one (up to float sums cut differently)."""
    ref, moved = tmp_path / "ref", tmp_path / "moved"
    ref.mkdir(), (moved / "state" / "checkpoints").mkdir(parents=True)
    keep = {"train": {"keep_checkpoints": 10}}
    run_worker(write_config(ref, BASE, width(2, strategy), keep), 2)
    taken = layout.marker_path(ref / "state" / "checkpoints", 16)
    assert layout.read_marker(taken).sharded == (strategy == "fsdp")
    for p in taken.parent.glob("step_00000016*"):
        (shutil.copytree if p.is_dir() else shutil.copy)(p, moved / "state" / "checkpoints" / p.name)
    out = run_worker(write_config(moved, BASE, width(1), keep), 1)
    assert '"event":"train.resumed"' in out.stdout
    assert_same(curve(moved), [(s, v) for s, v in curve(ref) if s > 16], 1e-5)


def test_a_damaged_shard_is_quarantined_and_the_previous_checkpoint_used(tmp_path):
    run_worker(write_config(tmp_path, BASE, width(2, "fsdp"), {"train": {"epochs": 1}}), 2)
    directory = tmp_path / "state" / "checkpoints"
    newest = layout.newest(directory)
    shard = sorted(p for p in newest.path.iterdir() if p.suffix == ".distcp")[-1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert "SHA-256" in layout.verify(newest)
    (newest.path / "stray").write_text("x")
    assert "does not list" in layout.verify(newest)
    out = run_worker(write_config(tmp_path, BASE, width(2, "fsdp"), {"train": {"epochs": 2}}), 2)
    assert '"event":"checkpoint.corrupt"' in out.stdout
    assert (directory / "corrupt" / newest.path.name).is_dir()


def test_amapiano_train_train_runs_two_processes(tmp_path):
    from conftest import cli

    cfg = write_config(tmp_path, BASE, width(2), {"train": {"epochs": 1}})
    out = cli("train", "--config", str(cfg), "--log-format", "json", timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert '"event":"train.group"' in out.stdout + out.stderr
    assert heartbeat(tmp_path / "state")["step"] == 8
    assert json.loads((tmp_path / "state" / "checkpoints" / "step_00000008.json").read_text())["step"] == 8


def test_a_stop_reaches_every_rank_at_the_same_step(tmp_path):
    """SIGUSR1 to one rank only: both stop at the same boundary, rank 0 commits it, exit 75 recorded."""
    cfg = write_config(tmp_path, BASE, width(2), {"train": {"epochs": 400}})
    failure = tmp_path / "failure.json"
    proc = subprocess.Popen(group_command(2, ["--config", str(cfg), "--failure-file", str(failure)]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while (heartbeat(tmp_path / "state").get("step") or 0) < 5:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    ranks = children(proc.pid)
    os.kill(max(ranks), signal.SIGUSR1)  # whichever rank: the group agrees
    out, _ = proc.communicate(timeout=60)
    beat = heartbeat(tmp_path / "state")
    assert beat["activity"] == "stopped" and beat["last_checkpoint_step"] == beat["step"], out[-3000:]
    assert json.loads(failure.read_text())["exit"] == 75


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_an_oom_on_one_rank_backs_the_whole_group_off_and_the_run_finishes(tmp_path, daemons, strategy):
    """Rank 1 alone runs out of memory at step 5 (the worker's test hook, rank-scoped). Going on
    alone would leave rank 0 in a collective the other never joins, so the group agrees through a
    restart: rank 1 records the smaller micro-batch and exits, the supervisor restarts the group at
    once (no failure counted), every rank starts at the recorded micro-batch, and the run ends with
    rank 0's curve equal to an uninterrupted one (the halves sum in another order: 1e-5)."""
    ref, victim = tmp_path / "ref", tmp_path / "victim"
    ref.mkdir(), victim.mkdir()
    overrides = (BASE, width(2, strategy), {"train": {"epochs": 2}})
    run_worker(write_config(ref, *overrides), 2)
    d = daemons(write_config(victim, *overrides), {"AMAPIANO_TEST_OOM_ABOVE": "1@5@1"})
    state = d.wait_state(lambda s: s.get("phase") in ("COMPLETED", "FAILED"), timeout=150)
    assert state["phase"] == "COMPLETED", state.get("failure")
    beat = heartbeat(victim / "state")
    assert (beat["micro_batch"], beat["grad_accum"], beat["oom_backoffs"]) == (2, 4, 1)
    events = [json.loads(line[3:]) for line in d.log_text().splitlines() if line[:3] in ("<6>", "<4>", "<3>")]
    exited, done = [e for e in events if e["event"] == "worker.exited"]
    assert done["kind"] == "completed"
    assert (exited["kind"], exited["decision"]) == ("oom_backoff", "restart"), exited
    assert "on rank 1 at step 5: the group restarts at micro-batch 2" in exited["reason"], exited
    assert len([e for e in events if e["event"] == "worker.restarted"]) == 1
    assert any("CUDA out of memory: micro-batch now 2 x 4" in a["subject"] for a in state.get("alerts", [])), state.get("alerts")
    record = json.loads((victim / "state" / "oom_backoff.json").read_text())
    assert (record["micro_batch"], record["rank"], record["step"]) == (2, 1, 5)
    assert_same(curve(victim), curve(ref), 1e-5)
    assert d.stop() == 0


def test_a_group_oom_at_the_smallest_micro_batch_fails_at_once_saying_it_does_not_fit(tmp_path, daemons):
    """2 ranks, micro-batch 2 (one clip each): nothing is left to halve; the run fails without
    burning restarts, naming the plan."""
    d = daemons(write_config(tmp_path, BASE, width(2, batch_size=2, grad_accum_steps=4)),
                {"AMAPIANO_TEST_OOM_ABOVE": "0@3@0"})
    state = d.wait_state(lambda s: s.get("phase") in ("COMPLETED", "FAILED"), timeout=120)
    assert state["phase"] == "FAILED" and "does not fit" in state["failure"]["reason"], state.get("failure")
    assert not [e for e in d.log_text().splitlines() if '"event":"worker.restarted"' in e]
    assert d.stop() == 0
