"""The AWS calls the daemon makes, through boto3: price, stop, and the S3 checkpoint mirror.

A small port: production talks to AWS, tests to moto's server on 127.0.0.1 through
`[aws] endpoint_url`. The S3 mirror follows the local commit rule: the .pt first, then its
.json marker, so a bucket listing never shows a checkpoint whose bytes are not all there, and
an upload counts only once head_object confirms its size and SHA-256. What comes back from the
bucket is read with a size limit and never unpickled.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from ..common import checkpoints
from ..common.atomic import fsync_dir, loads, write_json_atomic
from ..common.config import AwsConfig

MARKER_LIMIT = 64 * 1024
STATE_LIMIT = 16 * 1024 * 1024


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

    def terminate_instance(self, instance_id: str) -> str:
        response = self.client("ec2").terminate_instances(InstanceIds=[instance_id])
        return response["TerminatingInstances"][0]["CurrentState"]["Name"]

    def instance_facts(self, instance_id: str) -> dict[str, Any]:
        """What stopping this instance can do: its market (spot/on-demand), its Spot request's type
        and interruption behaviour, and what a shutdown from inside does (stop or terminate)."""
        ec2 = self.client("ec2")
        inst = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        facts: dict[str, Any] = {"lifecycle": inst.get("InstanceLifecycle") or "on-demand",
                                 "spot_request_type": None, "interruption_behavior": None}
        if facts["lifecycle"] == "spot":
            request_id = inst.get("SpotInstanceRequestId")
            found = ec2.describe_spot_instance_requests(
                **({"SpotInstanceRequestIds": [request_id]} if request_id else
                   {"Filters": [{"Name": "instance-id", "Values": [instance_id]}]}))["SpotInstanceRequests"]
            if found:
                facts["spot_request_type"] = found[0].get("Type")
                facts["interruption_behavior"] = found[0].get("InstanceInterruptionBehavior") or "terminate"
        attr = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior")
        facts["shutdown_behavior"] = (attr.get("InstanceInitiatedShutdownBehavior") or {}).get("Value") or "stop"
        return facts

    # -- S3: the run's mirror ----------------------------------------------------------------
    def _key(self, name: str) -> str:
        return f"{self.cfg.s3_prefix}/checkpoints/{name}" if self.cfg.s3_prefix else f"checkpoints/{name}"

    def _state_key(self) -> str:
        return f"{self.cfg.s3_prefix}/state.json" if self.cfg.s3_prefix else "state.json"

    def put_confirmed(self, path: Path, key: str, expect_sha256: str | None = None, scheme: str | None = None) -> dict:
        """Upload one file with its digest (a marker's `hash` scheme; plain SHA-256 by default) as
        metadata, then confirm size and checksum in the bucket before it counts. With
        `expect_sha256` (a marker's), a file damaged on disk is refused before it can replace a
        good copy. Returns {key, bytes, sha256}."""
        s3, bucket = self.client("s3"), self.cfg.s3_bucket
        sha = checkpoints.digest_file(path, scheme)
        if expect_sha256 is not None and sha != expect_sha256:
            raise OSError(f"{path}: SHA-256 does not match its marker (damaged on disk); not uploaded")
        size = path.stat().st_size
        s3.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": sha}})
        head = s3.head_object(Bucket=bucket, Key=key)
        if head["ContentLength"] != size or (head.get("Metadata") or {}).get("sha256") != sha:
            raise OSError(f"s3://{bucket}/{key}: {head['ContentLength']} bytes / checksum "
                          f"{(head.get('Metadata') or {}).get('sha256')} in the bucket, {size} / {sha} on disk")
        return {"key": key, "bytes": size, "sha256": sha}

    def upload_checkpoint(self, marker: checkpoints.Marker) -> list[dict]:
        """The bytes (the .pt, or every file a sharded checkpoint's manifest lists), then the
        marker that commits them; each confirmed."""
        if marker.sharded:
            done = [self.put_confirmed(marker.path / name, self._key(f"{marker.path.name}/{name}"), entry["sha256"])
                    for name, entry in marker.meta["manifest"].items()]
        else:
            done = [self.put_confirmed(marker.path, self._key(marker.path.name), marker.meta["sha256"],
                                       marker.meta.get("hash"))]
        return [*done, self.put_confirmed(marker.marker, self._key(marker.marker.name))]

    def upload_state(self, path: Path) -> dict:
        return self.put_confirmed(path, self._state_key())

    def bucket_steps(self) -> list[int]:
        """Steps with a committed marker in the bucket, oldest first (other keys are ignored)."""
        s3, steps = self.client("s3"), set()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.cfg.s3_bucket, Prefix=self._key("step_")):
            for obj in page.get("Contents", []):
                step = checkpoints.step_of(obj["Key"].rsplit("/", 1)[-1])
                if step is not None and obj["Key"] == self._key(checkpoints.marker_path(Path("."), step).name):
                    steps.add(step)  # a shard's key (step_X.dcp/...) or a look-alike is not a marker
        return sorted(steps)

    def _get_small(self, key: str, limit: int) -> bytes | None:
        s3 = self.client("s3")
        try:
            obj = s3.get_object(Bucket=self.cfg.s3_bucket, Key=key)
        except s3.exceptions.NoSuchKey:
            return None
        if obj["ContentLength"] > limit:
            raise OSError(f"s3://{self.cfg.s3_bucket}/{key}: {obj['ContentLength']} bytes, more than {limit}")
        return obj["Body"].read(limit + 1)[:limit]

    def get_marker(self, step: int) -> Any:
        raw = self._get_small(self._key(checkpoints.marker_path(Path("."), step).name), MARKER_LIMIT)
        return None if raw is None else loads(raw)

    def get_state(self) -> bytes | None:
        return self._get_small(self._state_key(), STATE_LIMIT)

    def delete_checkpoint(self, step: int) -> None:
        """Un-commit first (the marker), then the bytes (a .pt, or a sharded checkpoint's files)."""
        s3, bucket = self.client("s3"), self.cfg.s3_bucket
        for path in (checkpoints.marker_path(Path("."), step), checkpoints.data_path(Path("."), step)):
            s3.delete_object(Bucket=bucket, Key=self._key(path.name))
        shards = self._key(checkpoints.sharded_path(Path("."), step).name + "/")
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=shards):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])

    def download_checkpoint(self, meta: Any, directory: Path) -> Path:
        """Fetch a checkpoint whose marker is checked here (step, file, manifest: nothing in it
        names a path outside `directory`), verify every byte against it, then commit it locally:
        the data renamed into place, then the marker."""
        step = meta.get("step") if isinstance(meta, dict) else None
        marker = checkpoints.parse_marker(meta, step, directory) if isinstance(step, int) else None
        if marker is None or (marker.sharded and checkpoints.manifest_sha256(meta["manifest"]) != meta["sha256"]):
            raise OSError(f"s3://{self.cfg.s3_bucket}: the marker for step {step} is not a valid checkpoint marker")
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        # Everything lands in one temp directory first (boto3's own temp files too, so a download
        # killed half-way leaves only `.step_X.*.tmp/`, which the worker's clean_partial removes).
        tmp = Path(tempfile.mkdtemp(prefix=f".{marker.path.name}.", suffix=".tmp", dir=directory))
        got = tmp / marker.path.name
        try:
            if marker.sharded:
                got.mkdir()
                for name, entry in meta["manifest"].items():
                    self._fetch(f"{marker.path.name}/{name}", got / name, entry["bytes"], entry["sha256"])
            else:
                self._fetch(marker.path.name, got, meta["bytes"], meta["sha256"], meta.get("hash"))
            fsync_dir(got if marker.sharded else tmp)
            if marker.path.is_dir() and not marker.path.is_symlink():  # no marker: newer than every local one
                shutil.rmtree(marker.path)
            elif marker.path.exists() or marker.path.is_symlink():
                marker.path.unlink()
            os.replace(got, marker.path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(directory)
        write_json_atomic(marker.marker, meta)
        return marker.path

    def _fetch(self, name: str, dest: Path, size: int, sha256: str, scheme: str | None = None) -> None:
        """One object to `dest`, fsynced, 0640, and only if its size and digest are the marker's
        (the size is checked before a byte is fetched: a bucket cannot fill the disk)."""
        s3, key = self.client("s3"), self._key(name)
        found = s3.head_object(Bucket=self.cfg.s3_bucket, Key=key)["ContentLength"]
        if found != size:
            raise OSError(f"s3://{self.cfg.s3_bucket}/{key}: {found} bytes, its marker says {size}")
        s3.download_file(self.cfg.s3_bucket, key, str(dest))
        with open(dest, "rb") as f:
            os.fsync(f.fileno())
        if checkpoints.digest_file(dest, scheme) != sha256:
            raise OSError(f"s3://{self.cfg.s3_bucket}/{key}: SHA-256 does not match its marker")
        os.chmod(dest, 0o640)
