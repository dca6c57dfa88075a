"""The one clock: UTC-aware wall time for deadlines and reports, monotonic time for durations,
and the boot's own clock (CLOCK_BOOTTIME and the kernel's boot id) for what must survive a
daemon restart but not a reboot: the cost ledger and the idle timer."""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path

# Where the kernel keeps this boot's id. AMAPIANO_BOOT_ID_FILE points elsewhere, so a test can play
# "a replacement instance" (a new boot) with the real daemon.
BOOT_ID = Path(os.environ.get("AMAPIANO_BOOT_ID_FILE", "/proc/sys/kernel/random/boot_id"))


class Clock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()

    def boottime(self) -> float:
        """Seconds since this boot, counting suspend: how long the instance has been billed."""
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def boot_id(self) -> str:
        """Changes at every boot (including an EC2 stop/start), never within one."""
        return BOOT_ID.read_text().strip()


def iso(dt: datetime | None) -> str | None:
    """UTC ISO 8601 with a Z, seconds precision."""
    if dt is None:
        return None
    return dt.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def is_utc_time(value: object) -> bool:
    """A timestamp as this project writes them (aware, in a sane range), from a file someone may have edited."""
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        t = parse_iso(value)
    except ValueError:
        return False
    return t.tzinfo is not None and 2000 <= t.year <= 2200
