"""daemon/ports/mail_attach.py: the decision's mail carries its report while it fits, else the
page alone, else nothing but where it is; a FIFO or a vanished file never blocks or breaks it."""
from __future__ import annotations

import os
from email.message import EmailMessage

from conftest import RecordingLog
from daemon.ports.mail_attach import attach, choose


def test_the_zip_when_it_fits_else_the_page_else_a_line_saying_why(tmp_path):
    zip_, page = tmp_path / "week_5_report.zip", tmp_path / "week_5_report.html"
    zip_.write_bytes(b"z" * 5000)
    page.write_bytes(b"<html>" + b"p" * 500)
    assert choose([str(zip_), str(page)], limit=10_000) == (zip_, "")
    path, line = choose([str(zip_), str(page)], limit=1000)
    assert path == page and "the page only" in line and "week_5_report.zip (0.0 MB)" in line
    path, line = choose([str(zip_), str(page)], limit=100)
    assert path is None and "week_5_report.zip (0.0 MB), week_5_report.html (0.0 MB)" in line
    assert choose([str(tmp_path / "gone.zip")]) == (None, "")


def test_a_fifo_or_an_unknown_kind_is_never_attached(tmp_path):
    fifo = tmp_path / "week_5_report.zip"
    os.mkfifo(fifo)
    (tmp_path / "state.json").write_text("{}")
    assert choose([str(fifo), str(tmp_path / "state.json")])[0] is None


def test_a_fifo_or_a_link_where_the_zip_was_is_not_called_too_large(tmp_path):
    """It was named 'over the 7 MB a mail can carry (0.0 MB)': a person would look for a size
    problem that is not there."""
    page = tmp_path / "week_5_report.html"
    page.write_text("<html></html>")
    for planted in ("fifo", "link"):
        zipped = tmp_path / "week_5_report.zip"
        if zipped.exists() or zipped.is_symlink():
            zipped.unlink()
        os.mkfifo(zipped) if planted == "fifo" else zipped.symlink_to(tmp_path / "elsewhere.zip")
        chosen, line = choose([str(zipped), str(page)])
        assert chosen == page and "too large" not in line and "MB" not in line, (planted, line)


def test_an_attached_report_is_a_second_part_after_the_text(tmp_path):
    page = tmp_path / "week_5_report.html"
    page.write_text("<html>report</html>")
    msg = EmailMessage()
    msg.set_content("Decision: GO")
    assert attach(msg, page)
    parts = [(p.get_content_type(), p.get_filename()) for p in msg.iter_parts()]
    assert parts == [("text/plain", None), ("text/html", "week_5_report.html")]
    page.unlink()
    assert not attach(msg, page)  # gone between the choice and the send: the mail goes without it


def smtp_cfg(port: int):
    from daemon.common.config import Duration, EmailConfig

    return EmailConfig(transport="smtp", to=["person@example.com"], sender="bot@example.com", smtp_host="127.0.0.1",
                       smtp_port=port, smtp_starttls=False, timeout=Duration(2), retry_every=Duration(0.2))


def report(tmp_path, clips: int = 3):
    """A report's page and zip (daemon/report/build.py's names)."""
    import zipfile

    page, archive = tmp_path / "week_5_report.html", tmp_path / "week_5_report.zip"
    page.write_text("<html><p>NO-GO</p></html>")
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("week_5_report/week_5_report.html", page.read_text())
        for i in range(clips):
            z.writestr(f"week_5_report/week_5_report_files/model_{i:03d}.wav", os.urandom(200_000))
    return str(archive), str(page)


