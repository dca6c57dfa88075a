"""Logs as events: one line per event on stdout, for journald.

In JSON mode (the default when stdout is not a terminal, i.e. under systemd) each line is
`<N>{"event": ..., ...}` where N is the syslog priority; journald strips the prefix into
PRIORITY=, so `journalctl -u amapiano-train -p warning` filters by level and
`journalctl -u amapiano-train -o cat | jq` reads the JSON.
In console mode (a terminal, the demo) lines are human-readable key=value.
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Any

import structlog

PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


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
    """Libraries that log through `logging` (APScheduler, botocore) come out as our events.

    APScheduler's notes that a job run was skipped or late (the one scheduler thread was busy)
    are routine here and go to debug; anything else keeps its level.
    """

    ROUTINE = ("maximum number of running instances reached", "was missed by")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            level = record.levelname.lower()
            if any(r in message for r in self.ROUTINE):
                level = "debug"
            getattr(structlog.get_logger(record.name), level if level in PRIORITY else "info")(
                "library.log", logger=record.name, message=message)
        except Exception:  # a log line must never take the daemon down
            pass


def configure(fmt: str = "auto", level: str = "info", stream: Any = None) -> str:
    """Set up structlog; returns the format chosen, so a child process can be told the same."""
    stream = stream or sys.stdout
    fmt = resolve(fmt, stream)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]
    if fmt == "json":
        processors = shared + [structlog.processors.format_exc_info, _journald_json]
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
