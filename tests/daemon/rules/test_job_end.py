"""The cluster job's end and its exit status: what SkyPilot's job_recovery reads (daemon/rules/job_end.py)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from daemon.common import exits
from daemon.rules.job_end import RECOVER, JobSnapshot, decide
from daemon.states import Phase

RUNNING = JobSnapshot(group_running=True, adopted=True, waited_s=5.0, adopt_limit_s=600.0, busy=False,
                      halted=False, halt_reason=None, phase=Phase.RUNNING, exit_kind=None, exit_code=None,
                      killed=None)
GONE = replace(RUNNING, group_running=False)


@pytest.mark.parametrize("snap, code, words", [
    (replace(GONE, halted=True, halt_reason="budget cap reached", phase=Phase.HALTED), exits.OK, "budget cap"),
    (replace(GONE, halted=True, halt_reason="milestone NO-GO", phase=Phase.HALTED), exits.OK, "NO-GO"),
    (replace(GONE, halted=True, halt_reason="idle for 2 h", phase=Phase.HALTED), exits.OK, "idle"),
    (replace(GONE, phase=Phase.COMPLETED, exit_kind="completed", exit_code=0), exits.OK, "completed"),
    (replace(GONE, phase=Phase.BACKOFF, exit_kind="killed", exit_code=-9, killed="hung: no heartbeat for 40 s"),
     RECOVER, "stalled"),
    (replace(GONE, phase=Phase.STARTING, exit_kind="preempted", exit_code=75), RECOVER, "without our asking"),
    (replace(GONE, phase=Phase.BACKOFF, exit_kind="oom_backoff", exit_code=1), RECOVER, "without our asking"),
    (replace(GONE, phase=Phase.HALTED, exit_kind="preempted", exit_code=75), RECOVER, "Spot"),
    (replace(GONE, phase=Phase.BACKOFF, exit_kind="crash", exit_code=1), exits.FAILED, "crashed"),
    (replace(GONE, phase=Phase.FAILED, exit_kind="config", exit_code=78), exits.CONFIG, "FAILED"),
    (replace(GONE, phase=Phase.FAILED, exit_kind="crash", exit_code=1), exits.FAILED, "FAILED"),
    (replace(GONE, adopted=False, phase=Phase.STARTING, waited_s=601.0), exits.FAILED, "no training group"),
])
def test_cluster_job_ends_with_the_status_skypilot_must_act_on(snap, code, words):
    end = decide(snap)
    assert end is not None and end.code == code and words in end.reason, end


@pytest.mark.parametrize("snap", [
    RUNNING,                                                    # training
    replace(RUNNING, halted=True, phase=Phase.STOPPING),        # asked to stop, still checkpointing
    replace(GONE, busy=True, phase=Phase.COMPLETED),            # the completion's evaluation and export
    replace(GONE, busy=True, phase=Phase.STOPPING),             # the shutdown's mail is going out
    replace(GONE, phase=Phase.STOPPING),                        # the rule's stages end it, not this
    replace(GONE, adopted=False, phase=Phase.STARTING),         # the run script has not started torchrun yet
])
def test_cluster_job_goes_on_while_something_is_left_to_do(snap):
    assert decide(snap) is None


def test_cluster_stop_by_a_rule_is_never_recovered_and_a_stall_always_is():
    """The property SkyPilot's settings rest on: 0 is not retried, 75 is (recover_on_exit_codes)."""
    for phase in Phase:
        for kind in (None, "completed", "preempted", "killed", "crash", "config"):
            halted = decide(replace(GONE, halted=True, halt_reason="x", phase=phase, exit_kind=kind))
            assert halted is not None and halted.code == exits.OK
            if phase in (Phase.RUNNING, Phase.BACKOFF, Phase.STARTING):
                stalled = decide(replace(GONE, phase=phase, exit_kind=kind, killed="hung"))
                assert stalled is not None and stalled.code == RECOVER


def test_cluster_budget_cap_during_the_milestone_evaluation_ends_the_job_at_once():
    """The cap stopped the group and its shutdown is done while the milestone evaluation runs: the
    job waited for the evaluation (an hour of samples on a big model) billing every node past the
    cap. On one instance the machine's stop ends the evaluation too; here the job's end does."""
    snap = replace(GONE, busy=True, halted=True, halt_reason="budget cap reached", phase=Phase.HALTED)
    end = decide(snap)
    assert end is not None and end.code == exits.OK and "budget cap" in end.reason, end


def test_cluster_group_gone_before_the_watcher_adopted_it_ends_the_job_with_its_own_status():
    """Waiting loading_timeout for a group whose status the run script has already written billed
    every node for nothing (30 min by default), then exited 1 whatever the group said."""
    early = replace(GONE, adopted=False, phase=Phase.STARTING, waited_s=3.0, unwatched=True)
    for status, code in ((0, exits.OK), (78, exits.CONFIG), (65, exits.DATAERR), (75, RECOVER), (1, exits.FAILED),
                         (None, exits.FAILED)):
        end = decide(replace(early, unwatched_exit=status))
        assert end is not None and end.code == code and "before the watcher adopted it" in end.reason, (status, end)
