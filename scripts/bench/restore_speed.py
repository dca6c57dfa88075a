#!/usr/bin/env python3
"""A fresh disk's way back from S3, in seconds: restore + load + first step, for a 1.2 GB state.

The state is the worker's own: a MusicGen decoder of musicgen-small's width with 5 layers (101.6 M
parameters, random weights, random codes) and its AdamW moments after one step, saved by
Trainer.save_checkpoint (1.2 GB) and put where the mirror puts it, on moto's S3 server in a child
process on 127.0.0.1. Then, alternated, on the same bucket object:

  before    what the restore did until now: boto3's download_file (s3transfer: 8 MiB ranged GETs,
            10 threads, no bytes handed out), then a second pass over the file for its digest
  1 stream  the new restore (Aws.download_checkpoint) with one part: one GET, hashed as it arrives
  parallel  the new restore as shipped: 8 parts of 16 MiB in flight, hashed as they arrive

each into an empty checkpoint directory, to the committed marker. Then the worker's way on from
the parallel restore: Trainer.setup (the model built: not counted), Trainer.resume (the real load
path: the checkpoint verified, torch.load, the model and optimizer loaded) and one Trainer.train_step.

moto as shipped reads (and copies) the whole object for every ranged GET and slices it (measured
here: a 16 MiB range of a 256 MiB object took 0.72 s, the whole object 1.06 s), which times moto,
not the download, and holds a copy of 1.2 GB a part in flight. So the server here serves a range
from the stored bytes (a patch of 20 lines in its process, below); --moto-as-is turns it off.
Loopback on a shared machine is no S3: the figure that carries over is the ratio of the modes on
the same run, and S3's per-connection ceiling (~50-100 MB/s) only widens it.

    .venv/bin/python scripts/bench/restore_speed.py [--layers 5] [--rounds 2] [--moto-as-is]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
BUCKET, PREFIX = "restore-bench", "bench"

# moto's server, serving a range from the stored bytes instead of a slice of a copy of them all.
MOTO = r"""
import logging, re, sys, threading
from moto.s3 import models, responses
logging.getLogger("werkzeug").setLevel(logging.ERROR)   # a line a request
from moto.server import ThreadedMotoServer
honest = sys.argv[2] == "ranges"
window = threading.local()

class Ranged(bytes):
    pass

whole = models.FakeKey.value
def value(self):
    asked = getattr(window, "range", None)
    if asked is None:
        return whole.fget(self)
    with self.lock:
        self._value_buffer.seek(asked[0])
        out = Ranged(self._value_buffer.read(min(asked[1], self.size - 1) - asked[0] + 1))
    out.begin, out.total = asked[0], self.size
    return out

key_response = responses.S3Response.key_response
def ranged_key_response(self, request, full_url, headers):
    m = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("range") or "")
    window.range = (int(m[1]), int(m[2])) if m and request.method == "GET" else None
    try:
        return key_response(self, request, full_url, headers)
    finally:
        window.range = None

handle = responses.S3Response._handle_range_header
def ranged_handle(self, request, response_headers, content):
    if not isinstance(content, Ranged):
        return handle(self, request, response_headers, content)
    for name in [h for h in response_headers if h.startswith("x-amz-checksum-")]:
        del response_headers[name]   # the whole object's, as moto drops them for a part
    response_headers["content-range"] = f"bytes {content.begin}-{content.begin + len(content) - 1}/{content.total}"
    response_headers["content-length"] = str(len(content))
    return 206, response_headers, bytes(content)

