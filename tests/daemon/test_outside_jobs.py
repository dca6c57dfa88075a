"""The outside jobs' threads: a hung call holds only its own job, and a stop waits for none."""
from __future__ import annotations

import threading
import time

from daemon.outside_jobs import OutsideJobs


def guard_counting(failures: list[str]):
    def guard(name, fn):
        def job():
            try:
                fn()
            except Exception:
                failures.append(name)
        return job
    return guard


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_hung_job_holds_only_itself_and_a_stop_does_not_wait_for_it():
    hung, release, ticks = threading.Event(), threading.Event(), []
    jobs = OutsideJobs(guard_counting([]))
    jobs.start(lambda: (hung.set(), release.wait(30)), 0.05, "hung")
    jobs.start(lambda: ticks.append(1), 0.05, "other")
    try:
        assert hung.wait(5)
        wait_for(lambda: len(ticks) >= 5)  # the other job keeps its interval
        began = time.monotonic()
        jobs.stop()
        assert time.monotonic() - began < 1.0
        assert all(t.daemon for t in jobs.threads)  # nor does the process's exit
    finally:
        release.set()


def test_a_failing_job_is_counted_and_runs_again_and_not_yet_retries_sooner():
    failures, calls = [], {"raise": 0, "not-yet": 0}

    def raising():
        calls["raise"] += 1
        raise RuntimeError("boom")

    def not_yet():
        calls["not-yet"] += 1
        return False

    jobs = OutsideJobs(guard_counting(failures))
    jobs.start(raising, 0.05, "raise")
    jobs.start(not_yet, 3600.0, "not-yet", retry=0.05)  # hourly, but every 50 ms while unknown
    try:
        wait_for(lambda: calls["raise"] >= 3 and calls["not-yet"] >= 3)
        assert failures.count("raise") >= 3
    finally:
        jobs.stop()
