"""The background writer in one process: the copy is the step's state, errors come back to the
loop, a host without room for the copy saves blocking and says why, and host memory is read
from /proc/meminfo and a cgroup's limit."""
from __future__ import annotations

import threading

import pytest
import torch

from conftest import RecordingLog
from daemon.common import checkpoints as layout
from trainer.worker import async_save, checkpoint
from trainer.worker.async_save import GIB, Saver, host_available, no_room


def model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    return model, optimizer


def payload(model, optimizer):
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}


def roomy(tmp_path, kb=64 * 1024 * 1024):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       {kb} kB\nMemAvailable:   {kb} kB\n")
    return meminfo


def test_the_copy_is_the_steps_state_whatever_training_does_during_the_write(tmp_path, monkeypatch):
    model, optimizer = model_and_optimizer()
    want = {k: v.clone() for k, v in model.state_dict().items()}
    moments = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    saver = Saver(RecordingLog(), torch.device("cpu"), meminfo=roomy(tmp_path), cgroup=tmp_path / "none")
    gate = threading.Event()  # the write holds until training has moved on
    monkeypatch.setattr(async_save, "test_hold", lambda step: gate.wait)
    saver.start(7, payload(model, optimizer), async_save.commit_file(tmp_path / "ckpt", 7, {}, None, 3), since=0.0)
    for _ in range(3):  # training goes on: the live tensors change under the write
        model(torch.randn(4, 64)).sum().backward()
        optimizer.step()
    assert saver.poll() is None and not (tmp_path / "ckpt" / "step_00000007.json").exists()
    gate.set()
    done = saver.wait()
    assert done.step == 7 and not done.blocking and done.marker.step == 7
    loaded = checkpoint.load(done.marker)
    assert all(torch.equal(loaded["model"][k], want[k]) for k in want)
    assert not torch.equal(loaded["model"]["weight"], model.weight.detach())
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], moments)
    saver.close()


def test_an_error_in_the_background_write_is_raised_in_the_loop_naming_the_file(tmp_path):
    (tmp_path / "not-a-dir").write_text("x")
    model, optimizer = model_and_optimizer()
    saver = Saver(RecordingLog(), torch.device("cpu"), meminfo=roomy(tmp_path), cgroup=tmp_path / "none")
    saver.start(4, payload(model, optimizer), async_save.commit_file(tmp_path / "not-a-dir" / "ckpt", 4, {}, None, 3),
                since=0.0)
    with pytest.raises(OSError, match="not-a-dir"):
        saver.wait()
    assert saver.wait() is None  # raised once; the next save can start
    saver.close()


def test_a_host_without_room_for_the_copy_saves_blocking_and_says_why_once(tmp_path):
    model, optimizer = model_and_optimizer()
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 16000000 kB\nMemFree: 100 kB\nMemAvailable: 1024 kB\n")
    log = RecordingLog()
    saver = Saver(log, torch.device("cpu"), meminfo=meminfo, cgroup=tmp_path / "none")
    for step in (4, 8):
        saver.start(step, payload(model, optimizer), async_save.commit_file(tmp_path, step, {}, None, 3), since=0.0)
        assert layout.marker_path(tmp_path, step).exists(), "committed before start returned: blocking"
        assert saver.poll().blocking
    blocking = [r for r in log.events if r[1] == "checkpoint.blocking"]
    assert len(blocking) == 1 and "MemAvailable" in blocking[0][2]["reason"], log.events
    assert blocking[0][0] == "warning"
    roomy(tmp_path)  # room again: back to the background, said once
    saver.start(12, payload(model, optimizer), async_save.commit_file(tmp_path, 12, {}, None, 3), since=0.0)
    assert not saver.wait().blocking
    assert [r[1] for r in log.events].count("checkpoint.background") == 1
    saver.close()


def test_host_memory_is_memavailable_capped_by_the_cgroup_and_unknown_when_unreadable(tmp_path):
    meminfo = roomy(tmp_path, kb=8 * 1024 * 1024)
    cgroup = tmp_path / "cg"
    cgroup.mkdir()
    assert host_available(meminfo, cgroup) == 8 * GIB  # no cgroup files: MemAvailable
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text(str(GIB))
    assert host_available(meminfo, cgroup) == 8 * GIB  # no limit
    (cgroup / "memory.max").write_text(str(3 * GIB))
    assert host_available(meminfo, cgroup) == 2 * GIB  # the limit less what the cgroup uses
    for garbage in ("", "MemAvailable: lots\n", "MemAvailable: 12 MB\n", "\x00" * 10):
        meminfo.write_text(garbage)
        assert host_available(meminfo, cgroup) is None, garbage
    assert host_available(tmp_path / "absent", cgroup) is None


@pytest.mark.parametrize("need, held, available, fits", [
    (5 * GIB, 0, 10 * GIB, True),          # a g4dn.xlarge with musicgen-small's 5 GB copy
    (5 * GIB, 0, 5 * GIB, False),          # nothing left for the reserve
    (5 * GIB, 5 * GIB, 1 * GIB, True),     # the kept copy is reused: counted as available
    (5 * GIB, 0, None, True),              # unknown host: the background, as everywhere else
])
def test_no_room_counts_the_kept_copy_and_a_reserve(need, held, available, fits):
    why = no_room(need, held, available)
    assert (why is None) == fits
    if why:
        assert "blocking" in why and f"{need / GIB:.1f} GiB" in why


@pytest.mark.parametrize("value, step, seconds", [
    ("2", 8, 2.0), ("2@8", 8, 2.0), ("2@8", 4, None), ("1.5%40", 80, 1.5), ("1.5%40", 84, None), ("2%0", 8, None),
    ("", 8, None), ("x@8", 8, None), ("2@y", 8, None),
    ("6@12,1", 12, 6.0), ("6@12,1", 8, 1.0), ("6@12, 0.5%8", 16, 0.5), ("6@12,0.5%8", 4, None), ("6@12,x", 4, None)])
def test_the_test_hold_is_read_only_from_its_variable(monkeypatch, value, step, seconds):
    monkeypatch.setenv(async_save.SLOW_SAVE, value)
    assert async_save.hold_seconds(step) == seconds
    assert (async_save.test_hold(step) is not None) == (seconds is not None)
