"""What a person reads: the one-line systemd STATUS and the `amapiano-train status` screen."""
from __future__ import annotations

from datetime import datetime

from .clock import parse_iso
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


def status_line(state: State) -> str:
    """systemd's STATUS=: phase, step, loss (spend joins once the cost ledger exists)."""
    t = state.trainer
    step = "-" if t.step is None else f"{t.step}/{t.total_steps or '?'}"
    return f"{state.phase} step {step} epoch {t.epoch if t.epoch is not None else '-'} " \
           f"loss {_num(t.train_loss, '.3f')} val {_num(t.val_loss, '.3f')}"


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
        ("state file", f"updated {_age(state.updated_at, now)}"),
    ]
    if state.failure:
        rows.append(("FAILED", f"{state.failure.reason} (at {state.failure.at})"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:>{width}}  {v}" for k, v in rows)
