"""What the worker settles before its first step: the device, the precision by the GPU's compute
capability, how the step is cut (micro-batch x accumulation, gradient checkpointing), the
learning-rate schedule, and the test hook that stands in for a CUDA OOM."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from daemon.common import oom
from daemon.common.checkpoints import newest
from daemon.common.config import Config, ConfigError
from daemon.common.config_rules import step_words

from . import backoff, memory, plan, precision, speed
from .backoff import DoesNotFit  # noqa: F401 - re-exported

# A test hook, never set in production: "N" makes every micro-batch of more than N clips raise
# torch.OutOfMemoryError as CUDA would; "N@S" only from optimizer step S on; "N@S@R" only on rank R.
TEST_OOM_ABOVE = "AMAPIANO_TEST_OOM_ABOVE"


def pick_device(cfg: Config) -> torch.device:
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{cfg.source}: [train] device is \"cuda\" but torch sees no CUDA device")
    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def pick_precision(cfg: Config, device: torch.device) -> precision.Precision:
    """precision.choose for this device; a precision it cannot run is a config error."""
    try:
        return precision.choose(precision.capability_of(device), cfg.train.precision)
    except precision.PrecisionError as e:
        raise ConfigError(f"{cfg.source}: {e}") from None


def pick_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    return precision.torch_dtype(pick_precision(cfg, device))


def test_oom_hook(value: str | None, log: Any) -> Any:
    """AMAPIANO_TEST_OOM_ABOVE ("N", "N@S", "N@S@R") as a check(clips, step, rank) that raises
    torch.OutOfMemoryError as CUDA would; None when unset."""
    if not value:
        return None
    above, _, rest = value.partition("@")
    step, _, rank = rest.partition("@")
    limit, start, only = int(above), int(step or 0), int(rank) if rank else None
    log.warning("train.test_hook", hook=TEST_OOM_ABOVE, above=limit, from_step=start)

    def check(clips: int, at: int, on: int) -> None:
        if clips > limit and at >= start and only in (None, on):
            raise torch.OutOfMemoryError(f"CUDA out of memory (test hook {TEST_OOM_ABOVE}: {clips} clips > {limit})")
    return check


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warm-up, then cosine decay to min_ratio of the peak."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


@dataclass(frozen=True)
class StepPlan:
    """How the worker cuts its optimizer step; `per_step` (clips per step) never changes."""

    per_step: int
    micro: int
    oom_backoffs: int
    layout: memory.Layout
    checkpointing: bool
    compile: bool


def plan_step(cfg: Config, arch: memory.Arch, dtype: str, device: torch.device, dist: Any, clips: int,
              log: Any) -> StepPlan:
    """The micro-batch (batch_size, or with "auto" the fastest that fits this GPU: speed.py), smaller
    where a group's CUDA OOM record says so; gradient checkpointing where the memory model says the
    step does not fit without (when nothing fits, on unless "off", and a CUDA OOM halves the
    micro-batch); torch.compile where asked, or ("auto") where the steps left pay for it."""
    t = cfg.train
    per_step = t.per_step
    if clips // per_step == 0:
        raise ConfigError(f"{cfg.source}: [train] {step_words(t)} = {per_step} is more than the {clips} training "
                          "clips; one optimizer step needs that many")
    gpu = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    layout = speed.layout_for(cfg, arch, dtype, gpu, dist.world)
    micro, backoffs = (layout.micro_batch if t.batch_size == "auto" else t.batch_size), 0  # until a CUDA OOM
    checkpointing = layout.checkpointing if layout.micro_batch == micro else \
        t.gradient_checkpointing != "off"  # nothing fits at this micro-batch: save what can be saved
    earlier = backoff.recorded(cfg.run.state_dir, dist, per_step)  # a group's OOM before this start
    if earlier is not None and earlier.micro_batch < micro:
        micro, backoffs = earlier.micro_batch, earlier.oom_backoffs
        log.warning("train.oom_backoff_kept", micro_batch=micro, grad_accum=per_step // micro,
                    since_step=earlier.step, rank=earlier.rank, record=str(oom.path(cfg.run.state_dir)))
    steps_left = t.epochs * (clips // per_step) - getattr(newest(cfg.checkpoint_dir), "step", 0)
    return StepPlan(per_step, micro, backoffs, layout, checkpointing,
                    wants_compile(cfg, arch, layout, dtype, device, dist.world, steps_left, log))


def wants_compile(cfg: Config, arch: memory.Arch, layout: memory.Layout, dtype: str, device: torch.device,
                  world: int, steps_left: int, log: Any) -> bool:
    """[train] compile; "auto": on a GPU of a known class, when the steps left outlast the
    break-even of the throughput model's step time (speed.py's assumptions), said in the log."""
    t = cfg.train
    if t.compile != "auto":
        return t.compile
    try:
        gpu = plan.gpu_named(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    except ValueError:
        gpu = None
    if gpu is None:
        log.info("train.compile", compile=False, reason="compile = \"auto\": eager on the CPU or an unknown GPU")
        return False
    rate = speed.samples_per_s(arch, cfg.data.frames, cfg.data.text_max_tokens, gpu.name, plan.peak_tflops(gpu, dtype),
                               layout.micro_batch // world, layout.checkpointing, world)
    step_s = t.per_step / rate
    pays = speed.compile_pays(steps_left, step_s)
    log.info("train.compile", compile=pays, steps_left=steps_left, break_even_steps=speed.break_even_steps(step_s),
             step_s=round(step_s, 3), assumed=f"{speed.COMPILE_S:g} s to compile, {speed.COMPILE_GAIN:.0%} faster "
             "steps (not measured)")
    return pays
