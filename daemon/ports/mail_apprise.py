"""Alerts through apprise (Slack, Discord, Telegram, SNS, webhooks...: one URL each), the decision's
report handed as a file to each service that takes files.

Every alert goes to every URL, one by one, so each has its own result. The report is the one the
mail would carry (daemon/ports/mail_attach.py: the zip under the cap, else the page, else none),
given from memory: apprise reads no path we did not choose. A service that takes no files gets the
text with a line saying so.
"""
from __future__ import annotations

import logging
from email.message import EmailMessage
from typing import Any

from ..common.config import EmailConfig
from ..common.log import redact
from .mail_attach import files_of, text_of, with_line

APPRISE_ENV = "AMAPIANO_APPRISE_URLS"


def _scheme(url: str) -> str:
    """What a log may say about an apprise URL: its scheme, never its tokens."""
    return url.split("://", 1)[0][:20] + "://..." if "://" in url else "(no scheme)"


def _attachments(files: list[tuple[str, str, bytes]]) -> Any:
    from apprise import AppriseAttachment
    from apprise.attachment.memory import AttachMemory

    return AppriseAttachment([AttachMemory(content=data, name=name, mimetype=kind) for name, kind, data in files])


class AppriseTransport:
    """A failure anywhere is an error, and the outbox retries. A URL apprise cannot parse is left
    out and named (by position and scheme) in `unusable`; a usable one is shown as apprise's
    privacy mode shows it."""

    def __init__(self, cfg: EmailConfig, urls: list[str]):
        self.cfg = cfg
        self.unusable: list[str] = []
        self._each: list[tuple[str, Any]] = []
        try:
            import apprise
        except ImportError:  # a dependency in pyproject; an old venv may lack it
            self.unusable, self.destination = ["apprise is not installed (pip install apprise)"], ""
            return
        for n, url in enumerate(urls, 1):
            one = apprise.Apprise()
            if one.add(url):
                self._each.append((redact(one[0].url(privacy=True).split("?", 1)[0]), one))
            else:
                self.unusable.append(f"URL {n} ({_scheme(url)}) is not one apprise knows")
        usable = len(self._each)
        self.destination = f"{usable} apprise URL{'s' if usable != 1 else ''}" if usable else ""

    def try_each(self, message: EmailMessage) -> list[tuple[str, str | None]]:
        import apprise

        results: list[tuple[str, str | None]] = []
        text, files = text_of(message), files_of(message)
        for shown, one in self._each:
            body, attach = text, None
            if files and getattr(one[0], "attachment_support", False):
                attach = _attachments(files)
            elif files:
                body = with_line(text, f"Not attached: {', '.join(f[0] for f in files)}: {shown.split('://')[0]}:// "
                                       "takes no files; see the paths above")
            with apprise.LogCapture(level=logging.WARNING) as captured:
                delivered = one.notify(title=message["Subject"], body=body, attach=attach)
            lines = [line.split(" - ", 2)[-1] for line in captured.getvalue().splitlines() if line.strip()]
            error = None if delivered else redact(" / ".join(lines[-3:]) or "the service refused the message")
            results.append((shown, error))
        return results

    def send(self, message: EmailMessage) -> None:
        if not self.destination:
            raise ValueError("no usable apprise URL: " + ("; ".join(self.unusable) or f"set {APPRISE_ENV}"))
        failed = [f"{shown}: {error}" for shown, error in self.try_each(message) if error]
        if failed:
            raise ConnectionError("apprise: " + " / ".join(failed))
