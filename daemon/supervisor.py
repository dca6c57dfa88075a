"""The supervisor: keeps the trainer worker running and tells systemd and the person about it.

Its life is a small loop. APScheduler runs `tick` every poll_interval on one worker thread:
read the world (has the worker exited? what does its heartbeat say?), let the pure policy in
daemon/restart.py decide, act (start the worker, record a failure), publish (state.json,
systemd STATUS). A second job pings the systemd watchdog; both share that one thread, so a
hung job stops the pings and systemd restarts us. The main thread only waits for a signal
and then runs the shutdown: SIGTERM to the worker (it checkpoints), a bounded wait, state.
"""
from __future__ import annotations

import json
import random
import signal
import threading
from datetime import timezone
from typing import Any, Callable

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from .common.clock import Clock, iso
from .common.config import Config
from .evaluation import Evaluation
from .guards import Guards
from .notify import Notifier
from .restart import RestartHistory, WorkerExit, decide
from .state import Failure, State, load_state, save_state
from .states import Phase, log_transition
from .status import status_line
from .common import checkpoints
from .common.atomic import read_json
from .worker import WorkerProcess

HEARTBEAT_FIELDS = ("step", "total_steps", "epoch", "train_loss", "val_loss", "best_val_loss", "lr",
                    "samples_per_s", "activity", "last_checkpoint", "last_checkpoint_step", "resumed_from_step")
STATE_REFRESH_S = 30.0  # rewrite state.json at least this often, so updated_at shows we are alive


