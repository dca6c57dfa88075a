"""The supervisor: keeps the trainer worker running and every rule in force while the instance bills.

APScheduler runs each job on one thread; every job reads the world into a snapshot, lets a pure rule
decide (lifecycle, restart, liveness, budget, idle, spot, red_flags, milestone) and hands the actions
to the one executor; the watchdog ping is a job too, withheld when the tick stalls. It outlives its
decisions (a halt, a failed shutdown, completion), keeping the idle and budget rules until systemd stops it."""
from __future__ import annotations

import random
import signal
import threading
from datetime import timezone
from typing import Any, Callable

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from . import heartbeat
from .actions import KillWorker, StartWorker
from .common import checkpoints
from .common.clock import Clock, iso
from .common.config import Config
from .evaluation import Evaluation
from .executor import Executor
from .lifecycle import Lifecycle
from .money import Money
from .ports.gpu import GpuMonitor
from .outside_jobs import OutsideJobs
from .ports.instance import Instance
from .ports.mail import Outbox, make_transport
from .ports.mirror import Mirror, restore_state
from .ports.notify import Notifier
from .ports.shutdown import Machine, ShutdownStages, mail_status
from .publisher import StateWriter
from .reports import RunView
from .rules import idle, liveness, red_flags, spot
from .state import Failure, open_run
from .states import Phase
from .tensorboard import ScalarWriter
from .worker import WorkerProcess, processes


