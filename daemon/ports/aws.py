"""The AWS calls the daemon makes, through boto3: price, stop, and the S3 checkpoint mirror.

A small port: production talks to AWS, tests to moto's server on 127.0.0.1 through
`[aws] endpoint_url`. The S3 mirror follows the local commit rule: the .pt first, then its
.json marker, so a bucket listing never shows a checkpoint whose bytes are not all there, and
an upload counts only once head_object confirms its size and SHA-256. What comes back from the
bucket is read with a size limit and never unpickled.

Every call is bounded in time: botocore's timeouts bound each connect and each socket read and
its retries are counted; and each call has a total deadline on a thread of its own (a transfer's
grows with its size), since a reply that drips a byte at a time passes every per-read timeout.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..common import checkpoints
from ..common.atomic import fsync_dir, loads, read_bytes, write_json_atomic
from ..common.config import AwsConfig
from .ranged_get import Download, Target
from .s3_errors import MISSING, BadObject, error_code, unreadable  # noqa: F401 - the port's errors, re-exported

MARKER_LIMIT = 64 * 1024
STATE_LIMIT = 16 * 1024 * 1024
CONNECT_TIMEOUT_S, READ_TIMEOUT_S, ATTEMPTS = 5, 20, 3   # ATTEMPTS: the first try included
CALL_TIMEOUT_S = 30.0            # a small call's total deadline, retries included
LIST_PAGES = 100                 # 100,000 keys: far more than a mirror keeps
TRANSFER_BYTES_PER_S = 1 << 20  # a transfer's deadline: the call's plus a second a MiB (S3 moves far more)
T = TypeVar("T")


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


def reports_key(cfg: AwsConfig, name: str) -> str:
    """The bucket key of a file in the reports folder (the HTML reports and their clips)."""
    return f"{cfg.s3_prefix}/reports/{name}" if cfg.s3_prefix else f"reports/{name}"


class Aws:
    def __init__(self, cfg: AwsConfig, region: str, call_timeout_s: float = CALL_TIMEOUT_S):
        self.cfg, self.region, self.call_timeout_s = cfg, region, call_timeout_s
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()   # boto3's default session does not build clients thread-safely
        self._in_flight: dict[str, threading.Thread] = {}

    def client(self, name: str) -> Any:
        with self._lock:
            if name not in self._clients:
                import boto3
                from botocore.config import Config

                self._clients[name] = boto3.client(
                    name, region_name=self.region, endpoint_url=self.cfg.endpoint_url or None,
                    config=Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                                  retries={"total_max_attempts": ATTEMPTS, "mode": "standard"}))
            return self._clients[name]

    def bounded(self, name: str, call: Callable[[], T], timeout_s: float | None = None) -> T:
        """call() on a thread of its own, waited for at most the deadline (TimeoutError after it).
        The thread is left to end by botocore's own timeouts; until it has, the same call is not
        started again (TimeoutError at once), so a stuck endpoint costs one thread, not one a try."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = call()
            except BaseException as e:  # handed to the caller below
                box["error"] = e

        with self._lock:
            running = self._in_flight.get(name)
            if running is not None and running.is_alive():
                raise TimeoutError(f"{name}: the previous call has not returned yet")
            thread = self._in_flight[name] = threading.Thread(target=run, name=f"aws-{name}", daemon=True)
        thread.start()
        limit = self.call_timeout_s if timeout_s is None else timeout_s
        thread.join(limit)
        if thread.is_alive():
            raise TimeoutError(f"{name}: no answer in {limit:g} s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    # -- EC2 -------------------------------------------------------------------------------
    # (each called from the scheduler thread: bounded by the call deadline)
    def spot_price(self, instance_type: str, zone: str, now: datetime) -> tuple[float, datetime] | None:
        response = self.bounded("ec2.spot_price", lambda: self.client("ec2").describe_spot_price_history(
            InstanceTypes=[instance_type], AvailabilityZone=zone, ProductDescriptions=["Linux/UNIX"],
            StartTime=now, MaxResults=20))
        return parse_spot_price(response)

    def stop_instance(self, instance_id: str) -> str:
        """StopInstances on this instance; returns the state EC2 reports it moving to."""
        response = self.bounded("ec2.stop", lambda: self.client("ec2").stop_instances(InstanceIds=[instance_id]))
        return response["StoppingInstances"][0]["CurrentState"]["Name"]

    def instance_state(self, instance_id: str) -> str:
        response = self.bounded("ec2.describe", lambda: self.client("ec2").describe_instances(
            InstanceIds=[instance_id]))
        return response["Reservations"][0]["Instances"][0]["State"]["Name"]

    def terminate_instance(self, instance_id: str) -> str:
        response = self.bounded("ec2.terminate", lambda: self.client("ec2").terminate_instances(
            InstanceIds=[instance_id]))
        return response["TerminatingInstances"][0]["CurrentState"]["Name"]

    def instance_facts(self, instance_id: str) -> dict[str, Any]:
        return self.bounded("ec2.facts", lambda: self._instance_facts(instance_id))

    def _instance_facts(self, instance_id: str) -> dict[str, Any]:
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
        self.bounded("s3.upload", lambda: s3.upload_file(str(path), bucket, key,
                                                         ExtraArgs={"Metadata": {"sha256": sha}}),
                     self.call_timeout_s + size / TRANSFER_BYTES_PER_S)
        return self._confirm(key, size, sha)

    def put_snapshot(self, path: Path, key: str, limit: int) -> dict:
        """Upload a small file that another thread rewrites (state.json, every tick) as one version:
        its bytes are read once, and those bytes are hashed, sent and confirmed. Hashing the live
        file and then sending it by name sent a newer version under the older one's digest: a
        false "upload failed", or a body that stalled the PUT when its size had changed."""
        data = read_bytes(path, limit)
        sha = hashlib.sha256(data).hexdigest()
        s3, bucket = self.client("s3"), self.cfg.s3_bucket
        self.bounded("s3.upload", lambda: s3.put_object(Bucket=bucket, Key=key, Body=data, Metadata={"sha256": sha}),
                     self.call_timeout_s + len(data) / TRANSFER_BYTES_PER_S)
        return self._confirm(key, len(data), sha)

    def _confirm(self, key: str, size: int, sha: str) -> dict:
        """The upload counts once the bucket holds this size under this digest."""
        s3, bucket = self.client("s3"), self.cfg.s3_bucket
        head = self.bounded("s3.head", lambda: s3.head_object(Bucket=bucket, Key=key))
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
        return self.put_snapshot(path, self._state_key(), STATE_LIMIT)

    def upload_report(self, path: Path, name: str) -> dict:
        """One open file, hashed and sent: a person's `amapiano-train report` rewrites a page
        (temp + rename) while the mirror uploads it, and hashing the name then sending the name
        sent another version under the first one's digest (a false failure, or a PUT stalled on
        a size that changed). The open file keeps its version; a link planted in the folder is
        refused (O_NOFOLLOW), never followed out of it."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(f"{path}: not a regular file")
            size = info.st_size
            sha = hashlib.sha256()
            for piece in iter(lambda: f.read(1 << 20), b""):
                sha.update(piece)
            f.seek(0)
            s3, bucket, key = self.client("s3"), self.cfg.s3_bucket, reports_key(self.cfg, name)
            meta = {"Metadata": {"sha256": sha.hexdigest()}}
            self.bounded("s3.upload", lambda: s3.upload_fileobj(f, bucket, key, ExtraArgs=meta),
                         self.call_timeout_s + size / TRANSFER_BYTES_PER_S)
        return self._confirm(key, size, sha.hexdigest())

    def bucket_steps(self) -> list[int]:
        """Steps with a committed marker in the bucket, oldest first (other keys are ignored)."""
        return self.bounded("s3.list", self._bucket_steps)

    def _bucket_steps(self) -> list[int]:
        s3, steps = self.client("s3"), set()
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.cfg.s3_bucket, Prefix=self._key("step_"))
        for n, page in enumerate(pages):
            if n >= LIST_PAGES:
                raise BadObject(f"s3://{self.cfg.s3_bucket}/{self._key('')}: more than {LIST_PAGES} pages of keys")
            for obj in page.get("Contents", []):
                step = checkpoints.step_of(obj["Key"].rsplit("/", 1)[-1])
                if step is not None and obj["Key"] == self._key(checkpoints.marker_path(Path("."), step).name):
                    steps.add(step)  # a shard's key (step_X.dcp/...) or a look-alike is not a marker
        return sorted(steps)

    def _get_small(self, key: str, limit: int) -> bytes | None:
        """An object of at most `limit` bytes, or None if there is no such key."""
        s3 = self.client("s3")
        try:
            obj = s3.get_object(Bucket=self.cfg.s3_bucket, Key=key)
        except s3.exceptions.ClientError as e:
            if error_code(e) in MISSING:
                return None
            raise
        if obj["ContentLength"] > limit:
            raise BadObject(f"s3://{self.cfg.s3_bucket}/{key}: {obj['ContentLength']} bytes, more than {limit}")
        return obj["Body"].read(limit + 1)[:limit]

    def get_marker(self, step: int) -> Any:
        key = self._key(checkpoints.marker_path(Path("."), step).name)
        raw = self.bounded("s3.get_marker", lambda: self._get_small(key, MARKER_LIMIT))
        try:
            return None if raw is None else loads(raw)
        except ValueError as e:
            raise BadObject(f"s3://{self.cfg.s3_bucket}/{key}: not a JSON marker ({e})") from None

    def get_state(self, timeout_s: float | None = None) -> bytes | None:
        return self.bounded("s3.get_state", lambda: self._get_small(self._state_key(), STATE_LIMIT), timeout_s)

    def delete_checkpoint(self, step: int) -> None:
        self.bounded("s3.delete", lambda: self._delete_checkpoint(step))

    def _delete_checkpoint(self, step: int) -> None:
        """Un-commit first (the marker), then the bytes (a .pt, or a sharded checkpoint's files)."""
        s3, bucket = self.client("s3"), self.cfg.s3_bucket
        for path in (checkpoints.marker_path(Path("."), step), checkpoints.data_path(Path("."), step)):
            s3.delete_object(Bucket=bucket, Key=self._key(path.name))
        shards = self._key(checkpoints.sharded_path(Path("."), step).name + "/")
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=shards):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])

    # The restore's parts (daemon/ports/ranged_get.py's defaults when None; the tests shrink them).
    part_bytes: int | None = None
    parts_in_flight: int | None = None

    def download_checkpoint(self, meta: Any, directory: Path) -> Path:
        """Fetch a checkpoint whose marker is checked here (step, file, manifest: nothing in it
        names a path outside `directory`), verify every byte against it as it arrives (parallel
        ranged GETs, every file of a sharded one at once), then commit it locally: the data
        renamed into place, then the marker."""
        step = meta.get("step") if isinstance(meta, dict) else None
        marker = checkpoints.parse_marker(meta, step, directory) if isinstance(step, int) else None
        if marker is None or (marker.sharded and checkpoints.manifest_sha256(meta["manifest"]) != meta["sha256"]):
            raise BadObject(f"s3://{self.cfg.s3_bucket}: the marker for step {step} is not a valid checkpoint marker")
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        # Everything lands in one temp directory first, so a download killed half-way leaves only
        # `.step_X.*.tmp/`, which the worker's clean_partial removes.
        tmp = Path(tempfile.mkdtemp(prefix=f".{marker.path.name}.", suffix=".tmp", dir=directory))
        got = tmp / marker.path.name
        try:
            if marker.sharded:
                got.mkdir()
                targets = [self._target(f"{marker.path.name}/{name}", got / name, entry["bytes"], entry["sha256"])
                           for name, entry in meta["manifest"].items()]
            else:
                targets = [self._target(marker.path.name, got, meta["bytes"], meta["sha256"], meta.get("hash"))]
            Download(self.client("s3"), self.cfg.s3_bucket, targets, self.call_timeout_s, TRANSFER_BYTES_PER_S,
                     self.part_bytes, self.parts_in_flight).run()
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

    def _target(self, name: str, dest: Path, size: int, sha256: str, scheme: str | None = None) -> Target:
        """One object as its marker describes it, if the bucket holds that many bytes (checked
        before a byte is fetched: a bucket cannot fill the disk); its ETag pins every part to it."""
        s3, key = self.client("s3"), self._key(name)
        head = self.bounded("s3.head", lambda: s3.head_object(Bucket=self.cfg.s3_bucket, Key=key))
        if head["ContentLength"] != size:
            raise BadObject(f"s3://{self.cfg.s3_bucket}/{key}: {head['ContentLength']} bytes, its marker says {size}")
        return Target(key, dest, size, sha256, scheme, head.get("ETag") or "")
