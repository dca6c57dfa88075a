"""The idle rule as a table: warn at deadline minus lead, stop at the deadline, cancel on activity."""
from __future__ import annotations

from daemon.actions import SendAlert
from daemon.rules.idle import IdleRule, IdleSnapshot, decide

RULE = IdleRule(timeout_s=7200, warn_before_s=900, action="ec2-stop")
MIN = 60.0


def snap(t_min, step=None, activity=None, running=False, gpu=None, hold=None, boot="b1"):
    return IdleSnapshot(boot_id=boot, now_s=t_min * MIN, step=step, activity=activity, worker_running=running,
                        gpu_busy=gpu, hold_until_s=hold)


def run(snaps, timer=None):
    out = []
    for s in snaps:
        timer, actions = decide(timer, s, RULE)
        out.append(actions)
    return out, timer


def kinds(actions):
    return [type(a).__name__ + (":" + a.subject if isinstance(a, SendAlert) else "") for a in actions]


def test_no_activity_warns_at_1h45_and_stops_at_2h():
    out, _ = run([snap(t) for t in (0, 60, 104, 105, 110, 119, 120, 121)])
    assert [kinds(a) for a in out] == [[], [], [], ["SendAlert:idle shutdown in 15 min"], [], [],
                                       ["Shutdown"], ["Shutdown"]]


def test_progress_keeps_it_alive():
    out, _ = run([snap(t, step=t) for t in range(0, 300, 5)])
    assert all(a == [] for a in out)


def test_activity_after_the_warning_cancels_it():
    out, timer = run([snap(0, step=10), snap(106, step=10), snap(110, step=11), snap(200, step=11)])
    assert kinds(out[1]) == ["SendAlert:idle shutdown in 15 min"]
    assert kinds(out[2]) == ["SendAlert:idle shutdown cancelled"]
    assert out[3] == []  # 90 min since the activity: not idle yet
    assert timer.warned_at_s is None


def test_busy_gpu_or_busy_worker_is_not_idle_and_unknown_gpu_proves_nothing():
    assert all(a == [] for a in run([snap(t, gpu=True) for t in range(0, 300, 10)])[0])
    assert all(a == [] for a in run([snap(t, activity="checkpointing", running=True) for t in range(0, 300, 10)])[0])
    out, _ = run([snap(t, gpu=None) for t in (0, 105, 120)])  # no readings: progress alone decides
    assert kinds(out[2]) == ["Shutdown"]
    out, _ = run([snap(t, gpu=False) for t in (0, 105, 120)])
    assert kinds(out[2]) == ["Shutdown"]


def test_a_stale_timer_from_before_a_reboot_is_not_trusted():
    _, timer = run([snap(0), snap(100)])
    # After the reboot the boot clock reads 106 min: trusted, the old timer would warn at once.
    out, timer = run([snap(106, boot="b2"), snap(200, boot="b2")], timer)
    assert out == [[], []]  # counting starts again at the new boot's first check


def test_a_late_daemon_warns_first_and_waits_the_lead():
    out, _ = run([snap(0), snap(300), snap(310), snap(315)])
    assert kinds(out[1])[0].startswith("SendAlert:idle shutdown in 15 min")
    assert out[2] == [] and kinds(out[3]) == ["Shutdown"]


def test_hold_postpones_and_warns_again_before_the_new_deadline():
    hold = 240 * MIN
    out, _ = run([snap(0), snap(106), snap(110, hold=hold), snap(120, hold=hold), snap(225, hold=hold),
                  snap(240, hold=hold)])
    assert kinds(out[1]) == ["SendAlert:idle shutdown in 15 min"]
    assert out[3] == []  # the old deadline passed without a stop
    assert kinds(out[4]) == ["SendAlert:idle shutdown in 15 min"]
    assert kinds(out[5]) == ["Shutdown"]


def test_a_hold_file_written_by_hand_holds_at_most_a_week(tmp_path):
    """`hold` refuses more than 7d, but hold.json is a plain file: `until` in 2099 written by hand
    switched the idle rule off for 73 years, and a cap counted from each tick moved with the clock
    (a hostile tester's find); an `until` without a zone made the idle job raise at every tick."""
    import os
    from datetime import datetime, timezone

    from daemon.rules.idle import MAX_HOLD_S, hold_until_s

    written = datetime(2026, 12, 3, tzinfo=timezone.utc)
    hold = tmp_path / "hold.json"
    hold.write_text('{"until": "2099-01-01T00:00:00Z"}')
    os.utime(hold, (written.timestamp(), written.timestamp()))
    assert hold_until_s(hold, 1000.0, written) == 1000.0 + MAX_HOLD_S
    a_day_later = datetime(2026, 12, 4, tzinfo=timezone.utc)
    assert hold_until_s(hold, 1000.0, a_day_later) == 1000.0 + MAX_HOLD_S - 86400
    hold.write_text('{"until": "2026-12-03T02:00:00Z"}')
    os.utime(hold, (written.timestamp(), written.timestamp()))
    assert hold_until_s(hold, 1000.0, written) == 1000.0 + 7200
    hold.write_text('{"until": "2026-12-10T00:00:00"}')
    assert hold_until_s(hold, 1000.0, written) is None


def test_the_warning_says_what_ends_one_instance_or_a_cluster_job():
    """On a cluster the watcher ends the SkyPilot job; 'the instance will be stopped' misled."""
    from daemon.supervisor import Supervisor
    from daemon.watch import Watcher

    for owner, says, never in ((Supervisor, "the instance will be stopped", "SkyPilot"),
                               (Watcher, "the SkyPilot job will end", "instance")):
        rule = IdleRule(timeout_s=7200, warn_before_s=900, action="auto", ending=owner.ENDING)
        _, [warning] = decide(decide(None, snap(0), rule)[0], snap(106), rule)
        assert says in warning.body and never not in warning.body, warning.body
