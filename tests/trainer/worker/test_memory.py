"""The memory model: its parameter count is the module's, its layouts follow the GPUs' sizes, and
its estimate for one real optimizer step of musicgen-small on the CPU is within 25 % of the
measured peak."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from conftest import REPO

from trainer.worker.memory import (
    GIB,
    MUSICGEN_SMALL,
    choose_layout,
    estimate,
    smaller_micro_batch,
)


def test_parameter_count_is_the_modules():
    from trainer.worker.model import random_trainable

    two_layers = dataclasses.replace(MUSICGEN_SMALL, layers=2)  # the real width; 2 layers to build fast
    model = random_trainable(two_layers)
    assert two_layers.parameters == sum(p.numel() for p in model.parameters())
    assert MUSICGEN_SMALL.parameters == 420_371_456  # not ~300 M: the checkpoint with AdamW is ~5 GB
    assert 12 * MUSICGEN_SMALL.parameters / 1e9 == pytest.approx(5.04, abs=0.01)


@pytest.mark.parametrize("clips, micro, after", [(32, 8, 4), (32, 4, 2), (32, 2, 1), (32, 1, None),
                                                 (24, 6, 3), (24, 3, 1), (30, 5, 2), (7, 7, 1)])
def test_the_micro_batch_halves_and_still_divides_the_step(clips, micro, after):
    assert smaller_micro_batch(clips, micro) == after
    if after:
        assert clips % after == 0


def test_activations_shrink_with_checkpointing_and_lower_precision():
    fp32 = estimate(MUSICGEN_SMALL, 1, 1500, 64, "fp32")
    assert 3.0 * GIB < fp32.activations < 3.5 * GIB  # measured: 3.25 GiB per sample at 1,503 positions
    amp = estimate(MUSICGEN_SMALL, 8, 1500, 64, "fp16", grad_accum=4)
    ckpt = estimate(MUSICGEN_SMALL, 8, 1500, 64, "fp16", checkpointing=True, grad_accum=4)
    assert 20 * GIB < amp.peak < 26 * GIB and 8 * GIB < ckpt.peak < 11 * GIB


@pytest.mark.parametrize("gpu, memory_gib, dtype, micro, checkpointing", [
    ("T4", 14.6, "fp16", 8, True),        # 8 x 1,503 positions does not fit without checkpointing
    ("A10G", 22.0, "bf16", 8, True),
    ("A100 40GB", 39.4, "bf16", 8, False),
    ("H100", 79.1, "bf16", 8, False),
    ("10 GB card", 9.0, "fp16", 2, True),  # micro-batch 2 x accumulation 16, with checkpointing
])
def test_layout_per_gpu(gpu, memory_gib, dtype, micro, checkpointing):
    layout = choose_layout(MUSICGEN_SMALL, 1500, 64, dtype, 8, 4, "auto", int(memory_gib * GIB))
    assert (layout.micro_batch, layout.checkpointing, layout.fits) == (micro, checkpointing, True), gpu
    assert layout.micro_batch * layout.grad_accum == 32


def test_nothing_fits_says_so():
    layout = choose_layout(MUSICGEN_SMALL, 1500, 64, "fp16", 8, 4, "auto", 4 * GIB)
    assert (layout.micro_batch, layout.grad_accum, layout.fits) == (1, 32, False)


@pytest.mark.slow
def test_estimate_is_within_25_percent_of_a_measured_cpu_step():
    """One optimizer step of the real architecture (420 M parameters, random weights) at micro-batch
    1, 1,500 frames, 64 text tokens, fp32 on the CPU: ~40-90 s on two cores, ~9 GB of memory."""
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "bench" / "memory_probe.py"), "--threads", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["parameters"] == MUSICGEN_SMALL.parameters
    assert 0.75 <= got["ratio"] <= 1.25, got
