"""The background checkpoint against a hostile host (issue 18): a memory cgroup's limit over the
worker (a systemd unit's MemoryMax=, a container's --memory, cgroup v1 or v2), a disk that fills
during the background write, a SIGKILL between the rename and the marker. Real cgroups, a real
tmpfs and real signals where this machine allows (root), skipped where it does not."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import RecordingLog, tmpfs
from trainer.worker.async_save import GIB, host_available

MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[3]


@contextlib.contextmanager
def memory_cgroup(limit: int):
    """A cgroup v1 memory cgroup of `limit` bytes under this process's own (removed after; its
    processes must have ended), or the test skipped: it needs root and a v1 memory hierarchy."""
    here = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            here = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    if here is None or os.geteuid() != 0 or not (here / "memory.limit_in_bytes").exists():
        pytest.skip("needs root and a cgroup v1 memory hierarchy to make a child cgroup in")
    cgroup = here / f"amapiano-test-{uuid.uuid4().hex[:8]}"
    cgroup.mkdir()
    try:
        (cgroup / "memory.limit_in_bytes").write_text(str(limit))
        yield cgroup
    finally:
        cgroup.rmdir()


def test_a_limit_over_this_process_s_own_cgroup_counts_v2_nested_and_v1(tmp_path):
    """The limit is where the process is (/proc/self/cgroup), or any cgroup above it: a systemd unit's
    MemoryMax= sits at /sys/fs/cgroup/system.slice/amapiano-train.service/memory.max, not at the root."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemAvailable: {64 * 1024 * 1024} kB\n")
    root, own = tmp_path / "cg", tmp_path / "self-cgroup"
    unit = root / "system.slice" / "amapiano-train.service"
    unit.mkdir(parents=True)
    (unit / "memory.max").write_text(str(6 * GIB))
    (unit / "memory.current").write_text(str(2 * GIB))
    (unit / "memory.stat").write_text(f"anon {GIB}\ninactive_file {GIB}\n")  # page cache: reclaimable
    own.write_text("0::/system.slice/amapiano-train.service\n")
    assert host_available(meminfo, root, own) == 5 * GIB
    (root / "system.slice" / "memory.max").write_text(str(3 * GIB))  # the slice above limits too
    (root / "system.slice" / "memory.current").write_text(str(2 * GIB))
    assert host_available(meminfo, root, own) == GIB
    v1 = root / "memory" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(4 * GIB))
    (v1 / "memory.usage_in_bytes").write_text(str(3 * GIB + GIB // 2))
    own.write_text("12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    assert host_available(meminfo, root, own) == GIB // 2
    own.write_text("garbage\n::\n")
    assert host_available(meminfo, root, own) == 64 * GIB, "unreadable: MemAvailable, as before"


# The child runs as `python -c` from the repository root, where tests/ is not importable: its
# recording Log stays here (tests/conftest.py's RecordingLog is for in-process tests).
CHILD = """
import json, os, sys
from pathlib import Path
import torch
from trainer.worker import async_save
class Log:
    records = []
    def __getattr__(self, level):
        return lambda event, **kw: self.records.append([level, event, kw])
(Path(sys.argv[1]) / "cgroup.procs").write_text(str(os.getpid()))  # torch's pages stay charged outside
saver, log = async_save.Saver(Log(), torch.device("cpu")), Log()
saver.log = log
payload = {"model": {"w": torch.randn(256, 256)}}
saver.start(4, payload, async_save.commit_file(Path(sys.argv[2]), 4, {}, None, 3), since=0.0)
done = saver.wait()
print(json.dumps({"available": async_save.host_available(), "blocking": done.blocking, "log": log.records}))
"""


def test_a_worker_in_a_memory_cgroup_without_room_for_the_copy_saves_blocking_and_says_why(tmp_path):
    """A real cgroup (v1 here) limited to 768 MiB, under the 1 GiB kept in reserve: the copy would
    push the cgroup to its OOM killer, so the save is blocking and the log says why."""
    with memory_cgroup(768 * MIB) as cgroup:
        r = subprocess.run([sys.executable, "-c", CHILD, str(cgroup), str(tmp_path / "ckpt")], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["available"] <= 768 * MIB, f"the cgroup's limit was not seen: {seen['available'] / GIB:.1f} GiB"
    assert seen["blocking"], seen
    [(level, _, said)] = [r for r in seen["log"] if r[1] == "checkpoint.blocking"]
    assert level == "warning" and "cgroup" in said["reason"] and "blocking" in said["reason"]


# A child process as CHILD is: it cannot import tests/conftest.py, so its Log that drops everything stays here.
KILLED = """
import os, sys, threading, time
from pathlib import Path
import torch
from daemon.common import atomic, checkpoints as layout
from trainer.worker import async_save, checkpoint
class Log:
    def __getattr__(self, level):
        return lambda event, **kw: None
directory, stage = Path(sys.argv[1]), sys.argv[2]
saver = async_save.Saver(Log(), torch.device("cpu"))
def payload(seed):
    torch.manual_seed(seed)
    return {"model": {"w": torch.randn(512, 512)}}
saver.start(4, payload(4), async_save.commit_file(directory, 4, {}, None, 3), since=0.0)
saver.wait()
def hang(what):
    print(what, flush=True)
    threading.Event().wait()
if stage == "renamed":  # the .pt is in place, its marker not yet written
    commit = layout.commit
    layout.commit = lambda d, step, meta: hang("renamed") if step == 8 else commit(d, step, meta)
else:  # the marker renamed into place, the directory not yet fsynced
    fsync_dir = atomic.fsync_dir
    def late(d):
        if layout.marker_path(directory, 8).exists():
            hang("marked")
        fsync_dir(d)
    atomic.fsync_dir = late
saver.start(8, payload(8), async_save.commit_file(directory, 8, {}, None, 3), since=0.0)
while True:  # the loop trains on while the background write hangs
    time.sleep(0.1)
"""


@pytest.mark.parametrize("stage, newest", [("renamed", 4), ("marked", 8)])
def test_a_sigkill_at_each_stage_of_the_background_commit_leaves_one_newest_checkpoint_that_loads(
        tmp_path, stage, newest):
    from daemon.common import checkpoints as layout
    from trainer.worker import checkpoint

    directory = tmp_path / "ckpt"
    child = subprocess.Popen([sys.executable, "-c", KILLED, str(directory), stage], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        said = child.stdout.readline().strip()
        assert said == stage, child.stderr.read()[-3000:] if child.poll() is not None else said
    finally:
        child.kill()
        child.wait(30)

    removed = checkpoint.clean_partial(directory)
    assert (stage == "renamed") == ("step_00000008.pt" in removed), removed
    marker, payload = checkpoint.load_latest(directory, RecordingLog())
    assert marker.step == newest and payload["step"] == newest and layout.verify(marker) is None
    assert layout.is_own(marker), "a checkpoint this trainer wrote is known as its own"
    assert [m.step for m in layout.list_checkpoints(directory)] == sorted({4, newest})
    assert not list(directory.glob(".*.tmp"))


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "ckpt", "size=3m") as where:
        yield where


def test_a_disk_that_fills_during_the_background_write_is_raised_in_the_loop_and_the_previous_checkpoint_stays(
        small_disk):
    import torch

    from daemon.common import checkpoints as layout
    from trainer.worker import async_save, checkpoint

    saver = async_save.Saver(RecordingLog(), torch.device("cpu"))
    saver.start(4, {"model": {"w": torch.zeros(256, 256)}}, async_save.commit_file(small_disk, 4, {}, None, 3), 0.0)
    assert saver.wait().marker.step == 4  # 256 KiB: fits
    saver.start(8, {"model": {"w": torch.ones(1024, 1024)}}, async_save.commit_file(small_disk, 8, {}, None, 3), 0.0)
    with pytest.raises(OSError) as raised:  # 4 MiB on a 3 MiB disk: the loop learns of it at its next look
        while saver.poll() is None:
            pass
    line = str(raised.value)
    assert "No space left on device" in line and "step_00000008.pt" in line and "\n" not in line, line
    assert saver.poll() is None and saver.wait() is None, "raised once, nothing left in flight"
    assert [m.step for m in layout.list_checkpoints(small_disk)] == [4]
    assert checkpoint.load(layout.newest(small_disk))["step"] == 4
    assert not [p.name for p in small_disk.iterdir() if p.name.endswith(".tmp") or p.name.startswith("step_00000008")]
    saver.close()


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e308", "nan@4", "-2%2", "inf,1"])
def test_a_slow_save_hook_that_no_clock_can_sleep_is_unreadable_and_the_save_commits(tmp_path, monkeypatch, value):
    """AMAPIANO_TEST_SLOW_SAVE_S passes to the worker with every AMAPIANO_ setting (daemon/common/launch.py):
    a value time.sleep refuses (NaN, negative, past time_t) failed every checkpoint write, every restart."""
    import torch

    from trainer.worker import async_save

    monkeypatch.setenv(async_save.SLOW_SAVE, value)
    assert async_save.hold_seconds(4) is None
    saver = async_save.Saver(RecordingLog(), torch.device("cpu"))
    saver.start(4, {"model": {"w": torch.zeros(8)}}, async_save.commit_file(tmp_path, 4, {}, None, 3), 0.0)
    assert saver.wait().marker.step == 4
    saver.close()
