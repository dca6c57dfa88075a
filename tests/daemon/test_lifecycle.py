"""The lifecycle: every allowed transition is taken, a disallowed one is refused and logged at
error level, holds rank as they should, and an exit means what the table says."""
from __future__ import annotations

import itertools

import pytest

from conftest import RecordingLog
from daemon.common.config import SupervisorConfig
from daemon.lifecycle import ALLOWED, HoldKind, Lifecycle
from daemon.rules.restart import WorkerExit
from daemon.states import Phase


def make(phase: Phase = Phase.STARTING) -> tuple[Lifecycle, RecordingLog]:
    log = RecordingLog()
    return Lifecycle(log, lambda: "2026-01-01T00:00:00Z", SupervisorConfig(), None, phase=phase), log


PAIRS = [(a, b) for a in Phase for b in Phase if a is not b]


@pytest.mark.parametrize("old,new", [(a, b) for a, b in PAIRS if b in ALLOWED[a]],
                         ids=lambda p: p.value)
def test_every_allowed_transition_is_taken_and_logged(old, new):
    lc, log = make(old)
    assert lc.to(new, reason="test") is True and lc.phase is new
    assert log.names() == ["phase.changed"]


@pytest.mark.parametrize("old,new", [(a, b) for a, b in PAIRS if b not in ALLOWED[a]],
                         ids=lambda p: p.value)
def test_a_disallowed_transition_is_refused_at_error_level(old, new):
    lc, log = make(old)
    assert lc.to(new) is False and lc.phase is old and lc.refused == 1
    assert log.events[0][:2] == ("error", "lifecycle.refused")


def test_terminal_phases_have_no_way_out_and_live_ones_can_always_stop():
    for p in Phase:
        assert (not ALLOWED[p]) == p.is_terminal()
        if not p.is_terminal():
            assert Phase.STOPPED in ALLOWED[p] or Phase.STOPPING in ALLOWED[p]


def test_a_halt_outranks_a_pause_and_not_the_other_way():
    lc, _ = make()
    assert lc.hold_worker(HoldKind.PAUSE, "milestone")
    assert lc.hold_worker(HoldKind.HALT, "budget cap reached")
    assert not lc.hold_worker(HoldKind.PAUSE, "milestone again")
    assert lc.hold.kind is HoldKind.HALT and not lc.release(0.0)


@pytest.mark.parametrize("hold,code,phase", [
    (HoldKind.PAUSE, 75, Phase.PAUSED), (HoldKind.SPOT, 75, Phase.HALTED), (HoldKind.HALT, 75, Phase.STOPPING),
    (HoldKind.HALT, 0, Phase.COMPLETED), (None, 0, Phase.COMPLETED), (None, 78, Phase.FAILED),
    (None, 75, Phase.STARTING), (None, 1, Phase.BACKOFF)])
def test_what_an_exit_means(hold, code, phase):
    lc, _ = make()
    lc.started(123, None)
    if hold:
        lc.hold_worker(hold, "why")
    outcome, _ = lc.worker_exited(WorkerExit(code=code), 10, 100.0, 0.5)
    assert lc.phase is phase
    assert outcome == {Phase.COMPLETED: "complete", Phase.FAILED: "fail"}.get(
        phase, "held" if hold else "restart")


def test_a_pause_released_starts_again_at_once():
    lc, _ = make()
    lc.started(1, None)
    lc.hold_worker(HoldKind.PAUSE, "milestone")
    lc.worker_exited(WorkerExit(code=75), 10, 50.0, 0.5)
    assert not lc.may_start(60.0)
    assert lc.release(60.0) and lc.phase is Phase.STARTING and lc.may_start(60.0)


def test_the_table_covers_every_phase():
    assert set(ALLOWED) == set(Phase)
    assert all(b in Phase for b in itertools.chain(*ALLOWED.values()))


# ---------------------------------------------------------------- FAILED is told, once

@pytest.mark.parametrize("ended,way", [
    (WorkerExit(code=78, message="[data] source = cache but /var/cache/tokens holds no token cache"),
     "amapiano-train config check"),
    (WorkerExit(code=1, error_type="DoesNotFit", message="CUDA out of memory at micro-batch 1"), "amapiano-train plan"),
    (WorkerExit(code=1, error_type="OSError", message="[Errno 28] No space left on device"), "journalctl")])
def test_a_run_that_fails_says_why_and_the_way_on(ended, way):
    from daemon.actions import SendAlert

    cfg = SupervisorConfig(max_crashes=1)
    lc, log = make()
    lc.cfg = cfg
    lc.started(1, None)
    outcome, reason = lc.worker_exited(ended, 40, 100.0, 0.5)
    assert outcome == "fail" and lc.phase is Phase.FAILED
    [alert] = lc.gave_up(reason, ended, 40)
    assert isinstance(alert, SendAlert) and alert.kind == "failed" and alert.subject.startswith("run FAILED: ")
    assert reason in alert.body and ended.message in alert.body and "step 40" in alert.body
    assert way in alert.body and "systemctl restart amapiano-train" in alert.body
    assert log.pairs()[-1] == ("error", "worker.gave_up")
    # The same failure again (a daemon restart, nothing fixed) carries the same key; another does not.
    again, _ = make()
    assert again.gave_up(reason, ended, 40)[0].once == alert.once != ""
    assert again.gave_up(reason, ended, 48)[0].once != alert.once
