"""A run directory made by hand for the report tests: a config, state.json, the milestone's
week_5_metrics.json (as daemon/reports.py writes it) with its WAV samples (as
trainer/evaluation/evaluate.py writes them), completion_report.json, and TensorBoard scalars
written with the daemon's own torch-free writer under the tags the trainer and the supervisor use."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

from conftest import write_config
from daemon.common.clock import iso
from daemon.common.config import Config, load_config
from daemon.tensorboard import ScalarWriter

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc)
PROMPTS = ["amapiano, log drum, shakers", "amapiano, jazzy piano chords", "amapiano, deep house, percussion"]
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>"\' & {{ }} $\\frac{1}{0}$'


def wav(path: Path, freq: float, seconds: float = 0.5, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
    return path


def state_json(run_id: str = "run-abc123", step: int = 120, total: int = 240, hostile: str = "") -> dict:
    return {
        "schema_version": 1, "run_id": run_id, "phase": "RUNNING", "started_at": iso(T0),
        "phase_since": iso(T0), "updated_at": iso(T0 + timedelta(hours=30)),
        "trainer": {"step": step, "total_steps": total, "best_val_loss": 2.1, "val_loss": 2.2, "train_loss": 2.0},
        "cost": {"boot_id": "b", "accounted_boottime_s": 100.0, "storage_accounted_at": iso(T0), "compute_usd": 61.5,
                 "storage_usd": 0.5, "unpriced_s": 0.0, "rate_usd_per_h": 2.05, "rate_source": "spot price",
                 "boots": 1, "hourly": {}, "daily": {}, "total_usd": 62.0,
                 "forecast": {"steps_per_s": 0.001, "hours_to_completion": 30.0, "at_completion_usd": 124.0,
                              "at_milestone_usd": None}},
        "budget": {"max_usd": 150.0, "left_usd": 88.0, "fired": ["fraction:0.25"], "action": "ec2-stop"},
        "gpu": {"available": True, "devices": [{"index": 0, "name": "NVIDIA A10G" + hostile, "util_pct": 97.0}]},
        "instance": {"instance_type": "g5.xlarge"},
        "milestone": {"at": "20h", "status": "scheduled", "due_at": iso(T0 + timedelta(hours=20))},
        "red_flags": {"raised": ["gpu_underused"], "val_history": [[T0.timestamp() + 3600 * i, 3.0 - 0.1 * i, 20.0 * i]
                                                                    for i in range(1, 6)]},
        "alerts": [{"id": "a1", "kind": "red_flag", "subject": "[amapiano-train] red flag: GPU under 50 %" + hostile,
                    "created_at": iso(T0 + timedelta(hours=5)), "status": "sent", "attempts": 1}],
    }


def metrics(reports: Path, decision: str = "CONDITIONAL GO", pairs: int = 6, hostile: str = "",
            name: str = "milestone_eval") -> dict:
    """What reports.milestone writes: the evaluation's figures, thresholds and the verdict."""
    sides = {}
    for side, base_score in (("model", 40.0), ("baseline", 30.0)):
        samples = []
        for i in range(pairs):
            file = wav(reports / f"{name}_samples" / side / f"{i:02d}.wav", 220.0 * (i + 1) * (1.5 if side == "model" else 1))
            samples.append({"prompt": PROMPTS[i % len(PROMPTS)] + hostile, "seed": 7 + i, "file": str(file),
                            "latency_s": 1.5 + 0.1 * i, "sha256": f"{side}{i}", "silent": False,
                            "score_pct": base_score + 2.0 * i})
        sides[side] = {"val_loss": 2.05 if side == "model" else 2.6,
                       "authenticity": {"n": pairs, "mean_pct": base_score + pairs - 1, "ci95_pct": [base_score + 1, base_score + 9]},
                       "latency_s": {"mean": 1.7, "max": 2.0}, "samples": samples,
                       "fad_clap": {"fad": 3.2 if side == "model" else 4.1, "fad_inf": 2.9 if side == "model" else 3.8, "n": pairs}}
    return {"time": iso(T0 + timedelta(hours=20)), "prompts": PROMPTS, "device": "cuda",
            "scorer": {"mode": "description+descriptors+genre", "notes": []},
            **sides, "checkpoint": {"path": "/x/step_00000100.pt", "step": 100},
            "comparison": {"n": pairs, "improvement_pct": 10.0, "ci95_pct": [8.1, 11.9], "p_value": 0.0156,
                           "test": "Wilcoxon signed-rank, one-sided (model > baseline)", "detectable_pct": 1.2,
                           "failed": 0, "identical": 0, "silent": 0},
            "thresholds": {"min_authenticity_pct": 35.0, "max_cost_usd": 600.0, "max_val_loss": 3.5, "margin_pct": 5.0,
                           "alpha": 0.05},
            "cost_usd": 41.0, "decision": decision,
            "reasons": ["authenticity 45.0 % (95 % CI 41.0-49.0) straddles 35 %" + hostile,
                        "improvement over the baseline +10.0 points (95 % CI +8.1 to +11.9, p = 0.0156): significant at 0.05",
                        "spend 41 USD is under the limit 600 USD", "validation loss 2.05 is under the limit 3.5"],
            "checks": {"authenticity": "close", "improvement": "pass", "cost": "pass", "val_loss": "pass"},
            "decided_at": iso(T0 + timedelta(hours=20, minutes=30)), "dry_run": False}


