"""The jobs that wait on the outside (IMDS, the Spot price), each on a daemon thread of its own.

The scheduler's one thread runs the tick and the watchdog ping. A metadata service that drips a
byte every half second, or a pricing call in its third retry, must hold neither, nor READY nor
SIGTERM. So these jobs run here and leave plain values behind (the identity, the Spot notices,
the price) for the scheduler's jobs to read. One thread per job, so a hung price call cannot
delay the Spot notices; no thread is ever joined, so a stop never waits on one: a call still in
flight is abandoned with the process.
"""
from __future__ import annotations

import threading
from typing import Callable


class OutsideJobs:
    def __init__(self, guard: Callable[[str, Callable[[], None]], Callable[[], None]]):
        self._guard = guard  # the scheduler's: an exception is logged and counted, never fatal
        self._stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, fn: Callable[[], bool | None], every: float, name: str, retry: float | None = None) -> None:
        """Run fn now and then every `every` seconds; after fn returns False (not known yet), after
        `retry` seconds instead."""
        t = threading.Thread(target=self._loop, args=(fn, every, name, retry), name=f"outside-{name}", daemon=True)
        self.threads.append(t)
        t.start()

    def _loop(self, fn: Callable[[], bool | None], every: float, name: str, retry: float | None) -> None:
        result: list[bool | None] = []
        job = self._guard(name, lambda: result.append(fn()))
        while not self._stop.is_set():
            result.clear()
            job()
            not_yet = retry is not None and result == [False]
            if self._stop.wait(min(every, retry) if not_yet else every):
                return

    def stop(self) -> None:
        """No new call starts; one in flight is not waited for."""
        self._stop.set()
