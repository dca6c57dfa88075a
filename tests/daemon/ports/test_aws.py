"""The AWS port: Spot price parsing on realistic responses, and the calls against moto's server."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from daemon.ports.aws import Aws, parse_spot_price
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


def _sharded(directory, step, files):
    """A committed sharded checkpoint as trainer/worker/distributed.py lays it out (torch-free)."""
    import json

    from daemon.common import checkpoints

    d = checkpoints.sharded_path(directory, step)
    d.mkdir(parents=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    manifest = checkpoints.manifest_of(d)
    meta = {"step": step, "file": d.name, "bytes": sum(e["bytes"] for e in manifest.values()),
            "sha256": checkpoints.manifest_sha256(manifest), "manifest": manifest}
    checkpoints.marker_path(directory, step).write_text(json.dumps(meta))
    return meta


SHARDS = {".metadata": b"m" * 300, "__0_0.distcp": b"a" * 70_000, "__1_0.distcp": b"b" * 70_000, "extra.pt": b"e" * 500}


def test_a_sharded_checkpoint_goes_up_shard_by_shard_and_comes_back_verified(aws, tmp_path):
    import boto3

    from daemon.common import checkpoints

    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    s3.create_bucket(Bucket="mirror-bucket")
    port = Aws(AwsConfig(endpoint_url=aws, s3_bucket="mirror-bucket", s3_prefix="run1"), "us-east-1")
    meta = _sharded(tmp_path / "src", 30, SHARDS)
    confirmed = port.upload_checkpoint(checkpoints.newest(tmp_path / "src"))
    assert [c["key"] for c in confirmed][-1] == "run1/checkpoints/step_00000030.json"  # the commit comes last
    assert sorted(c["key"] for c in confirmed[:-1]) == sorted(f"run1/checkpoints/step_00000030.dcp/{n}" for n in SHARDS)
    assert port.bucket_steps() == [30]  # shard keys are not markers
    path = port.download_checkpoint(port.get_marker(30), tmp_path / "dest")
    assert {p.name: p.read_bytes() for p in path.iterdir()} == SHARDS
    back = checkpoints.newest(tmp_path / "dest")
    assert back.step == 30 and back.sharded and checkpoints.verify(back) is None
    # A shard damaged in the bucket: refused, nothing half-written, no marker.
    s3.put_object(Bucket="mirror-bucket", Key="run1/checkpoints/step_00000030.dcp/__1_0.distcp", Body=b"x" * 70_000)
    with pytest.raises(OSError, match="SHA-256 does not match"):
        port.download_checkpoint(meta, tmp_path / "dest2")
    assert list((tmp_path / "dest2").iterdir()) == []
    port.delete_checkpoint(30)  # the marker and every shard
    assert s3.list_objects_v2(Bucket="mirror-bucket", Prefix="run1/checkpoints/").get("KeyCount") == 0


@pytest.mark.parametrize("evil", ["../../jobs.sqlite", "..", "a/b", ""])
def test_a_bucket_manifest_naming_a_path_outside_is_refused_before_any_download(aws, tmp_path, evil):
    import boto3

    from daemon.common import checkpoints

    boto3.client("s3", endpoint_url=aws, region_name="us-east-1").create_bucket(Bucket="mirror-bucket")
    port = Aws(AwsConfig(endpoint_url=aws, s3_bucket="mirror-bucket"), "us-east-1")
    manifest = {evil: {"bytes": 3, "sha256": "0" * 64}}
    meta = {"step": 5, "file": "step_00000005.dcp", "bytes": 3, "sha256": checkpoints.manifest_sha256(manifest),
            "manifest": manifest}
    with pytest.raises(OSError, match="not a valid checkpoint marker"):
        port.download_checkpoint(meta, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "jobs.sqlite").exists()


def test_a_local_checkpoint_damaged_on_disk_is_not_uploaded_over_the_good_copy(aws, tmp_path):
    import boto3

    from daemon.common import checkpoints

    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    s3.create_bucket(Bucket="mirror-bucket")
    port = Aws(AwsConfig(endpoint_url=aws, s3_bucket="mirror-bucket"), "us-east-1")
    _sharded(tmp_path / "src", 30, SHARDS)
    (tmp_path / "src" / "step_00000030.dcp" / "__0_0.distcp").write_bytes(b"rot" * 10)
    with pytest.raises(OSError, match="damaged on disk"):
        port.upload_checkpoint(checkpoints.newest(tmp_path / "src"))
    assert port.bucket_steps() == []


def test_the_mirror_keeps_a_sharded_run_in_the_bucket_and_a_fresh_disk_gets_it_back(aws, tmp_path):
    """FSDP's checkpoints through the daemon's own mirror: uploaded, pruned like the local
    directory (last K + best), and restored onto an empty checkpoint directory."""
    import shutil

    import boto3

    from conftest import RecordingLog, write_config
    from daemon.common import checkpoints
    from daemon.common.clock import Clock
    from daemon.common.config import load_config
    from daemon.ports.instance import Instance
    from daemon.ports.mirror import Mirror

    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    s3.create_bucket(Bucket="mirror-bucket")
    cfg = load_config(write_config(tmp_path, {"aws": {"endpoint_url": aws, "s3_bucket": "mirror-bucket",
                                                      "region": "us-east-1", "imds_url": ""},
                                              "train": {"keep_checkpoints": 1}}))
    cfg.state_file.parent.mkdir(parents=True)
    cfg.state_file.write_text('{"run_id": "r"}')
    log, alerts = RecordingLog(), []
    events = log.events
    mirror = Mirror(cfg, log, Clock(), Instance(cfg, log, Clock()), lambda: False,
                    lambda *a: alerts.append(a), None)
    for step in (10, 20):
        _sharded(cfg.checkpoint_dir, step, {k: v + bytes([step]) for k, v in SHARDS.items()})
        mirror.sync()
        mirror.wait(60)
    assert alerts == [] and mirror.confirmed_newest(), events
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="mirror-bucket")["Contents"]}
    assert {k for k in keys if "step_00000010" in k} == set()  # pruned: the marker and every shard
    assert {k for k in keys if "step_00000020" in k} == {f"amapiano-train/checkpoints/step_00000020.dcp/{n}" for n in SHARDS} | {
        "amapiano-train/checkpoints/step_00000020.json"}
    shutil.rmtree(cfg.checkpoint_dir)  # a replacement instance's empty disk
    mirror.start_restore()
    mirror.restoring.join(60)
    back = checkpoints.newest(cfg.checkpoint_dir)
    assert back is not None and back.step == 20 and back.sharded and checkpoints.verify(back) is None


def _mirror(aws, tmp_path, keep=1):
    """The daemon's own Mirror on a config whose bucket is moto's; (mirror, cfg, alerts, events)."""
    from conftest import RecordingLog, write_config
    from daemon.common.clock import Clock
    from daemon.common.config import load_config
    from daemon.ports.instance import Instance
    from daemon.ports.mirror import Mirror

    cfg = load_config(write_config(tmp_path, {"aws": {"endpoint_url": aws, "s3_bucket": "mirror-bucket",
                                                      "region": "us-east-1", "imds_url": ""},
                                              "train": {"keep_checkpoints": keep}}))
    cfg.state_file.parent.mkdir(parents=True, exist_ok=True)
    cfg.state_file.write_text('{"run_id": "r"}')
    log, alerts = RecordingLog(), []
    events = log.events
    return Mirror(cfg, log, Clock(), Instance(cfg, log, Clock()), lambda: False,
                  lambda *a: alerts.append(a), None), cfg, alerts, events


def _pt(directory, step, blob):
    from daemon.common import checkpoints

    directory.mkdir(parents=True, exist_ok=True)
    data = checkpoints.data_path(directory, step)
    data.write_bytes(blob)
    meta = {"step": step, "file": data.name, "bytes": len(blob), "hash": checkpoints.PIECES,
            "sha256": checkpoints.digest_file(data, checkpoints.PIECES)}
    checkpoints.marker_path(directory, step).write_text(__import__("json").dumps(meta))
    return meta


def test_garbage_in_the_bucket_neither_stops_the_mirror_confirming_nor_the_restore(aws, tmp_path):
    """Found by the hostile tester: one unreadable marker key under the prefix made every upload
    fail after the bytes were up (never confirmed: the instance could never be terminated), and a
    restore gave up on it instead of taking the checkpoint before it."""
    import json
    import shutil

    import boto3

    from daemon.common import checkpoints

    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    s3.create_bucket(Bucket="mirror-bucket")
    s3.put_object(Bucket="mirror-bucket", Key="amapiano-train/checkpoints/step_00000005.json", Body=b"{garbage")
    mirror, cfg, alerts, events = _mirror(aws, tmp_path)
    for step in (10, 20):
        _pt(cfg.checkpoint_dir, step, bytes([step]) * 300_000)
        mirror.sync()
        mirror.wait(60)
    assert alerts == [] and mirror.confirmed_newest(), events
    # The newest in the bucket is garbage, the one before it damaged, the one before that good.
    s3.put_object(Bucket="mirror-bucket", Key="amapiano-train/checkpoints/step_00000099.json", Body=b"{garbage")
    meta = _pt(tmp_path / "other", 30, b"z" * 300_000)
    s3.put_object(Bucket="mirror-bucket", Key="amapiano-train/checkpoints/step_00000030.pt", Body=b"y" * 300_000)
    s3.put_object(Bucket="mirror-bucket", Key="amapiano-train/checkpoints/step_00000030.json", Body=json.dumps(meta))
    shutil.rmtree(cfg.checkpoint_dir)
    mirror.start_restore()
    mirror.restoring.join(60)
    back = checkpoints.newest(cfg.checkpoint_dir)
    assert back is not None and back.step == 20 and checkpoints.verify(back) is None
    refused = [kw["step"] for lv, ev, kw in events if ev == "s3.checkpoint_refused"]
    assert refused == [99, 30], events
    assert sorted(p.name for p in cfg.checkpoint_dir.iterdir()) == ["step_00000020.json", "step_00000020.pt"]


def test_a_bucket_object_larger_than_its_marker_says_is_refused_before_a_byte_lands(aws, tmp_path):
    import boto3

    from daemon.common import checkpoints

    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    s3.create_bucket(Bucket="mirror-bucket")
    port = Aws(AwsConfig(endpoint_url=aws, s3_bucket="mirror-bucket"), "us-east-1")
    meta = _pt(tmp_path / "src", 40, b"a" * 1000)
    s3.put_object(Bucket="mirror-bucket", Key="amapiano-train/checkpoints/step_00000040.pt",
                  Body=b"a" * 5_000_000)
    with pytest.raises(OSError, match="5000000 bytes, its marker says 1000"):
        port.download_checkpoint(meta, tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []
    assert checkpoints.parse_marker({**meta, "step": 40.0}, 40, tmp_path) is None  # 40.0 is not step 40
    assert checkpoints.parse_marker({**meta, "bytes": True}, 40, tmp_path) is None


def test_a_download_killed_half_way_leaves_only_a_temp_dir_the_worker_cleans(aws, tmp_path):
    """boto3 downloads into its own temp name beside the target; killed, that file was never
    cleaned (a whole checkpoint's worth each time). Now it lives inside our `.tmp` directory."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import boto3

    from daemon.common import checkpoints
    from trainer.worker.checkpoint import clean_partial

    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    s3.create_bucket(Bucket="mirror-bucket")
    meta = _pt(tmp_path / "src", 80, os.urandom(1 << 20) * 48)
    s3.upload_file(str(checkpoints.data_path(tmp_path / "src", 80)), "mirror-bucket",
                   "amapiano-train/checkpoints/step_00000080.pt")
    dest = tmp_path / "dest"
    child = (f"import json, sys; from pathlib import Path; from daemon.ports.aws import Aws; "
             f"from daemon.common.config import AwsConfig; "
             f"Aws(AwsConfig(endpoint_url={aws!r}, s3_bucket='mirror-bucket'), 'us-east-1')"
             f".download_checkpoint(json.loads(sys.argv[1]), Path({str(dest)!r}))")
    proc = subprocess.Popen([sys.executable, "-c", child, __import__("json").dumps(meta)], cwd=os.getcwd())
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if dest.exists() and sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) > 4 << 20:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait(60) == -signal.SIGKILL, "the download finished before it could be killed"
    assert checkpoints.newest(dest) is None
    assert all(p.name.startswith(".") and p.name.endswith(".tmp") and p.is_dir() for p in dest.iterdir())
    clean_partial(dest)
    assert list(dest.iterdir()) == []


