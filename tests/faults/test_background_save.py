"""A checkpoint written in the background on a slow disk, against the real daemon and real workers:
the supervisor does not take the wait for a slow write for a hang; a Spot notice during the write
waits for it to commit, then checkpoints the stop and uploads it; a write that outlasts
stop_timeout is cut there (SIGKILL), and the previous checkpoint is what remains.

The disk is made slow with the worker's test-only AMAPIANO_TEST_SLOW_SAVE_S (trainer/worker/
async_save.py: "S@STEP" holds step STEP's write S seconds once its bytes are in the temp file,
before the rename and the marker; several comma-separated, the first naming the step wins).
"""
from __future__ import annotations

import json
import re
import time

import pytest
from conftest import write_config

from daemon.common import checkpoints as layout

pytestmark = pytest.mark.slow  # a daemon and one worker each, 15 to 40 s
SLOW = "AMAPIANO_TEST_SLOW_SAVE_S"
LONG = {"train": {"epochs": 400}}
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def worker_events(d) -> list[dict]:
    """The supervisor's and the worker's JSON events (a hung worker's stack dump is plain text)."""
    return [json.loads(m.group(1)) for m in re.finditer(r"^<[0-7]>(\{.*\})$", d.log_text(), re.M)]


def writing(directory, step: int) -> list:
    return sorted(directory.glob(f".{layout.stem(step)}.pt.*.tmp")) if directory.exists() else []


def wait_until(predicate, timeout: float, what: str, d=None):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"no {what} in {timeout} s" + (f":\n{d.log_text()[-3000:]}" if d else "")
        if d is not None:
            assert d.proc.poll() is None, f"supervisor exited {d.proc.returncode}:\n{d.log_text()[-3000:]}"
        time.sleep(0.02)
    return found


def test_a_disk_that_slows_down_is_not_called_a_hang(tmp_path, daemons):
    # Writes of 1.2 s, then one of 6 s (EBS burst credits spent): the loop waits ~5 s for it at the
    # next save, past checkpoint_timeout (2 s) and past 3 x the longest wait measured so far.
    # The worker's measured writes (checkpoint_write_s, 1.2 s) allow 6 x 1.2 = 7.2 s.
    config = write_config(tmp_path, {"supervisor": {"checkpoint_timeout": "2s", "heartbeat_timeout": "20s",
                                                    "validation_timeout": "20s"}})
    d = daemons(config, {SLOW: "6@12,1.2"})
    state = d.wait_state(lambda s: s["phase"] in ("COMPLETED", "FAILED"), timeout=120)
    log = worker_events(d)
    hung = [e for e in log if e["event"] == "worker.hung"]
    assert not hung, f"a slow write was called a hang: {hung}"
    assert state["phase"] == "COMPLETED" and state["trainer"]["restarts"] == 0, state
    assert sum(e["event"] == "worker.started" for e in log) == 1
    saved = {e["step"]: e for e in log if e["event"] == "checkpoint.saved"}
    assert saved[16]["stall_s"] > 2.0, "the premise: the loop waited on step 12's write past checkpoint_timeout"
    assert saved[12]["write_s"] >= 6.0
    beat = json.loads((tmp_path / "state" / "heartbeat.json").read_text())
    assert beat["checkpoint_write_s"] >= 6.0, "the heartbeat carries the longest write"
    assert d.stop() == 0


def test_a_spot_notice_during_a_background_write_waits_for_it_then_checkpoints_and_uploads_the_stop(
        tmp_path, daemons, aws, imds):
    import boto3

    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    s3.create_bucket(Bucket="runs")
    config = write_config(tmp_path, LONG, {"aws": {"imds_url": imds.url, "endpoint_url": aws, "region": "us-east-1",
                                                   "spot_poll": "300ms", "s3_bucket": "runs", "s3_prefix": "r"}})
    ckpts = tmp_path / "state" / "checkpoints"
    d = daemons(config, {**AWS_ENV, SLOW: "4@8"})
    wait_until(lambda: writing(ckpts, 8) and (d.state().get("trainer", {}).get("step") or 0) > 8, 120,
               "step past 8 while step 8's checkpoint is written", d)
    imds.announce_interruption("terminate", in_seconds=120)
    upload = d.wait_state(lambda s: ((s.get("spot") or {}).get("interruption") or {}).get("upload"),
                          timeout=60)["spot"]["interruption"]["upload"]  # well inside AWS's two minutes
    assert "error" not in upload, upload
    log = worker_events(d)
    saved = [e["step"] for e in log if e["event"] == "checkpoint.saved"]
    preempted = next(e for e in log if e["event"] == "train.preempted")
    assert 8 in saved and preempted["step"] > 8 and preempted["step"] in saved, "the write in flight, then the stop's"
    assert upload["step"] == preempted["step"], "the stop's own checkpoint went up"
    assert not [e for e in log if e["event"] in ("worker.hung", "worker.stop_timeout")]
    [exited] = wait_until(lambda: [e for e in worker_events(d) if e["event"] == "worker.exited"], 30,
                          "the worker's exit", d)
    assert exited["kind"] == "preempted", exited
    committed = layout.list_checkpoints(ckpts)
    assert {8, preempted["step"]} <= {m.step for m in committed}
    assert all(layout.verify(m) is None for m in committed) and not list(ckpts.glob(".*.tmp"))
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="runs", Prefix="r/")["Contents"]}
    assert f"r/checkpoints/{layout.stem(preempted['step'])}.pt" in keys
    assert d.stop() == 0


def test_a_write_that_outlasts_stop_timeout_is_cut_there_and_the_previous_checkpoint_remains(tmp_path, daemons):
    config = write_config(tmp_path, LONG, {"supervisor": {"stop_timeout": "5s"}})
    ckpts = tmp_path / "state" / "checkpoints"
    d = daemons(config, {SLOW: "300@8"})  # a disk that stopped answering
    wait_until(lambda: writing(ckpts, 8) and (d.state().get("trainer", {}).get("step") or 0) > 8, 120,
               "step past 8 while step 8's checkpoint is written", d)
    asked = time.monotonic()
    assert d.stop(60) == 0  # systemctl stop: SIGTERM to the supervisor
    took = time.monotonic() - asked
    assert took < 25, f"stop took {took:.0f} s with stop_timeout 5 s"
    log = worker_events(d)
    assert [e for e in log if e["event"] == "worker.stop_timeout"], d.log_text()[-3000:]
    assert not [e for e in log if e["event"] == "train.preempted"], "the worker never got past the write"
    newest = layout.newest(ckpts)
    assert newest.step == 4 and layout.verify(newest) is None, "step 8 never committed; step 4 intact"
    assert writing(ckpts, 8), "the partial is left for the next start to remove"
