#!/usr/bin/env python3
"""Training steps per second from the token cache vs encoding audio on the fly, in one run.

Same tiny model, same machine, same batches: (a) codes and text states read from the
memory-mapped cache that `dataset tokenize` builds; (b) every step decodes the MP3s, resamples
to the codec rate, runs EnCodec and the text encoder, as a pipeline without the cache would.
Prints the machine, versions and both figures with their ratio.

    .venv/bin/python scripts/bench/cache_vs_onthefly.py [--clips 32] [--seconds 10] [--steps 20]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0, help="clip length (MTAT clips are 29 s)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = p.parse_args()

    import numpy as np
    import torch

    from conftest import write_config
    from daemon.common import log as logs
    from daemon.common.config import load_config
    from trainer.worker.data import load_cache
    from trainer.dataset.select import write_manifest
    from trainer.worker.model import TrainableMusicgen, encode_text, load_base_model
    from trainer.dataset.tokens import Tokenizer, load_audio
    from tests_dataset_helpers import make_clips  # noqa: E402

    if args.threads:
        torch.set_num_threads(args.threads)
    logs.configure("json", "warning")
    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    frames = int(args.seconds * 100)  # the tiny EnCodec runs at 100 frames/s
    cfg_path = write_config(work, {"data": {"source": "cache", "frames": frames, "text_max_tokens": 32},
                                   "dataset": {"tokenize_batch": 8}})
    cfg = load_config(cfg_path)
    clips = make_clips(cfg.clips_dir, args.clips, seconds=args.seconds)
    for c in clips:
        c["split"] = "train" if c["clip_id"] % 8 else "valid"
    write_manifest(cfg.manifest_file, clips)

    t0 = time.perf_counter()
    Tokenizer(cfg, logs.get("bench"), progress=False).run(clips, cfg.clips_dir, cfg.tokens_dir)
    tokenize_s = time.perf_counter() - t0

    torch.manual_seed(0)
    base, tokenizer = load_base_model(cfg)
    model = TrainableMusicgen(base)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    codec = base.audio_encoder.eval()
    rate, hop = codec.config.sampling_rate, int(np.prod(codec.config.upsampling_ratios))
    train, _ = load_cache(cfg, base)
    train_clips = [c for c in clips if c["split"] == "train"]
    order = torch.arange(len(train))

    def step(codes, states, mask):
        loss = model(codes, states, mask)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def from_cache(i):
        idx = order[(i * args.batch) % len(train):][:args.batch]
        return train.batch(idx, torch.device("cpu"))

    def on_the_fly(i):
        rows = [train_clips[(i * args.batch + j) % len(train_clips)] for j in range(args.batch)]
        audio = np.stack([load_audio(cfg.clips_dir / c["mp3_path"], rate, frames * hop) for c in rows])
        with torch.no_grad():
            codes = codec.encode(torch.from_numpy(audio)[:, None, :], bandwidth=max(codec.config.target_bandwidths))
            codes = codes.audio_codes[0][:, :base.config.decoder.num_codebooks, :frames].long()
            states, mask = encode_text(base, tokenizer, [c["description"] for c in rows], 32)
        return codes, states, mask

    results = {}
    for name, source in (("cache", from_cache), ("on the fly", on_the_fly)):
        step(*source(0))  # warm-up
        t0 = time.perf_counter()
        for i in range(args.steps):
            step(*source(i + 1))
        results[name] = args.steps / (time.perf_counter() - t0)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}, python {platform.python_version()}")
    print(f"tiny MusicGen, batch {args.batch}, {args.seconds:g} s clips ({frames} frames x "
          f"{base.config.decoder.num_codebooks} codebooks), {args.steps} steps each")
    print(f"tokenize {len(clips)} clips once: {tokenize_s:.1f} s")
    print(f"steps/s from the token cache: {results['cache']:.2f}")
    print(f"steps/s encoding on the fly:  {results['on the fly']:.2f}")
    print(f"speed-up from the cache: {results['cache'] / results['on the fly']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
