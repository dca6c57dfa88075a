"""The mirror's upload of state.json while the supervisor rewrites it (every tick, atomically):
the bytes that go up are one version of the file, hashed as they went, never a false
"upload failed" alert. The upload hashed the live file, then uploaded it by name: a rewrite in
between sent another version under the first one's digest, the bucket's check refused it, and
the person was told the checkpoint upload had failed."""
from __future__ import annotations

import hashlib
import json
import random
import threading

import boto3

from conftest import RecordingLog, write_config
from daemon.common import checkpoints
from daemon.common.atomic import write_json_atomic
from daemon.common.clock import Clock
from daemon.common.config import load_config
from daemon.ports.instance import Instance
from daemon.ports.mirror import Mirror

BUCKET = "mirror-bucket"
UPLOADS = 40


def mirrored_run(aws, tmp_path):
    """A config on moto's bucket and one committed checkpoint (step 10)."""
    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    cfg = load_config(write_config(tmp_path, {"aws": {"endpoint_url": aws, "s3_bucket": BUCKET, "region": "us-east-1",
                                                      "imds_url": "", "mirror_every": "1h"}}))
    cfg.checkpoint_dir.mkdir(parents=True)
    blob = b"weights"
    data = checkpoints.data_path(cfg.checkpoint_dir, 10)
    data.write_bytes(blob)
    checkpoints.marker_path(cfg.checkpoint_dir, 10).write_text(json.dumps(
        {"step": 10, "file": data.name, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}))
    return s3, cfg


def test_a_state_file_rewritten_during_its_uploads_never_raises_the_alert(aws, tmp_path):
    s3, cfg = mirrored_run(aws, tmp_path)
    written: set[str] = set()
    stop = threading.Event()

    def supervisor_ticks() -> None:  # as the writer does: a new version, of another size, atomically
        rng, n = random.Random(7), 0
        while not stop.is_set():
            n += 1
            version = {"run_id": "r", "tick": n, "pad": "x" * rng.randrange(0, 4000)}
            write_json_atomic(cfg.state_file, version)
            written.add(hashlib.sha256(cfg.state_file.read_bytes()).hexdigest())

    log, alerts = RecordingLog(), []
    events = log.events
    mirror = Mirror(cfg, log, Clock(), Instance(cfg, log, Clock()), lambda: False, lambda *a: alerts.append(a), None)
    write_json_atomic(cfg.state_file, {"run_id": "r", "tick": 0})
    ticks = threading.Thread(target=supervisor_ticks, daemon=True)
    ticks.start()
    try:
        for _ in range(UPLOADS):
            mirror.upload_after(10, "rebalance")  # uploads at once: the checkpoint is committed
            mirror.wait(60)
    finally:
        stop.set()
        ticks.join(30)
    failed = [kw for _, ev, kw in events if ev == "s3.upload_failed"]
    assert alerts == [] and failed == [], (alerts, failed[:3])
    assert len([e for _, e, _ in events if e == "s3.uploaded"]) == UPLOADS
    # What the bucket holds is one whole version the supervisor wrote, under its own digest.
    obj = s3.get_object(Bucket=BUCKET, Key="amapiano-train/state.json")
    body = obj["Body"].read()
    assert hashlib.sha256(body).hexdigest() == obj["Metadata"]["sha256"]
    assert obj["Metadata"]["sha256"] in written and json.loads(body)["run_id"] == "r"


def test_the_alert_names_state_json_when_state_json_is_what_failed(aws, tmp_path):
    """A FIFO planted at state.json: the checkpoint goes up, state.json cannot (before, the upload
    thread waited on the FIFO for ever, and no one heard); the alert says which of the two failed."""
    import os

    s3, cfg = mirrored_run(aws, tmp_path)
    os.mkfifo(cfg.state_file)
    log, alerts = RecordingLog(), []
    mirror = Mirror(cfg, log, Clock(), Instance(cfg, log, Clock()), lambda: False, lambda *a: alerts.append(a), None)
    mirror.upload_after(10, "rebalance")
    mirror.wait(30)
    assert not mirror.uploads_pending, "the upload waited on the FIFO"
    assert [(kind, subject) for kind, subject, _ in alerts] == [("spot", "state.json upload to S3 failed")]
    assert "not a regular file" in alerts[0][2]
    assert "amapiano-train/checkpoints/step_00000010.json" in {
        o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
