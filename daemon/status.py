"""What a person reads: the one-line systemd STATUS and the `amapiano-train status` screen."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from .common.clock import parse_iso
from .state import State


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def _age(then: str | None, now: datetime) -> str:
    if not then:
        return "never"
    seconds = max(0, int((now - parse_iso(then)).total_seconds()))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m ago"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h ago"


def _span(seconds: float) -> str:
    seconds = int(seconds or 0)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


def status_line(state: State) -> str:
    """systemd's STATUS=: phase, step, loss, spend."""
    t = state.trainer
    step = "-" if t.step is None else f"{t.step}/{t.total_steps or '?'}"
    cost = state.cost or {}
    spend = f" spent {_usd(cost.get('total_usd'))}" + (f" of {_usd((state.budget or {}).get('max_usd'))}"
                                                        if state.budget else "")
    return f"{state.phase} step {step} epoch {t.epoch if t.epoch is not None else '-'} " \
           f"loss {_num(t.train_loss, '.3f')} val {_num(t.val_loss, '.3f')}{spend if cost else ''}"


def _report(part: dict, kind: str) -> str:
    """The page to open (the HTML report, its clips beside it), and the JSON it was made from;
    when the page could not be written, the command that writes it."""
    figures = part.get("report")
    if part.get("html_report"):
        return f"report {part['html_report']} (figures {Path(str(figures)).name})"
    return f"figures {figures} (no HTML report: amapiano-train report --kind {kind})"


def _money_rows(state: State, now: datetime) -> list[tuple[str, str]]:
    rows = []
    cost, budget = state.cost or {}, state.budget or {}
    if cost:
        rate = cost.get("rate_usd_per_h")
        rows.append(("spend", f"{_usd(cost.get('total_usd'))}  (compute {_usd(cost.get('compute_usd'))}, "
                              f"storage {_usd(cost.get('storage_usd'))})  rate "
                              f"{_usd(rate) + '/h' if rate is not None else 'UNKNOWN'} ({cost.get('rate_source')})"
                              + ("  PRICE UNKNOWN: charged at the ceiling" if str(cost.get("rate_source")).startswith(
                                  "ceiling") else "")))
        f = cost.get("forecast") or {}
        rows.append(("forecast", f"at completion {_usd(f.get('at_completion_usd'))}"
                                 + (f" (in {f['hours_to_completion']:.1f} h)" if f.get("hours_to_completion") else "")
                                 + f"  at milestone {_usd(f.get('at_milestone_usd'))}"))
    if budget:
        rows.append(("budget", f"{_usd(budget.get('left_usd'))} left of {_usd(budget.get('max_usd'))}"
                               + (f"  alerts sent: {', '.join(budget['fired'])}" if budget.get("fired") else "")))
    if (state.red_flags or {}).get("raised"):
        rows.append(("RED FLAGS", ", ".join(state.red_flags["raised"])))
    ms = state.milestone or {}
    if ms:
        due = ms.get("due_at") or (f"~{ms['due_forecast']} (forecast, {ms.get('at')})" if ms.get("due_forecast")
                                   else f"at {ms.get('at')} of training")
        line = f"{ms.get('status')}  due {due}"
        if ms.get("decision"):
            line += f"  decision {ms['decision']}  {_report(ms, 'milestone')}"
        rows.append(("milestone", line))
        done = ms.get("completion") if isinstance(ms.get("completion"), dict) else {}
        if done.get("report"):
            rows.append(("completion", f"{done.get('status')}  {_report(done, 'completion')}"))
    pending = [a for a in state.alerts if a.get("status") in ("pending", "failed")]
    if state.alerts:
        last = state.alerts[-1]
        rows.append(("alerts", f"{len(state.alerts)} (last: {last.get('subject')}, {last.get('status')})"
                               + (f"  {len(pending)} NOT DELIVERED" if pending else "")))
    return rows


