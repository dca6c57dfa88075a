"""The disk fills during a checkpoint: the previous checkpoint stays good, no temp file is left,
and the supervisor says what is wrong (FAILED with the error, at error level) instead of looping."""
from __future__ import annotations

import pytest

from conftest import tmpfs, write_config

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "state" / "checkpoints", "size=6m") as where:
        yield where


def test_disk_full_during_a_checkpoint(tmp_path, small_disk, daemons, fault_report):
    from trainer.worker import checkpoint

    # ~1.7 MB a checkpoint, every 2 steps, keep 3: the 4th write (with its temp file) fills 6 MB.
    config = write_config(tmp_path, {"train": {"epochs": 400, "checkpoint_every": 2, "keep_checkpoints": 3}},
                          {"supervisor": {"max_restarts_without_progress": 2}})
    d = daemons(config)
    state = d.wait_state(lambda s: s["phase"] == "FAILED", timeout=120)
    assert "No space left on device" in (state["failure"]["message"] or "")
    assert not [p for p in small_disk.iterdir() if p.name.endswith(".tmp")]  # nothing half-written left
    markers = checkpoint.list_checkpoints(small_disk)
    assert markers and checkpoint.load(markers[-1])["step"] == markers[-1].step  # the last good one loads
    errors = [e["event"] for p, e in d.events() if p == 3]
    assert "worker.gave_up" in errors
    assert d.stop() == 0
    fault_report(f"disk full during a checkpoint: {state['trainer']['restarts'] + 1} worker runs hit ENOSPC; "
                 f"previous checkpoint (step {markers[-1].step}) intact; FAILED with the error")
