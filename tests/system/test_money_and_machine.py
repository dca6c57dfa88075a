"""Issue 3 end to end: the real daemon against moto (EC2, S3), aiosmtpd and our IMDSv2 server."""
from __future__ import annotations

import shutil
import time

import pytest

from conftest import write_config

pytestmark = pytest.mark.slow
LONG = {"train": {"epochs": 400}}


@pytest.fixture
def instance(aws, imds):
    """A moto EC2 instance that the IMDS server says we are."""
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=aws, region_name="us-east-1")
    iid = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1,
                            InstanceType="g5.xlarge")["Instances"][0]["InstanceId"]
    imds.identity = {**imds.identity, "instanceId": iid}

    def state() -> str:
        return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]

    return iid, state


def machine(endpoint, imds, smtp_sink, **sections) -> dict:
    base = {"aws": {"imds_url": imds.url, "endpoint_url": endpoint, "region": "us-east-1", "spot_poll": "300ms"},
            "email": {"transport": "smtp", "to": ["person@example.com"], "sender": "bot@example.com",
                      "smtp_host": "127.0.0.1", "smtp_port": smtp_sink.port, "smtp_starttls": False,
                      "retry_every": "300ms", "shutdown_wait": "10s"}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return base


AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def subjects(sink) -> list[str]:
    return [m["Subject"] for m in sink.messages]


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def halted(d, timeout: float) -> dict:
    """Wait until a rule's shutdown has been carried out (the daemon itself stays up)."""
    return d.wait_state(lambda s: (s.get("shutdown") or {}).get("stage") == "done", timeout=timeout)


def test_idle_warns_by_email_then_stops_the_instance(tmp_path, daemons, instance, aws, imds, smtp_sink):
    iid, ec2_state = instance
    smtp_sink.up()
    config = write_config(tmp_path, {"train": {"epochs": 1}}, machine(
        aws, imds, smtp_sink, idle={"timeout": "6s", "warn_before": "3s", "check_every": "200ms",
                                    "action": "ec2-stop"}))
    d = daemons(config, AWS_ENV)
    # Completed, then the final evaluation and export (busy, not idle); from then on nothing runs.
    d.wait_state(lambda s: ((s.get("milestone") or {}).get("completion") or {}).get("status") == "done", timeout=120)
    completed_at = time.monotonic()
    warning = wait_until(lambda: [m for m in smtp_sink.messages if "idle shutdown in" in m["Subject"]], 30,
                         "the idle warning")
    warned_after = time.monotonic() - completed_at
    assert ec2_state() == "running", "the warning comes before the stop"
    assert warning[0]["Subject"] == "[amapiano-train] idle shutdown in 3 s"
    assert "amapiano-train hold" in warning[0].get_payload()  # says how to cancel
    state = halted(d, 60)
    assert ec2_state() in ("stopping", "stopped")
    assert d.proc.poll() is None  # it outlives its decision: still watching until systemd stops it
    assert state["shutdown"]["reason"].startswith("idle") and "StopInstances" in state["shutdown"]["result"]
    assert not state["shutdown"]["warning_undelivered"]
    assert subjects(smtp_sink)[-1].startswith("[amapiano-train] stopping the instance now")
    assert d.stop() == 0
    assert 1.0 < warned_after < 6.5  # deadline (6 s) minus lead (3 s), give or take the checks and start-up


def test_activity_means_nothing_is_stopped(tmp_path, daemons, instance, aws, imds, smtp_sink):
    iid, ec2_state = instance
    smtp_sink.up()
    config = write_config(tmp_path, LONG, machine(
        aws, imds, smtp_sink, idle={"timeout": "3s", "warn_before": "1s", "check_every": "200ms",
                                    "action": "ec2-stop"}))
    d = daemons(config, AWS_ENV)
    d.wait_state(lambda s: (s["trainer"]["step"] or 0) >= 5, timeout=90)
    time.sleep(8)  # well past the idle timeout, while training steps go on
    assert ec2_state() == "running" and d.proc.poll() is None
    assert not [s for s in subjects(smtp_sink) if "idle" in s]
    assert d.stop() == 0


def test_budget_alerts_once_each_then_checkpoints_and_stops_at_the_cap(tmp_path, daemons, instance, aws, imds,
                                                                        smtp_sink):
    iid, ec2_state = instance
    smtp_sink.up()
    # $1800/h is $0.50/s: 50 % at ~4 s, 80 % at ~6.4 s, the $4 cap at ~8 s.
    config = write_config(tmp_path, LONG, machine(
        aws, imds, smtp_sink, budget={"max_usd": 4.0, "hourly_rate_usd": 1800.0, "alert_fractions": [0.5, 0.8],
                                      "check_every": "200ms", "action": "ec2-stop"}))
    d = daemons(config, AWS_ENV)
    halted(d, 120)
    assert ec2_state() in ("stopping", "stopped")
    assert d.stop() == 0
    got = subjects(smtp_sink)
    assert got.count("[amapiano-train] 50 % of the budget spent") == 1
    assert got.count("[amapiano-train] 80 % of the budget spent") == 1
    assert sum(s.startswith("[amapiano-train] budget cap reached") for s in got) == 1
    assert got.index("[amapiano-train] 80 % of the budget spent") < [i for i, s in enumerate(got)
                                                                    if s.startswith("[amapiano-train] budget cap")][0]
    state = d.state()
    assert state["phase"] == "HALTED" and state["shutdown"]["reason"] == "budget cap reached"
    t = state["trainer"]
    assert t["last_exit_code"] == 75 and t["last_checkpoint_step"] == t["step"]  # checkpointed, nothing lost
    assert state["cost"]["total_usd"] >= 4.0

    # Started again (say, the instance was started by hand): the budget is re-checked first,
    # the worker stays stopped, and the person hears why (the idle rule stops the instance later).
    d2 = daemons(config, AWS_ENV)
    state2 = d2.wait_state(lambda s: s["phase"] == "HALTED", timeout=60)
    wait_until(lambda: "[amapiano-train] budget cap reached: the worker stays stopped" in subjects(smtp_sink), 20,
               "the restart's budget alert")
    assert d2.stop() == 0
    assert "worker.started" not in d2.log_text() and d2.state()["trainer"]["pid"] is None


def test_spot_notice_checkpoints_uploads_and_the_next_start_resumes_there(tmp_path, daemons, instance, aws, imds,
                                                                          smtp_sink):
    import boto3

    smtp_sink.up()
    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    s3.create_bucket(Bucket="runs")
    config = write_config(tmp_path, LONG, machine(aws, imds, smtp_sink, aws={"s3_bucket": "runs", "s3_prefix": "demo"}))
    d = daemons(config, AWS_ENV)
    d.wait_state(lambda s: (s["trainer"]["step"] or 0) >= 10, timeout=90)
    imds.announce_interruption("terminate", in_seconds=120)
    noticed = time.monotonic()
    state = d.wait_state(lambda s: ((s.get("spot") or {}).get("interruption") or {}).get("upload"), timeout=60)
    seconds = time.monotonic() - noticed
    upload = state["spot"]["interruption"]["upload"]
    assert "error" not in upload, upload
    notice_step = state["spot"]["interruption"]["step"]
    assert upload["step"] >= notice_step  # no step before the notice is lost
    assert seconds < 30  # well inside the two minutes
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="runs", Prefix="demo/")["Contents"]}
    assert f"demo/checkpoints/step_{upload['step']:08d}.pt" in keys and "demo/state.json" in keys
    assert any("Spot interruption" in s for s in subjects(smtp_sink))
    d.wait_state(lambda s: s["phase"] == "HALTED", timeout=30)
    assert d.stop() == 0

    # A replacement instance: no local checkpoints, no notice. It resumes from S3 at that step.
    shutil.rmtree(tmp_path / "state" / "checkpoints")
    imds.spot_action = None
    d2 = daemons(config, AWS_ENV)
    resumed = d2.wait_state(lambda s: s["trainer"]["resumed_from_step"] is not None
                            and s["trainer"]["pid"] is not None, timeout=90)
    assert resumed["trainer"]["resumed_from_step"] == upload["step"]
    assert "s3.restored" in d2.log_text()
    assert d2.stop() == 0


