"""A worker SIGKILLed at a random step and restarted trains exactly as if it had never died."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_config

LONGER = {"train": {"epochs": 8, "checkpoint_every": 6, "val_every": 16}}  # 64 steps


def train(config: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(config), "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def heartbeat(state_dir: Path) -> dict:
    try:
        return json.loads((state_dir / "heartbeat.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def losses(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows: every scalar point, after its handling of restarted writers."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in ("train/loss", "val/loss")}


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_matches_an_uninterrupted_run(tmp_path):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng = random.Random(seed)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    cfg_a, cfg_b = write_config(a, LONGER), write_config(b, LONGER)

    reference = train(cfg_a)
    victim = train(cfg_b)
    kill_at = rng.randrange(8, 56)  # after the first checkpoint (6), before the end (64)
    deadline = time.monotonic() + 120
    while (heartbeat(b / "state").get("step") or 0) < kill_at:
        assert victim.poll() is None, f"worker ended before the kill (seed {seed}): {victim.stdout.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    killed_step = heartbeat(b / "state")["step"]
    assert victim.returncode == -signal.SIGKILL and killed_step < 64

    resumed = train(cfg_b)
    out_b, _ = resumed.communicate(timeout=180)
    out_a, _ = reference.communicate(timeout=180)
    assert reference.returncode == 0, out_a
    assert resumed.returncode == 0, out_b
    resumed_from = heartbeat(b / "state")["resumed_from_step"]
    assert resumed_from == killed_step // 6 * 6 or resumed_from == (killed_step - 1) // 6 * 6
    assert '"event":"train.resumed"' in out_b

    ref, got = losses(a / "logs" / "tensorboard" / "train"), losses(b / "logs" / "tensorboard" / "train")
    assert [s for s, _ in ref["train/loss"]] == list(range(1, 65))
    assert [s for s, _ in got["train/loss"]] == list(range(1, 65)), "one curve in TensorBoard: no gaps or doubles"
    for (step, want), (_, have) in zip(ref["train/loss"], got["train/loss"]):
        assert have == pytest.approx(want, abs=1e-6), (step, seed, kill_at)
    assert [s for s, _ in got["val/loss"]] == [16, 32, 48, 64]
    assert [v for _, v in got["val/loss"]] == pytest.approx([v for _, v in ref["val/loss"]], abs=1e-6)


@pytest.mark.slow
def test_sigusr1_checkpoints_at_once_and_exits_75(tmp_path):
    cfg = write_config(tmp_path, LONGER)
    worker = train(cfg)
    deadline = time.monotonic() + 120
    while (heartbeat(tmp_path / "state").get("step") or 0) < 9:
        assert worker.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    worker.send_signal(signal.SIGUSR1)
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 75, out
    beat = heartbeat(tmp_path / "state")
    assert beat["activity"] == "stopped"
    assert beat["last_checkpoint_step"] == beat["step"] >= 9  # nothing after the last step is lost
    assert (tmp_path / "state" / "checkpoints" / f"step_{beat['step']:08d}.json").exists()


def catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler for sig (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.mark.slow
def test_sigterm_during_startup_is_a_clean_stop_not_a_kill(tmp_path):
    cfg = write_config(tmp_path)
    worker = train(cfg)
    deadline = time.monotonic() + 30
    while not catches(worker.pid, signal.SIGTERM):
        assert worker.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)
    assert heartbeat(tmp_path / "state").get("activity") in (None, "loading")  # still importing/loading
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 75, out
    assert '"event":"train.preempted"' in out and '"reason":"SIGTERM"' in out


@pytest.mark.slow
def test_a_second_worker_waits_for_the_first(tmp_path):
    """Never two workers on one run: the second waits until the first has checkpointed and left."""
    cfg = write_config(tmp_path, {"train": {"epochs": 400}})  # ~1 minute: still going when stopped
    first = train(cfg)
    deadline = time.monotonic() + 120
    while (heartbeat(tmp_path / "state").get("step") or 0) < 3:
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    second = train(cfg)
    time.sleep(3)  # long enough for it to reach the lock (imports take ~2-4 s)
    assert second.poll() is None
    first.send_signal(signal.SIGUSR1)
    out1, _ = first.communicate(timeout=60)
    preempted = [json.loads(line[3:]) for line in out1.splitlines() if "train.preempted" in line]
    assert preempted, out1[-3000:]
    stopped_at = preempted[0]["step"]
    second.send_signal(signal.SIGUSR1)  # remembered; it acts once it holds the lock and resumes
    out2, _ = second.communicate(timeout=60)
    assert first.returncode == 75 and second.returncode == 75, out2
    assert '"event":"worker.waiting_for_lock"' in out2
    assert '"event":"train.resumed"' in out2 and f'"step":{stopped_at}' in out2
