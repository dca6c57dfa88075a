"""Not timed tests: the benchmarks under scripts/bench/ still run (tiny sizes), and print figures."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("script, args, expect", [
    ("checkpoint_speed.py", ["--params", "2e6", "--repeats", "1"], "stall / raw write:"),
    ("throughput.py", ["--steps", "3"], "throughput:"),
    ("loop_overhead.py", ["--steps", "2", "--blocks", "1"], "overhead ratio (worker / bare"),
    ("memory_probe.py", ["--layers", "1", "--frames", "50", "--text-tokens", "8"], '"ratio"'),
])
def test_benchmark_runs(script, args, expect):
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "bench" / script), *args], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert expect in r.stdout
