"""The token cache's codes are checked where the trainer reads them: each in 0..codebook_size-1, or
-1 past the end of a clip (every codebook from the same frame on). A flipped byte is one line
naming the file, row and clip, and a status the supervisor does not restart (it once crashed the
worker with `IndexError: index out of range in self` until the run FAILED, and a -1 inside a clip
trained silently as padding)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_config
from daemon.common import exits
from daemon.common.config import load_config
from trainer.dataset.tokens import DONE, FORMAT, CacheLayout, model_identity
from trainer.worker.data import DataError, load_cache
from trainer.worker.model import load_base_model

CACHE = {"data": {"source": "cache"}, "train": {"epochs": 1}}
TRAIN, VALID, SHORT = 16, 4, 5  # clips; the last clip ends SHORT frames early (legitimate padding)


def build_cache(config: Path):
    """A finished cache for the tiny model, written as `dataset tokenize` writes it."""
    cfg = load_config(config)
    model, _ = load_base_model(cfg)
    dec, n = model.config.decoder, TRAIN + VALID
    shape = CacheLayout(n, dec.num_codebooks, cfg.data.frames, cfg.data.text_max_tokens,
                        model.config.text_encoder.hidden_size)
    clips = [{"clip_id": 100 + i, "split": "train" if i < TRAIN else "valid", "mp3_path": f"0/clip-{i}.mp3"}
             for i in range(n)]
    cfg.tokens_dir.mkdir(parents=True)
    (cfg.tokens_dir / "index.json").write_text(json.dumps({
        "format": FORMAT, "n": n, "num_codebooks": shape.num_codebooks, "frames": shape.frames,
        "text_tokens": shape.text_tokens, "text_dim": shape.text_dim, "vocab_size": dec.vocab_size,
        "sampling_rate": 32000, "hop": 640, "model": model_identity(cfg), "clips": clips}))
    arrays = shape.arrays(cfg.tokens_dir, "r+")
    codes = np.random.default_rng(0).integers(0, dec.vocab_size, (n, shape.num_codebooks, shape.frames))
    codes[-1, :, -SHORT:] = -1
    arrays["codes.i16"][:] = codes
    arrays["mask.u8"][:] = 1
    arrays["status.u8"][:] = DONE
    for a in arrays.values():
        a.flush()
    return cfg, model


def poke(cfg, row: int, codebook: int, frame: int, value: int) -> None:
    codes = np.memmap(cfg.tokens_dir / "codes.i16", dtype=np.int16, mode="r+")
    k, t = cfg_shape(cfg)
    codes[(row * k + codebook) * t + frame] = np.array(value, dtype=np.uint16).view(np.int16)
    codes.flush()


def cfg_shape(cfg) -> tuple[int, int]:
    index = json.loads((cfg.tokens_dir / "index.json").read_text())
    return index["num_codebooks"], index["frames"]


def test_a_whole_cache_with_a_short_clip_loads(tmp_path):
    cfg, model = build_cache(write_config(tmp_path, CACHE))
    train, valid = load_cache(cfg, model)
    assert len(train) == TRAIN and len(valid) == VALID
    assert int((valid.codes[-1] < 0).sum()) == SHORT * cfg_shape(cfg)[0]


@pytest.mark.parametrize("codebook, frame, value, words", [
    (1, 3, 0x7FEE, "code 32750"),          # a flipped high byte: past the codebook
    (0, 0, 0x8000, "code -32768"),         # negative, not the pad code
    (2, 7, 0xFFFF, "-1 inside the clip"),  # the pad code where the clip has not ended
    (3, 23, 0xFFFF, "-1 inside the clip"),  # its last frame, in one codebook only
])
def test_a_damaged_code_is_named_by_file_row_and_clip(tmp_path, codebook, frame, value, words):
    cfg, model = build_cache(write_config(tmp_path, CACHE))
    poke(cfg, 9, codebook, frame, value)
    with pytest.raises(DataError) as e:
        load_cache(cfg, model)
    message = str(e.value)
    assert message.startswith(f"{cfg.tokens_dir / 'codes.i16'}: row 9 (clip 109)") and words in message
    assert "\n" not in message and "tokenize" in message


def test_the_codebook_size_itself_is_out_of_range(tmp_path):
    """The decoder's pad id is the codebook size: a code equal to it is no code."""
    cfg, model = build_cache(write_config(tmp_path, CACHE))
    poke(cfg, 17, 0, 0, model.config.decoder.vocab_size)
    with pytest.raises(DataError, match="row 17 .clip 117.: code 64 at codebook 0, frame 0 is outside 0..63"):
        load_cache(cfg, model)


@pytest.mark.slow
def test_the_worker_exits_with_a_status_that_is_not_restarted_on_a_flipped_byte(tmp_path):
    config = write_config(tmp_path, CACHE)
    cfg, _ = build_cache(config)
    poke(cfg, 4, 1, 10, 0x7FEE)
    failure = tmp_path / "failure.json"
    r = subprocess.run([sys.executable, "-m", "trainer", "--config", str(config), "--log-format", "json",
                        "--failure-file", str(failure)], capture_output=True, text=True, timeout=180)
    from daemon.rules.restart import WorkerExit

    assert WorkerExit(r.returncode).kind == "config", (r.returncode, r.stdout[-2000:] + r.stderr[-2000:])
    assert r.returncode == exits.CONFIG  # the trainer's status for unusable data (trainer/worker/cli.py)
    assert "Traceback" not in r.stdout + r.stderr and "IndexError" not in r.stdout + r.stderr
    record = json.loads(failure.read_text())
    assert record["type"] == "DataError" and "codes.i16: row 4 (clip 104)" in record["message"]
