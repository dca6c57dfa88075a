"""`amapiano-train report` on a live demo, as a person runs it mid-run: the supervisor rewrites
state.json every tick and the trainer appends to its event file while reports are built, two of
them at once, and a reader (a browser, `aws s3 sync`) opens the page all the while."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from conftest import AMAPIANO_TRAIN, cli
from page_reader import PageReader
from test_report_process import state_of, wait_for

pytestmark = pytest.mark.slow


def test_reports_built_mid_run_on_a_live_demo_are_whole_and_a_reader_never_sees_half_a_page(tmp_path):
    workdir = tmp_path / "demo"
    demo = subprocess.Popen([*AMAPIANO_TRAIN, "demo", "--workdir", str(workdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    page = workdir / "state" / "reports" / "report.html"
    try:
        state_file = workdir / "state" / "state.json"
        wait_for(lambda: (s := state_of(state_file)) and (s["trainer"].get("step") or 0) > 0 or None, 120,
                 "training step")
        config = str(workdir / "config.toml")
        with PageReader(page) as reader:
            assert cli("report", "--config", config, "--log-format", "console").returncode == 0
            two = [subprocess.Popen([*AMAPIANO_TRAIN, "report", "--config", config, "--log-format", "console"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
            for p in two:
                _, err = p.communicate(timeout=180)
                assert p.returncode == 0 and "Traceback" not in err, err[-2000:]
    finally:
        demo.send_signal(signal.SIGTERM)  # the demo stops its supervisor, which stops the worker
        try:
            demo.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.communicate(timeout=30)
    assert reader.seen and reader.torn() == []
    text = page.read_text()
    assert "Where the run stands" in text and text.count("<img") >= 2  # loss and spend so far
    assert not [p for p in page.parent.rglob("*") if p.name.endswith(".tmp")]
