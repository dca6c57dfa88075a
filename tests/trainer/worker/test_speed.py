"""The throughput model (trainer/worker/speed.py): batch_size = "auto" takes the fastest step that
fits each GPU, keeping the clips per step; compile = "auto" compiles when the steps left pay for
it; plan's estimates meet the figures measured on the H100. Pure functions, no GPU."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import PROD_TOML, RecordingLog, write_config
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.common.config import load_config
from trainer.worker import memory, plan, precision, setup, speed

GIB = memory.GIB
SMALL = memory.MUSICGEN_SMALL


def gpu_layout(name: str, clips: int = 32, checkpointing: str = "auto", world: int = 1) -> memory.Layout:
    g = plan.gpu_named(name)
    dtype = precision.choose(g.capability, "auto").dtype
    return speed.fastest_layout(SMALL, 1500, 64, dtype, clips, checkpointing, int(g.memory_gib * GIB), world)


@pytest.mark.parametrize("gpu, micro, accum, checkpointing", [
    ("T4", 16, 2, True),            # 8 x 4 with checkpointing before: the larger micro-batch still fits
    ("A10G", 32, 1, True),
    ("L4", 32, 1, True),
    ("A100-40GB", 8, 4, False),     # 32 x 1 fits only with checkpointing, a third more work: slower
    ("A100-80GB", 32, 1, False),
    ("H100", 32, 1, False),         # what the H100 session measured fastest (MFU 34.0 % vs 28.5 % at 8 x 4)
])
def test_auto_takes_the_fastest_step_that_fits_each_gpu_for_musicgen_small(gpu, micro, accum, checkpointing):
    layout = gpu_layout(gpu)
    assert (layout.micro_batch, layout.grad_accum, layout.checkpointing, layout.fits) == \
        (micro, accum, checkpointing, True)
    assert layout.micro_batch * layout.grad_accum == 32


def test_on_the_cpu_auto_is_at_most_8_clips_a_process():
    for clips, world, want in [(32, 1, 8), (6, 1, 6), (7, 1, 7), (9, 1, 3), (32, 2, 16), (12, 4, 12)]:
        layout = speed.fastest_layout(SMALL, 50, 8, "fp32", clips, "auto", None, world)
        assert (layout.micro_batch, layout.micro_batch * layout.grad_accum, layout.checkpointing) == \
            (want, clips, False), (clips, world)


def test_nothing_fits_gives_the_smallest_with_checkpointing_not_fitting():
    layout = speed.fastest_layout(SMALL, 1500, 64, "bf16", 32, "auto", 4 * GIB, world=2)
    assert (layout.micro_batch, layout.grad_accum, layout.checkpointing, layout.fits) == (2, 16, True, False)
    off = speed.fastest_layout(SMALL, 1500, 64, "bf16", 32, "off", 4 * GIB)
    assert off.checkpointing is False and off.micro_batch == 1


@settings(max_examples=60, deadline=None)
@given(clips=st.integers(1, 64), world=st.sampled_from([1, 2, 4]), gib=st.floats(4, 100),
       checkpointing=st.sampled_from(["auto", "on", "off"]))
def test_auto_keeps_the_clips_per_step_and_nothing_that_fits_is_faster(clips, world, gib, checkpointing):
    if clips % world:
        with pytest.raises(ValueError):
            speed.fastest_layout(SMALL, 300, 16, "bf16", clips, checkpointing, int(gib * GIB), world)
        return
    layout = speed.fastest_layout(SMALL, 300, 16, "bf16", clips, checkpointing, int(gib * GIB), world)
    assert layout.micro_batch * layout.grad_accum == clips and layout.micro_batch % world == 0
    others = [speed.fastest_layout(SMALL, 300, 16, "bf16", clips, c, int(gib * GIB), world)
              for c in ({"auto": ("on", "off")}.get(checkpointing, (checkpointing,)))]
    if layout.fits:
        assert all(speed._relative(layout, world) >= speed._relative(o, world) for o in others if o.fits)
    else:
        assert not any(o.fits for o in others)


def test_mfu_is_measured_on_the_h100_and_estimated_elsewhere():
    assert [speed.curve("H100").at(m) for m in (8, 16, 32)] == [0.285, 0.324, 0.340]
    assert speed.curve("H100").basis.startswith("measured") and "2026-11-25" in speed.curve("H100").basis
    assert speed.curve("T4").basis.startswith("estimated") and "not measured on a T4" in speed.curve("T4").basis
    values = [speed.curve("H100").at(m) for m in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)]
    assert values == sorted(values) and 0 < values[0] < 0.285 and values[-1] == 0.340


@pytest.mark.parametrize("micro, accum, measured", [(8, 4, 71.1), (16, 2, 80.8), (32, 1, 84.6)])
def test_the_plan_predicts_the_h100_figures_within_10_percent(tmp_path, micro, accum, measured):
    """docs/gpu.md, "GPU figures (measured)": 2026-11-25, one H100, musicgen-small, 1,500 frames, bf16."""
    cfg = load_config(write_config(tmp_path, {"model": {"source": "pretrained"}, "data": {"frames": 1500},
                                              "train": {"batch_size": micro, "grad_accum_steps": accum}}))
    row = plan.plan_row(SMALL, plan.gpu_named("H100"), cfg, 8000, None, None)
    assert (row.micro_batch, row.gradient_checkpointing, row.mfu_basis.split()[0]) == (micro, False, "measured")
    assert row.samples_per_s == pytest.approx(measured, rel=0.10)


def test_plan_shows_what_the_worker_chooses_and_the_host_memory(tmp_path):
    cfg = load_config(PROD_TOML)
    for g in plan.GPUS:
        row = plan.plan_row(SMALL, g, cfg, 8000, None, None)
        layout = speed.layout_for(cfg, SMALL, row.precision, int(g.memory_gib * GIB))
        assert (row.micro_batch, row.grad_accum, row.gradient_checkpointing) == \
            (layout.micro_batch, layout.grad_accum, layout.checkpointing)
    t4 = plan.plan_row(SMALL, plan.gpu_named("T4"), cfg, 8000, None, None, valid=2000)
    # musicgen-small with AdamW: a 5.0 GB copy (4.7 GiB), the data, a process: under a g4dn.xlarge's 16 GiB
    assert t4.snapshot_gib == pytest.approx(4.7, abs=0.05) and t4.host_gib == 16
    assert t4.snapshot_gib < t4.host_gib_needed < 10 and t4.async_checkpoints
    big = memory.host(SMALL, 1500, 64, 200_000)  # 200,000 clips held in RAM: no room for the copy
    assert not big.snapshot_fits(16 * GIB)


def test_compile_auto_compiles_when_the_steps_left_pay_for_it():
    step_s = 32 / 84.6  # the H100 at 32 x 1
    even = speed.break_even_steps(step_s)
    assert 1000 < even < 5000  # 120 s of compiling won back at 16 % faster steps
    assert not speed.compile_pays(1500, step_s)  # the 2,413-clip proxy subset's 20 epochs at 32 a step
    assert speed.compile_pays(5000, step_s)      # 8,000 clips x 20 epochs
    assert speed.compile_pays(200, 8.0)          # a T4's slow steps pay for it sooner


@pytest.mark.parametrize("value, want", [("auto", False), (True, True), (False, False)])
def test_the_worker_never_compiles_by_auto_on_the_cpu_and_says_so(tmp_path, value, want):
    cfg = load_config(write_config(tmp_path))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=value))
    layout = speed.layout_for(cfg, SMALL, "fp32", None)
    log = RecordingLog()
    assert setup.wants_compile(cfg, SMALL, layout, "fp32", torch.device("cpu"), 1, 10**6, log) is want
    if value == "auto":
        assert log.names()[0] == "train.compile" and "CPU" in log.events[0][2]["reason"]


@pytest.mark.slow
def test_a_worker_with_batch_size_auto_trains_the_curve_of_the_same_clips_per_step(tmp_path):
    """On the CPU "auto" takes 8 x 1 for 8 clips a step; the curve is the 4 x 2 one (the same clips
    in the same order; the sums cut differently: 1e-5), and compile = "auto" stays eager, said once."""
    import json
    import subprocess
    import sys

    from test_exact_resume import heartbeat, losses

    quiet = {"model": {"tiny": {"dropout": 0.0}}}  # dropout masks are drawn per micro-batch
    auto, fixed = tmp_path / "auto", tmp_path / "fixed"
    auto.mkdir(), fixed.mkdir()
    runs = [subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(config), "--log-format", "json"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for config in (write_config(auto, quiet, {"train": {"batch_size": "auto", "clips_per_step": 8,
                                                                "grad_accum_steps": 4, "compile": "auto"}}),
                           write_config(fixed, quiet, {"train": {"batch_size": 4, "grad_accum_steps": 2}}))]
    outs = [r.communicate(timeout=180)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    beat = heartbeat(auto / "state")
    assert (beat["micro_batch"], beat["grad_accum"]) == (8, 1)
    compiled = [json.loads(line[line.index("{"):]) for line in outs[0].splitlines() if '"train.compile"' in line]
    assert len(compiled) == 1 and compiled[0]["compile"] is False
    got, want = losses(auto / "logs" / "tensorboard" / "train"), losses(fixed / "logs" / "tensorboard" / "train")
    assert [s for s, _ in got["train/loss"]] == [s for s, _ in want["train/loss"]] == list(range(1, 25))
    assert [v for _, v in got["train/loss"]] == pytest.approx([v for _, v in want["train/loss"]], abs=1e-5)
