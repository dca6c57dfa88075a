#!/usr/bin/env python3
"""Checkpoint speed against the raw write speed of the same disk, in one run.

Builds a state the size of a model with its AdamW moments (default 100 M parameters, 1.2 GB;
MusicGen-small's trainable part is 420.4 M, ~5.0 GB with AdamW; --params scales it), then times,
alternated:
  (a) a plain file of the same size written and fsynced;
  (b) trainer.worker.checkpoint.save, blocking (torch.save through the hashing writer: 4 MiB pieces
      SHA-256-hashed on a pool of threads beside the write, fsync, rename, marker);
  (c) the worker's asynchronous save (trainer/worker/async_save.py): the time the training loop is
      blocked (the copy of the state into host memory, pinned on a GPU) and, in the background, the
      write to the marker, while the "training" goes on changing every live tensor.
Then loads what (c) wrote, verifies its SHA-256, and checks it holds the state of the moment it was
copied, not what training wrote after. Prints, among others, `stall / raw write: X` (goal on the
CPU: <= 0.25; on a GPU: <= 0.1).

    .venv/bin/python scripts/bench/checkpoint_speed.py [--params 100e6] [--dir /var/lib/amapiano-train] [--device cuda]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def state(n: int, device: str) -> dict:
    import torch

    chunk = 1 << 24
    tensors = {f"w{i}": torch.randn(min(chunk, n - i * chunk), device=device) for i in range((n + chunk - 1) // chunk)}
    return {"model": tensors, "optimizer": {"exp_avg": {k: v.clone() for k, v in tensors.items()},
                                            "exp_avg_sq": {k: v.clone() for k, v in tensors.items()}}}


def raw_write(path: Path, size: int, blob: memoryview) -> float:
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        written = 0
        while written < size:
            written += f.write(blob[: min(len(blob), size - written)])
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - t0
    path.unlink()
    return seconds


def tensors_of(payload: dict) -> list:
    return [*payload["model"].values(), *(t for group in payload["optimizer"].values() for t in group.values())]


def async_save(saver, work: Path, step: int, payload: dict) -> tuple[float, float, object]:
    """One save as the loop makes it: (seconds blocked, seconds to the marker, the marker). Training
    goes on meanwhile: every live tensor changes while the copy is written."""
    from trainer.worker import async_save as background

    t0 = time.perf_counter()
    saver.start(step, payload, background.commit_file(work / "async", step, {}, None, 1), since=time.monotonic())
    stall = time.perf_counter() - t0
    for t in tensors_of(payload):
        t.add_(1.0)
    done = saver.wait()
    return stall, time.perf_counter() - t0, done.marker


def check(marker, payload: dict) -> float:
    """Load and verify what the asynchronous save wrote: the state when it was copied (each live
    tensor has had 1.0 added since). Returns the seconds it took."""
    import torch

    from trainer.worker import checkpoint

    t0 = time.perf_counter()
    loaded = checkpoint.load(marker)  # size and SHA-256 first
    seconds = time.perf_counter() - t0
    for have, live in zip(tensors_of(loaded), tensors_of(payload)):
        if not torch.equal(have.to(live.device) + 1.0, live):
            raise SystemExit("the asynchronous checkpoint does not hold the state of the step it was taken at")
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=float, default=100e6, help="model parameters (fp32); AdamW adds 2x")
    p.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="where the live state is (cuda: the copy is pinned)")
    args = p.parse_args()
    import torch

    from daemon.common import checkpoints as layout
    from trainer.worker import checkpoint
    from trainer.worker.async_save import Saver

    n = int(args.params)
    payload, size = state(n, args.device), 3 * n * 4
    work = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=args.dir))
    blob = memoryview(os.urandom(1 << 24))  # a view: slicing must not copy, or the CPU is what we time
    saver = Saver(_Quiet(), torch.device(args.device))
    raws, saves, stalls, writes = [], [], [], []
    for i in range(args.repeats):  # alternated, medians: this disk's speed varies run to run
        raws.append(raw_write(work / "raw.bin", size, blob))
        t0 = time.perf_counter()
        marker = checkpoint.save(work / "ckpt", i + 1, {k: payload[k] for k in payload}, {})
        saves.append(time.perf_counter() - t0)
        checkpoint.prune(work / "ckpt", 1)
        stall, write, done = async_save(saver, work, i + 1, payload)
        stalls.append(stall)
        writes.append(write)
    raw_s, save_s, stall_s = statistics.median(raws), statistics.median(saves), statistics.median(stalls)
    load_s = check(done, payload)
    saver.close()

    mb = size / 1e6
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, disk {work}, "
          f"state on {args.device}")
    print(f"state: {n / 1e6:.0f} M parameters + AdamW moments = {mb:,.0f} MB")
    print(f"medians of {args.repeats} alternated runs (raw: {', '.join(f'{x:.2f}' for x in raws)} s; "
          f"save: {', '.join(f'{x:.2f}' for x in saves)} s; stall: {', '.join(f'{x:.3f}' for x in stalls)} s; "
          f"background write: {', '.join(f'{x:.2f}' for x in writes)} s)")
    print(f"raw write + fsync:      {raw_s:6.2f} s  {mb / raw_s:8.0f} MB/s")
    print(f"checkpoint.save:        {save_s:6.2f} s  {marker.meta['bytes'] / 1e6 / save_s:8.0f} MB/s "
          f"(blocking: SHA-256 of 4 MiB pieces on {layout.hash_threads()} threads on the way out, fsync, rename, marker)")
    print(f"asynchronous save:      {stall_s:6.3f} s blocked (the copy into host memory; the first "
          f"{stalls[0]:.3f} s allocates it), {statistics.median(writes):.2f} s to the marker in the background")
    print(f"checkpoint.load+verify: {load_s:6.2f} s (the asynchronous one: the copied step's state, SHA-256 checked)")
    print(f"save / raw speed: {(marker.meta['bytes'] / save_s) / (size / raw_s):.2f}")
    print(f"save time / raw write time (same bytes): {(save_s / marker.meta['bytes']) / (raw_s / size):.2f} "
          "(goal <= 1.2)")
    print(f"stall / raw write: {stall_s / raw_s:.3f} (goal <= 0.25 on the CPU, <= 0.1 on a GPU; the first save: "
          f"{stalls[0] / raw_s:.3f})")
    print(f"scaled to MusicGen-small with AdamW (420.4 M x 12 B = 5.0 GB): blocking "
          f"{5.04e3 / (marker.meta['bytes'] / 1e6 / save_s):.1f} s, the loop blocked {stall_s * 5.04e3 / mb:.1f} s "
          "(the Spot notice gives 120 s)")
    shutil.rmtree(work)
    return 0


class _Quiet:
    def __getattr__(self, _name):
        return lambda *a, **k: None


if __name__ == "__main__":
    sys.exit(main())
