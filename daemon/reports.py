"""What the milestone and completion leave behind: the decision applied to the evaluation's
figures, week_5_metrics.json, abort_report.json and completion_report.json, and the actions
each outcome asks for. Pure functions of their inputs, except the atomic report writes."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .actions import Action, ReleaseWorker, SendAlert, Shutdown, StopWorker
from .common import checkpoints
from .common.atomic import write_json_atomic
from .common.config import Config
from .ports.aws import reports_key
from .rules.milestone import CONDITIONAL, GO, INCONCLUSIVE, NO_GO, Evidence, MilestoneSnapshot, decide

DECISION_SCALAR = {GO: 2, CONDITIONAL: 1, NO_GO: 0, INCONCLUSIVE: -1}


@dataclass(frozen=True)
class RunView:
    """What the reports need to know of the run, read by the supervisor."""

    started_at: str
    step: int | None
    total_steps: int | None
    best_val_loss: float | None
    spent_usd: float | None
    cost: dict | None


def _pair(value: Any) -> tuple[float, float] | None:
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
    return (float(value[0]), float(value[1])) if ok else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def snapshot(cfg: Config, metrics: dict, spent_usd: float | None) -> MilestoneSnapshot:
    """The evaluation's JSON (a child's output: checked, never trusted) as the rule's input."""
    m, auth = cfg.milestone, (metrics.get("model") or {}).get("authenticity") or {}
    c = metrics.get("comparison") if isinstance(metrics.get("comparison"), dict) else {}
    count = lambda key: int(c[key]) if isinstance(c.get(key), int) else 0  # noqa: E731
    evidence = Evidence(n=count("n"), failed=count("failed"), identical=count("identical"), silent=count("silent"),
                        improvement_mean=_number(c.get("improvement_pct")), improvement_ci=_pair(c.get("ci95_pct")),
                        p_value=_number(c.get("p_value")))
    mean = _number(auth.get("mean_pct"))
    return MilestoneSnapshot(mean, _pair(auth.get("ci95_pct")) if mean is not None else None, spent_usd,
                             _number(metrics["model"].get("val_loss")), m.min_authenticity_pct, m.max_cost_usd,
                             m.max_val_loss, m.margin_pct / 100, evidence, m.alpha)


def milestone(cfg: Config, metrics: dict, run: RunView, paused: bool, now: str,
              due_at: str | None) -> tuple[dict, list[Action]]:
    """Decide on the evaluation's figures; write the reports; return (state update, actions)."""
    m = cfg.milestone
    auth = metrics["model"]["authenticity"]
    snap = snapshot(cfg, metrics, run.spent_usd)
    verdict = decide(snap)
    report = {**metrics, "thresholds": {"min_authenticity_pct": m.min_authenticity_pct,
                                        "max_cost_usd": m.max_cost_usd, "max_val_loss": m.max_val_loss,
                                        "margin_pct": m.margin_pct, "alpha": m.alpha},
              "cost_usd": snap.cost_usd, "decision": verdict.decision, "reasons": list(verdict.reasons),
              "checks": verdict.checks, "decided_at": now, "dry_run": m.dry_run}
    path = _write(cfg.reports_dir / "week_5_metrics.json", report)
    update: dict[str, Any] = {"status": "done", "decision": verdict.decision, "reasons": list(verdict.reasons),
                              "report": path, "decided_at": now, "authenticity_pct": auth.get("mean_pct"),
                              "improvement_pct": snap.evidence.improvement_mean, "p_value": snap.evidence.p_value}
    body = f"Decision: {verdict.decision}\n" + "\n".join(f"- {r}" for r in verdict.reasons) + f"\nReport: {path}"
    actions: list[Action] = []
    if verdict.decision == INCONCLUSIVE:
        actions.append(SendAlert("milestone", "milestone: INCONCLUSIVE, evaluating again later",
                                 f"{body}\nNo decision was taken; the evaluation runs again in "
                                 f"{m.retry_every / 3600:g} h. Listen to the samples beside the report."))
        if paused:
            actions.append(ReleaseWorker("milestone INCONCLUSIVE"))
    elif verdict.decision == NO_GO:
        abort = _write(cfg.reports_dir / "abort_report.json", abort_report(cfg, report, run, due_at))
        update["abort_report"] = abort
        actions.append(SendAlert("milestone", "milestone: NO-GO, stopping the run", body + f"\nAbort report: {abort}"))
        if not m.dry_run:
            actions += [StopWorker("milestone NO-GO"), Shutdown(cfg.budget.action, "milestone NO-GO")]
        elif paused:
            actions.append(ReleaseWorker("milestone dry run"))
    else:
        what = "training goes on" if verdict.decision == GO else (
            f"training goes on with a new evaluation every {m.conditional_every / 86400:g} days")
        actions.append(SendAlert("milestone", f"milestone: {verdict.decision}", f"{body}\n{what}."))
        if paused:
            actions.append(ReleaseWorker(f"milestone {verdict.decision}"))
    return update, actions


