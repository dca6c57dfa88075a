"""The bucket is untrusted input: a planted state.json never takes over the local run or its money,
and a bucket that cannot be read is "unknown", never "empty" (moto's server on 127.0.0.1, behind
tests/bucket_faults.py's FaultyBucket where the bucket must refuse)."""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone

import pytest

from bucket_faults import FaultyBucket, now_plus, plant_checkpoint, plant_state, state_json
from conftest import RecordingLog, write_config
from daemon import journal
from daemon.common.clock import Clock
from daemon.common.config import load_config
from daemon.cost import Ledger
from daemon.ports.instance import Instance
from daemon.ports.mirror import Mirror, restore_state
from daemon.ports.restore import FRESH, PROVISIONAL
from daemon.state import open_run

BUCKET, PREFIX = "runs", "demo"


def setup_world(tmp_path, endpoint, **aws):
    config = write_config(tmp_path, {"aws": {"endpoint_url": endpoint, "region": "us-east-1", "s3_bucket": BUCKET,
                                             "s3_prefix": PREFIX, "mirror_every": "1s", **aws}})
    cfg = load_config(config)
    cfg.run.state_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def local_run(cfg, run_id="local-run", spend=3.63, updated_at=None):
    """A run on this disk: state.json and its journal, as the daemon leaves them."""
    updated_at = updated_at or now_plus(-3600)
    doc = state_json(run_id, updated_at, spend)
    cfg.state_file.write_text(json.dumps(doc))
    ledger = Ledger.from_json(doc["cost"])
    journal.append(cfg.state_file.with_name(journal.NAME),
                   journal.record(run_id, doc["started_at"], ledger, [], None, updated_at))
    return doc


