#!/usr/bin/env python3
"""Trainer throughput: the worker's own optimizer step (Trainer.train_step), timed after a warm-up.
Prints samples/s, tokens/s, and on a GPU the MFU against that GPU's peak, `plan`'s estimate for the
same GPU, layout and precision beside it (trainer/worker/speed.py; the error in %), peak memory
beside the memory model's estimate, and NVML utilisation. The goal for musicgen-small on an
H100/H200 in bf16: MFU >= 45 %, measured over >= 100 steps after warm-up (--real's default). On the
CPU it runs the same step (the tiny model unless --real) and says that no GPU figure was measured.

    .venv/bin/python scripts/bench/throughput.py                       # the tests' tiny model (CPU)
    .venv/bin/python scripts/bench/throughput.py --real                # musicgen-small's architecture,
                                                                        # random weights, random codes, 100 steps
    .venv/bin/python scripts/bench/throughput.py --real --compile --warmup 10 --json out.json

MFU = model FLOPs/s / peak. Model FLOPs per clip (trainer/worker/memory.py Arch.flops_per_sample)
count only per-position work at every audio position: 6 x the matmul parameters applied there
(self-attention, cross-attention Q and output, FFN, output heads; not the cross-attention K/V,
which run on the 64 text tokens and are counted there, not the embeddings, which are lookups)
plus the attention scores; checkpointing's recomputation is not counted. Peaks: the
precision the GPU trains in (fp16 on a T4, dense bf16 elsewhere), sources in trainer/worker/plan.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def bench_trainer(args, work: Path):
    """A Trainer set up as the worker would, on --config (default: the tests' tiny config) or, with
    --real, musicgen-small's architecture with random weights and random codes; state under work/."""
    import torch

    from daemon.common import log as logs
    from daemon.common.config import load_config
    from trainer.worker import memory
    from trainer.worker.data import Split
    from trainer.worker.model import random_base
    from trainer.worker.train import Trainer

    if args.config is None:
        from conftest import write_config

        args.config = write_config(work, {"train": {"epochs": 1000}})
    cfg = load_config(args.config)
    train = {"compile": args.compile}
    if args.batch_size:  # a fixed micro-batch; the clips per step stay the config's unless --grad-accum says
        train.update(batch_size=args.batch_size, clips_per_step=0,
                     grad_accum_steps=args.grad_accum or max(1, cfg.train.per_step // args.batch_size))
    elif args.grad_accum:
        train["grad_accum_steps"] = args.grad_accum
    if args.checkpointing:
        train["gradient_checkpointing"] = args.checkpointing
    if getattr(args, "precision", None):  # loop_overhead.py's arguments have none
        train["precision"] = args.precision
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, **train),
        run=dataclasses.replace(cfg.run, state_dir=work / "state", log_dir=work / "logs", cache_dir=work / "cache"),
        data=dataclasses.replace(cfg.data, source="synthetic") if args.synthetic else cfg.data)
    logs.configure("console", "warning")
    trainer = Trainer(cfg, logs.get("bench"))
    base = splits = None
    if args.real:
        arch = memory.MUSICGEN_SMALL
        base = random_base(arch)
        n = cfg.train.per_step * 4
        g = torch.Generator().manual_seed(0)
        split = Split(torch.randint(0, arch.vocab, (n, arch.codebooks, cfg.data.frames), generator=g, dtype=torch.int16),
                      torch.randn(n, cfg.data.text_max_tokens, arch.text_hidden, generator=g).half(),
                      torch.ones(n, cfg.data.text_max_tokens, dtype=torch.uint8))
        splits = (split, split)
    trainer.setup(base=base, splits=splits)
    trainer.window = (time.monotonic(), 0)
    return trainer


class Utilisation:
    """NVML GPU utilisation, sampled every 100 ms in a thread while the timed steps run."""

    def __init__(self, device_index: int):
        import pynvml

        pynvml.nvmlInit()
        self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(device_index)
        self.samples: list[int] = []
        self.memory_used: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            self.memory_used.append(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="default: the tests' tiny config")
    p.add_argument("--synthetic", action="store_true", help="synthetic codes instead of the token cache")
    p.add_argument("--real", action="store_true", help="musicgen-small's architecture, random weights and codes")
    p.add_argument("--compile", action="store_true", help="[train] compile = true")
    p.add_argument("--batch-size", type=int, help="a fixed micro-batch instead of [train] batch_size")
    p.add_argument("--grad-accum", type=int, help="override [train] grad_accum_steps")
    p.add_argument("--checkpointing", choices=("auto", "on", "off"), help="override [train] gradient_checkpointing")
    p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"),
                   help="override [train] precision (fp16: the T4's layout on a larger GPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 100 with --real, else 20)")
    p.add_argument("--warmup", type=int, default=3, help="steps before the timing (compilation, autotuning)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    args.steps = args.steps or (100 if args.real else 20)
    import torch

    from trainer.worker import memory

    work = Path(tempfile.mkdtemp(prefix="bench-tp-"))
    tr = bench_trainer(args, work)
    cuda = tr.device.type == "cuda"
    cfg, t = tr.cfg, tr.cfg.train
    arch = memory.MUSICGEN_SMALL if args.real else memory.arch_of_config(cfg)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    started = time.perf_counter()
    for _ in range(args.warmup):  # compilation, cuDNN/cuBLAS autotuning, the allocator's first growth
        tr.train_step()
    tr.step_loss()
    sync()
    warmup_s = time.perf_counter() - started
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    util = None
    if cuda:
        try:
            util = Utilisation(torch.cuda.current_device())
        except Exception as e:  # no NVML: utilisation unknown, not 0
            print(f"NVML unavailable: {type(e).__name__}: {e}")
    t0 = time.perf_counter()
    with util or _Null():
        for i in range(args.steps):
            tr.train_step()
            if (i + 1) % t.log_every == 0:
                tr.step_loss()  # what the worker syncs for: one read per log interval
        tr.step_loss()
        sync()
    seconds = time.perf_counter() - t0

    samples_s = args.steps * tr.per_step / seconds
    positions = arch.positions(cfg.data.frames)
    flops = samples_s * arch.flops_per_sample(cfg.data.frames, cfg.data.text_max_tokens)
    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if cuda else "cpu", "precision": tr.precision.dtype,
        "compile": t.compile, "parameters": arch.parameters, "frames": cfg.data.frames,
        "micro_batch": tr.micro, "grad_accum": tr.per_step // tr.micro, "gradient_checkpointing": tr.checkpointing,
        "steps": args.steps, "warmup_s": round(warmup_s, 1), "seconds": round(seconds, 2),
        "samples_per_s": round(samples_s, 3), "tokens_per_s": round(samples_s * positions),
        "model_tflops_per_s": round(flops / 1e12, 2), "loss": tr.p.loss,
    }
    print(f"machine: {figures['machine']}, torch {torch.__version__}, device {figures['device']}, "
          f"{tr.precision.dtype}, compile {t.compile}")
    print(f"model: {arch.parameters / 1e6:.1f} M trainable parameters ({arch.per_position_parameters / 1e6:.1f} M "
          f"per position), {arch.layers} layers x {arch.hidden}; {cfg.data.frames} frames a clip; micro-batch "
          f"{tr.micro} x {tr.per_step // tr.micro}, checkpointing {'on' if tr.checkpointing else 'off'}")
    print(f"throughput: {samples_s:.2f} samples/s, {samples_s * positions:,.0f} tokens/s, "
          f"{args.steps / seconds:.2f} optimizer steps/s ({flops / 1e12:.1f} model TFLOP/s)")
    if cuda:
        gpu_figures(figures, tr, arch, util, samples_s, flops)
    else:
        figures["gpu"] = "not measured"
        print("GPU figures: not measured (no CUDA device here): MFU, plan's estimate beside it and peak GPU memory "
              "need a GPU; run scripts/bench/gpu_session.sh on one")
    hours = 20 * 8000 / samples_s / 3600
    figures["hours_20_epochs_8000_clips"] = round(hours, 2)
    print(f"20 epochs of 8,000 clips at this pace: {hours:.2f} h")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


