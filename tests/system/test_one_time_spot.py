"""`auto` on a one-time Spot instance with no bucket, for real (the supervisor as a process, moto's
EC2, our IMDS, SMTP): the instance cannot be stopped and terminating it would take the only
checkpoints with its disk. Before, the halt retried the terminate for ever, "could not stop the
instance (terminate), retrying" at every try; now it decides once, in one mail, and keeps the
instance, still under the rules."""
from __future__ import annotations

import time

import boto3
import pytest

from conftest import cli, write_config
from test_money_and_machine import AWS_ENV, halted, machine, subjects

pytestmark = pytest.mark.slow


def test_auto_keeps_a_one_time_spot_instance_without_a_bucket_in_one_mail(tmp_path, daemons, aws, imds, smtp_sink):
    smtp_sink.up()
    ec2 = boto3.client("ec2", endpoint_url=aws, region_name="us-east-1")
    iid = ec2.request_spot_instances(SpotPrice="1", InstanceCount=1, Type="one-time", LaunchSpecification={
        "ImageId": "ami-12345678", "InstanceType": "g4dn.xlarge"})["SpotInstanceRequests"][0]["InstanceId"]
    imds.identity = {**imds.identity, "instanceId": iid}
    config = write_config(tmp_path, {"train": {"epochs": 1}}, machine(
        aws, imds, smtp_sink, idle={"timeout": "4s", "warn_before": "2s", "check_every": "200ms", "action": "auto"},
        supervisor={"shutdown_retry_initial": "300ms", "shutdown_retry_max": "1s"}))
    d = daemons(config, AWS_ENV)
    state = halted(d, 150)
    assert state["shutdown"]["result"].startswith("kept running") and state["shutdown"]["attempts"] == 1
    assert state["instance"]["can_stop"] is False
    time.sleep(5)  # five times the longest retry interval: nothing more is tried or said
    state = d.state()
    assert state["shutdown"]["attempts"] == 1 and d.proc.poll() is None
    instance = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert instance["State"]["Name"] == "running"
    sent = subjects(smtp_sink)
    kept = [s for s in sent if "keeps running" in s]
    assert len(kept) == 1 and "one-time Spot" in kept[0], sent
    assert not [s for s in sent if "could not stop" in s or "stopping the instance now" in s], sent
    screen = cli("status", "--config", str(config), timeout=60).stdout
    assert "auto keeps it running (no bucket holds the run)" in screen, screen
    assert d.stop() == 0
