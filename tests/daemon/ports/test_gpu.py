"""NVML behind a small port: a fake NVML (no GPU here), with the failure modes of the real one."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import RecordingLog
from daemon.ports.gpu import GpuMonitor


class NVMLError(Exception):
    def __init__(self, value):
        super().__init__(f"NVML error {value}")
        self.value = value


class FakeNvml:
    """pynvml's surface as the monitor uses it. util: per-GPU % (None: field unsupported)."""

    NVML_TEMPERATURE_GPU = 0
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_ERROR_NOT_SUPPORTED = 3
    NVMLError = NVMLError

    def __init__(self, util=(50.0,), init_error=None):
        self.util = list(util)
        self.init_error = init_error
        self.lost: set[int] = set()

    def nvmlInit(self):
        if self.init_error:
            raise self.init_error

    def nvmlDeviceGetCount(self):
        return len(self.util)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def _check(self, h):
        if h in self.lost:
            raise NVMLError(self.NVML_ERROR_GPU_IS_LOST)

    def nvmlDeviceGetName(self, h):
        self._check(h)
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUtilizationRates(self, h):
        self._check(h)
        if self.util[h] is None:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=self.util[h], memory=10)

    def nvmlDeviceGetMemoryInfo(self, h):
        self._check(h)
        return SimpleNamespace(used=40 * 2**30, total=80 * 2**30, free=40 * 2**30)

    def nvmlDeviceGetPowerUsage(self, h):
        self._check(h)
        return 350_000  # mW

    def nvmlDeviceGetTemperature(self, h, sensor):
        self._check(h)
        return 61


def test_readings_are_normalised():
    mon = GpuMonitor(RecordingLog(), FakeNvml(util=(87.0, 13.0)))
    assert mon.start() and mon.count == 2
    assert mon.sample(0.0) == []
    r = mon.readings[0]
    assert (r.name, r.util_pct, r.mem_used_mb, r.mem_total_mb, r.power_w, r.temp_c) == \
           ("NVIDIA H100 80GB HBM3", 87.0, 40960.0, 81920.0, 350.0, 61.0)
    assert mon.average(60, 0.0) == pytest.approx(50.0)


def test_no_driver_is_one_warning_and_unavailable():
    log = RecordingLog()
    mon = GpuMonitor(log, FakeNvml(init_error=NVMLError(9)))
    assert not mon.start() and not mon.available
    assert log.pairs() == [("warning", "gpu.unavailable")]
    assert mon.sample(0.0) == [] and mon.to_json(0.0)["available"] is False


def test_unsupported_field_is_unknown_not_zero():
    mon = GpuMonitor(RecordingLog(), FakeNvml(util=(None,)))
    mon.start()
    mon.sample(0.0)
    assert mon.readings[0].util_pct is None and mon.readings[0].power_w == 350.0
    assert mon.average(60, 0.0) is None
    assert mon.busy_since(-1, 10.0) is None  # no known reading: proves nothing


def test_a_lost_gpu_is_reported_not_raised_and_sampling_goes_on(fault_report):
    nvml = FakeNvml(util=(90.0, 90.0))
    log = RecordingLog()
    mon = GpuMonitor(log, nvml)
    mon.start()
    nvml.lost.add(1)
    problems = mon.sample(1.0)
    assert problems and "GPU 1 is lost" in problems[0]
    assert mon.readings[1].lost and mon.readings[0].util_pct == 90.0
    assert ("error", "gpu.read_failed") in log.pairs()
    mon.sample(2.0)
    assert log.names().count("gpu.read_failed") == 1  # logged once, not every sample
    fault_report("NVML raising (GPU lost): reported once at error level, sampling goes on")


def test_busy_since_and_rolling_windows():
    nvml = FakeNvml(util=(5.0,))
    mon = GpuMonitor(RecordingLog(), nvml)
    mon.start()
    for t in range(0, 100, 10):
        mon.sample(float(t))
    assert mon.busy_since(0.0, 10.0) is False
    nvml.util[0] = 60.0
    mon.sample(100.0)
    assert mon.busy_since(95.0, 10.0) is True
    assert mon.average(15, 100.0) == pytest.approx((5 + 60) / 2)
    assert mon.average(3600, 100.0) == pytest.approx((10 * 5 + 60) / 11)


