"""Writing state.json and telling systemd: the content is assembled by the supervisor alone
(`Supervisor._collect`, its one owner); this writes it when it changed (or every
STATE_REFRESH_S, so updated_at shows we are alive), atomically, and sends READY once, then STATUS.

A write that fails (disk full, a read-only or vanished state directory) is an error line and one
alert, and is tried again at the next tick; READY is still sent once the daemon is up, and the
watchdog keeps reflecting the scheduler, not the disk: systemd must not restart a daemon that is
watching fine into a start-limit with no daemon at all.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .ports.mail import Outbox
from .ports.notify import Notifier
from .state import State, save_state
from .status import status_line

STATE_REFRESH_S = 30.0


class StateWriter:
    def __init__(self, path: Path, log: Any, clock: Any, notifier: Notifier, outbox: Outbox):
        self.path, self.log, self.clock, self.notifier, self.outbox = path, log, clock, notifier, outbox
        self.ready_sent = False
        self.failed: str | None = None
        self._last: tuple[str, float] | None = None

    def publish(self, state: State, force: bool = False) -> None:
        body = json.dumps({k: v for k, v in state.to_json().items() if k != "updated_at"}, sort_keys=True,
                          default=str)
        now = self.clock.monotonic()
        if force or self._last is None or self._last[0] != body or now - self._last[1] >= STATE_REFRESH_S:
            self._write(state, body, now)
        if not self.ready_sent:  # the first tick has run: we are up, even if the disk is not
            self.ready_sent = True
            self.notifier.ready(status_line(state))
            self.log.info("supervisor.ready", watchdog_interval_s=self.notifier.watchdog_interval)
        else:
            self.notifier.status(status_line(state))

    def _write(self, state: State, body: str, now: float) -> None:
        try:
            save_state(self.path, state, self.clock.now())
        except (OSError, ValueError) as e:
            if self.failed is None:
                self.outbox.send("storage", "cannot write state.json",
                                 f"{self.path}: {e}. The daemon keeps watching and retries at every tick.")
            self.failed = str(e)
            self.log.error("state.write_failed", state_file=str(self.path), error=str(e))
            return
        self._last = (body, now)
        if self.failed:
            self.log.info("state.write_recovered", state_file=str(self.path))
        self.failed = None
