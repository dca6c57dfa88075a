"""`amapiano-train demo`: the README's promise, run exactly as a person would."""
from __future__ import annotations

import json
import multiprocessing
import re
import resource
import time

import pytest

from conftest import cli


@pytest.mark.slow
def test_demo_runs_the_whole_lifecycle(tmp_path):
    workdir = tmp_path / "demo"
    result = cli("demo", "--workdir", str(workdir), timeout=400, env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    m = re.search(r"The worker was killed at step (\d+); the restart resumed from step (\d+)\.", result.stdout)
    assert m, result.stdout[-2000:]
    killed, resumed = int(m.group(1)), int(m.group(2))
    assert 0 < resumed < killed
    assert "Demo finished: phase COMPLETED." in result.stdout
    state = json.loads((workdir / "state" / "state.json").read_text())
    assert state["phase"] == "COMPLETED" and state["trainer"]["restarts"] == 1
    assert state["trainer"]["step"] == state["trainer"]["total_steps"]
    assert state["trainer"]["best_val_loss"] < 3.0  # it learned (a random model starts near ln(64) = 4.16)
    assert list((workdir / "logs" / "tensorboard" / "train").glob("events.out.tfevents.*"))
    status = cli("status", "--config", str(workdir / "config.toml"))
    assert status.returncode == 0 and "COMPLETED" in status.stdout
    # The milestone compared two different models: distinct scores, a paired interval, a p-value.
    week5 = json.loads((workdir / "state" / "reports" / "week_5_metrics.json").read_text())
    model = [s["score_pct"] for s in week5["model"]["samples"]]
    baseline = [s["score_pct"] for s in week5["baseline"]["samples"]]
    assert model != baseline and week5["comparison"]["identical"] == 0, (model, baseline)
    lo, hi = week5["comparison"]["ci95_pct"]
    assert lo < hi and 0 <= week5["comparison"]["p_value"] <= 1, week5["comparison"]


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.mark.slow
@pytest.mark.timeout(900)  # its wall time is the machine's; its CPU time is asserted below
def test_demo_passes_with_both_cores_busy(tmp_path):
    """Its verdict must not race the machine's speed: two CPU burners beside it, and it still
    passes, in one output format (no raw `<N>{json}` child lines among the console's)."""
    burners = [multiprocessing.Process(target=_burn, args=(360,), daemon=True) for _ in range(2)]
    for b in burners:
        b.start()
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = cli("demo", "--workdir", str(tmp_path / "demo"), timeout=900, env={"HF_HUB_OFFLINE": "1"})
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the demo and all it waited for
    finally:
        for b in burners:
            b.terminate()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Demo finished: phase COMPLETED." in result.stdout
    assert not re.search(r"^<\d>\{", result.stdout + result.stderr, re.M)
    # Its CPU time, not its wall time, is what it controls on a shared machine: 46-49 s here
    # (2026-12-03). Evaluation children spinning one OpenMP thread per core beside the burners took
    # 94 s (and 83 s of wall became 300+), which this bound catches whatever the load.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 80, f"the demo used {cpu:.0f} CPU seconds"


def test_demo_refuses_a_non_empty_workdir(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    result = cli("demo", "--workdir", str(tmp_path))
    assert result.returncode == 2 and "is not empty" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
