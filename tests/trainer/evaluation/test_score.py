"""`amapiano-train score --offline --json` on clips made here: non-music under 20 %, the groove
at least 35 % and 25 points above every non-music clip."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from amapiano_synth import SR, amapiano_like, disguised_non_music, non_music  # noqa: E402

from conftest import cli  # noqa: E402

from trainer.evaluation.score import Scorer  # noqa: E402


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clips")
    for name, y in {**non_music(), "groove": amapiano_like(1)}.items():
        sf.write(d / f"{name}.wav", y, SR)
    for name, y in disguised_non_music(sr=32000).items():
        sf.write(d / f"{name.replace(' ', '-')}.wav", y, 32000)
    return d


def test_score_offline_json_separates_the_groove_from_non_music(clips):
    r = cli("score", "--offline", "--json", *sorted(str(p) for p in clips.glob("*.wav")), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {Path(row["file"]).stem: row for row in json.loads(r.stdout)}
    assert set(rows) == {"white", "pink", "brown", "silence", "sine", "click", "groove", "blip-metronome",
                         "gated-brown-noise", "sub-bass-pulse", "pulsed-tone"}
    assert all(row["mode"] == "offline (descriptors only)" for row in rows.values())
    groove = rows.pop("groove")["authenticity_pct"]
    worst = max(row["authenticity_pct"] for row in rows.values())
    assert all(row["authenticity_pct"] < 20 for row in rows.values()), rows
    assert groove >= 35 and groove - worst >= 25, (groove, {k: v["authenticity_pct"] for k, v in rows.items()})
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


def test_without_clap_weights_the_scorer_says_descriptors_only():
    from daemon.common.config import MilestoneConfig
    from trainer.evaluation.score import build_scorer

    s = build_scorer(MilestoneConfig(clap_model=str(Path("/nonexistent/clap"))), offline=False)
    assert s.clap is None and "did not load" in s.notes[0] and s.mode == "offline (descriptors only)"


def test_non_finite_audio_scores_zero():
    y = amapiano_like(2)
    y[100] = np.nan
    assert Scorer().score(y, SR)["authenticity_pct"] == 0.0
