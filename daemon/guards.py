"""Money and machine: the jobs that watch spend, idleness, the GPU and Spot notices, and the one
executor that carries out what their rules decide.

Each job reads the world into a snapshot, hands it to a pure rule (daemon/budget.py,
daemon/idle.py) and executes the actions it returns. Nothing here blocks the scheduler's one
thread for long: a shutdown is a small state machine advanced every tick (checkpoint the
worker, wait for it, wait a bounded time for the warning email, act), and S3 transfers run on
their own thread, so the watchdog keeps being fed throughout.
"""
from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import budget as budget_rule
from . import idle as idle_rule
from . import red_flags as red_flag_rule
from .actions import Action, SendAlert, Shutdown, StopWorker
from .aws import Aws
from .common.clock import iso, parse_iso
from .cost import Forecast, Ledger, accrue, ebs_usd_per_hour, forecast, new_ledger
from .gpu import GpuMonitor
from .imds import Imds, ImdsError
from .mail import Outbox, make_transport
from .common import checkpoints
from .common.atomic import read_json

if TYPE_CHECKING:
    from .supervisor import Supervisor

PACE_WINDOW_S = 1800.0


@dataclass
class Halt:
    """A shutdown in progress: checkpoint the worker, wait for the mail, act."""

    action: str
    reason: str
    started_mono: float
    stage: str = "stopping-worker"     # -> "mailing" -> "done"
    killed: bool = False
    alert_ids: list[str] = field(default_factory=list)
    mail_since_mono: float | None = None


