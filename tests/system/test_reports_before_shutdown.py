"""A decision that ends the instance leaves its report in the bucket first (issue 19): the NO-GO's
report is written, then its shutdown; a terminated instance takes its disk, and with it the only
copy of the report the person was mailed the path of. With a slow bucket the upload of reports/
must finish (within its bound) before TerminateInstances is sent."""
from __future__ import annotations

import threading
import time

import boto3
import pytest

from bucket_faults import FaultyBucket
from conftest import write_config
from test_money_and_machine import AWS_ENV, halted, machine  # noqa: F401

pytestmark = pytest.mark.slow


def watch_termination(aws: str, iid: str, stop: threading.Event) -> dict:
    """A thread that notes what the bucket's reports/ held when the instance stopped running
    (asked of moto directly, not through the slow proxy)."""
    seen: dict = {}
    ec2, s3 = (boto3.client(n, endpoint_url=aws, region_name="us-east-1") for n in ("ec2", "s3"))

    def run() -> None:
        while not stop.is_set():
            state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]
            if state != "running":
                listed = s3.list_objects_v2(Bucket="runs", Prefix="r1/reports/").get("Contents") or []
                seen.update(state=state, reports={o["Key"].removeprefix("r1/reports/") for o in listed})
                return
            time.sleep(0.1)

    seen["thread"] = threading.Thread(target=run, daemon=True)
    seen["thread"].start()
    return seen


@pytest.mark.parametrize("action", ["ec2-stop", "terminate"])
def test_a_no_go_that_ends_the_instance_uploads_its_report_first(tmp_path, daemons, aws, imds, smtp_sink, action):
    """ec2-stop: the person was mailed the report's bucket key, and a stopped instance mirrors
    nothing. terminate: the disk goes with the instance."""
    smtp_sink.up()
    boto3.client("s3", endpoint_url=aws, region_name="us-east-1").create_bucket(Bucket="runs")
    ec2 = boto3.client("ec2", endpoint_url=aws, region_name="us-east-1")
    spec = {"ImageId": "ami-12345678", "InstanceType": "g4dn.xlarge"}
    iid = ec2.request_spot_instances(SpotPrice="1", InstanceCount=1, Type="one-time", LaunchSpecification=spec)[
        "SpotInstanceRequests"][0]["InstanceId"] if action == "terminate" else \
        ec2.run_instances(MinCount=1, MaxCount=1, **spec)["Instances"][0]["InstanceId"]
    imds.identity = {**imds.identity, "instanceId": iid}
    bucket = FaultyBucket(aws, mode="slow")   # each upload takes a second: the report's dozen files, a dozen
    stop = threading.Event()
    try:
        config = write_config(tmp_path, {"train": {"epochs": 400}}, machine(
            bucket.url, imds, smtp_sink, aws={"s3_bucket": "runs", "s3_prefix": "r1", "mirror_every": "1s"},
            milestone={"samples": 6, "sample_seconds": 0.3, "at": "3s", "max_val_loss": 0.001, "dry_run": False},
            budget={"action": action}, supervisor={"stop_timeout": "60s"}))
        seen = watch_termination(aws, iid, stop)
        d = daemons(config, AWS_ENV)
        state = halted(d, 300)
        seen["thread"].join(60)
    finally:
        stop.set()
        bucket.close()
    assert state["milestone"]["decision"] == "NO-GO" and state["shutdown"]["result"].startswith(
        "TerminateInstances" if action == "terminate" else "StopInstances")
    local = {p.relative_to(tmp_path / "state" / "reports").as_posix()
             for p in (tmp_path / "state" / "reports").rglob("*") if p.is_file()}
    assert {"week_5_report.html", "week_5_report.zip", "week_5_metrics.json"} <= local
    missing = {n for n in local if n.startswith("week_5_report") or n.endswith(".json")} - seen.get("reports", set())
    assert seen.get("state") in ("shutting-down", "terminated", "stopping", "stopped") and not missing, \
        f"{seen.get('state')} before these reports reached the bucket: {sorted(missing)}"
