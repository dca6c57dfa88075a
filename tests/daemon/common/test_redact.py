"""No secret leaves through a log line: every event, ours or a library's (bridged from `logging`),
passes one redactor that knows each configured secret and masks the credentials of any URL.
One secret per channel, read back from the journal-format output the daemon writes."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import structlog

from daemon.common import log as logs
from daemon.common.config import EmailConfig
from daemon.ports.mail import make_transport, smtp_password

REPO = Path(__file__).resolve().parents[3]
APPRISE_TOKEN = "hunter2"  # one apprise prints whole in its own "Unparseable URL" line
WEBHOOK_PASSWORD = "pw9Hook42"
SMTP_PASSWORD = "smtp-Pass-4711"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ALL = (APPRISE_TOKEN, WEBHOOK_PASSWORD, SMTP_PASSWORD, AWS_SECRET)


@pytest.fixture
def journal(monkeypatch):
    """JSON lines as journald gets them, with no secret known from an earlier test."""
    for key in ("AMAPIANO_SMTP_PASSWORD", "AMAPIANO_APPRISE_URLS", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    logs.forget_secrets()
    out = io.StringIO()
    yield out
    logs.forget_secrets()
    logs.configure("json", "info", stream=io.StringIO())


def lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line[3:]) for line in out.getvalue().splitlines()]


def leaked(text: str) -> list[str]:
    return [s for s in ALL if s in text]


def test_apprise_own_record_of_a_configured_url_is_masked(journal):
    """apprise logs the whole URL it could not parse, token included: at every start and in `alert test`."""
    logs.configure("json", "info", stream=journal)
    make_transport(EmailConfig(transport="apprise"), environ={"AMAPIANO_APPRISE_URLS": (
        f"foo://TOKEN@host/ foo://{APPRISE_TOKEN}@host2/ json://user:{WEBHOOK_PASSWORD}@127.0.0.1:1/hook")})
    text = journal.getvalue()
    assert "Unparseable URL" in text, text  # apprise's line still comes through, without the token
    assert leaked(text) == [] and "TOKEN@" not in text, text
    assert text.count("Unparseable URL foo://****") == 2


def test_any_library_record_with_a_url_loses_its_credentials(journal):
    import apprise  # noqa: F401 - loaded, as in a daemon that alerts through it: its privacy mode applies

    logs.configure("json", "info", stream=journal)
    logging.getLogger("urllib3.connectionpool").warning(
        "Retrying %s", f"https://bob:{WEBHOOK_PASSWORD}@proxy.example:8080/x?X-Amz-Signature=ab12cd34&part=1")
    logging.getLogger("apprise").error("bad %s", f"slack://T1JJ3T3L2/A1BRTD4JD/{APPRISE_TOKEN}bcdef0123")
    [retry, slack] = [e["message"] for e in lines(journal)]
    assert retry == "Retrying https://****@proxy.example:8080/x?X-Amz-Signature=****&part=1"
    assert APPRISE_TOKEN not in slack and "T1JJ3T3L2" not in slack and slack.startswith("bad slack://")


def test_secrets_from_the_environment_and_the_credential_are_masked_everywhere(journal, monkeypatch, tmp_path):
    """The unit's EnvironmentFile (AWS keys) and a systemd credential (the SMTP password): masked in
    our events, nested values, objects, a library's record and a traceback."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    logs.configure("json", "info", stream=journal)
    (tmp_path / "smtp-password").write_text(SMTP_PASSWORD + "\n")
    assert smtp_password(EmailConfig(), {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == SMTP_PASSWORD
    log = structlog.get_logger("t")
    log.error("ours", detail={"nested": [f"key={AWS_SECRET}", (SMTP_PASSWORD,)]}, error=ValueError(SMTP_PASSWORD))
    logging.getLogger("botocore.credentials").warning("found %s", AWS_SECRET)
    try:
        raise RuntimeError(f"login failed for {SMTP_PASSWORD}")
    except RuntimeError:
        log.exception("job.failed")
    try:
        raise ConnectionError(f"https://u:{SMTP_PASSWORD}@relay/")
    except ConnectionError:
        logging.getLogger("smtplib").exception("send failed")  # a library's traceback is rendered too
    text = journal.getvalue()
    assert leaked(text) == [], text
    events = lines(journal)
    assert events[0]["detail"] == {"nested": ["key=****", ["****"]]} and events[0]["error"] == "****"
    assert "Traceback" in events[2]["exception"] and "login failed for ****" in events[2]["exception"]
    assert "ConnectionError: https://****@relay/" in events[3]["exception"]


def test_console_lines_are_masked_too(journal, monkeypatch):
    monkeypatch.setenv("AMAPIANO_SMTP_PASSWORD", SMTP_PASSWORD)
    logs.configure("console", "info", stream=journal)
    try:
        raise RuntimeError(SMTP_PASSWORD)
    except RuntimeError:
        structlog.get_logger("t").exception("x", url=f"mailto://me:{SMTP_PASSWORD}@example.com")
    text = journal.getvalue()
    assert leaked(text) == [] and "RuntimeError: ****" in text, text


def test_short_and_common_values_are_not_secrets_everywhere(journal, monkeypatch):
    """A two-letter value in a token-named variable would mask every 'ab' in the journal."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", "ab")
    logs.configure("json", "info", stream=journal)
    structlog.get_logger("t").info("about", s3="s3://bucket/abc")
    assert lines(journal)[0]["s3"] == "s3://bucket/abc"


def test_nothing_turns_on_a_library_debug_printer():
    """smtplib and http.client print debug output to stderr (credentials and headers included) by
    their own print, past every logger: nothing here may switch it on."""
    for path in [*(REPO / "daemon").rglob("*.py"), *(REPO / "trainer").rglob("*.py")]:
        assert "debuglevel" not in path.read_text(), path


def test_a_child_inherits_no_secret_by_name_or_by_value(journal, monkeypatch):
    """A real child prints the environment it got. Secret-named variables under a passed prefix (a
    typo of the apprise variable's name, which the daemon never reads) and a passed variable that
    holds a known secret stay behind; the worker's own Hugging Face token passes."""
    import subprocess
    import sys

    from daemon.common.launch import spawn

    monkeypatch.setenv("AMAPIANO_SMTP_PASSWORD", SMTP_PASSWORD)
    monkeypatch.setenv("AMAPIANO_APPRISE_URL", f"json://u:{WEBHOOK_PASSWORD}@127.0.0.1/hook")  # singular: a typo
    monkeypatch.setenv("AMAPIANO_NOTE", f"password is {SMTP_PASSWORD}")
    monkeypatch.setenv("NCCL_IB_TOKEN", AWS_SECRET)
    monkeypatch.setenv("HF_TOKEN", "hf_worker_own_token")
    monkeypatch.setenv("AMAPIANO_CONFIG", "/etc/amapiano-train/config.toml")
    logs.configure("json", "info", stream=journal)
    child = spawn([sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
                  stdout=subprocess.PIPE)
    env = json.loads(child.communicate(timeout=30)[0])
    assert leaked(json.dumps(env)) == [], sorted(k for k in env if leaked(env[k]))
    assert env["HF_TOKEN"] == "hf_worker_own_token" and env["AMAPIANO_CONFIG"] == "/etc/amapiano-train/config.toml"
