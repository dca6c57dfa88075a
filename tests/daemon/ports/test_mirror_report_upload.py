"""The mirror's upload of reports/ while a person's `amapiano-train report` rewrites a page
(temp + rename): the bytes that go up are one version, under their own digest; a link planted in
the folder is refused, never followed."""
from __future__ import annotations

import hashlib
import os
import threading

import boto3
import pytest

from conftest import write_config
from daemon.common.atomic import write_bytes_atomic
from daemon.common.config import load_config
from daemon.ports.aws import Aws

BUCKET = "report-bucket"


def aws_for(aws_url, tmp_path):
    s3 = boto3.client("s3", endpoint_url=aws_url, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    cfg = load_config(write_config(tmp_path, {"aws": {"endpoint_url": aws_url, "s3_bucket": BUCKET,
                                                      "region": "us-east-1", "imds_url": ""}}))
    return s3, Aws(cfg.aws, "us-east-1"), cfg


def test_a_page_rewritten_during_its_uploads_goes_up_as_one_version(aws, tmp_path):
    s3, client, cfg = aws_for(aws, tmp_path)
    page = tmp_path / "week_5_report.html"
    written: set[str] = set()
    stop = threading.Event()

    def person_reports() -> None:  # pages of changing sizes, atomically, as daemon/report writes them
        n = 0
        while not stop.is_set():
            n += 1
            body = f"<html>{n}</html>".encode() + b"x" * (n * 7919 % 300_000)
            written.add(hashlib.sha256(body).hexdigest())
            write_bytes_atomic(page, body)

    write_bytes_atomic(page, b"<html>0</html>")
    written.add(hashlib.sha256(b"<html>0</html>").hexdigest())
    writer = threading.Thread(target=person_reports, daemon=True)
    writer.start()
    try:
        for _ in range(25):
            client.upload_report(page, page.name)  # raises on a mismatch in the bucket
    finally:
        stop.set()
        writer.join(30)
    obj = s3.get_object(Bucket=BUCKET, Key=f"{cfg.aws.s3_prefix}/reports/{page.name}")
    body = obj["Body"].read()
    assert hashlib.sha256(body).hexdigest() == obj["Metadata"]["sha256"] in written


def test_a_link_planted_in_the_reports_folder_is_not_followed(aws, tmp_path):
    _, client, _ = aws_for(aws, tmp_path)
    secret = tmp_path / "secrets.env"
    secret.write_text("AMAPIANO_SMTP_PASSWORD=hunter2\n")
    link = tmp_path / "week_5_report.html"
    link.symlink_to(secret)
    with pytest.raises(OSError):
        client.upload_report(link, link.name)
    os.mkfifo(tmp_path / "fifo.html")
    with pytest.raises(OSError, match="not a regular file"):
        client.upload_report(tmp_path / "fifo.html", "fifo.html")