def test_sigkill_and_restart_neither_lose_nor_double_count_cost(tmp_path, daemons):
    rate = 3600.0  # $1 a second
    config = write_config(tmp_path, LONG, {"budget": {"hourly_rate_usd": rate, "max_usd": 10000.0,
                                                      "check_every": "200ms"}})
    d = daemons(config)
    first = d.wait_state(lambda s: (s.get("cost") or {}).get("compute_usd", 0) > 1.0, timeout=60)
    started_boottime = first["cost"]["accounted_boottime_s"] - first["cost"]["compute_usd"] * 3600 / rate
    time.sleep(1.0)
    d.kill()  # SIGKILL, supervisor and worker
    before_kill = d.state()["cost"]
    time.sleep(3.0)  # the instance runs on while the daemon is down: that is billed too
    d2 = daemons(config)
    d2.wait_state(lambda s: s["cost"]["accounted_boottime_s"] > before_kill["accounted_boottime_s"] + 3, timeout=60)
    assert d2.stop() == 0
    end = d2.state()["cost"]
    billed_s = end["accounted_boottime_s"] - started_boottime
    assert end["compute_usd"] == pytest.approx(billed_s * rate / 3600, rel=1e-9)  # every second once
    assert end["accounted_boottime_s"] == pytest.approx(time.clock_gettime(time.CLOCK_BOOTTIME), abs=3)
    assert sum(end["hourly"].values()) == pytest.approx(end["compute_usd"], rel=1e-9)
    assert end["boots"] == 1


