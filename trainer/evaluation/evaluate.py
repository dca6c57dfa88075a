"""`amapiano-train evaluate` (`python -m trainer.evaluation evaluate`): the figures the milestone decides on, for a checkpoint and the baseline.

Validation loss over the valid split; `[milestone] samples` clips generated from the Amapiano
prompts by the checkpoint AND by the pre-trained model the run started from, decoded to audio
and saved as WAV; the generation latency per sample; the authenticity score per sample
(trainer/evaluation/authenticity.py) with its mean and bootstrap 95 % interval. Written as one JSON file,
atomically. It runs as its own process so the supervisor can schedule it and a person can run
it by hand on any checkpoint.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def _newest_loadable(directory: Path, log: Any, attempts: int = 5):
    """(marker, payload) of the newest checkpoint that loads.

    The worker may be training beside us and pruning: a checkpoint that vanishes between the
    listing and the load is skipped, never quarantined (the directory is not ours), and when every
    listed one went, the directory is listed again.
    """
    from trainer.worker import checkpoint

    for _ in range(attempts):
        for marker in reversed(checkpoint.list_checkpoints(directory)):
            try:
                return marker, checkpoint.load(marker)
            except checkpoint.CorruptCheckpoint as e:
                log.warning("evaluate.checkpoint_skipped", step=marker.step, error=str(e))
    raise checkpoint.CheckpointError(f"{directory}: no checkpoint to evaluate")


def evaluate(cfg, log: Any, checkpoint_path: Path | None, out: Path, progress: bool = True) -> dict:
    import numpy as np
    import soundfile as sf
    import torch
    from tqdm import tqdm

    from daemon.common.atomic import write_json_atomic
    from daemon.common.clock import Clock, iso

    from trainer.worker import checkpoint
    from trainer.worker.data import load_splits
    from trainer.worker.model import TrainableMusicgen, load_base_model

    from . import authenticity

    torch.manual_seed(cfg.run.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu")
    m = cfg.milestone
    results: dict[str, Any] = {"time": iso(Clock().now()), "prompts": m.prompts, "device": str(device)}

    def figures(name: str, model, tokenizer, val) -> dict:
        model.eval().to(device)
        trainable = TrainableMusicgen(model)
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(val), cfg.train.batch_size):
                idx = torch.arange(start, min(start + cfg.train.batch_size, len(val)))
                total += trainable(*val.batch(idx, device)).item() * len(idx)
                count += len(idx)
        rate = model.config.audio_encoder.sampling_rate
        hop = int(np.prod(model.config.audio_encoder.upsampling_ratios))
        tokens = max(8, int(m.sample_seconds * rate / hop))
        sample_dir = out.parent / f"{out.stem}_samples" / name
        sample_dir.mkdir(parents=True, exist_ok=True)
        scores, latencies, per_sample = [], [], []
        for i in tqdm(range(m.samples), desc=f"generate ({name})", unit="clip", disable=not progress):
            prompt = m.prompts[i % len(m.prompts)]
            inputs = tokenizer([prompt], return_tensors="pt", padding=True).to(device)
            torch.manual_seed(cfg.run.seed + i)  # the same noise for model and baseline
            started = time.perf_counter()
            with torch.no_grad():
                audio = model.generate(**inputs, do_sample=True, max_new_tokens=tokens)
            latency = time.perf_counter() - started
            wave = audio[0, 0].float().cpu().numpy()
            path = sample_dir / f"{i:02d}.wav"
            sf.write(path, wave, rate)
            f = authenticity.features(wave, rate)
            scores.append(f.score)
            latencies.append(latency)
            per_sample.append({"prompt": prompt, "file": str(path), "latency_s": latency, **f.to_json()})
        return {"val_loss": total / count if count else None, "authenticity": authenticity.summary(scores, seed=cfg.run.seed),
                "latency_s": {"mean": float(np.mean(latencies)), "max": float(np.max(latencies))},
                "samples": per_sample}

    baseline, tokenizer = load_base_model(cfg)
    _, valid = load_splits(cfg, baseline, tokenizer)
    results["baseline"] = figures("baseline", baseline, tokenizer, valid)

    model, tokenizer = load_base_model(cfg)
    if checkpoint_path is not None:
        marker = checkpoint.committed(cfg.checkpoint_dir, checkpoint_path)
        payload = checkpoint.load(marker)
    else:
        marker, payload = _newest_loadable(cfg.checkpoint_dir, log)
    TrainableMusicgen(model).load_state_dict(payload["model"])
    results["checkpoint"] = {"path": str(marker.path), "step": marker.step}
    results["model"] = figures("model", model, tokenizer, valid)
    write_json_atomic(out, results)
    log.info("evaluate.done", out=str(out), step=marker.step, val_loss=results["model"]["val_loss"],
             authenticity=results["model"]["authenticity"]["mean_pct"],
             baseline_authenticity=results["baseline"]["authenticity"]["mean_pct"])
    return results