def s3_client(endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def restore_over_a_local_run(tmp_path, aws, planted: tuple, without_state_json: bool = False):
    """A bucket holding `planted` (run_id, updated_at, spend) over this disk's $3.63 run; the restore
    run once. Returns (cfg, log, result, (state.json, journal) bytes before)."""
    cfg = setup_world(tmp_path, aws)
    s3 = s3_client(aws)
    s3.create_bucket(Bucket=BUCKET)
    local_run(cfg)
    if without_state_json:
        cfg.state_file.unlink()   # moved aside by a person: the journal still holds the run
    before = (cfg.state_file.exists() and cfg.state_file.read_bytes(),
              cfg.state_file.with_name(journal.NAME).read_bytes())
    plant_state(s3, BUCKET, PREFIX, *planted)
    log = RecordingLog()
    return cfg, log, restore_state(cfg, log, Instance(cfg, log, Clock())), before


# ---------------------------------------------------------------- 1. money from the bucket

@pytest.mark.parametrize("planted, why", [
    # the hostile pass's case: another run, dated 2099, $0 (it replaced a $3.63 run with $1.78)
    ({"run_id": "planted", "updated_at": "2099-01-01T00:00:00Z", "total_usd": 0.0}, "future"),
    ({"run_id": "planted", "updated_at": "now", "total_usd": 9.0}, "another run"),
    ({"run_id": "local-run", "updated_at": "2099-01-01T00:00:00Z", "total_usd": 9.0}, "future"),
    ({"run_id": "local-run", "updated_at": "now", "total_usd": 1.78}, "less than"),
])
def test_a_planted_state_never_replaces_the_local_run_or_lowers_its_spend(tmp_path, aws, planted, why):
    updated = now_plus(-10) if planted["updated_at"] == "now" else planted["updated_at"]
    cfg, log, result, before = restore_over_a_local_run(tmp_path, aws,
                                                        (planted["run_id"], updated, planted["total_usd"]))
    assert (cfg.state_file.read_bytes(), cfg.state_file.with_name(journal.NAME).read_bytes()) == before
    [(level, refused)] = log.named("s3.state_refused")
    assert level == "warning" and why in refused["reason"], refused
    assert [a[1] for a in result.alerts] == ["the bucket's state.json was refused"]
    assert why in result.alerts[0][2] and "local-run" in result.alerts[0][2]
    state = open_run(cfg.state_file, datetime.now(timezone.utc), log)
    assert state.run_id == "local-run" and state.cost["total_usd"] == pytest.approx(3.63)


def test_the_journal_protects_the_run_when_state_json_is_gone(tmp_path, aws):
    cfg, log, _, before = restore_over_a_local_run(tmp_path, aws, ("planted", now_plus(-5), 1.78), True)
    assert not cfg.state_file.exists() and log.named("s3.state_refused")
    assert cfg.state_file.with_name(journal.NAME).read_bytes() == before[1]
    state = open_run(cfg.state_file, datetime.now(timezone.utc), log)
    assert state.run_id == "local-run" and state.cost["total_usd"] == pytest.approx(3.63)


def test_a_newer_state_of_the_same_run_still_comes_back(tmp_path, aws):
    cfg, log, result, _ = restore_over_a_local_run(tmp_path, aws, ("local-run", now_plus(-5), 5.0))
    assert result.outcome == "restored" and not result.alerts and not log.named("s3.state_refused")
    assert json.loads(cfg.state_file.read_text())["cost"]["total_usd"] == 5.0


def test_a_fresh_disk_takes_the_buckets_run_but_not_one_dated_in_the_future(tmp_path, aws):
    cfg = setup_world(tmp_path, aws)
    s3 = s3_client(aws)
    s3.create_bucket(Bucket=BUCKET)
    plant_state(s3, BUCKET, PREFIX, "from-the-bucket", now_plus(120), 2.0)  # within clock skew
    log = RecordingLog()
    assert restore_state(cfg, log, Instance(cfg, log, Clock())).outcome == "restored"
    assert json.loads(cfg.state_file.read_text())["run_id"] == "from-the-bucket"
    cfg.state_file.unlink()
    plant_state(s3, BUCKET, PREFIX, "from-the-bucket", "2099-01-01T00:00:00Z", 2.0)
    log = RecordingLog()
    result = restore_state(cfg, log, Instance(cfg, log, Clock()))
    assert not cfg.state_file.exists() and log.named("s3.state_refused")
    assert result.provisional, "nothing local and nothing usable in the bucket: a person decides"


# ---------------------------------------------------------------- 2. unreadable is unknown

@pytest.fixture
def refusing(aws):
    bucket = FaultyBucket(aws, mode="refuse-reads")
    yield bucket
    bucket.close()


class Calls:
    """What the mirror asked of its owner: alerts to send and a reopen of the run."""

    def __init__(self):
        self.alerts: list[tuple[str, str, str]] = []
        self.reopened = threading.Event()

    def alert(self, kind, subject, body):
        self.alerts.append((kind, subject, body))

    def reopen(self):
        self.reopened.set()


def mirror_for(cfg, log, restored, calls):
    return Mirror(cfg, log, Clock(), Instance(cfg, log, Clock()), lambda: False, calls.alert, None, restored,
                  calls.reopen)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_bucket_that_lists_but_refuses_reads_holds_a_fresh_disk_until_it_reads(tmp_path, aws, refusing):
    cfg = setup_world(tmp_path, refusing.url)
    s3 = s3_client(aws)
    s3.create_bucket(Bucket=BUCKET)
    plant_state(s3, BUCKET, PREFIX, "bucket-run", now_plus(-60), 3.63)
    plant_checkpoint(s3, BUCKET, PREFIX, 100)
    log, calls = RecordingLog(), Calls()
    restored = restore_state(cfg, log, Instance(cfg, log, Clock()))
    assert restored.provisional and (cfg.run.state_dir / PROVISIONAL).exists()
    mirror = mirror_for(cfg, log, restored, calls)
    mirror.start_restore()
    wait_for(lambda: refusing.refused() >= 3, 20, "three refused reads (retries)")
    assert mirror.restore_pending, "the worker must not start while the bucket's run is unknown"
    assert [a[1] for a in calls.alerts] == ["the worker waits for the run in S3"]
    assert "amapiano-train start-fresh" in calls.alerts[0][2]
    assert mirror.section()["restore"]["status"] == "waiting"
    refusing.mode = "pass"   # the bucket reads again: the bucket's run is taken, through a reopen
    assert calls.reopened.wait(20)
    assert len(calls.alerts) == 1  # one alert for the outage, not one per try (a reopen needs none)
    log = RecordingLog()
    again = restore_state(cfg, log, Instance(cfg, log, Clock()))
    assert again.outcome == "restored" and not again.provisional
    assert not (cfg.run.state_dir / PROVISIONAL).exists()
    assert open_run(cfg.state_file, datetime.now(timezone.utc), log).run_id == "bucket-run"


def waiting_with_a_local_run(tmp_path, aws, refusing):
    """A run on this disk but no checkpoint (starting now would begin at step 0), a bucket listing
    step 100 that refuses reads, and the restore running: (cfg, log, calls, mirror) once it alerted."""
    cfg = setup_world(tmp_path, refusing.url)
    s3 = s3_client(aws)
    s3.create_bucket(Bucket=BUCKET)
    plant_checkpoint(s3, BUCKET, PREFIX, 100)
    log, calls = RecordingLog(), Calls()
    local_run(cfg)
    restored = restore_state(cfg, log, Instance(cfg, log, Clock()))
    assert not restored.provisional
    mirror = mirror_for(cfg, log, restored, calls)
    mirror.start_restore()
    wait_for(lambda: calls.alerts, 20, "the alert")
    return cfg, log, calls, mirror


def test_a_person_can_start_fresh_while_the_bucket_refuses(tmp_path, aws, refusing):
    cfg, log, calls, mirror = waiting_with_a_local_run(tmp_path, aws, refusing)
    time.sleep(1.5)
    assert mirror.restore_pending
    (cfg.run.state_dir / FRESH).write_text(json.dumps({"at": now_plus(0), "by": "test"}))
    wait_for(lambda: not mirror.restore_pending, 20, "the person's switch")
    assert not (cfg.run.state_dir / FRESH).exists(), "the switch is used once"
    assert log.named("s3.restore_skipped")
    assert not calls.reopened.is_set()


def test_a_local_run_without_checkpoints_waits_then_takes_the_buckets_once_it_reads(tmp_path, aws, refusing):
    from daemon.common import checkpoints

    cfg, log, calls, mirror = waiting_with_a_local_run(tmp_path, aws, refusing)
    refusing.mode = "pass"
    wait_for(lambda: not mirror.restore_pending, 20, "the restore")
    assert checkpoints.newest(cfg.checkpoint_dir).step == 100 and not calls.reopened.is_set()
    assert [a[1] for a in calls.alerts] == ["the worker waits for the run in S3",
                                            "the run in S3 can be read again: the worker goes on"]


def test_a_readable_empty_bucket_starts_fresh_without_waiting(tmp_path, aws):
    cfg = setup_world(tmp_path, aws)
    s3_client(aws).create_bucket(Bucket=BUCKET)
    log, calls = RecordingLog(), Calls()
    restored = restore_state(cfg, log, Instance(cfg, log, Clock()))
    assert not restored.provisional and restored.outcome == "absent"
    mirror = mirror_for(cfg, log, restored, calls)
    mirror.start_restore()
    wait_for(lambda: not mirror.restore_pending, 20, "the restore")
    assert not calls.alerts


def test_a_stalled_bucket_is_unknown_within_a_bounded_time(tmp_path, aws):
    stalled = FaultyBucket(aws, mode="stall")
    try:
        cfg = setup_world(tmp_path, stalled.url)
        log = RecordingLog()
        began = time.monotonic()
        restored = restore_state(cfg, log, Instance(cfg, log, Clock()), timeout_s=2.0)
        assert time.monotonic() - began < 10
        assert restored.provisional and restored.outcome == "unreadable"
    finally:
        stalled.close()


@pytest.mark.parametrize("bucket", ["refuses reads", "holds another run"])
def test_a_read_only_state_directory_costs_the_marker_never_the_start(tmp_path, aws, refusing, bucket):
    """Chaos seeds 721571723 and 45119020: with the state directory read-only (ext4's
    errors=remount-ro), restore_state raised OSError out of Supervisor.__init__ while writing or
    removing its provisional marker: exit 1 with a traceback, and nothing watched the instance."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    cfg = setup_world(tmp_path, refusing.url if bucket == "refuses reads" else aws)
    s3 = s3_client(aws)
    s3.create_bucket(Bucket=BUCKET)
    plant_state(s3, BUCKET, PREFIX, "bucket-run", now_plus(-60), 3.63)
    if bucket == "holds another run":   # a provisional run on this disk, which the bucket's replaces
        (cfg.run.state_dir / PROVISIONAL).write_text("{}")
    where = str(cfg.run.state_dir)
    subprocess.run(["mount", "--bind", where, where], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", where], check=True)
        log = RecordingLog()
        restored = restore_state(cfg, log, Instance(cfg, log, Clock()))   # raised OSError
    finally:
        subprocess.run(["umount", "-l", where], check=True)
    assert restored.outcome in ("unreadable", "absent", "refused")
    assert log.named("s3.state_restore_failed"), (restored, log.events)


def test_bytes_the_worker_refused_are_not_fetched_again_at_each_start(tmp_path, aws):
    """A planted checkpoint was downloaded (gigabytes) at every start, only to be refused again by
    the worker: the restore now skips the digests in checkpoints/corrupt/refused.json and takes the
    one before it."""
    from daemon.common import refused

    cfg = setup_world(tmp_path, aws)
    s3 = s3_client(aws)
    s3.create_bucket(Bucket=BUCKET)
    plant_checkpoint(s3, BUCKET, PREFIX, 10, b"the run's own step 10")
    planted = plant_checkpoint(s3, BUCKET, PREFIX, 20, b"a planted step 20")
    refused.record(cfg.checkpoint_dir, 20, planted["sha256"], "not written here and does not load")
    log, calls = RecordingLog(), Calls()
    mirror = mirror_for(cfg, log, restore_state(cfg, log, Instance(cfg, log, Clock())), calls)
    mirror.start_restore()
    wait_for(lambda: not mirror.restore_pending, 20, "the restore")
    [(_, skipped)] = log.named("s3.checkpoint_refused")
    assert skipped["step"] == 20 and "refused these very bytes before" in skipped["error"]
    assert [kw["step"] for _, kw in log.named("s3.restored")] == [10]
    assert not (cfg.checkpoint_dir / "step_00000020.pt").exists()
