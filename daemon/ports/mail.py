"""Alerts by email or apprise: queued, retried, listed in state.json, never able to hold a shutdown.

Every alert is logged at warning level the moment it is raised, whatever happens to the mail.
A background thread delivers the queue through one transport (SMTP with STARTTLS, SES via
boto3, or apprise: Slack, Discord, Telegram, SNS, webhooks... one URL each), retrying every
`[email] retry_every` until `give_up_after`. A shutdown waits for its warning at most
`[email] shutdown_wait`; an undelivered warning is then logged at error level and recorded in
the alert itself. Secrets never come from config.toml: the SMTP password and the apprise URLs
(they carry tokens) come from a systemd credential ($CREDENTIALS_DIRECTORY/<password_credential>,
<apprise_credential>) or the environment (AMAPIANO_SMTP_PASSWORD, AMAPIANO_APPRISE_URLS, e.g.
from the unit's EnvironmentFile), and no child process inherits them (common/launch.py).
"""
from __future__ import annotations

import dataclasses
import os
import smtplib
import ssl
import threading
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Callable

from ..common.clock import Clock, iso
from ..common.config import EmailConfig

SUBJECT_PREFIX = "[amapiano-train] "
PASSWORD_ENV = "AMAPIANO_SMTP_PASSWORD"
APPRISE_ENV = "AMAPIANO_APPRISE_URLS"
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

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("next_try_mono")
        data.pop("body")
        return data


def smtp_password(cfg: EmailConfig, environ: dict | None = None) -> str | None:
    env = os.environ if environ is None else environ
    creds = env.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / cfg.password_credential).is_file():
        return (Path(creds) / cfg.password_credential).read_text().strip()
    return env.get(PASSWORD_ENV) or None


def apprise_urls(cfg: EmailConfig, environ: dict | None = None) -> list[str]:
    """The apprise URLs: the credential file (one a line, # comments) or $AMAPIANO_APPRISE_URLS
    (separated by spaces or newlines; a comma belongs to the URL, e.g. mailto://...?to=a,b)."""
    env = os.environ if environ is None else environ
    creds = env.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / cfg.apprise_credential).is_file():
        text = (Path(creds) / cfg.apprise_credential).read_text()
    else:
        text = env.get(APPRISE_ENV) or ""
    return [word for line in text.splitlines() if not line.strip().startswith("#") for word in line.split()]


def _scheme(url: str) -> str:
    """What a log may say about an apprise URL: its scheme, never its tokens."""
    return url.split("://", 1)[0][:20] + "://..." if "://" in url else "(no scheme)"


class SmtpTransport:
    def __init__(self, cfg: EmailConfig, password: str | None):
        self.cfg, self._password = cfg, password
        self.destination = ", ".join(cfg.to)

    def send(self, message: EmailMessage) -> None:
        cfg = self.cfg
        with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout) as smtp:
            smtp.ehlo()
            if cfg.smtp_starttls:  # verified against the system's CAs (or smtp_ca_file)
                smtp.starttls(context=ssl.create_default_context(cafile=cfg.smtp_ca_file or None))
                smtp.ehlo()
            if cfg.smtp_user:
                smtp.login(cfg.smtp_user, self._password or "")
            smtp.send_message(message)


class SesTransport:
    def __init__(self, cfg: EmailConfig, client: Any):
        self.cfg, self._client = cfg, client
        self.destination = ", ".join(cfg.to)

    def send(self, message: EmailMessage) -> None:
        self._client.send_email(
            Source=message["From"], Destination={"ToAddresses": list(self.cfg.to)},
            Message={"Subject": {"Data": message["Subject"]},
                     "Body": {"Text": {"Data": message.get_content()}}})


class AppriseTransport:
    """Every alert to every apprise URL; a failure anywhere is an error, and the outbox retries.
    A URL apprise cannot parse is left out and named (by position and scheme) in `unusable`."""

    def __init__(self, cfg: EmailConfig, urls: list[str]):
        self.cfg = cfg
        self.unusable: list[str] = []
        try:
            import apprise
        except ImportError:  # a dependency in pyproject; an old venv may lack it
            self._apprise, self.unusable = None, ["apprise is not installed (pip install apprise)"]
            self.destination = ""
            return
        self._apprise = apprise.Apprise()
        for n, url in enumerate(urls, 1):
            if not self._apprise.add(url):
                self.unusable.append(f"URL {n} ({_scheme(url)}) is not one apprise knows")
        usable = len(self._apprise)
        self.destination = f"{usable} apprise URL{'s' if usable != 1 else ''}" if usable else ""

    def send(self, message: EmailMessage) -> None:
        if not self.destination:
            raise ValueError("no usable apprise URL: " + ("; ".join(self.unusable) or f"set {APPRISE_ENV}"))
        import logging

        import apprise

        with apprise.LogCapture(level=logging.WARNING) as captured:
            delivered = self._apprise.notify(title=message["Subject"], body=message.get_content())
        if not delivered:
            lines = [line.split(" - ", 2)[-1] for line in captured.getvalue().splitlines() if line.strip()]
            raise ConnectionError("apprise: " + (" / ".join(lines[-3:]) or "a service refused the message"))


def make_transport(cfg: EmailConfig, ses_client_factory: Callable[[], Any] | None = None,
                   environ: dict | None = None):
    if cfg.transport == "smtp":
        return SmtpTransport(cfg, smtp_password(cfg, environ))
    if cfg.transport == "ses":
        assert ses_client_factory is not None
        return SesTransport(cfg, ses_client_factory())
    if cfg.transport == "apprise":
        return AppriseTransport(cfg, apprise_urls(cfg, environ))
    return None


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
            fields = {k: v for k, v in old.items() if k in Alert.__dataclass_fields__ and k != "next_try_mono"}
            fields.setdefault("body", fields.get("subject", ""))
            try:
                self._alerts.append(Alert(**fields))
            except TypeError:
                continue
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    # -- raising -----------------------------------------------------------------------
    def send(self, kind: str, subject: str, body: str) -> Alert:
        # apprise URLs name their own destinations; email needs [email] to
        deliverable = self.transport is not None and bool(getattr(self.transport, "destination", self.cfg.to))
        alert = Alert(id=uuid.uuid4().hex[:8], kind=kind, subject=SUBJECT_PREFIX + subject, body=body,
                      created_at=iso(self.clock.now()), status="pending" if deliverable else "logged")
        self.log.warning("alert", kind=kind, subject=alert.subject, alert_id=alert.id,
                         delivery=alert.status if alert.status == "logged" else self.cfg.transport)
        unusable = getattr(self.transport, "unusable", None)
        if unusable and not self._said_unusable:  # a typo in one URL: said once, loudly
            self._said_unusable = True
            self.log.error("alert.transport_unusable", transport=self.cfg.transport, problems=unusable)
        with self._cond:
            self._alerts.append(alert)
            del self._alerts[:-KEEP_ALERTS]
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
    def _message(self, alert: Alert) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.cfg.sender
        msg["To"] = ", ".join(self.cfg.to)
        msg["Subject"] = alert.subject
        msg["X-Amapiano-Alert"] = f"{alert.kind} {alert.id}"
        footer = f"\n\n-- \namapiano-train{' run ' + self.run_name if self.run_name else ''}, {alert.created_at}\n"
        msg.set_content(alert.body + footer)
        return msg

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
                message = self._message(alert)
            error = None
            try:
                self.transport.send(message)
            except Exception as e:  # any failure of the mail path is retried, never raised
                error = f"{type(e).__name__}: {e}"
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
