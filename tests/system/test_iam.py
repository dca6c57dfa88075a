"""The shipped instance-role policy (etc/amapiano-train/iam-policy.json) against moto's server
with IAM enforcement on: every AWS call the daemon makes passes as a principal holding exactly
that policy; stopping an instance without the run's tag, writing outside the prefix and
mailing from another sender are refused; and each statement is needed by some call.

The server is a separate process (tests/moto_iam_server.py: moto plus the resource ARNs and
condition keys the policy uses), so enforcement never touches the session's shared moto server.
Setup runs with enforcement off (INITIAL_NO_AUTH_ACTION_COUNT high), then /moto-api/reset-auth 0.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from email.message import EmailMessage

import pytest

from conftest import REPO
from daemon.ports.aws import Aws
from daemon.common import checkpoints
from daemon.common.config import AwsConfig, EmailConfig
from daemon.ports.mail_ses import SesTransport

POLICY = REPO / "etc" / "amapiano-train" / "iam-policy.json"
RUN, BUCKET, PREFIX, SENDER = "week1", "amapiano-mirror", "amapiano-train", "bot@example.com"
REGION = "us-east-1"
SIDS = [s["Sid"] for s in json.loads(POLICY.read_text())["Statement"]]


NO_RAW = "role-before-SendRawEmail"  # the policy as shipped before the report was mailed by SES


def policy(drop: str | None = None) -> dict:
    text = (POLICY.read_text().replace("RUN_NAME", RUN).replace("BUCKET", BUCKET).replace("PREFIX", PREFIX)
            .replace("SENDER", SENDER))
    doc = json.loads(text)
    doc["Statement"] = [s for s in doc["Statement"] if s["Sid"] != drop]
    if drop == NO_RAW:
        for s in doc["Statement"]:
            if isinstance(s["Action"], list) and "ses:SendRawEmail" in s["Action"]:
                s["Action"] = [a for a in s["Action"] if a != "ses:SendRawEmail"]
    return doc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def iam_world(tmp_path_factory):
    """The enforcing server, one principal per policy variant, and instances for each."""
    import boto3

    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "1000000"}
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "moto_iam_server.py"), str(port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        url = f"http://127.0.0.1:{port}"
        admin = {"endpoint_url": url, "region_name": REGION, "aws_access_key_id": "admin",
                 "aws_secret_access_key": "admin"}
        ec2, iam = boto3.client("ec2", **admin), boto3.client("iam", **admin)
        boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
        ses = boto3.client("ses", **admin)
        ses.verify_email_identity(EmailAddress=SENDER)
        ses.verify_email_identity(EmailAddress="other@example.com")

        def instance(tags: dict) -> str:
            spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}] if tags else []
            return ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="g4dn.xlarge",
                                     InstanceMarketOptions={"MarketType": "spot", "SpotOptions": {
                                         "SpotInstanceType": "persistent", "InstanceInterruptionBehavior": "stop"}},
                                     TagSpecifications=spec)["Instances"][0]["InstanceId"]

        world = {"url": url, "untagged": instance({}), "other_run": instance({"amapiano-train:run": "another-run"}),
                 "principals": {}}
        for variant in [None, *SIDS, NO_RAW]:
            name = f"amapiano-{variant or 'full'}"
            iam.create_user(UserName=name)
            iam.put_user_policy(UserName=name, PolicyName="amapiano-train", PolicyDocument=json.dumps(policy(variant)))
            key = iam.create_access_key(UserName=name)["AccessKey"]
            world["principals"][variant] = {"key": (key["AccessKeyId"], key["SecretAccessKey"]),
                                            "stop": instance({"amapiano-train:run": RUN}),
                                            "terminate": instance({"amapiano-train:run": RUN})}
        iam.create_user(UserName="laptop")
        iam.put_user_policy(UserName="laptop", PolicyName="amapiano-train-launcher",
                            PolicyDocument=(REPO / "etc" / "amapiano-train" / "iam-policy-launcher.json").read_text())
        key = iam.create_access_key(UserName="laptop")["AccessKey"]
        world["laptop"] = (key["AccessKeyId"], key["SecretAccessKey"])
        urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset-auth", data=b"0", method="POST",
                                                      headers={"Content-Type": "text/plain"}),
                               timeout=10)
        world["tmp"] = tmp_path_factory.mktemp("iam")
        yield world
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def as_principal(world, variant, monkeypatch, prefix: str = PREFIX) -> Aws:
    key_id, secret = world["principals"][variant]["key"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it keeps the first credentials it found
    return Aws(AwsConfig(region=REGION, endpoint_url=world["url"], s3_bucket=BUCKET, s3_prefix=prefix), REGION)


def denied(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}"
    return any(code in text for code in ("AccessDenied", "UnauthorizedOperation", "not authorized"))


def daemon_paths(world, variant, aws: Aws) -> dict:
    """Every AWS call the daemon makes (daemon/ports/aws.py, mail.py's SES), in the order a run makes
    them; returns {path: None | the error}."""
    from datetime import datetime, timezone

    mine = world["principals"][variant]
    work = world["tmp"] / f"{variant or 'full'}"
    (work / "ckpt").mkdir(parents=True, exist_ok=True)
    state = work / "state.json"
    state.write_text('{"run_id": "r"}')
    data = checkpoints.data_path(work, 8)
    data.write_bytes(os.urandom(2048))
    marker = checkpoints.marker_path(work, 8)
    marker.write_text(json.dumps({"step": 8, "file": data.name, "bytes": 2048, "sha256": checkpoints.sha256_file(data)}))
    message = EmailMessage()
    message["From"], message["Subject"] = SENDER, "[amapiano-train] test"
    message.set_content("policy test")
    decision = EmailMessage()
    decision["From"], decision["Subject"] = SENDER, "[amapiano-train] milestone: GO"
    decision.set_content("Decision: GO")
    decision.add_attachment(b"PK\x05\x06" + bytes(18), maintype="application", subtype="zip",
                            filename="week_5_report.zip")
    ses = lambda: SesTransport(EmailConfig(transport="ses", to=["me@example.com"], sender=SENDER),  # noqa: E731
                               lambda: aws.client("ses"))
    paths = {
        "ec2 spot price": lambda: aws.spot_price("g4dn.xlarge", "us-east-1a", datetime.now(timezone.utc)),
        "ec2 instance facts": lambda: aws.instance_facts(mine["stop"]),
        "ec2 instance state": lambda: aws.instance_state(mine["stop"]),
        "s3 put state (confirmed)": lambda: aws.upload_state(state),
        "s3 put checkpoint and marker": lambda: [aws.put_confirmed(data, aws._key(data.name)),
                                                 aws.put_confirmed(marker, aws._key(marker.name))],
        "s3 list steps": lambda: aws.bucket_steps(),
        "s3 get marker": lambda: aws.get_marker(8),
        "s3 get state": lambda: aws.get_state(),
        "s3 download checkpoint": lambda: aws.download_checkpoint(json.loads(marker.read_text()), work / "ckpt"),
        "s3 delete checkpoint": lambda: aws.delete_checkpoint(8),
        "ses send": lambda: ses().send(message),
        "ses send with the report (raw)": lambda: _raw_sent(world, lambda: ses().send(decision), "week_5_report.zip"),
        "ec2 stop tagged": lambda: aws.stop_instance(mine["stop"]),
        "ec2 terminate tagged": lambda: aws.terminate_instance(mine["terminate"]),
    }
    results = {}
    for name, call in paths.items():
        try:
            call()
            results[name] = None
        except Exception as e:  # every failure is reported, the rest still run
            results[name] = e
    return results


def _sent(world) -> dict:
    """What the server's SES recorded: {"Message": [...], "RawMessage": [...]}."""
    return json.load(urllib.request.urlopen(f"{world['url']}/moto-api/data.json", timeout=10)).get("ses") or {}


def _raw_sent(world, send, filename: str) -> None:
    """send(), and SES took a raw message carrying `filename` (a text fallback is not a raw send)."""
    import email

    before = len(_sent(world).get("RawMessage") or [])
    send()
    raw = (_sent(world).get("RawMessage") or [])[before:]
    if not raw or not any(p.get_filename() == filename for p in email.message_from_string(raw[-1]["raw_data"]).walk()):
        raise AssertionError(f"no raw message with {filename} recorded (the report went as text)")


def test_every_daemon_call_passes_with_the_policy_and_nothing_else_does(iam_world, monkeypatch):
    aws = as_principal(iam_world, None, monkeypatch)
    results = daemon_paths(iam_world, None, aws)
    assert {k: f"{type(v).__name__}: {v}" for k, v in results.items() if v is not None} == {}
    assert aws.get_state() == b'{"run_id": "r"}' and aws.bucket_steps() == []  # it really ran, and pruned
    # Refused: an instance without the run's tag, or another run's; the bucket outside the prefix;
    # another sender; the IAM API itself.
    for iid in (iam_world["untagged"], iam_world["other_run"]):
        for call in (aws.stop_instance, aws.terminate_instance):
            with pytest.raises(Exception) as refused:
                call(iid)
            assert denied(refused.value), refused.value
    assert aws.instance_state(iam_world["untagged"]) == "running"
    outside = as_principal(iam_world, None, monkeypatch, prefix="someone-else")
    with pytest.raises(Exception) as refused:
        outside.upload_state(iam_world["tmp"] / "full" / "state.json")
    assert denied(refused.value)
    message = EmailMessage()
    message["From"], message["Subject"] = "other@example.com", "x"
    message.set_content("x")
    with pytest.raises(Exception) as refused:
        SesTransport(EmailConfig(transport="ses", to=["me@example.com"], sender="other@example.com"),
                     lambda: aws.client("ses")).send(message)
    assert denied(refused.value)
    # A raw message without Source is judged by its From header, as SES judges it.
    raw = b"From: other@example.com\r\nTo: me@example.com\r\nSubject: x\r\n\r\nx\r\n"
    with pytest.raises(Exception) as refused:
        aws.client("ses").send_raw_email(RawMessage={"Data": raw})
    assert denied(refused.value)
    aws.client("ses").send_raw_email(RawMessage={"Data": raw.replace(b"other@", SENDER.split("@")[0].encode() + b"@")})
    with pytest.raises(Exception) as refused:
        aws.client("iam").list_users()
    assert denied(refused.value)


def test_a_role_without_send_raw_email_mails_the_decision_as_text_and_says_why(iam_world, monkeypatch):
    """A role made before the report was mailed: SES refuses the raw message, and the decision
    still arrives, as text, with one line saying what the role lacks."""
    aws = as_principal(iam_world, NO_RAW, monkeypatch)
    results = daemon_paths(iam_world, NO_RAW, aws)
    assert "AssertionError" in f"{type(results['ses send with the report (raw)']).__name__}"  # no raw message
    assert {k: v for k, v in results.items() if v is not None and "raw" not in k} == {}
    body = _sent(iam_world)["Message"][-1]["body"]
    assert "Decision: GO" in body
    [line] = [ln for ln in body.splitlines() if "SendRawEmail" in ln]
    assert line.startswith("Not attached: week_5_report.zip: SES refused ses:SendRawEmail")
    assert "etc/amapiano-train/iam-policy.json" in line


@pytest.mark.parametrize("sid", SIDS)
def test_each_statement_is_needed(iam_world, monkeypatch, sid):
    results = daemon_paths(iam_world, sid, as_principal(iam_world, sid, monkeypatch))
    failed = {k: v for k, v in results.items() if v is not None}
    assert failed, f"nothing the daemon does needs {sid}: drop it from the policy"
    # refused by IAM (later calls may then fail for want of what the refused one would have made)
    assert any(denied(v) for v in failed.values()), {k: f"{type(v).__name__}: {v}" for k, v in failed.items()}


def test_the_laptop_scripts_with_the_launcher_policy(iam_world):
    """scripts/start-gpu.sh launch, stop-gpu.sh, start-gpu.sh, gpu_instance.py terminate as a
    principal holding etc/amapiano-train/iam-policy-launcher.json; an untagged instance refused."""
    key_id, secret = iam_world["laptop"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret, AWS_REGION=REGION,
               AWS_ENDPOINT_URL=iam_world["url"], AWS_EC2_METADATA_DISABLED="true")
    scripts = REPO / "scripts"

    def run(script: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(scripts / script), *args], capture_output=True, text=True, env=env, timeout=120)

    launched = run("start-gpu.sh", "launch", "laptop-run", "--ami", "ami-12345678", "--instance-type", "g4dn.xlarge")
    assert launched.returncode == 0, launched.stderr
    iid = next(w.split(":")[0] for w in launched.stdout.split() if w.startswith("i-"))
    assert run("stop-gpu.sh", iid).returncode == 0
    assert run("start-gpu.sh", iid).returncode == 0
    ended = run("gpu_instance.py", "terminate", iid, "--yes")
    assert ended.returncode == 0 and f"{iid}: terminated" in ended.stdout, ended.stderr
    refused = run("stop-gpu.sh", iam_world["untagged"])
    assert refused.returncode == 1 and denied(RuntimeError(refused.stderr)), refused.stderr
