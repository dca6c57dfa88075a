"""What the worker settles before its first step: the device, the precision by the GPU's compute
capability, the learning-rate schedule, and the test hook that stands in for a CUDA OOM."""
from __future__ import annotations

import math

import torch

from daemon.common.config import Config, ConfigError

from . import precision

# A test hook, never set in production: "N" makes every micro-batch of more than N clips raise
# torch.OutOfMemoryError as CUDA would; "N@S" only from optimizer step S on; "N@S@R" only on rank R.
TEST_OOM_ABOVE = "AMAPIANO_TEST_OOM_ABOVE"


class DoesNotFit(RuntimeError):
    """CUDA ran out of memory at micro-batch 1: no back-off is left, and a restart cannot help."""


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


def test_oom_hook(value: str | None) -> tuple[int, int, int | None] | None:
    """AMAPIANO_TEST_OOM_ABOVE's (clips, from_step, rank or None for every rank), or None when unset."""
    if not value:
        return None
    above, _, rest = value.partition("@")
    step, _, rank = rest.partition("@")
    return int(above), int(step or 0), int(rank) if rank else None


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warm-up, then cosine decay to min_ratio of the peak."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f
