"""How fast a step runs, and the fastest step that fits: the throughput model under `plan`'s
hours, `[train] batch_size = "auto"` and `compile = "auto"`. Standard library only, like memory.py.

MFU (model FLOPs, memory.Arch.flops_per_sample, over the GPU's dense peak in the precision it
trains in) by GPU class and per-GPU micro-batch, eager, no gradient checkpointing:

- H100: measured 2026-11-25 on one H100 80GB HBM3, torch 2.11.0+cu130, musicgen-small, 1,500
  frames, 64 text tokens, bf16 (docs/gpu.md, "GPU figures (measured)"; `scripts/bench/gpu_session.sh`):
  28.5 % at micro-batch 8 (71.1 samples/s), 32.4 % at 16 (80.8), 34.0 % at 32 (84.6).
- every other class (T4, A10G, L4, A100): not measured; estimated with the H100's curve.

Between measured micro-batches MFU is interpolated in log2(micro-batch); below the smallest it
falls per halving by the first interval's step (assumed: nothing under 8 was measured); above the
largest it stays. Gradient checkpointing does a third more work for the same model FLOPs.

`compile = "auto"` compiles on a GPU when the steps this worker has left save more time than the
compilation costs, at COMPILE_GAIN faster steps for COMPILE_S of compiling: both assumed, not
measured (the H100 session timed 15 steps after 3 of warm-up, and compiled was slower, 22.0 % vs
28.5 % MFU: compilation not amortised in 18 steps); gpu_session.sh measures both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import memory

RECOMPUTE = 4 / 3  # checkpointing runs each layer's forward twice: 4 units of work instead of 3
# Assumed, not measured: torch.compile's steady gain (torchtitan reports +16 % throughput on its
# transformer) and the seconds a start spends compiling musicgen-small's step (ours: unknown).
COMPILE_GAIN = 0.16
COMPILE_S = 120.0
CPU_MAX_MICRO = 8  # clips a process, batch_size = "auto" on the CPU: larger ones buy a CPU nothing


@dataclass(frozen=True)
class Curve:
    """MFU by per-GPU micro-batch, eager, no checkpointing; `basis` says whether it was measured."""

    points: tuple[tuple[int, float], ...]  # (micro-batch, MFU), ascending
    basis: str

    def at(self, micro: int) -> float:
        (m0, f0), (m1, f1) = self.points[0], self.points[min(1, len(self.points) - 1)]
        if micro <= m0:  # below what was measured: the first interval's drop per halving, kept
            drop = (f1 - f0) / math.log2(m1 / m0) if m1 > m0 else 0.0
            return max(0.01, f0 - drop * math.log2(m0 / max(micro, 1)))
        for (a, fa), (b, fb) in zip(self.points, self.points[1:]):
            if micro <= b:
                return fa + (fb - fa) * math.log2(micro / a) / math.log2(b / a)
        return self.points[-1][1]


H100 = Curve(((8, 0.285), (16, 0.324), (32, 0.340)),
             "measured on an H100 80GB HBM3, 2026-11-25, torch 2.11.0+cu130 (docs/gpu.md, GPU figures)")
MEASURED = {"H100": H100}


def curve(gpu: str) -> Curve:
    """The GPU class's curve: measured, or the H100's as its estimate."""
    return MEASURED.get(gpu) or Curve(H100.points, f"estimated: the H100's measured curve (not measured on a {gpu})")


def samples_per_s(arch: memory.Arch, frames: int, text_tokens: int, gpu: str, peak_tflops: float, micro: int,
                  checkpointing: bool, nproc: int = 1, mfu: float | None = None) -> float:
    """Clips a second on nproc GPUs of a class, each at per-GPU micro-batch `micro` (`mfu` fixed, or the curve's)."""
    rate = mfu if mfu is not None else curve(gpu).at(micro)
    work = arch.flops_per_sample(frames, text_tokens) * (RECOMPUTE if checkpointing else 1)
    return peak_tflops * 1e12 * rate * nproc / work


def fastest_layout(arch: memory.Arch, frames: int, text_tokens: int, dtype: str, clips: int, checkpointing: str,
                   gpu_memory: int | None, world: int = 1, shards: int = 1) -> memory.Layout:
    """batch_size = "auto": of the micro-batches that divide the step's `clips` (multiples of `world`,
    each GPU taking 1/world of one), with and without checkpointing as `checkpointing` allows, the
    layout whose step the curve says is fastest among those that fit `gpu_memory` bytes per GPU
    (`shards`: FSDP's sharded state); ties go to the larger micro-batch. None (the CPU): the largest
    up to CPU_MAX_MICRO a process. When nothing fits, the smallest, fits=False (a CUDA OOM then backs off)."""
    options = {"auto": (False, True), "on": (True,), "off": (False,)}[checkpointing]
    largest = clips if gpu_memory is not None else CPU_MAX_MICRO * world
    best: memory.Layout | None = None
    last: memory.Layout | None = None
    for micro in (d for d in range(min(clips, largest), 0, -1) if clips % d == 0 and d % world == 0):
        for ckpt in options:
            est = memory.estimate(arch, micro // world, frames, text_tokens, dtype, ckpt, clips // micro)
            est = memory.sharded(est, shards) if shards > 1 else est
            last = memory.Layout(micro, clips // micro, ckpt, est, gpu_memory is None or est.gpu_total() <= gpu_memory)
            if last.fits and (best is None or _relative(last, world) > _relative(best, world)):
                best = last
    if best is None and last is None:
        raise ValueError(f"no micro-batch divides {clips} clips into {world} equal slices")
    return best or last  # type: ignore[return-value]


def _relative(layout: memory.Layout, world: int) -> float:
    return H100.at(layout.micro_batch // world) / (RECOMPUTE if layout.checkpointing else 1)


def compile_pays(steps_left: int, step_s: float) -> bool:
    """Whether compiling saves more time over the steps left than it costs (the assumptions above)."""
    return steps_left >= break_even_steps(step_s)


def break_even_steps(step_s: float) -> int:
    """Steps after which COMPILE_S of compiling is won back at COMPILE_GAIN faster steps."""
    saved = step_s * (1 - 1 / (1 + COMPILE_GAIN))
    return math.ceil(COMPILE_S / saved) if saved > 0 else 2**62


def layout_for(cfg, arch: memory.Arch, dtype: str, gpu_memory: int | None, world: int = 1) -> memory.Layout:
    """How a worker of this config cuts its step on `world` GPUs of `gpu_memory` bytes each (None:
    the CPU): what the worker starts with and what `plan` shows. micro_batch is the whole group's
    (each GPU takes 1/world of it). A numeric batch_size: memory.choose_layout on this GPU's slice."""
    t, d = cfg.train, cfg.data
    shards = world if t.strategy == "fsdp" and world > 1 else 1
    if t.batch_size == "auto":
        return fastest_layout(arch, d.frames, d.text_max_tokens, dtype, t.per_step, t.gradient_checkpointing,
                              gpu_memory, world, shards)
    share = max(1, t.batch_size // world)
    layout = memory.choose_layout(arch, d.frames, d.text_max_tokens, dtype, share, t.grad_accum_steps,
                                  t.gradient_checkpointing, gpu_memory)
    est = memory.sharded(layout.estimate, shards) if shards > 1 else layout.estimate
    micro = layout.micro_batch * world
    return memory.Layout(micro, t.per_step // micro, layout.checkpointing, est,
                         gpu_memory is None or est.gpu_total() <= gpu_memory)
