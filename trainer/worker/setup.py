"""What the worker settles before its first step: the device, the precision by the GPU's compute
capability, how the step is cut (micro-batch x accumulation, gradient checkpointing), the
learning-rate schedule, and the test hook that stands in for a CUDA OOM."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from daemon.common import oom
from daemon.common.config import Config, ConfigError

from . import backoff, memory, precision
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


def plan_step(cfg: Config, arch: memory.Arch, dtype: str, device: torch.device, dist: Any, clips: int,
              log: Any) -> StepPlan:
    """The configured micro-batch (smaller where a group's CUDA OOM record says so) and gradient
    checkpointing where the memory model says it does not fit this GPU without; when nothing fits
    at that micro-batch, checkpointing on (unless "off") and a CUDA OOM halves it."""
    t = cfg.train
    per_step = t.batch_size * t.grad_accum_steps
    if clips // per_step == 0:
        raise ConfigError(f"{cfg.source}: [train] batch_size * grad_accum_steps = {per_step} is more than "
                          f"the {clips} training clips; one optimizer step needs that many")
    micro, backoffs = t.batch_size, 0  # until a CUDA OOM halves it
    earlier = backoff.recorded(cfg.run.state_dir, dist, per_step)  # a group's OOM before this start
    if earlier is not None and earlier.micro_batch < micro:
        micro, backoffs = earlier.micro_batch, earlier.oom_backoffs
        log.warning("train.oom_backoff_kept", micro_batch=micro, grad_accum=per_step // micro,
                    since_step=earlier.step, rank=earlier.rank, record=str(oom.path(cfg.run.state_dir)))
    gpu = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    layout = memory.choose_layout(arch, cfg.data.frames, cfg.data.text_max_tokens, dtype, t.batch_size,
                                  t.grad_accum_steps, t.gradient_checkpointing, gpu)
    checkpointing = layout.checkpointing if layout.micro_batch == t.batch_size else \
        t.gradient_checkpointing != "off"  # nothing fits at this micro-batch: save what can be saved
    return StepPlan(per_step, micro, backoffs, layout, checkpointing)