def test_the_decision_mail_over_smtp_carries_the_report_and_its_text(smtp_sink, tmp_path):
    from daemon.ports.mail import Outbox, SmtpTransport

    smtp_sink.up()
    cfg = smtp_cfg(smtp_sink.port)
    outbox = Outbox(cfg, SmtpTransport(cfg, None), RecordingLog(), run_name="run-1")
    alert = outbox.send("milestone", "milestone: NO-GO", "Decision: NO-GO\n- spend over the limit",
                        attachments=report(tmp_path))
    assert outbox.wait(alert, timeout=10), alert.error
    outbox.close()
    [msg] = smtp_sink.messages
    parts = {p.get_content_type(): p for p in msg.walk() if not p.is_multipart()}
    assert "Decision: NO-GO" in parts["text/plain"].get_payload(decode=True).decode()
    assert parts["application/zip"].get_filename() == "week_5_report.zip"
    assert "attachments" not in outbox.to_json()[0]  # paths are not kept in state.json


def test_a_report_too_large_to_mail_sends_the_page_and_says_so(smtp_sink, tmp_path, monkeypatch):
    import daemon.ports.mail_attach as mail_attach
    from daemon.ports.mail import Outbox, SmtpTransport

    monkeypatch.setattr(mail_attach, "ATTACH_LIMIT_BYTES", 100_000)
    smtp_sink.up()
    cfg = smtp_cfg(smtp_sink.port)
    outbox = Outbox(cfg, SmtpTransport(cfg, None), RecordingLog())
    alert = outbox.send("milestone", "milestone: NO-GO", "Decision: NO-GO", attachments=report(tmp_path))
    assert outbox.wait(alert, timeout=10), alert.error
    outbox.close()
    [msg] = smtp_sink.messages
    parts = {p.get_content_type(): p for p in msg.walk() if not p.is_multipart()}
    assert parts["text/html"].get_filename() == "week_5_report.html" and "application/zip" not in parts
    assert "its clips are too large to mail" in parts["text/plain"].get_payload(decode=True).decode()


def test_a_pending_alert_from_state_json_never_attaches_what_it_names(smtp_sink, tmp_path):
    """state.json can come from the bucket: a pending alert naming a file must not mail that file."""
    from daemon.ports.mail import Outbox, SmtpTransport

    secret = tmp_path / "secret.html"
    secret.write_text("<p>not for mail</p>")
    smtp_sink.up()
    cfg = smtp_cfg(smtp_sink.port)
    planted = {"id": "a1", "kind": "milestone", "subject": "[amapiano-train] x", "body": "x", "status": "pending",
               "created_at": "2026-11-02T08:00:00Z", "attachments": [str(secret)]}
    outbox = Outbox(cfg, SmtpTransport(cfg, None), RecordingLog(), previous=[planted])
    deadline = __import__("time").monotonic() + 10
    while not smtp_sink.messages and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.05)
    outbox.close()
    [msg] = smtp_sink.messages
    assert not msg.is_multipart() and "not for mail" not in msg.as_string()


def test_the_text_of_a_mail_with_an_attachment_is_its_text_part(tmp_path):
    """Transports that send text take the text part of a message with an attachment, not a
    traceback from get_content() on a multipart message."""
    from daemon.common.config import EmailConfig
    from daemon.ports.mail import Alert, compose

    cfg = EmailConfig(transport="ses", to=["person@example.com"], sender="bot@example.com")
    alert = Alert(id="a", kind="milestone", subject="s", body="Decision: GO", created_at="2026-11-02T08:00:00Z",
                  attachments=list(report(tmp_path)))
    msg = compose(cfg, alert)
    assert msg.is_multipart() and "Decision: GO" in msg.get_body(("plain",)).get_content()


def sent_by_moto(endpoint: str) -> dict:
    """What moto's SES recorded (its model data over HTTP): {"Message": [...], "RawMessage": [...]}."""
    import json
    import urllib.request

    return json.load(urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=10)).get("ses") or {}


