"""Alerts by email or apprise: queued, retried, listed in state.json, never able to hold a shutdown.

Every alert is logged at warning level the moment it is raised, whatever happens to the mail.
A background thread delivers the queue through one transport (SMTP with STARTTLS, SES via
boto3, or apprise: Slack, Discord, Telegram, SNS, webhooks... one URL each), retrying every
`[email] retry_every` until `give_up_after`. A shutdown waits for its warning at most
`[email] shutdown_wait`; an undelivered warning is then logged at error level and recorded in
the alert itself. A decision's mail carries its report (mail_attach.py; SES in mail_ses.py,
apprise in mail_apprise.py). Secrets never come from config.toml: the SMTP password and the
apprise URLs (they carry tokens) come from a systemd credential ($CREDENTIALS_DIRECTORY/<password_credential>,
<apprise_credential>) or the environment (AMAPIANO_SMTP_PASSWORD, AMAPIANO_APPRISE_URLS, e.g.
from the unit's EnvironmentFile), and no child process inherits them (common/launch.py). Each is
told to the log's redactor as it is read (common/log.py), and what a transport answers (apprise
quotes its own log) is redacted before it is logged or kept in state.json.
"""
from __future__ import annotations

import dataclasses
import os
import smtplib
import ssl
import threading
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Callable

from ..common.atomic import read_bytes
from ..common.clock import Clock, iso
from ..common.config import EmailConfig
from ..common.log import add_secret, add_secret_url, redact
from .mail_apprise import APPRISE_ENV, AppriseTransport
from .mail_attach import fill
from .mail_ses import OneDestination, SesTransport

SUBJECT_PREFIX = "[amapiano-train] "
PASSWORD_ENV = "AMAPIANO_SMTP_PASSWORD"
KEEP_ALERTS = 50


@dataclass
class Alert:
    id: str
    kind: str            # "test", "budget", "idle", "spot", "gpu", "shutdown", ...
    subject: str
    body: str
    created_at: str
    status: str = "pending"   # pending -> sent | failed | logged (no transport)
    attempts: int = 0
    sent_at: str | None = None
    error: str | None = None
    next_try_mono: float = 0.0
    once: str = ""       # sent once per run, restarts included (state.json keeps it): a FAILED run's alert
    attachments: list[str] = field(default_factory=list)  # the decision's report, mailed while it fits
    attachments_at: str = ""  # the bucket folder that holds them too, named for what does not fit

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        for key in ("next_try_mono", "body", "attachments", "attachments_at"):  # never from state.json (or a bucket)
            data.pop(key)
        return data


CREDENTIAL_LIMIT = 65536  # a password or a few apprise URLs


class CredentialError(ValueError):
    """A systemd credential that is there but cannot be read as text."""


def _credential(env: dict, name: str) -> str | None:
    """The credential's text; None when there is none. The error names the file, never its bytes."""
    creds = env.get("CREDENTIALS_DIRECTORY")
    path = Path(creds) / name if creds else None
    if path is None or not path.is_file():
        return None
    try:
        return read_bytes(path, CREDENTIAL_LIMIT).decode()  # bounded: a huge file is refused, never read whole
    except OSError as e:
        raise CredentialError(f"credential {path} cannot be read ({e.strerror or str(e).removeprefix(f'{path}: ')})") from None
    except UnicodeDecodeError as e:
        raise CredentialError(f"credential {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def smtp_password(cfg: EmailConfig, environ: dict | None = None) -> str | None:
    env = os.environ if environ is None else environ
    text = _credential(env, cfg.password_credential)
    return add_secret((text.strip() if text is not None else env.get(PASSWORD_ENV)) or None)


def apprise_urls(cfg: EmailConfig, environ: dict | None = None) -> list[str]:
    """The apprise URLs: the credential file (one a line, # comments) or $AMAPIANO_APPRISE_URLS
    (separated by spaces or newlines; a comma belongs to the URL, e.g. mailto://...?to=a,b)."""
    env = os.environ if environ is None else environ
    text = _credential(env, cfg.apprise_credential)
    text = env.get(APPRISE_ENV) or "" if text is None else text
    return [add_secret_url(word) for line in text.splitlines() if not line.strip().startswith("#")
            for word in line.split()]


class SmtpTransport(OneDestination):
    def __init__(self, cfg: EmailConfig, password: str | None):
        super().__init__(cfg)
        self._password = password

    def send(self, message: EmailMessage) -> None:
        cfg = self.cfg
        # (its debug output stays off: smtplib prints the session, AUTH included, to stderr itself)
        with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout) as smtp:
            smtp.ehlo()
            if cfg.smtp_starttls:  # verified against the system's CAs (or smtp_ca_file)
                smtp.starttls(context=ssl.create_default_context(cafile=cfg.smtp_ca_file or None))
                smtp.ehlo()
            if cfg.smtp_user:
                smtp.login(cfg.smtp_user, self._password or "")
            smtp.send_message(message)


