"""Property-based (hypothesis): for any sequence of snapshots, the idle and budget rules never stop
the instance without the warning email first, and never while training progresses under budget."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.rules import budget, idle
from daemon.actions import SendAlert, Shutdown

RULE = idle.IdleRule(timeout_s=7200, warn_before_s=900, action="ec2-stop")
CAP = 600.0

events = st.lists(st.tuples(
    st.floats(min_value=0, max_value=3600),            # seconds since the previous check
    st.booleans(),                                      # a training step happened
    st.sampled_from([None, True, False]),               # GPU busy / idle / unknown
    st.floats(min_value=0, max_value=60),               # dollars spent since
    st.sampled_from([None, 0.0, 1800.0, 7200.0]),       # `hold` for this long from now
    st.booleans(),                                      # a reboot (new boot id, boot clock restarts)
), min_size=1, max_size=80)


@settings(max_examples=300, deadline=None)
@given(events)
def test_never_stop_without_warning_nor_while_training_under_budget(seq):
    timer, fired = None, frozenset()
    now, step, spent, boot = 0.0, 0, 0.0, 0
    warned_at: float | None = None  # when the current idle warning went out
    for dt, progressed, gpu, dollars, hold, reboot in seq:
        if reboot:  # the old timer is not trusted: a stop needs a warning from this boot
            boot, now, warned_at = boot + 1, 0.0, None
        now += dt
        step += progressed
        spent += dollars
        snap = idle.IdleSnapshot(boot_id=f"b{boot}", now_s=now, step=step, activity="training",
                                 worker_running=True, gpu_busy=gpu,
                                 hold_until_s=None if hold is None else now + hold)
        timer, idle_actions = idle.decide(timer, snap, RULE)
        b_actions, fired = budget.decide(budget.BudgetSnapshot(spent, CAP, (0.5, 0.8), None, 2.0, "ec2-stop"), fired)

        for a in idle_actions:
            if isinstance(a, SendAlert) and a.subject.startswith("idle shutdown in"):
                warned_at = now
            if isinstance(a, SendAlert) and a.subject == "idle shutdown cancelled":
                warned_at = None
        if any(isinstance(a, Shutdown) for a in idle_actions):
            assert warned_at is not None and now - warned_at >= RULE.warn_before_s, "stop without a timely warning"
            assert not progressed and gpu is not True, "stopped while active"
        if any(isinstance(a, Shutdown) for a in b_actions):
            first = b_actions.index(next(a for a in b_actions if isinstance(a, Shutdown)))
            assert any(isinstance(a, SendAlert) and "budget cap" in a.subject for a in b_actions[:first])
            assert spent >= CAP
        if progressed and spent < CAP:
            assert not any(isinstance(a, Shutdown) for a in idle_actions + b_actions)
