"""`amapiano-train evaluate` on a tiny trained checkpoint: model and baseline figures, CI, latency."""
from __future__ import annotations

import json
import subprocess

import pytest
import soundfile as sf

from conftest import AMAPIANO_TRAIN, write_config

pytestmark = pytest.mark.slow


def test_evaluate_writes_the_metrics_file(tmp_path):
    config = write_config(tmp_path, {"train": {"epochs": 1}, "milestone": {"samples": 3, "sample_seconds": 0.5}})
    train = subprocess.run([*AMAPIANO_TRAIN, "train", "--config", str(config), "--log-format", "json"],
                           capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stdout[-2000:]
    out = tmp_path / "reports" / "metrics.json"
    r = subprocess.run([*AMAPIANO_TRAIN, "evaluate", "--config", str(config), "--out", str(out), "--no-progress",
                        "--log-format", "json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = json.loads(out.read_text())
    assert m["checkpoint"]["step"] == 8
    for who in ("model", "baseline"):
        fig = m[who]
        assert fig["val_loss"] > 0 and fig["authenticity"]["n"] == 3
        lo, hi = fig["authenticity"]["ci95_pct"]
        assert lo <= fig["authenticity"]["mean_pct"] <= hi
        assert fig["latency_s"]["mean"] > 0
        for s in fig["samples"]:
            wave, rate = sf.read(s["file"])
            assert rate == 32000 and len(wave) > 0 and 0 <= s["score_pct"] <= 100
    assert m["model"]["val_loss"] != m["baseline"]["val_loss"]  # the checkpoint is not the baseline
    assert '"event":"evaluate.summary"' in r.stdout and "baseline" in r.stdout


def test_evaluate_without_a_checkpoint_says_so(tmp_path):
    config = write_config(tmp_path, {"milestone": {"samples": 1, "sample_seconds": 0.2}})
    r = subprocess.run([*AMAPIANO_TRAIN, "evaluate", "--config", str(config), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 65 and "no checkpoint to evaluate" in r.stderr
