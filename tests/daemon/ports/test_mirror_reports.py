"""The S3 mirror takes the reports folder up with the checkpoints: the HTML reports, their clips,
their zips and the JSON reports; not the export (the model, gigabytes), not the evaluation's raw
samples (the reports hold copies), and nothing that is not a regular file of the folder's own."""
from __future__ import annotations

import boto3

from conftest import RecordingLog, write_config
from daemon.common import checkpoints
from daemon.common.clock import Clock
from daemon.common.config import load_config
from daemon.ports.instance import Instance
from daemon.ports.mirror import Mirror

BUCKET = "mirror-bucket"


def report_keys(s3) -> set[str]:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="amapiano-train/reports/")
    return {o["Key"].removeprefix("amapiano-train/reports/") for o in listing.get("Contents", [])}


def test_the_reports_folder_goes_up_and_only_what_changed_goes_again(aws, tmp_path):
    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    cfg = load_config(write_config(tmp_path, {"aws": {"endpoint_url": aws, "s3_bucket": BUCKET, "region": "us-east-1",
                                                      "imds_url": "", "mirror_every": "1h"}}))
    cfg.state_file.parent.mkdir(parents=True)
    cfg.state_file.write_text('{"run_id": "r"}')
    blob = b"weights"
    cfg.checkpoint_dir.mkdir()
    data = checkpoints.data_path(cfg.checkpoint_dir, 10)
    data.write_bytes(blob)
    checkpoints.marker_path(cfg.checkpoint_dir, 10).write_text(__import__("json").dumps(
        {"step": 10, "file": data.name, "bytes": len(blob), "hash": checkpoints.PIECES,
         "sha256": checkpoints.digest_file(data, checkpoints.PIECES)}))
    reports = cfg.reports_dir
    for name in ("week_5_report.html", "week_5_report.zip", "week_5_metrics.json", "week_5_report_files/model_001.wav",
                 "export/state_dict.bin", "milestone_eval_samples/model/00.wav"):
        (reports / name).parent.mkdir(parents=True, exist_ok=True)
        (reports / name).write_bytes(b"RIFF....WAVE" if name.endswith(".wav") else b"<html>" if ".html" in name else b"{}")
    (reports / "leak.html").symlink_to("/etc/passwd")
    (reports / "week_5_report_files" / "leak.wav").symlink_to("/etc/passwd")
    log, alerts = RecordingLog(), []
    events = log.events
    mirror = Mirror(cfg, log, Clock(), Instance(cfg, log, Clock()), lambda: False, lambda *a: alerts.append(a), None)

    mirror.sync()
    mirror.wait(60)
    assert alerts == [] and report_keys(s3) == {"week_5_report.html", "week_5_report.zip", "week_5_metrics.json",
                                                "week_5_report_files/model_001.wav"}, events
    sent = [kw for _, ev, kw in events if ev == "s3.reports_uploaded"]
    assert sent and sent[-1]["files"] == 4

    mirror.sync()  # nothing new: no upload at all (the checkpoint is confirmed, state.json not due for an hour)
    mirror.wait(60)
    assert len([e for _, e, _ in events if e == "s3.uploaded"]) == 1

    (reports / "report.html").write_bytes(b"<html>now")  # a new report (by hand): up at the next mirror tick
    (reports / "report_files").mkdir()
    (reports / "report_files" / "model_001.wav").write_bytes(b"RIFF....WAVE")
    mirror.sync()
    mirror.wait(60)
    assert {"report.html", "report_files/model_001.wav"} <= report_keys(s3)
    assert [kw for _, ev, kw in events if ev == "s3.reports_uploaded"][-1]["files"] == 2
