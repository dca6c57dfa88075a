"""`amapiano-train score --offline --json` on clips made here: non-music under 20 %, the groove
at least 35 % and 25 points above every non-music clip."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from amapiano_synth import SR, amapiano_like, disguised_non_music, dotted_groove, non_music, single_note  # noqa: E402

from conftest import cli  # noqa: E402

from trainer.evaluation.score import Scorer  # noqa: E402


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clips")
    for name, y in {**non_music(), "groove": amapiano_like(1)}.items():
        sf.write(d / f"{name}.wav", y, SR)
    for name, y in disguised_non_music(sr=32000).items():
        sf.write(d / f"{name.replace(' ', '-')}.wav", y, 32000)
    sf.write(d / "single-note.wav", single_note(32000), 32000)
    # grooves a beat tracker hears at 4/3 of their tempo, one with quiet piano chords
    sf.write(d / "groove-dotted-116.wav", dotted_groove(48000, 116, chord_gain=0.4), 48000)
    sf.write(d / "groove-quiet-chords.wav", dotted_groove(22050, 113, chord_gain=0.12), 22050)
    sf.write(d / "groove-dotted-111.wav", dotted_groove(44100, 111, chord_gain=0.4), 44100)
    return d


def test_score_offline_json_separates_the_groove_from_non_music(clips):
    r = cli("score", "--offline", "--json", *sorted(str(p) for p in clips.glob("*.wav")), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {Path(row["file"]).stem: row for row in json.loads(r.stdout)}
    assert set(rows) == {"white", "pink", "brown", "silence", "sine", "click", "groove", "blip-metronome",
                         "gated-brown-noise", "sub-bass-pulse", "pulsed-tone", "single-note", "groove-dotted-116",
                         "groove-quiet-chords", "groove-dotted-111"}
    assert all(row["mode"] == "offline (descriptors only)" for row in rows.values())
    tempi = {k: row["descriptors"]["tempo_bpm"] for k, row in rows.items() if k.startswith("groove")}
    assert all(105 <= bpm <= 120 for bpm in tempi.values()), tempi  # not 4/3 of it, as trackers hear dotted drums
    grooves = {k: rows.pop(k)["authenticity_pct"] for k in list(rows) if k.startswith("groove")}
    worst = max(row["authenticity_pct"] for row in rows.values())
    assert all(row["authenticity_pct"] < 20 for row in rows.values()), rows
    assert all(g >= 35 and g - worst >= 25 for g in grooves.values()), (grooves, {k: v["authenticity_pct"] for k, v in rows.items()})
    assert rows["silence"]["authenticity_pct"] == 0


def test_score_reads_a_directory_and_says_offline_in_text(clips):
    r = cli("score", "--offline", str(clips), timeout=120)
    assert r.returncode == 0 and "offline (descriptors only)" in r.stdout and "groove.wav" in r.stdout


def test_an_unreadable_file_is_reported_and_the_rest_scored(tmp_path, clips):
    bad = tmp_path / "garbage.wav"
    bad.write_bytes(b"RIFF\x00\x00not audio at all")
    r = cli("score", "--offline", "--json", str(bad), str(clips / "sine.wav"), timeout=120)
    assert r.returncode == 65 and "garbage.wav: cannot read" in r.stderr
    assert [Path(row["file"]).name for row in json.loads(r.stdout)] == ["sine.wav"]


def test_files_that_are_not_scorable_audio_are_one_line_each_and_the_rest_scored(tmp_path, clips):
    """Garbage a hostile tester fed it: each once scored 0 % in silence or stopped the whole run
    with a traceback."""
    n = 8000
    bad = {"empty.wav": None, "text.wav": b"just some text, named .wav",
           "huge.wav": (np.full(n, 1e30, dtype=np.float32), 8000, "FLOAT"),
           "one-hertz.wav": (np.zeros(n, dtype=np.float32), 1, "FLOAT"),
           "nan.wav": (np.full(n, np.nan, dtype=np.float32), 8000, "FLOAT"),
           "tenth-second.wav": (np.zeros(800, dtype=np.float32), 8000, "FLOAT")}
    for name, what in bad.items():
        if isinstance(what, tuple):
            sf.write(tmp_path / name, what[0], what[1], subtype=what[2])
        else:
            (tmp_path / name).write_bytes(what or b"")
    os.mkfifo(tmp_path / "fifo.wav")  # once blocked `score` for ever, waiting for a writer
    bad["fifo.wav"] = None
    r = cli("score", "--offline", "--json", *(str(tmp_path / name) for name in bad), str(clips / "sine.wav"),
            timeout=120)
    assert r.returncode == 65 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert [Path(row["file"]).name for row in json.loads(r.stdout)] == ["sine.wav"]
    lines = [line for line in r.stderr.splitlines() if line.startswith("amapiano-train score: ")]
    assert len(lines) == len(bad), r.stderr
    for name, why in {"empty.wav": "cannot read", "huge.wav": "outside [-1, 1]", "one-hertz.wav": "sample rate 1 Hz",
                      "nan.wav": "NaN", "tenth-second.wav": "0.10 s long", "fifo.wav": "not a regular file"}.items():
        assert any(name in line and why in line for line in lines), (name, why, lines)
    assert all(not line.endswith(": )") for line in lines)  # every reason says something


def test_a_directory_without_audio_is_an_error_not_an_empty_list(tmp_path):
    (tmp_path / "notes.txt").write_text("no audio here")
    r = cli("score", "--offline", "--json", str(tmp_path), timeout=60)
    assert r.returncode == 65 and "no audio files" in r.stderr and str(tmp_path) in r.stderr


def test_without_clap_weights_the_scorer_says_descriptors_only():
    from daemon.common.config import MilestoneConfig
    from trainer.evaluation.score import build_scorer

    s = build_scorer(MilestoneConfig(clap_model=str(Path("/nonexistent/clap"))), offline=False)
    assert s.clap is None and "did not load" in s.notes[0] and s.mode == "offline (descriptors only)"


def test_non_finite_audio_scores_zero():
    y = amapiano_like(2)
    y[100] = np.nan
    assert Scorer().score(y, SR)["authenticity_pct"] == 0.0
