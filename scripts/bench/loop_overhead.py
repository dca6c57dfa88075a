#!/usr/bin/env python3
"""The worker loop's own overhead: Trainer.train_step (with its log-interval loss read) against a
bare forward/backward/step loop of the same model, optimizer and data, measured side by side in
alternated blocks. Goal: under 3 % (ratio <= 1.03).

The bare loop does only what any training must: autocast forward (same attention kernels),
backward through the same grad scaler, optimizer step, zero_grad; it copies each micro-batch to
the device the plain way. The worker adds gradient clipping, the LR schedule, the device-side loss
sum read once per log interval, the pinned background copies and its bookkeeping.

    .venv/bin/python scripts/bench/loop_overhead.py                    # tiny model, 200 frames, CPU
    .venv/bin/python scripts/bench/loop_overhead.py --real --config etc/amapiano-train/config.toml
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="default: the tests' tiny config at 200 frames")
    p.add_argument("--real", action="store_true", help="musicgen-small's architecture, random weights and codes")
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--checkpointing", choices=("auto", "on", "off"))
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per block")
    p.add_argument("--blocks", type=int, default=5, help="alternated blocks of each loop")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    import contextlib

    import torch
    from throughput import bench_trainer

    from trainer.worker.data import epoch_order, micro_batches

    work = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    if args.config is None and not args.real:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
        from conftest import write_config

        args.config = write_config(work, {"train": {"epochs": 1000, "log_every": 10},
                                          "data": {"frames": 200, "synthetic_train_clips": 64}})
    tr = bench_trainer(args, work)
    cuda = tr.device.type == "cuda"
    model, opt, scaler, split = tr.model, tr.optimizer, tr.scaler, tr.train_split
    accum = tr.per_step // tr.micro

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def bare(step: int) -> None:
        epoch, in_epoch = divmod(step, tr.steps_per_epoch)
        order = epoch_order(len(split), tr.cfg.run.seed, epoch)
        for idx in micro_batches(order, in_epoch, tr.micro, accum):
            with tr.attention(), tr.autocast():
                loss = model(*split.batch(idx, tr.device)) / accum
            scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    def worker(_step: int) -> None:
        tr.train_step()
        if tr.p.step % tr.t.log_every == 0:
            tr.step_loss()

    def block(fn) -> float:
        sync()
        t0 = time.perf_counter()
        for i in range(args.steps):
            fn(tr.p.step + i)
        tr.step_loss()
        sync()
        return (time.perf_counter() - t0) / args.steps

    for fn in (bare, worker):  # warm-up: compilation, autotuning, allocator growth
        block(fn)
    times: dict[str, list[float]] = {"bare": [], "worker": []}
    for _ in range(args.blocks):
        times["bare"].append(block(bare))
        times["worker"].append(block(worker))
    ratios = [w / b for w, b in zip(times["worker"], times["bare"])]
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "precision": tr.precision.dtype,
              "micro_batch": tr.micro, "grad_accum": accum, "steps_per_block": args.steps, "blocks": args.blocks,
              "bare_s_per_step": statistics.median(times["bare"]), "worker_s_per_step": statistics.median(times["worker"]),
              "ratio": statistics.median(ratios), "ratios": [round(r, 4) for r in ratios]}
    print(f"device {result['device']}, {tr.precision.dtype}, micro-batch {tr.micro} x {accum}, "
          f"{args.blocks} alternated blocks of {args.steps} steps")
    print(f"bare forward/backward/step: {result['bare_s_per_step'] * 1e3:8.1f} ms a step (median)")
    print(f"worker Trainer.train_step:  {result['worker_s_per_step'] * 1e3:8.1f} ms a step (median)")
    print(f"overhead ratio (worker / bare, median of blocks): {result['ratio']:.3f} "
          f"(blocks: {', '.join(f'{r:.3f}' for r in ratios)}; goal <= 1.03)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    with contextlib.suppress(OSError):
        import shutil

        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