if honest:
    models.FakeKey.value = property(value, whole.fset)
    responses.S3Response.key_response = ranged_key_response
    responses.S3Response._handle_range_header = ranged_handle
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print("ready", flush=True)
sys.stdin.read()
"""


def moto(as_is: bool) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", MOTO, str(port), "as-is" if as_is else "ranges"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc, f"http://127.0.0.1:{port}"


def trainer_for(work: Path, state: str, layers: int):
    """A worker's Trainer, set up on the bench's architecture and codes, its state under work/state."""
    import torch

    from conftest import write_config
    from daemon.common import log as logs
    from daemon.common.config import load_config
    from trainer.worker import memory
    from trainer.worker.data import Split
    from trainer.worker.model import random_base
    from trainer.worker.train import Trainer

    cfg = load_config(write_config(work, {"train": {"epochs": 1000}}, name=f"{state}.toml"))
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, batch_size=2, clips_per_step=0, grad_accum_steps=1),
        run=dataclasses.replace(cfg.run, state_dir=work / state, log_dir=work / f"{state}-logs", cache_dir=work / "cache"))
    cfg.run.state_dir.mkdir(parents=True, exist_ok=True)
    logs.configure("console", "warning")
    arch = dataclasses.replace(memory.MUSICGEN_SMALL, layers=layers)
    g = torch.Generator().manual_seed(0)
    n = 8
    split = Split(torch.randint(0, arch.vocab, (n, arch.codebooks, cfg.data.frames), generator=g, dtype=torch.int16),
                  torch.randn(n, cfg.data.text_max_tokens, arch.text_hidden, generator=g).half(),
                  torch.ones(n, cfg.data.text_max_tokens, dtype=torch.uint8))
    t = Trainer(cfg, logs.get("bench"))
    began = time.perf_counter()
    t.setup(base=random_base(arch), splits=(split, split))
    t.window = (time.monotonic(), 0)
    return t, time.perf_counter() - began


def upload(url: str, marker) -> None:
    """The checkpoint, then its marker, where the mirror puts them: in one PUT, with a patient client
    (moto's completion of a 1.2 GB multipart upload outlasts the port's 20 s read timeout here)."""
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", config=Config(read_timeout=600))
    s3.upload_file(str(marker.path), BUCKET, f"{PREFIX}/checkpoints/{marker.path.name}",
                   Config=TransferConfig(multipart_threshold=1 << 40))
    s3.upload_file(str(marker.marker), BUCKET, f"{PREFIX}/checkpoints/{marker.marker.name}")


def before(aws, meta: dict, directory: Path) -> None:
    """The restore until now, for one .pt: download_file, fsync, then the digest in a second pass."""
    from daemon.common import checkpoints

    directory.mkdir(parents=True)
    dest = directory / meta["file"]
    aws.client("s3").download_file(BUCKET, f"{PREFIX}/checkpoints/{meta['file']}", str(dest))
    with open(dest, "rb") as f:
        os.fsync(f.fileno())
    assert checkpoints.digest_file(dest, meta.get("hash")) == meta["sha256"]


def restore(aws, meta: dict, directory: Path, part_bytes: int | None, in_flight: int | None) -> None:
    aws.part_bytes, aws.parts_in_flight = part_bytes, in_flight
    aws.download_checkpoint(meta, directory)


def saved_state(work: Path, layers: int, url: str):
    """The worker's checkpoint after one step (AdamW's moments exist from there), put in the bucket;
    (its marker, seconds of the upload). The local copy is removed: the restores start from nothing."""
    from daemon.common import checkpoints

    src, _ = trainer_for(work, "src", layers)
    src.resume()
    src.train_step()
    src.save_checkpoint(wait=True)
    marker = checkpoints.newest(src.cfg.checkpoint_dir)
    del src
    t0 = time.perf_counter()
    upload(url, marker)
    up = time.perf_counter() - t0
    shutil.rmtree(marker.path.parent)
    return marker, up


def time_restores(aws, meta: dict, work: Path, rounds: int) -> tuple[dict[str, float], Path]:
    """Each mode `rounds` times, alternated, into empty directories: the best seconds of each, and
    the directory of the last parallel restore (the worker goes on from it)."""
    from daemon.common import checkpoints
    from daemon.ports.ranged_get import PART_BYTES, PARTS_IN_FLIGHT

    size = meta["bytes"]
    whole = -(-size // checkpoints.PIECE) * checkpoints.PIECE
    modes = {"before (download_file, then a digest pass)": lambda d: before(aws, meta, d),
             "1 stream, hashed as it arrives": lambda d: restore(aws, meta, d, whole, 1),
             f"parallel ({PARTS_IN_FLIGHT} x {PART_BYTES >> 20} MiB), hashed as it arrives":
                 lambda d: restore(aws, meta, d, None, None)}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(rounds):
        for i, (name, run) in enumerate(modes.items()):
            target = work / f"restored-{r}-{i}"
            t0 = time.perf_counter()
            run(target)
            times[name].append(time.perf_counter() - t0)
            print(f"  restore, {name}: {times[name][-1]:.2f} s ({size / 1e6 / times[name][-1]:.0f} MB/s)")
            if not (r == rounds - 1 and i == 2):
                shutil.rmtree(target)
    return {m: min(v) for m, v in times.items()}, target


def way_on(work: Path, layers: int, restored: Path, step: int) -> tuple[float, float, float]:
    """A fresh worker on the restored checkpoint: (setup, resume, first step) seconds."""
    (work / "dst").mkdir()
    restored.rename(work / "dst" / "checkpoints")   # the worker's checkpoint directory on the fresh disk
    dst, setup_s = trainer_for(work, "dst", layers)
    t0 = time.perf_counter()
    dst.resume()
    load_s = time.perf_counter() - t0
    assert dst.p.step == step, "the restored checkpoint did not resume"
    t0 = time.perf_counter()
    dst.train_step()
    return setup_s, load_s, time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=5, help="decoder layers (5: 101.6 M parameters, 1.2 GB with AdamW)")
    p.add_argument("--rounds", type=int, default=2, help="each mode this many times, alternated")
    p.add_argument("--moto-as-is", action="store_true",
                   help="moto's own range handling (it holds a copy of the object a GET in flight: ~10 GB here)")
    p.add_argument("--dir", type=Path, default=None, help="where the checkpoints go (default: a temp dir)")
    args = p.parse_args()
    import torch

    from daemon.common.config import AwsConfig
    from daemon.ports.aws import Aws

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_EC2_METADATA_DISABLED": "true"})
    work = Path(tempfile.mkdtemp(prefix="bench-restore-", dir=args.dir))
    server, url = moto(args.moto_as_is)
    try:
        aws = Aws(AwsConfig(endpoint_url=url, s3_bucket=BUCKET, s3_prefix=PREFIX), "us-east-1", call_timeout_s=120)
        aws.client("s3").create_bucket(Bucket=BUCKET)
        marker, up = saved_state(work, args.layers, url)
        print(f"restore_speed: {marker.meta['bytes'] / 1e9:.2f} GB state ({args.layers} layers of musicgen-small's "
              f"width, AdamW), moto {'as shipped' if args.moto_as_is else 'serving ranges from the stored bytes'} on "
              f"127.0.0.1; torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs")
        print(f"  upload (one PUT, for the setup): {up:.1f} s")
        best, restored = time_restores(aws, marker.meta, work, args.rounds)
        old, one, new = best.values()
        print(f"  speed-up of the parallel restore over before: {old / new:.2f}x, over one stream: {one / new:.2f}x "
              f"(best of {args.rounds} each)")
        setup_s, load_s, step_s = way_on(work, args.layers, restored, marker.step)
        print(f"  model built (Trainer.setup, not counted): {setup_s:.2f} s")
        print(f"restore + load + first step: {new:.2f} + {load_s:.2f} + {step_s:.2f} = {new + load_s + step_s:.2f} s "
              f"(before: {old:.2f} + {load_s:.2f} + {step_s:.2f} = {old + load_s + step_s:.2f} s)")
    finally:
        server.stdin.close()
        server.terminate()
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
