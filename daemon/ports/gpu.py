"""GPU metrics through NVML (the nvidia-ml-py package, imported as pynvml).

NVML lives here alone. Each field that a device does not support, or that fails, is None:
unknown, never 0 %. No driver or no GPU is one warning at start-up and `available: false`; an
error at run time (a GPU that fell off the bus) is logged, reported to the caller for an
alert, and sampling goes on. Rolling averages over the last minute and hour ignore unknowns.
"""
from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any


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


class GpuMonitor:
    def __init__(self, log: Any, nvml: Any = None):
        self.log = log
        self._nvml = nvml
        self.available = False
        self.error: str | None = None
        self.count = 0
        self.readings: list[Reading] = []
        self._history: deque[tuple[float, float | None]] = deque()  # (monotonic, mean util or None)
        self._reported: set[str] = set()
        self.alerted: set[str] = set()   # problems already mailed (once each)
        self.sampled_at: str | None = None

    def start(self) -> bool:
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
            self.count = self._nvml.nvmlDeviceGetCount()
            if self.count == 0:
                raise RuntimeError("NVML sees no GPU")
        except Exception as e:  # no driver (NVMLError_LibraryNotFound), no GPU, ...
            self.available, self.error = False, f"{type(e).__name__}: {e}"
            self.log.warning("gpu.unavailable", error=self.error,
                             note="GPU metrics off; idle detection uses training progress alone")
            return False
        self.available = True
        self.log.info("gpu.found", count=self.count)
        return True

    def _field(self, index: int, what: str, fn, *args) -> Any:
        try:
            return fn(*args)
        except Exception as e:
            lost = getattr(e, "value", None) == getattr(self._nvml, "NVML_ERROR_GPU_IS_LOST", object())
            key = f"{index}:{what}:{type(e).__name__}"
            if key not in self._reported:
                self._reported.add(key)
                (self.log.error if lost else self.log.warning)("gpu.read_failed", gpu=index, field=what,
                                                               error=f"{type(e).__name__}: {e}")
            if lost:
                raise
            return None

    def sample(self, now_mono: float, now_iso: str | None = None) -> list[str]:
        """Read every GPU; returns problems worth an alert (a lost GPU), else []."""
        if not self.available:
            return []
        nv, problems, readings = self._nvml, [], []
        for i in range(self.count):
            r = Reading(index=i)
            try:
                h = self._field(i, "handle", nv.nvmlDeviceGetHandleByIndex, i)
                if h is None:
                    readings.append(r)
                    continue
                name = self._field(i, "name", nv.nvmlDeviceGetName, h)
                r.name = name.decode() if isinstance(name, bytes) else name
                util = self._field(i, "utilization", nv.nvmlDeviceGetUtilizationRates, h)
                r.util_pct = float(util.gpu) if util is not None else None
                mem = self._field(i, "memory", nv.nvmlDeviceGetMemoryInfo, h)
                if mem is not None:
                    r.mem_used_mb, r.mem_total_mb = mem.used / 2**20, mem.total / 2**20
                power = self._field(i, "power", nv.nvmlDeviceGetPowerUsage, h)
                r.power_w = power / 1000.0 if power is not None else None  # mW -> W
                temp = self._field(i, "temperature", nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
                r.temp_c = float(temp) if temp is not None else None
            except Exception as e:
                r.lost = True
                problems.append(f"GPU {i} is lost ({type(e).__name__}: {e})")
            readings.append(r)
        self.readings = readings
        known = [r.util_pct for r in readings if r.util_pct is not None]
        self._history.append((now_mono, sum(known) / len(known) if known else None))
        while self._history and now_mono - self._history[0][0] > 3600:
            self._history.popleft()
        self.sampled_at = now_iso
        return problems

    def average(self, window_s: float, now_mono: float) -> float | None:
        known = [u for t, u in self._history if now_mono - t <= window_s and u is not None]
        return sum(known) / len(known) if known else None

    def busy_since(self, since_mono: float, threshold_pct: float) -> bool | None:
        """True if any known reading since then is at or over the threshold, False if all known
        readings are under it, None if there is no known reading (unknown is not idle)."""
        known = [u for t, u in self._history if t >= since_mono and u is not None]
        if not known:
            return None
        return any(u >= threshold_pct for u in known)

    def to_json(self, now_mono: float) -> dict:
        return {"available": self.available, "error": self.error, "sampled_at": self.sampled_at,
                "util_avg_1m_pct": self.average(60, now_mono), "util_avg_1h_pct": self.average(3600, now_mono),
                "devices": [asdict(r) for r in self.readings]}

    def sample_alerts(self, now_mono: float, now_iso: str | None = None) -> list:
        """Sample, and an alert for each new kind of problem (a lost GPU, an NVML error), once."""
        from ..actions import SendAlert

        out = []
        for problem in self.sample(now_mono, now_iso):
            key = problem.split(" (")[0]
            if key not in self.alerted:
                self.alerted.add(key)
                out.append(SendAlert("gpu", key, problem))
        return out

    def scalars(self, now_mono: float) -> dict[str, float | None]:
        out: dict[str, float | None] = {"gpu/util_pct": self.average(60, now_mono)}
        for r in self.readings:
            out.update({f"gpu{r.index}/util_pct": r.util_pct, f"gpu{r.index}/power_w": r.power_w,
                        f"gpu{r.index}/mem_used_mb": r.mem_used_mb})
        return out
