"""The token cache: built from real MP3 files, resumable after SIGKILL, and what the trainer reads."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import AMAPIANO_TRAIN, write_config
from tests_dataset_helpers import make_clips
from trainer.dataset.select import write_manifest

pytestmark = pytest.mark.slow
CACHE = {"data": {"source": "cache", "frames": 24}, "dataset": {"tokenize_batch": 4}}


def tokenize(config: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([*AMAPIANO_TRAIN, "dataset", "tokenize", "--config", str(config), "--no-progress",
                             "--log-format", "json"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kw)


def test_builds_the_cache_lists_failures_and_the_trainer_trains_from_it(tmp_path):
    config = write_config(tmp_path, CACHE, {"train": {"epochs": 2}})
    cache = tmp_path / "cache"
    clips = make_clips(cache / "clips", 40, broken=(7,))
    write_manifest(cache / "manifest.jsonl", clips)
    proc = tokenize(config)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "39 of 40 clips done, 1 failed" in out
    failures = [json.loads(x) for x in (cache / "tokens" / "failures.jsonl").read_text().splitlines()]
    assert [f["clip_id"] for f in failures] == [107]
    index = json.loads((cache / "tokens" / "index.json").read_text())
    codes = np.memmap(cache / "tokens" / "codes.i16", dtype=np.int16, mode="r",
                      shape=(40, index["num_codebooks"], index["frames"]))
    assert codes[0].min() >= 0 and codes[0].max() < index["vocab_size"]  # real codes from the codec
    assert index["sampling_rate"] == 32000

    train = subprocess.run([*AMAPIANO_TRAIN, "train", "--config", str(config), "--log-format", "json"],
                           capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    assert '"event":"train.completed"' in train.stdout
    started = json.loads(next(line[3:] for line in train.stdout.splitlines() if '"train.started"' in line))
    assert started["train_clips"] == 31 and started["valid_clips"] == 8  # 39 usable, split as in the manifest

    # A damaged status byte: the trainer refuses the cache in one line (it once read it as "not done").
    status = cache / "tokens" / "status.u8"
    raw = bytearray(status.read_bytes())
    raw[3] = 0xEE
    status.write_bytes(bytes(raw))
    damaged = subprocess.run([*AMAPIANO_TRAIN, "train", "--config", str(config), "--log-format", "json"],
                             capture_output=True, text=True, timeout=300)
    assert damaged.returncode == 78 and "status bytes are not 0, 1 or 2" in damaged.stderr + damaged.stdout
    assert "Traceback" not in damaged.stderr


def test_sigkill_mid_build_resumes_without_redoing_or_corrupting(tmp_path):
    config = write_config(tmp_path, CACHE, {"dataset": {"tokenize_batch": 1}})
    cache = tmp_path / "cache"
    clips = make_clips(cache / "clips", 150)
    write_manifest(cache / "manifest.jsonl", clips)
    proc = tokenize(config)
    status = cache / "tokens" / "status.u8"
    deadline = time.monotonic() + 120
    while not (status.exists() and status.stat().st_size == 150 and 20 <= np.fromfile(status, np.uint8).sum()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    done_at_kill = int((np.fromfile(status, np.uint8) == 1).sum())
    assert 20 <= done_at_kill < 150

    resumed = tokenize(config)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    start = json.loads(next(line[3:] for line in out.splitlines() if '"tokenize.start"' in line))
    assert start["done"] == done_at_kill and start["todo"] == 150 - done_at_kill  # nothing redone

    # A clean build of the same clips gives the same bytes: the killed build left nothing corrupt.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    config2 = write_config(fresh, CACHE)
    (fresh / "cache").mkdir()
    write_manifest(fresh / "cache" / "manifest.jsonl", clips)
    r = subprocess.run([*AMAPIANO_TRAIN, "dataset", "tokenize", "--config", str(config2), "--no-progress",
                        "--audio-dir", str(cache / "clips")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for name in ("codes.i16", "mask.u8", "status.u8", "text.f16"):
        assert (cache / "tokens" / name).read_bytes() == (fresh / "cache" / "tokens" / name).read_bytes(), name


def test_a_cache_for_another_model_is_refused(tmp_path):
    config = write_config(tmp_path, CACHE)
    cache = tmp_path / "cache"
    write_manifest(cache / "manifest.jsonl", make_clips(cache / "clips", 6))
    assert tokenize(config).wait(300) == 0
    other = write_config(tmp_path, CACHE, {"model": {"tiny": {"text_hidden_size": 48}}}, name="other.toml")
    r = subprocess.run([*AMAPIANO_TRAIN, "train", "--config", str(other)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 78
    assert "text_dim: cache 32 != model/config 48" in (r.stdout + r.stderr)


def test_the_cache_benchmark_runs(tmp_path):
    """Not a timed test: it only checks that scripts/bench/cache_vs_onthefly.py still works."""
    from conftest import REPO

    r = subprocess.run([sys.executable, str(REPO / "scripts" / "bench" / "cache_vs_onthefly.py"), "--clips", "8",
                        "--seconds", "1", "--steps", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "speed-up from the cache:" in r.stdout
