"""Issue 11: the AWS lifecycle for real, against moto's server and our IMDS on 127.0.0.1: a
replacement instance remembers the run, the mirror runs without a notice, and every kind of
instance can be stopped."""
from __future__ import annotations

import json
import shutil

import boto3
import pytest

from conftest import write_config
from test_money_and_machine import AWS_ENV, LONG, halted, machine, wait_until  # noqa: F401

pytestmark = pytest.mark.slow
MIRROR = {"aws": {"s3_bucket": "runs", "s3_prefix": "r1", "mirror_every": "1s"}}


def ec2_client(aws):
    return boto3.client("ec2", endpoint_url=aws, region_name="us-east-1")


def state_of(ec2, iid: str) -> str:
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]


def test_a_new_instance_resumes_the_same_run_from_s3(tmp_path, daemons, aws, imds, smtp_sink):
    smtp_sink.up()
    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    s3.create_bucket(Bucket="runs")
    ec2 = ec2_client(aws)
    first = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    imds.identity = {**imds.identity, "instanceId": first}
    boot = tmp_path / "boot_id"
    boot.write_text("boot-of-the-first-instance\n")
    env = {**AWS_ENV, "AMAPIANO_BOOT_ID_FILE": str(boot)}
    config = write_config(tmp_path, LONG, machine(aws, imds, smtp_sink, **MIRROR),
                          {"budget": {"hourly_rate_usd": 36.0, "max_usd": 500.0, "check_every": "200ms"},
                           "milestone": {"at": "30d"}})
    d = daemons(config, env)
    d.wait_state(lambda s: (s["trainer"]["step"] or 0) >= 12, timeout=90)
    # The continuous mirror, no notice: S3 holds a checkpoint no older than the mirror interval.
    before = d.wait_state(lambda s: ((s.get("mirror") or {}).get("step") or 0) >= 8, timeout=60)
    d.kill()  # the instance is gone: no notice, no clean stop
    mirrored = before["mirror"]["step"]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="runs", Prefix="r1/")["Contents"]}
    assert f"r1/checkpoints/step_{mirrored:08d}.pt" in keys and "r1/state.json" in keys
    assert len([k for k in keys if k.endswith(".json") and "/step_" in k]) <= 4  # pruned like the local dir
    spent_before = json.loads(s3.get_object(Bucket="runs", Key="r1/state.json")["Body"].read())["cost"]["total_usd"]

    # A replacement: new disk, new boot, new instance id.
    shutil.rmtree(tmp_path / "state")
    boot.write_text("boot-of-the-replacement\n")
    second = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    imds.identity = {**imds.identity, "instanceId": second}
    d2 = daemons(config, env)
    after = d2.wait_state(lambda s: s["trainer"]["resumed_from_step"] is not None and s.get("cost"), timeout=120)
    assert after["run_id"] == before["run_id"] and after["started_at"] == before["started_at"]
    assert after["trainer"]["resumed_from_step"] >= mirrored
    assert after["cost"]["total_usd"] >= spent_before and after["cost"]["boots"] == 2  # carried, new boot billed
    assert after["milestone"]["due_at"] == before["milestone"]["due_at"]
    assert after["budget"]["max_usd"] == 500.0 and after["budget"]["left_usd"] <= 500.0 - spent_before
    assert after["instance"]["instance_id"] == second
    assert d2.stop() == 0


@pytest.mark.parametrize("kind, expected", [("on-demand", "stopped"), ("persistent-stop", "stopped"),
                                            ("one-time", "terminated")])
