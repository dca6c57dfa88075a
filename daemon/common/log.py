"""Logs as events: one line per event on stdout, for journald, with no secret in it.

In JSON mode (the default when stdout is not a terminal, i.e. under systemd) each line is
`<N>{"event": ..., ...}` where N is the syslog priority; journald strips the prefix into
PRIORITY=, so `journalctl -u amapiano-train -p warning` filters by level and
`journalctl -u amapiano-train -o cat | jq` reads the JSON.
In console mode (a terminal, the demo) lines are human-readable key=value.

Every event, ours and every library's (bridged from `logging`: apprise, boto3, urllib3, smtplib,
APScheduler), tracebacks included, passes one redactor before it is rendered: it masks each
secret the process was given (secret-named environment variables such as the unit's
EnvironmentFile holds, and what daemon/ports/mail.py reads from systemd credentials) and the
credentials of any URL (user:password@, secret-named query values, and an apprise URL's tokens
as apprise's own privacy mode hides them). Libraries log whatever we handed them, so a line is
never trusted to be free of secrets.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import threading
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import structlog

PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
MASK = "****"
MIN_SECRET = 4  # a shorter value would mask every "ab" in the journal; a real secret is longer
# Environment variables whose values are secrets (the unit's EnvironmentFile: secrets.env).
SECRET_NAMES = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|API_?KEY|ACCESS_KEY|PRIVATE_KEY|APPRISE|WEBHOOK",
                          re.IGNORECASE)
NOT_SECRETS = frozenset({"CREDENTIALS_DIRECTORY"})  # systemd's path to the credentials, not one of them
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,30}://[^\s\"'<>`]+")
_SECRET_QUERY = re.compile(r"([?&;][^=&#\s]*(?:token|secret|pass|pwd|key|sig|auth|cred)[^=&#\s]*=)[^&#\s]+",
                           re.IGNORECASE)
_TOKEN_LIKE = re.compile(r"(?=.*[0-9])(?=.*[A-Za-z])")  # letters and digits: a credential, not a word


class Redactor:
    """The one redactor: known secret values, then the credentials of every URL in the text."""

    def __init__(self) -> None:
        self._known: tuple[re.Pattern | None, dict[str, str]] = (None, {})
        self._lock = threading.Lock()
        self.local = threading.local()  # .probing: apprise's own complaints about our probes are dropped

    def forget(self) -> None:
        with self._lock:
            self._known = (None, {})

    def add(self, value: Any, shown: str = MASK) -> None:
        """Mask `value` wherever it appears (and its URL-quoted forms), showing `shown` instead."""
        if not isinstance(value, str) or len(value.strip()) < MIN_SECRET:
            return
        value = value.strip()
        with self._lock:
            known = dict(self._known[1])
            for form in (value, quote(value, safe=""), quote(value)):
                known.setdefault(form, shown)
            pattern = re.compile("|".join(re.escape(s) for s in sorted(known, key=len, reverse=True)))
            self._known = (pattern, known)

    def add_url(self, url: str) -> None:
        """A configured URL (apprise): the whole of it, and each part of it that is a credential. One
        that apprise cannot parse is shown as its scheme alone: which of its parts is a token is unknown."""
        try:
            import apprise  # noqa: F401 - here, not in a log call: its privacy mode shows the URL
        except ImportError:
            pass
        scheme = url.split("://", 1)[0][:20] + "://" if "://" in url else ""
        self.add(url, self._url(url) if self._apprise_form(url) else scheme + MASK)
        for part in url_secrets(url):
            self.add(part)

    def holds_secret(self, text: str) -> bool:
        pattern = self._known[0]
        return bool(pattern and pattern.search(text))

    def __call__(self, text: str) -> str:
        pattern, known = self._known
        if pattern is not None:
            text = pattern.sub(lambda m: known[m.group(0)], text)
        return _URL.sub(lambda m: self._url(m.group(0)), text) if "://" in text else text

    def _url(self, url: str) -> str:
        trail = len(url) - len(url.rstrip(".,;:)]}"))
        url, tail = (url[:-trail], url[-trail:]) if trail else (url, "")
        shown = self._apprise_form(url)
        if shown is None:
            scheme, rest = url.split("://", 1)
            end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
            at = rest.rfind("@", 0, end)
            shown = f"{scheme}://{MASK + rest[at:] if at >= 0 else rest}"
            shown = _SECRET_QUERY.sub(lambda m: m.group(1) + MASK, shown)
        return shown + tail

    def _apprise_form(self, url: str) -> str | None:
        """The URL as apprise's privacy mode shows it (tokens hidden), when apprise knows its scheme.
        Only where apprise is loaded already: importing it inside a log call could deadlock an import."""
        return self._apprise_privacy(url) if "apprise" in sys.modules else None

    @functools.lru_cache(maxsize=512)
    def _apprise_privacy(self, url: str) -> str | None:
        apprise = sys.modules["apprise"]
        self.local.probing = True
        try:
            plugin = apprise.Apprise.instantiate(url)
            # its default arguments make a long tail; the address is what a person needs
            return plugin.url(privacy=True).split("?", 1)[0] if plugin else None
        except Exception:
            return None
        finally:
            self.local.probing = False


def url_secrets(url: str) -> set[str]:
    """The credential parts of a URL: its userinfo (all of it without a password: `foo://TOKEN@host`),
    every value apprise marks private for its scheme, and the token-like parts its privacy form hides."""
    secrets: set[str] = set()
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        netloc = ""
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        secrets.add(unquote(userinfo.split(":", 1)[1] if ":" in userinfo else userinfo))
    REDACTOR.local.probing = True  # apprise names an unparseable URL in full
    try:
        import apprise

        plugin = apprise.Apprise.instantiate(url)
    except Exception:
        plugin = None
    finally:
        REDACTOR.local.probing = False
    if plugin:
        for name, meta in {**plugin.template_tokens, **plugin.template_args}.items():
            value = getattr(plugin, meta.get("map_to", name), None) if meta.get("private") else None
            secrets.update(v for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, str))
        shown = set(re.split(r"[/:@?&=#]+", plugin.url(privacy=True)))
        secrets.update(p for p in re.split(r"[/:@?&=#]+", url) if p not in shown and _TOKEN_LIKE.match(p))
    return {s for s in secrets if len(s) >= MIN_SECRET}


REDACTOR = Redactor()


def add_secret(value: Any) -> Any:
    """Tell the redactor a secret the process holds (returns it, for `return add_secret(read())`)."""
    REDACTOR.add(value)
    return value


def add_secret_url(url: str) -> str:
    REDACTOR.add_url(url)
    return url


def redact(text: str) -> str:
    """The journal's masking, for text that goes elsewhere (state.json, an alert's error)."""
    return REDACTOR(text)


def holds_secret(text: str) -> bool:
    return REDACTOR.holds_secret(text)


def forget_secrets() -> None:
    REDACTOR.forget()
    REDACTOR._apprise_privacy.cache_clear()


def secrets_from_environment(environ: Any = None) -> None:
    """Every secret-named variable's value (an apprise URL list word by word, as URLs)."""
    for name, value in (os.environ if environ is None else environ).items():
        if name in NOT_SECRETS or not SECRET_NAMES.search(name):
            continue
        REDACTOR.add(value)
        for word in value.split():
            if "://" in word:
                REDACTOR.add_url(word)


