"""The systemd notify protocol (sd_notify) through sdnotify, made honest.

sdnotify swallows every error unless debug=True; we ask for the errors and log the first
failure once, so a broken socket is visible without flooding the journal. With NOTIFY_SOCKET
unset (a terminal, a test) every call is a no-op. The watchdog interval is half of
WATCHDOG_USEC, which sdnotify does not read.
"""
from __future__ import annotations

import os
from typing import Any

import sdnotify



class Notifier:
    def __init__(self, log: Any):
        env = os.environ  # sdnotify reads NOTIFY_SOCKET from os.environ itself
        self._log = log
        self._failed = False
        self._last_status: str | None = None
        self.socket_path = env.get("NOTIFY_SOCKET")
        self.watchdog_interval = self._watchdog_interval(env)
        self._notifier = None
        if self.socket_path:
            try:
                self._notifier = sdnotify.SystemdNotifier(debug=True)
                # Never block the scheduler thread on a notify socket nobody reads (a full queue):
                # a message that cannot go now is dropped and logged once, the next one tries again.
                self._notifier.socket.setblocking(False)
            except (OSError, TypeError, AttributeError) as e:
                self._fail(e)

    @staticmethod
    def _watchdog_interval(env: Any) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the timeout), or None when systemd wants none."""
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 1e6 / 2
        except ValueError:
            return None

    def _fail(self, error: Exception) -> None:
        if not self._failed:
            self._failed = True
            self._log.warning("notify.failed", socket=self.socket_path, error=str(error),
                              note="systemd will not see READY/STATUS/WATCHDOG; logged once")

    def send(self, message: str) -> None:
        if self._notifier is None:
            return
        try:
            self._notifier.notify(message)
        except OSError as e:
            self._fail(e)

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        """Send STATUS= only when the line changed."""
        if status != self._last_status:
            self._last_status = status
            self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> None:
        self._last_status = status
        self.send(f"STOPPING=1\nSTATUS={status}")
