"""The milestone and the completion, carried out: due times kept as plain data, the evaluation
and the export run as child processes, their figures handed to daemon/reports.py.

The milestone's due time lives in state.json (`milestone.due_at`), never in a pickled job
store: a restart keeps it, a daemon that was down when it came due runs it once at start-up,
and nothing a bucket or a person's file can hold is ever unpickled. `[milestone] at` as a share
of training or an epoch has no time until the heartbeat's step reaches it (daemon/rules/milestone.py
decides; `due_forecast` says when); after a CONDITIONAL GO or an INCONCLUSIVE, `due_at` is the
next attempt's time. While an evaluation runs
(a few stages advanced by the tick, never blocking the scheduler thread): pause the worker when
it shares a GPU, run `python -m trainer.evaluation evaluate`, decide, report, act. The HTML report
(`python -m daemon.report`, a child bounded in time: matplotlib never enters this process) comes
between the decision and its actions, so the decision's mail carries it; a report that fails or
hangs costs the report, never the decision.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from . import reports
from .report import NAMES
from .actions import Action, PauseWorker, ReleaseWorker, SendAlert
from .common import checkpoints
from .common.atomic import read_json
from .common.clock import iso, parse_iso
from .common.config import Config, parse_milestone_at
from .common.launch import python_command, spawn
from .rules.milestone import CONDITIONAL, INCONCLUSIVE, Progress, forecast, is_due

AGAIN = (CONDITIONAL, INCONCLUSIVE)  # decisions after which the milestone runs again

CHILD = "trainer.evaluation"   # python -m trainer.evaluation evaluate|export ...
REPORT = "daemon.report"       # python -m daemon.report --kind milestone|completion: the HTML report
REPORT_LIMIT_S = 180.0         # a report takes seconds; past this the decision goes out without it


@dataclass
class Run:
    stage: str                      # "pausing" -> "evaluating" [-> "exporting"] -> "reporting"
    paused: bool
    final: bool = False             # the run completed: evaluate, export, report, shut down
    proc: subprocess.Popen | None = None
    out: str = ""
    metrics: dict | None = None
    waiting: bool = False           # due before the worker's first checkpoint: logged once
    actions: list[Action] = field(default_factory=list)
    update: dict | None = None      # the decision, held with its actions while its HTML report is written
    deadline: float = 0.0


class Evaluation:
    def __init__(self, cfg: Config, log: Any, clock: Any, state: dict | None, started_at: str,
                 log_format: str = "json"):
        self.cfg, self.log, self.clock, self.log_format = cfg, log, clock, log_format
        self.state: dict = dict(state or {})
        self.run: Run | None = None
        self.final_pending = False
        self.started = parse_iso(started_at)
        self._schedule(self.started)

    def _schedule(self, started: datetime) -> None:
        s = self.state
        if s.get("status") == "running":   # the daemon died mid-evaluation: run it again
            s["status"] = "scheduled"
        if s.get("status") == "done" and s.get("decision") not in AGAIN:
            return
        kind, value = self.cfg.milestone.when
        s["at"] = self.cfg.milestone.at if (kind, value) == parse_milestone_at(self.cfg.milestone.at) else f"{value:g}s"
        if not isinstance(s.get("due_at"), str) and kind == "duration":
            s["due_at"] = iso(started + timedelta(seconds=value))
        s.setdefault("status", "scheduled")
        self.log.info("milestone.scheduled", due_at=s.get("due_at"), at=s["at"], status=s["status"])

    @property
    def busy(self) -> bool:
        return self.run is not None

    def due(self, now: datetime, run: reports.RunView | None = None) -> bool:
        """A set due time has passed, or (none set) the heartbeat's step reached `[milestone] at`."""
        s = self.state
        if self.run is not None or not (s.get("status") == "scheduled" or
                                        (s.get("status") == "done" and s.get("decision") in AGAIN)):
            return False
        if isinstance(s.get("due_at"), str):
            return now >= parse_iso(s["due_at"])
        progress = Progress(now, self.started, run.step if run else None, run.total_steps if run else None,
                            self.cfg.train.epochs)
        when = self.cfg.milestone.when
        if s.get("status") == "scheduled":
            at = forecast(when, progress)
            s["due_forecast"] = iso(at) if at else None
        return is_due(when, progress)

    def complete(self) -> None:
        """All epochs done: the final evaluation and the export, then the completion report
        (after a milestone evaluation in progress, if there is one). Once only: a run that completed
        before (its worker exits 0 again at every start) is not evaluated, exported or announced again."""
        if (self.state.get("completion") or {}).get("status") == "done":
            self.log.info("completion.already_done", report=self.state["completion"].get("report"))
            return
        self.final_pending = True
        self.state["completion"] = {"status": "pending", "requested_at": iso(self.clock.now())}

    def begin(self, worker_running: bool, gpu_available: bool) -> list[Action]:
        paused = gpu_available and worker_running  # they cannot share the GPU
        self.state.update(status="running", started_at=iso(self.clock.now()))
        self.log.info("milestone.evaluating", pause_worker=paused, due_at=self.state.get("due_at"))
        self.run = Run(stage="pausing", paused=paused)
        return [PauseWorker("milestone evaluation")] if paused else []

    def step(self, worker_running: bool, gpu_available: bool, run: reports.RunView) -> list[Action]:
        """Advance: start a due evaluation, or move a running one a stage on. Returns actions."""
        if self.run is None and self.final_pending:
            self.final_pending = False
            self.state["completion"] = {"status": "running", "started_at": iso(self.clock.now())}
            self.log.info("completion.evaluating")
            self.run = Run(stage="pausing", paused=False, final=True)
        if self.run is None and self.due(self.clock.now(), run):
            return self.begin(worker_running, gpu_available)
        r = self.run
        if r is None:
            return []
        if r.stage == "pausing":
            return self._launch(r, worker_running)
        if r.stage == "reporting":
            return self._reported(r)
        if r.proc is not None and r.proc.poll() is None:
            return []
        return self._final_step(r, run) if r.final else self._milestone_done(r, run)

    def _launch(self, r: Run, worker_running: bool) -> list[Action]:
        if r.paused and worker_running:
            return []
        if checkpoints.newest(self.cfg.checkpoint_dir) is None:  # due before the first checkpoint
            if not r.waiting:
                r.waiting = True
                self.log.info("milestone.waiting_for_checkpoint", checkpoint_dir=str(self.cfg.checkpoint_dir))
            if r.paused:
                r.paused = False
                return [ReleaseWorker("milestone waits for a checkpoint")]
            return []
        self.cfg.reports_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        r.out = str(self.cfg.reports_dir / ("final_eval.json" if r.final else "milestone_eval.json"))
        r.proc = spawn(python_command(CHILD, "evaluate", "--config", str(self.cfg.source), "--out", r.out,
                                      "--no-progress", "--log-format", self.log_format))
        r.stage = "evaluating"
        return []

    def _milestone_done(self, r: Run, run: reports.RunView) -> list[Action]:
        self.run = None
        metrics = read_json(Path(r.out)) if r.proc.returncode == 0 else None
        if metrics is None or not isinstance(metrics.get("model"), dict):
            self.state.update(status="failed", error=f"evaluate exited {r.proc.returncode}")
            self.log.error("milestone.evaluation_failed", exit=r.proc.returncode,
                           note="the run goes on; evaluate by hand: amapiano-train evaluate")
            actions: list[Action] = [SendAlert("milestone", "milestone evaluation failed",
                                               f"`amapiano-train evaluate` exited {r.proc.returncode}; "
                                               "training goes on. Run it by hand to see why.")]
            return actions + ([ReleaseWorker("milestone evaluation failed")] if r.paused else [])
        now = iso(self.clock.now())
        update, actions = reports.milestone(self.cfg, metrics, run, r.paused, now, self.state.get("due_at"))
        return self._report(r, "milestone", update, actions)

    def _decided(self, update: dict) -> None:
        self.state.update(update)
        if update["decision"] in AGAIN:
            again = self.cfg.milestone.conditional_every if update["decision"] == CONDITIONAL else self.cfg.milestone.retry_every
            self.state["due_at"] = iso(parse_iso(update["decided_at"]) + timedelta(seconds=again))  # not the report's end
        self.log.warning("milestone.decided", decision=update["decision"], reasons=update["reasons"],
                         report=update["report"], dry_run=self.cfg.milestone.dry_run)
        if update["decision"] == "NO-GO" and self.cfg.milestone.dry_run:
            self.log.warning("milestone.dry_run", would=["checkpoint and stop the worker",
                                                         f"shutdown action '{self.cfg.budget.action}'"])

    def _final_step(self, r: Run, run: reports.RunView) -> list[Action]:
        if r.stage == "evaluating":
            r.metrics = read_json(Path(r.out)) if r.proc.returncode == 0 else None
            if r.metrics is None:
                self.log.error("completion.evaluation_failed", exit=r.proc.returncode)
            r.proc = spawn(python_command(CHILD, "export", "--config", str(self.cfg.source),
                                          "--out", str(self.cfg.reports_dir / "export"), "--log-format", self.log_format),
                           stdout=subprocess.DEVNULL)
            r.stage = "exporting"
            return []
        self.run = None
        exported = r.proc.returncode == 0
        if not exported:
            self.log.error("completion.export_failed", exit=r.proc.returncode,
                           note="export by hand: amapiano-train export --config ...")
        update, actions = reports.completion(self.cfg, r.metrics, exported, run, dict(self.state), iso(self.clock.now()))
        return self._report(r, "completion", update, actions)

    def _completed(self, update: dict) -> None:
        self.state["completion"] = update
        self.log.warning("completion.done", report=update["report"], exported=update["exported"],
                         action=self.cfg.milestone.completion_action, html_report=update.get("html_report"))

    def _report(self, r: Run, kind: str, update: dict, actions: list[Action]) -> list[Action]:
        """Start the HTML report's child; the decision (state and actions) waits for it."""
        self.run, r.update, r.actions, r.stage, r.out = r, update, actions, "reporting", kind
        r.deadline = self.clock.monotonic() + REPORT_LIMIT_S
        try:
            r.proc = spawn(python_command(REPORT, "--config", str(self.cfg.source), "--kind", kind, "--scalars",
                                          "--log-format", self.log_format))
        except OSError as e:  # no process to be had: the decision goes on without its page
            self.log.error("report.failed", kind=kind, error=str(e))
            r.proc = None
        return [] if r.proc is not None else self._reported(r)

    def _reported(self, r: Run) -> list[Action]:
        """The report's child is done, failed or past its time: apply the decision, mail it with the page."""
        kind, proc = r.out, r.proc
        if proc is not None and proc.poll() is None:
            if self.clock.monotonic() < r.deadline:
                return []
            proc.kill()
            proc.wait(10)
            self.log.error("report.timed_out", kind=kind, limit_s=REPORT_LIMIT_S)
        elif proc is not None and proc.returncode != 0:
            self.log.error("report.failed", kind=kind, exit=proc.returncode)
        self.run = None
        html = self.cfg.reports_dir / f"{NAMES[kind]}.html"
        html = html if proc is not None and proc.returncode == 0 and html.is_file() else None
        update = {**(r.update or {}), "html_report": str(html) if html else None}
        (self._decided if kind == "milestone" else self._completed)(update)
        return reports.with_html(self.cfg, r.actions, html, kind)

    def terminate(self) -> None:
        """On the way out: a running child is stopped; it runs again at the next start."""
        if self.run is not None and self.run.proc is not None and self.run.proc.poll() is None:
            self.run.proc.terminate()
            try:
                self.run.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.run.proc.kill()

    def scalars(self) -> dict[str, float | None]:
        decision = self.state.get("decision")
        return {"milestone/decision": reports.DECISION_SCALAR.get(decision) if decision else None,
                "milestone/authenticity_pct": self.state.get("authenticity_pct")}

    def to_json(self) -> dict | None:
        return dict(self.state) or None