def test_the_prune_never_deletes_what_it_just_uploaded_nor_what_it_could_not_read(aws, tmp_path):
    """Found by the hostile tester: markers above the uploaded step whose objects are missing were
    ranked as the newest K, and the prune deleted the checkpoint just confirmed; a marker that
    could not be read for a moment (a timeout) was deleted as if it were garbage, best one included."""
    import json

    import boto3

    from daemon.common import checkpoints

    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    s3.create_bucket(Bucket="mirror-bucket")
    mirror, cfg, alerts, events = _mirror(aws, tmp_path, keep=2)
    for dead in (93, 94):  # parse, but nothing behind them
        meta = {"step": dead, "file": f"step_000000{dead}.pt", "bytes": 5, "sha256": "0" * 64}
        s3.put_object(Bucket="mirror-bucket", Key=f"amapiano-train/checkpoints/step_000000{dead}.json",
                      Body=json.dumps(meta))
    best = {**_pt(cfg.checkpoint_dir, 10, b"a" * 1000), "val_loss": 0.1, "val_step": 10}
    checkpoints.marker_path(cfg.checkpoint_dir, 10).write_text(json.dumps(best))
    for step in (10, 20, 30, 40):
        if step > 10:
            _pt(cfg.checkpoint_dir, step, bytes([step]) * 1000)
        mirror.sync()
        mirror.wait(60)
    assert mirror.confirmed_newest() and alerts == [], events
    port = mirror.instance.aws
    assert port.bucket_steps() == [10, 30, 40, 93, 94]  # the last 2 and the best; the dead ones untouched
    real_get = port.get_marker
    port.get_marker = lambda step: (_ for _ in ()).throw(ConnectionError("timeout")) if step == 10 else real_get(step)
    _pt(cfg.checkpoint_dir, 50, b"e" * 1000)
    mirror.sync()
    mirror.wait(60)
    assert port.bucket_steps() == [10, 40, 50, 93, 94]  # the best stays while its marker cannot be read