def scalars(logdir: Path, steps: int = 120) -> None:
    """train/loss, val/loss (the trainer's tags), cost/total_usd and gpu utilisation (the supervisor's)."""
    train = ScalarWriter(logdir / "train")
    for step in range(0, steps + 1, 5):
        train.write_at({"train/loss": 4.0 * np.exp(-step / 60) + 1.0}, T0 + timedelta(minutes=step * 15), step)
        if step % 20 == 0:
            train.write_at({"val/loss": 4.2 * np.exp(-step / 70) + 1.2}, T0 + timedelta(minutes=step * 15), step)
    train.close()
    sup = ScalarWriter(logdir / "supervisor")
    for i in range(0, 31):
        sup.write({"cost/total_usd": 2.0 * i, "gpu/util_pct": 90.0 + (i % 5), "gpu0/util_pct": 91.0},
                  T0 + timedelta(hours=i), 4 * i)
    sup.close()


def fake_run(tmp_path: Path, decision: str | None = "CONDITIONAL GO", hostile: str = "", completed: bool = False,
             tensorboard: bool = True, pairs: int = 6) -> Config:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = load_config(write_config(tmp_path))
    reports = cfg.reports_dir
    reports.mkdir(parents=True)
    state = state_json(hostile=hostile)
    if decision is not None:
        m = metrics(reports, decision, pairs, hostile)
        (reports / "week_5_metrics.json").write_text(json.dumps(m))
        state["milestone"].update(status="done", decision=decision, reasons=m["reasons"],
                                  report=str(reports / "week_5_metrics.json"))
    if completed:
        final = metrics(reports, "GO", pairs, hostile, name="final_eval")
        final["checkpoint"]["step"] = 240
        (reports / "completion_report.json").write_text(json.dumps({
            "completed_at": iso(T0 + timedelta(hours=60)), "steps": 240, "best_val_loss": 1.9, "final_evaluation": final,
            "export": {"transformers": str(reports / "export/best_model"), "audiocraft": str(reports / "export/state_dict.bin")},
            "spend": state["cost"], "started_at": iso(T0), "milestone": state["milestone"]}))
        state["milestone"]["completion"] = {"status": "done", "report": str(reports / "completion_report.json")}
    (cfg.state_file).write_text(json.dumps(state))
    if tensorboard:
        scalars(cfg.tensorboard_dir)
    return cfg
