"""`amapiano-train demo`: the supervisor in the foreground on the embedded demo.toml.

A tiny random MusicGen trains on synthetic codes; once it has a checkpoint and has moved past
it, the demo SIGKILLs the worker (as a crash or the kernel's OOM killer would), the supervisor
restarts it from that checkpoint, and the run finishes. Meanwhile the cost ledger ticks on a
sped-up rate and sends its budget alerts; once training is done nothing is busy, so the idle
rule warns and then "stops the instance" (action none: logged only), which ends the demo.
Ends with the status screen.
"""
from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from .common import log as logs
from .common.clock import Clock
from .common.config import load_config
from .states import Phase
from .status import render
from .supervisor import Supervisor
from .common import checkpoints
from .common.atomic import read_json

# The demo ends by itself in about a minute on an idle laptop; this only bounds a bug, so it is
# far above what a busy machine needs (300 s was reached with a dozen processes on 2 cores)
DEMO_LIMIT_S = 1800


def run_demo(workdir: Path | None, log_format: str = "console") -> int:
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="amapiano-demo-"))
    elif workdir.exists() and any(workdir.iterdir()):
        print(f"amapiano-train demo: {workdir} is not empty; give a new directory (or none for a temp one)",
              file=sys.stderr)
        return 2
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.toml"
    with resources.as_file(resources.files("daemon.defaults") / "demo.toml") as embedded:
        shutil.copyfile(embedded, config)

    fmt = logs.configure(log_format)
    log = logs.get("demo")
    cfg = load_config(config)
    log.info("demo.start", workdir=str(workdir), config=str(config))
    supervisor = Supervisor(cfg, log, log_format=fmt)
    killed: list[int] = []

    def kill_once() -> None:
        """Crash the worker once, after its first checkpoint, part-way to its second."""
        if killed or not supervisor.worker.running:
            return
        newest = checkpoints.newest(cfg.checkpoint_dir)
        step = (read_json(cfg.heartbeat_file) or {}).get("step") or 0
        if newest and step >= newest.step + cfg.train.checkpoint_every // 2:
            log.warning("demo.kill_worker", pid=supervisor.worker.pid, step=step, checkpoint_step=newest.step,
                        note="SIGKILL on purpose: watch the supervisor restart it from the checkpoint")
            killed.append(step)
            supervisor.worker.signal(signal.SIGKILL)

    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    supervisor.start()
    supervisor.add_job(kill_once, cfg.supervisor.poll_interval, "demo-chaos")
    try:
        deadline = time.monotonic() + DEMO_LIMIT_S
        while not supervisor.finished.wait(0.2) and not supervisor.stop_requested.is_set():
            if time.monotonic() > deadline:
                log.error("demo.too_slow", limit_s=DEMO_LIMIT_S)
                break
    finally:
        supervisor.shutdown()

    print()
    print(render(supervisor.state, Clock().now()))
    print()
    print(f"Files in {workdir}:")
    print(f"  state.json    {cfg.state_file}   (amapiano-train status --config {config})")
    print(f"  checkpoints   {cfg.checkpoint_dir}")
    print(f"  TensorBoard   tensorboard --logdir {cfg.tensorboard_dir}")
    print(f"  reports       {cfg.reports_dir}   (the .html in a browser; now: amapiano-train report --config {config})")
    state = supervisor.state
    t = state.trainer
    resumed = bool(killed) and t.resumed_from_step is not None and t.resumed_from_step > 0
    subjects = [a["subject"] for a in state.alerts]
    budget_alerts = [s for s in subjects if "of the budget spent" in s]
    idle_alerts = [s for s in subjects if "idle shutdown in" in s]
    shut, ms = state.shutdown or {}, state.milestone or {}
    ok = (supervisor.phase is Phase.COMPLETED and resumed and bool(budget_alerts) and bool(idle_alerts)
          and str(shut.get("reason", "")).startswith("idle") and ms.get("status") == "done"
          and (ms.get("completion") or {}).get("status") == "done" and bool(ms.get("html_report")))
    if killed:
        print(f"\nThe worker was killed at step {killed[0]}; the restart resumed from step "
              f"{t.resumed_from_step if t.resumed_from_step is not None else '- (NOT from a checkpoint)'}.")
    cost = state.cost or {}
    print(f"Spend on the demo's sped-up meter: ${cost.get('total_usd', 0):.2f} "
          f"(alerts: {'; '.join(budget_alerts) or 'none'}).")
    print(f"Idle: {'; '.join(idle_alerts) or 'no warning'}; then: {shut.get('result') or 'no shutdown'}.")
    print(f"Milestone: {ms.get('decision') or ms.get('status') or 'not run'}"
          + (f" (dry run; report {ms.get('html_report') or ms.get('report')})" if ms.get("report") else "") + ".")
    for reason in ms.get("reasons", []):
        print(f"  - {reason}")
    done = ms.get("completion") or {}
    report = done.get("html_report") or done.get("report")
    print(f"Completion: {done.get('status', 'not run')}"
          + (f"; report {report}; model in {cfg.reports_dir / 'export'}" if report else "") + ".")
    print(f"Demo {'finished' if ok else 'FAILED'}: phase {supervisor.phase.value}.")
    return 0 if ok else 1
