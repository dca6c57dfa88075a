"""The heartbeat as the supervisor reads it: garbage can only make fields unknown, and a CUDA
OOM back-off reaches the state file and the person."""
from __future__ import annotations

import json

from daemon import heartbeat
from daemon.actions import SendAlert
from daemon.state import TrainerState


def test_ill_typed_fields_are_dropped_not_trusted(tmp_path):
    path = tmp_path / "heartbeat.json"
    path.write_text(json.dumps({"step": "x", "epoch": True, "train_loss": float("inf"), "lr": 1e-4,
                                "activity": "training", "pid": 12, "total_steps": -1}).replace("Infinity", "1e999"))
    beat = heartbeat.read(path)
    assert beat.fields == {"lr": 1e-4, "activity": "training", "pid": 12}
    path.write_bytes(b"\xff\xfe not json")
    assert heartbeat.read(path) is None


def test_an_oom_back_off_is_recorded_and_alerted_once(tmp_path):
    path, t = tmp_path / "heartbeat.json", TrainerState()
    path.write_text(json.dumps({"step": 3, "micro_batch": 8, "grad_accum": 4, "oom_backoffs": 0}))
    assert heartbeat.absorb(t, heartbeat.read(path)) == []
    path.write_text(json.dumps({"step": 4, "micro_batch": 4, "grad_accum": 8, "oom_backoffs": 1}))
    alerts = heartbeat.absorb(t, heartbeat.read(path))
    assert (t.micro_batch, t.grad_accum, t.oom_backoffs) == (4, 8, 1)
    assert len(alerts) == 1 and isinstance(alerts[0], SendAlert) and "4 x 8" in alerts[0].subject
    assert heartbeat.absorb(t, heartbeat.read(path)) == []  # not again for the same back-off
