"""Checkpoints commit atomically, verify on load, fall back past damage, and prune to last K + best."""
from __future__ import annotations

import pytest
import torch

from conftest import RecordingLog
from daemon.common import checkpoints as layout
from trainer.worker import checkpoint


def save(d, step, val_loss=None):
    return checkpoint.save(d, step, {"model": {"w": torch.full((64,), float(step))}},
                           {"val_loss": val_loss, "val_step": step if val_loss is not None else None})


def test_save_then_load_latest(tmp_path):
    for step in (10, 20, 30):
        save(tmp_path, step)
    marker, payload = checkpoint.load_latest(tmp_path, RecordingLog())
    assert marker.step == 30 and payload["step"] == 30 and payload["model"]["w"][0] == 30
    assert (layout.newest(tmp_path).step, layout.newest(tmp_path).path) == (30, tmp_path / "step_00000030.pt")  # the supervisor's view agrees
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_newest_falls_back_to_previous_and_is_quarantined(tmp_path, damage):
    save(tmp_path, 10)
    newest = save(tmp_path, 20).path
    data = bytearray(newest.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(data))
    elif damage == "truncate":
        newest.write_bytes(bytes(data[: len(data) // 3]))
    else:
        newest.unlink()
    log = RecordingLog()
    marker, payload = checkpoint.load_latest(tmp_path, log)
    assert marker.step == 10 and payload["model"]["w"][0] == 10
    assert log.at("warning")[0][0] == "checkpoint.corrupt" and log.at("warning")[0][1]["step"] == 20
    assert not (tmp_path / "step_00000020.json").exists()
    assert (tmp_path / "corrupt" / "step_00000020.json").exists()  # kept for a look, not deleted
    assert layout.newest(tmp_path).step == 10


def test_every_checkpoint_damaged_is_an_error_never_a_silent_start_at_step_0(tmp_path):
    p = save(tmp_path, 10).path
    p.write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint left .1 damaged, in corrupt/.") as e:
        checkpoint.load_latest(tmp_path, RecordingLog())
    assert "move" in str(e.value) and (tmp_path / "corrupt" / p.name).read_bytes() == b"garbage"  # kept for a look
    with pytest.raises(checkpoint.CheckpointError):  # and again at the next start: it does not forget
        checkpoint.load_latest(tmp_path, RecordingLog())


def test_a_garbage_marker_is_moved_aside_and_a_lost_markers_pt_is_kept(tmp_path):
    save(tmp_path, 10)
    m = save(tmp_path, 20)
    (tmp_path / "step_00000030.json").write_text("{not json")
    m.marker.unlink()  # a marker lost: its .pt is intact, only uncommitted
    checkpoint.clean_partial(tmp_path)
    checkpoint.prune(tmp_path, keep=3)
    assert not (tmp_path / "step_00000030.json").exists()
    assert (tmp_path / "uncommitted" / "step_00000030.json").exists()  # kept apart, never read as a checkpoint
    assert (tmp_path / "uncommitted" / m.path.name).exists()  # not deleted: kept apart, it is no checkpoint
    assert [c.step for c in checkpoint.list_checkpoints(tmp_path)] == [10]


def test_intact_but_unloadable_is_an_error_not_a_silent_fallback(tmp_path):
    save(tmp_path, 10)
    m = save(tmp_path, 20)
    # Rewrite step 20 as a valid pickle that weights_only refuses, with a matching marker.
    import json
    import pickle

    blob = pickle.dumps(object(), protocol=2)
    m.path.write_bytes(blob)
    meta = json.loads(m.path.with_suffix(".json").read_text())
    meta.update(bytes=len(blob), sha256=layout.digest_file(m.path, meta.get("hash")))
    layout.record_own(tmp_path, 20, meta["sha256"])  # written here: not planted (test_checkpoint_trust.py)
    m.path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError, match="intact .* but does not load"):
        checkpoint.load_latest(tmp_path, RecordingLog())
    assert m.path.exists()  # the file is not thrown away


def test_partial_writes_are_cleaned_and_never_loaded(tmp_path):
    save(tmp_path, 10)
    (tmp_path / ".step_00000020.pt.12345.tmp").write_bytes(b"half")
    (tmp_path / "step_00000020.pt").write_bytes(b"renamed but marker never written")
    assert layout.newest(tmp_path).step == 10
    removed = checkpoint.clean_partial(tmp_path)
    assert sorted(removed) == [".step_00000020.pt.12345.tmp", "step_00000020.pt"]
    assert checkpoint.load_latest(tmp_path, RecordingLog())[0].step == 10


def test_prune_keeps_last_k_and_the_best(tmp_path):
    losses = {10: 3.0, 20: 1.0, 30: 2.0, 40: 2.5, 50: None, 60: 2.2}
    for step, loss in losses.items():
        save(tmp_path, step, loss)
    removed = checkpoint.prune(tmp_path, keep=3)
    assert sorted(removed) == [10, 30]
    assert [m.step for m in checkpoint.list_checkpoints(tmp_path)] == [20, 40, 50, 60]
    assert checkpoint.best(tmp_path).step == 20
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == [f"step_{s:08d}.pt" for s in (20, 40, 50, 60)]
