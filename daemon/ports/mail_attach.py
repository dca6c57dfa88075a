"""What a decision's mail carries besides its text: the HTML report, attached while it fits.

SES refuses a message over 10 MB and base64 grows an attachment by a third, and many mail
servers take less: past ATTACH_LIMIT_BYTES the mail attaches the next, smaller choice (the
report's page without its clips) or nothing, and says where the report is instead. The text
summary is always there. SMTP sends the message as it is, SES as a raw message
(daemon/ports/mail_ses.py), apprise hands the file to each service that takes files
(daemon/ports/mail_apprise.py). Standard library only (daemon/ports/mail.py calls it).
"""
from __future__ import annotations

import os
import stat
from email.message import EmailMessage
from pathlib import Path
from typing import Sequence

from ..common.atomic import read_bytes

ATTACH_LIMIT_BYTES = 7 * 1024 * 1024
TYPES = {".zip": ("application", "zip"), ".html": ("text", "html")}


def fill(msg: EmailMessage, body: str, footer: str, paths: Sequence[str], at: str = "") -> EmailMessage:
    """The text, and the first of `paths` that fits as an attachment (a line says when none does,
    or only the page does, and where each file left out is in the bucket folder `at`)."""
    path, line = choose(paths, at=at)
    msg.set_content(body + (f"\n\n{line}" if line else "") + footer)
    if path is not None:
        attach(msg, path)
    return msg


def text_of(message: EmailMessage) -> str:
    """What a transport that takes text sends (SES's SendEmail, apprise): the message's text part."""
    return message.get_body(("plain",)).get_content()


def with_line(text: str, line: str) -> str:
    """The text with one more line above its signature ("-- "), where a reader still sees it."""
    body, sep, footer = text.rpartition("\n-- \n")
    return f"{body}\n{line}{sep}{footer}" if sep else f"{text}\n{line}\n"


def files_of(message: EmailMessage) -> list[tuple[str, str, bytes]]:
    """(file name, MIME type, bytes) of each file the message carries, for transports that take files."""
    return [(part.get_filename(), part.get_content_type(), part.get_payload(decode=True))
            for part in message.iter_attachments() if part.get_filename()]


def choose(paths: Sequence[str], limit: int | None = None, at: str = "") -> tuple[Path | None, str]:
    """The first of `paths` (best first: the report's zip with its clips, then its page) that is
    a regular file of a known kind within `limit`, and a line for the mail when it is not the first:
    it names each file left out, with its key in the bucket folder `at` (s3://.../reports/) if any."""
    limit = ATTACH_LIMIT_BYTES if limit is None else limit
    where = (lambda name: f", {at}{name}") if at else (lambda name: "")  # noqa: E731
    skipped = []
    for name in paths:
        path = Path(name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or path.suffix not in TYPES:
            continue  # no report the supervisor wrote (a FIFO, a link): never called "too large"
        if st.st_size <= limit:
            return path, (f"Attached: {path.name}, the page only: its clips are too large to mail "
                          f"({', '.join(skipped)})" if skipped else "")
        skipped.append(f"{path.name} ({st.st_size / 1e6:.1f} MB{where(path.name)})")
    if not skipped:
        return None, ""
    return None, (f"Not attached: {', '.join(skipped)}: over the {limit / 1e6:.0f} MB a mail can carry; "
                  + ("each is in the bucket as named" if at else "see the paths above"))


def attach(msg: EmailMessage, path: Path) -> bool:
    """Add `path` to the message; False (the message as it was) when it cannot be read now."""
    try:
        data = read_bytes(path, ATTACH_LIMIT_BYTES)
    except OSError:
        return False
    maintype, subtype = TYPES[path.suffix]
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=path.name)
    return True