class ScalarWriter:
    """TensorBoard scalars without torch: tensorboard's own event writer.

    The step of every point is the whole seconds since the run started, so the curves line up
    across daemon restarts (a counter would start again at 0 and draw over itself)."""

    def __init__(self, logdir: Path, run_started: datetime):
        self.logdir = logdir
        self.run_started = run_started
        self._writer = None

    def write(self, scalars: dict[str, float | None], now: datetime) -> None:
        """One point per known value (None is unknown: no point), then flush."""
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        if self._writer is None:
            self.logdir.mkdir(parents=True, exist_ok=True)
            self._writer = EventFileWriter(str(self.logdir))
        step = int((now - self.run_started).total_seconds())
        for tag, value in scalars.items():
            if value is not None:
                self._writer.add_event(Event(wall_time=now.timestamp(), step=step, summary=Summary(
                    value=[Summary.Value(tag=tag, simple_value=float(value))])))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class Guards:
    def __init__(self, sup: "Supervisor", nvml: Any = None, ses_factory: Callable[[], Any] | None = None):
        self.sup, self.cfg, self.log, self.clock = sup, sup.cfg, sup.log, sup.clock
        state = sup.state
        self._ses_factory = ses_factory
        self.outbox = Outbox(self.cfg.email, None, self.log, self.clock, previous=state.alerts,
                             run_name=state.run_id)
        self.gpu = GpuMonitor(self.log, nvml)
        self.imds = (Imds(self.cfg.aws.imds_url, self.cfg.aws.imds_timeout, self.clock)
                     if self.cfg.aws.imds_url else None)
        self.identity: dict | None = None
        self.aws: Aws | None = None
        self.rate: float | None = self.cfg.budget.hourly_rate_usd or None
        self.rate_source = "config" if self.rate else "unknown"
        self.rate_at: str | None = None
        self.ebs_per_h = ebs_usd_per_hour(self.cfg.budget.ebs_gb, self.cfg.budget.ebs_usd_per_gb_month)
        self.ledger: Ledger | None = Ledger.from_json(state.cost) if state.cost else None
        self.fired = frozenset((state.budget or {}).get("fired", []))
        self.idle_timer = self._load_idle_timer(state.idle)
        self.forecast: Forecast | None = None
        self.halt: Halt | None = None
        self.spot: dict = dict(state.spot or {})
        self.restoring: threading.Thread | None = None
        self.uploads: list[threading.Thread] = []
        flags = state.red_flags or {}
        self.raised = frozenset(flags.get("raised", []))
        self.val_history: list[list[float]] = [p for p in flags.get("val_history", []) if len(p) == 2]
        self._spot_lock = threading.Lock()
        self._pace: deque[tuple[float, int]] = deque()
        self._last_idle_check = self.clock.monotonic()
        self._idle_json_cache: dict | None = None
        self._tb = ScalarWriter(self.cfg.tensorboard_dir / "supervisor", parse_iso(state.started_at))

    # -- start-up --------------------------------------------------------------------------
    @staticmethod
    def _load_idle_timer(data: dict | None) -> idle_rule.IdleTimer | None:
        if not data or "timer" not in data:
            return None
        try:
            return idle_rule.IdleTimer(**data["timer"])
        except TypeError:
            return None

    def start(self) -> None:
        """Find out where we run (GPU, EC2), bring the ledger up to now, restore from S3."""
        self.outbox.transport = self._transport()
        self.gpu.start()
        if self.imds is not None:
            try:
                self.identity = self.imds.identity()
                self.log.info("aws.instance", instance_id=self.identity.get("instanceId"),
                              instance_type=self.identity.get("instanceType"),
                              zone=self.identity.get("availabilityZone"))
            except ImdsError as e:
                self.log.info("aws.not_ec2", reason=str(e), note="no Spot notices, no live price, no ec2-stop")
        region = self.cfg.aws.region or (self.identity or {}).get("region")
        if region:
            self.aws = Aws(self.cfg.aws, region)
        for rule, action in (("idle", self.cfg.idle.action), ("budget", self.cfg.budget.action)):
            if action == "ec2-stop" and (self.identity is None or self.aws is None):
                self.log.warning("shutdown.unavailable", rule=rule, action=action,
                                 note="not on EC2: this action will only be logged")
        if self.rate is None:
            self.refresh_price()
        self.accrue()
        if self.aws is not None and self.cfg.aws.s3_bucket:
            self.restoring = threading.Thread(target=self._restore_from_s3, name="s3-restore", daemon=True)
            self.restoring.start()

    def _transport(self):
        factory = self._ses_factory
        if self.cfg.email.transport == "ses" and factory is None:
            region = self.cfg.aws.region or (self.identity or {}).get("region") or "us-east-1"
            factory = lambda: Aws(self.cfg.aws, region).client("ses")  # noqa: E731
        return make_transport(self.cfg.email, factory)

    def jobs(self) -> list[tuple[Callable[[], None], float, str]]:
        c = self.cfg
        jobs = [(self.cost_job, c.budget.check_every, "cost"), (self.idle_job, c.idle.check_every, "idle"),
                (self.halt_job, c.supervisor.poll_interval, "halt"),
                (self.red_flags_job, max(c.budget.check_every, 1.0), "red-flags")]
        if self.gpu.available:
            jobs.append((self.gpu_job, c.gpu.sample_every, "gpu"))
        if self.identity is not None:
            jobs.append((self.spot_job, c.aws.spot_poll, "spot"))
            if not c.budget.hourly_rate_usd:
                jobs.append((self.refresh_price, c.aws.price_refresh, "price"))
        return jobs

    def may_start_worker(self) -> bool:
        """A (re)start re-checks the budget and waits for an S3 restore."""
        if self.restoring is not None and self.restoring.is_alive():
            return False
        if self.halt is not None:
            return False
        if self.ledger is not None and self.ledger.total_usd >= self.cfg.budget.max_usd:
            if "cap" not in self.fired:
                self.cost_job()  # raises the cap alert and the shutdown, once
            elif self.sup.phase.value != "HALTED":
                # Restarted over the cap (the instance was started again): the worker stays
                # stopped; the idle rule, with its warning, stops the instance later.
                self.sup.hold_worker("budget cap reached")
                self.execute([SendAlert("budget", "budget cap reached: the worker stays stopped",
                                        f"Spent ${self.ledger.total_usd:,.2f} of ${self.cfg.budget.max_usd:,.2f}. "
                                        "Raise [budget] max_usd and restart the service to go on.")])
                self.sup.halted("budget cap reached", done=False)
            return False
        return True

    # -- cost and budget -------------------------------------------------------------------
    def refresh_price(self) -> None:
        if self.identity is None or self.aws is None:
            if self.rate is None:
                self.log.error("cost.rate_unknown", note="not on EC2 and [budget] hourly_rate_usd = 0: "
                                                         "spend cannot be counted; set hourly_rate_usd")
            return
        try:
            found = self.aws.spot_price(self.identity["instanceType"], self.identity["availabilityZone"],
                                        self.clock.now())
        except Exception as e:
            self.log.warning("cost.price_failed", error=f"{type(e).__name__}: {e}", keeping=self.rate)
            return
        if found is None:
            self.log.warning("cost.price_missing", instance_type=self.identity["instanceType"], keeping=self.rate)
            return
        price, at = found
        if price != self.rate:
            self.log.info("cost.rate", usd_per_h=price, source="spot", price_time=iso(at))
        self.rate, self.rate_at = price, iso(self.clock.now())
        self.rate_source = f"spot {self.identity['instanceType']} {self.identity['availabilityZone']}"

    def accrue(self) -> Ledger:
        now, boot_id, boottime = self.clock.now(), self.clock.boot_id(), self.clock.boottime()
        if self.ledger is None:
            self.ledger = new_ledger(boot_id, boottime, now)
        before = self.ledger
        self.ledger = accrue(self.ledger, boot_id, boottime, now, self.rate, self.rate_source, self.ebs_per_h)
        if self.ledger.boots != before.boots:
            self.log.info("cost.new_boot", boots=self.ledger.boots,
                          counted_since_boot_s=round(boottime, 1), compute_usd=round(self.ledger.compute_usd, 4))
        return self.ledger

    def _steps_per_s(self) -> float | None:
        step, now = self.sup.state.trainer.step, self.clock.monotonic()
        if step is None:
            return None
        if self._pace and step < self._pace[-1][1]:
            self._pace.clear()  # resumed from an earlier checkpoint
        self._pace.append((now, step))
        while len(self._pace) > 2 and now - self._pace[0][0] > PACE_WINDOW_S:
            self._pace.popleft()
        (t0, s0), (t1, s1) = self._pace[0], self._pace[-1]
        return (s1 - s0) / (t1 - t0) if t1 - t0 >= 5 and s1 > s0 else None

    def cost_job(self) -> None:
        ledger = self.accrue()
        t = self.sup.state.trainer
        left = (t.total_steps - t.step) if t.total_steps is not None and t.step is not None else None
        milestone_at = parse_iso(self.sup.state.started_at) + timedelta(seconds=self.cfg.milestone.after)
        hours_to_milestone = (milestone_at - self.clock.now()).total_seconds() / 3600
        self.forecast = forecast(ledger.total_usd, self.rate, self.ebs_per_h, self._steps_per_s(), left,
                                 hours_to_milestone if hours_to_milestone > 0 else None)
        snap = budget_rule.BudgetSnapshot(
            spent_usd=ledger.total_usd, cap_usd=self.cfg.budget.max_usd,
            fractions=tuple(self.cfg.budget.alert_fractions), projected_usd=self.forecast.at_completion_usd,
            rate_usd_per_h=self.rate, action=self.cfg.budget.action)
        actions, self.fired = budget_rule.decide(snap, self.fired)
        self.execute(actions)
        self.tb_scalars({"cost/total_usd": ledger.total_usd, "cost/rate_usd_per_h": self.rate})

    # -- idle ------------------------------------------------------------------------------
    def _hold_until_s(self, now_s: float) -> float | None:
        hold = read_json(self.cfg.hold_file)
        if not hold or not isinstance(hold.get("until"), str):
            return None
        try:
            until = parse_iso(hold["until"])
        except ValueError:
            return None
        return now_s + (until - self.clock.now()).total_seconds()

    def idle_job(self) -> None:
        now_mono, now_s = self.clock.monotonic(), self.clock.boottime()
        t = self.sup.state.trainer
        evaluating = self.sup.evaluation.run is not None  # the milestone evaluation is work too
        snap = idle_rule.IdleSnapshot(
            boot_id=self.clock.boot_id(), now_s=now_s, step=t.step,
            activity="evaluating" if evaluating else t.activity,
            worker_running=self.sup.worker.running or evaluating,
            gpu_busy=self.gpu.busy_since(self._last_idle_check, self.cfg.idle.gpu_util_threshold_pct)
            if self.gpu.available else None,
            hold_until_s=self._hold_until_s(now_s))
        self._last_idle_check = now_mono
        rule = idle_rule.IdleRule(self.cfg.idle.timeout, self.cfg.idle.warn_before, self.cfg.idle.action)
        self.idle_timer, actions = idle_rule.decide(self.idle_timer, snap, rule)
        self._idle_json_cache = self._idle_json(snap, rule)
        self.execute(actions)

    def _idle_json(self, snap: idle_rule.IdleSnapshot, rule: idle_rule.IdleRule) -> dict:
        """The idle section of state.json, as of this check (wall times for people)."""
        timer, now_s, now = self.idle_timer, snap.now_s, self.clock.now()

        def wall(s: float | None) -> str | None:
            return None if s is None else iso(now + timedelta(seconds=s - now_s))

        out = {"timer": asdict(timer), "last_active_at": wall(timer.last_active_s),
               "idle_for_s": round(max(0.0, now_s - timer.last_active_s), 1),
               "timeout_s": self.cfg.idle.timeout, "action": self.cfg.idle.action,
               "warned_at": wall(timer.warned_at_s), "checked_at": iso(now),
               "gpu_busy": snap.gpu_busy, "hold_until": wall(snap.hold_until_s),
               "shutdown_due_at": wall(idle_rule.shutdown_at(timer, snap, rule))}
        return out

    def tb_scalars(self, scalars: dict[str, float | None]) -> None:
        self._tb.write(scalars, self.clock.now())

    # -- red flags ---------------------------------------------------------------------------
    def red_flags_job(self) -> None:
        t, now = self.sup.state.trainer, self.clock.now()
        if t.val_loss is not None and (not self.val_history or self.val_history[-1][1] != t.val_loss):
            self.val_history.append([now.timestamp(), float(t.val_loss)])
            del self.val_history[:-2000]
        rf = self.cfg.red_flags
        snap = red_flag_rule.RedFlagSnapshot(
            now_s=now.timestamp(), val_history=tuple((a, b) for a, b in self.val_history),
            gpu_util_1h_pct=self.gpu.average(3600, self.clock.monotonic()) if self.gpu.available else None,
            training=self.sup.worker.running and t.activity == "training",
            spent_usd=self.ledger.total_usd if self.ledger else None,
            milestone_decided=bool((self.sup.state.milestone or {}).get("decision")),
            stall_s=rf.val_loss_stall, min_gpu_util_pct=rf.min_gpu_util_pct,
            max_cost_before_milestone_usd=rf.max_cost_before_milestone_usd)
        alerts, self.raised = red_flag_rule.decide(snap, self.raised)
        for a in alerts:
            self.log.warning("red_flag", subject=a.subject)
        self.execute(alerts)

    # -- GPU -------------------------------------------------------------------------------
    def gpu_job(self) -> None:
        problems = self.gpu.sample(self.clock.monotonic(), iso(self.clock.now()))
        for problem in problems:
            key = f"gpu:{problem.split(' (')[0]}"
            if key not in self.fired:
                self.fired = self.fired | {key}
                self.execute([SendAlert("gpu", problem.split(" (")[0], problem)])
        scalars = {"gpu/util_pct": self.gpu.average(60, self.clock.monotonic())}
        for r in self.gpu.readings:
            scalars.update({f"gpu{r.index}/util_pct": r.util_pct, f"gpu{r.index}/power_w": r.power_w,
                            f"gpu{r.index}/mem_used_mb": r.mem_used_mb})
        self.tb_scalars(scalars)

    # -- Spot ------------------------------------------------------------------------------
    def spot_job(self) -> None:
        try:
            action, rebalance = self.imds.spot_action(), self.imds.rebalance()
        except ImdsError as e:
            self.log.warning("spot.imds_failed", error=str(e))
            return
        step = self.sup.state.trainer.step or 0
        if action and "interruption" not in self.spot:
            self.spot["interruption"] = {"notice": action, "seen_at": iso(self.clock.now()), "step": step}
            self.sup.hold_worker("Spot interruption")
            self.sup.worker.signal(signal.SIGUSR1)  # checkpoint now and exit
            self.log.warning("spot.interruption", action=action.get("action"), deadline=action.get("time"), step=step)
            self.execute([SendAlert("spot", f"Spot interruption at {action.get('time')}: checkpointing",
                                    f"AWS will {action.get('action')} the instance at {action.get('time')}. "
                                    f"The worker is writing a checkpoint at step {step}"
                                    f"{' and it goes to S3' if self.cfg.aws.s3_bucket else ''}; "
                                    "the next start resumes from it.")])
            self._upload_after(step, "interruption")
        elif rebalance and "rebalance" not in self.spot and "interruption" not in self.spot:
            self.spot["rebalance"] = {"notice": rebalance, "seen_at": iso(self.clock.now()), "step": step}
            self.sup.worker.signal(signal.SIGUSR2)  # checkpoint now, keep training
            self.log.warning("spot.rebalance", notice_time=rebalance.get("noticeTime"), step=step)
            self.execute([SendAlert("spot", "Spot rebalance recommendation: checkpointing early",
                                    "The instance is at elevated risk of interruption. A checkpoint is being "
                                    "written now and training goes on.")])
            self._upload_after(step, "rebalance")

    def _upload_after(self, step: int, why: str) -> None:
        if self.aws is None or not self.cfg.aws.s3_bucket:
            return
        thread = threading.Thread(target=self._upload, args=(step, why), name=f"s3-upload-{why}", daemon=True)
        self.uploads.append(thread)
        thread.start()

    def uploads_pending(self) -> bool:
        return any(t.is_alive() for t in self.uploads)

    def wait_uploads(self, timeout: float) -> None:
        """On the way out: an upload in flight is what saves the run on a replacement instance."""
        for t in self.uploads:
            t.join(max(0.0, timeout))

    def _upload(self, step: int, why: str) -> None:
        """Wait for a checkpoint at or past `step`, then put it (and state.json) in the bucket."""
        deadline = self.clock.monotonic() + max(120.0, self.cfg.supervisor.stop_timeout)
        while self.clock.monotonic() < deadline:
            newest = checkpoints.newest(self.cfg.checkpoint_dir)
            if newest and newest.step >= step and (not self.sup.worker.running or newest.step > step or why == "rebalance"):
                break
            time.sleep(0.2)
        newest = checkpoints.newest(self.cfg.checkpoint_dir)
        record: dict[str, Any] = {"step": newest.step if newest else None, "started_at": iso(self.clock.now())}
        started = self.clock.monotonic()
        try:
            if newest is None:
                raise FileNotFoundError(f"{self.cfg.checkpoint_dir}: no checkpoint to upload")
            record["objects"] = self.aws.upload_checkpoint(newest.path)
            self.aws.upload_file(self.cfg.state_file, "state.json")
            record.update(confirmed_at=iso(self.clock.now()), seconds=round(self.clock.monotonic() - started, 2))
            self.log.info("spot.uploaded", why=why, step=record["step"], seconds=record["seconds"],
                          bucket=self.cfg.aws.s3_bucket)
        except Exception as e:
            record["error"] = f"{type(e).__name__}: {e}"
            self.log.error("spot.upload_failed", why=why, error=record["error"])
            self.outbox.send("spot", "checkpoint upload to S3 failed", record["error"])
        with self._spot_lock:
            self.spot.setdefault(why, {})["upload"] = record

    def _restore_from_s3(self) -> None:
        try:
            found = self.aws.newest_s3_checkpoint()
            local = checkpoints.newest(self.cfg.checkpoint_dir)
            if found is None or (local is not None and local.step >= found[0]):
                self.log.info("s3.restore_not_needed", s3_step=found[0] if found else None,
                              local_step=local.step if local else None)
                return
            self.log.info("s3.restoring", step=found[0], bucket=self.cfg.aws.s3_bucket)
            path = self.aws.download_checkpoint(found[1], self.cfg.checkpoint_dir)
            self.log.info("s3.restored", step=found[0], path=str(path))
        except Exception as e:
            self.log.error("s3.restore_failed", error=f"{type(e).__name__}: {e}",
                           note="starting from the newest local checkpoint")

    # -- the executor ----------------------------------------------------------------------
    def execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendAlert):
                alert = self.outbox.send(action.kind, action.subject, action.body)
                if self.halt is not None:
                    self.halt.alert_ids.append(alert.id)
            elif isinstance(action, StopWorker):
                self.sup.hold_worker(action.reason)
            elif isinstance(action, Shutdown) and self.halt is None:
                self.halt = Halt(action.action, action.reason, self.clock.monotonic())
                self.sup.hold_worker(action.reason)
                self.log.warning("shutdown.started", reason=action.reason, action=action.action)
                self.halt_job()

    def halt_job(self) -> None:
        """Advance a shutdown by one step; never blocks for long."""
        h = self.halt
        if h is None or h.stage == "done":
            return
        now = self.clock.monotonic()
        if h.stage == "stopping-worker":
            if self.sup.worker.running:
                if not self.sup.stop_requested_of_worker:
                    self.sup.request_worker_checkpoint_and_exit()
                if now - h.started_mono > self.cfg.supervisor.stop_timeout and not h.killed:
                    self.log.error("shutdown.worker_kill", note="no checkpoint within stop_timeout")
                    self.sup.worker.signal(signal.SIGKILL)
                    h.killed = True
                return
            alert = self.outbox.send("shutdown", f"stopping the instance now ({h.reason})",
                                     f"Reason: {h.reason}. Action: {h.action}. The newest checkpoint is "
                                     f"{self.sup.state.trainer.last_checkpoint or 'none'}.")
            h.alert_ids.append(alert.id)
            h.stage, h.mail_since_mono = "mailing", now
        if h.stage == "mailing":
            alerts = self.outbox.to_json()
            if any(a["status"] == "pending" for a in alerts) and now - h.mail_since_mono < self.cfg.email.shutdown_wait:
                return
            undelivered = [a["subject"] for a in alerts
                           if a["kind"] in ("idle", "budget", "shutdown") and a["status"] in ("pending", "failed")]
            if undelivered:
                self.log.error("shutdown.warning_undelivered", subjects=undelivered,
                               waited_s=round(now - h.mail_since_mono, 1))
            result = self._perform(h.action)
            self.sup.state.shutdown = {"reason": h.reason, "action": h.action, "at": iso(self.clock.now()),
                                       "result": result, "warning_undelivered": undelivered or None}
            h.stage = "done"
            self.sup.halted(h.reason)

    def _perform(self, action: str) -> str:
        if action == "none":
            self.log.warning("shutdown.skipped", action=action, note="action 'none': the instance keeps running")
            return "skipped (action none)"
        if action == "poweroff":
            done = subprocess.run(["systemctl", "poweroff"], capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                self.log.error("shutdown.failed", action=action, error=done.stderr.strip())
                return f"failed: {done.stderr.strip()}"
            return "poweroff requested"
        if self.identity is None or self.aws is None:
            self.log.error("shutdown.failed", action=action, error="not on EC2 (no instance identity)")
            return "failed: not on EC2"
        try:
            state = self.aws.stop_instance(self.identity["instanceId"])
        except Exception as e:
            self.log.error("shutdown.failed", action=action, error=f"{type(e).__name__}: {e}")
            return f"failed: {type(e).__name__}: {e}"
        self.log.warning("shutdown.ec2_stop", instance_id=self.identity["instanceId"], state=state)
        return f"StopInstances: {state}"

    # -- publishing --------------------------------------------------------------------------
    def publish_into(self, state) -> None:
        if self.ledger is not None:
            f = self.forecast
            state.cost = {**self.ledger.to_json(), "rate_usd_per_h": self.rate, "rate_source": self.rate_source,
                          "rate_updated_at": self.rate_at or self.ledger.rate_updated_at,
                          "ebs_usd_per_h": self.ebs_per_h,
                          "forecast": None if f is None else {
                              "steps_per_s": f.steps_per_s, "hours_to_completion": f.hours_to_completion,
                              "at_completion_usd": f.at_completion_usd, "at_milestone_usd": f.at_milestone_usd}}
            state.budget = {"max_usd": self.cfg.budget.max_usd, "left_usd": self.cfg.budget.max_usd - self.ledger.total_usd,
                            "fired": sorted(self.fired), "action": self.cfg.budget.action}
        state.gpu = self.gpu.to_json(self.clock.monotonic())
        state.idle = self._idle_json_cache
        with self._spot_lock:
            state.spot = dict(self.spot) or None
        state.alerts = self.outbox.to_json()
        state.red_flags = {"raised": sorted(self.raised), "val_history": self.val_history[-2000:]}

    def close(self) -> None:
        self.outbox.close()
        self._tb.close()
