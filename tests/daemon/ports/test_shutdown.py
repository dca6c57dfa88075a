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

from daemon.actions import SendAlert
from daemon.common import log as logs
from daemon.common.config import load_config
from daemon.ports.shutdown import Machine, ShutdownStages


def stages(tmp_path, command):
    cfg = load_config(write_config(tmp_path))
    cfg = dataclasses.replace(cfg, supervisor=dataclasses.replace(cfg.supervisor, poweroff_command=command))
    log = logs.get("test-shutdown")
    return ShutdownStages(cfg, log, Machine(cfg, log, SimpleNamespace(facts=None), lambda: True))


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
