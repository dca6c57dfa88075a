"""The milestone, carried out: scheduled to survive restarts, evaluated in a child process,
decided by the pure rule in daemon/milestone.py, and acted on.

The job lives in APScheduler's SQLAlchemyJobStore (SQLite in the state directory) with
misfire_grace_time=None and coalesce=True: a restart keeps it, and a daemon that was down when
it came due runs it once at start-up. state.json's `milestone` records its status, so a job
that has run is never added again. While it runs (a few steps advanced by the tick, never
blocking the scheduler thread): pause the worker when it shares a GPU, run `amapiano-train
evaluate`, decide, write week_5_metrics.json (and abort_report.json on NO-GO), email, act.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .actions import SendAlert, Shutdown, StopWorker
from .common.atomic import write_json_atomic
from .common.clock import iso, parse_iso
from .milestone import CONDITIONAL, GO, NO_GO, MilestoneSnapshot, decide
from .common import checkpoints
from .common.atomic import read_json
from .common.launch import python_command, spawn

if TYPE_CHECKING:
    from .supervisor import Supervisor

_ACTIVE: "Evaluation | None" = None
JOB_ID = "milestone"


def milestone_due(config_path: str) -> None:
    """The persistent job's target (a module-level function, so the job store can name it)."""
    if _ACTIVE is not None:
        _ACTIVE.begin()


@dataclass
class Run:
    stage: str                      # "pausing" -> "evaluating" [-> "exporting" for the final one]
    paused: bool
    final: bool = False             # the run completed: evaluate, export, report, shut down
    proc: subprocess.Popen | None = None
    out: str = ""
    metrics: dict | None = None
    waiting: bool = False           # due before the worker's first checkpoint: logged once


