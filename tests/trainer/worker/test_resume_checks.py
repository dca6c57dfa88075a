"""Resume refuses a checkpoint whose recorded data position disagrees with the step: the data
order would silently restart somewhere else. One line, exit 78, the file and field named."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import write_config
from daemon.common import exits
from trainer.worker import checkpoint
from trainer.worker.checkpoint import CheckpointError
from trainer.worker.train import check_data_position, data_position


def test_data_position_is_a_function_of_the_step():
    assert data_position(19, 8) == {"epoch": 2, "step_in_epoch": 3, "steps_per_epoch": 8}
    check_data_position("step_00000019.pt", data_position(19, 8), 19, 8)  # agrees: no error


@pytest.mark.parametrize("saved, field", [
    ({"epoch": 1, "step_in_epoch": 3, "steps_per_epoch": 8}, "data_position.epoch"),
    ({"epoch": 2, "step_in_epoch": 4, "steps_per_epoch": 8}, "data_position.step_in_epoch"),
    ({"epoch": 1, "step_in_epoch": 9, "steps_per_epoch": 10}, "data_position.epoch"),
    (None, "data_position is missing"),
    ("garbage", "data_position is missing"),
])
def test_a_disagreeing_data_position_names_the_file_and_field(saved, field):
    with pytest.raises(CheckpointError, match=field) as e:
        check_data_position("step_00000019.pt", saved, 19, 8)
    assert str(e.value).startswith("step_00000019.pt: ") and "\n" not in str(e.value)


@pytest.mark.slow
def test_the_worker_refuses_a_checkpoint_with_a_wrong_data_position(tmp_path):
    config = write_config(tmp_path, {"train": {"epochs": 1}})  # 8 steps, checkpoints at 4 and 8
    run = [sys.executable, "-m", "trainer", "--config", str(config), "--log-format", "json",
           "--failure-file", str(tmp_path / "failure.json")]
    assert subprocess.run(run, capture_output=True, text=True, timeout=180).returncode == exits.OK
    ckpt_dir = tmp_path / "state" / "checkpoints"
    marker = checkpoint.newest(ckpt_dir)
    payload = checkpoint.load(marker)
    payload["data_position"]["step_in_epoch"] += 1  # committed like any checkpoint: only the field lies
    checkpoint.save(ckpt_dir, marker.step, {k: v for k, v in payload.items() if k not in ("format", "step")},
                    {k: marker.meta[k] for k in ("epoch", "train_loss", "val_loss", "val_step")})
    r = subprocess.run(run, capture_output=True, text=True, timeout=180)
    assert r.returncode == exits.CONFIG, r.stdout[-2000:] + r.stderr[-2000:]
    failure = json.loads((tmp_path / "failure.json").read_text())
    assert failure["type"] == "CheckpointError" and "data_position.step_in_epoch" in failure["message"]
    assert marker.path.name in failure["message"] and "Traceback" not in r.stderr
