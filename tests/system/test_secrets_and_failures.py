"""No secret leaves the process, and a run that FAILED is told: real `amapiano-train` processes,
an SMTP server with AUTH (aiosmtpd) and a webhook on 127.0.0.1, one secret per channel, read back
from everything a person or another process can see: the journal (stdout), state.json, `status
--json`, the alerts as they arrived, and the children's environments."""
from __future__ import annotations

import json
import os
import time

import pytest

from conftest import SmtpSink, _free_port, cli, write_config

APPRISE_TOKEN = "hunter2"  # one apprise prints whole in its own "Unparseable URL" line
WEBHOOK_PASSWORD = "pw9Hook42"
SMTP_PASSWORD = "smtp-Pass-4711"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SECRETS = (APPRISE_TOKEN, WEBHOOK_PASSWORD, SMTP_PASSWORD, AWS_SECRET)
NO_TOKEN_CACHE = {"data": {"source": "cache"}}  # the worker exits 78 at once: the run goes FAILED

# Each child writes its environment, as it got it, to a file (PYTHON* and AMAPIANO_* reach children).
SITECUSTOMIZE = """import json, os
_d = os.environ.get("AMAPIANO_TEST_ENV_DUMP")
if _d:
    with open(os.path.join(_d, f"{os.getpid()}.json"), "w") as f:
        json.dump(dict(os.environ), f)
"""


