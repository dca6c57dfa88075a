"""Issue 10: while the instance bills, the daemon is watching. Each test is a case that once left a
paid GPU unwatched or lost the run, run against the real daemon (moto, aiosmtpd, our IMDS)."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from conftest import cli, write_config
from test_money_and_machine import AWS_ENV, LONG, halted, instance, machine, subjects, wait_until  # noqa: F401

pytestmark = pytest.mark.slow
FROZEN = {"supervisor": {"heartbeat_timeout": "3s", "loading_timeout": "60s", "validation_timeout": "4s",
                         "checkpoint_timeout": "4s", "max_restarts_without_progress": 5}}


def test_a_frozen_worker_is_dumped_killed_and_restarted_like_a_crash(tmp_path, daemons):
    config = write_config(tmp_path, LONG, FROZEN)
    d = daemons(config)
    state = d.wait_state(lambda s: (s["trainer"]["step"] or 0) >= 6 and s["trainer"]["pid"], timeout=90)
    frozen = state["trainer"]["pid"]
    os.kill(frozen, signal.SIGSTOP)  # a deadlocked loader or a hung CUDA call looks like this
    state = d.wait_state(lambda s: s["trainer"]["pid"] not in (None, frozen) and s["trainer"]["restarts"] >= 1,
                         timeout=60)
    assert "hung" in state["trainer"]["last_exit_reason"]
    hung = [e for p, e in d.events() if e["event"] == "worker.hung"]
    assert hung and hung[0]["pid"] == frozen and hung[0]["level"] == "error"
    d.wait_state(lambda s: (s["trainer"]["step"] or 0) > state["trainer"]["last_checkpoint_step"] + 2, timeout=60)
    assert d.stop() == 0


def test_a_worker_frozen_while_validating_is_not_busy_forever(tmp_path, daemons):
    """Frozen with a heartbeat that says "validating", it once counted as busy forever: the idle
    rule never fired and the instance ran to the budget cap. Now the heartbeat goes stale, the
    worker is killed (here the restart budget is one crash, so the run FAILS), and the idle rule
    stops the instance."""
    config = write_config(tmp_path, LONG, FROZEN, {
        "supervisor": {"max_crashes": 1},
        "idle": {"timeout": "4s", "warn_before": "2s", "check_every": "200ms", "action": "none"}})
    d = daemons(config)
    state = d.wait_state(lambda s: (s["trainer"]["step"] or 0) >= 4 and s["trainer"]["pid"], timeout=90)
    pid = state["trainer"]["pid"]
    os.kill(pid, signal.SIGSTOP)
    beat = tmp_path / "state" / "heartbeat.json"
    frozen_beat = {**json.loads(beat.read_text()), "activity": "validating", "pid": pid}
    beat.write_text(json.dumps(frozen_beat))
    state = d.wait_state(lambda s: s["phase"] == "FAILED" and (s.get("shutdown") or {}).get("stage") == "done",
                         timeout=90)
    assert state["shutdown"]["reason"].startswith("idle") and "hung" in state["trainer"]["last_exit_reason"]
    assert d.stop() == 0


def test_a_refused_stop_is_retried_falls_back_to_poweroff_and_the_daemon_stays(tmp_path, daemons, aws, imds,
                                                                               smtp_sink):
    """A one-time Spot request's instance cannot be stopped: StopInstances fails (here: an
    instance EC2 does not know). Each failure is an error and an alert; the next try powers off."""
    smtp_sink.up()
    marker = tmp_path / "poweroff-ran"
    poweroff = ["sh", "-c", f"n=$(cat {marker}.n 2>/dev/null || echo 0); echo $((n+1)) > {marker}.n; "
                            f"[ $n -ge 1 ] && echo off > {marker}"]   # fails the first time, works the second
    config = write_config(tmp_path, {"train": {"epochs": 1}}, machine(
        aws, imds, smtp_sink, idle={"timeout": "3s", "warn_before": "1s", "check_every": "200ms",
                                    "action": "ec2-stop"},
        supervisor={"shutdown_retry_initial": "300ms", "poweroff_command": poweroff}))
    d = daemons(config, AWS_ENV)
    state = halted(d, 150)
    assert marker.read_text().strip() == "off"
    assert state["shutdown"]["attempts"] == 4 and state["shutdown"]["result"] == "poweroff requested"
    failed = [e for p, e in d.events() if e["event"] == "shutdown.failed"]
    assert [e["action"] for e in failed] == ["ec2-stop", "poweroff", "ec2-stop"]
    assert all(e["level"] == "error" for e in failed)
    wait_until(lambda: sum("could not stop the instance" in s for s in subjects(smtp_sink)) == 3, 20, "3 alerts")
    assert d.proc.poll() is None  # still up: it exits only when systemd stops it
    assert d.stop() == 0


def test_after_a_cap_with_action_none_the_idle_rule_still_stops_the_instance(tmp_path, daemons, instance, aws,
                                                                              imds, smtp_sink):
    iid, ec2_state = instance
    smtp_sink.up()
    config = write_config(tmp_path, LONG, machine(
        aws, imds, smtp_sink, budget={"max_usd": 1.0, "hourly_rate_usd": 1800.0, "check_every": "200ms",
                                      "action": "none"},
        idle={"timeout": "4s", "warn_before": "2s", "check_every": "200ms", "action": "ec2-stop"}))
    d = daemons(config, AWS_ENV)
    d.wait_state(lambda s: s["phase"] == "HALTED", timeout=90)
    wait_until(lambda: ec2_state() in ("stopping", "stopped"), 60, "the idle rule's StopInstances")
    state = d.state()
    assert state["shutdown"]["reason"].startswith("idle") and "StopInstances" in state["shutdown"]["result"]
    assert d.stop() == 0


def test_imds_down_at_start_is_retried_for_the_daemons_life(tmp_path, daemons, instance, aws, imds, smtp_sink):
    """One 503 at start once meant no Spot notices, no ec2-stop and $0 spend, for good."""
    smtp_sink.up()
    imds.fail_with = 503
    config = write_config(tmp_path, LONG, machine(aws, imds, smtp_sink, budget={"hourly_rate_usd": 0.0}))
    d = daemons(config, AWS_ENV)
    state = d.wait_state(lambda s: (s["trainer"]["step"] or 0) >= 3 and s.get("cost"), timeout=90)
    assert state["cost"]["rate_source"].startswith("ceiling") and state["cost"]["rate_usd_per_h"] > 0
    imds.fail_with = None
    imds.announce_interruption("stop")
    state = d.wait_state(lambda s: s["phase"] == "HALTED", timeout=60)
    assert (state.get("spot") or {}).get("interruption")
    assert d.stop() == 0


def test_a_second_supervisor_on_the_same_state_dir_stops_naming_the_first(tmp_path, daemons):
    config = write_config(tmp_path, LONG)
    d = daemons(config)
    d.wait_state(lambda s: s["phase"] == "RUNNING", timeout=60)
    second = cli("supervise", "--config", str(config), timeout=60)
    assert second.returncode == 78
    assert f"another supervisor (pid {d.proc.pid})" in second.stderr and "Traceback" not in second.stderr
    assert d.stop() == 0


def test_a_lost_state_file_is_rebuilt_from_the_journal(tmp_path, daemons):
    config = write_config(tmp_path, LONG, {"budget": {"hourly_rate_usd": 3600.0, "check_every": "200ms"}})
    d = daemons(config)
    before = d.wait_state(lambda s: (s.get("cost") or {}).get("total_usd", 0) > 2.0, timeout=60)
    assert d.stop() == 0
    spent = json.loads((tmp_path / "state" / "state.json").read_text())["cost"]["total_usd"]
    (tmp_path / "state" / "state.json").unlink()  # lost, or moved aside after an exit 65
    d2 = daemons(config)
    after = d2.wait_state(lambda s: s.get("cost"), timeout=60)
    assert after["run_id"] == before["run_id"] and after["started_at"] == before["started_at"]
    assert after["cost"]["total_usd"] >= spent - 0.25  # the journal is at most one check behind
    assert after["milestone"]["due_at"] == before["milestone"]["due_at"]
    assert any(e["event"] == "run.rebuilt_from_journal" for _, e in d2.events())
    assert d2.stop() == 0
    # Garbage at start, with the journal beside it: moved aside (kept), the run rebuilt, watching.
    (tmp_path / "state" / "state.json").write_bytes(b"\x00garbage")
    d3 = daemons(config)
    again = d3.wait_state(lambda s: s.get("cost"), timeout=60)
    assert again["run_id"] == before["run_id"] and again["cost"]["total_usd"] >= spent - 0.25
    assert [p.read_bytes() for p in (tmp_path / "state").glob("state.json.bad.*")] == [b"\x00garbage"]
    assert any(e["event"] == "state.moved_aside" and e["level"] == "error" for _, e in d3.events())
    assert d3.stop() == 0


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe garbage", "not UTF-8 text"),
    (json.dumps({"schema_version": 1, "run_id": "r", "started_at": "2026-01-01T00:00:00Z", "phase": "RUNNING",
                 "cost": {"boot_id": "b", "accounted_boottime_s": 1, "storage_accounted_at": "2026-01-01T00:00:00Z",
                          "compute_usd": float("nan")}}).encode(), "not a number JSON allows"),
])
def test_a_bad_state_file_is_one_line_and_65_saying_how_to_go_on(tmp_path, content, words):
    config = write_config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_bytes(content)
    r = cli("supervise", "--config", str(config), timeout=60)
    assert r.returncode == 65 and words in r.stderr and "Traceback" not in r.stderr
    assert "ledger.journal" in r.stderr  # the way on without losing spend
    assert (tmp_path / "state" / "state.json").read_bytes() == content  # nothing overwritten


def test_a_state_dir_on_a_file_is_one_line_and_78(tmp_path):
    (tmp_path / "blocker").write_text("a file")
    config = write_config(tmp_path, {"run": {"state_dir": str(tmp_path / "blocker" / "state")}})
    r = cli("supervise", "--config", str(config), timeout=60)
    assert r.returncode == 78 and "state directory" in r.stderr and "Traceback" not in r.stderr


def test_a_full_state_disk_keeps_the_watchdog_and_alerts_once(tmp_path, daemons, notify_socket):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(state)], check=True)
    try:
        config = write_config(tmp_path, LONG, {"run": {"log_dir": str(tmp_path / "logs")}})
        d = daemons(config, {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000"})
        d.wait_state(lambda s: (s["trainer"]["step"] or 0) >= 3, timeout=90)
        # Kept full: a checkpoint write that fails with ENOSPC deletes its temp file and frees
        # megabytes, enough for state.json again (seen in CI), so every freed byte is taken back.
        fillers = []

        def full_and_failed() -> bool:
            fillers.append(state / f"filler-{len(fillers)}")
            subprocess.run(["dd", "if=/dev/zero", f"of={fillers[-1]}", "bs=64k", "count=1024"], capture_output=True)
            return '"event":"state.write_failed"' in d.log_text()

        # the next write: at the next change, or the 30 s refresh at the latest
        wait_until(full_and_failed, 75, "the write failure")
        seen = len(notify_socket.messages)
        notify_socket.wait_for(lambda m: m == "WATCHDOG=1", timeout=10, since=seen)  # still pinging
        assert d.proc.poll() is None
        for filler in fillers:
            filler.unlink(missing_ok=True)
        wait_until(lambda: '"event":"state.write_recovered"' in d.log_text(), 75, "the recovery")
        assert d.log_text().count('"subject":"[amapiano-train] cannot write state.json"') <= 1
        d.stop()
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