def make_transport(cfg: EmailConfig, ses_client_factory: Callable[[], Any] | None = None,
                   environ: dict | None = None):
    """The configured transport; a credential that cannot be read leaves it without the secret and
    says so in `unusable` (alerts then fail and are retried, and the error level says why)."""
    problem = None
    if cfg.transport == "smtp":
        try:
            password = smtp_password(cfg, environ)
        except CredentialError as e:
            password, problem = None, str(e)
        transport: Any = SmtpTransport(cfg, password)
    elif cfg.transport == "ses":
        assert ses_client_factory is not None
        transport = SesTransport(cfg, ses_client_factory)
    elif cfg.transport == "apprise":
        try:
            urls = apprise_urls(cfg, environ)
        except CredentialError as e:
            urls, problem = [], str(e)
        transport = AppriseTransport(cfg, urls)
    else:
        return None
    transport.unusable[:0] = [problem] if problem else []
    return transport


def compose(cfg: EmailConfig, alert: "Alert", run_name: str = "") -> EmailMessage:
    """The message every transport sends: subject, body and a footer naming the run."""
    msg = EmailMessage()
    msg["From"] = cfg.sender
    msg["To"] = ", ".join(cfg.to)
    msg["Subject"] = alert.subject
    msg["X-Amapiano-Alert"] = f"{alert.kind} {alert.id}"
    footer = f"\n\n-- \namapiano-train{' run ' + run_name if run_name else ''}, {alert.created_at}\n"
    return fill(msg, alert.body, footer, alert.attachments, alert.attachments_at)


def try_test_alert(cfg: EmailConfig, transport: Any, clock: Clock | None = None) -> list[tuple[str, str | None]]:
    """`alert test`: one attempt at each destination, (where, None or why not) for each."""
    alert = Alert(id=uuid.uuid4().hex[:8], kind="test", subject=SUBJECT_PREFIX + "test message: mail works",
                  body="This is amapiano-train's test message. Budget, idle, Spot, milestone and failure "
                       "alerts will come here.", created_at=iso((clock or Clock()).now()))
    return transport.try_each(compose(cfg, alert))


