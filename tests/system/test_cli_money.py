"""The person's tools for issue 3: hold, alert test, status with money, and start/stop-gpu."""
from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone

from conftest import REPO, cli, write_config
from daemon.state import State, save_state

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def test_hold_writes_and_cancels(tmp_path):
    config = write_config(tmp_path)
    nowhere = cli("hold", "2h", "--config", str(config))  # no run there: once a hold.json for nobody
    assert nowhere.returncode == 78 and "no run in" in nowhere.stderr and not (tmp_path / "state").exists()
    (tmp_path / "state").mkdir()
    out = cli("hold", "2h", "--config", str(config))
    assert out.returncode == 0 and "postponed until" in out.stdout
    hold = json.loads((tmp_path / "state" / "hold.json").read_text())
    until = datetime.fromisoformat(hold["until"].replace("Z", "+00:00"))
    assert 7190 < (until - datetime.now(timezone.utc)).total_seconds() <= 7200
    bad = cli("hold", "two hours", "--config", str(config))
    assert bad.returncode == 2 and "DURATION must be a duration" in bad.stderr
    assert cli("hold", "0", "--config", str(config)).returncode == 0
    assert not (tmp_path / "state" / "hold.json").exists()


def test_alert_test_reports_delivery(tmp_path, smtp_sink):
    smtp_sink.up()
    email = {"transport": "smtp", "to": ["me@example.com"], "smtp_host": "127.0.0.1", "smtp_port": smtp_sink.port,
             "smtp_starttls": False, "timeout": "2s", "retry_every": "200ms"}
    ok = cli("alert", "test", "--config", str(write_config(tmp_path, {"email": email})))
    assert ok.returncode == 0, ok.stderr
    assert "sent to me@example.com via smtp" in ok.stdout
    assert smtp_sink.messages[0]["Subject"] == "[amapiano-train] test message: mail works"
    smtp_sink.down()
    down = cli("alert", "test", "--config", str(write_config(tmp_path, {"email": email}, name="c2.toml")))
    assert down.returncode == 1 and "not delivered via smtp" in down.stderr and "refused" in down.stderr.lower()


def test_status_shows_spend_budget_idle_and_alerts(tmp_path):
    config = write_config(tmp_path)
    state = State.new(NOW)
    state.phase = "RUNNING"
    state.cost = {"total_usd": 123.456, "compute_usd": 120.0, "storage_usd": 3.456, "rate_usd_per_h": 2.5,
                  "rate_source": "spot g5.xlarge us-east-1a", "boot_id": "b", "accounted_boottime_s": 1.0,
                  "storage_accounted_at": "2026-11-25T12:00:00Z",
                  "forecast": {"at_completion_usd": 410.0, "hours_to_completion": 114.6, "at_milestone_usd": 380.0}}
    state.budget = {"max_usd": 600.0, "left_usd": 476.544, "fired": ["fraction:0.5"]}
    state.gpu = {"available": True, "util_avg_1m_pct": 93.0, "util_avg_1h_pct": 88.0,
                 "devices": [{"index": 0, "util_pct": 95.0, "power_w": 610.0}]}
    state.idle = {"idle_for_s": 1500, "timeout_s": 7200, "warned_at": "2026-11-25T11:50:00Z",
                  "shutdown_due_at": "2026-11-25T12:05:00Z", "action": "ec2-stop"}
    state.alerts = [{"subject": "[amapiano-train] idle shutdown in 15 min", "status": "pending"}]
    save_state(tmp_path / "state" / "state.json", state, NOW)
    out = cli("status", "--config", str(config))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "$123.46" in text and "$2.50/h" in text and "spot g5.xlarge us-east-1a" in text
    assert "at completion $410.00" in text and "$476.54 left of $600.00" in text
    assert "util 1 min 93 %" in text and "SHUTDOWN DUE 2026-11-25T12:05:00Z (ec2-stop)" in text
    assert "1 NOT DELIVERED" in text


