"""daemon/status.py: the status screen points a person at the page to open (the HTML report),
not only at the JSON the decision was taken from."""
from __future__ import annotations

from datetime import datetime, timezone

from conftest import cli
from daemon.state import State, save_state

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
REPORTS = "/var/lib/amapiano-train/reports"


def screen_of(tmp_path, milestone: dict) -> str:
    state = State.new(NOW)
    state.phase = "HALTED"
    state.milestone = milestone
    path = tmp_path / "state.json"
    save_state(path, state, NOW)
    shown = cli("status", "--state", str(path))
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def test_status_names_the_html_reports_beside_their_json(tmp_path):
    out = screen_of(tmp_path, {
        "status": "done", "decision": "NO-GO", "due_at": "2026-12-01T00:00:00Z", "report": f"{REPORTS}/week_5_metrics.json",
        "html_report": f"{REPORTS}/week_5_report.html",
        "completion": {"status": "done", "report": f"{REPORTS}/completion_report.json",
                       "html_report": f"{REPORTS}/completion_report.html", "exported": True}})
    milestone = next(line for line in out.splitlines() if "week_5" in line)
    assert f"{REPORTS}/week_5_report.html" in milestone and "week_5_metrics.json" in milestone
    completion = next(line for line in out.splitlines() if "completion_report" in line)
    assert f"{REPORTS}/completion_report.html" in completion and "completion_report.json" in completion


def test_status_says_how_to_build_a_report_that_failed(tmp_path):
    """A report that failed or timed out (html_report null) costs the page, not the screen: it
    says the JSON and the command that builds the page."""
    out = screen_of(tmp_path, {"status": "done", "decision": "GO", "report": f"{REPORTS}/week_5_metrics.json",
                               "html_report": None})
    line = next(line for line in out.splitlines() if "week_5_metrics.json" in line)
    assert "amapiano-train report --kind milestone" in line
