"""The restart policy as a table: what the supervisor does after each kind of worker exit."""
from __future__ import annotations

import dataclasses

import pytest

from daemon.common.config import Duration, SupervisorConfig
from daemon.rules.restart import RestartHistory, WorkerExit, backoff_delay, decide

CFG = SupervisorConfig(restart_backoff_initial=Duration(10), restart_backoff_max=Duration(600), restart_jitter=0.2,
                       max_restarts_without_progress=3, max_crashes=5, crash_window=Duration(3600))
CRASH = WorkerExit(code=1, error_type="RuntimeError", message="boom")
KILLED = WorkerExit(code=None, signal="SIGKILL")


def run(exits, steps, times=None, cfg=CFG, start_step=None):
    history = RestartHistory(checkpoint_step=start_step)
    decisions = []
    for i, (ex, step) in enumerate(zip(exits, steps)):
        now = times[i] if times else i * 1000.0
        d, history = decide(history, ex, step, now, cfg, jitter=0.5)
        decisions.append(d)
    return decisions, history


@pytest.mark.parametrize("exit, kind", [
    (WorkerExit(0), "completed"), (WorkerExit(75), "preempted"), (WorkerExit(78), "config"),
    (KILLED, "killed"), (CRASH, "crash"),
    (WorkerExit(1, error_type="OutOfMemoryError", message="CUDA out of memory. Tried..."), "oom"),
    (WorkerExit(1, error_type="DoesNotFit", message="CUDA out of memory. Tried... at micro-batch 1"), "does_not_fit"),
    (WorkerExit(None, signal="SIGKILL", message=None, error_type=None), "killed"),
])
def test_exit_kinds(exit, kind):
    assert exit.kind == kind


def test_completed_is_complete_and_config_error_fails_at_once():
    assert decide(RestartHistory(), WorkerExit(0), 100, 0.0, CFG, 0.5)[0].action == "complete"
    d, _ = decide(RestartHistory(), WorkerExit(78, error_type="ConfigError", message="x.toml: bad"), 100, 0.0, CFG, 0.5)
    assert d.action == "fail" and "x.toml: bad" in d.reason


def test_an_oom_the_worker_could_not_back_off_fails_at_once_and_an_unhandled_one_restarts():
    """The worker handles OOM in training by halving its micro-batch; it exits only when nothing is
    left to halve (DoesNotFit): restarting cannot help. An OOM elsewhere is an ordinary crash."""
    no_fit = WorkerExit(1, error_type="DoesNotFit", message="CUDA out of memory at micro-batch 1 while training")
    d, history = decide(RestartHistory(checkpoint_step=100), no_fit, 100, 0.0, CFG, 0.5)
    assert d.action == "fail" and "micro-batch 1" in d.reason and history == RestartHistory(checkpoint_step=100)
    oom = WorkerExit(1, error_type="OutOfMemoryError", message="CUDA out of memory. Tried to allocate 2 GiB")
    decisions, _ = run([oom, oom], [100, 200], start_step=100)
    assert [d.action for d in decisions] == ["restart", "restart"]


def group_oom(micro: int) -> WorkerExit:
    return WorkerExit(1, error_type="OomBackOff", message=f"CUDA out of memory on rank 1 at step 5: the group "
                                                          f"restarts at micro-batch {micro}", micro_batch=micro)


def test_a_group_back_off_restarts_at_once_while_the_micro_batch_shrinks_then_counts_as_a_crash():
    """8 -> 4 -> 2 without a checkpoint in between: restarts at once, no failure counted (more
    than max_restarts_without_progress of them would otherwise fail the run). The same micro-batch
    recorded again (a record that stopped shrinking) is an ordinary crash, which the limits bound."""
    decisions, history = run([group_oom(4), group_oom(2), group_oom(1)], [100, 100, 100], start_step=100)
    assert [(d.action, d.delay) for d in decisions] == [("restart", 0)] * 3
    assert "micro-batch 1" in decisions[-1].reason and history.consecutive_failures == 0
    assert history.restarts_without_progress == 0 and history.backoff_micro == 1
    again = [group_oom(1)] * 4  # the first is a back-off; the three after it are crashes
    decisions, history = run([group_oom(2), *again], [100] * 5, start_step=100)
    assert [d.action for d in decisions] == ["restart"] * 4 + ["fail"]
    assert "3 restarts without checkpoint progress" in decisions[-1].reason
    assert WorkerExit(1, error_type="OomBackOff", message="x").kind == "crash"  # no micro-batch: not one


