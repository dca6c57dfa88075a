"""The reports in a real browser: Debian's headless Chromium (tests/browser.py) opens each from
file:// as a person would after `scp -r` or unzipping the mail's attachment. No console error,
every <audio> knows its duration (the clip loaded), every plot has a width, nothing is asked of
the network, no script runs; a screenshot of each is kept with the test's files.

Chromium is required in CI (.ci/run installs it and sets AMAPIANO_REQUIRE_BROWSER=1); elsewhere
a missing one is a skip."""
from __future__ import annotations

import os
import shutil
import zipfile

import pytest

from browser import CHROMIUM, Browser
from daemon.report.build import build
from report_run import HOSTILE, fake_run

REQUIRED = os.environ.get("AMAPIANO_REQUIRE_BROWSER") == "1"


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        message = "chromium not installed (Debian: apt-get install chromium)"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    with Browser() as b:
        yield b


def check(page, audio: int, images: int) -> None:
    assert page.errors == [], page.errors
    assert len(page.audio) == audio and all(a["duration"] > 0 for a in page.audio), page.audio
    assert len(page.images) == images and all(i["width"] > 0 for i in page.images), page.images
    assert all(url.startswith(("file://", "data:")) for url in page.requests), page.requests
    assert page.scripts == 0
    assert page.screenshot is not None and page.screenshot.stat().st_size > 20_000


def test_the_milestone_report_with_hostile_inputs_plays_and_draws_in_a_browser(tmp_path, browser):
    cfg = fake_run(tmp_path / "run", hostile=HOSTILE)
    built = build(cfg, "milestone")
    page = browser.load(built.html, tmp_path / "week_5_report.png")
    check(page, audio=12, images=4)
    assert "CONDITIONAL GO" in page.text and '<script>alert("x")</script>' in page.text  # shown as text


def test_the_mailed_zip_opens_anywhere_with_its_clips(tmp_path, browser):
    cfg = fake_run(tmp_path / "run", decision="NO-GO", completed=True)
    built = build(cfg, "completion")
    with zipfile.ZipFile(built.zip) as z:
        z.extractall(tmp_path / "laptop")
    shutil.rmtree(cfg.reports_dir)  # the instance is gone: only the attachment is left
    page = browser.load(tmp_path / "laptop" / "completion_report" / "completion_report.html",
                        tmp_path / "completion_report.png")
    check(page, audio=12, images=4)
    assert "Training completed" in page.text and "NO-GO" in page.text


def test_the_mid_run_report_says_no_decision_yet(tmp_path, browser):
    cfg = fake_run(tmp_path / "run", decision=None)
    built = build(cfg, "now")
    page = browser.load(built.html, tmp_path / "report.png")
    check(page, audio=0, images=3)
    assert "NO DECISION YET" in page.text.upper() and "Not available" not in page.text


def test_markup_that_slipped_past_the_escaping_still_runs_nothing(tmp_path, browser):
    """The second wall: were a value ever written unescaped, the page's Content-Security-Policy
    keeps the browser from running an inline script, an event handler or a javascript: URL, and
    from loading anything from the network."""
    cfg = fake_run(tmp_path / "run", decision=None)
    html = build(cfg, "now").html
    injected = ('<script>document.body.append("SCRIPT-RAN")</script>'
                '<img src="x.png" onerror="document.body.append(\'HANDLER-RAN\')">'
                '<iframe src="javascript:document.body.append(\'URL-RAN\')"></iframe>'
                '<img src="https://example.com/beacon.png"><audio src="http://127.0.0.1:9/x.wav"></audio>')
    html.write_text(html.read_text().replace("</body>", injected + "</body>"))
    page = browser.load(html, tmp_path / "injected.png", settle=8)
    assert "RAN" not in page.text, page.text[-500:]
    blocked = [e for e in page.errors if "Content Security Policy" in e and "has been blocked" in e]
    for what in ("inline script", "inline event handler", "JavaScript URL", "https://example.com/", "http://127.0.0.1:9/"):
        assert any(what in e for e in blocked), (what, page.errors)
