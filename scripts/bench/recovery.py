#!/usr/bin/env python3
"""Recovery times of the real daemon, in seconds:

- from a SIGKILL of the worker to its first training step after the restart (with the restart
  backoff of the config, 200 ms here, and without it);
- from a Spot interruption notice (our IMDSv2 test server) to the checkpoint committed on disk.

    .venv/bin/python scripts/bench/recovery.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))


def state(work: Path) -> dict:
    try:
        return json.loads((work / "state" / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def beat(work: Path) -> dict:
    try:
        return json.loads((work / "state" / "heartbeat.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def wait(pred, timeout=120.0, every=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v := pred():
            return v
        time.sleep(every)
    raise TimeoutError


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from conftest import write_config
    from daemon.common.checkpoints import newest
    from imds_server import ImdsServer

    exe = Path(sys.executable).with_name("amapiano-train")
    kills, kills_no_backoff, spots = [], [], []
    for _ in range(args.repeats):
        work = Path(tempfile.mkdtemp(prefix="bench-rec-"))
        imds = ImdsServer()
        # No periodic checkpoints after the first (every 100000 steps): the checkpoint the Spot
        # measurement waits for can only be the emergency one.
        config = write_config(work, {"train": {"epochs": 100000, "log_every": 1, "checkpoint_every": 100000}},
                              {"aws": {"imds_url": imds.url, "spot_poll": "200ms"}})
        proc = subprocess.Popen([str(exe), "supervise", "--config", str(config), "--log-format", "json"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true"})
        wait(lambda: (beat(work).get("step") or 0) >= 10)
        pid = state(work)["trainer"]["pid"]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        wait(lambda: state(work).get("trainer", {}).get("restarts") == 1 and beat(work).get("pid") not in (None, pid))
        new = beat(work)["pid"]
        first = wait(lambda: (b := beat(work)).get("pid") == new and b.get("activity") == "training"
                     and b.get("step", 0) > (b.get("resumed_from_step") or 0) and b)
        kills.append(time.monotonic() - killed)
        backoff = 0.2  # the config's restart_backoff_initial (with jitter of up to 20 %)
        kills_no_backoff.append(kills[-1] - backoff)
        del first

        step = beat(work).get("step", 0)
        imds.announce_interruption("terminate", 120)
        noticed = time.monotonic()
        wait(lambda: (n := newest(work / "state" / "checkpoints")) and n.step >= step and n.step > 0)
        spots.append(time.monotonic() - noticed)
        proc.wait(60)
        imds.close()

    def show(xs):
        return f"median {statistics.median(xs):.2f} s (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"

    print(f"machine: {os.cpu_count()} CPUs; tiny model (imports dominate the restart)")
    print(f"SIGKILL -> first step after restart: {show(kills)}")
    print(f"  of which the restart backoff: ~0.2 s; without it {show(kills_no_backoff)}")
    print(f"Spot notice -> checkpoint on disk (IMDS polled every 200 ms): {show(spots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
