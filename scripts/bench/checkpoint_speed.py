#!/usr/bin/env python3
"""Checkpoint save speed against the raw write speed of the same disk, in one run.

Builds a state the size of a model with its AdamW moments (default 100 M parameters, 1.2 GB;
MusicGen-small's trainable part is 420.4 M, ~5.0 GB with AdamW; --params scales it), then times
(a) a plain file of the same size written and fsynced, and (b) trainer.worker.checkpoint.save
(torch.save through the hashing writer: 4 MiB pieces SHA-256-hashed on a pool of threads beside
the write, fsync, rename, marker), alternated. Prints both, and the save's time over the plain write's (goal: <= 1.2).

    .venv/bin/python scripts/bench/checkpoint_speed.py [--params 100e6] [--dir /var/lib/amapiano-train]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=float, default=100e6, help="model parameters (fp32); AdamW adds 2x")
    p.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import torch

    from daemon.common import checkpoints as layout
    from trainer.worker import checkpoint

    n = int(args.params)
    chunk = 1 << 24
    tensors = {f"w{i}": torch.randn(min(chunk, n - i * chunk)) for i in range((n + chunk - 1) // chunk)}
    payload = {"model": tensors, "optimizer": {"exp_avg": {k: v.clone() for k, v in tensors.items()},
                                               "exp_avg_sq": {k: v.clone() for k, v in tensors.items()}}}
    size = 3 * n * 4
    work = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=args.dir))

    blob = memoryview(os.urandom(1 << 24))  # a view: slicing must not copy, or the CPU is what we time

    def raw_write() -> float:
        t0 = time.perf_counter()
        with open(work / "raw.bin", "wb") as f:
            written = 0
            while written < size:
                written += f.write(blob[: min(len(blob), size - written)])
            f.flush()
            os.fsync(f.fileno())
        seconds = time.perf_counter() - t0
        (work / "raw.bin").unlink()
        return seconds

    raws, saves = [], []
    for i in range(args.repeats):  # alternated, medians: this disk's speed varies run to run
        raws.append(raw_write())
        t0 = time.perf_counter()
        marker = checkpoint.save(work / "ckpt", i + 1, payload, {})
        saves.append(time.perf_counter() - t0)
        checkpoint.prune(work / "ckpt", 1)
    raw_s, save_s = statistics.median(raws), statistics.median(saves)
    t0 = time.perf_counter()
    checkpoint.load(marker)
    load_s = time.perf_counter() - t0

    mb = size / 1e6
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, disk {work}")
    print(f"state: {n / 1e6:.0f} M parameters + AdamW moments = {mb:,.0f} MB")
    print(f"medians of {args.repeats} alternated runs (raw: {', '.join(f'{x:.2f}' for x in raws)} s; "
          f"save: {', '.join(f'{x:.2f}' for x in saves)} s)")
    print(f"raw write + fsync:      {raw_s:6.2f} s  {mb / raw_s:8.0f} MB/s")
    print(f"checkpoint.save:        {save_s:6.2f} s  {marker.meta['bytes'] / 1e6 / save_s:8.0f} MB/s "
          f"(SHA-256 of 4 MiB pieces on {layout.hash_threads()} threads on the way out, fsync, rename, marker)")
    print(f"checkpoint.load+verify: {load_s:6.2f} s")
    print(f"save / raw speed: {(marker.meta['bytes'] / save_s) / (size / raw_s):.2f}")
    print(f"save time / raw write time (same bytes): {(save_s / marker.meta['bytes']) / (raw_s / size):.2f} "
          "(goal <= 1.2)")
    print(f"scaled to MusicGen-small with AdamW (420.4 M x 12 B = 5.0 GB): "
          f"{5.04e3 / (marker.meta['bytes'] / 1e6 / save_s):.1f} s (the Spot notice gives 120 s)")
    import shutil

    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
