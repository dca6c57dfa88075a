"""GPU metrics through NVML (the nvidia-ml-py package, imported as pynvml).

NVML lives here alone. Each field that a device does not support, that fails, or that reads
as nonsense (over 100 %, 2**32 - 1 mW, more memory used than there is) is None: unknown, never
0 %, and never a lost GPU. No driver or no GPU is one warning at start-up and `available: false`;
an error at run time (a GPU that fell off the bus) is logged, reported for an alert, and
sampling goes on. Rolling averages over the last minute and hour ignore unknowns.

A wedged driver can hang a call: nvmlInit waits at most INIT_TIMEOUT_S (it is on the way to
READY), and sampling runs on an outside thread (daemon/outside_jobs.py), never the scheduler's,
which reads the results under a lock. A sample in flight for STUCK_AFTER_S is one alert, and
its readings age out of the averages (unknown, not idle).
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from ..common.clock import iso

INIT_TIMEOUT_S = 10.0
STUCK_AFTER_S = 60.0
MAX_GPUS = 64  # more than any machine NVML has run on; a larger count is nonsense
LIMITS = {"util_pct": (0.0, 100.0), "mem_mb": (0.0, 2.0**30), "power_w": (0.0, 5000.0), "temp_c": (-50.0, 200.0)}


@dataclass
class Reading:
    index: int
    name: str | None = None
    util_pct: float | None = None
    mem_used_mb: float | None = None
    mem_total_mb: float | None = None
    power_w: float | None = None
    temp_c: float | None = None
    lost: bool = False


def _within(value: Any, what: str, scale: float = 1.0) -> float | None:
    """value / scale as a float inside what the hardware can report, else None."""
    low, high = LIMITS[what]
    try:
        x = float(value) / scale
    except (TypeError, ValueError, OverflowError):
        return None
    return x if math.isfinite(x) and low <= x <= high else None


def _name(raw: Any) -> str | None:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    return raw[:100] if isinstance(raw, str) else None


class GpuMonitor:
    def __init__(self, log: Any, nvml: Any = None, clock: Any = None):
        self.log = log
        self._nvml = nvml
        self.clock = clock
        self.available = False
        self.error: str | None = None
        self.count = 0
        self.readings: list[Reading] = []
        self._history: deque[tuple[float, float | None]] = deque()  # (monotonic, mean util or None)
        self._reported: set[str] = set()
        self.alerted: set[str] = set()   # problems already mailed (once each)
        self.sampled_at: str | None = None
        self._lock = threading.Lock()  # the sampling thread writes, the scheduler's reads
        self._pending: list[str] = []  # problems sampled, not yet turned into alerts
        self._in_flight_since: float | None = None
        self.stuck_after_s = STUCK_AFTER_S

    def start(self, timeout: float = INIT_TIMEOUT_S) -> bool:
        found: list = []
        t = threading.Thread(target=self._init, args=(found,), name="nvml-init", daemon=True)
        t.start()
        t.join(timeout)
        if not found:
            found = [f"NVML did not answer within {timeout:g} s (a wedged driver?)"]
        if isinstance(found[0], str):
            self.available, self.error = False, found[0]
            self.log.warning("gpu.unavailable", error=self.error,
                             note="GPU metrics off; idle detection uses training progress alone")
            return False
        self.available, self.count = True, found[0]
        self.log.info("gpu.found", count=self.count)
        return True

    def _init(self, found: list) -> None:
        """found gets the device count, or the reason there are no metrics."""
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
            count = self._nvml.nvmlDeviceGetCount()
            if not isinstance(count, int) or not 0 < count <= MAX_GPUS:
                raise RuntimeError(f"NVML sees no GPU (device count {count!r})")
            found.append(count)
        except Exception as e:  # no driver (NVMLError_LibraryNotFound), no GPU, ...
            found.append(f"{type(e).__name__}: {e}")

    def _once(self, key: str, level: str, event: str, **fields: Any) -> None:
        if key not in self._reported:
            self._reported.add(key)
            getattr(self.log, level)(event, **fields)

    def _field(self, index: int, what: str, fn, *args) -> Any:
        try:
            return fn(*args)
        except Exception as e:
            lost = getattr(e, "value", None) == getattr(self._nvml, "NVML_ERROR_GPU_IS_LOST", object())
            self._once(f"{index}:{what}:{type(e).__name__}", "error" if lost else "warning", "gpu.read_failed",
                       gpu=index, field=what, error=f"{type(e).__name__}: {e}")
            if lost:
                raise
            return None

    def _checked(self, index: int, what: str, raw: Any, limit: str, scale: float = 1.0) -> float | None:
        value = _within(raw, limit, scale)
        if value is None and raw is not None:
            self._once(f"{index}:{what}:invalid", "warning", "gpu.reading_invalid", gpu=index, field=what,
                       value=repr(raw)[:80], note="read as unknown")
        return value

    def _read(self, i: int) -> Reading:
        """One GPU; raises only for a lost GPU."""
        nv, r = self._nvml, Reading(index=i)
        h = self._field(i, "handle", nv.nvmlDeviceGetHandleByIndex, i)
        if h is None:
            return r
        r.name = _name(self._field(i, "name", nv.nvmlDeviceGetName, h))
        util = self._field(i, "utilization", nv.nvmlDeviceGetUtilizationRates, h)
        r.util_pct = self._checked(i, "utilization", getattr(util, "gpu", util), "util_pct")
        mem = self._field(i, "memory", nv.nvmlDeviceGetMemoryInfo, h)
        used, total = (self._checked(i, "memory", getattr(mem, k, mem), "mem_mb", 2**20) for k in ("used", "total"))
        if used is not None and total is not None and used <= total:
            r.mem_used_mb, r.mem_total_mb = used, total
        elif used is not None and total is not None:
            self._once(f"{i}:memory:invalid", "warning", "gpu.reading_invalid", gpu=i, field="memory",
                       value=f"{used:.0f} of {total:.0f} MiB used", note="read as unknown")
        power = self._field(i, "power", nv.nvmlDeviceGetPowerUsage, h)
        r.power_w = self._checked(i, "power", power, "power_w", 1000.0)  # mW -> W
        temp = self._field(i, "temperature", nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
        r.temp_c = self._checked(i, "temperature", temp, "temp_c")
        return r

    def sample(self, now_mono: float | None = None, now_iso: str | None = None) -> list[str]:
        """Read every GPU (on the sampling thread); returns problems worth an alert (a lost GPU),
        which `alerts` also hands to the scheduler's thread."""
        if not self.available:
            return []
        if now_mono is None:
            now_mono, now_iso = self.clock.monotonic(), iso(self.clock.now())
        self._in_flight_since = now_mono
        problems, readings = [], []
        for i in range(self.count):
            try:
                readings.append(self._read(i))
            except Exception as e:
                readings.append(Reading(index=i, lost=True))
                problems.append(f"GPU {i} is lost ({type(e).__name__}: {e})")
        known = [r.util_pct for r in readings if r.util_pct is not None]
        with self._lock:
            self.readings = readings
            self._history.append((now_mono, sum(known) / len(known) if known else None))
            while self._history and now_mono - self._history[0][0] > 3600:
                self._history.popleft()
            self.sampled_at = now_iso
            self._pending += problems
            self._in_flight_since = None
        return problems

    def _known(self, since_mono: float) -> list[float]:
        with self._lock:
            return [u for t, u in self._history if t >= since_mono and u is not None]

    def average(self, window_s: float, now_mono: float) -> float | None:
        known = self._known(now_mono - window_s)
        return sum(known) / len(known) if known else None

    def busy_since(self, since_mono: float, threshold_pct: float) -> bool | None:
        """True if any known reading since then is at or over the threshold, False if all known
        readings are under it, None if there is no known reading (unknown is not idle)."""
        known = self._known(since_mono)
        if not known:
            return None
        return any(u >= threshold_pct for u in known)

    def stuck(self, now_mono: float) -> str | None:
        """Why there are no fresh readings, when a sample has hung in NVML."""
        since = self._in_flight_since
        if since is None or now_mono - since < self.stuck_after_s:
            return None
        return f"NVML has not answered for {now_mono - since:.0f} s (a call is stuck; readings are unknown)"

    def to_json(self, now_mono: float) -> dict:
        with self._lock:
            devices, sampled_at = [asdict(r) for r in self.readings], self.sampled_at
        return {"available": self.available, "error": self.stuck(now_mono) or self.error, "sampled_at": sampled_at,
                "util_avg_1m_pct": self.average(60, now_mono), "util_avg_1h_pct": self.average(3600, now_mono),
                "devices": devices}

    def alerts(self, now_mono: float) -> list:
        """On the scheduler's thread: an alert for each new kind of problem the sampling found (a
        lost GPU, an NVML error) or a stuck sample, once each."""
        from ..actions import SendAlert

        with self._lock:
            problems, self._pending = self._pending, []
        if (stuck := self.stuck(now_mono)) is not None:
            problems.append(f"NVML is stuck ({stuck})")
        out = []
        for problem in problems:
            key = problem.split(" (")[0]
            if key not in self.alerted:
                self.alerted.add(key)
                out.append(SendAlert("gpu", key, problem))
        return out

    def scalars(self, now_mono: float) -> dict[str, float | None]:
        out: dict[str, float | None] = {"gpu/util_pct": self.average(60, now_mono)}
        with self._lock:
            readings = list(self.readings)
        for r in readings:
            out.update({f"gpu{r.index}/util_pct": r.util_pct, f"gpu{r.index}/power_w": r.power_w,
                        f"gpu{r.index}/mem_used_mb": r.mem_used_mb})
        return out