def test_start_and_stop_gpu_scripts_against_moto(aws):
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=aws, region_name="us-east-1")
    iid = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="g5.xlarge")[
        "Instances"][0]["InstanceId"]
    env = {**os.environ, "AWS_ENDPOINT_URL": aws, "AWS_REGION": "us-east-1"}
    stop = subprocess.run([str(REPO / "scripts" / "stop-gpu.sh"), iid], capture_output=True, text=True,
                          env=env, timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert f"{iid}: stopped" in stop.stdout
    start = subprocess.run([str(REPO / "scripts" / "start-gpu.sh"), iid], capture_output=True, text=True,
                           env=env, timeout=120)
    assert start.returncode == 0, start.stderr
    assert f"{iid}: running" in start.stdout
    missing = subprocess.run([str(REPO / "scripts" / "stop-gpu.sh"), "i-00000000000000000"], capture_output=True,
                             text=True, env=env, timeout=120)
    assert missing.returncode == 1 and "i-00000000000000000" in missing.stderr


def test_alert_test_through_apprise(tmp_path):
    from webhook_sink import WebhookSink

    sink = WebhookSink()
    email = {"transport": "apprise", "timeout": "2s", "retry_every": "200ms"}
    config = write_config(tmp_path, {"email": email})
    none = cli("alert", "test", "--config", str(config), env={"AMAPIANO_APPRISE_URLS": ""})
    assert none.returncode == 78 and "AMAPIANO_APPRISE_URLS" in none.stderr  # says where the URLs go
    sink.up()
    try:
        ok = cli("alert", "test", "--config", str(config), env={"AMAPIANO_APPRISE_URLS": sink.url()})
    finally:
        sink.down()
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1] == "sent to 1 apprise URL via apprise"
    assert [r["body"]["title"] for r in sink.received] == ["[amapiano-train] test message: mail works"]
    down = cli("alert", "test", "--config", str(config), env={"AMAPIANO_APPRISE_URLS": sink.url()})
    assert down.returncode == 1 and "not delivered via apprise" in down.stderr
    typo = cli("alert", "test", "--config", str(config), env={"AMAPIANO_APPRISE_URLS": "nope://TOKEN"})
    assert typo.returncode == 78 and "URL 1 (nope://...)" in typo.stderr and "TOKEN" not in typo.stderr


def test_status_watch_renders_until_interrupted(tmp_path):
    import signal
    import time

    from conftest import AMAPIANO_TRAIN

    config = write_config(tmp_path)
    state = State.new(NOW)
    state.phase = "RUNNING"
    save_state(tmp_path / "state" / "state.json", state, NOW)
    two = cli("status", "--config", str(config), "--watch", "0.2", "--count", "2")
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("amapiano-train status, every 0.2s") == 2 and two.stdout.count("RUNNING") == 2
    assert "\x1b[2J" not in two.stdout  # no screen clearing into a pipe
    # Until Ctrl-C: SIGINT ends it with 0 and no traceback.
    # As from a terminal: SIGINT at its default. A background job of a non-interactive shell (as CI
    # runs this tier) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt.
    proc = subprocess.Popen([*AMAPIANO_TRAIN, "status", "--config", str(config), "--watch", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    first = proc.stdout.readline()  # the first screen's header: it is watching
    assert "every 0.2s" in first and time.monotonic() < deadline
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert (first + out).count("amapiano-train status, every") >= 2
    bad = cli("status", "--config", str(config), "--watch", "0")
    assert bad.returncode == 2 and "SECONDS must be a number from 0.1 to 3600" in bad.stderr


def test_hold_has_a_ceiling_of_a_week(tmp_path):
    """`hold 3650d` switched the idle rule off for ten years: the GPU could bill idle for all of
    them. A hold is for a person who is working on the instance now; longer is refused in one line
    with the usage status, and nothing is written."""
    config = write_config(tmp_path)
    (tmp_path / "state").mkdir()
    for too_long in ("3650d", "8d", "7d1s", "2w"):
        r = cli("hold", too_long, "--config", str(config))
        assert r.returncode == 2 and r.stdout == "", r
        assert len(r.stderr.strip().splitlines()) == 1 and "DURATION must be at most 7d" in r.stderr
        assert "[idle]" in r.stderr and not (tmp_path / "state" / "hold.json").exists()
    ok = cli("hold", "7d", "--config", str(config))
    assert ok.returncode == 0 and "postponed until" in ok.stdout
