"""daemon/report/events.py: the event file reader the report's plots use, against long, torn,
damaged and planted files."""
from __future__ import annotations

import os
import time
from datetime import timedelta

from daemon.report.events import MAX_POINTS, read_file
from daemon.report.scalars import read
from daemon.tensorboard import ScalarWriter
from report_run import T0


def events(tmp_path, n: int, tags=("train/loss",)):
    w = ScalarWriter(tmp_path / "train")
    for step in range(n):
        w.write_at({tag: float(step) for tag in tags}, T0 + timedelta(seconds=step), step)
    w.close()
    return next((tmp_path / "train").iterdir())


def test_a_long_series_is_thinned_evenly_to_about_max_points_and_keeps_the_newest(tmp_path):
    path = events(tmp_path, 3 * MAX_POINTS + 7, tags=("train/loss", "train/lr", "gpu3/power_w"))
    got, why = read_file(path, time.monotonic() + 60)
    points = got["train/loss"]
    assert why is None and set(got) == {"train/loss"}  # only what the plots draw
    assert MAX_POINTS // 2 <= len(points) <= 2 * MAX_POINTS and points[0][0] == 0 and points[-1][0] == 3 * MAX_POINTS + 6
    gaps = {b[0] - a[0] for a, b in zip(points, points[1:-1])}
    assert len(gaps) == 1  # evenly spaced, but for the newest point


def test_a_torn_tail_keeps_every_whole_event_and_says_nothing(tmp_path):
    path = events(tmp_path, 50)
    path.write_bytes(path.read_bytes()[:-7])  # the writer's last event half written
    got, why = read_file(path, time.monotonic() + 60)
    assert why is None and [p[0] for p in got["train/loss"]] == list(range(49))


def test_a_damaged_length_keeps_what_came_before_and_says_so(tmp_path):
    path = events(tmp_path, 50)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 8] = b"\xff" * 8
    path.write_bytes(bytes(raw))
    got, why = read_file(path, time.monotonic() + 60)
    assert why is not None and "read in part" in why and 0 < len(got.get("train/loss", [])) < 50


def test_past_its_time_a_file_is_read_in_part_and_the_page_says_so(tmp_path):
    events(tmp_path, 10)
    got, why = read_file(next((tmp_path / "train").iterdir()), time.monotonic() - 1)
    assert got == {} and "past the time" in why


def test_a_fifo_swapped_in_for_an_event_file_is_refused_not_waited_on(tmp_path):
    (tmp_path / "train").mkdir()
    os.mkfifo(tmp_path / "train" / "events.out.tfevents.9.fifo")
    got, why = read_file(tmp_path / "train" / "events.out.tfevents.9.fifo", time.monotonic() + 60)
    assert got == {} and "not a regular file" in why
    series, problems = read(tmp_path)
    assert series == {} and any("not a regular event file" in p for p in problems)


def test_a_planted_gpu_tag_that_matplotlib_would_parse_is_not_read(tmp_path):
    """The GPU plot labels each curve with its tag's first part: `gpu$\\nosuchcmd$` is mathtext
    that fails to parse, and failed the whole GPU plot."""
    from daemon.report.build import draw
    from daemon.report.inputs import gather
    from report_run import fake_run

    cfg = fake_run(tmp_path)
    w = ScalarWriter(cfg.tensorboard_dir / "supervisor")
    w.write({"gpu$\\nosuchcmd$/util_pct": 50.0, "gpu12/util_pct": 40.0}, T0 + timedelta(hours=2), 8)
    w.close()
    inp = gather(cfg, "now")
    assert "gpu12/util_pct" in inp.scalars and not [t for t in inp.scalars if "$" in t]
    title, png, why = draw(inp)["gpu"]
    assert png is not None, why
