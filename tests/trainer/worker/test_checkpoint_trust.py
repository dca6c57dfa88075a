"""A checkpoint the trainer did not write (restored from the bucket, planted beside ours) is
untrusted: nothing in it is unpickled by a general unpickler, and one that does not load is set
aside in corrupt/ for the one before it, where the trainer's own intact checkpoint that does not
load stays an error (a version problem: falling back would throw its training away)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import RecordingLog, write_config
from daemon.common import checkpoints as layout
from daemon.common import exits, refused
from trainer.worker import checkpoint


class Payload:
    """What a hostile bucket object unpickles into: a shell command that leaves a file behind."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return os.system, (f"touch {self.flag}",)


def save(d: Path, step: int) -> layout.Marker:
    return checkpoint.save(d, step, {"model": {"w": torch.full((8,), float(step))}}, {})


def plant_pt(d: Path, step: int, blob: bytes) -> None:
    """As the S3 restore writes one: the bytes, then a marker whose size and SHA-256 are right."""
    path = layout.data_path(d, step)
    path.write_bytes(blob)
    meta = {"step": step, "file": path.name, "bytes": len(blob), "sha256": layout.sha256_file(path), "format": 1}
    layout.marker_path(d, step).write_text(json.dumps(meta))


def plant_sharded(d: Path, step: int, build) -> Path:
    """A sharded checkpoint (`build(dir)` fills it) committed by a consistent manifest marker."""
    path = layout.sharded_path(d, step)
    path.mkdir()
    build(path)
    with open(path / checkpoint.EXTRA, "wb") as f:
        torch.save({"format": 1, "step": step}, f)
    manifest = layout.manifest_of(path)
    meta = {"step": step, "file": path.name, "bytes": sum(e["bytes"] for e in manifest.values()),
            "sha256": layout.manifest_sha256(manifest), "manifest": manifest, "format": 1}
    layout.marker_path(d, step).write_text(json.dumps(meta))
    return path


def dcp_save(state: dict, path: Path) -> None:
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process": it is
        dcp.save(state, checkpoint_id=path)


def assert_set_aside(d: Path, log: RecordingLog, step: int, name: str) -> None:
    assert [w for w in log.at("warning") if w[0] == "checkpoint.refused"][0][1]["step"] == step
    assert "\n" not in log.at("warning")[-1][1]["error"]
    assert (d / "corrupt" / name).exists() and (d / "corrupt" / layout.marker_path(d, step).name).exists()
    assert layout.newest(d).step == 10


# -- code from the bucket ------------------------------------------------------------------------

def test_a_dcp_metadata_pickle_that_names_code_is_refused_and_never_run(tmp_path):
    flag = tmp_path / "PWNED"
    save(tmp_path, 10)
    plant_sharded(tmp_path, 20, lambda p: (p / ".metadata").write_bytes(pickle.dumps(Payload(flag))))
    log = RecordingLog()
    marker, payload = checkpoint.load_latest(tmp_path, log)
    assert not flag.exists(), "the planted pickle ran"
    assert marker.step == 10 and payload["model"]["w"][0] == 10
    assert "os.system" in log.at("warning")[0][1]["error"] or "posix.system" in log.at("warning")[0][1]["error"]
    assert_set_aside(tmp_path, log, 20, "step_00000020.dcp")


def test_a_dcp_bytes_item_that_names_code_is_refused_and_never_run(tmp_path):
    """Legitimate metadata, but a non-tensor item (DCP keeps those as torch.save pickles, which
    its planner loads with weights_only=False) holding code."""
    flag = tmp_path / "PWNED"
    save(tmp_path, 10)
    plant_sharded(tmp_path, 20, lambda p: dcp_save({"model": {"w": torch.zeros(8)},
                                                    "optimizer": {"lr": Payload(flag)}}, p))
    log = RecordingLog()
    marker, _ = checkpoint.load_latest(tmp_path, log)
    assert not flag.exists(), "the planted pickle ran"
    assert marker.step == 10
    assert_set_aside(tmp_path, log, 20, "step_00000020.dcp")