def _scrub(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return REDACTOR(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth < 16 and isinstance(value, dict):
        return {k: _scrub(v, depth + 1) for k, v in value.items()}
    if depth < 16 and isinstance(value, (list, tuple, set, frozenset)):
        return [_scrub(v, depth + 1) for v in value]
    return REDACTOR(str(value))  # an exception, a path: as the renderer would print it


def redact_event(_logger: Any, _method: str, event_dict: dict) -> dict:
    """The structlog processor: every value of every event, after the traceback is rendered."""
    return {k: _scrub(v) for k, v in event_dict.items()}


def _journald_json(_logger: Any, method: str, event_dict: dict) -> str:
    level = event_dict.get("level", method)
    prio = PRIORITY.get(level, 6)
    return f"<{prio}>" + json.dumps(event_dict, default=str, separators=(",", ":"))


def resolve(fmt: str, stream: Any = None) -> str:
    """"auto" -> "console" on a terminal, else "json" (journald)."""
    if fmt == "auto":
        return "console" if (stream or sys.stdout).isatty() else "json"
    return fmt


class _StdlibBridge(logging.Handler):
    """Libraries that log through `logging` (APScheduler, botocore, apprise) come out as our events,
    through the same redactor, their tracebacks too.

    APScheduler's notes that a job run was skipped or late (the one scheduler thread was busy)
    are routine here and go to debug; anything else keeps its level.
    """

    ROUTINE = ("maximum number of running instances reached", "was missed by")

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(REDACTOR.local, "probing", False):
            return  # apprise saying it cannot parse a URL the redactor asked it about
        try:
            message = record.getMessage()
            level = record.levelname.lower()
            if any(r in message for r in self.ROUTINE):
                level = "debug"
            extra = {"exc_info": record.exc_info} if record.exc_info else {}
            getattr(structlog.get_logger(record.name), level if level in PRIORITY else "info")(
                "library.log", logger=record.name, message=message, **extra)
        except Exception:  # a log line must never take the daemon down
            pass


def configure(fmt: str = "auto", level: str = "info", stream: Any = None) -> str:
    """Set up structlog; returns the format chosen, so a child process can be told the same."""
    stream = stream or sys.stdout
    fmt = resolve(fmt, stream)
    secrets_from_environment()
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.processors.format_exc_info,  # the traceback as text, so the redactor sees it
        redact_event,
    ]
    if fmt == "json":
        processors = shared + [_journald_json]
    else:
        processors = shared + [structlog.dev.ConsoleRenderer(colors=stream.isatty(), sort_keys=False)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # One write() per line (PrintLogger writes the newline apart): the ranks of a process group
        # share the journal's stream, and two half-lines from two ranks make one unreadable line.
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _StdlibBridge)] + [_StdlibBridge()]
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)  # Python warnings (librosa, torch) become events too
    return fmt


def get(name: str = "amapiano-train") -> Any:
    return structlog.get_logger(name)
