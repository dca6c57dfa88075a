"""Stopping the instance: a poweroff command that cannot run is a failed attempt, retried and alerted.

`config check` refuses an empty poweroff_command for a poweroff action; this is the run-time half,
for a config read before that rule: `subprocess.run([])` raised IndexError in the halt job at every
poll, so no shutdown was ever attempted, the phase stayed STOPPING, and the "stopping the instance
now" alert had already gone out."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from conftest import write_config

from daemon.actions import SendAlert, Upload
from daemon.common import log as logs
from daemon.common.config import load_config
from daemon.ports.shutdown import Machine, ShutdownStages


def stages(tmp_path, command):
    cfg = load_config(write_config(tmp_path))
    cfg = dataclasses.replace(cfg, supervisor=dataclasses.replace(cfg.supervisor, poweroff_command=command))
    log = logs.get("test-shutdown")
    return ShutdownStages(cfg, log, Machine(cfg, log, SimpleNamespace(facts=None), Bucket(unsent=False)))


@pytest.mark.parametrize("command", [[], [""], ["power\0off"], ["/nonexistent/poweroff"]])
def test_a_command_that_cannot_run_is_a_failed_attempt_retried_and_alerted(tmp_path, command):
    s = stages(tmp_path, command)
    assert s.begin("poweroff", "budget cap reached", now=0.0)
    s.advance(0.0, worker_running=False, pending_mail=False, undelivered=[], newest_checkpoint=None)  # the warning
    actions, done = s.advance(1.0, worker_running=False, pending_mail=False, undelivered=[], newest_checkpoint=None)
    assert not done and s.halt.attempts == 1 and s.halt.result.startswith("failed")
    assert [a.subject for a in actions if isinstance(a, SendAlert)] == ["could not stop the instance (poweroff), retrying"]
    retry = s.halt.next_try_mono
    actions, done = s.advance(retry, worker_running=False, pending_mail=False, undelivered=[], newest_checkpoint=None)
    assert not done and s.halt.attempts == 2  # tried again, as any failed shutdown is


class Bucket:
    """The mirror as the stages see it: reports written since the last upload, an upload in flight."""

    def __init__(self, unsent: bool):
        self.unsent, self.uploads_pending, self.asked = unsent, False, []

    def confirmed_newest(self) -> bool:
        return True  # the checkpoint went up while the worker was paused for the evaluation

    def reports_unsent(self) -> bool:
        return self.unsent


def no_go_stages(tmp_path, bucket: Bucket) -> ShutdownStages:
    cfg = load_config(write_config(tmp_path))
    log = logs.get("test-shutdown")
    instance = SimpleNamespace(facts=None, ec2_stop=lambda: "stopping", terminate=lambda: "shutting-down")
    s = ShutdownStages(cfg, log, Machine(cfg, log, instance, bucket))
    assert s.begin("terminate", "milestone NO-GO", now=0.0)
    return s


def step(s: ShutdownStages, now: float):
    return s.advance(now, worker_running=False, pending_mail=False, undelivered=[], newest_checkpoint="step_00000304")


@pytest.mark.parametrize("upload_succeeds", [True, False])
def test_the_reports_go_to_the_bucket_before_the_instance_goes(tmp_path, upload_succeeds):
    """A NO-GO report written after the last upload: the stages ask for an upload and wait for it
    (the decision's mail named its bucket key; a terminated disk takes the only copy) before
    TerminateInstances; an upload that fails costs the report, not the shutdown."""
    bucket = Bucket(unsent=True)
    s = no_go_stages(tmp_path, bucket)
    step(s, 0.0)  # the worker is stopped: the warning mail
    actions, done = step(s, 0.5)
    assert [a for a in actions if isinstance(a, Upload)] and not done and s.halt.result is None
    bucket.uploads_pending = True
    for t in (1.0, 5.0, 10.0):
        assert step(s, t) == ([], False) and s.halt.result is None  # still uploading: nothing acts
    bucket.uploads_pending, bucket.unsent = False, not upload_succeeds
    actions, done = step(s, 11.0)
    assert done and s.halt.result == "TerminateInstances: shutting-down"
    assert not [a for a in actions if isinstance(a, Upload)]  # asked once, never again


def test_a_bucket_that_never_answers_holds_the_shutdown_only_within_its_bound(tmp_path):
    bucket = Bucket(unsent=True)
    s = no_go_stages(tmp_path, bucket)
    step(s, 0.0)
    step(s, 0.5)
    bucket.uploads_pending = True  # stalled for good
    bound = s.cfg.supervisor.stop_timeout
    assert step(s, bound - 1.0) == ([], False)
    actions, done = step(s, bound + 0.5)
    assert done and s.halt.result.startswith("TerminateInstances")


def test_nothing_unsent_means_no_wait(tmp_path):
    s = no_go_stages(tmp_path, Bucket(unsent=False))
    step(s, 0.0)
    actions, done = step(s, 0.5)
    assert done and actions == []