def test_a_dcp_item_that_points_outside_its_directory_is_refused(tmp_path):
    """The metadata names the file each item is read from: a bucket may not point it at ours."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    save(tmp_path, 10)
    (tmp_path / "secret").write_bytes(b"x" * 64)

    def build(p: Path) -> None:
        dcp_save({"model": {"w": torch.zeros(8)}, "optimizer": {"lr": 0.1}}, p)
        meta = FileSystemReader(p).read_metadata()  # our own, freshly written: safe to read here
        for info in meta.storage_data.values():
            info.relative_path = "../secret"
        (p / ".metadata").write_bytes(pickle.dumps(meta))

    plant_sharded(tmp_path, 20, build)
    log = RecordingLog()
    assert checkpoint.load_latest(tmp_path, log)[0].step == 10
    assert "outside" in log.at("warning")[0][1]["error"]
    assert_set_aside(tmp_path, log, 20, "step_00000020.dcp")


def test_a_real_sharded_checkpoint_of_our_model_loads_through_the_allow_list(tmp_path):
    """The allow-list is every class a real save of this model and its AdamW state pickles."""
    from daemon.common.config import load_config
    from trainer.worker.model import TrainableMusicgen, load_base_model
    from torch.distributed.checkpoint.state_dict import get_state_dict

    base, _ = load_base_model(load_config(write_config(tmp_path)))
    model = TrainableMusicgen(base)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()
    msd, osd = get_state_dict(model, optimizer)
    d = tmp_path / "checkpoints"
    d.mkdir()
    plant_sharded(d, 20, lambda p: dcp_save({"model": msd, "optimizer": osd}, p))
    marker, payload = checkpoint.load_latest(d, RecordingLog())
    assert marker.step == 20 and payload["optimizer_keys"] == "fqn"
    assert all(torch.equal(payload["model"][k], v) for k, v in msd.items())
    assert payload["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)


# -- a digest-valid checkpoint that is not what its marker says -----------------------------------

@pytest.mark.parametrize("planted", ["another step", "not a torch file", "a pickle weights_only refuses"])
def test_a_restored_checkpoint_that_does_not_load_is_set_aside_for_the_one_before(tmp_path, planted):
    flag = tmp_path / "PWNED"
    save(tmp_path, 10)
    blob = {"another step": layout.data_path(tmp_path, 10).read_bytes(), "not a torch file": b"\x00" * 4096,
            "a pickle weights_only refuses": pickle.dumps(Payload(flag))}[planted]
    plant_pt(tmp_path, 20, blob)
    log, damaged = RecordingLog(), []
    marker, payload = checkpoint.load_latest(tmp_path, log, quarantined=damaged)
    assert marker.step == 10 and payload["step"] == 10 and not flag.exists()
    assert_set_aside(tmp_path, log, 20, "step_00000020.pt")
    assert damaged == [], "the bucket holds the same bytes: asking it again (exit 75) would loop"
    assert refused.digests(tmp_path) == {json.loads((tmp_path / "corrupt" / "step_00000020.json").read_text())["sha256"]}


def test_a_checkpoint_damaged_on_disk_is_not_recorded_as_refused(tmp_path):
    """Its marker's digest is the right one: the bucket's intact copy must still come back."""
    save(tmp_path, 10)
    save(tmp_path, 20)
    pt = layout.data_path(tmp_path, 20)
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit flipped by the disk
    pt.write_bytes(bytes(data))
    damaged: list[int] = []
    assert checkpoint.load_latest(tmp_path, RecordingLog(), quarantined=damaged)[0].step == 10
    assert damaged == [20] and refused.digests(tmp_path) == set()


def test_our_own_intact_checkpoint_that_does_not_load_is_still_an_error(tmp_path):
    """What this disk's trainer wrote and cannot read now is a version problem: kept, and the run
    stops and says so, instead of training again from an older step."""
    save(tmp_path, 10)
    m = save(tmp_path, 20)
    layout.data_path(tmp_path, 20).write_bytes(layout.data_path(tmp_path, 10).read_bytes())
    meta = dict(m.meta, sha256=layout.digest_file(m.path, m.meta["hash"]))
    layout.record_own(tmp_path, 20, meta["sha256"])  # as if our own save had written these bytes
    m.marker.write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError, match="not a format-1 checkpoint of step 20; this trainer "
                       "wrote it") as e:
        checkpoint.load_latest(tmp_path, RecordingLog())
    assert "\n" not in str(e.value) and m.path.exists() and layout.newest(tmp_path).step == 20


def test_what_the_trainer_saves_is_its_own_and_a_copy_of_other_bytes_is_not(tmp_path):
    own = save(tmp_path, 10)
    assert layout.is_own(own)
    plant_pt(tmp_path, 20, b"x")
    assert not layout.is_own(layout.newest(tmp_path))
    save(tmp_path, 30)  # the record keeps only what is still committed: it does not grow for ever
    assert set(json.loads((tmp_path / layout.OWN).read_text())) == {"10", "30"}


def test_every_checkpoint_refused_is_an_error_never_a_silent_start_at_step_0(tmp_path):
    plant_pt(tmp_path, 20, b"\x00" * 64)
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint left"):
        checkpoint.load_latest(tmp_path, RecordingLog())


# -- set aside, never overwritten ----------------------------------------------------------------

def test_a_pt_whose_marker_was_deleted_is_kept_beside_an_older_orphan(tmp_path):
    save(tmp_path, 10)
    save(tmp_path, 20)
    save(tmp_path, 40)
    layout.marker_path(tmp_path, 40).unlink()  # a kill between the rename and the marker
    checkpoint.clean_partial(tmp_path)
    first = (tmp_path / "uncommitted" / "step_00000040.pt").read_bytes()
    layout.marker_path(tmp_path, 20).unlink()  # then someone deletes a marker
    checkpoint.clean_partial(tmp_path)
    kept = tmp_path / "uncommitted"
    assert (kept / "step_00000040.pt").read_bytes() == first
    assert torch.load(kept / "step_00000020.pt", weights_only=True)["model"]["w"][0] == 20
    save(tmp_path, 40)  # the same step, orphaned again: the second copy does not replace the first
    layout.marker_path(tmp_path, 40).unlink()
    checkpoint.clean_partial(tmp_path)
    assert sorted(p.name for p in kept.iterdir()) == ["step_00000020.pt", "step_00000040.1.pt", "step_00000040.pt"]


def test_the_same_step_set_aside_twice_keeps_both(tmp_path):
    """The restore brings a refused bucket checkpoint back at each start while the run is below it."""
    save(tmp_path, 10)
    for _ in range(2):
        plant_sharded(tmp_path, 20, lambda p: (p / ".metadata").write_bytes(b"not a pickle"))
        assert checkpoint.load_latest(tmp_path, RecordingLog())[0].step == 10
    names = sorted(p.name for p in (tmp_path / "corrupt").iterdir())
    assert names == ["refused.json", "step_00000020.1.dcp", "step_00000020.1.json", "step_00000020.dcp",
                     "step_00000020.json"]


# -- the worker, as a real process ----------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One epoch (8 steps, checkpoints at 4 and 8) of the FAST config, trained once for these tests."""
    root = tmp_path_factory.mktemp("trained")
    r = subprocess.run(worker(write_config(root, {"train": {"epochs": 1}})), capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == exits.OK, r.stdout[-2000:] + r.stderr[-2000:]
    return root


def worker(config: Path) -> list[str]:
    return [sys.executable, "-m", "trainer", "--config", str(config), "--log-format", "json"]


def resume_past(trained: Path, tmp_path: Path, plant) -> tuple[subprocess.CompletedProcess, Path]:
    """Copy the trained run, plant step 12, train on to 16 with an S3 bucket configured (its restore
    is what brings a planted checkpoint down)."""
    shutil.copytree(trained / "state", tmp_path / "state")
    directory = tmp_path / "state" / "checkpoints"
    plant(directory)
    config = write_config(tmp_path, {"train": {"epochs": 2}, "aws": {"s3_bucket": "a-bucket", "region": "us-east-1"}})
    return subprocess.run(worker(config), capture_output=True, text=True, timeout=180), directory


def events(out: str, name: str) -> list[dict]:
    return [json.loads(line[3:]) for line in out.splitlines() if f'"event":"{name}"' in line]


@pytest.mark.slow
def test_the_worker_refuses_a_planted_dcp_pickle_and_resumes_from_the_checkpoint_before(trained, tmp_path):
    flag = tmp_path / "PWNED"
    r, directory = resume_past(trained, tmp_path, lambda d: plant_sharded(
        d, 12, lambda p: (p / ".metadata").write_bytes(pickle.dumps(Payload(flag)))))
    assert not flag.exists(), "the planted pickle ran"
    assert r.returncode == exits.OK, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr
    assert [e["step"] for e in events(r.stdout, "checkpoint.refused")] == [12]
    assert [e["step"] for e in events(r.stdout, "train.resumed")] == [8]
    assert (directory / "corrupt" / "step_00000012.dcp").is_dir() and layout.newest(directory).step == 16


@pytest.mark.slow
def test_the_worker_skips_a_planted_checkpoint_of_another_step(trained, tmp_path):
    r, directory = resume_past(trained, tmp_path, lambda d: plant_pt(d, 12, layout.data_path(d, 4).read_bytes()))
    assert r.returncode == exits.OK, r.stdout[-3000:] + r.stderr[-3000:]
    assert [e["step"] for e in events(r.stdout, "checkpoint.refused")] == [12]
    assert [e["step"] for e in events(r.stdout, "train.resumed")] == [8]
    assert (directory / "corrupt" / "step_00000012.pt").is_file() and layout.newest(directory).step == 16
