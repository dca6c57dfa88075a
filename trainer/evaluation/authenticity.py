"""The authenticity score: how Amapiano-like a clip sounds, 0-100 %, deterministic.

The seed calls it "AURA-X cultural scoring" and never defines it. Here it is four audio
features, computed with librosa, each mapped to [0, 1] and weighted:

    tempo     0.30  the beat tracker's tempo in Amapiano's range, 108-118 BPM: 1 inside,
                    falling linearly to 0 at 20 BPM outside (half and double tempo count too)
    log drum  0.30  the percussive (HPSS) energy in 40-120 Hz, the log drum's sub-bass hits,
                    as a share of all the energy (a steady bass tone does not count); 6 % or
                    more scores 1
    grid      0.20  onsets on a 16th-note grid at the tracked tempo: the share of onsets within
                    a tenth of a 16th of a grid line, times how busy the grid is (shakers and
                    hats fill it: 8 or more onsets a bar score 1)
    harmony   0.20  sustained chords: harmonic energy above 150 Hz (5 % of the total scores
                    1), times the chroma's stability from frame to frame, times how often it
                    holds three or more pitch classes (a chord, not a single tone)

Optionally, with a reference set of real Amapiano clips, `reference_distance` scores a clip by
its distance to the references' mean feature vector in the same feature space.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

WEIGHTS = {"tempo": 0.30, "log_drum": 0.30, "grid": 0.20, "harmony": 0.20}
TEMPO_RANGE = (108.0, 118.0)
LOG_DRUM_FULL = 0.06   # percussive 40-120 Hz share of all energy that scores 1


@dataclass(frozen=True)
class Features:
    tempo_bpm: float
    tempo: float
    log_drum: float
    grid: float
    harmony: float

    @property
    def score(self) -> float:
        """0-100 %."""
        return 100.0 * sum(w * getattr(self, k) for k, w in WEIGHTS.items())

    def vector(self) -> np.ndarray:
        return np.array([self.tempo, self.log_drum, self.grid, self.harmony])

    def to_json(self) -> dict:
        return {**asdict(self), "score_pct": self.score}


def tempo_score(bpm: float) -> float:
    lo, hi = TEMPO_RANGE
    best = 0.0
    for candidate in (bpm, bpm * 2, bpm / 2):  # beat trackers often land on half or double time
        distance = max(lo - candidate, candidate - hi, 0.0)
        best = max(best, max(0.0, 1.0 - distance / 20.0))
    return best


def features(y: np.ndarray, sr: int) -> Features:
    import librosa

    y = np.asarray(y, dtype=np.float32)
    if y.size < sr // 2 or not np.any(y):
        return Features(0.0, 0.0, 0.0, 0.0, 0.0)
    hop = 512
    stft = np.abs(librosa.stft(y, n_fft=2048, hop_length=hop))
    harmonic, percussive = librosa.decompose.hpss(stft)
    freqs = librosa.fft_frequencies(sr=sr, n_fft=2048)

    onset_env = librosa.onset.onset_strength(S=librosa.amplitude_to_db(percussive, ref=np.max), sr=sr,
                                             hop_length=hop)
    tempo = float(np.atleast_1d(librosa.feature.tempo(onset_envelope=onset_env, sr=sr, hop_length=hop))[0])

    # Sub-bass energy that arrives as hits: the low band's percussive part against ALL the
    # energy, so a steady bass tone (harmonic, not percussive) does not count.
    total = (stft ** 2).sum() + 1e-12
    low_band = (freqs >= 40) & (freqs <= 120)
    low_hits = (percussive[low_band] ** 2).sum()
    log_drum = min(1.0, float(low_hits / total) / LOG_DRUM_FULL)

    onsets = librosa.onset.onset_detect(onset_envelope=onset_env, sr=sr, hop_length=hop, units="time")
    grid = 0.0
    if tempo > 0 and len(onsets) >= 4:
        sixteenth = 60.0 / tempo / 4
        phase = np.median(np.mod(onsets, sixteenth))
        offsets = np.mod(onsets - phase + sixteenth / 2, sixteenth) - sixteenth / 2
        on_grid = float(np.mean(np.abs(offsets) <= 0.1 * sixteenth))
        bars = (len(y) / sr) / (4 * 60.0 / tempo)
        busy = min(1.0, len(onsets) / max(bars, 1e-9) / 8.0)
        grid = on_grid * busy

    # Sustained chords: harmonic energy above the sub-bass, whose chroma holds three or more
    # pitch classes (a chord, not a single tone) steadily from frame to frame.
    above = freqs > 150
    harm_power = (harmonic[above] ** 2).sum()
    chroma = librosa.feature.chroma_stft(S=(harmonic * above[:, None]) ** 2, sr=sr, n_fft=2048, hop_length=hop)
    norm = chroma / (np.linalg.norm(chroma, axis=0, keepdims=True) + 1e-9)
    stability = float(np.mean(np.sum(norm[:, 1:] * norm[:, :-1], axis=0))) if chroma.shape[1] > 1 else 0.0
    peak = chroma / (chroma.max(axis=0, keepdims=True) + 1e-12)
    chordness = float(np.mean(np.minimum(1.0, (peak > 0.5).sum(axis=0) / 3.0)))
    harmony = float(min(1.0, harm_power / total / 0.05) * max(0.0, stability) * chordness)
    return Features(tempo, tempo_score(tempo), log_drum, grid, harmony)


def bootstrap_ci(scores: list[float], n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap of the mean; deterministic for a seed."""
    x = np.asarray(scores, dtype=float)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n, x.size))].mean(axis=1)
    lo, hi = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def reference_distance(clip: Features, references: list[Features]) -> float:
    """0-100 %: 100 at the references' mean feature vector, 0 at the farthest corner of the unit box."""
    centre = np.mean([r.vector() for r in references], axis=0)
    distance = float(np.linalg.norm(clip.vector() - centre))
    return 100.0 * max(0.0, 1.0 - distance / 2.0)  # the unit box's diagonal in 4-D is 2


def summary(scores: list[float], seed: int = 0) -> dict:
    lo, hi = bootstrap_ci(scores, seed=seed)
    return {"n": len(scores), "mean_pct": float(np.mean(scores)) if scores else None, "ci95_pct": [lo, hi]}
