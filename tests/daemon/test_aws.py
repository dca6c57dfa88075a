"""The AWS port: Spot price parsing on realistic responses, and the calls against moto's server."""
from __future__ import annotations

from datetime import datetime, timezone

from daemon.aws import Aws, parse_spot_price
from daemon.common.config import AwsConfig

# The shape EC2 returns (botocore parses Timestamp into an aware datetime); newest is not first.
REALISTIC = {"SpotPriceHistory": [
    {"AvailabilityZone": "us-east-1a", "InstanceType": "g5.xlarge", "ProductDescription": "Linux/UNIX",
     "SpotPrice": "0.412300", "Timestamp": datetime(2026, 11, 25, 13, 2, 11, tzinfo=timezone.utc)},
    {"AvailabilityZone": "us-east-1a", "InstanceType": "g5.xlarge", "ProductDescription": "Linux/UNIX",
     "SpotPrice": "0.431100", "Timestamp": datetime(2026, 11, 25, 14, 47, 3, tzinfo=timezone.utc)},
    {"AvailabilityZone": "us-east-1a", "InstanceType": "g5.xlarge", "ProductDescription": "Linux/UNIX",
     "SpotPrice": "not-a-number", "Timestamp": datetime(2026, 11, 25, 15, 0, 0, tzinfo=timezone.utc)},
], "NextToken": ""}


def test_newest_valid_price_wins():
    price, at = parse_spot_price(REALISTIC)
    assert price == 0.4311 and at.hour == 14


def test_empty_history_is_no_price():
    assert parse_spot_price({"SpotPriceHistory": []}) is None


def test_price_and_stop_against_moto(aws):
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=aws, region_name="us-east-1")
    iid = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="g5.xlarge")[
        "Instances"][0]["InstanceId"]
    port = Aws(AwsConfig(endpoint_url=aws), "us-east-1")
    found = port.spot_price("g5.xlarge", "us-east-1a", datetime.now(timezone.utc))
    assert found is not None and found[0] > 0  # moto's price is fake, but it parses
    assert port.stop_instance(iid) == "stopping"
    assert port.instance_state(iid) == "stopped"


def test_s3_mirror_commits_marker_last_and_restores_verified(aws, tmp_path):
    import hashlib
    import json

    import boto3

    boto3.client("s3", endpoint_url=aws, region_name="us-east-1").create_bucket(Bucket="mirror-bucket")
    port = Aws(AwsConfig(endpoint_url=aws, s3_bucket="mirror-bucket", s3_prefix="run1"), "us-east-1")
    src = tmp_path / "src"
    src.mkdir()
    blob = b"x" * 100_000
    (src / "step_00000040.pt").write_bytes(blob)
    marker = {"step": 40, "file": "step_00000040.pt", "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    (src / "step_00000040.json").write_text(json.dumps(marker))
    from daemon.common import checkpoints

    confirmed = port.upload_checkpoint(checkpoints.newest(src))
    assert [(c["key"], c["bytes"]) for c in confirmed] == [
        ("run1/checkpoints/step_00000040.pt", 100_000),
        ("run1/checkpoints/step_00000040.json", (src / "step_00000040.json").stat().st_size)]
    assert confirmed[0]["sha256"] == marker["sha256"]  # confirmed by checksum, not size alone
    assert port.bucket_steps() == [40]
    found = port.get_marker(40)
    assert found == marker
    dest = tmp_path / "dest"
    path = port.download_checkpoint(found, dest)
    assert path.read_bytes() == blob and json.loads((dest / "step_00000040.json").read_text()) == marker
    bad = {**marker, "sha256": "0" * 64}
    import pytest

    with pytest.raises(IOError, match="SHA-256 does not match"):
        port.download_checkpoint(bad, tmp_path / "dest2")
    assert not list((tmp_path / "dest2").iterdir())  # nothing half-written
