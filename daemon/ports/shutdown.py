"""Stopping the instance: the stages of a shutdown and the mechanism that carries it out.

A shutdown never blocks the scheduler thread: `advance` moves it one stage per call (ask the
worker to checkpoint and exit, wait for it within stop_timeout, send the "stopping now" mail
and wait a bounded time for delivery, meanwhile let the reports folder reach the bucket within
stop_timeout, act). The reports go first because the decision's mail named their bucket key,
and a stopped instance mirrors nothing, a terminated one nothing ever again.

Acting may fail: StopInstances is refused for a one-time Spot request's instance, `systemctl
poweroff` may be denied. A failure is an error and an alert each time, and is retried with
backoff, falling back from ec2-stop to poweroff, for as long as the daemon runs: while the
instance bills, something keeps trying.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Any

from ..actions import Action, KillWorker, SendAlert, StopWorker, Upload
from ..common.config import Config
from ..rules import spot

OK_PREFIXES = ("StopInstances:", "poweroff requested", "skipped")


@dataclass
class Halt:
    action: str
    reason: str
    started_mono: float
    stage: str = "stopping-worker"     # -> "mailing" -> "acting" -> "done"
    killed: bool = False
    mail_since_mono: float | None = None
    reports: str = ""                  # reports/ before acting: "" -> "asked" (one upload) -> "late" (said once)
    attempts: int = 0
    next_try_mono: float = 0.0
    result: str | None = None
    undelivered: list[str] = field(default_factory=list)

    def to_json(self, at: str) -> dict:
        return {"reason": self.reason, "action": self.action, "at": at, "result": self.result,
                "stage": self.stage, "attempts": self.attempts, "warning_undelivered": self.undelivered or None}


class Machine:
    """The stop mechanism: EC2 StopInstances or TerminateInstances, or the poweroff command.

    `auto` stops where stopping is possible (on-demand, or a persistent Spot request that stops on
    interruption) and otherwise terminates, but only once the S3 mirror has confirmed the newest
    checkpoint and state: a terminated instance takes its disk with it. Without a bucket it keeps
    the instance (rules/spot.py's auto_stop)."""

    STOPPING = "stopping the instance now"  # the shutdown alert's subject (a cluster's watcher ends its job)
    ACTION = "Action: {}."

    def __init__(self, cfg: Config, log: Any, instance: Any, mirror: Any):
        # mirror: daemon/ports/mirror.py's Mirror (confirmed_newest(), uploads_pending, reports_unsent())
        self.cfg, self.log, self.instance, self.mirror = cfg, log, instance, mirror

    def resolve(self, action: str) -> str:
        if action != "auto":
            return action
        self.instance.learn_facts()
        return spot.auto_stop(self.instance.can_stop, bool(self.cfg.aws.s3_bucket))

    def perform(self, action: str) -> tuple[bool, str]:
        if action == "none":
            self.log.warning("shutdown.skipped", action=action, note="action 'none': the instance keeps running")
            return True, "skipped (action none)"
        if action == "poweroff":
            return self._poweroff()
        if action == "keep":  # decided once: done, never retried (the one alert went out before)
            return True, spot.KEPT
        try:
            if action == "terminate":
                if not self.mirror.confirmed_newest():
                    return False, ("not terminating: the newest checkpoint and state are not confirmed in S3 yet "
                                   "(a terminated instance loses its disk)")
                return True, f"TerminateInstances: {self.instance.terminate()}"
            return True, f"StopInstances: {self.instance.ec2_stop()}"
        except Exception as e:
            return False, f"failed: {type(e).__name__}: {e}"

    def _poweroff(self) -> tuple[bool, str]:
        cmd = self.cfg.supervisor.poweroff_command
        behaviour = (self.instance.facts or {}).get("shutdown_behavior")
        what = f" (this instance's shutdown behaviour: {behaviour})" if behaviour else ""
        if not cmd:  # config check refuses it; a failed attempt, retried and alerted, never an IndexError per poll
            return False, "failed: [supervisor] poweroff_command is empty"
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, ValueError, subprocess.TimeoutExpired) as e:  # ValueError: a NUL in a word
            return False, f"failed: {' '.join(cmd)}: {e}"
        if done.returncode != 0:
            return False, f"failed: {' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[:200]}"
        return True, f"poweroff requested{what}"


