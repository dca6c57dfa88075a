"""daemon/rules/spot.py: what `auto` does to stop this instance, and the stages that carry it out.

A one-time Spot instance cannot be stopped, only terminated, and a terminated instance takes its
disk. With no bucket, `auto` terminated nothing (the mirror's confirmation never comes) and said so
again at every retry, every 15 minutes for as long as the instance ran: an alert storm with no
decision in it. It decides once now: the instance is kept, in one alert that says why and the way on.
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from conftest import write_config
from daemon.actions import SendAlert
from daemon.common import log as logs
from daemon.common.config import load_config
from daemon.ports.shutdown import Machine, ShutdownStages
from daemon.rules.spot import auto_stop

HOUR = 3600.0


@pytest.mark.parametrize("can_stop, has_bucket, expected", [
    (True, False, "ec2-stop"),      # on-demand, or persistent Spot that stops on interruption
    (True, True, "ec2-stop"),
    (None, False, "ec2-stop"),      # not known yet: try to stop (a refusal falls back to poweroff)
    (False, True, "terminate"),     # one-time Spot: terminated once the bucket holds the run
    (False, False, "keep"),         # ... and never without a bucket: its disk holds the only copy
])
def test_auto_on_each_kind_of_instance(can_stop, has_bucket, expected):
    assert auto_stop(can_stop, has_bucket) == expected


def one_time_spot(calls: list[str]):
    def refuse(name):
        def call():
            calls.append(name)
            raise AssertionError(f"{name} called on a kept instance")
        return call

    facts = {"lifecycle": "spot", "spot_request_type": "one-time", "interruption_behavior": "terminate",
             "shutdown_behavior": "terminate"}
    return SimpleNamespace(facts=facts, can_stop=False, learn_facts=lambda: facts,
                           terminate=refuse("terminate"), ec2_stop=refuse("ec2_stop"))


class Unconfirmed:
    """A mirror that never confirms the newest checkpoint and has no report waiting."""
    uploads_pending = False

    def confirmed_newest(self) -> bool:
        return False

    def reports_unsent(self) -> bool:
        return False


def stages(tmp_path, calls, bucket: str = ""):
    cfg = load_config(write_config(tmp_path))
    cfg = dataclasses.replace(cfg, aws=dataclasses.replace(cfg.aws, s3_bucket=bucket),
                              supervisor=dataclasses.replace(cfg.supervisor, poweroff_command=["/bin/false"]))
    log = logs.get("test-spot")
    return ShutdownStages(cfg, log, Machine(cfg, log, one_time_spot(calls), Unconfirmed()))


def run_for(s: ShutdownStages, seconds: float, start: float = 0.0) -> list[SendAlert]:
    """The halt job every 10 s for `seconds`: the alerts it sent."""
    alerts, now = [], start
    while now < start + seconds:
        actions, _ = s.advance(now, worker_running=False, pending_mail=False, undelivered=[],
                               newest_checkpoint="step_00000120")
        alerts += [a for a in actions if isinstance(a, SendAlert)]
        now += 10.0
    return alerts


def test_auto_keeps_a_one_time_spot_instance_without_a_bucket_and_says_so_once(tmp_path):
    calls: list[str] = []
    s = stages(tmp_path, calls)
    assert s.begin("auto", "idle for 2 h", now=0.0)
    alerts = run_for(s, 6 * HOUR)
    assert len(alerts) == 1, [a.subject for a in alerts]  # before: an alert at every retry, for ever
    alert = alerts[0]
    assert alert.kind == "shutdown" and "keeps running" in alert.subject and "one-time Spot" in alert.subject
    for words in ("idle for 2 h", "STILL RUNNING AND BILLING", "[aws] s3_bucket", "step_00000120",
                  "gpu_instance.py terminate"):
        assert words in alert.body, (words, alert.body)
    assert s.halt.stage == "done" and s.halt.attempts == 1 and s.halt.result.startswith("kept running")
    assert calls == []  # neither terminated nor asked to stop, and no poweroff (which would terminate it)
    # The idle rule asks again at every tick: nothing more is tried, nothing more is said.
    assert not s.begin("auto", "idle for 3 h", now=6 * HOUR)
    # A rule whose action was chosen by hand still acts (here a budget cap with action poweroff).
    assert s.begin("poweroff", "budget cap reached", now=6 * HOUR)
    later = run_for(s, 60.0, start=6 * HOUR)
    assert [a.subject for a in later][:1] == ["stopping the instance now (budget cap reached)"]


def test_with_a_bucket_auto_still_terminates_once_the_mirror_confirms(tmp_path):
    calls: list[str] = []
    s = stages(tmp_path, calls, bucket="runs")
    assert s.begin("auto", "idle for 2 h", now=0.0)
    alerts = run_for(s, 120.0)
    assert s.halt.stage != "done" and "not terminating" in (s.halt.result or "")  # waits for the mirror
    assert "stopping the instance now (idle for 2 h)" in [a.subject for a in alerts]