def test_ses_mails_the_decision_with_its_report_as_a_raw_message(aws, tmp_path):
    """SES's SendEmail takes text only: a decision mail with a report goes as SendRawEmail, the
    whole MIME message, and what SES recorded holds the zip that opens to the page and its clips."""
    import email
    import io
    import zipfile

    import boto3

    from daemon.common.config import EmailConfig
    from daemon.ports.mail import Outbox, make_transport

    client = boto3.client("ses", endpoint_url=aws, region_name="us-east-1")
    client.verify_email_identity(EmailAddress="bot@example.com")
    before = len(sent_by_moto(aws).get("RawMessage", []))
    cfg = EmailConfig(transport="ses", to=["person@example.com"], sender="bot@example.com")
    outbox = Outbox(cfg, make_transport(cfg, lambda: client), RecordingLog())
    alert = outbox.send("milestone", "milestone: GO", "Decision: GO", attachments=report(tmp_path))
    assert outbox.wait(alert, timeout=10), alert.error
    outbox.close()
    raw = sent_by_moto(aws)["RawMessage"][before:]
    assert len(raw) == 1 and "person@example.com" in raw[0]["destinations"]
    msg = email.message_from_string(raw[0]["raw_data"])
    parts = {p.get_content_type(): p for p in msg.walk() if not p.is_multipart()}
    assert msg["Subject"] == "[amapiano-train] milestone: GO"
    assert "Decision: GO" in parts["text/plain"].get_payload(decode=True).decode()
    with zipfile.ZipFile(io.BytesIO(parts["application/zip"].get_payload(decode=True))) as z:
        assert z.read("week_5_report/week_5_report.html") == b"<html><p>NO-GO</p></html>"
        assert len([n for n in z.namelist() if n.endswith(".wav")]) == 3


def test_ses_without_a_report_still_sends_plain_text(aws):
    """An alert with nothing attached stays a SendEmail (what a role from before SendRawEmail allows)."""
    import boto3

    from daemon.common.config import EmailConfig
    from daemon.ports.mail import Outbox, make_transport

    client = boto3.client("ses", endpoint_url=aws, region_name="us-east-1")
    client.verify_email_identity(EmailAddress="bot@example.com")
    before = sent_by_moto(aws)
    cfg = EmailConfig(transport="ses", to=["person@example.com"], sender="bot@example.com")
    outbox = Outbox(cfg, make_transport(cfg, lambda: client), RecordingLog())
    alert = outbox.send("idle", "idle for 2 h", "stopping in 10 min")
    assert outbox.wait(alert, timeout=10), alert.error
    outbox.close()
    after = sent_by_moto(aws)
    assert len(after.get("RawMessage", [])) == len(before.get("RawMessage", []))
    assert "stopping in 10 min" in after["Message"][-1]["body"]


def apprise_post(tmp_path) -> dict:
    """The decision's alert through apprise to a json:// webhook on 127.0.0.1: what it POSTed."""
    from webhook_sink import WebhookSink

    from daemon.common.config import Duration, EmailConfig
    from daemon.ports.mail import Outbox, make_transport

    sink = WebhookSink()
    sink.up()
    try:
        cfg = EmailConfig(transport="apprise", timeout=Duration(5), retry_every=Duration(0.2))
        outbox = Outbox(cfg, make_transport(cfg, environ={"AMAPIANO_APPRISE_URLS": sink.url("json")}), RecordingLog())
        alert = outbox.send("milestone", "milestone: NO-GO", "Decision: NO-GO", attachments=report(tmp_path))
        assert outbox.wait(alert, timeout=20), alert.error
        outbox.close()
    finally:
        sink.down()
    [posted] = sink.received
    return posted["body"]


def test_apprise_carries_the_report_to_a_webhook(tmp_path):
    """An apprise destination that takes files (json:// here, Slack, Discord, Telegram, email...) gets
    the report's zip beside the text; the bytes that arrive are the zip."""
    import base64
    import io
    import zipfile

    posted = apprise_post(tmp_path)
    assert "Decision: NO-GO" in posted["message"]
    [attached] = posted["attachments"]
    assert attached["filename"] == "week_5_report.zip"
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(attached["base64"]))) as z:
        assert "week_5_report/week_5_report.html" in z.namelist()


