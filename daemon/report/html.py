"""The report as one HTML page: the decision and its reasons, the run's facts, the plots, the
clips side by side, the red flags and what could not be read.

Every value from a file goes through `e()` (html.escape, quotes too) and is cut to a bounded
length: state.json and the metrics are written by other processes and can be edited by hand, so a
hostile prompt or reason must show as text, never as markup. The page loads nothing: no script,
no font, no stylesheet from anywhere, and its Content-Security-Policy says so to the browser.
"""
from __future__ import annotations

import base64

from .escape import e, fmt
from .inputs import Inputs
from .values import obj, seq, text
from .listen import evidence_section

CSP = "default-src 'none'; img-src data:; media-src 'self' file: blob:; style-src 'unsafe-inline'"
STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 1.2em 3em;color:#222}
h1{font-size:1.5em;margin:.8em 0 .1em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
.sub{color:#666;margin:0}.decision{font-size:1.6em;font-weight:700;padding:.3em .7em;border-radius:6px;
display:inline-block;margin:.6em 0 .2em;color:#fff}.GO{background:#27ae60}.CONDITIONAL{background:#e67e22}
.NO-GO{background:#c0392b}.INCONCLUSIVE,.none{background:#7f8c8d}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.3em .55em;vertical-align:top;text-align:left}th{background:#f6f6f6}
.pass{color:#1e8449}.close,.unknown{color:#b9770e}.miss,.degenerate{color:#c0392b;font-weight:600}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}.na{color:#888;font-style:italic}
audio{width:230px;height:32px}.next{background:#f4f6f7;padding:.6em .9em;border-left:4px solid #8e44ad}
code{background:#f4f4f4;padding:0 .2em}
"""
CHECK_LABELS = {"authenticity": "Authenticity (model)", "improvement": "Improvement over the baseline",
                "cost": "Spend", "val_loss": "Validation loss", "evidence": "Evidence"}


def na(what: str) -> str:
    return f'<p class="na">{e(what, 600)}: not available.</p>'


def page(inp: Inputs, plots: dict[str, tuple[str, bytes | None, str | None]], clips: dict) -> str:
    """The whole page. `plots`: key -> (title, PNG or None, why not); `clips`: see build.copy_clips."""
    title = {"milestone": "Milestone report", "completion": "Completion report",
             "now": "Where the run stands"}[inp.kind]
    run_id = obj(inp.state).get("run_id")
    body = [f"<h1>amapiano-train: {title}</h1>",
            f'<p class="sub">run <code>{e(run_id or "unknown")}</code>, written {e(inp.generated_at)}</p>',
            decision_section(inp), facts_section(inp), "<h2>Plots</h2>"]
    for _key, (name, png, why) in plots.items():
        if png is None:
            body.append(f"<h3>{e(name)}</h3>" + na(why or "nothing to draw"))
        else:
            data = base64.b64encode(png).decode("ascii")
            body.append(f'<figure><figcaption><b>{e(name)}</b></figcaption>'
                        f'<img alt="{e(name)}" src="data:image/png;base64,{data}"></figure>')
    body += [evidence_section(inp, clips), red_flags_section(inp), notes_section(inp, clips)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>amapiano-train {e(title)} {e(run_id or '')}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _checks(d: dict) -> list[tuple[str, str, str, str, str]]:
    """(figure, measured, threshold, result, reason) for each figure the rule judged."""
    t, ev = obj(d.get("thresholds")), d
    model, comp = obj(ev.get("model")), obj(ev.get("comparison"))
    auth = obj(model.get("authenticity"))
    ci, ici = seq(auth.get("ci95_pct")), seq(comp.get("ci95_pct"))
    span = lambda c, spec: f" (95 % CI {fmt(c[0], spec)} to {fmt(c[1], spec)})" if len(c) == 2 else ""  # noqa: E731
    measured = {
        "authenticity": fmt(auth.get("mean_pct"), ".1f", " %") + span(ci, ".1f"),
        "improvement": fmt(comp.get("improvement_pct"), "+.2f", " points") + span(ici, "+.2f")
        + f", p = {fmt(comp.get('p_value'))}",
        "cost": "$" + fmt(d.get("cost_usd"), ",.2f"), "val_loss": fmt(model.get("val_loss"), ".4g"),
        "evidence": f"{fmt(comp.get('n'), 'g')} pairs; {fmt(comp.get('failed'), 'g')} failed, "
                    f"{fmt(comp.get('identical'), 'g')} identical, {fmt(comp.get('silent'), 'g')} silent"}
    threshold = {
        "authenticity": f"95 % CI above {fmt(t.get('min_authenticity_pct'), 'g', ' %')}",
        "improvement": f"p below {fmt(t.get('alpha'), 'g')} and the interval above 0",
        "cost": f"at most ${fmt(t.get('max_cost_usd'), ',.2f')}", "val_loss": f"at most {fmt(t.get('max_val_loss'), '.4g')}",
        "evidence": f"none failed, identical or silent; enough pairs for p below {fmt(t.get('alpha'), 'g')}"}
    checks, reasons = obj(d.get("checks")), [text(r) for r in seq(d.get("reasons"))]
    rows = []
    for i, (name, result) in enumerate(list(checks.items())[:12]):
        why = "; ".join(reasons) if name == "evidence" else (reasons[i] if i < len(reasons) else "")
        rows.append((CHECK_LABELS.get(name, text(name, 60)), measured.get(name, "unknown"),
                     threshold.get(name, ""), text(result, 20), why))
    return rows


def next_step(inp: Inputs, decision: str) -> str:
    m, d = inp.cfg.milestone, obj(inp.decision)
    due = obj(obj(inp.state).get("milestone")).get("due_at")
    again = f" (next at {text(due, 40)} UTC)" if due else ""
    if decision == "GO":
        return ("Training goes on to its last step; at completion the model is evaluated again, exported and "
                "reported.")
    if decision == "CONDITIONAL GO":
        return f"Training goes on; the milestone is evaluated again every {m.conditional_every / 86400:g} days{again}."
    if decision == "INCONCLUSIVE":
        return (f"No decision was taken: the evidence cannot carry one. Training goes on and the evaluation runs "
                f"again in {m.retry_every / 3600:g} h{again}. Listen to the clips below.")
    if decision == "NO-GO":
        then = (f"Dry run: nothing was stopped; without dry_run the worker would be checkpointed and stopped and the "
                f"shutdown action '{inp.cfg.budget.action}' carried out." if d.get("dry_run") is True else
                f"The worker was checkpointed and stopped, and the shutdown action '{inp.cfg.budget.action}' follows.")
        advice = text(obj(inp.abort).get("recommended_next_step"))
        return then + (f" Recommended next: {advice}" if advice else "")
    return "Unknown decision: read week_5_metrics.json."


def _verdict(inp: Inputs, completed: bool) -> list[str]:
    d = obj(inp.decision)
    decision = text(d.get("decision"), 40)
    cls = {"GO": "GO", "CONDITIONAL GO": "CONDITIONAL", "NO-GO": "NO-GO"}.get(decision, "INCONCLUSIVE")
    out = [f'<div class="decision {cls}">{e(decision)}</div>',
           f'<p class="sub">decided {e(d.get("decided_at") or "at an unknown time")} on the checkpoint at step '
           f'{e(obj(d.get("checkpoint")).get("step") or "unknown")}'
           + (" (dry run: logged, not acted on)" if d.get("dry_run") is True else "") + "</p>",
           '<table><tr><th>figure</th><th>measured</th><th>threshold</th><th>result</th><th>reason</th></tr>']
    for label, measured, threshold, result, why in _checks(d):
        out.append(f'<tr><td>{e(label)}</td><td>{e(measured)}</td><td>{e(threshold)}</td>'
                   f'<td class="{e(result, 20)}">{e(result)}</td><td>{e(why, 1000)}</td></tr>')
    out.append("</table>")
    if not completed:  # after the completion, what the milestone said would happen is history
        out.append(f'<p class="next"><b>What happens next.</b> {e(next_step(inp, decision), 1200)}</p>')
    return out


def decision_section(inp: Inputs) -> str:
    out = ["<h2>Decision</h2>"]
    done = obj(inp.completion)
    if inp.kind == "completion" or (inp.kind == "now" and done):
        export = obj(done.get("export"))
        out.append(f'<p>Training completed {e(done.get("completed_at") or "")}: {e(done.get("steps") or "?")} steps, '
                   f'best validation loss {e(fmt(done.get("best_val_loss"), ".4g"))}. Model: '
                   + (f'<code>{e(export.get("transformers"))}</code> (transformers) and '
                      f'<code>{e(export.get("audiocraft"))}</code> (audiocraft)' if export else
                      "<b>the export failed</b> (see the journal; export by hand: amapiano-train export)") + ".</p>")
        action = inp.cfg.milestone.completion_action
        out.append('<p class="next"><b>What happens next.</b> ' + (
            f"The shutdown action '{e(action)}'." if action != "none" else
            "The instance stays up (completion action 'none'); the idle rule stops it once nothing runs.") + "</p>")
        out.append("<p>The milestone's decision, for the record:</p>" if inp.decision else "")
    if inp.decision is not None:
        out += _verdict(inp, completed=bool(done) and inp.kind != "milestone")
    elif inp.kind != "completion":
        ms = obj(obj(inp.state).get("milestone"))
        when = ms.get("due_at") or ms.get("due_forecast")
        out.append('<div class="decision none">no decision yet</div>')
        out.append(f'<p class="next"><b>What happens next.</b> The milestone evaluation is '
                   f'{e(ms.get("status") or "not scheduled yet")}'
                   + (f", due {e(when, 40)} UTC" if when else "") + "; it compares the model with the pre-trained "
                   "baseline on the same prompts and seeds and decides GO, CONDITIONAL GO, NO-GO or INCONCLUSIVE.</p>")
    return "\n".join(out)


def facts_section(inp: Inputs) -> str:
    s = obj(inp.state)
    cost, budget, trainer = obj(s.get("cost")), obj(s.get("budget")), obj(s.get("trainer"))
    devices = [obj(d) for d in seq(obj(s.get("gpu")).get("devices"))]
    names = ", ".join(sorted({text(d.get("name"), 80) for d in devices if d.get("name")})) or "none measured"
    instance = obj(s.get("instance"))
    ev = obj(inp.evaluation)
    rows = [("run id", s.get("run_id") or "unknown"), ("started", s.get("started_at") or "unknown"),
            ("phase", s.get("phase") or "unknown"),
            ("config", f"{inp.cfg.source} (sha256 {inp.digest or 'unknown'})"),
            ("GPU", f"{names}" + (f"; instance {text(instance.get('instance_type'), 40)}" if instance.get("instance_type")
                                  else "")),
            ("cost", f"${fmt(cost.get('total_usd'), ',.2f')} spent of a ${fmt(budget.get('max_usd'), ',.2f')} budget; "
                     f"rate ${fmt(cost.get('rate_usd_per_h'), ',.2f')}/h ({text(cost.get('rate_source'), 40) or 'unknown'})"),
            ("training", f"step {trainer.get('step') if trainer.get('step') is not None else '?'} of "
                         f"{trainer.get('total_steps') or '?'}; best validation loss {fmt(trainer.get('best_val_loss'), '.4g')}"),
            ("evaluation", f"{text(ev.get('device'), 40) or 'unknown'} device; scorer "
                           f"{text(obj(ev.get('scorer')).get('mode'), 80) or 'unknown'}" if ev else "none yet")]
    return ("<h2>The run</h2><table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v, 600)}</td></tr>" for k, v in rows)
            + "</table>")


def red_flags_section(inp: Inputs) -> str:
    s = obj(inp.state)
    raised = [text(r, 80) for r in seq(obj(s.get("red_flags")).get("raised")) if isinstance(r, str)]
    sent = [obj(a) for a in seq(s.get("alerts")) if obj(a).get("kind") == "red_flag"]
    if not raised and not sent:
        return "<h2>Red flags</h2><p>None raised.</p>" if inp.state is not None else "<h2>Red flags</h2>" + na("red flags")
    rows = "".join(f"<tr><td>{e(a.get('created_at'))}</td><td>{e(a.get('subject'))}</td>"
                   f"<td>{e(a.get('status'))}</td></tr>" for a in sent[-50:])
    return ("<h2>Red flags</h2>" + (f"<p>Raised now: {e(', '.join(raised))}.</p>" if raised else
                                    "<p>None raised now (a flag that cleared re-arms).</p>")
            + (f"<table><tr><th>when (UTC)</th><th>why</th><th>alert</th></tr>{rows}</table>" if rows else ""))


def notes_section(inp: Inputs, clips: dict) -> str:
    notes = inp.notes + list(clips.get("notes", []))
    if not notes:
        return ""
    return ("<h2>Not available</h2><ul>" + "".join(f"<li>{e(n, 600)}</li>" for n in notes[:100]) + "</ul>")
