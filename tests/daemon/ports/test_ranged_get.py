"""A checkpoint back from the bucket by parallel ranged GETs, verified as it arrives: against moto's
server behind tests/ranged_bucket.py, which drips, cuts, shortens, garbles or replaces one part.

Whatever the bucket does, a restore ends within its deadlines, and what it could not verify is
never renamed into place: the checkpoint directory holds nothing from it afterwards."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from daemon.common import checkpoints
from daemon.common.config import AwsConfig
from daemon.ports.aws import Aws, BadObject
from ranged_bucket import Fault, RangedBucket

BUCKET = "mirror-bucket"
MIB = 1 << 20


def s3_client(aws):
    import boto3

    return boto3.client("s3", endpoint_url=aws, region_name="us-east-1")


def plant(aws, step: int, blob: bytes, pieces: bool = True, prefix: str = "amapiano-train") -> dict:
    """A committed .pt checkpoint in moto (bytes, then marker); returns its marker."""
    s3 = s3_client(aws)
    s3.create_bucket(Bucket=BUCKET)
    name = checkpoints.data_path(Path("."), step).name
    if pieces:
        sha = hashlib.sha256(b"".join(hashlib.sha256(blob[i:i + checkpoints.PIECE]).digest()
                                      for i in range(0, len(blob), checkpoints.PIECE))).hexdigest()
    else:
        sha = hashlib.sha256(blob).hexdigest()
    meta = {"step": step, "file": name, "bytes": len(blob), "sha256": sha, **({"hash": checkpoints.PIECES} if pieces else {})}
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/checkpoints/{name}", Body=blob)
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/checkpoints/{name.replace('.pt', '.json')}", Body=json.dumps(meta))
    return meta


def port(url: str, part: int, in_flight: int = 4, call_timeout_s: float = 30.0) -> Aws:
    p = Aws(AwsConfig(endpoint_url=url, s3_bucket=BUCKET), "us-east-1", call_timeout_s=call_timeout_s)
    p.part_bytes, p.parts_in_flight = part, in_flight
    return p


def left(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.fixture
def bucket(aws):
    made = []

    def make(fault: Fault | None = None, rate: float | None = None) -> RangedBucket:
        made.append(RangedBucket(aws, fault, rate))
        return made[-1]

    yield make
    for b in made:
        b.close()


def test_parts_come_in_parallel_each_pinned_to_the_etag_it_was_sized_by(aws, bucket, tmp_path):
    blob = os.urandom(6 * MIB) * 4    # 24 MiB: six 4 MiB parts
    meta = plant(aws, 40, blob)
    b = bucket(rate=8 * MIB)   # slow enough that parts overlap on a busy machine
    path = port(b.url, 4 * MIB).download_checkpoint(meta, tmp_path / "ckpt")
    assert path.read_bytes() == blob and checkpoints.verify(checkpoints.newest(tmp_path / "ckpt")) is None
    etag = s3_client(aws).head_object(Bucket=BUCKET, Key="amapiano-train/checkpoints/step_00000040.pt")["ETag"]
    gets = b.gets()
    assert sorted(g["range"] for g in gets) == sorted(f"bytes={a}-{a + 4 * MIB - 1}" for a in range(0, 24 * MIB, 4 * MIB))
    assert {g["if_match"] for g in gets} == {etag}
    assert b.max_in_flight >= 2


def test_a_sharded_checkpoints_files_come_at_once_not_one_by_one(aws, bucket, tmp_path):
    """Before, each shard's download waited for the one before it."""
    from test_aws import SHARDS, _sharded

    s3 = s3_client(aws)
    s3.create_bucket(Bucket=BUCKET)
    files = {**SHARDS, "__0_0.distcp": os.urandom(MIB), "__1_0.distcp": os.urandom(MIB)}
    meta = _sharded(tmp_path / "src", 30, files)
    for name, data in files.items():
        s3.put_object(Bucket=BUCKET, Key=f"amapiano-train/checkpoints/step_00000030.dcp/{name}", Body=data)
    b = bucket(rate=2 * MIB)
    path = port(b.url, 4 * MIB).download_checkpoint(meta, tmp_path / "ckpt")
    assert {p.name: p.read_bytes() for p in path.iterdir()} == files
    assert checkpoints.verify(checkpoints.newest(tmp_path / "ckpt")) is None
    assert b.max_in_flight >= 2