def _machine_rows(state: State) -> list[tuple[str, str]]:
    rows = []
    gpu = state.gpu or {}
    if gpu:
        if gpu.get("available"):
            devs = "  ".join(f"#{d.get('index')} {_num(d.get('util_pct'), '.0f')} % {_num(d.get('power_w'), '.0f')} W"
                             for d in gpu.get("devices") or [] if isinstance(d, dict))
            rows.append(("gpu", f"util 1 min {_num(gpu.get('util_avg_1m_pct'), '.0f')} %, 1 h "
                                f"{_num(gpu.get('util_avg_1h_pct'), '.0f')} %  {devs}"))
        else:
            rows.append(("gpu", f"no metrics ({gpu.get('error')})"))
    idle = state.idle or {}
    if idle:
        line = f"idle for {_span(idle.get('idle_for_s', 0))} of {_span(idle.get('timeout_s', 0))}"
        if idle.get("warned_at"):
            line += f"  SHUTDOWN DUE {idle.get('shutdown_due_at')} ({idle.get('action')})"
        if idle.get("hold_until"):
            line += f"  held until {idle['hold_until']}"
        rows.append(("idle", line))
    inst = state.instance or {}
    if inst:
        market = inst.get("lifecycle") or "?"
        if market == "spot":
            market += f" {inst.get('spot_request_type') or '?'} (on interruption: {inst.get('interruption_behavior')})"
        stop = {True: "can be stopped", False: "cannot be stopped: auto terminates once S3 holds the newest checkpoint"
                if state.mirror else "cannot be stopped: auto keeps it running (no bucket holds the run)",
                None: "stop behaviour not known yet"}[inst.get("can_stop")]
        rows.append(("instance", f"{inst.get('instance_id')} {inst.get('instance_type')} {inst.get('zone')}  {market}"
                                 f"  {stop}"))
    mirror = state.mirror or {}
    if mirror:
        last = mirror.get("last") or {}
        rows.append(("s3 mirror", f"s3://{mirror.get('bucket')}/{mirror.get('prefix')}  step {mirror.get('step', '-')} "
                                  f"confirmed {mirror.get('at') or 'never'}"
                                  + (f"  LAST UPLOAD FAILED: {last['error']}" if last.get("error") else "")))
        wait = mirror.get("restore") if isinstance(mirror.get("restore"), dict) else {}
        if wait.get("status") == "waiting":
            rows.append(("s3 restore", f"WAITING since {wait.get('since')} ({wait.get('reason')}); the worker is held. "
                                       "`sudo amapiano-train start-fresh` goes on without the bucket"))
    if state.shutdown:
        sd = state.shutdown
        rows.append(("shutdown", f"{sd.get('reason')}: {sd.get('result') or sd.get('action')} at {sd.get('at')}"
                                 + (f" (attempt {sd['attempts']})" if (sd.get("attempts") or 0) > 1 else "")))
    return rows


def _guarded(rows, *args) -> list[tuple[str, str]]:
    """A section state.json holds in a shape this version cannot show costs a row, not the screen."""
    try:
        return rows(*args)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        return [("unreadable", f"a field of state.json cannot be shown ({type(e).__name__}: {e})")]


def render(state: State, now: datetime) -> str:
    """The ten-second screen."""
    t = state.trainer
    pct = f" ({100 * t.step / t.total_steps:.1f} %)" if t.step is not None and t.total_steps else ""
    rows = [
        ("run", f"{state.run_id}  started {state.started_at} ({_age(state.started_at, now)})"),
        ("phase", f"{state.phase}  since {_age(state.phase_since, now)}"),
        ("step", f"{t.step if t.step is not None else '-'} of {t.total_steps or '?'}{pct}  epoch "
                 f"{t.epoch if t.epoch is not None else '-'}  ({t.activity or 'no heartbeat yet'})"),
        ("loss", f"train {_num(t.train_loss)}  val {_num(t.val_loss)}  best val {_num(t.best_val_loss)}"),
        ("speed", f"{_num(t.samples_per_s, '.1f')} samples/s  lr {_num(t.lr, '.2e')}"),
        ("worker", f"pid {t.pid or '-'}  restarts {t.restarts}  last exit "
                   f"{t.last_exit_reason or '-'}"),
        ("checkpoint", f"{t.last_checkpoint or 'none yet'}"
                       + (f" (step {t.last_checkpoint_step})" if t.last_checkpoint_step is not None else "")),
        ("heartbeat", _age(t.heartbeat_at, now)),
        *_guarded(_money_rows, state, now),
        *_guarded(_machine_rows, state),
        ("state file", f"updated {_age(state.updated_at, now)}"),
    ]
    if state.failure:
        rows.append(("FAILED", f"{state.failure.reason} (at {state.failure.at})"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:>{width}}  {v}" for k, v in rows)
