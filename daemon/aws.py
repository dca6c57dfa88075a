"""The AWS calls the daemon makes, through boto3: price, stop, and the S3 checkpoint mirror.

A small port: production talks to AWS, tests to moto's server on 127.0.0.1 through
`[aws] endpoint_url`. The S3 mirror follows the local commit rule: the .pt first, then its
.json marker, so a bucket listing never shows a checkpoint whose bytes are not all there, and
an upload counts only once head_object confirms the size.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from .common.config import AwsConfig


def parse_spot_price(response: dict) -> tuple[float, datetime] | None:
    """The newest price in a DescribeSpotPriceHistory response, as (USD/hour, timestamp)."""
    best = None
    for item in response.get("SpotPriceHistory", []):
        try:
            price, at = float(item["SpotPrice"]), item["Timestamp"]
        except (KeyError, TypeError, ValueError):
            continue
        if isinstance(at, str):
            at = datetime.fromisoformat(at.replace("Z", "+00:00"))
        if best is None or at > best[1]:
            best = (price, at)
    return best


class Aws:
    def __init__(self, cfg: AwsConfig, region: str):
        self.cfg, self.region = cfg, region
        self._clients: dict[str, Any] = {}

    def client(self, name: str) -> Any:
        if name not in self._clients:
            import boto3
            from botocore.config import Config

            self._clients[name] = boto3.client(
                name, region_name=self.region, endpoint_url=self.cfg.endpoint_url or None,
                config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}))
        return self._clients[name]

    # -- EC2 -------------------------------------------------------------------------------
    def spot_price(self, instance_type: str, zone: str, now: datetime) -> tuple[float, datetime] | None:
        response = self.client("ec2").describe_spot_price_history(
            InstanceTypes=[instance_type], AvailabilityZone=zone, ProductDescriptions=["Linux/UNIX"],
            StartTime=now, MaxResults=20)
        return parse_spot_price(response)

    def stop_instance(self, instance_id: str) -> str:
        """StopInstances on this instance; returns the state EC2 reports it moving to."""
        response = self.client("ec2").stop_instances(InstanceIds=[instance_id])
        return response["StoppingInstances"][0]["CurrentState"]["Name"]

    def instance_state(self, instance_id: str) -> str:
        response = self.client("ec2").describe_instances(InstanceIds=[instance_id])
        return response["Reservations"][0]["Instances"][0]["State"]["Name"]

    # -- S3 checkpoint mirror --------------------------------------------------------------
    def _key(self, name: str) -> str:
        return f"{self.cfg.s3_prefix}/checkpoints/{name}" if self.cfg.s3_prefix else f"checkpoints/{name}"

    def upload_checkpoint(self, pt: Path) -> dict:
        """Upload step_N.pt then step_N.json; returns what was confirmed in the bucket."""
        s3, bucket = self.client("s3"), self.cfg.s3_bucket
        marker = pt.with_suffix(".json")
        confirmed = {}
        for path in (pt, marker):  # bytes first, then the marker that commits them
            key = self._key(path.name)
            s3.upload_file(str(path), bucket, key)
            head = s3.head_object(Bucket=bucket, Key=key)
            if head["ContentLength"] != path.stat().st_size:
                raise IOError(f"s3://{bucket}/{key}: {head['ContentLength']} bytes in the bucket, "
                              f"{path.stat().st_size} on disk")
            confirmed[key] = head["ContentLength"]
        return confirmed

    def upload_file(self, path: Path, name: str) -> None:
        self.client("s3").upload_file(str(path), self.cfg.s3_bucket, f"{self.cfg.s3_prefix}/{name}")

    def newest_s3_checkpoint(self) -> tuple[int, dict] | None:
        """(step, marker) of the newest committed checkpoint in the bucket."""
        s3, bucket = self.client("s3"), self.cfg.s3_bucket
        prefix = self._key("step_")
        best = None
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"].rsplit("/", 1)[-1]
                if name.endswith(".json"):
                    try:
                        step = int(name[5:-5])
                    except ValueError:
                        continue
                    if best is None or step > best[0]:
                        best = (step, obj["Key"])
        if best is None:
            return None
        marker = json.loads(s3.get_object(Bucket=bucket, Key=best[1])["Body"].read())
        return best[0], marker

    def download_checkpoint(self, marker: dict, directory: Path) -> Path:
        """Fetch a checkpoint and commit it locally (verified by the marker's SHA-256)."""
        from .common.atomic import fsync_dir, write_json_atomic

        s3, bucket = self.client("s3"), self.cfg.s3_bucket
        directory.mkdir(parents=True, exist_ok=True)
        name = marker["file"]
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        os.close(fd)
        try:
            s3.download_file(bucket, self._key(name), tmp)
            sha = hashlib.sha256()
            with open(tmp, "rb") as f:
                while chunk := f.read(1 << 22):
                    sha.update(chunk)
                os.fsync(f.fileno())
            if sha.hexdigest() != marker.get("sha256"):
                raise IOError(f"s3://{bucket}/{self._key(name)}: SHA-256 does not match its marker")
            os.replace(tmp, directory / name)
            fsync_dir(directory)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        write_json_atomic((directory / name).with_suffix(".json"), marker)
        return directory / name
