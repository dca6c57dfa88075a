"""`amapiano-train evaluate` (`python -m trainer.evaluation evaluate`): the figures the milestone decides on, for a checkpoint and the baseline.

Validation loss over the valid split; `[milestone] samples` clips generated from the Amapiano
prompts by the checkpoint AND by the pre-trained model the run started from, with the same
prompt and seed for clip i on both sides (pairs); the first `keep_wavs` of each saved as WAV;
the generation latency per sample; the authenticity score per sample (score.py) with its mean
and bootstrap 95 % interval; the paired comparison (paired.py: improvement, paired bootstrap
interval, Wilcoxon p-value, the smallest detectable improvement) and the facts that make the
evidence degenerate (failed, identical, silent samples). Written as one JSON file, atomically. It runs as its own process so the supervisor can schedule it and a person can run
it by hand on any checkpoint.
"""
from __future__ import annotations

import math

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


def _is_silent(wave) -> bool:
    """Under -60 dBFS RMS, or one value throughout (a stuck decoder)."""
    import numpy as np

    return wave.size == 0 or float(np.sqrt(np.mean(wave.astype(np.float64) ** 2))) < 1e-3 or float(np.ptp(wave)) == 0.0


def _generate_all(cfg, name: str, model, tokenizer, device, sample_dir: Path, scorer, progress: bool) -> dict:
    """`[milestone] samples` clips, seed i for clip i (the same for model and baseline): scored,
    hashed, the first `keep_wavs` saved as WAV."""
    import hashlib

    import numpy as np
    import soundfile as sf
    import torch
    from tqdm import tqdm

    m = cfg.milestone
    model.eval().to(device)
    rate = model.config.audio_encoder.sampling_rate
    hop = int(np.prod(model.config.audio_encoder.upsampling_ratios))
    tokens = max(8, int(m.sample_seconds * rate / hop))
    sample_dir.mkdir(parents=True, exist_ok=True)
    samples, latencies, embeddings = [], [], []
    for i in tqdm(range(m.samples), desc=f"generate ({name})", unit="clip", disable=not progress):
        prompt = m.prompts[i % len(m.prompts)]
        inputs = tokenizer([prompt], return_tensors="pt", padding=True).to(device)
        torch.manual_seed(cfg.run.seed + i)  # the same noise for model and baseline: the pairs
        started = time.perf_counter()
        try:
            with torch.no_grad():
                audio = model.generate(**inputs, do_sample=True, max_new_tokens=tokens)
            wave = audio[0, 0].float().cpu().numpy()
            if not np.all(np.isfinite(wave)):
                raise ValueError("non-finite audio")
        except Exception as e:  # a failed generation makes the evidence degenerate, not the run
            samples.append({"prompt": prompt, "seed": cfg.run.seed + i, "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        latencies.append(time.perf_counter() - started)
        path = sample_dir / f"{i:02d}.wav" if i < m.keep_wavs else None
        if path is not None:
            sf.write(path, wave, rate)
        result = scorer.score(wave, rate)
        if "embedding" in result:
            embeddings.append(result.pop("embedding"))
        samples.append({"prompt": prompt, "seed": cfg.run.seed + i, "file": str(path) if path else None,
                        "latency_s": latencies[-1], "sha256": hashlib.sha256(wave.tobytes()).hexdigest(),
                        "silent": _is_silent(wave), "score_pct": result.pop("authenticity_pct"), **result})
    return {"samples": samples, "latencies": latencies, "embeddings": embeddings}


def _val_loss(cfg, model, val, device) -> float | None:
    import torch

    from trainer.worker.model import TrainableMusicgen

    model.eval().to(device)
    trainable = TrainableMusicgen(model)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(val), cfg.train.eval_batch):
            idx = torch.arange(start, min(start + cfg.train.eval_batch, len(val)))
            total += trainable(*val.batch(idx, device)).item() * len(idx)
            count += len(idx)
    return total / count if count and math.isfinite(total) else None  # a diverged model: unknown, not NaN


def _side(cfg, gen: dict, val_loss, scorer) -> dict:
    import numpy as np

    from . import paired
    from .clap import fad_inf

    scores = [s["score_pct"] for s in gen["samples"] if "score_pct" in s]
    lat = gen["latencies"]
    out = {"val_loss": val_loss, "authenticity": paired.summary(scores, seed=cfg.run.seed),
           "latency_s": {"mean": float(np.mean(lat)) if lat else None, "max": float(np.max(lat)) if lat else None},
           "samples": gen["samples"]}
    if scorer.references is not None and gen["embeddings"]:
        out["fad_clap"] = fad_inf(np.stack(gen["embeddings"]), scorer.references, seed=cfg.run.seed)
    return out


def evidence(cfg, model: dict, baseline: dict) -> dict:
    """The paired comparison and the facts that make evidence degenerate (daemon/rules/milestone.py)."""
    from . import paired

    pairs = [(a, b) for a, b in zip(model["samples"], baseline["samples"]) if "score_pct" in a and "score_pct" in b]
    both = model["samples"] + baseline["samples"]
    return {**paired.compare([a["score_pct"] for a, _ in pairs], [b["score_pct"] for _, b in pairs], seed=cfg.run.seed),
            "failed": sum("error" in s for s in both),
            "identical": sum(a["sha256"] == b["sha256"] for a, b in pairs),
            "silent": sum(bool(s.get("silent")) for s in both)}


def evaluate(cfg, log: Any, checkpoint_path: Path | None, out: Path, progress: bool = True) -> dict:
    import torch

    from daemon.common.atomic import write_json_atomic
    from daemon.common.clock import Clock, iso

    from trainer.worker import checkpoint
    from trainer.worker.data import load_splits
    from trainer.worker.model import TrainableMusicgen, load_base_model

    from .score import build_scorer

    torch.manual_seed(cfg.run.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu")
    scorer = build_scorer(cfg.milestone, offline=False, log=log, base=cfg.source.parent if cfg.source else None)
    results: dict[str, Any] = {"time": iso(Clock().now()), "prompts": cfg.milestone.prompts, "device": str(device),
                               "scorer": {"mode": scorer.mode, "notes": scorer.notes}}
    samples_dir = out.parent / f"{out.stem}_samples"

    if checkpoint_path is not None:
        marker = checkpoint.committed(cfg.checkpoint_dir, checkpoint_path)
        payload = checkpoint.load(marker)
    else:
        marker, payload = _newest_loadable(cfg.checkpoint_dir, log)
    weights = payload.get("model")
    del payload  # the optimizer's state (twice the weights) is not needed here
    baseline, tokenizer = load_base_model(cfg)
    # before the baseline's generation: a checkpoint that cannot be used costs no work and no files
    checkpoint.check_weights(marker, weights, TrainableMusicgen(baseline).state_dict())
    _, valid = load_splits(cfg, baseline, tokenizer)
    loss = _val_loss(cfg, baseline, valid, device)
    results["baseline"] = _side(cfg, _generate_all(cfg, "baseline", baseline, tokenizer, device,
                                                   samples_dir / "baseline", scorer, progress), loss, scorer)
    del baseline

    model, tokenizer = load_base_model(cfg)
    TrainableMusicgen(model).load_state_dict(weights)
    results["checkpoint"] = {"path": str(marker.path), "step": marker.step}
    loss = _val_loss(cfg, model, valid, device)
    results["model"] = _side(cfg, _generate_all(cfg, "model", model, tokenizer, device, samples_dir / "model",
                                                scorer, progress), loss, scorer)
    results["comparison"] = evidence(cfg, results["model"], results["baseline"])
    write_json_atomic(out, results)
    c = results["comparison"]
    log.info("evaluate.done", out=str(out), step=marker.step, val_loss=results["model"]["val_loss"],
             authenticity=results["model"]["authenticity"]["mean_pct"],
             baseline_authenticity=results["baseline"]["authenticity"]["mean_pct"],
             improvement=c["improvement_pct"], p_value=c["p_value"], scorer=scorer.mode)
    return results