@pytest.mark.parametrize("mode", ["stall", "drip"])
def test_no_s3_or_ec2_call_outlasts_its_deadline(aws, tmp_path, mode):
    """A bucket that never answers, or answers a byte every 0.5 s (inside any per-read timeout):
    each call is over at its deadline, and a second call while the first is still stuck does not
    pile up another thread behind it. Before, get_state waited 3 x 60 s on a stall, and for ever
    on a drip; the scheduler thread's EC2 calls likewise."""
    import time

    import boto3

    from bucket_faults import FaultyBucket, plant_state

    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    s3.create_bucket(Bucket="slow-bucket")
    plant_state(s3, "slow-bucket", "p", "r", "2026-01-01T00:00:00Z", 1.0)
    s3.put_object(Bucket="slow-bucket", Key="p/checkpoints/step_00000005.pt", Body=b"x" * 20_000)
    bucket = FaultyBucket(aws, mode=mode)
    try:
        port = Aws(AwsConfig(endpoint_url=bucket.url, s3_bucket="slow-bucket", s3_prefix="p"), "us-east-1",
                   call_timeout_s=1.0)
        meta = {"step": 5, "file": "step_00000005.pt", "bytes": 20_000, "sha256": "0" * 64}
        for call in (port.get_state, port.bucket_steps, lambda: port.get_marker(5),
                     lambda: port.spot_price("g5.xlarge", "us-east-1a", datetime.now(timezone.utc))) + (
                         # a transfer's deadline grows with its size (a second a MiB): not for ever
                         (lambda: port.download_checkpoint(meta, tmp_path / "ckpt"),) if mode == "drip" else ()):
            began = time.monotonic()
            with pytest.raises(TimeoutError, match=r"no answer in 1(\.\d+)? s"):
                call()
            assert time.monotonic() - began < 5
        began = time.monotonic()
        with pytest.raises(TimeoutError, match="previous call has not returned"):
            port.get_state()
        assert time.monotonic() - began < 1
    finally:
        bucket.close()


def test_clients_bound_every_connect_read_and_retry(aws):
    port = Aws(AwsConfig(endpoint_url=aws), "us-east-1")
    for name in ("s3", "ec2"):
        config = port.client(name).meta.config
        assert config.connect_timeout <= 10 and config.read_timeout <= 30
        assert config.retries == {"total_max_attempts": 3, "mode": "standard"}  # the first try and two more
