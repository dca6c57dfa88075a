"""Fault injection: many SIGKILLs of the worker (some mid-checkpoint) and of the supervisor
(some mid-state.json), and what must hold after each: nothing half-written is ever read, the
loss sequence matches an uninterrupted run, the cost ledger never goes back or counts twice.

KILLS (default 6 each) sets how many; the suite prints what it injected.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import AMAPIANO_TRAIN, write_config

pytestmark = pytest.mark.slow
KILLS = int(os.environ.get("AMAPIANO_FAULT_KILLS", "6"))
RUN = {"train": {"epochs": 100, "checkpoint_every": 3, "val_every": 80, "log_every": 1}}  # 800 steps
STEPS = 800


def train(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(config), "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def losses(logdir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("train/loss")]


def test_worker_kill_storm_loses_nothing(tmp_path, fault_report):
    rng = random.Random(int(os.environ.get("AMAPIANO_FAULT_SEED", str(random.randrange(1 << 30)))))
    ref_dir, dir_ = tmp_path / "ref", tmp_path / "storm"
    ref_dir.mkdir(), dir_.mkdir()
    ref = train(write_config(ref_dir, RUN))
    config = write_config(dir_, RUN)
    ckpts = dir_ / "state" / "checkpoints"
    kills, mid_write, outputs = 0, 0, []
    while True:
        worker = train(config)
        target_mid_write = rng.random() < 0.5
        deadline = time.monotonic() + rng.uniform(3.5, 5.0)  # imports take ~3 s; then train a little
        while worker.poll() is None and time.monotonic() < deadline + 60:
            if time.monotonic() >= deadline and kills < KILLS:
                tmp = [p for p in ckpts.glob(".step_*.tmp")] if ckpts.exists() else []
                if not target_mid_write or tmp:
                    worker.send_signal(signal.SIGKILL)
                    kills += 1
                    mid_write += bool(tmp)
                    break
            time.sleep(0.0005)
        out, _ = worker.communicate(timeout=120)
        outputs.append(out)
        if worker.returncode == 0:
            break
        assert worker.returncode == -signal.SIGKILL, out[-2000:]
    ref_out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_out[-2000:]
    logs = "".join(outputs)
    fault_report(f"worker: {kills} SIGKILLs, {mid_write} of them while a checkpoint was being written; "
                 f"{len(outputs)} runs; per-step losses equal to an uninterrupted run, no corrupt checkpoint read")
    assert kills == KILLS
    assert "checkpoint.corrupt" not in logs and "train.crashed" not in logs  # nothing half-written was read
    got, want = losses(dir_ / "logs" / "tensorboard" / "train"), losses(ref_dir / "logs" / "tensorboard" / "train")
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, STEPS + 1))
    assert all(abs(a - b) <= 1e-6 for (_, a), (_, b) in zip(got, want))


def test_supervisor_kill_storm_keeps_state_and_ledger_sound(tmp_path, fault_report):
    rng = random.Random()
    config = write_config(tmp_path, {"train": {"epochs": 100000}},
                          {"budget": {"hourly_rate_usd": 3600.0, "max_usd": 100000.0, "check_every": "100ms"}})
    state_file = tmp_path / "state" / "state.json"
    exe = AMAPIANO_TRAIN
    seen_compute, first_boottime, mid_write = [], None, 0
    for kill in range(KILLS):
        proc = subprocess.Popen([*exe, "supervise", "--config", str(config), "--log-format", "json"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(1.0, 2.5))
        if kill % 2:  # every other kill aimed at a state.json write in progress
            deadline = time.monotonic() + 5
            while not list(state_file.parent.glob(".state.json.*.tmp")) and time.monotonic() < deadline:
                time.sleep(0.0002)
            mid_write += bool(list(state_file.parent.glob(".state.json.*.tmp")))
        os.killpg(proc.pid, signal.SIGKILL)  # supervisor and worker, wherever they were
        proc.wait(30)
        data = json.loads(state_file.read_text())  # always parses: atomic writes
        cost = data["cost"]
        if first_boottime is None:
            first_boottime = cost["accounted_boottime_s"] - cost["compute_usd"]
        seen_compute.append(cost["compute_usd"])
        assert cost["compute_usd"] == pytest.approx(cost["accounted_boottime_s"] - first_boottime, rel=1e-9)
    fault_report(f"supervisor: {KILLS} SIGKILLs (with its worker), {mid_write} during a state.json write; "
                 "state.json parsed after each; spend "
                 f"{[round(x, 2) for x in seen_compute]} USD, never back, exactly the seconds billed")
    assert seen_compute == sorted(seen_compute)  # never goes back