class NonsenseNvml(FakeNvml):
    """Readings a driver has been seen to give (2**32 - 1 for "unknown"), and worse."""

    def __init__(self, **readings):
        super().__init__(util=(0.0,))
        self.readings = readings

    def _get(self, what, default):
        value = self.readings.get(what, default)
        if isinstance(value, Exception):
            raise value
        return value

    def nvmlDeviceGetName(self, h):
        return self._get("name", b"NVIDIA H100")

    def nvmlDeviceGetUtilizationRates(self, h):
        return self._get("util", SimpleNamespace(gpu=50, memory=10))

    def nvmlDeviceGetMemoryInfo(self, h):
        return self._get("mem", SimpleNamespace(used=2**30, total=2**31, free=2**30))

    def nvmlDeviceGetPowerUsage(self, h):
        return self._get("power", 300_000)

    def nvmlDeviceGetTemperature(self, h, sensor):
        return self._get("temp", 60)


NONSENSE = {
    "util-over-100": ({"util": SimpleNamespace(gpu=250, memory=0)}, "util_pct"),
    "util-negative": ({"util": SimpleNamespace(gpu=-1, memory=0)}, "util_pct"),
    "util-nan": ({"util": SimpleNamespace(gpu=float("nan"), memory=0)}, "util_pct"),
    "util-text": ({"util": SimpleNamespace(gpu="busy", memory=0)}, "util_pct"),
    "util-no-field": ({"util": object()}, "util_pct"),
    "util-none": ({"util": None}, "util_pct"),
    "mem-used-over-total": ({"mem": SimpleNamespace(used=2**40, total=2**30, free=0)}, "mem_used_mb"),
    "mem-negative": ({"mem": SimpleNamespace(used=-5, total=2**30, free=0)}, "mem_used_mb"),
    "power-uint-max": ({"power": 2**32 - 1}, "power_w"),
    "temp-huge": ({"temp": 2**31}, "temp_c"),
    "name-not-utf8": ({"name": b"\xff\xfe\x80"}, None),
    "name-not-text": ({"name": 12345}, None),
    "type-error": ({"util": TypeError("ctypes said no")}, "util_pct"),
    "os-error": ({"power": OSError(5, "I/O error")}, "power_w"),
}


@pytest.mark.parametrize("case", NONSENSE, ids=list(NONSENSE))
def test_a_nonsense_reading_is_unknown_never_a_lost_gpu(case):
    readings, field = NONSENSE[case]
    log = RecordingLog()
    mon = GpuMonitor(log, NonsenseNvml(**readings))
    assert mon.start()
    assert mon.sample(0.0) == []  # no "GPU lost" alert for a reading we cannot use
    r = mon.readings[0]
    assert not r.lost
    if field:
        assert getattr(r, field) is None
    others = {"util_pct": 50.0, "power_w": 300.0, "temp_c": 60.0, "mem_used_mb": 1024.0}
    assert all(getattr(r, k) == v for k, v in others.items() if k != field)  # one bad field costs only itself
    assert isinstance(r.name, str) or r.name is None
    mon.sample(1.0)
    assert len([e for _, e, _ in log.events if e in ("gpu.read_failed", "gpu.reading_invalid")]) <= 1  # once
    import json

    json.dumps(mon.to_json(1.0), allow_nan=False)  # what goes into state.json is plain JSON


@pytest.mark.parametrize("count", [10**9, -1, "2", None, 0])
def test_a_nonsense_device_count_is_no_metrics(count):
    nvml = FakeNvml()
    nvml.nvmlDeviceGetCount = lambda: count
    mon = GpuMonitor(RecordingLog(), nvml)
    assert not mon.start() and not mon.available and mon.error
    assert mon.sample(0.0) == []


def test_a_hung_nvml_init_is_no_metrics_within_its_bound():
    """A wedged driver can hang nvmlInit: start() is on the way to READY, so it waits a bounded time."""
    import threading
    import time

    release = threading.Event()
    nvml = FakeNvml()
    nvml.nvmlInit = lambda: release.wait(30)
    mon = GpuMonitor(RecordingLog(), nvml)
    began = time.monotonic()
    try:
        assert not mon.start(timeout=0.5)
        assert time.monotonic() - began < 5
        assert not mon.available and "did not answer" in mon.error
    finally:
        release.set()