class Supervisor:
    ENDING = "instance will be stopped"   # what the idle rule's action ends, in its warning

    def __init__(self, cfg: Config, log: Any, clock: Clock | None = None, notifier: Notifier | None = None,
                 worker: WorkerProcess | None = None, rng: random.Random | None = None,
                 log_format: str = "json", log_level: str = "info", nvml: Any = None):
        self.cfg, self.log, self.clock = cfg, log, clock or Clock()
        self.notifier = notifier or Notifier(log)
        self.worker = worker or WorkerProcess(cfg.source, cfg.failure_file,
                                              ("--log-format", log_format, "--log-level", log_level),
                                              nproc=processes(cfg.train))
        self.rng = rng or random.Random()
        self.stop_requested, self.finished = threading.Event(), threading.Event()  # finished: a rule's shutdown done
        self.job_failures: dict[str, int] = {}
        self._scheduler: BackgroundScheduler | None = None
        self.outside = OutsideJobs(self._guard)  # IMDS and pricing: never on the scheduler's thread
        self._last_tick: float | None = None
        self.beats = heartbeat.Observed()  # the heartbeat's age, immune to the wall clock stepping
        self.instance = Instance(cfg, log, self.clock)
        restored = restore_state(cfg, log, self.instance)  # a replacement instance: the run comes back from S3
        self.state = open_run(cfg.state_file, self.clock.now(), log)  # StateError: the CLI exits 65
        s = self.state
        self.lifecycle = Lifecycle(log, lambda: iso(self.clock.now()), cfg.supervisor, self._checkpoint_step(),
                                   restarts=s.trainer.restarts)
        self.money = Money(cfg, log, self.clock, self.instance, s.cost, s.budget, (s.run_id, s.started_at))
        self.outbox = Outbox(cfg.email, None, log, self.clock, previous=s.alerts, run_name=s.run_id)
        self.gpu = GpuMonitor(log, nvml, self.clock)
        self.mirror = Mirror(cfg, log, self.clock, self.instance, lambda: self.worker.running, self.outbox.send,
                             s.mirror, restored, self.request_stop)  # stops to reopen on the bucket's run
        self.shutdown_stages = ShutdownStages(cfg, log, Machine(cfg, log, self.instance, self.mirror))
        self.executor = Executor(log, self.clock, self.lifecycle, self.worker, self.outbox, self.shutdown_stages,
                                 self.mirror, self._checkpoint_step)
        self.evaluation = Evaluation(cfg, log, self.clock, s.milestone, s.started_at, log_format)
        self.writer = StateWriter(cfg.state_file, log, self.clock, self.notifier, self.outbox)
        self.tb = ScalarWriter(cfg.tensorboard_dir / "supervisor", log)
        self.idle_timer = idle.load_timer(s.idle)
        self._idle_json, self._last_idle_check = None, self.clock.monotonic()  # (dict | None, s)
        self.liveness = liveness.LivenessMemory()
        self.raised, self.val_history = red_flags.load(s.red_flags)
        self.spot_seen, self.spot_notes = spot.load(s.spot)

    # -- the world -------------------------------------------------------------------------------
    def _checkpoint_step(self) -> int | None:
        newest = checkpoints.newest(self.cfg.checkpoint_dir)
        return newest.step if newest else None

    @property
    def phase(self) -> Phase:
        return self.lifecycle.phase

    def _run_view(self) -> RunView:
        t = self.state.trainer
        cost, _ = self.money.to_json()
        return RunView(self.state.started_at, t.step, t.total_steps, t.best_val_loss, self.money.spent, cost)

    def _liveness_snapshot(self, beat: heartbeat.Beat | None) -> liveness.LivenessSnapshot:
        pid, writer = self.worker.pid if self.worker.running else None, beat.fields.get("pid") if beat else None
        pid = writer if pid is not None and self.worker.owns(writer) else pid  # torchrun's rank 0 writes it
        now, written = self.beats.at(beat, self.clock)
        return liveness.snapshot(now, pid, self.beats.started, beat, written)

    # -- jobs ------------------------------------------------------------------------------------
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
        """Worker exit -> lifecycle; start when due; heartbeat -> liveness; milestone; publish."""
        now = self.clock.monotonic()
        self._last_tick = now
        if (ended := self.worker.poll()) is not None:
            self._on_worker_exit(ended, now)
        if self.lifecycle.may_start(now) and not self.stop_requested.is_set() and self._may_start_worker():
            self.executor.execute([StartWorker()])
            self.beats.started = self.clock.monotonic()
        beat = heartbeat.read(self.cfg.heartbeat_file)
        self.executor.execute(heartbeat.absorb(self.state.trainer, beat))  # an alert after an OOM back-off
        allow = liveness.Allowances.of(self.cfg.supervisor)
        hung, self.liveness = liveness.decide(self._liveness_snapshot(beat), allow, self.liveness)
        self.executor.execute([KillWorker(hung)] if hung else [])
        shared = self.gpu.available and self.worker.pausable  # a cluster's group is not ours to pause
        self.executor.execute(self.evaluation.step(self.worker.running, shared, self._run_view()))
        self.publish()

    def _may_start_worker(self) -> bool:
        """A (re)start waits for an S3 restore and re-checks the budget."""
        if self.mirror.restore_pending:
            return False
        if not self.money.over_cap:
            return True
        self.cost_job()  # the cap alert and the shutdown, once; over the cap on a restart: held
        if "cap" in self.money.fired and not self.shutdown_stages.in_progress and self.lifecycle.hold is None:
            self.executor.execute(self.money.held_over_cap())
            self.lifecycle.halted("budget cap reached")
        return False

    def _on_worker_exit(self, ended: Any, now: float) -> None:
        t = self.state.trainer
        t.pid = None
        t.last_exit_code = ended.code if ended.code is not None else -signal.Signals[ended.signal].value
        t.last_exit_reason = (f"{self.lifecycle.kill_reason}; " if self.lifecycle.kill_reason else "") + ended.describe()
        step = self._checkpoint_step()
        if self.stop_requested.is_set():
            self.log.info("worker.exited", reason=t.last_exit_reason, checkpoint_step=step, during="shutdown")
            return
        outcome, reason = self.lifecycle.worker_exited(ended, step, now, self.rng.random())
        level = "info" if ended.kind in ("completed", "preempted") or outcome == "held" else "warning"
        getattr(self.log, level)("worker.exited", reason=t.last_exit_reason, kind=ended.kind,
                                 checkpoint_step=step, decision=outcome)
        if outcome == "restart":
            self.mirror.start_restore()  # anything newer in the bucket comes back before the next start
        elif outcome == "complete":
            self.evaluation.complete()
        elif outcome == "fail":
            self.state.failure = Failure(reason=reason, at=iso(self.clock.now()), exit_code=t.last_exit_code,
                                         message=ended.message)
            self.executor.execute(self.lifecycle.gave_up(reason, ended, step))  # logged, and told once

    def cost_job(self) -> None:
        t = self.state.trainer
        self.executor.execute(self.money.check(t.step, t.total_steps, self.evaluation.state))
        self.tb.write(self.money.scalars(), self.clock.now(), t.step)

    def idle_job(self) -> None:
        now_mono, now_s, t = self.clock.monotonic(), self.clock.boottime(), self.state.trainer
        beat = heartbeat.read(self.cfg.heartbeat_file)
        allow = liveness.Allowances.of(self.cfg.supervisor)
        fresh = liveness.is_fresh(self._liveness_snapshot(beat), allow, self.liveness)
        evaluating = self.evaluation.busy  # the milestone evaluation is work too
        snap = idle.IdleSnapshot(
            boot_id=self.clock.boot_id(), now_s=now_s, step=t.step,
            activity="evaluating" if evaluating else (t.activity if fresh else None),
            worker_running=(self.worker.running and fresh) or evaluating,
            gpu_busy=self.gpu.busy_since(self._last_idle_check, self.cfg.idle.gpu_util_threshold_pct)
            if self.gpu.available else None,
            hold_until_s=idle.hold_until_s(self.cfg.hold_file, now_s, self.clock.now()))
        self._last_idle_check = now_mono
        rule = idle.IdleRule(self.cfg.idle.timeout, self.cfg.idle.warn_before, self.cfg.idle.action, self.ENDING)
        self.idle_timer, actions = idle.decide(self.idle_timer, snap, rule)
        self._idle_json = idle.describe(self.idle_timer, snap, rule, self.clock.now())
        self.executor.execute(actions)

    def halt_job(self) -> None:
        pending, undelivered = mail_status(self.outbox.to_json())
        actions, finished = self.shutdown_stages.advance(self.clock.monotonic(), self.worker.running, pending,
                                                         undelivered, self.state.trainer.last_checkpoint)
        self.executor.execute(actions)
        if finished:
            self.lifecycle.halted(self.shutdown_stages.halt.reason)
            self.publish(force=True)
            self.finished.set()

    def red_flags_job(self) -> None:
        t, now = self.state.trainer, self.clock.now().timestamp()
        self.val_history = red_flags.record(self.val_history, now, t.val_loss, t.step)
        gpu_1h = self.gpu.average(3600, self.clock.monotonic()) if self.gpu.available else None
        snap = red_flags.snapshot(self.cfg.red_flags, now, self.val_history, gpu_1h, self.money.spent,
                                  self.worker.running and t.activity == "training",
                                  bool(self.evaluation.state.get("decision")), t.step, t.total_steps)
        alerts, self.raised = red_flags.decide(snap, self.raised)
        self.executor.execute(alerts)

    def gpu_job(self) -> None:
        self.executor.execute(self.gpu.alerts(self.clock.monotonic()))  # sampled on an outside thread
        self.tb.write(self.gpu.scalars(self.clock.monotonic()), self.clock.now(), self.state.trainer.step)

    def spot_job(self) -> None:
        """Decides on the notices the outside thread last read (Instance.watch)."""
        if (notices := self.instance.notices) is None:
            return
        interruption, rebalance = notices
        snap = spot.SpotSnapshot(interruption, rebalance, self.state.trainer.step or 0, self.mirror.enabled)
        actions, seen = spot.decide(snap, self.spot_seen)
        self.spot_notes.update(spot.notes(seen - self.spot_seen, snap, iso(self.clock.now())))
        self.spot_seen = seen
        self.executor.execute(actions)

    # -- publishing ------------------------------------------------------------------------------
    def _collect(self) -> None:
        """The one place state.json's content is assembled, from each owner's plain data."""
        s, lc = self.state, self.lifecycle
        s.phase, s.phase_since = lc.phase.value, lc.since
        s.trainer.pid, s.trainer.restarts = self.worker.pid if self.worker.running else None, lc.restarts
        s.cost, s.budget = self.money.to_json()
        s.gpu = self.gpu.to_json(self.clock.monotonic())
        s.idle = self._idle_json or s.idle
        s.spot, s.mirror = spot.section(self.spot_notes, self.mirror.upload_records()), self.mirror.section()
        s.instance = self.instance.section()
        s.alerts = self.outbox.to_json()
        s.red_flags = red_flags.section(self.raised, self.val_history)
        s.milestone = self.evaluation.to_json()
        halt = self.shutdown_stages.halt
        if halt is not None:
            s.shutdown = halt.to_json(iso(self.clock.now()) if s.shutdown is None else s.shutdown.get("at"))
        elif lc.phase is Phase.HALTED and s.shutdown is None:
            s.shutdown = {"reason": lc.hold.reason if lc.hold else None, "action": None,
                          "at": iso(self.clock.now()), "result": None}

    def publish(self, force: bool = False) -> None:
        self._collect()
        self.writer.publish(self.state, force)

    def watchdog(self) -> None:
        """WATCHDOG=1, but only while the tick job is alive: a hung scheduler stops the pings."""
        if self._last_tick is None:
            return
        stale_after = 2 * self.cfg.supervisor.poll_interval + (self.notifier.watchdog_interval or 0)
        age = self.clock.monotonic() - self._last_tick
        if age <= stale_after:
            self.notifier.watchdog()
        else:
            self.log.error("watchdog.withheld", last_tick_age_s=round(age, 1))

    # -- life ------------------------------------------------------------------------------------
    def add_job(self, fn: Callable[[], None], seconds: float, name: str, first: bool = False) -> None:
        """An interval job on the supervisor's one thread (the demo's chaos job uses this)."""
        assert self._scheduler is not None
        when = {"next_run_time": self.clock.now()} if first else {}  # (None would add it paused)
        self._scheduler.add_job(self._guard(name, fn), "interval", seconds=seconds, id=name, max_instances=1,
                                coalesce=True, misfire_grace_time=max(1, int(seconds * 4)), **when)

    def _jobs(self) -> list[tuple[Callable[[], None], float, str]]:
        c = self.cfg
        jobs = [(self.tick, c.supervisor.poll_interval, "tick"), (self.cost_job, c.budget.check_every, "cost"),
                (self.idle_job, c.idle.check_every, "idle"), (self.halt_job, c.supervisor.poll_interval, "halt"),
                (self.red_flags_job, max(c.budget.check_every, 1.0), "red-flags"),
                (self.spot_job, c.aws.spot_poll, "spot")]
        if self.gpu.available:
            jobs.append((self.gpu_job, c.gpu.sample_every, "gpu"))
        if c.aws.s3_bucket:
            jobs.append((self.mirror.sync, c.aws.mirror_every, "mirror"))
        if self.notifier.watchdog_interval:
            jobs.append((self.watchdog, self.notifier.watchdog_interval, "watchdog"))
        return jobs

    def start(self) -> None:
        """Start the jobs (non-blocking); IMDS, the price and NVML answer later, on outside threads."""
        self.outbox.transport = make_transport(self.cfg.email, self.instance.ses_factory())
        self.gpu.start()
        self.outside.start(self.instance.watch, self.cfg.aws.spot_poll, "imds")
        self.outside.start(self.money.refresh_price, self.cfg.aws.price_refresh, "price", retry=60.0)
        self.outside.start(self.gpu.sample, self.cfg.gpu.sample_every, "nvml")  # (a no-op without a GPU)
        self.money.accrue()
        self.mirror.start_restore()
        self.lifecycle.next_start = self.clock.monotonic()
        self._scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(1)}, timezone=timezone.utc)
        self._scheduler.start()
        for fn, seconds, name in self._jobs():
            self.add_job(fn, seconds, name, first=name in ("tick", "cost"))
        self.log.info("supervisor.started", config=str(self.cfg.source), run_id=self.state.run_id,
                      checkpoint_step=self._checkpoint_step(), poll_interval_s=self.cfg.supervisor.poll_interval,
                      milestone_due_at=self.evaluation.state.get("due_at"))

    def request_stop(self, signum: int | None = None, _frame: Any = None) -> None:
        if signum is not None and not self.stop_requested.is_set():
            self.log.info("supervisor.signal", signal=signal.Signals(signum).name)
        self.stop_requested.set()

    def wait(self) -> None:
        while not self.stop_requested.wait(0.2):
            pass

    def shutdown(self) -> None:
        """Stop the jobs, checkpoint-and-stop the worker within stop_timeout, write the state."""
        self.stop_requested.set()
        self.outside.stop()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)  # lets a running job finish; none starts after
        self.evaluation.terminate()
        self.writer.ready_sent = True  # never READY=1 on the way out
        if self.worker.running:
            self.notifier.stopping(f"stopping: worker checkpointing (pid {self.worker.pid})")
            self.lifecycle.stopping_for_good()
            self.publish(force=True)
            if (ended := self.executor.stop_now(self.cfg.supervisor.stop_timeout)) is not None:
                self._on_worker_exit(ended, self.clock.monotonic())
                self.log.info("worker.stopped", reason=ended.describe(), checkpoint_step=self._checkpoint_step())
        else:
            self.notifier.stopping()
            if (ended := self.worker.poll()) is not None:
                self._on_worker_exit(ended, self.clock.monotonic())
        heartbeat.absorb(self.state.trainer, heartbeat.read(self.cfg.heartbeat_file))
        # It may have finished all epochs just as we stopped it: the run is complete, not stopped.
        self.lifecycle.stopped(self.state.trainer.activity == "completed", checkpoint_step=self._checkpoint_step())
        self.mirror.wait(self.cfg.supervisor.stop_timeout)
        self.money.accrue()
        self.publish(force=True)
        self.outbox.close()
        self.tb.close()
        self.log.info("supervisor.stopped", phase=self.phase.value, checkpoint_step=self._checkpoint_step())

    def run(self) -> int:
        """Foreground: handle SIGTERM/SIGINT; run until systemd (or a person) stops us."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        try:
            self.wait()
        finally:
            self.shutdown()
        return 0