class Supervisor:
    def __init__(self, cfg: Config, log: Any, clock: Clock | None = None,
                 notifier: Notifier | None = None, worker: WorkerProcess | None = None,
                 rng: random.Random | None = None, log_format: str = "json", log_level: str = "info",
                 nvml: Any = None):
        self.cfg = cfg
        self.log = log
        self.clock = clock or Clock()
        self.notifier = notifier or Notifier(log)
        self.worker = worker or WorkerProcess(cfg.source, cfg.failure_file,
                                                ("--log-format", log_format, "--log-level", log_level))
        self.rng = rng or random.Random()
        self.stop_requested = threading.Event()
        self.finished = threading.Event()  # nothing left to supervise (HALTED by a rule)
        self.job_failures: dict[str, int] = {}
        self._scheduler: BackgroundScheduler | None = None
        self._ready_sent = False
        self._last_tick: float | None = None
        self._last_written: tuple[str, float] | None = None
        self._next_start: float | None = None
        self._launches = 0
        self._hold_reason: str | None = None  # set: the worker is not to be (re)started
        self.stop_requested_of_worker = False
        self.state = self._load_or_create_state()
        self.history = RestartHistory(checkpoint_step=self._checkpoint_step())
        self._paused = False  # held for the milestone evaluation, to be released
        self._finish_after_uploads = False
        self.guards = Guards(self, nvml=nvml)
        self.evaluation = Evaluation(self)

    # -- world ---------------------------------------------------------------------------
    def _load_or_create_state(self) -> State:
        """Keep run_id and started_at across daemon restarts: it is the same run."""
        now = self.clock.now()
        state = load_state(self.cfg.state_file)  # StateError propagates: the CLI exits 65
        if state is None:
            state = State.new(now)
            self.log.info("run.created", run_id=state.run_id, state_file=str(self.cfg.state_file))
        else:
            self.log.info("run.resumed", run_id=state.run_id, started_at=state.started_at,
                          previous_phase=state.phase)
        state.phase, state.phase_since, state.failure = Phase.STARTING.value, iso(now), None
        state.trainer.pid = None
        state.shutdown = None  # a restart re-checks everything (the budget before the worker starts)
        return state

    def _checkpoint_step(self) -> int | None:
        newest = checkpoints.newest(self.cfg.checkpoint_dir)
        return newest.step if newest else None

    @property
    def phase(self) -> Phase:
        return Phase(self.state.phase)

    def _set_phase(self, new: Phase, **why: Any) -> None:
        log_transition(self.log, self.phase, new, **why)
        if new is not self.phase:
            self.state.phase, self.state.phase_since = new.value, iso(self.clock.now())

    # -- jobs ----------------------------------------------------------------------------
    def _guard(self, name: str, fn: Callable[[], None]) -> Callable[[], None]:
        """A job can't kill the daemon: log its exception with the traceback, and count it."""
        def job() -> None:
            try:
                fn()
            except Exception:
                self.job_failures[name] = self.job_failures.get(name, 0) + 1
                self.log.exception("job.failed", job=name, failures=self.job_failures[name])
        return job

    def tick(self) -> None:
        """Read the world, decide, act, publish. Runs on the scheduler's single thread."""
        now = self.clock.monotonic()
        ended = self.worker.poll()
        if ended is not None:
            self._on_worker_exit(ended, now)
        if (self._next_start is not None and now >= self._next_start and self._hold_reason is None
                and not self.stop_requested.is_set() and not self.phase.is_terminal()
                and self.guards.may_start_worker()):
            self._start_worker()
        self._read_heartbeat()
        self.evaluation.step()
        self.publish()
        if self._finish_after_uploads and not self.guards.uploads_pending():
            self.finished.set()
        self._last_tick = now

    def watchdog(self) -> None:
        """WATCHDOG=1, but only while the tick job is alive: a hung scheduler stops the pings."""
        if self._last_tick is None:
            return
        stale_after = 2 * self.cfg.supervisor.poll_interval + (self.notifier.watchdog_interval or 0)
        if self.clock.monotonic() - self._last_tick <= stale_after:
            self.notifier.watchdog()
        else:
            self.log.error("watchdog.withheld", last_tick_age_s=round(self.clock.monotonic() - self._last_tick, 1))

    # -- decisions and actions -------------------------------------------------------------
    def hold_worker(self, reason: str, pause: bool = False) -> None:
        """From now on the worker is not started again (budget cap, idle, Spot interruption), or,
        with pause, not until release_worker (the milestone evaluation needs the GPU)."""
        if self._hold_reason is None or (self._paused and not pause):
            self._hold_reason, self._paused = reason, pause
            self._next_start = None
            self.log.info("worker.held", reason=reason, pause=pause)

    def release_worker(self) -> None:
        if self._paused:
            self._hold_reason, self._paused = None, False
            self._next_start = self.clock.monotonic()
            self.log.info("worker.released")

    def request_worker_checkpoint_and_exit(self) -> None:
        self.stop_requested_of_worker = True
        self.worker.signal(signal.SIGUSR1)

    def halted(self, reason: str, done: bool = True) -> None:
        """A rule stopped the run: HALTED (unless it had already ended); done: the daemon exits."""
        if self.state.shutdown is None:
            self.state.shutdown = {"reason": reason, "action": None, "at": iso(self.clock.now()), "result": None}
        if not self.phase.is_terminal():
            self._set_phase(Phase.HALTED, reason=reason)
        self.publish(force=True)
        if done:
            self.finished.set()

    def _start_worker(self) -> None:
        self._next_start = None
        self.stop_requested_of_worker = False
        from_step = self._checkpoint_step()
        pid = self.worker.start()
        self._launches += 1
        self.state.trainer.pid = pid
        if self._launches > 1:
            self.state.trainer.restarts += 1
            self.log.info("worker.restarted", pid=pid, attempt=self.state.trainer.restarts, from_step=from_step)
        else:
            self.log.info("worker.started", pid=pid, from_step=from_step, command=" ".join(self.worker.command()))
        self._set_phase(Phase.RUNNING, pid=pid, from_step=from_step)

    def _record_exit(self, ended: WorkerExit) -> None:
        t = self.state.trainer
        t.pid = None
        t.last_exit_code = ended.code if ended.code is not None else -signal.Signals[ended.signal].value
        t.last_exit_reason = ended.describe()

    def _on_worker_exit(self, ended: WorkerExit, now: float) -> None:
        t = self.state.trainer
        self._record_exit(ended)
        step = self._checkpoint_step()
        if self.stop_requested.is_set():
            self.log.info("worker.exited", reason=ended.describe(), checkpoint_step=step, during="shutdown")
            return
        if self._hold_reason is not None:
            self.log.info("worker.exited", reason=ended.describe(), checkpoint_step=step, held=self._hold_reason)
            if ended.kind == "completed":
                self._set_phase(Phase.COMPLETED, exit=ended.code)
            elif self._paused:
                self._set_phase(Phase.STARTING, paused=self._hold_reason)
            elif self.guards.halt is None:  # a Spot interruption: AWS acts; we finish the upload
                self.halted(self._hold_reason, done=False)
                self._finish_after_uploads = True
            else:
                self._set_phase(Phase.STOPPING, reason=self._hold_reason)
            return
        decision, self.history = decide(self.history, ended, step, now, self.cfg.supervisor, self.rng.random())
        level = "info" if ended.kind in ("completed", "preempted") else "warning"
        getattr(self.log, level)("worker.exited", reason=ended.describe(), kind=ended.kind,
                                 checkpoint_step=step, decision=decision.action)
        if decision.action == "complete":
            self._set_phase(Phase.COMPLETED, exit=ended.code)
            self.evaluation.complete()  # final evaluation, export, report, email, shutdown action
        elif decision.action == "fail":
            self.state.failure = Failure(reason=decision.reason, at=iso(self.clock.now()),
                                         exit_code=t.last_exit_code, message=ended.message)
            self._set_phase(Phase.FAILED, exit=t.last_exit_code, reason=decision.reason)
            self.log.error("worker.gave_up", reason=decision.reason,
                           hint="fix the cause, then: systemctl restart amapiano-train")
        else:
            self._next_start = now + decision.delay
            self._set_phase(Phase.BACKOFF if decision.delay > 0 else Phase.STARTING,
                            exit=t.last_exit_code, kind=ended.kind,
                            restart_in_s=round(decision.delay, 1),
                            failures_in_a_row=self.history.consecutive_failures)

    def _read_heartbeat(self) -> None:
        beat = read_json(self.cfg.heartbeat_file)
        if not beat:
            return
        t = self.state.trainer
        for key in HEARTBEAT_FIELDS:
            if key in beat:
                setattr(t, key, beat[key])
        t.heartbeat_at = beat.get("time", t.heartbeat_at)

    def publish(self, force: bool = False) -> None:
        """state.json when it changed (or every STATE_REFRESH_S), and systemd's STATUS line."""
        self.guards.publish_into(self.state)
        self.state.milestone = self.evaluation.to_json()
        body = json.dumps({k: v for k, v in self.state.to_json().items() if k != "updated_at"}, sort_keys=True)
        now = self.clock.monotonic()
        if force or self._last_written is None or self._last_written[0] != body \
                or now - self._last_written[1] >= STATE_REFRESH_S:
            save_state(self.cfg.state_file, self.state, self.clock.now())
            self._last_written = (body, now)
        if not self._ready_sent:  # the first tick has run and state.json exists: we are up
            self._ready_sent = True
            self.notifier.ready(status_line(self.state))
            self.log.info("supervisor.ready", watchdog_interval_s=self.notifier.watchdog_interval)
        else:
            self.notifier.status(status_line(self.state))

    # -- life ------------------------------------------------------------------------------
    def add_job(self, fn: Callable[[], None], seconds: float, name: str) -> None:
        """Another interval job on the supervisor's one thread (the demo's chaos job uses this)."""
        assert self._scheduler is not None
        self._scheduler.add_job(self._guard(name, fn), "interval", seconds=seconds, id=name,
                                max_instances=1, coalesce=True, misfire_grace_time=max(1, int(seconds * 2)))

    def start(self) -> None:
        """Start the jobs (non-blocking); the worker starts on the first tick."""
        self.guards.start()
        self._next_start = self.clock.monotonic()
        from apscheduler.jobstores.memory import MemoryJobStore

        self._scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(1)}, timezone=timezone.utc,
                                              jobstores={"default": MemoryJobStore(),
                                                         "persistent": self.evaluation.jobstore()})
        self._scheduler.start()
        poll = self.cfg.supervisor.poll_interval
        self._scheduler.add_job(self._guard("tick", self.tick), "interval", seconds=poll, id="tick",
                                next_run_time=self.clock.now(), max_instances=1, coalesce=True,
                                misfire_grace_time=max(1, int(poll * 4)))
        if self.notifier.watchdog_interval:
            self.add_job(self.watchdog, self.notifier.watchdog_interval, "watchdog")
        for fn, seconds, name in self.guards.jobs():
            self.add_job(fn, seconds, name)
        self.evaluation.schedule(self._scheduler)
        self.log.info("supervisor.started", config=str(self.cfg.source), run_id=self.state.run_id,
                      checkpoint_step=self.history.checkpoint_step, poll_interval_s=poll)

    def request_stop(self, signum: int | None = None, _frame: Any = None) -> None:
        if signum is not None and not self.stop_requested.is_set():
            self.log.info("supervisor.signal", signal=signal.Signals(signum).name)
        self.stop_requested.set()

    def wait(self) -> None:
        while not self.stop_requested.wait(0.2) and not self.finished.is_set():
            pass

    def shutdown(self) -> None:
        """Stop the jobs, checkpoint-and-stop the worker within stop_timeout, write the state."""
        self.stop_requested.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)  # lets a running tick finish; none starts after
        if self.evaluation.run is not None and self.evaluation.run.proc is not None:
            self.evaluation.run.proc.terminate()  # it runs again at the next start (status "running")
            self.evaluation.run.proc.wait(30)
        self._ready_sent = True  # never READY=1 on the way out
        if self.worker.running:
            self.notifier.stopping(f"stopping: worker checkpointing (pid {self.worker.pid})")
            self._set_phase(Phase.STOPPING, pid=self.worker.pid)
            self.publish(force=True)
            self._stop_worker()
        else:
            self.notifier.stopping()
            if (ended := self.worker.poll()) is not None:
                self._record_exit(ended)
        self.state.trainer.pid = None
        self._read_heartbeat()
        if self.state.trainer.activity == "completed" and not self.phase.is_terminal():
            # It finished all epochs just as we were stopping it (it may have been killed by
            # our SIGTERM during interpreter exit): the run is complete, not stopped.
            self._set_phase(Phase.COMPLETED, checkpoint_step=self._checkpoint_step())
        if not self.phase.is_terminal():
            self._set_phase(Phase.STOPPED, checkpoint_step=self._checkpoint_step())
        self.guards.wait_uploads(self.cfg.supervisor.stop_timeout)
        self.guards.accrue()
        self.publish(force=True)
        self.guards.close()
        self.log.info("supervisor.stopped", phase=self.phase.value, checkpoint_step=self._checkpoint_step())

    def _stop_worker(self) -> None:
        timeout = self.cfg.supervisor.stop_timeout
        self.worker.signal(signal.SIGTERM)
        self.log.info("worker.stop_requested", pid=self.worker.pid, timeout_s=timeout)
        ended = self.worker.wait(timeout)
        if ended is None:
            self.log.error("worker.stop_timeout", pid=self.worker.pid, timeout_s=timeout,
                           note="sending SIGKILL; work since the last checkpoint is lost")
            self.worker.signal(signal.SIGKILL)
            ended = self.worker.wait(30)
        if ended is not None:
            self._record_exit(ended)
            self.log.info("worker.stopped", reason=ended.describe(), checkpoint_step=self._checkpoint_step())

    def run(self) -> int:
        """Foreground: handle SIGTERM/SIGINT, run until stopped or completed. Returns the exit code."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        try:
            self.wait()
        finally:
            self.shutdown()
        return 0
