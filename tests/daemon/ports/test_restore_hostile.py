"""The restore against a bucket that lies about an object's size (issue 18's hostile cases): what
its HEAD says and what its GETs serve disagree. The HEAD's lie is played by a Target sized as the
HEAD said (the port's _target checks HEAD against the marker; here the HEAD agreed with a marker
that lied), against moto's real server: the ranged GETs past the object's true end are answered
416 InvalidRange. That is an answer about the object (it is not what its marker says), not a
bucket that cannot be read: refused at once, never retried as an outage, never waited for."""
from __future__ import annotations

import os
import time

import pytest

from daemon.ports.ranged_get import Download, Target
from daemon.ports.s3_errors import BadObject, unreadable

MIB = 1 << 20
BUCKET = "lying-bucket"


@pytest.mark.parametrize("real_mib, said_mib", [(4, 8), (8, 24)])
def test_an_object_smaller_than_its_head_said_is_refused_not_waited_for(aws, tmp_path, real_mib, said_mib):
    import boto3

    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="ckpt/step_00000008.pt", Body=os.urandom(real_mib * MIB))
    etag = s3.head_object(Bucket=BUCKET, Key="ckpt/step_00000008.pt")["ETag"]
    target = Target("ckpt/step_00000008.pt", tmp_path / "step_00000008.pt", said_mib * MIB, "0" * 64, etag=etag)
    began = time.monotonic()
    with pytest.raises(BadObject, match="step_00000008.pt") as refused:
        # Parts of the object's own size, one at a time: the part past its end is the one that fails.
        Download(s3, BUCKET, [target], call_timeout_s=10.0, bytes_per_s=64 * MIB, part_bytes=4 * MIB,
                 in_flight=1).run()
    assert not unreadable(refused.value), "a lie about the object read as an outage (the restore would wait)"
    assert time.monotonic() - began < 30
