"""Alerts reach a real SMTP server (aiosmtpd) or SES (moto), are retried, and never block for long."""
from __future__ import annotations

import dataclasses
import json
import time
import urllib.request

import pytest

from conftest import RecordingLog
from daemon.common.config import Duration, EmailConfig
from daemon.ports.mail import Outbox, SmtpTransport, apprise_urls, make_transport, smtp_password


def smtp_cfg(port: int, **kw) -> EmailConfig:
    return dataclasses.replace(EmailConfig(transport="smtp", to=["person@example.com"], sender="bot@example.com",
                                           smtp_host="127.0.0.1", smtp_port=port, smtp_starttls=False,
                                           timeout=Duration(2), retry_every=Duration(0.2)), **kw)


def test_alert_arrives_with_a_sortable_subject(smtp_sink):
    smtp_sink.up()
    log = RecordingLog()
    cfg = smtp_cfg(smtp_sink.port)
    outbox = Outbox(cfg, SmtpTransport(cfg, None), log, run_name="abc123")
    alert = outbox.send("idle", "idle shutdown in 15 min", "Nothing has trained for 1h45m.")
    assert outbox.wait(alert, timeout=10)
    outbox.close()
    [msg] = smtp_sink.messages
    assert msg["Subject"] == "[amapiano-train] idle shutdown in 15 min"
    assert msg["To"] == "person@example.com" and msg["From"] == "bot@example.com"
    assert "Nothing has trained" in msg.get_payload() and "abc123" in msg.get_payload()
    assert ("warning", "alert") in log.pairs()  # logged whatever the mail does
    assert outbox.to_json()[0]["status"] == "sent"


def test_a_server_down_at_first_gets_the_alert_once_it_is_up(smtp_sink, fault_report):
    log = RecordingLog()
    cfg = smtp_cfg(smtp_sink.port)
    outbox = Outbox(cfg, SmtpTransport(cfg, None), log)
    alert = outbox.send("budget", "50 % of the budget spent", "...")
    started = time.monotonic()
    assert not outbox.wait(alert, timeout=0.5)  # bounded: a dead server does not hold anyone
    assert time.monotonic() - started < 2
    assert alert.status == "pending" and alert.attempts >= 1 and "Connection refused" in alert.error
    smtp_sink.up()
    assert outbox.wait(alert, timeout=10)
    outbox.close()
    assert len(smtp_sink.messages) == 1
    assert log.names().count("alert.retrying") == 1  # said once, not every retry
    fault_report("SMTP down then up: the alert retried and delivered once")


def test_gives_up_at_error_level(smtp_sink):
    log = RecordingLog()
    cfg = smtp_cfg(smtp_sink.port, give_up_after=Duration(0.5))
    outbox = Outbox(cfg, SmtpTransport(cfg, None), log)
    alert = outbox.send("idle", "x", "y")
    assert not outbox.wait(alert, timeout=10)
    outbox.close()
    assert alert.status == "failed"
    assert ("error", "alert.undelivered") in log.pairs()


def test_no_transport_means_logged_only():
    log = RecordingLog()
    outbox = Outbox(EmailConfig(), None, log)
    alert = outbox.send("budget", "80 %", "...")
    assert alert.status == "logged" and not outbox.wait(alert, 0.1)
    outbox.close()


def test_pending_alerts_survive_a_restart(smtp_sink):
    cfg = smtp_cfg(smtp_sink.port)
    first = Outbox(cfg, SmtpTransport(cfg, None), RecordingLog())
    first.send("spot", "interruption notice", "checkpointing")
    saved = json.loads(json.dumps(first.to_json()))  # as state.json holds it
    first.close()
    smtp_sink.up()
    second = Outbox(cfg, SmtpTransport(cfg, None), RecordingLog(), previous=saved)
    deadline = time.monotonic() + 10
    while not smtp_sink.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    second.close()
    assert [m["Subject"] for m in smtp_sink.messages] == ["[amapiano-train] interruption notice"]


