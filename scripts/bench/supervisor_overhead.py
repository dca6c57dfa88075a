#!/usr/bin/env python3
"""The supervisor's own cost: CPU seconds per hour and peak RSS, over a run of the real daemon.

Starts `amapiano-train supervise` on the demo's intervals (a tick every 250 ms, the cost, idle
and red-flag checks every second: far busier than production's 2 s / 10 s / 30 s) with a
long tiny-model run, for --seconds, then reads the supervisor process's own CPU time (utime +
stime, children excluded) and VmHWM from /proc. Goal (issue 6): < 1 % of one core, < 150 MB.

    .venv/bin/python scripts/bench/supervisor_overhead.py [--seconds 60]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args()
    from conftest import write_config

    exe = Path(sys.executable).with_name("amapiano-train")
    print(f"machine: {os.cpu_count()} CPUs; a tiny worker trains beside the supervisor the whole time")
    for name, intervals in (("sped-up (demo) intervals: tick 250 ms, checks 1 s",
                             {"supervisor": {"poll_interval": "250ms"}, "budget": {"check_every": "1s"},
                              "idle": {"check_every": "1s"}}),
                            ("production intervals: tick 2 s, cost 10 s, idle 30 s",
                             {"supervisor": {"poll_interval": "2s"}, "budget": {"check_every": "10s"},
                              "idle": {"check_every": "30s"}})):
        work = Path(tempfile.mkdtemp(prefix="bench-sup-"))
        config = write_config(work, {"train": {"epochs": 100000}}, intervals)
        proc = subprocess.Popen([str(exe), "supervise", "--config", str(config), "--log-format", "json"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(8)  # start-up (imports, the worker's first steps) is not the steady state
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.seconds)
        c1, t1 = cpu_seconds(proc.pid), time.monotonic()
        rss = peak_rss_mb(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        used = (c1 - c0) / (t1 - t0)
        print(f"{name}:")
        print(f"  CPU {c1 - c0:.2f} s over {t1 - t0:.0f} s = {used * 3600:.0f} CPU s per hour = "
              f"{100 * used:.2f} % of one core (goal < 1 %); peak RSS {rss:.0f} MB (goal < 150 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
