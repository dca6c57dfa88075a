"""The real daemon against a hostile bucket (moto's server, behind tests/bucket_faults.py where it
must refuse): a planted state.json takes nothing over, and a bucket that lists a run but refuses
to hand it over holds the worker, alerts, and lets a person or a readable bucket decide."""
from __future__ import annotations

import json
import time

import pytest

from bucket_faults import FaultyBucket, now_plus, plant_checkpoint, plant_state, state_json
from conftest import cli, write_config

pytestmark = pytest.mark.slow
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET, PREFIX = "runs", "demo"


def config_for(tmp_path, endpoint):
    return write_config(tmp_path, {"train": {"epochs": 400}}, {
        "aws": {"endpoint_url": endpoint, "region": "us-east-1", "s3_bucket": BUCKET, "s3_prefix": PREFIX,
                "mirror_every": "1s"}})


def s3_client(endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def subjects(state):
    return [a["subject"] for a in state.get("alerts") or []]


def events(d, name):
    return [e for _, e in d.events() if e["event"] == name]


def test_a_planted_state_does_not_take_over_a_running_instance(tmp_path, daemons, aws):
    """The hostile pass's case: another run_id, updated_at in 2099, $0, in the bucket; the daemon
    restarted. It replaced the local run ($3.63 -> $1.78, new run_id, journal overwritten)."""
    from daemon import journal
    from daemon.cost import Ledger

    s3 = s3_client(aws)
    s3.create_bucket(Bucket=BUCKET)
    config = config_for(tmp_path, aws)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    mine = state_json("local-run", now_plus(-600), 3.63)
    (state_dir / "state.json").write_text(json.dumps(mine))
    journal.append(state_dir / journal.NAME, journal.record("local-run", mine["started_at"],
                                                            Ledger.from_json(mine["cost"]), [], None, now_plus(-600)))
    plant_state(s3, BUCKET, PREFIX)   # planted, 2099, $0
    d = daemons(config, AWS_ENV)
    state = d.wait_state(lambda s: "[amapiano-train] the bucket's state.json was refused" in subjects(s), timeout=60)
    assert state["run_id"] == "local-run" and state["cost"]["total_usd"] >= 3.63
    [refused] = events(d, "s3.state_refused")
    assert "future" in refused["reason"] and "another run" in refused["reason"]
    assert journal.last(state_dir / journal.NAME)["run_id"] == "local-run"
    assert d.stop() == 0


@pytest.fixture
def refusing(aws):
    bucket = FaultyBucket(aws, mode="refuse-reads")
    yield bucket
    bucket.close()


def plant_run(aws):
    s3 = s3_client(aws)
    s3.create_bucket(Bucket=BUCKET)
    plant_state(s3, BUCKET, PREFIX, "bucket-run", now_plus(-60), 3.63)
    plant_checkpoint(s3, BUCKET, PREFIX, 100)


def waiting(d) -> dict:
    return d.wait_state(lambda s: ((s.get("mirror") or {}).get("restore") or {}).get("status") == "waiting"
                        and "[amapiano-train] the worker waits for the run in S3" in subjects(s), timeout=60)


def test_a_bucket_that_refuses_reads_holds_the_worker_until_a_person_starts_fresh(tmp_path, daemons, aws,
                                                                                    refusing):
    """Before: a new run_id, $0 and step 0 while the bucket listed a checkpoint at step 100; one
    error line, no alert."""
    plant_run(aws)
    config = config_for(tmp_path, refusing.url)
    nothing = cli("start-fresh", "--config", str(config), timeout=60)
    assert nothing.returncode == 1 and "nothing waits for the bucket" in nothing.stderr  # no wait yet: no switch
    d = daemons(config, AWS_ENV)
    state = waiting(d)
    time.sleep(2)   # retries go on; the worker stays down
    assert d.state()["trainer"]["pid"] is None and not events(d, "worker.started")
    assert not (tmp_path / "state" / "heartbeat.json").exists()
    assert "AccessDenied" in state["mirror"]["restore"]["reason"]
    assert len(events(d, "s3.restore_waiting")) >= 2 and refusing.refused() >= 2
    r = cli("start-fresh", "--config", str(config), timeout=60)
    assert r.returncode == 0 and "a new run begins" in r.stdout, r.stderr
    started = d.wait_state(lambda s: s["trainer"]["pid"] is not None, timeout=60)
    assert started["run_id"] != "bucket-run" and "restore" not in started["mirror"]
    assert events(d, "s3.restore_skipped")
    assert d.stop() == 0


def test_a_bucket_that_reads_again_brings_its_run_back(tmp_path, daemons, aws, refusing):
    plant_run(aws)
    config = config_for(tmp_path, refusing.url)
    d = daemons(config, AWS_ENV)
    waiting(d)
    refusing.mode = "pass"
    assert d.proc.wait(60) == 75, d.log_text()[-3000:]   # EX_TEMPFAIL: systemd starts it again on that run
    assert not events(d, "worker.started")
    d2 = daemons(config, AWS_ENV)   # what systemd's Restart=on-failure does
    state = d2.wait_state(lambda s: s["run_id"] == "bucket-run", timeout=60)
    assert state["cost"]["total_usd"] >= 3.63
    deadline = time.monotonic() + 60
    while not any(e.get("step") == 100 for e in events(d2, "s3.restored")):
        assert time.monotonic() < deadline, d2.log_text()[-3000:]
        time.sleep(0.1)
    assert d2.stop() in (0, 75)


def test_sigterm_while_waiting_for_the_bucket_is_prompt(tmp_path, daemons, aws, refusing):
    plant_run(aws)
    d = daemons(config_for(tmp_path, refusing.url), AWS_ENV)
    waiting(d)
    began = time.monotonic()
    assert d.stop(30) == 0
    assert time.monotonic() - began < 10