def test_auto_stops_what_can_stop_and_terminates_only_after_the_mirror(tmp_path, daemons, aws, imds, smtp_sink,
                                                                       kind, expected):
    smtp_sink.up()
    boto3.client("s3", endpoint_url=aws, region_name="us-east-1").create_bucket(Bucket="runs")
    ec2 = ec2_client(aws)
    spec = {"ImageId": "ami-12345678", "InstanceType": "g4dn.xlarge"}
    if kind == "on-demand":
        iid = ec2.run_instances(MinCount=1, MaxCount=1, **spec)["Instances"][0]["InstanceId"]
    else:
        extra = {"Type": "persistent", "InstanceInterruptionBehavior": "stop"} if kind == "persistent-stop" \
            else {"Type": "one-time"}
        iid = ec2.request_spot_instances(SpotPrice="1", InstanceCount=1, LaunchSpecification=spec,
                                         **extra)["SpotInstanceRequests"][0]["InstanceId"]
    imds.identity = {**imds.identity, "instanceId": iid}
    config = write_config(tmp_path, {"train": {"epochs": 1}}, machine(
        aws, imds, smtp_sink, **MIRROR, idle={"timeout": "4s", "warn_before": "2s", "check_every": "200ms",
                                               "action": "auto"}))
    d = daemons(config, AWS_ENV)
    state = halted(d, 150)
    wait_until(lambda: state_of(ec2, iid) in (expected, expected.replace("ped", "ping").replace(
        "terminated", "shutting-down")), 30, f"the instance {expected}")
    assert state["instance"]["can_stop"] is (kind != "one-time")
    if kind == "one-time":
        assert state["shutdown"]["result"].startswith("TerminateInstances")
        assert state["mirror"]["step"] == state["trainer"]["last_checkpoint_step"]  # confirmed before it went
    else:
        assert state["shutdown"]["result"].startswith("StopInstances")
    assert d.stop() == 0


def test_terminate_waits_while_the_mirror_cannot_confirm(tmp_path, daemons, aws, imds, smtp_sink):
    """A one-time Spot instance, and S3 refusing: it is kept (its disk holds the only copy),
    an error and an alert each try, and the daemon keeps trying."""
    smtp_sink.up()
    ec2 = ec2_client(aws)
    iid = ec2.request_spot_instances(SpotPrice="1", InstanceCount=1, Type="one-time", LaunchSpecification={
        "ImageId": "ami-12345678"})["SpotInstanceRequests"][0]["InstanceId"]
    imds.identity = {**imds.identity, "instanceId": iid}
    config = write_config(tmp_path, {"train": {"epochs": 1}}, machine(
        aws, imds, smtp_sink, aws={"s3_bucket": "no-such-bucket", "mirror_every": "1s"},
        idle={"timeout": "3s", "warn_before": "1s", "check_every": "200ms", "action": "terminate"},
        supervisor={"shutdown_retry_initial": "300ms", "poweroff_command": []}))
    d = daemons(config, AWS_ENV)
    d.wait_state(lambda s: ((s.get("shutdown") or {}).get("attempts") or 0) >= 3, timeout=150)
    assert state_of(ec2, iid) == "running"
    state = d.state()
    assert "not terminating" in state["shutdown"]["result"] and d.proc.poll() is None
    assert d.stop() == 0


def test_a_damaged_newest_checkpoint_comes_back_from_s3_instead_of_falling_back(tmp_path, daemons, aws, imds,
                                                                                  smtp_sink):
    """Found by the chaos run: the newest local checkpoints damaged on disk made the worker fall
    back to an older local one while the bucket held them intact (work redone, and TensorBoard's
    purge left a gap when a later restart restored the newer one). Now the worker quarantines,
    exits 75 before training, and the supervisor restores from the bucket before the next start."""
    smtp_sink.up()
    boto3.client("s3", endpoint_url=aws, region_name="us-east-1").create_bucket(Bucket="runs")
    config = write_config(tmp_path, LONG, machine(aws, imds, smtp_sink, **MIRROR), {"milestone": {"at": "30d"}})
    d = daemons(config, AWS_ENV)
    state = d.wait_state(lambda s: ((s.get("mirror") or {}).get("step") or 0) >= 8, timeout=90)
    assert d.stop() == 0
    from daemon.common import checkpoints

    ckpts = tmp_path / "state" / "checkpoints"
    mirrored = json.loads((tmp_path / "state" / "state.json").read_text())["mirror"]["step"]
    damaged = [m for m in checkpoints.list_checkpoints(ckpts) if m.step >= mirrored]
    for m in damaged:  # one flipped byte in each, as a failing disk would
        with open(m.path, "r+b") as f:
            f.seek(m.path.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0xFF]))
    d2 = daemons(config, AWS_ENV)
    after = d2.wait_state(lambda s: s["trainer"]["resumed_from_step"] is not None, timeout=120)
    assert after["trainer"]["resumed_from_step"] == mirrored, "resumed from the bucket's intact copy"
    events = [e for _, e in d2.events()]
    assert any(e["event"] == "s3.restored" and e["step"] == mirrored for e in events)
    assert all((ckpts / "corrupt" / m.path.name).exists() for m in damaged)  # the damaged bytes kept for a look
    assert d2.stop() == 0
    del state