def parts_running() -> set:
    return {t for t in threading.enumerate() if t.name == "s3-part"}


@pytest.mark.parametrize("kind", ["drip", "stall"])
def test_a_part_that_drips_or_stalls_is_given_up_at_its_deadline_and_fetched_again(aws, bucket, tmp_path, kind):
    """Before, one dripping part held the whole download to the transfer's deadline, then failed."""
    blob = os.urandom(12 * MIB)
    meta = plant(aws, 7, blob, pieces=False)
    b = bucket(Fault(kind, start=8 * MIB))   # a part boundary for boto3's 8 MiB parts too
    began, others = time.monotonic(), parts_running()
    path = port(b.url, MIB, call_timeout_s=3.0).download_checkpoint(meta, tmp_path / "ckpt")
    assert path.read_bytes() == blob
    assert [g["fault"] for g in b.gets(8 * MIB)] == [kind, None]
    assert time.monotonic() - began < 60
    while kind == "drip" and parts_running() - others:   # the abandoned GET's thread ends too: its socket
        assert time.monotonic() - began < 60, "a part's thread outlived its download"   # was shut
        time.sleep(0.1)


def test_a_part_that_always_drips_fails_the_restore_after_its_tries_with_nothing_left(aws, bucket, tmp_path):
    meta = plant(aws, 7, os.urandom(12 * MIB), pieces=False)
    b = bucket(Fault("drip", start=8 * MIB, times=None))
    began = time.monotonic()
    with pytest.raises(TimeoutError, match=r"bytes 8388608-9437183: no answer in 3 s \(3 tries\)"):
        port(b.url, MIB, call_timeout_s=2.0).download_checkpoint(meta, tmp_path / "ckpt")
    assert len(b.gets(8 * MIB)) == 3
    assert time.monotonic() - began < 60
    assert left(tmp_path / "ckpt") == []


def test_a_short_part_is_refused_and_nothing_lands(aws, bucket, tmp_path):
    meta = plant(aws, 9, os.urandom(8 * MIB))
    b = bucket(Fault("short", times=None))
    with pytest.raises(BadObject, match="bytes arrived"):
        port(b.url, 4 * MIB).download_checkpoint(meta, tmp_path / "ckpt")
    assert left(tmp_path / "ckpt") == []


def test_a_part_cut_off_once_is_fetched_again(aws, bucket, tmp_path):
    blob = os.urandom(8 * MIB)
    meta = plant(aws, 9, blob)
    b = bucket(Fault("cut"))
    assert port(b.url, 4 * MIB).download_checkpoint(meta, tmp_path / "ckpt").read_bytes() == blob
    [cut] = [g for g in b.gets() if g["fault"] == "cut"]
    assert [g["fault"] for g in b.gets() if g["range"] == cut["range"]] == ["cut", None]


@pytest.mark.parametrize("pieces", [True, False])
def test_a_part_with_wrong_bytes_fails_the_digest_and_nothing_lands(aws, bucket, tmp_path, pieces):
    meta = plant(aws, 9, os.urandom(12 * MIB), pieces=pieces)
    b = bucket(Fault("garble"))
    with pytest.raises(BadObject, match="SHA-256 does not match its marker"):
        port(b.url, 4 * MIB).download_checkpoint(meta, tmp_path / "ckpt")
    assert left(tmp_path / "ckpt") == []


def _restorer(aws_url, tmp_path):
    from test_aws import _mirror

    mirror, cfg, alerts, events = _mirror(aws_url, tmp_path)
    mirror.instance.aws.part_bytes, mirror.instance.aws.parts_in_flight = 4 * MIB, 2
    return mirror, cfg, events


