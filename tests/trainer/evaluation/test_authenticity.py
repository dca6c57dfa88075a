"""The authenticity score separates synthetic Amapiano-like clips from others (AUC >= 0.9)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from amapiano_synth import SR, amapiano_like, not_amapiano  # noqa: E402

from trainer.evaluation.authenticity import FLOOR, features, reference_distance, tempo_score  # noqa: E402


def auc(pos: list[float], neg: list[float]) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((p > n) + 0.5 * (p == n)).mean())


@pytest.mark.slow
def test_score_separates_amapiano_like_clips():
    pos = [features(amapiano_like(s), SR) for s in range(12)]
    neg = [features(not_amapiano(s), SR) for s in range(12)]
    score = auc([f.score for f in pos], [f.score for f in neg])
    assert score >= 0.9, ([round(f.score, 1) for f in pos], [round(f.score, 1) for f in neg])
    assert np.mean([f.tempo for f in pos]) > np.mean([f.tempo for f in neg])
    assert np.mean([f.log_drum for f in pos]) > np.mean([f.log_drum for f in neg])
    refs = pos[:6]
    near = [reference_distance(f, refs) for f in pos[6:]]
    far = [reference_distance(f, refs) for f in neg]
    assert auc(near, far) >= 0.9


def test_deterministic_and_silent_clips_score_zero():
    y = amapiano_like(3)
    assert features(y, SR) == features(y.copy(), SR)
    assert features(np.zeros(SR * 4, dtype=np.float32), SR).score == 0.0


@pytest.mark.parametrize("bpm, expected", [(112, 1.0), (108, 1.0), (98, 0.5), (128, 0.5), (56, 1.0), (224, 1.0),
                                           (80, 0.0), (170, 0.0)])
def test_tempo_score(bpm, expected):
    assert tempo_score(bpm) == pytest.approx(expected)


def test_a_steady_bass_tone_or_buzz_is_not_amapiano():
    t = np.arange(SR * 8) / SR
    sine = (0.5 * np.sin(2 * np.pi * 100 * t)).astype(np.float32)
    buzz = (0.5 * np.sign(np.sin(2 * np.pi * 100 * t))).astype(np.float32)
    for y in (sine, buzz):
        f = features(y, SR)
        assert f.score < 20, f
        assert f.log_drum < 0.2  # low-frequency energy that is not hits is not a log drum
    assert features(sine, SR).gate == FLOOR  # no pulse, one pitch class: the gate is closed