def test_password_from_a_systemd_credential_or_the_environment(tmp_path):
    cfg = EmailConfig()
    (tmp_path / "smtp-password").write_text("s3cret\n")
    assert smtp_password(cfg, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "s3cret"
    assert smtp_password(cfg, {"AMAPIANO_SMTP_PASSWORD": "env-pw"}) == "env-pw"
    assert smtp_password(cfg, {}) is None


def test_a_credential_file_too_large_is_one_line_never_read_whole(tmp_path):
    from daemon.ports.mail import CredentialError

    (tmp_path / "smtp-password").write_bytes(b"x" * (1 << 20))
    with pytest.raises(CredentialError, match=r"credential .*smtp-password cannot be read \(more than 65536 bytes\)"):
        smtp_password(EmailConfig(), {"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_ses_through_moto(aws):
    import boto3

    client = boto3.client("ses", endpoint_url=aws, region_name="us-east-1")
    client.verify_email_identity(EmailAddress="bot@example.com")
    cfg = EmailConfig(transport="ses", to=["person@example.com"], sender="bot@example.com")
    outbox = Outbox(cfg, make_transport(cfg, lambda: client), RecordingLog())
    alert = outbox.send("budget", "80 % of the budget spent", "$480 of $600")
    assert outbox.wait(alert, timeout=10), alert.error
    outbox.close()
    data = json.load(urllib.request.urlopen(f"{aws}/moto-api/data.json", timeout=10))
    [sent] = data["ses"]["Message"]  # what SES really recorded
    assert sent["subject"] == "[amapiano-train] 80 % of the budget spent"
    assert sent["destinations"] == {"ToAddresses": ["person@example.com"]} and "$480 of $600" in sent["body"]


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1, made here: the CA the client is told to trust."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_starttls_with_login_and_a_verified_certificate(tmp_path):
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    from conftest import _free_port

    cert, key = _self_signed(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    got, logins = [], []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            got.append(envelope.content)
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret")

    port = _free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True,
                            authenticator=authenticator, auth_require_tls=True)
    controller.start()
    try:
        cfg = smtp_cfg(port, smtp_starttls=True, smtp_ca_file=str(cert), smtp_user="bot")
        outbox = Outbox(cfg, SmtpTransport(cfg, "s3cret"), RecordingLog())
        alert = outbox.send("test", "over TLS", "hello")
        assert outbox.wait(alert, timeout=10), alert.error
        outbox.close()
        untrusted = smtp_cfg(port, smtp_starttls=True, smtp_user="bot", give_up_after=Duration(0.3))
        outbox = Outbox(untrusted, SmtpTransport(untrusted, "s3cret"), RecordingLog())
        refused = outbox.send("test", "not trusted", "x")
        assert not outbox.wait(refused, timeout=10)
        outbox.close()
    finally:
        controller.stop()
    assert len(got) == 1 and logins == [(b"bot", b"s3cret")]
    assert "CERTIFICATE_VERIFY_FAILED" in refused.error


# ---------------------------------------------------------------- apprise, to a webhook on 127.0.0.1

def apprise_cfg(**kw) -> EmailConfig:
    return dataclasses.replace(EmailConfig(transport="apprise", timeout=Duration(2), retry_every=Duration(0.2)), **kw)


def test_apprise_to_a_json_webhook(tmp_path):
    from webhook_sink import WebhookSink

    sink = WebhookSink()
    sink.up()
    try:
        cfg = apprise_cfg()
        transport = make_transport(cfg, environ={"AMAPIANO_APPRISE_URLS": f"{sink.url('json')} {sink.url('form', '/f')}"})
        assert transport.destination == "2 apprise URLs" and transport.unusable == []
        log = RecordingLog()
        outbox = Outbox(cfg, transport, log, run_name="abc123")
        alert = outbox.send("budget", "80 % of the budget spent", "$480 of $600")
        assert outbox.wait(alert, timeout=10), alert.error
        outbox.close()
    finally:
        sink.down()
    by_path = {r["path"]: r["body"] for r in sink.received}
    assert by_path["/hook"]["title"] == "[amapiano-train] 80 % of the budget spent"
    assert "$480 of $600" in by_path["/hook"]["message"] and "abc123" in by_path["/hook"]["message"]
    assert by_path["/f"]["title"] == "[amapiano-train] 80 % of the budget spent"  # form:// too
    assert outbox.to_json()[0]["status"] == "sent"


def test_apprise_endpoint_down_at_first_is_retried_and_delivered_once(fault_report):
    from webhook_sink import WebhookSink

    sink = WebhookSink()  # not up yet: connection refused
    cfg = apprise_cfg()
    outbox = Outbox(cfg, make_transport(cfg, environ={"AMAPIANO_APPRISE_URLS": sink.url()}), RecordingLog())
    alert = outbox.send("spot", "interruption notice", "checkpointing")
    assert not outbox.wait(alert, timeout=0.6)
    assert alert.status == "pending" and alert.attempts >= 2 and "apprise" in alert.error  # retried
    saved = json.loads(json.dumps(outbox.to_json()))  # the supervisor restarts while it is down
    outbox.close()
    sink.up()
    try:
        second = Outbox(cfg, make_transport(cfg, environ={"AMAPIANO_APPRISE_URLS": sink.url()}), RecordingLog(), previous=saved)
        deadline = time.monotonic() + 10
        while not sink.received and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # no second copy follows
        second.close()
    finally:
        sink.down()
    assert [r["body"]["title"] for r in sink.received] == ["[amapiano-train] interruption notice"]
    fault_report("apprise webhook down, supervisor restarted, webhook up: the alert delivered once")


def test_apprise_urls_come_from_the_credential_or_the_environment_never_the_log(tmp_path):
    cfg = apprise_cfg()
    (tmp_path / "apprise-urls").write_text("# alerts\njson://127.0.0.1:1/a\n\n  form://127.0.0.1:1/b  \n")
    assert apprise_urls(cfg, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == ["json://127.0.0.1:1/a",
                                                                          "form://127.0.0.1:1/b"]
    assert apprise_urls(cfg, {"AMAPIANO_APPRISE_URLS": "json://h/a\ntgram://tok/123,456"}) == [
        "json://h/a", "tgram://tok/123,456"]  # a comma belongs to its URL
    assert apprise_urls(cfg, {}) == []
    # A URL apprise cannot use is named by position and scheme, never with its token.
    transport = make_transport(cfg, environ={"AMAPIANO_APPRISE_URLS": "json://127.0.0.1:1/a bogus://SECRET-TOKEN"})
    assert transport.destination == "1 apprise URL"
    assert transport.unusable == ["URL 2 (bogus://...) is not one apprise knows"]
    log = RecordingLog()
    outbox = Outbox(cfg, transport, log)
    outbox.send("test", "x", "y")
    outbox.send("test", "x", "y")
    outbox.close()
    errors = log.at("error")
    assert errors == [("alert.transport_unusable", {"transport": "apprise", "problems": transport.unusable})]
    assert "SECRET" not in repr(log.events)
    # No URL at all: alerts are logged only, and a send says why.
    empty = make_transport(cfg, environ={})
    quiet = Outbox(cfg, empty, RecordingLog())
    assert empty.destination == "" and quiet.send("x", "y", "z").status == "logged"
    quiet.close()


def test_no_child_inherits_the_apprise_urls():
    from daemon.common.launch import child_environment

    env = child_environment({"AMAPIANO_APPRISE_URLS": "slack://T/B/C", "AMAPIANO_CONFIG": "/etc/x", "PATH": "/bin"})
    assert "AMAPIANO_APPRISE_URLS" not in env and env["AMAPIANO_CONFIG"] == "/etc/x"


def test_an_alert_sent_once_is_not_sent_again_after_a_restart(smtp_sink):
    """A FAILED run's alert: once per failure, restarts included (state.json keeps the key), and
    kept in the list while fifty newer alerts push older ones out."""
    smtp_sink.up()
    cfg = smtp_cfg(smtp_sink.port)
    first = Outbox(cfg, SmtpTransport(cfg, None), RecordingLog())
    alert = first.send("failed", "run FAILED: x", "why", once="failed:abc")
    assert first.send("failed", "run FAILED: x", "why", once="failed:abc") is alert
    assert first.wait(alert, timeout=10)
    saved = json.loads(json.dumps(first.to_json()))  # as state.json holds it
    first.close()
    log = RecordingLog()
    second = Outbox(cfg, None, log, previous=saved)  # no transport: nothing goes out anyway
    assert second.send("failed", "run FAILED: x", "why", once="failed:abc").id == alert.id
    for n in range(60):
        second.send("gpu", f"note {n}", "")
    assert second.send("failed", "run FAILED: x", "why", once="failed:abc").id == alert.id
    second.close()
    assert len(smtp_sink.messages) == 1 and log.names().count("alert.already_sent") == 2
