#!/usr/bin/env python3
"""Peak memory of one real optimizer step, next to trainer/worker/memory.py's estimate for it.

Builds the trainable part of MusicGen (musicgen-small's architecture, random weights; --layers
to shorten it), gives AdamW its moments first (steady state, as in a long run), then runs one
optimizer step of --grad-accum micro-batches and prints one JSON line: the estimate and the
measurement, both in GiB.

What is measured is what the estimate counts, the tensors:
  CPU:  growth of the resident set (VmHWM, reset through /proc/self/clear_refs) over the
        process before the model was built, with glibc told to give freed tensors back to the
        kernel (mallopt M_MMAP_THRESHOLD) so that its heap does not keep them.
  CUDA: torch.cuda.max_memory_allocated (+ reserved, and NVML's used memory for the card).

    .venv/bin/python scripts/bench/memory_probe.py --micro-batch 1
    .venv/bin/python scripts/bench/memory_probe.py --device cuda --micro-batch 8 --grad-accum 4
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def glibc_returns_freed_memory() -> None:
    """From here on, tensors of 4 MiB and more are mmapped and unmapped when freed, so the resident
    set follows the live tensors instead of glibc's heap (which keeps what it once held)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD (fixed: no dynamic growth)
    libc.malloc_trim(0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--frames", type=int, default=1500)
    p.add_argument("--text-tokens", type=int, default=64)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    p.add_argument("--checkpointing", choices=("on", "off"), default="off")
    p.add_argument("--layers", type=int, default=0, help="0: the real 24")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    import torch

    from trainer.worker import memory, precision
    from trainer.worker.model import random_trainable

    if args.threads:
        torch.set_num_threads(args.threads)
    arch = memory.MUSICGEN_SMALL
    if args.layers:
        arch = dataclasses.replace(arch, layers=args.layers)
    device = torch.device(args.device)
    prec = precision.choose(precision.capability_of(device), args.precision)
    precision.apply(prec)
    dtype = precision.torch_dtype(prec)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, arch.vocab, (args.micro_batch, arch.codebooks, args.frames), generator=g),
                torch.randn(args.micro_batch, args.text_tokens, arch.text_hidden, generator=g),
                torch.ones(args.micro_batch, args.text_tokens, dtype=torch.long)) for _ in range(args.grad_accum)]
    torch.ones(64, 64) @ torch.ones(64, 64)  # the BLAS's own buffers belong to the baseline
    base = status("VmRSS")

    started = time.perf_counter()
    model = random_trainable(arch).to(device).train()
    model.prepare(args.checkpointing == "on")
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    # The moments exist from the first step on: measure a steady-state step. On the CPU they are
    # made directly (AdamW's own state layout): a zero-gradient step costs half a minute of page
    # faults there under MALLOC_MMAP_THRESHOLD_.
    if device.type == "cpu":
        for q in params:
            opt.state[q] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(q),
                            "exp_avg_sq": torch.zeros_like(q)}
    else:
        for q in params:
            q.grad = torch.zeros_like(q)
        opt.step()
        opt.zero_grad(set_to_none=True)
    batches = [tuple(t.to(device) for t in b) for b in batches]
    scaler = torch.amp.GradScaler(device.type, enabled=prec.grad_scaler)
    precision.apply_attention_backends(prec)  # process-wide, as the worker does
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        glibc_returns_freed_memory()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    built = time.perf_counter()

    for b in batches:
        with torch.autocast(device.type, dtype=dtype, enabled=prec.autocast):
            loss = model(*b) / len(batches)
        scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)

    result = {"device": args.device, "precision": prec.dtype, "micro_batch": args.micro_batch,
              "grad_accum": args.grad_accum, "frames": args.frames, "text_tokens": args.text_tokens,
              "layers": arch.layers, "checkpointing": args.checkpointing == "on",
              "parameters": sum(q.numel() for q in params)}
    if device.type == "cuda":
        torch.cuda.synchronize()
        result["measured_gib"] = torch.cuda.max_memory_allocated() / memory.GIB
        result["reserved_gib"] = torch.cuda.max_memory_reserved() / memory.GIB
        result["gpu"] = torch.cuda.get_device_name()
        try:
            import pynvml

            pynvml.nvmlInit()
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device()))
            result["nvml_used_gib"] = info.used / memory.GIB
        except Exception as e:  # NVML missing is an unknown, not a zero
            result["nvml_used_gib"] = None
            result["nvml_error"] = f"{type(e).__name__}: {e}"
    else:
        result["measured_gib"] = (status("VmHWM") - base) / memory.GIB
    est = memory.estimate(arch, args.micro_batch, args.frames, args.text_tokens, prec.dtype,
                          args.checkpointing == "on", args.grad_accum)
    result["estimate_gib"] = est.peak / memory.GIB
    result["estimate_gpu_total_gib"] = est.gpu_total() / memory.GIB
    result["estimate_parts_gib"] = est.as_gib()
    result["ratio"] = result["estimate_gib"] / result["measured_gib"]
    result["seconds"] = {"build": round(built - started, 1), "step": round(time.perf_counter() - built, 1)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