def leaked(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


class AuthSmtp(SmtpSink):
    """The conftest's aiosmtpd sink, wanting a login (plain text on loopback: the password crosses it)."""

    def __init__(self, password: str):
        super().__init__()
        self.password = password.encode()

    def up(self) -> None:
        from aiosmtpd.smtp import AuthResult

        def authenticator(server, session, envelope, mechanism, auth_data):
            # handled=False: a refusal is answered 535, as a real server does
            return AuthResult(success=auth_data.password == self.password, handled=False)

        self.controller = self._controller_cls(self._handler, hostname="127.0.0.1", port=self.port,
                                               authenticator=authenticator, auth_require_tls=False)
        self.controller.start()


@pytest.fixture
def auth_smtp():
    server = AuthSmtp(SMTP_PASSWORD)
    server.up()
    yield server
    server.down()


def smtp_email(port: int) -> dict:
    return {"transport": "smtp", "to": ["me@example.com"], "smtp_host": "127.0.0.1", "smtp_port": port,
            "smtp_starttls": False, "smtp_user": "bot", "timeout": "2s", "retry_every": "200ms"}


# ---------------------------------------------------------------- alert test: one line per transport

def test_alert_test_says_one_line_per_apprise_url_without_its_secrets(tmp_path):
    from webhook_sink import WebhookSink

    sink = WebhookSink()
    sink.up()
    dead = _free_port()
    urls = (f"foo://{APPRISE_TOKEN}@host/ json://hook-user:{WEBHOOK_PASSWORD}@127.0.0.1:{sink.port}/hook "
            f"json://127.0.0.1:{dead}/down")
    config = write_config(tmp_path, {"email": {"transport": "apprise", "timeout": "2s", "retry_every": "200ms"}})
    try:
        out = cli("alert", "test", "--config", str(config), env={"AMAPIANO_APPRISE_URLS": urls}, timeout=60)
    finally:
        sink.down()
    text = out.stdout + out.stderr
    assert out.returncode == 1 and leaked(text) == [] and "Traceback" not in text, text
    assert out.stderr.splitlines()[:1] == ["amapiano-train alert test: URL 1 (foo://...) is not one apprise knows"]
    assert out.stdout.splitlines() == [f"sent to json://hook-user:****@127.0.0.1:{sink.port}/hook via apprise"]
    [down, total] = out.stderr.splitlines()[1:]
    assert down.startswith(f"amapiano-train alert test: not delivered via apprise to json://127.0.0.1:{dead}/down: ")
    assert total == "amapiano-train alert test: not delivered via apprise to every URL (1 of 2 sent)"
    assert [r["body"]["title"] for r in sink.received] == ["[amapiano-train] test message: mail works"]


def test_alert_test_over_smtp_never_prints_the_password(tmp_path, auth_smtp):
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "smtp-password").write_text(SMTP_PASSWORD + "\n")
    config = write_config(tmp_path, {"email": smtp_email(auth_smtp.port)})
    ok = cli("alert", "test", "--config", str(config), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert ok.returncode == 0 and ok.stdout.splitlines() == ["sent to me@example.com via smtp"], ok.stdout + ok.stderr
    (creds / "smtp-password").write_text("wrong-" + SMTP_PASSWORD)
    refused = cli("alert", "test", "--config", str(config), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert refused.returncode == 1 and refused.stdout == "" and len(refused.stderr.splitlines()) == 1
    assert "not delivered via smtp to me@example.com: SMTPAuthenticationError" in refused.stderr
    assert leaked(refused.stderr) == [] and "wrong-" not in refused.stderr
    assert len(auth_smtp.messages) == 1


def test_alert_test_with_a_credential_that_is_not_text_is_a_line_not_a_traceback(tmp_path, auth_smtp):
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "smtp-password").write_bytes(b"\xff\xfe" + SMTP_PASSWORD.encode())
    config = write_config(tmp_path, {"email": smtp_email(auth_smtp.port)})
    out = cli("alert", "test", "--config", str(config), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert out.returncode == 1 and "Traceback" not in out.stderr and out.stdout == "", out.stderr
    [problem, refused] = out.stderr.splitlines()
    assert problem == f"amapiano-train alert test: credential {creds / 'smtp-password'} is not UTF-8 text " \
                      "(invalid start byte at byte 0)"
    assert refused.startswith("amapiano-train alert test: not delivered via smtp to me@example.com: ")
    assert leaked(out.stderr) == []


# ---------------------------------------------------------------- the supervisor

@pytest.mark.slow
def test_no_secret_leaves_the_supervisor(tmp_path, daemons):
    """Apprise URLs (one apprise cannot parse, which it logs whole), the SMTP password and an AWS key in
    the environment, as the unit's EnvironmentFile gives them; the worker fails, so an alert goes out."""
    from webhook_sink import WebhookSink

    sink = WebhookSink()
    sink.up()
    dumps, site = tmp_path / "env", tmp_path / "site"
    dumps.mkdir()
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    email = {"transport": "apprise", "timeout": "2s", "retry_every": "200ms"}
    config = write_config(tmp_path, NO_TOKEN_CACHE, {"email": email})
    env = {"AMAPIANO_APPRISE_URLS": f"foo://{APPRISE_TOKEN}@host/ "
                                    f"json://hook-user:{WEBHOOK_PASSWORD}@127.0.0.1:{sink.port}/hook",
           "AMAPIANO_SMTP_PASSWORD": SMTP_PASSWORD, "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
           "AMAPIANO_APPRISE_URL": f"json://u:{WEBHOOK_PASSWORD}@127.0.0.1:1/typo",  # a name the daemon never reads
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "AMAPIANO_TEST_ENV_DUMP": str(dumps)}
    try:
        d = daemons(config, env)
        d.wait_state(lambda s: s["phase"] == "FAILED", timeout=90)
        deadline = time.monotonic() + 20
        while not sink.received and time.monotonic() < deadline:  # the failure's alert
            time.sleep(0.05)
        status = cli("status", "--json", "--config", str(config))
        assert d.stop() == 0
    finally:
        sink.down()
    state, journal = d.state(), d.log_text()
    channels = {"journal": journal, "state.json": json.dumps(state), "status --json": status.stdout,
                "alerts": json.dumps(sink.received)}
    children = {p.name: p.read_text() for p in dumps.glob("*.json") if p.stem != str(d.proc.pid)}
    assert children, "no child wrote its environment"
    assert {name: leaked(text) for name, text in {**channels, **children}.items() if leaked(text)} == {}
    assert "Unparseable URL foo://****" in journal  # apprise's own record, as it reached the journal
    assert all(json.loads(text).get("AMAPIANO_TEST_ENV_DUMP") for text in children.values())  # it did pass
    assert [r["body"]["title"][:31] for r in sink.received] == ["[amapiano-train] run FAILED: wo"]


@pytest.mark.slow
def test_a_failed_run_is_told_once_with_the_way_on_across_restarts(tmp_path, daemons, auth_smtp):
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "smtp-password").write_text(SMTP_PASSWORD)
    config = write_config(tmp_path, NO_TOKEN_CACHE, {"email": smtp_email(auth_smtp.port)})
    env = {"CREDENTIALS_DIRECTORY": str(creds)}

    d = daemons(config, env)
    state = d.wait_state(lambda s: s["phase"] == "FAILED" and any(a["status"] == "sent" for a in s["alerts"]))
    [mail] = auth_smtp.messages
    body = mail.get_payload(decode=True).decode()
    assert mail["Subject"].startswith("[amapiano-train] run FAILED: worker rejected its config or data")
    assert state["failure"]["reason"] in body and "systemctl restart amapiano-train" in body
    assert "amapiano-train config check" in body
    assert d.stop() == 0

    again = daemons(config, env)  # nothing fixed: the same failure
    again.wait_state(lambda s: s["phase"] == "FAILED" and s["phase_since"] != state["phase_since"])
    time.sleep(1.0)  # time for a second mail to go out, if one were sent
    assert again.stop() == 0
    assert len(auth_smtp.messages) == 1
    assert [a["kind"] for a in again.state()["alerts"]] == ["failed"]
    assert "alert.already_sent" in [e["event"] for _, e in again.events()]
    assert leaked(d.log_text() + again.log_text()) == []
