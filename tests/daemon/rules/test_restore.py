"""daemon/rules/restore.py: whether the bucket's state.json may become this disk's run."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from daemon.rules.restore import Local, Theirs, judge


def test_the_bucket_dates_and_money_are_judged_against_the_local_clock():
    now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    mine = Local(run_ids=frozenset({"r"}), updated_at=now - timedelta(hours=1), spend_usd=3.63)
    table = [
        (None, Theirs("x", now + timedelta(minutes=4), 0.0), "restore"),     # skew allowed
        (None, Theirs("x", now + timedelta(minutes=6), 0.0), "refuse"),
        (None, Theirs("x", None, 0.0), "restore"),
        (mine, Theirs("r", now, 3.63), "restore"),
        (mine, Theirs("r", now, 3.62), "refuse"),
        (mine, Theirs("r", now - timedelta(hours=2), 1.0), "keep"),          # older: local wins, no alarm
        (mine, Theirs("r", None, 5.0), "keep"),
        (mine, Theirs("other", now, 5.0), "refuse"),
        (mine, Theirs("other", now - timedelta(hours=2), 5.0), "refuse"),   # another run is refused, older or not
    ]
    for local, theirs, expected in table:
        assert judge(local, theirs, now)[0] == expected, (local, theirs)


def test_a_future_date_is_told_in_utc_whatever_the_zone_it_was_written_in_or_the_machine_runs_in(monkeypatch):
    """The refusal printed the bucket's own wall time with a Z: '2099-01-01T12:00:00+02:00' read as
    '12:00:00Z', two hours off, in the very line a person checks against the clock."""
    import time

    from daemon.common.clock import parse_iso

    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30: a zone that is neither the file's nor UTC
    time.tzset()
    try:
        now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
        for written in ("2099-01-01T12:00:00+02:00", "2099-01-01T10:00:00Z", "2099-01-01T05:30:00-04:30"):
            verdict, reasons = judge(None, Theirs("x", parse_iso(written), 0.0), now)
            assert verdict == "refuse" and "its updated_at 2099-01-01T10:00:00Z is in the future" in reasons[0], \
                (written, reasons)
    finally:
        monkeypatch.undo()
        time.tzset()