def test_a_hung_sample_is_told_once_and_ages_out():
    """Sampling runs on a thread of its own (the supervisor's outside jobs); when a call hangs
    there, the scheduler's side still answers: unknown readings, an error, one alert."""
    import threading

    release = threading.Event()
    nvml = FakeNvml(util=(90.0,))
    mon = GpuMonitor(RecordingLog(), nvml)
    mon.start()
    mon.sample(0.0)
    nvml.nvmlDeviceGetUtilizationRates = lambda h: release.wait(30)
    sampler = threading.Thread(target=mon.sample, args=(10.0,), daemon=True)
    sampler.start()
    try:
        assert mon.busy_since(5.0, 10.0) is None  # no reading since: unknown, not idle and not busy
        assert mon.alerts(15.0) == []  # not yet: a slow call is not a hung one
        stuck = mon.alerts(10.0 + 120.0)
        assert len(stuck) == 1 and "NVML" in stuck[0].subject
        assert mon.alerts(10.0 + 200.0) == []  # once
        assert "not answered" in mon.to_json(130.0)["error"]
    finally:
        release.set()
        sampler.join(5)


@pytest.mark.slow
def test_supervisor_reports_gpu_metrics_and_alerts_on_a_lost_gpu(tmp_path, monkeypatch):
    """In-process supervisor with the fake NVML: state.json `gpu`, TensorBoard, and the alert."""
    import json
    import time

    from conftest import write_config
    from daemon.common import log as logs
    from daemon.common.config import load_config
    from daemon.supervisor import Supervisor

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    logs.configure("json", "warning")
    nvml = FakeNvml(util=(97.0,))
    cfg = load_config(write_config(tmp_path, {"gpu": {"sample_every": "200ms"}, "train": {"epochs": 400},
                                                     "budget": {"check_every": "200ms"}}))
    sup = Supervisor(cfg, logs.get("test"), nvml=nvml)
    sup.start()
    try:
        deadline = time.monotonic() + 30
        while not (json.loads(cfg.state_file.read_text()).get("gpu") or {}).get("devices") if cfg.state_file.exists() \
                else True:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        nvml.lost.add(0)
        while not any("GPU 0 is lost" in a["subject"] for a in json.loads(cfg.state_file.read_text())["alerts"]):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        sup.shutdown()
    state = json.loads(cfg.state_file.read_text())
    assert state["gpu"]["available"] and state["gpu"]["util_avg_1h_pct"] == pytest.approx(97.0)
    assert state["gpu"]["devices"][0]["lost"] is True
    assert sum("GPU 0 is lost" in a["subject"] for a in state["alerts"]) == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(cfg.tensorboard_dir / "supervisor"))
    acc.Reload()
    assert "gpu/util_pct" in acc.Tags()["scalars"] and "cost/total_usd" in acc.Tags()["scalars"]


@pytest.mark.slow
def test_a_hung_nvml_call_stalls_no_job(tmp_path, monkeypatch):
    """In-process supervisor: NVML hangs in a utilisation read (a GPU falling off the bus can do
    that). The tick, the ledger and state.json go on; the GPU section says NVML is stuck, once mailed."""
    import json
    import threading
    import time

    from conftest import write_config
    from daemon.common import log as logs
    from daemon.common.config import load_config
    from daemon.supervisor import Supervisor

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    logs.configure("json", "warning")
    nvml, release = FakeNvml(util=(97.0,)), threading.Event()
    cfg = load_config(write_config(tmp_path, {"gpu": {"sample_every": "200ms"}, "train": {"epochs": 400},
                                                     "budget": {"check_every": "200ms"}}))
    sup = Supervisor(cfg, logs.get("test"), nvml=nvml)
    sup.gpu.stuck_after_s = 2.0
    sup.start()

    def state() -> dict:
        return json.loads(cfg.state_file.read_text()) if cfg.state_file.exists() else {}

    def wait(predicate, what: str) -> dict:
        deadline = time.monotonic() + 60
        while not predicate(s := state()):
            assert time.monotonic() < deadline, f"{what}: {s.get('gpu')}"
            time.sleep(0.1)
        return s

    try:
        wait(lambda s: (s.get("gpu") or {}).get("devices"), "first readings")
        nvml.nvmlDeviceGetUtilizationRates = lambda h: release.wait(60)
        s = wait(lambda s: "not answered" in ((s.get("gpu") or {}).get("error") or ""), "stuck reported")
        spent = s["cost"]["total_usd"]
        wait(lambda s: s["cost"]["total_usd"] > spent, "the ledger moving on while NVML hangs")
        wait(lambda s: any("NVML is stuck" in a["subject"] for a in s["alerts"]), "the alert")
    finally:
        release.set()
        sup.shutdown()
