#!/usr/bin/env python3
"""Trainer throughput: samples/s and tokens/s of full optimizer steps; on a GPU also MFU and NVML
utilisation. The goal for MusicGen-small on one H100 is 20 epochs of 8,000 30-s clips in under an
hour (MFU >= 40 %); this prints what the run would take at the measured pace.

    .venv/bin/python scripts/bench/throughput.py                  # the tiny model (CPU here)
    .venv/bin/python scripts/bench/throughput.py --config /etc/amapiano-train/config.toml \\
        --synthetic --steps 30                                    # the real model, synthetic codes

MFU = achieved FLOP/s / peak: training FLOPs per token taken as 6 x decoder parameters plus the
attention term 12 x layers x hidden x sequence (the usual estimate); peak dense bf16 by GPU name.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="default: the tests' tiny config")
    p.add_argument("--synthetic", action="store_true", help="synthetic codes instead of the token cache")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    import dataclasses

    import torch

    from daemon.common.config import load_config
    from trainer.worker.data import epoch_order, load_splits, micro_batches
    from trainer.worker.model import TrainableMusicgen, load_base_model
    from trainer.worker.train import pick_device, pick_dtype

    if args.config is None:
        from conftest import write_config

        args.config = write_config(Path(tempfile.mkdtemp(prefix="bench-tp-")))
    cfg = load_config(args.config)
    if args.synthetic:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source="synthetic"))
    device, dtype = pick_device(cfg), None
    dtype = pick_dtype(cfg, device)
    base, tokenizer = load_base_model(cfg)
    train, _ = load_splits(cfg, base, tokenizer)
    model = TrainableMusicgen(base).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    t = cfg.train
    per_step = t.batch_size * t.grad_accum_steps
    order = epoch_order(len(train), cfg.run.seed, 0)
    steps_per_epoch = len(train) // per_step

    def step(i):
        for idx in micro_batches(order, i % steps_per_epoch, t.batch_size, t.grad_accum_steps):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = model(*train.batch(idx, device)) / t.grad_accum_steps
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    nvml = None
    if device.type == "cuda":
        try:
            import pynvml

            pynvml.nvmlInit()
            nvml = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception:
            nvml = None
    for i in range(3):
        step(i)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    utils = []
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i + 3)
        if nvml is not None:
            utils.append(pynvml.nvmlDeviceGetUtilizationRates(nvml).gpu)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    dec = base.config.decoder
    seq = cfg.data.frames + dec.num_codebooks - 1
    tokens_per_sample = seq  # one decoder position per frame (all codebooks at once)
    samples_s = args.steps * per_step / seconds
    params = sum(p.numel() for p in model.decoder.parameters())
    flops_per_token = 6 * params + 12 * dec.num_hidden_layers * dec.hidden_size * seq
    achieved = samples_s * tokens_per_sample * flops_per_token
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "") + f", dtype {dtype}")
    print(f"model: decoder {params / 1e6:.1f} M parameters, {dec.num_hidden_layers} layers x {dec.hidden_size}, "
          f"{dec.num_codebooks} codebooks; {cfg.data.frames} frames a clip; batch {t.batch_size} x {t.grad_accum_steps}")
    print(f"throughput: {samples_s:.2f} samples/s, {samples_s * tokens_per_sample:,.0f} tokens/s, "
          f"{args.steps / seconds:.2f} optimizer steps/s")
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        if peak:
            print(f"MFU: {100 * achieved / (peak * 1e12):.1f} % of {peak:g} TFLOP/s (bf16 dense)")
        if utils:
            print(f"NVML GPU utilisation during the steps: {sum(utils) / len(utils):.0f} %")
    epochs_s = 20 * 8000 / samples_s
    print(f"20 epochs of 8,000 clips at this pace: {epochs_s / 3600:.1f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
