"""daemon/evaluation.py and the HTML report: after the milestone's and the completion's decision
the supervisor builds the report in a child (`python -m daemon.report`), never on its scheduler
thread, bounded in time; the decision, its state and its actions wait for it and then carry it.
A report that fails or hangs costs the report, never the decision."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from conftest import RecordingLog
import daemon.evaluation as evaluation
from daemon.actions import SendAlert, Shutdown, StopWorker
from daemon.common.clock import Clock
from daemon.evaluation import Evaluation, Run
from daemon.reports import RunView
from report_run import fake_run, metrics


RUN = RunView("2026-11-02T08:00:00Z", 120, 240, 2.1, 41.0, {"total_usd": 41.0})


def finished_child() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc


def decided(tmp_path, decision: str = "CONDITIONAL GO", final: bool = False, **milestone):
    """A run whose evaluation child has just exited 0 with its metrics JSON written."""
    cfg = fake_run(tmp_path, decision=None)
    if milestone:
        import dataclasses

        cfg = dataclasses.replace(cfg, milestone=dataclasses.replace(cfg.milestone, **milestone))
    out = cfg.reports_dir / ("final_eval.json" if final else "milestone_eval.json")
    figures = metrics(cfg.reports_dir, decision, name=out.stem)
    out.write_text(json.dumps({k: v for k, v in figures.items() if k not in ("decision", "reasons", "checks")}))
    log = RecordingLog()
    ev = Evaluation(cfg, log, Clock(), {"due_at": "2026-11-03T04:00:00Z"}, RUN.started_at)
    ev.state["status"] = "running"  # as begin() leaves it
    ev.run = Run(stage="exporting" if final else "evaluating", paused=False, final=final, proc=finished_child(),
                 out=str(out), metrics=figures if final else None)
    return cfg, ev, log


def until_actions(ev: Evaluation, timeout: float = 120.0) -> tuple[list, float]:
    """Tick as the scheduler does (every 0.1 s) until the decision's actions come; the longest
    step() took, to show nothing waited on the child."""
    deadline, longest = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        started = time.monotonic()
        actions = ev.step(False, False, RUN)
        longest = max(longest, time.monotonic() - started)
        if actions or not ev.busy:
            return actions, longest
        time.sleep(0.1)
    raise AssertionError("no decision in time")


def test_the_milestone_waits_for_its_report_then_mails_its_path(tmp_path):
    cfg, ev, log = decided(tmp_path, "NO-GO", max_val_loss=2.0)
    first = ev.step(False, False, RUN)
    assert first == [] and ev.busy and ev.state["status"] == "running", "the decision waits for its report"
    actions, longest = until_actions(ev)
    assert longest < 1.0, "a step waited on the report child"
    assert ev.state["status"] == "done" and ev.state["decision"] == "NO-GO" and not ev.busy
    html = cfg.reports_dir / "week_5_report.html"
    assert html.exists() and ev.state["html_report"] == str(html)
    mail = next(a for a in actions if isinstance(a, SendAlert))
    assert str(html) in mail.body and "open it in a browser" in mail.body
    assert mail.attachments == (str(cfg.reports_dir / "week_5_report.zip"), str(html))  # the zip while it fits
    assert any(isinstance(a, StopWorker) for a in actions) and any(isinstance(a, Shutdown) for a in actions)
    assert (cfg.tensorboard_dir / "evaluation").is_dir()  # the figures, at the evaluated step


def test_a_report_that_fails_costs_the_report_never_the_decision(tmp_path):
    cfg, ev, log = decided(tmp_path, "NO-GO", max_val_loss=2.0)
    (cfg.reports_dir / "week_5_report.html").mkdir()  # the page cannot be put in place: the child exits 65
    actions, _ = until_actions(ev)
    assert ev.state["decision"] == "NO-GO" and any(isinstance(a, Shutdown) for a in actions)
    mail = next(a for a in actions if isinstance(a, SendAlert))
    assert "could not be written" in mail.body and "amapiano-train report --kind milestone" in mail.body
    assert "report.failed" in log.names() and ev.state.get("html_report") is None and mail.attachments == ()


def test_a_report_past_its_time_is_stopped_and_the_decision_goes_out(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation, "REPORT_LIMIT_S", 0.0)
    cfg, ev, log = decided(tmp_path, "GO", min_authenticity_pct=10.0, max_cost_usd=1000.0)
    ev.step(False, False, RUN)
    child = ev.run.proc
    actions, _ = until_actions(ev)
    assert child.poll() is not None, "the child was stopped"
    assert "report.timed_out" in log.names() and ev.state["decision"] == "GO"
    assert any(isinstance(a, SendAlert) and "could not be written" in a.body for a in actions)


def test_the_completion_waits_for_its_report_then_mails_its_path(tmp_path):
    cfg, ev, log = decided(tmp_path, "GO", final=True)
    ev.state["completion"] = {"status": "running"}
    assert ev.step(False, False, RUN) == [] and ev.state["completion"]["status"] == "running"
    actions, _ = until_actions(ev)
    assert ev.state["completion"]["status"] == "done"
    html = cfg.reports_dir / "completion_report.html"
    assert html.exists() and ev.state["completion"]["html_report"] == str(html)
    assert any(isinstance(a, SendAlert) and str(html) in a.body for a in actions)


def test_stopping_the_daemon_stops_the_report_child(tmp_path):
    cfg, ev, log = decided(tmp_path)
    ev.step(False, False, RUN)
    assert ev.run.stage == "reporting"
    child = ev.run.proc
    ev.terminate()
    assert child.poll() is not None


def test_the_next_evaluation_is_timed_from_the_decision_not_from_its_report(tmp_path):
    """Found by tests/system/test_milestone_process.py: a CONDITIONAL GO's next evaluation came
    `conditional_every` after the report was written, seconds after the decision."""
    from daemon.common.clock import parse_iso

    cfg, ev, log = decided(tmp_path, min_authenticity_pct=0.0, max_cost_usd=1000.0, margin_pct=100.0)
    until_actions(ev)
    assert ev.state["decision"] == "CONDITIONAL GO"
    gap = parse_iso(ev.state["due_at"]) - parse_iso(ev.state["decided_at"])
    assert gap.total_seconds() == cfg.milestone.conditional_every