class Outbox:
    """The alert queue and its delivery thread."""

    def __init__(self, cfg: EmailConfig, transport: Any, log: Any, clock: Clock | None = None,
                 previous: list[dict] | None = None, run_name: str = ""):
        self.cfg, self.transport, self.log = cfg, transport, log
        self.clock = clock or Clock()
        self.run_name = run_name
        self._alerts: list[Alert] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._said_unusable = False
        for old in previous or []:  # alerts as state.json kept them; pending ones go out again
            fields = {k: v for k, v in old.items()
                      if k in Alert.__dataclass_fields__ and k not in ("next_try_mono", "attachments", "attachments_at")}
            fields.setdefault("body", fields.get("subject", ""))
            try:
                self._alerts.append(Alert(**fields))
            except TypeError:
                continue
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    # -- raising -----------------------------------------------------------------------
    def send(self, kind: str, subject: str, body: str, once: str = "", attachments: tuple[str, ...] = (),
             attachments_at: str = "") -> Alert:
        """Queue an alert; with `once`, not if an alert with that key was raised before (this run)."""
        with self._cond:
            told = next((a for a in self._alerts if once and a.once == once), None)
        if told is not None:
            self.log.info("alert.already_sent", kind=kind, subject=told.subject, alert_id=told.id, status=told.status)
            return told
        # apprise URLs name their own destinations; email needs [email] to
        deliverable = self.transport is not None and bool(getattr(self.transport, "destination", self.cfg.to))
        alert = Alert(id=uuid.uuid4().hex[:8], kind=kind, subject=redact(SUBJECT_PREFIX + subject), body=redact(body),
                      created_at=iso(self.clock.now()), status="pending" if deliverable else "logged", once=once,
                      attachments=list(attachments), attachments_at=attachments_at)
        self.log.warning("alert", kind=kind, subject=alert.subject, alert_id=alert.id,
                         delivery=alert.status if alert.status == "logged" else self.cfg.transport)
        unusable = getattr(self.transport, "unusable", None)
        if unusable and not self._said_unusable:  # a typo in one URL: said once, loudly
            self._said_unusable = True
            self.log.error("alert.transport_unusable", transport=self.cfg.transport, problems=unusable)
        with self._cond:
            self._alerts.append(alert)
            while len(self._alerts) > KEEP_ALERTS:  # the oldest goes; a `once` key is kept while others can go
                self._alerts.remove(next((a for a in self._alerts if not a.once), self._alerts[0]))
            self._cond.notify_all()
        return alert

    def wait(self, alert: Alert, timeout: float) -> bool:
        """True once the alert is delivered; False when it failed or timeout passed."""
        with self._cond:
            self._cond.wait_for(lambda: alert.status != "pending", timeout=timeout)
            return alert.status == "sent"

    def to_json(self) -> list[dict]:
        with self._cond:
            return [a.to_json() | ({"body": a.body} if a.status == "pending" else {}) for a in self._alerts]

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- delivery ------------------------------------------------------------------------
    def _due(self) -> Alert | None:
        now = self.clock.monotonic()
        for alert in self._alerts:
            if alert.status == "pending" and alert.next_try_mono <= now:
                return alert
        return None

    def _next_wait(self) -> float:
        pending = [a.next_try_mono for a in self._alerts if a.status == "pending"]
        return max(0.05, min(pending) - self.clock.monotonic()) if pending else 3600.0

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._due() is not None, timeout=self._next_wait())
                if self._stopping:
                    return
                alert = self._due()
                if alert is None:
                    continue
                message = compose(self.cfg, alert, self.run_name)
            error = None
            try:
                self.transport.send(message)
            except Exception as e:  # any failure of the mail path is retried, never raised
                error = redact(f"{type(e).__name__}: {e}")
            with self._cond:
                alert.attempts += 1
                if error is None:
                    alert.status, alert.sent_at, alert.error = "sent", iso(self.clock.now()), None
                    self.log.info("alert.sent", alert_id=alert.id, subject=alert.subject, attempts=alert.attempts)
                else:
                    alert.error = error
                    alert.next_try_mono = self.clock.monotonic() + self.cfg.retry_every
                    if alert.attempts * self.cfg.retry_every >= self.cfg.give_up_after:
                        alert.status = "failed"
                        self.log.error("alert.undelivered", alert_id=alert.id, subject=alert.subject,
                                       attempts=alert.attempts, error=error)
                    elif alert.attempts == 1:
                        self.log.warning("alert.retrying", alert_id=alert.id, error=error,
                                         retry_in_s=self.cfg.retry_every)
                self._cond.notify_all()
