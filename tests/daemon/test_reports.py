"""daemon/reports.py: a report that cannot be written costs the file, never the decision's action."""
from __future__ import annotations

import dataclasses

from conftest import write_config
from daemon.actions import SendAlert, Shutdown
from daemon.common.config import load_config
from daemon.reports import RunView, completion


def test_a_completion_on_a_disk_that_refuses_the_report_still_alerts_and_shuts_down(tmp_path):
    """Seen in the chaos suite (seed 527121937): the completion report on a read-only state dir
    raised in the tick, so the completion's mail and shutdown action never came."""
    cfg = load_config(write_config(tmp_path, {"milestone": {"completion_action": "poweroff"}}))
    (tmp_path / "blocker").write_text("a file where the reports directory should be")
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, state_dir=tmp_path / "blocker"))
    run = RunView("2026-12-01T00:00:00Z", 240, 240, 1.4, 3.0, {"total_usd": 3.0})
    update, actions = completion(cfg, None, True, run, {}, "2026-12-02T00:00:00Z")
    assert update["status"] == "done" and "NOT WRITTEN" in update["report"]
    assert any(isinstance(a, SendAlert) and "NOT WRITTEN" in a.body for a in actions)
    assert any(isinstance(a, Shutdown) for a in actions)
