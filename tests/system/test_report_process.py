"""The report end to end: the demo leaves its decision's report and the completion's, which play
and draw in a real browser; `amapiano-train report` works mid-run on the demo's state; the
milestone's mail tells where the report is."""
from __future__ import annotations

import io
import json
import subprocess
import time
import zipfile

import pytest

from browser import CHROMIUM, Browser
from conftest import AMAPIANO_TRAIN, cli, write_config

pytestmark = pytest.mark.slow


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := predicate()) is not None:
            return value
        time.sleep(0.2)
    raise AssertionError(f"no {what} in {timeout}s")


def state_of(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_the_demo_leaves_reports_that_play_and_a_report_works_mid_run(tmp_path):
    workdir = tmp_path / "demo"
    demo = subprocess.Popen([*AMAPIANO_TRAIN, "demo", "--workdir", str(workdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    try:
        state_file = workdir / "state" / "state.json"
        wait_for(lambda: (s := state_of(state_file)) and (s["trainer"].get("step") or 0) > 0 or None, 120,
                 "training step")
        mid = cli("report", "--config", str(workdir / "config.toml"), "--log-format", "console")
        assert mid.returncode == 0, mid.stderr
        page = (workdir / "state" / "reports" / "report.html").read_text()
        assert "Where the run stands" in page and page.count("<img") >= 2  # loss and spend so far
        out, _ = demo.communicate(timeout=280)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(30)
    assert demo.returncode == 0, out[-3000:]
    reports = workdir / "state" / "reports"
    week5, done = reports / "week_5_report.html", reports / "completion_report.html"
    assert f"Milestone: NO-GO (dry run; report {week5})." in out and f"Completion: done; report {done};" in out
    if CHROMIUM is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
    with Browser() as browser:
        for html in (week5, done):
            seen = browser.load(html, tmp_path / f"{html.stem}.png")
            assert seen.errors == [] and len(seen.audio) == 12 and all(a["duration"] > 0 for a in seen.audio), seen
            assert len(seen.images) >= 3 and all(i["width"] > 0 for i in seen.images)
            assert all(url.startswith(("file://", "data:")) for url in seen.requests)
    assert "NO-GO" in week5.read_text() and "dry run" in week5.read_text()


def test_the_milestone_mail_carries_the_report_and_says_where_it_is(tmp_path, daemons, smtp_sink):
    smtp_sink.up()
    config = write_config(tmp_path, {"train": {"epochs": 400}}, {
        "milestone": {"samples": 6, "sample_seconds": 0.3, "at": "3s", "max_val_loss": 0.001},
        "email": {"transport": "smtp", "to": ["person@example.com"], "smtp_host": "127.0.0.1",
                  "smtp_port": smtp_sink.port, "smtp_starttls": False, "retry_every": "300ms"}})
    d = daemons(config)
    state = d.wait_state(lambda s: (s.get("milestone") or {}).get("decision") == "NO-GO", timeout=180)
    html = tmp_path / "state" / "reports" / "week_5_report.html"
    assert state["milestone"]["html_report"] == str(html) and html.exists()
    mail = wait_for(lambda: next((m for m in smtp_sink.messages if "NO-GO" in m["Subject"]), None), 30, "NO-GO mail")
    text = next(p for p in mail.walk() if p.get_content_type() == "text/plain").get_payload(decode=True).decode()
    assert str(html) in text and "open it in a browser" in text
    [attached] = [p for p in mail.walk() if p.get_filename()]
    assert attached.get_filename() == "week_5_report.zip"
    with zipfile.ZipFile(io.BytesIO(attached.get_payload(decode=True))) as z:
        assert "week_5_report/week_5_report.html" in z.namelist()
        assert len([n for n in z.namelist() if n.endswith(".wav")]) == 12  # both sides' clips, 6 pairs
    assert d.stop() == 0
