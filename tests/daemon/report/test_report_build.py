"""daemon/report: the HTML report from a run directory made by hand (tests/report_run.py).

What a person checks: the decision and each reason with its threshold and measured value, the
plots, the model's and the baseline's clip side by side, the red flags; and that no file the
report reads (state.json, the metrics, the event files, a sample's path) can inject markup,
copy a file from outside the reports folder, or turn the report into a traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from html.parser import HTMLParser

import pytest

from conftest import REPO, cli, write_config
from daemon.common import exits
from daemon.common.config import load_config
from daemon.report.build import build
from daemon.report.scalars import read
from daemon.tensorboard import ScalarWriter
from report_run import HOSTILE, T0, fake_run, wav

ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "div", "span", "table",
                "tr", "th", "td", "figure", "figcaption", "img", "audio", "br", "code", "b", "ul", "li"}


class Tags(HTMLParser):
    """Every element and attribute the page holds, as a browser's parser sees them."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags_of(page: str) -> list[tuple[str, dict]]:
    p = Tags()
    p.feed(page)
    return p.tags


def test_hostile_strings_in_state_and_metrics_show_as_text_never_as_markup(tmp_path):
    cfg = fake_run(tmp_path, hostile=HOSTILE)
    page = build(cfg, "milestone").html.read_text()
    tags = tags_of(page)
    assert {t for t, _ in tags} <= ALLOWED_TAGS, {t for t, _ in tags} - ALLOWED_TAGS
    assert not [a for _, attrs in tags for a in attrs if a.startswith("on")], "an event handler got in"
    assert all(attrs["src"].startswith("data:image/png;base64,") for t, attrs in tags if t == "img")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page  # shown, as text
    assert page.count("<script") == 0 and "default-src 'none'" in page  # and the browser is told to run nothing


def test_no_inputs_at_all_is_a_report_that_says_not_available(tmp_path):
    cfg = load_config(write_config(tmp_path))
    built = build(cfg, "now")
    page = built.html.read_text()
    assert "no decision yet" in page and page.count("not available") >= 4
    assert "no state file yet" in page and "No evaluation yet" in page
    assert built.html == cfg.reports_dir / "report.html" and built.clips == 0


def test_garbage_everywhere_costs_sections_never_the_report(tmp_path):
    """A damaged state.json, a metrics file whose figures are strings and lists, a FIFO and a
    damaged event file in the log directory: one page, exit 0, each problem named, no traceback,
    and the FIFO does not block it."""
    cfg = fake_run(tmp_path)
    cfg.state_file.write_text('{"schema_version": 1, "run_id": ')
    m = json.loads((cfg.reports_dir / "week_5_metrics.json").read_text())
    m["model"]["samples"][0].update(score_pct="99", latency_s=[1], prompt={"a": 1})
    m["model"]["authenticity"] = {"mean_pct": 1e308, "ci95_pct": "wide"}
    m["comparison"] = {"improvement_pct": float("nan"), "ci95_pct": [1], "p_value": True}
    m["checks"], m["reasons"], m["thresholds"] = {"authenticity": ["miss"]}, "one string", None
    (cfg.reports_dir / "week_5_metrics.json").write_text(json.dumps(m))
    os.mkfifo(cfg.tensorboard_dir / "train" / "events.out.tfevents.0.fifo")
    (cfg.tensorboard_dir / "supervisor" / "events.out.tfevents.1.garbage").write_bytes(b"\x00\xff" * 5000)
    started = time.monotonic()
    out = cli("report", "--config", str(cfg.source), "--kind", "milestone", "--log-format", "console", timeout=120)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - started < 60 and "Traceback" not in out.stderr + out.stdout
    page = (cfg.reports_dir / "week_5_report.html").read_text()
    assert "state.json" in page and "not valid JSON" in page
    assert "events.out.tfevents.0.fifo: not a regular event file" in page
    assert "unknown" in page and "99 %" not in page  # a string score is not a number


def test_a_sample_path_outside_the_reports_folder_is_never_copied(tmp_path):
    """The metrics name each clip's path: /etc/passwd, ../state.json or a link out of the folder
    would be copied beside the report and mirrored to the bucket."""
    cfg = fake_run(tmp_path, pairs=4)
    secret = wav(tmp_path / "elsewhere" / "secret.wav", 100.0)
    link = cfg.reports_dir / "milestone_eval_samples" / "model" / "link.wav"
    link.symlink_to(secret)
    m = json.loads((cfg.reports_dir / "week_5_metrics.json").read_text())
    for sample, path in zip(m["model"]["samples"], ["/etc/passwd", str(cfg.reports_dir / ".." / "state.json"),
                                                    str(link), str(secret)]):
        sample["file"] = path
    (cfg.reports_dir / "week_5_metrics.json").write_text(json.dumps(m))
    built = build(cfg, "milestone")
    copied = sorted(p.name for p in (cfg.reports_dir / "week_5_report_files").iterdir())
    assert copied == [f"baseline_{i:03d}.wav" for i in range(1, 5)], "only the baseline's clips, from inside"
    assert sum("not a file inside" in n for n in built.notes) == 4
    assert b"root:" not in (cfg.reports_dir / "week_5_report.zip").read_bytes()