def test_apprise_sends_the_page_alone_past_the_cap(tmp_path, monkeypatch):
    """The cap holds for apprise too: past it the page alone goes, and the text says why."""
    import daemon.ports.mail_attach as mail_attach

    monkeypatch.setattr(mail_attach, "ATTACH_LIMIT_BYTES", 100_000)
    posted = apprise_post(tmp_path)
    assert [a["filename"] for a in posted["attachments"]] == ["week_5_report.html"]
    assert "its clips are too large to mail" in posted["message"]


def test_apprise_to_a_service_that_takes_no_files_says_so_in_the_text(tmp_path, monkeypatch):
    """A service that takes no files (apprise's json:// told so, as its SMS plugins are) still gets
    the decision, and a line that the report is not attached."""
    import apprise.plugins.custom_json as custom_json

    monkeypatch.setattr(custom_json.NotifyJSON, "attachment_support", False)
    posted = apprise_post(tmp_path)
    assert posted["attachments"] == []
    assert "Not attached: week_5_report.zip: json:// takes no files; see the paths above" in posted["message"]


def test_a_report_too_large_to_mail_is_named_by_its_bucket_key(smtp_sink, tmp_path, monkeypatch):
    """The decision's alert as the milestone makes it (reports.with_html) and the executor sends it:
    past the cap, the line that says what is not attached names where it is in the bucket."""
    import dataclasses
    from pathlib import Path
    from types import SimpleNamespace

    import daemon.ports.mail_attach as mail_attach
    from conftest import write_config
    from daemon import reports
    from daemon.actions import SendAlert
    from daemon.common.config import load_config
    from daemon.executor import Executor
    from daemon.ports.mail import Outbox, SmtpTransport

    monkeypatch.setattr(mail_attach, "ATTACH_LIMIT_BYTES", 1000)  # the page (30 bytes) fits, the zip not
    cfg = load_config(write_config(tmp_path))
    cfg = dataclasses.replace(cfg, aws=dataclasses.replace(cfg.aws, s3_bucket="runs", s3_prefix="r1"))
    archive, page = report(tmp_path)
    [alert] = reports.with_html(cfg, [SendAlert("milestone", "milestone: NO-GO", "Decision: NO-GO")], Path(page),
                                "milestone")
    smtp_sink.up()
    email = smtp_cfg(smtp_sink.port)
    outbox = Outbox(email, SmtpTransport(email, None), RecordingLog())
    Executor(RecordingLog(), SimpleNamespace(), None, None, outbox, None, None, lambda: None).execute([alert])
    deadline = __import__("time").monotonic() + 10
    while not smtp_sink.messages and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.05)
    outbox.close()
    [msg] = smtp_sink.messages
    text = next(p for p in msg.walk() if p.get_content_type() == "text/plain").get_payload(decode=True).decode()
    [line] = [ln for ln in text.splitlines() if "too large to mail" in ln]
    assert "s3://runs/r1/reports/week_5_report.zip" in line, text
    assert [p.get_filename() for p in msg.walk() if p.get_filename()] == ["week_5_report.html"]


def test_the_line_names_each_file_left_out_by_its_bucket_key(tmp_path):
    zip_, page = tmp_path / "week_5_report.zip", tmp_path / "week_5_report.html"
    zip_.write_bytes(b"z" * 5000)
    page.write_bytes(b"p" * 500)
    path, line = choose([str(zip_), str(page)], limit=100, at="s3://runs/r1/reports/")
    assert path is None and "s3://runs/r1/reports/week_5_report.zip" in line and "/week_5_report.html" in line
    path, line = choose([str(zip_), str(page)], limit=100)
    assert "see the paths above" in line and "s3://" not in line  # no bucket: the paths on the instance
