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