def test_an_object_replaced_between_parts_is_refused_and_the_one_before_comes_back(aws, bucket, tmp_path):
    """Before, the If-Match refusal (412) read as "the bucket cannot be read": a fresh disk waited
    for the bucket, alerting, instead of taking the checkpoint before it."""
    older = os.urandom(4 * MIB)
    plant(aws, 10, older)
    plant(aws, 20, os.urandom(16 * MIB))
    key = "amapiano-train/checkpoints/step_00000020.pt"
    b = bucket(Fault("change", start=0, then=lambda: s3_client(aws).put_object(
        Bucket=BUCKET, Key=key, Body=os.urandom(16 * MIB))), rate=16 * MIB)
    mirror, cfg, events = _restorer(b.url, tmp_path)
    assert mirror.restorer._checkpoints(mirror.instance.aws) is None   # nothing to wait for
    refused = [kw for lv, ev, kw in events if ev == "s3.checkpoint_refused"]
    assert [r["step"] for r in refused] == [20] and "changed in the bucket" in refused[0]["error"], events
    assert checkpoints.newest(cfg.checkpoint_dir).step == 10
    assert checkpoints.data_path(cfg.checkpoint_dir, 10).read_bytes() == older
    assert left(cfg.checkpoint_dir) == ["step_00000010.json", "step_00000010.pt"]
    assert 412 in [g["status"] for g in b.gets() if "step_00000020" in g["path"]], b.log   # If-Match refused them


FULL_DISK = r"""
import json, os, sys
sys.path[:0] = [{repo!r}, {tests!r}, {daemon_tests!r}]
from pathlib import Path
from test_aws import _mirror
mirror, cfg, alerts, events = _mirror({url!r}, Path({small!r}))   # its state directory on the small disk
aws = mirror.instance.aws
aws.part_bytes, aws.parts_in_flight = 4 << 20, 2
out = {{}}
if {meta!r}:
    try:
        aws.download_checkpoint(json.loads({meta!r}), cfg.checkpoint_dir)
    except OSError as e:
        out["error"], out["errno"] = str(e), e.errno
else:
    out["wait"] = mirror.restorer._checkpoints(aws)
    out["events"] = [ev for lv, ev, kw in events]
out["left"] = sorted(p.name for p in cfg.checkpoint_dir.iterdir()) if cfg.checkpoint_dir.exists() else []
st = os.statvfs({small!r})
out["free"] = st.f_bavail * st.f_frsize
"""


def _in_small_disk(tmp_path, aws, meta: dict | None) -> dict:
    """The port (or, without `meta`, the restore) in a mount namespace of its own where the state
    directory is on a 20 MiB tmpfs; what it saw, as JSON."""
    import subprocess
    import sys

    here = Path(__file__).resolve()
    small = tmp_path / "small"
    small.mkdir()
    script = FULL_DISK.format(repo=str(here.parents[3]), tests=str(here.parents[2]), daemon_tests=str(here.parent), url=aws,
                              meta=json.dumps(meta) if meta else "", small=str(small))
    (tmp_path / "child.py").write_text(script + "print('OUT' + json.dumps(out))\n")
    run = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=20m tmpfs {small} && "
                          f"exec {sys.executable} {tmp_path / 'child.py'}"],
                         capture_output=True, text=True, timeout=120, cwd=os.getcwd())
    if run.returncode != 0 and ("mount:" in run.stderr or "unshare:" in run.stderr):
        pytest.skip(f"no mount namespace here: {run.stderr.strip()}")
    lines = [x for x in run.stdout.splitlines() if x.startswith("OUT")]
    assert run.returncode == 0 and lines, run.stdout + run.stderr
    return json.loads(lines[-1][3:])


def test_a_checkpoint_larger_than_the_disk_is_refused_before_it_fills_it(aws, tmp_path):
    meta = plant(aws, 5, os.urandom(24 * MIB))
    out = _in_small_disk(tmp_path, aws, meta)
    assert out.get("errno") == 28, out   # ENOSPC
    assert out["left"] == [] and out["free"] > 19 * MIB, out   # the temp file is gone, the room given back


def test_a_sharded_checkpoint_too_big_for_the_disk_leaves_nothing_and_gives_the_room_back(aws, tmp_path):
    """Its first file fits, its second does not: every file's room is reserved before any GET, so
    the disk never fills half-way through a download of ours."""
    from test_aws import _sharded

    s3 = s3_client(aws)
    s3.create_bucket(Bucket=BUCKET)
    files = {".metadata": b"m" * 300, "__0_0.distcp": os.urandom(12 * MIB), "__1_0.distcp": os.urandom(12 * MIB)}
    meta = _sharded(tmp_path / "src", 30, files)
    for name, data in files.items():
        s3.put_object(Bucket=BUCKET, Key=f"amapiano-train/checkpoints/step_00000030.dcp/{name}", Body=data)
    out = _in_small_disk(tmp_path, aws, meta)
    assert out.get("errno") == 28, out
    assert out["left"] == [] and out["free"] > 19 * MIB, out