def test_preemption_restarts_at_once_and_is_not_a_failure():
    decisions, history = run([WorkerExit(75)] * 10, [100 * (i + 1) for i in range(10)])
    assert all(d.action == "restart" and d.delay == 0 for d in decisions)
    assert history.consecutive_failures == 0 and history.crash_times == ()


def test_exits_75_in_a_row_without_a_new_checkpoint_back_off_and_never_spin():
    """Found by the hostile tester: a worker that keeps exiting 75 at the same step was restarted
    at once forever. It is still no failure, but the restarts slow down like crashes."""
    decisions, history = run([WorkerExit(75)] * 12, [100] * 12)
    delays = [d.delay for d in decisions]
    assert all(d.action == "restart" for d in decisions) and history.consecutive_failures == 0
    assert delays[:2] == [0, 0] and delays[2] > 0 and delays[-1] == pytest.approx(600)  # capped at the max
    after, _ = decide(history, WorkerExit(75), 200, 0.0, CFG, 0.5)  # progress again: at once
    assert after.delay == 0


def test_group_back_offs_are_free_only_a_bounded_number_of_times_and_only_for_a_real_micro_batch():
    decisions, _ = run([group_oom(m) for m in range(40, 0, -1)], [100] * 40, start_step=100)
    assert sum(d.action == "restart" and d.delay == 0 for d in decisions) <= 16 + 1
    assert decisions[-1].action == "fail"
    assert dataclasses.replace(group_oom(2), micro_batch=0).kind == "oom"  # an OOM, counted like a crash
    assert dataclasses.replace(group_oom(2), micro_batch=-3).kind == "oom"


def test_backoff_doubles_with_jitter_and_is_capped():
    cfg = dataclasses.replace(CFG, restart_jitter=0.0)
    assert [backoff_delay(n, cfg, 0.5) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert backoff_delay(30, cfg, 0.5) == 600
    assert backoff_delay(1, CFG, 0.0) == pytest.approx(8) and backoff_delay(1, CFG, 0.999999) == pytest.approx(12)


def test_crashes_with_progress_keep_restarting_and_reset_the_backoff():
    # Each crash comes after a new checkpoint, an hour apart: a flaky but productive run.
    decisions, history = run([CRASH] * 8, [100 * (i + 1) for i in range(8)], times=[i * 4000.0 for i in range(8)])
    assert all(d.action == "restart" for d in decisions)
    assert all(d.delay == pytest.approx(10) for d in decisions)  # never escalates: progress each time


def test_gives_up_after_n_restarts_without_checkpoint_progress():
    decisions, history = run([CRASH] * 3, [500, 500, 500], start_step=500)
    assert [d.action for d in decisions] == ["restart", "restart", "fail"]
    assert [round(d.delay) for d in decisions[:2]] == [10, 20]
    assert "3 restarts without checkpoint progress (stuck at step 500" in decisions[-1].reason
    assert "RuntimeError: boom" in decisions[-1].reason


def test_no_checkpoint_at_all_is_no_progress():
    decisions, _ = run([KILLED] * 3, [None] * 3)
    assert decisions[-1].action == "fail" and "no checkpoint yet" in decisions[-1].reason


def test_gives_up_after_n_crashes_in_the_window_even_with_progress():
    cfg = dataclasses.replace(CFG, max_restarts_without_progress=100)
    decisions, _ = run([CRASH] * 5, [1, 2, 3, 4, 5], times=[0, 60, 120, 180, 240], cfg=cfg)
    assert [d.action for d in decisions] == ["restart"] * 4 + ["fail"]
    assert "5 crashes within 3600s" in decisions[-1].reason


def test_crashes_outside_the_window_are_forgotten():
    cfg = dataclasses.replace(CFG, max_restarts_without_progress=100)
    decisions, history = run([CRASH] * 10, list(range(10)), times=[i * 1000.0 for i in range(10)], cfg=cfg)
    assert all(d.action == "restart" for d in decisions)
    assert len(history.crash_times) == 4  # 3600 s window, one crash per 1000 s


def test_a_preemption_in_between_does_not_hide_a_stuck_run():
    exits = [CRASH, WorkerExit(75), CRASH, WorkerExit(75), CRASH]
    decisions, _ = run(exits, [7] * 5, start_step=7)
    assert [d.action for d in decisions] == ["restart"] * 4 + ["fail"]


def test_a_very_long_run_of_exits_never_overflows_the_backoff():
    decisions, _ = run([WorkerExit(75)] * 1100, [100] * 1100)
    assert all(0 <= d.delay <= 600 * 1.2 for d in decisions)
    assert backoff_delay(5000, CFG, 0.5) == 600