def test_the_milestone_report_states_the_decision_its_reasons_and_plays_both_sides(tmp_path):
    cfg = fake_run(tmp_path, decision="CONDITIONAL GO")
    built = build(cfg, "milestone")
    page = built.html.read_text()
    assert built.html == cfg.reports_dir / "week_5_report.html"
    assert 'class="decision CONDITIONAL">CONDITIONAL GO<' in page
    for measured, threshold in [("45.0 % (95 % CI 41.0 to 49.0)", "95 % CI above 35 %"),
                                ("+10.00 points (95 % CI +8.10 to +11.90), p = 0.0156", "p below 0.05"),
                                ("$41.00", "at most $600.00"), ("2.05", "at most 3.5")]:
        assert measured in page and threshold in page
    assert "evaluated again every 3 days" in page  # what happens next
    assert "run-abc123" in page and "NVIDIA A10G" in page and "g5.xlarge" in page and "sha256" in page
    assert "red flag: GPU under 50 %" in page and "2026-11-02T13:00:00Z" in page
    tags = tags_of(page)
    assert len([t for t, _ in tags if t == "img"]) == 4  # loss, spend, paired, GPU
    audio = [a["src"] for t, a in tags if t == "audio"]
    assert len(audio) == 12 and audio[:2] == ["week_5_report_files/model_001.wav", "week_5_report_files/baseline_001.wav"]
    assert all((cfg.reports_dir / src).read_bytes()[:4] == b"RIFF" for src in audio)
    assert "2.9" in page and "3.8" in page  # FAD-inf of each side
    with zipfile.ZipFile(built.zip) as z:
        assert sorted(z.namelist())[:2] == ["week_5_report/week_5_report.html",
                                            "week_5_report/week_5_report_files/baseline_001.wav"]
        assert len(z.namelist()) == 13


def test_a_no_go_report_says_what_happens_next_and_the_advice(tmp_path):
    cfg = fake_run(tmp_path, decision="NO-GO")
    (cfg.reports_dir / "abort_report.json").write_text(json.dumps({"recommended_next_step": "review the proxy tags"}))
    page = build(cfg, "milestone").html.read_text()
    assert "shutdown action" in page and "Recommended next: review the proxy tags" in page


def test_mid_run_the_report_draws_loss_and_spend_with_no_decision(tmp_path):
    cfg = fake_run(tmp_path, decision=None)
    built = build(cfg, "now")
    page = built.html.read_text()
    assert "no decision yet" in page and "2026-11-03T04:00:00Z" in page  # the milestone's due time
    assert len([t for t, _ in tags_of(page) if t == "img"]) == 3  # loss, spend, GPU; no pairs yet
    assert "No evaluation yet" in page


def test_the_completion_report_shows_the_final_evaluation_and_the_milestone_decision(tmp_path):
    cfg = fake_run(tmp_path, decision="GO", completed=True)
    page = build(cfg, "completion").html.read_text()
    assert "Training completed 2026-11-04T20:00:00Z: 240 steps" in page and "best_model" in page
    assert 'class="decision GO">GO<' in page and "final_eval" not in page
    assert "completion_report_files/model_001.wav" in page


def test_the_figures_go_to_tensorboard_at_the_evaluated_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = fake_run(tmp_path, decision="CONDITIONAL GO")
    build(cfg, "milestone", scalars=True)
    acc = EventAccumulator(str(cfg.tensorboard_dir / "evaluation"))
    acc.Reload()
    got = {tag: [(e.step, round(e.value, 4)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert got["milestone/authenticity_pct"] == [(100, 45.0)] and got["milestone/baseline_authenticity_pct"] == [(100, 35.0)]
    assert got["milestone/p_value"] == [(100, 0.0156)] and got["milestone/fad_model"] == [(100, 2.9)]
    assert got["milestone/decision"] == [(100, 1.0)]


def test_a_restarted_worker_curve_replaces_the_old_one_from_its_step(tmp_path):
    for n, steps in enumerate([range(0, 50, 10), range(30, 70, 10)]):  # a crash at 45, resumed from the checkpoint at 30
        w = ScalarWriter(tmp_path / "train")
        for step in steps:
            w.write_at({"train/loss": float(n)}, T0, step)
        w.close()
        time.sleep(0.05)  # the second file is newer
    series, problems = read(tmp_path)
    assert [(s, v) for s, _, v in series["train/loss"]] == [(0, 0), (10, 0), (20, 0), (30, 1), (40, 1), (50, 1), (60, 1)]
    assert problems == []


def test_an_out_that_takes_no_files_is_one_line_and_65(tmp_path):
    cfg = fake_run(tmp_path, decision=None, tensorboard=False)
    (tmp_path / "afile").write_text("x")
    out = cli("report", "--config", str(cfg.source), "--out", str(tmp_path / "afile" / "sub"), "--log-format", "console")
    assert out.returncode == exits.DATAERR and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "cannot write the report" in out.stderr and "Traceback" not in out.stderr


def test_report_help_says_where_the_report_is_and_how_to_open_it():
    out = cli("report", "--help")
    assert out.returncode == 0 and "scp -r" in out.stdout and "week_5_report.html" in out.stdout


@pytest.mark.parametrize("module", ["daemon.supervisor", "daemon.evaluation", "daemon.cli"])
def test_the_supervisor_never_loads_matplotlib_or_the_event_reader(module):
    code = (f"import sys, {module}; print(sorted(m for m in ('matplotlib', 'daemon.report.build', "
            "'tensorboard.backend.event_processing.event_accumulator') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
