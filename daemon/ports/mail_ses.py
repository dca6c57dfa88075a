"""Alerts through Amazon SES: plain text by SendEmail, a mail with the decision's report by
SendRawEmail (the whole MIME message, the zip in it).

SendEmail carries no attachment, so the report rides on SendRawEmail, which the instance role
grants beside SendEmail (etc/amapiano-train/iam-policy.json, both from the sender only). A role
from before it refuses the raw call: the decision then goes out as text, with one line saying
what the role lacks, rather than not at all.
"""
from __future__ import annotations

from email.message import EmailMessage
from typing import Any, Callable

from ..common.config import EmailConfig
from ..common.log import redact
from .mail_attach import text_of, with_line

RAW_ACTION = "ses:SendRawEmail"
POLICY = "etc/amapiano-train/iam-policy.json"


def _refused(error: Exception) -> bool:
    """IAM said no (the role lacks the action), as botocore reports it."""
    response = getattr(error, "response", None) or {}
    code = str((response.get("Error") or {}).get("Code") or "")
    return "AccessDenied" in code or "NotAuthorized" in code or code == "UnauthorizedOperation"


class OneDestination:
    """SMTP (daemon/ports/mail.py) and SES: one destination, one result."""

    def __init__(self, cfg: EmailConfig):
        self.cfg, self.destination, self.unusable = cfg, ", ".join(cfg.to), []

    def send(self, message: EmailMessage) -> None:
        raise NotImplementedError

    def try_each(self, message: EmailMessage) -> list[tuple[str, str | None]]:
        try:
            self.send(message)
            return [(self.destination, None)]
        except Exception as e:  # any failure of the mail path is a result, never raised
            return [(self.destination, redact(f"{type(e).__name__}: {e}"))]


class SesTransport(OneDestination):
    """The client is made at the first send, so a client that cannot be made is a failed send
    (retried, said in one line), not an exception where the transport is built."""

    def __init__(self, cfg: EmailConfig, client_factory: Callable[[], Any]):
        super().__init__(cfg)
        self._factory, self._client = client_factory, None

    def send(self, message: EmailMessage) -> None:
        if self._client is None:
            self._client = self._factory()
        if not any(part.get_filename() for part in message.iter_attachments()):
            return self._send_text(message, text_of(message))
        try:
            self._client.send_raw_email(Source=self.cfg.sender, Destinations=list(self.cfg.to),
                                        RawMessage={"Data": message.as_bytes()})
        except Exception as e:
            if not _refused(e):
                raise  # a failed send: retried by the outbox
            names = ", ".join(p.get_filename() for p in message.iter_attachments())
            self._send_text(message, with_line(text_of(message), f"Not attached: {names}: SES refused {RAW_ACTION} "
                                               f"(the instance role lacks it; add it as in {POLICY}); see the "
                                               "paths above"))

    def _send_text(self, message: EmailMessage, text: str) -> None:
        self._client.send_email(
            Source=message["From"], Destination={"ToAddresses": list(self.cfg.to)},
            Message={"Subject": {"Data": message["Subject"]}, "Body": {"Text": {"Data": text}}})