def gpu_figures(figures: dict, tr, arch, util, samples_s: float, flops: float) -> None:
    """MFU, plan's estimate for this GPU and layout beside the measured samples/s, peak memory, NVML."""
    import torch

    from trainer.worker import memory, plan, speed

    cfg = tr.cfg
    try:
        gpu = plan.gpu_named(torch.cuda.get_device_name())
    except ValueError:
        print("MFU: unknown peak for this GPU (add it to trainer/worker/plan.py)")
        gpu = None
    if gpu is not None:
        peak = plan.peak_tflops(gpu, tr.precision.dtype)
        figures.update(mfu=round(flops / (peak * 1e12), 4), peak_tflops=peak, peak_from=gpu.name)
        print(f"MFU: {100 * figures['mfu']:.1f} % of {peak:g} TFLOP/s ({gpu.name} peak, {tr.precision.dtype})")
        share = tr.micro // tr.dist.world
        est = speed.samples_per_s(arch, cfg.data.frames, cfg.data.text_max_tokens, gpu.name, peak, share,
                                  tr.checkpointing)
        basis = speed.curve(gpu.name)
        figures.update(plan_samples_per_s=round(est, 2), plan_mfu=round(basis.at(share), 4), plan_basis=basis.basis,
                       plan_error_pct=round(100 * (est - samples_s) / samples_s, 1))
        print(f"plan's estimate: {est:.2f} samples/s, MFU {100 * basis.at(share):.1f} % ({basis.basis}); "
              f"error {figures['plan_error_pct']:+.1f} % against the measured {samples_s:.2f} samples/s (goal: within 10 %)")
    est = tr.layout.estimate if tr.micro == tr.layout.micro_batch else memory.estimate(
        arch, tr.micro, cfg.data.frames, cfg.data.text_max_tokens, tr.precision.dtype, tr.checkpointing,
        tr.per_step // tr.micro)
    figures.update(max_allocated_gib=round(torch.cuda.max_memory_allocated() / memory.GIB, 2),
                   max_reserved_gib=round(torch.cuda.max_memory_reserved() / memory.GIB, 2),
                   estimate_gib=round(est.peak / memory.GIB, 2),
                   estimate_gpu_total_gib=round(est.gpu_total() / memory.GIB, 2))
    print(f"peak memory: {figures['max_allocated_gib']} GiB allocated, {figures['max_reserved_gib']} GiB reserved "
          f"(estimate {figures['estimate_gib']} GiB of tensors, {figures['estimate_gpu_total_gib']} GiB in all)")
    if util is not None and util.samples:
        figures.update(nvml_util_pct=round(sum(util.samples) / len(util.samples), 1),
                       nvml_memory_used_gib=round(max(util.memory_used) / memory.GIB, 2))
        print(f"NVML: GPU utilisation {figures['nvml_util_pct']} % during the steps, "
              f"{figures['nvml_memory_used_gib']} GiB used at most")


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


if __name__ == "__main__":
    sys.exit(main())