class Evaluation:
    def __init__(self, sup: "Supervisor"):
        global _ACTIVE
        self.sup, self.cfg, self.log, self.clock = sup, sup.cfg, sup.log, sup.clock
        self.state: dict = dict(sup.state.milestone or {})
        self.run: Run | None = None
        self.final_pending = False
        _ACTIVE = self

    # -- scheduling ----------------------------------------------------------------------------
    def jobstore(self):
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

        self.cfg.run.state_dir.mkdir(parents=True, exist_ok=True)
        return SQLAlchemyJobStore(url=f"sqlite:///{self.cfg.run.state_dir / 'jobs.sqlite'}")

    def schedule(self, scheduler) -> None:
        due = parse_iso(self.sup.state.started_at) + timedelta(seconds=self.cfg.milestone.after)
        if self.state.get("status") == "done" and self.state.get("decision") != CONDITIONAL:
            return
        if self.state.get("status") == "done":  # CONDITIONAL GO: evaluated again every few days
            due = parse_iso(self.state["decided_at"]) + timedelta(seconds=self.cfg.milestone.conditional_every)
        existing = scheduler.get_job(JOB_ID, jobstore="persistent")
        if existing is None:
            scheduler.add_job(milestone_due, "date", run_date=due, args=[str(self.cfg.source)], id=JOB_ID,
                              jobstore="persistent", misfire_grace_time=None, coalesce=True, max_instances=1)
        else:
            due = existing.next_run_time
        # The store may already have run an overdue job (at scheduler start): keep its status.
        self.state.update(due_at=iso(due), status=self.state.get("status")
                          if self.state.get("status") in ("done", "running") else "scheduled")
        self.log.info("milestone.scheduled", due_at=iso(due), persistent=str(self.cfg.run.state_dir / "jobs.sqlite"))

    # -- running -------------------------------------------------------------------------------
    def complete(self) -> None:
        """All epochs done: the final evaluation and the export, then the completion report
        (after a milestone evaluation in progress, if there is one)."""
        self.final_pending = True
        self.state["completion"] = {"status": "pending", "requested_at": iso(self.clock.now())}
        self.step()

    def begin(self) -> None:
        if self.run is not None:
            return
        paused = self.sup.guards.gpu.available and self.sup.worker.running  # they cannot share the GPU
        self.state.update(status="running", started_at=iso(self.clock.now()))
        self.log.info("milestone.evaluating", pause_worker=paused, due_at=self.state.get("due_at"))
        if paused:
            self.sup.hold_worker("milestone evaluation", pause=True)
            self.sup.request_worker_checkpoint_and_exit()
        self.run = Run(stage="pausing", paused=paused)
        self.step()

    def step(self) -> None:
        """Advance a running evaluation; called every tick."""
        if self.run is None and self.final_pending:
            self.final_pending = False
            self.state["completion"] = {"status": "running", "started_at": iso(self.clock.now())}
            self.log.info("completion.evaluating")
            self.run = Run(stage="pausing", paused=False, final=True)
        r = self.run
        if r is None:
            return
        if r.stage == "pausing":
            if r.paused and self.sup.worker.running:
                return
            if checkpoints.newest(self.cfg.checkpoint_dir) is None:  # due before the first checkpoint
                if not r.waiting:
                    r.waiting = True
                    self.log.info("milestone.waiting_for_checkpoint", checkpoint_dir=str(self.cfg.checkpoint_dir))
                return
            self.cfg.reports_dir.mkdir(parents=True, exist_ok=True)
            r.out = str(self.cfg.reports_dir / ("final_eval.json" if r.final else "milestone_eval.json"))
            r.proc = spawn(python_command("trainer.evaluate", "--config", str(self.cfg.source),
                                          "--out", r.out, "--no-progress", "--log-format", "json"))
            r.stage = "evaluating"
            return
        if r.stage in ("evaluating", "exporting") and r.proc.poll() is None:
            return
        if r.final:
            self._final_step(r)
            return
        self.run = None
        metrics = read_json(Path(r.out)) if r.proc.returncode == 0 else None
        if metrics is None:
            self.state.update(status="failed", error=f"evaluate exited {r.proc.returncode}")
            self.log.error("milestone.evaluation_failed", exit=r.proc.returncode,
                           note="the run goes on; evaluate by hand: amapiano-train evaluate")
            self.sup.guards.execute([SendAlert("milestone", "milestone evaluation failed",
                                               f"`amapiano-train evaluate` exited {r.proc.returncode}; "
                                               "training goes on. Run it by hand to see why.")])
            if r.paused:
                self.sup.release_worker()
            return
        self.decide(metrics, r.paused)

    def _final_step(self, r: Run) -> None:
        if r.stage == "evaluating":
            r.metrics = read_json(Path(r.out)) if r.proc.returncode == 0 else None
            if r.metrics is None:
                self.log.error("completion.evaluation_failed", exit=r.proc.returncode)
            r.proc = spawn(python_command("trainer.export", "--config", str(self.cfg.source),
                                          "--out", str(self.cfg.reports_dir / "export"), "--log-format", "json"),
                           stdout=subprocess.DEVNULL)
            r.stage = "exporting"
            return
        self.run = None
        exported = r.proc.returncode == 0
        if not exported:
            self.log.error("completion.export_failed", exit=r.proc.returncode,
                           note="export by hand: python -m trainer.export --config ...")
        t, cost = self.sup.state.trainer, self.sup.state.cost or {}
        export_dir = self.cfg.reports_dir / "export"
        report = {"completed_at": iso(self.clock.now()), "steps": t.step, "best_val_loss": t.best_val_loss,
                  "final_evaluation": r.metrics, "export": {"transformers": str(export_dir / "best_model"),
                                                            "audiocraft": str(export_dir / "state_dict.bin")}
                  if exported else None,
                  "spend": cost, "started_at": self.sup.state.started_at, "milestone": dict(self.state)}
        path = self.cfg.reports_dir / "completion_report.json"
        write_json_atomic(path, report)
        self.state["completion"] = {"status": "done", "report": str(path), "exported": exported}
        auth = ((r.metrics or {}).get("model") or {}).get("authenticity") or {}
        action = self.cfg.milestone.completion_action
        body = (f"All {t.total_steps} steps done; best validation loss {t.best_val_loss}; authenticity "
                f"{auth.get('mean_pct')}; spent ${cost.get('total_usd', 0):,.2f}.\nReport: {path}\n"
                + (f"Model: {export_dir}/best_model (transformers) and state_dict.bin (audiocraft)\n" if exported
                   else "The export FAILED: see the journal.\n")
                + (f"Next: the shutdown action '{action}'." if action != "none" else
                   "The instance stays up (completion action 'none'); the idle rule applies."))
        self.log.warning("completion.done", report=str(path), exported=exported, action=action)
        actions: list[Any] = [SendAlert("completed", "training completed", body)]
        if action != "none":
            actions.append(Shutdown(action, "training completed"))
        self.sup.guards.execute(actions)

    def decide(self, metrics: dict, paused: bool) -> None:
        m, cost = self.cfg.milestone, self.sup.guards.ledger
        auth = metrics["model"]["authenticity"]
        snap = MilestoneSnapshot(auth.get("mean_pct"), tuple(auth["ci95_pct"]) if auth.get("mean_pct") is not None
                                 else None, cost.total_usd if cost else None, metrics["model"].get("val_loss"),
                                 m.min_authenticity_pct, m.max_cost_usd, m.max_val_loss, m.margin_pct / 100)
        verdict = decide(snap)
        now = iso(self.clock.now())
        report = {**metrics, "thresholds": {"min_authenticity_pct": m.min_authenticity_pct,
                                            "max_cost_usd": m.max_cost_usd, "max_val_loss": m.max_val_loss,
                                            "margin_pct": m.margin_pct},
                  "cost_usd": snap.cost_usd, "decision": verdict.decision, "reasons": list(verdict.reasons),
                  "checks": verdict.checks, "decided_at": now, "dry_run": m.dry_run}
        path = self.cfg.reports_dir / "week_5_metrics.json"
        write_json_atomic(path, report)
        self.state.update(status="done", decision=verdict.decision, reasons=list(verdict.reasons),
                          report=str(path), decided_at=now)
        self.log.warning("milestone.decided", decision=verdict.decision, reasons=list(verdict.reasons),
                         report=str(path), dry_run=m.dry_run)
        body = f"Decision: {verdict.decision}\n" + "\n".join(f"- {r}" for r in verdict.reasons) + f"\nReport: {path}"
        actions: list[Any] = []
        if verdict.decision == NO_GO:
            abort = self.cfg.reports_dir / "abort_report.json"
            write_json_atomic(abort, self._abort_report(report))
            self.state["abort_report"] = str(abort)
            actions += [SendAlert("milestone", "milestone: NO-GO, stopping the run", body + f"\nAbort report: {abort}")]
            if m.dry_run:
                self.log.warning("milestone.dry_run", would=["checkpoint and stop the worker",
                                                             f"shutdown action '{self.cfg.budget.action}'"])
            else:
                actions += [StopWorker("milestone NO-GO"), Shutdown(self.cfg.budget.action, "milestone NO-GO")]
        else:
            what = "training goes on" if verdict.decision == GO else (
                f"training goes on with a new evaluation every {self.cfg.milestone.conditional_every / 86400:g} days")
            actions.append(SendAlert("milestone", f"milestone: {verdict.decision}", f"{body}\n{what}."))
            if paused:
                self.sup.release_worker()
            if verdict.decision == CONDITIONAL and self.sup._scheduler is not None:
                self.schedule(self.sup._scheduler)
        self.sup.guards.execute(actions)
        self.sup.guards.tb_scalars({"milestone/authenticity_pct": auth.get("mean_pct"),
                                    "milestone/decision": {GO: 2, CONDITIONAL: 1, NO_GO: 0}[verdict.decision]})

    def _abort_report(self, report: dict) -> dict:
        top = checkpoints.best(self.cfg.checkpoint_dir)
        newest = checkpoints.newest(self.cfg.checkpoint_dir)
        t = self.sup.state.trainer
        return {"decision": NO_GO, "reasons": report["reasons"], "metrics": {k: report[k] for k in
                                                                             ("model", "baseline", "checkpoint")},
                "spend": self.sup.state.cost, "timeline": {"started_at": self.sup.state.started_at,
                                                           "milestone_due_at": self.state.get("due_at"),
                                                           "decided_at": report["decided_at"], "step": t.step,
                                                           "total_steps": t.total_steps},
                "best_checkpoint": top and {"path": str(top.path), "step": top.step, "val_loss": top.val_loss},
                "newest_checkpoint": str(newest.path) if newest else None,
                "recommended_next_step": _recommend(report["checks"])}

    def to_json(self) -> dict | None:
        return dict(self.state) or None


def _recommend(checks: dict) -> str:
    if checks.get("authenticity") == "miss":
        return ("The model does not sound Amapiano-like enough: review the proxy tags (`dataset select` counts), "
                "add real Amapiano reference clips, or change the conditioning before spending more.")
    if checks.get("val_loss") == "miss":
        return "Validation loss is too high: check the data and the learning rate on a short run before resuming."
    return "Spend is over the milestone cap: raise [milestone] max_cost_usd deliberately, or stop here."