class ShutdownStages:
    def __init__(self, cfg: Config, log: Any, machine: Machine):
        self.cfg, self.log, self.machine = cfg, log, machine
        self.halt: Halt | None = None

    @property
    def in_progress(self) -> bool:
        return self.halt is not None and self.halt.stage != "done"

    def begin(self, action: str, reason: str, now: float) -> bool:
        """Start a shutdown unless one is under way; after a finished one only a real action
        (not 'none') may start another (idle may stop what a budget cap with 'none' left up), and
        after an instance `auto` kept, only an action chosen by hand (auto would keep it again)."""
        h = self.halt
        if h is not None:
            reopen = h.stage == "done" and (h.action == "none" or (h.result == spot.KEPT and action != "auto"))
            if action == "none" or not reopen:
                return False
        self.halt = Halt(action, reason, now)
        self.log.warning("shutdown.started", reason=reason, action=action)
        return True

    def advance(self, now: float, worker_running: bool, pending_mail: bool, undelivered: list[str],
                newest_checkpoint: str | None) -> tuple[list[Action], bool]:
        """One step; returns (actions, finished_now)."""
        h = self.halt
        if h is None or h.stage == "done":
            return [], False
        actions: list[Action] = []
        if h.stage == "stopping-worker":
            if worker_running:
                actions.append(StopWorker(h.reason))
                if now - h.started_mono > self.cfg.supervisor.stop_timeout and not h.killed:
                    h.killed = True
                    actions.append(KillWorker(f"no checkpoint within stop_timeout while stopping ({h.reason})"))
                return actions, False
            if h.action == "auto" and self.machine.resolve("auto") == "keep":  # one alert, not "stopping now"
                actions.append(spot.kept_alert(h.reason, str(self.cfg.checkpoint_dir), newest_checkpoint))
            else:
                actions.append(SendAlert("shutdown", f"{self.machine.STOPPING} ({h.reason})",
                                         f"Reason: {h.reason}. {self.machine.ACTION.format(h.action)} The newest "
                                         f"checkpoint is {newest_checkpoint or 'none'}."))
            h.stage, h.mail_since_mono = "mailing", now
            return actions, False
        if h.stage == "mailing":
            uploading, actions = self._reports_first(h, now, newest_checkpoint)
            if uploading or pending_mail and now - h.mail_since_mono < self.cfg.email.shutdown_wait:
                return actions, False
            if undelivered:
                self.log.error("shutdown.warning_undelivered", subjects=undelivered,
                               waited_s=round(now - h.mail_since_mono, 1))
            h.undelivered, h.stage = undelivered, "acting"
        if h.stage == "acting" and now >= h.next_try_mono:
            return self._act(h, now)
        return [], False

    def _reports_first(self, h: Halt, now: float, newest_checkpoint: str | None) -> tuple[bool, list[Action]]:
        """(still waiting, actions): while a report is not in the bucket, wait for the upload in
        flight, else ask for one (once; the mirror uploads with a checkpoint), within stop_timeout
        of the worker's exit. A report that does not make it is a warning, never a billing instance."""
        mirror = self.machine.mirror
        if h.reports == "late" or not mirror.reports_unsent():
            return False, []
        waited = now - h.mail_since_mono
        if waited < self.cfg.supervisor.stop_timeout:
            if mirror.uploads_pending:
                return True, []
            if not h.reports and newest_checkpoint:
                h.reports = "asked"
                self.log.info("shutdown.uploading_reports", reason=h.reason, action=h.action)
                return True, [Upload("reports-before-shutdown")]
        h.reports = "late"
        self.log.warning("shutdown.reports_not_uploaded", waited_s=round(waited, 1), action=h.action,
                         note="the reports folder is not all in the bucket (the journal's s3 events say why)")
        return False, []

    def _act(self, h: Halt, now: float) -> tuple[list[Action], bool]:
        action = self.machine.resolve(h.action)
        if action == "ec2-stop" and h.attempts % 2 == 1 and self.cfg.supervisor.poweroff_command:
            action = "poweroff"   # every other retry falls back to powering off from inside
        ok, result = self.machine.perform(action)
        h.attempts += 1
        h.result = result
        if ok:
            h.stage = "done"
            self.log.warning("shutdown.done", action=action, result=result, reason=h.reason)
            return [], True
        s = self.cfg.supervisor
        delay = min(s.shutdown_retry_max, s.shutdown_retry_initial * 2 ** (h.attempts - 1))
        h.next_try_mono = now + delay
        self.log.error("shutdown.failed", action=action, error=result, attempt=h.attempts, retry_in_s=round(delay, 1))
        upload = [Upload("before-terminate")] if action == "terminate" else []
        return upload + [SendAlert("shutdown", f"could not stop the instance ({action}), retrying",
                          f"{h.reason}: {action} failed: {result}\nAttempt {h.attempts}; the next in "
                          f"{delay:.0f} s. THE INSTANCE IS STILL RUNNING AND BILLING: stop it by hand "
                          "if this goes on.")], False


WARNED_KINDS = ("idle", "budget", "shutdown")


def mail_status(alerts: list[dict]) -> tuple[bool, list[str]]:
    """(any mail still pending, the warnings not delivered) from the outbox's list."""
    pending = any(a["status"] == "pending" for a in alerts)
    return pending, [a["subject"] for a in alerts if a["kind"] in WARNED_KINDS and a["status"] in ("pending", "failed")]
