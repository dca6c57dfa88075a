"""daemon/evaluation.py: the completion runs once for a run, however the run was brought back."""
from __future__ import annotations

from datetime import datetime, timezone

from conftest import RecordingLog, write_config
from daemon import journal
from daemon.common.clock import Clock
from daemon.common.config import load_config
from daemon.evaluation import Evaluation
from daemon.reports import RunView
from daemon.state import open_run

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def test_a_completed_run_rebuilt_from_the_journal_does_not_complete_again(tmp_path):
    """Found by the hostile pass: state.json lost after a completion, the run rebuilt from the
    journal, the worker (all epochs done) exits 0 again: the final evaluation, the export and the
    "training completed" alert (and its completion action: a shutdown) all ran a second time."""
    cfg = load_config(write_config(tmp_path))
    cfg.run.state_dir.mkdir(parents=True)
    milestone = {"due_at": "2026-12-30T00:00:00Z", "status": "scheduled",
                 "completion": {"status": "done", "report": "/x/completion_report.json", "exported": True}}
    journal.append(cfg.state_file.with_name(journal.NAME),
                   journal.record("run-9", "2026-11-01T00:00:00Z", None, [], milestone, "2026-12-01T11:00:00Z"))
    log = RecordingLog()
    state = open_run(cfg.state_file, NOW, log)  # no state.json: rebuilt from the journal
    assert state.run_id == "run-9"
    evaluation = Evaluation(cfg, log, Clock(), state.milestone, state.started_at)
    evaluation.complete()  # what the supervisor does when the worker exits 0
    run = RunView(state.started_at, 240, 240, 1.4, 3.0, {"total_usd": 3.0})
    assert evaluation.step(False, False, run) == [] and not evaluation.busy, "no final evaluation, no export"
    assert evaluation.state["completion"]["status"] == "done"
    assert ("info", "completion.already_done") in log.pairs()


def test_a_completion_cut_short_runs_again(tmp_path):
    cfg = load_config(write_config(tmp_path))
    log = RecordingLog()
    evaluation = Evaluation(cfg, log, Clock(), {"completion": {"status": "running"}}, "2026-11-01T00:00:00Z")
    evaluation.complete()
    assert evaluation.final_pending