def abort_report(cfg: Config, report: dict, run: RunView, due_at: str | None) -> dict:
    top = checkpoints.best(cfg.checkpoint_dir)
    newest = checkpoints.newest(cfg.checkpoint_dir)
    return {"decision": NO_GO, "reasons": report["reasons"],
            "metrics": {k: report[k] for k in ("model", "baseline", "checkpoint") if k in report},
            "spend": run.cost, "timeline": {"started_at": run.started_at, "milestone_due_at": due_at,
                                            "decided_at": report["decided_at"], "step": run.step,
                                            "total_steps": run.total_steps},
            "best_checkpoint": top and {"path": str(top.path), "step": top.step, "val_loss": top.val_loss},
            "newest_checkpoint": str(newest.path) if newest else None,
            "recommended_next_step": recommend(report["checks"])}


def recommend(checks: dict) -> str:
    if checks.get("authenticity") == "miss":
        return ("The model does not sound Amapiano-like enough: review the proxy tags (`dataset select` counts), "
                "add real Amapiano reference clips, or change the conditioning before spending more.")
    if checks.get("val_loss") == "miss":
        return "Validation loss is too high: check the data and the learning rate on a short run before resuming."
    return "Spend is over the milestone cap: raise [milestone] max_cost_usd deliberately, or stop here."


def _write(path: Path, report: dict) -> str:
    """Write a report; a full or read-only disk costs the file, never the decision or its action
    (a completion whose report could not be written once raised in the tick, and nothing followed)."""
    try:
        write_json_atomic(path, report)
    except OSError as e:
        return f"{path} (NOT WRITTEN: {e.strerror or e})"
    return str(path)


def completion(cfg: Config, metrics: dict | None, exported: bool, run: RunView, milestone_state: dict,
               now: str) -> tuple[dict, list[Action]]:
    """The completion report and mail, and the completion action."""
    export_dir = cfg.reports_dir / "export"
    cost = run.cost or {}
    report = {"completed_at": now, "steps": run.step, "best_val_loss": run.best_val_loss,
              "final_evaluation": metrics,
              "export": {"transformers": str(export_dir / "best_model"),
                         "audiocraft": str(export_dir / "state_dict.bin")} if exported else None,
              "spend": cost, "started_at": run.started_at, "milestone": milestone_state}
    path = _write(cfg.reports_dir / "completion_report.json", report)
    auth = ((metrics or {}).get("model") or {}).get("authenticity") or {}
    action = cfg.milestone.completion_action
    body = (f"All {run.total_steps} steps done; best validation loss {run.best_val_loss}; authenticity "
            f"{auth.get('mean_pct')}; spent ${cost.get('total_usd', 0):,.2f}.\nReport: {path}\n"
            + (f"Model: {export_dir}/best_model (transformers) and state_dict.bin (audiocraft)\n" if exported
               else "The export FAILED: see the journal.\n")
            + (f"Next: the shutdown action '{action}'." if action != "none" else
               "The instance stays up (completion action 'none'); the idle rule applies."))
    actions: list[Action] = [SendAlert("completed", "training completed", body)]
    if action != "none":
        actions.append(Shutdown(action, "training completed"))
    return {"status": "done", "report": path, "exported": exported}, actions


def with_html(cfg: Config, actions: list[Action], html: Path | None, kind: str) -> list[Action]:
    """The decision's mail, told where its HTML report is and how to open it; or that there is
    none, and how to build it by hand."""
    folder = f"s3://{cfg.aws.s3_bucket}/{reports_key(cfg.aws, '')}" if cfg.aws.s3_bucket else ""
    if html is None:
        line = ("The HTML report could not be written (the journal says why: report.failed or report.timed_out); "
                f"build it by hand: amapiano-train report --kind {kind}")
    else:
        line = (f"The report (open it in a browser; its clips play beside it): {html}\n"
                f"On a laptop: scp -r HOST:{html.parent} . and open {html.name}")
        if folder:
            line += (f"\nIn the bucket (mirrored within {cfg.aws.mirror_every / 60:g} min): {folder}{html.name}; "
                     f"aws s3 sync {folder} reports/")
    files = (str(html.with_suffix(".zip")), str(html)) if html else ()  # the page with its clips, else the page
    return [dataclasses.replace(a, body=f"{a.body}\n\n{line}", attachments=files, attachments_at=folder)
            if isinstance(a, SendAlert) else a for a in actions]