def test_a_full_disk_waits_for_room_rather_than_refusing_every_checkpoint_in_the_bucket(aws, tmp_path):
    """A disk too small is this machine's fault, not the bucket's: before, each checkpoint was
    'refused' in turn and, with none left, a fresh disk started training again at step 0."""
    plant(aws, 5, os.urandom(24 * MIB))
    plant(aws, 6, os.urandom(24 * MIB))
    out = _in_small_disk(tmp_path, aws, None)
    assert out["wait"] and "No space left" in out["wait"], out
    assert "s3.checkpoint_refused" not in out["events"] and out["left"] == [], out


@pytest.mark.slow
def test_sigterm_during_a_restore_is_prompt(aws, bucket, tmp_path, daemons):
    """A fresh disk bringing a 64 MiB checkpoint back through a slow bucket, stopped half-way:
    before, the supervisor's exit waited for s3transfer's pool to finish the whole download."""
    from bucket_faults import now_plus, plant_checkpoint, plant_state
    from conftest import write_config

    s3 = s3_client(aws)
    s3.create_bucket(Bucket=BUCKET)
    plant_state(s3, BUCKET, "demo", "bucket-run", now_plus(-60), 3.63)
    plant_checkpoint(s3, BUCKET, "demo", 100, os.urandom(MIB) * 64)
    b = bucket(rate=256 << 10)   # a part at a time would take minutes
    config = write_config(tmp_path, {"aws": {"endpoint_url": b.url, "region": "us-east-1", "s3_bucket": BUCKET,
                                             "s3_prefix": "demo", "mirror_every": "1s"}})
    d = daemons(config, {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                         "AWS_DEFAULT_REGION": "us-east-1"})
    ckpt = tmp_path / "state" / "checkpoints"
    deadline = time.monotonic() + 90
    while b.sent < 2 * MIB:   # the restore is under way
        assert time.monotonic() < deadline and d.proc.poll() is None, d.log_text()[-3000:]
        time.sleep(0.1)
    began = time.monotonic()
    assert d.stop(60) == 0, d.log_text()[-3000:]
    assert time.monotonic() - began < 10, f"SIGTERM took {time.monotonic() - began:.1f} s during a restore"
    assert checkpoints.newest(ckpt) is None   # nothing half-fetched was committed


MEMORY = r"""
import json, resource, sys
sys.path[:0] = [{repo!r}]
from pathlib import Path
from daemon.common.config import AwsConfig
from daemon.ports.aws import Aws
aws = Aws(AwsConfig(endpoint_url={url!r}, s3_bucket={bucket!r}), "us-east-1")
aws.part_bytes, aws.parts_in_flight = 4 << 20, 4
aws.get_marker(3)   # the client built, a connection made: what is held from here on is the download's
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
aws.download_checkpoint(json.loads({meta!r}), Path({dest!r}))
print("GREW", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_memory_stays_a_few_reads_a_part_not_the_checkpoint(aws, tmp_path):
    """96 MiB through 4 parts in flight: the process grows by a few MiB, not by the object."""
    import subprocess
    import sys

    meta = plant(aws, 3, os.urandom(MIB) * 96)
    script = MEMORY.format(repo=str(Path(__file__).resolve().parents[3]), url=aws, bucket=BUCKET,
                           meta=json.dumps(meta), dest=str(tmp_path / "ckpt"))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    grew = [int(x.split()[1]) for x in run.stdout.splitlines() if x.startswith("GREW")]
    assert run.returncode == 0 and grew, run.stderr[-2000:]
    assert grew[0] < 32 * MIB, f"the download held {grew[0] / MIB:.0f} MiB"
    assert checkpoints.verify(checkpoints.newest(tmp_path / "ckpt")) is None


@pytest.mark.slow
def test_the_restore_bench_runs_and_prints_its_figures():
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[3] / "scripts" / "bench" / "restore_speed.py"
    r = subprocess.run([sys.executable, str(bench), "--layers", "1", "--rounds", "1"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "restore + load + first step:" in r.stdout and "speed-up of the parallel restore" in r.stdout, r.stdout