def test_a_dead_mail_server_delays_the_shutdown_a_bounded_time_and_says_so(tmp_path, daemons, smtp_sink,
                                                                          fault_report):
    # The SMTP server never comes up. The shutdown still happens, shutdown_wait after it began.
    config = write_config(tmp_path, {"train": {"epochs": 1}}, {
        "idle": {"timeout": "4s", "warn_before": "2s", "check_every": "200ms", "action": "none"},
        "email": {"transport": "smtp", "to": ["person@example.com"], "smtp_host": "127.0.0.1",
                  "smtp_port": smtp_sink.port, "smtp_starttls": False, "retry_every": "300ms",
                  "shutdown_wait": "2s"}})
    d = daemons(config)
    state = halted(d, 90)
    assert d.stop() == 0
    assert state["shutdown"]["reason"].startswith("idle")
    undelivered = state["shutdown"]["warning_undelivered"]
    assert any("idle shutdown in" in s for s in undelivered)
    errors = [e for p, e in d.events() if p == 3]
    assert [e["event"] for e in errors] == ["shutdown.warning_undelivered"]
    assert all(a["status"] == "pending" and "refused" in (a["error"] or "").lower() for a in state["alerts"])
    fault_report("SMTP down through a shutdown: bounded wait, shutdown done, undelivered warning at error level")


def test_s3_refusing_the_upload_is_an_error_and_an_alert_not_a_crash(tmp_path, daemons, instance, aws, imds,
                                                                     smtp_sink, fault_report):
    smtp_sink.up()  # the bucket does not exist: every upload is refused
    config = write_config(tmp_path, LONG, machine(aws, imds, smtp_sink, aws={"s3_bucket": "no-such-bucket"}))
    d = daemons(config, AWS_ENV)
    d.wait_state(lambda s: (s["trainer"]["step"] or 0) >= 5, timeout=90)
    imds.announce_interruption("stop")
    state = d.wait_state(lambda s: ((s.get("spot") or {}).get("interruption") or {}).get("upload"), timeout=60)
    assert "NoSuchBucket" in state["spot"]["interruption"]["upload"]["error"]
    d.wait_state(lambda s: s["phase"] == "HALTED" and s["trainer"]["pid"] is None, timeout=60)
    assert d.stop() == 0  # it still checkpointed locally and halted cleanly
    # at error level: the state and checkpoint restores at start-up and the upload (no bucket)
    assert [e["event"] for p, e in d.events() if p == 3] == ["s3.state_restore_failed", "s3.restore_failed",
                                                              "s3.upload_failed"]
    wait_until(lambda: "[amapiano-train] checkpoint upload to S3 failed" in subjects(smtp_sink), 20, "the alert")
    t = d.state()["trainer"]
    assert t["last_checkpoint_step"] == t["step"]  # the local checkpoint is there
    fault_report("S3 refusing uploads: error-level line and an alert; the local checkpoint kept; clean halt")
