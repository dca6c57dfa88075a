"""The descriptor part of the authenticity score: how Amapiano-like a clip sounds, 0-100 %,
from librosa features alone (deterministic, no weights to download).

Four features, each mapped to [0, 1] and weighted:

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

The weighted sum is scaled by a gate, the weakest of four "is this music at all" checks,
because every feature above can be fooled by a signal that is not music (noise has chroma in
all twelve classes and a tempo; a click track has a perfect grid). A closed gate keeps a tenth
(FLOOR) of the sum, so non-music scores at most 10 % yet clips keep their order: a paired test
can still see a model climb out of noise. Silence scores 0.

    sound     RMS over -60 dBFS                                  (silence scores 0)
    tonal     share of energy in spectral peaks 30x above the    (white, pink, brown noise and
              local median of the spectrum, 30 Hz-8 kHz:          clicks have none: 0)
              0.15 -> 0, 0.4 -> 1
    pulse     the onset envelope's autocorrelation peak at a     (a drone or a held tone has
              beat lag (50-200 BPM), times its spread:            no pulse: 0)
              0.2 -> 0, 0.4 -> 1
    variety   pitch classes of the sustained (harmonic) part     (a single tone, held or
              above 150 Hz holding 30 % of the strongest:         pulsed, between two semitones
              2 or fewer -> 0, 3 or more -> 1; times that part's  or not; a click track, even of
              share of all the energy: 0.1 % -> 0, 0.5 % -> 1     pitched blips; a sub-bass
                                                                  pulse; gated brown noise: 0)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

WEIGHTS = {"tempo": 0.30, "log_drum": 0.30, "grid": 0.20, "harmony": 0.20}
FLOOR = 0.1            # what a closed gate keeps of the weighted sum
TEMPO_RANGE = (108.0, 118.0)
LOG_DRUM_FULL = 0.06   # percussive 40-120 Hz share of all energy that scores 1
HOP, N_FFT = 512, 2048
ENVELOPE_BINS = 31     # the tonal check's running median, ~240-480 Hz wide at 22-32 kHz


@dataclass(frozen=True)
class Features:
    tempo_bpm: float
    tempo: float
    log_drum: float
    grid: float
    harmony: float
    sound: float = 0.0
    tonal: float = 0.0
    pulse: float = 0.0
    variety: float = 0.0

    @property
    def gate(self) -> float:
        """0 for silence, FLOOR (closed) to 1 (open) otherwise."""
        if self.sound == 0.0:
            return 0.0
        return FLOOR + (1 - FLOOR) * min(self.sound, self.tonal, self.pulse, self.variety)

    @property
    def raw(self) -> float:
        """The weighted features before the gate, 0-1."""
        return sum(w * getattr(self, k) for k, w in WEIGHTS.items())

    @property
    def score(self) -> float:
        """0-100 %."""
        return 100.0 * self.gate * self.raw

    def vector(self) -> np.ndarray:
        return np.array([self.tempo, self.log_drum, self.grid, self.harmony])

    def to_json(self) -> dict:
        return {**asdict(self), "gate": self.gate, "score_pct": self.score}


SILENT = Features(0.0, 0.0, 0.0, 0.0, 0.0)


def _ramp(x: float, lo: float, hi: float) -> float:
    return float(min(1.0, max(0.0, (x - lo) / (hi - lo))))


def tempo_score(bpm: float) -> float:
    lo, hi = TEMPO_RANGE
    best = 0.0
    for candidate in (bpm, bpm * 2, bpm / 2):  # beat trackers often land on half or double time
        distance = max(lo - candidate, candidate - hi, 0.0)
        best = max(best, max(0.0, 1.0 - distance / 20.0))
    return best


def tonality(power: np.ndarray, freqs: np.ndarray) -> float:
    """Share of the 30 Hz-8 kHz energy in narrow peaks 30x above the spectral envelope.

    The envelope is each frame's log spectrum through a running median of ENVELOPE_BINS bins, so
    the colour of a noise is followed, however steep (brown noise's 1/f^2 defeated a cepstral
    envelope at its low end), and only its random ripple is left, which almost never reaches
    30x; a partial of a tone or a chord stands far above it.
    """
    from scipy.ndimage import median_filter

    log_power = np.log(power + 1e-10 * power.max() + 1e-20)
    envelope = median_filter(log_power, size=(ENVELOPE_BINS, 1), mode="nearest")
    band = (freqs >= 30) & (freqs <= 8000)
    peaks = (log_power - envelope > np.log(30.0)) & band[:, None]
    return float(power[peaks].sum() / (power[band].sum() + 1e-20))


def pulse_strength(onset_env: np.ndarray, sr: int) -> float:
    """The onset envelope's normalised autocorrelation peak at a beat lag of 50-200 BPM, times
    how much it moves at all (its spread, 1 -> 0 to 3 -> 1): a held tone's envelope is flat, and
    its tiny ripple would otherwise correlate perfectly."""
    e = onset_env - onset_env.mean()
    if e.size < 4 or not np.any(e):
        return 0.0
    moves = _ramp(float(onset_env.std()), 1.0, 3.0)
    ac = np.correlate(e, e, "full")[e.size - 1:]
    ac = ac / ac[0]
    rate = sr / HOP
    lags = np.arange(ac.size)
    window = (lags >= rate * 60 / 200) & (lags <= rate * 60 / 50)
    return moves * float(max(0.0, ac[window].max())) if window.any() else 0.0


def features(y: np.ndarray, sr: int) -> Features:
    import librosa

    y = np.asarray(y, dtype=np.float32)
    if y.size < sr // 4 or not np.all(np.isfinite(y)):
        return SILENT
    rms = float(np.sqrt(np.mean(y.astype(np.float64) ** 2)))
    sound = _ramp(20 * np.log10(rms + 1e-12), -60.0, -50.0)
    if sound == 0.0:
        return SILENT
    stft = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP))
    harmonic, percussive = librosa.decompose.hpss(stft)
    freqs = librosa.fft_frequencies(sr=sr, n_fft=N_FFT)

    onset_env = librosa.onset.onset_strength(S=librosa.amplitude_to_db(percussive, ref=np.max), sr=sr,
                                             hop_length=HOP)
    tempo = float(np.atleast_1d(librosa.feature.tempo(onset_envelope=onset_env, sr=sr, hop_length=HOP))[0])

    # Sub-bass energy that arrives as hits: the low band's percussive part against ALL the
    # energy, so a steady bass tone (harmonic, not percussive) does not count.
    total = (stft ** 2).sum() + 1e-12
    low_band = (freqs >= 40) & (freqs <= 120)
    low_hits = (percussive[low_band] ** 2).sum()
    log_drum = min(1.0, float(low_hits / total) / LOG_DRUM_FULL)

    onsets = librosa.onset.onset_detect(onset_envelope=onset_env, sr=sr, hop_length=HOP, units="time")
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
    chroma = librosa.feature.chroma_stft(S=(harmonic * above[:, None]) ** 2, sr=sr, n_fft=N_FFT, hop_length=HOP,
                                         tuning=0.0)
    norm = chroma / (np.linalg.norm(chroma, axis=0, keepdims=True) + 1e-9)
    stability = float(np.mean(np.sum(norm[:, 1:] * norm[:, :-1], axis=0))) if chroma.shape[1] > 1 else 0.0
    peak = chroma / (chroma.max(axis=0, keepdims=True) + 1e-12)
    chordness = float(np.mean(np.minimum(1.0, (peak > 0.5).sum(axis=0) / 3.0)))
    harmony = float(min(1.0, harm_power / total / 0.05) * max(0.0, stability) * chordness)

    # Variety from the same sustained part: a click track (pitched blips too) has none, a
    # sub-bass pulse none above 150 Hz; a tone between two semitones spreads over two classes.
    whole = chroma.mean(axis=1)
    classes = int((whole > 0.3 * whole.max()).sum()) if whole.max() > 0 else 0
    variety = _ramp(classes, 2, 3) * _ramp(float(harm_power / total), 0.001, 0.005)
    return Features(tempo, tempo_score(tempo), log_drum, grid, harmony, sound=sound,
                    tonal=_ramp(tonality(stft ** 2, freqs), 0.15, 0.4), pulse=_ramp(pulse_strength(onset_env, sr), 0.2, 0.4),
                    variety=variety)


def reference_distance(clip: Features, references: list[Features]) -> float:
    """0-100 %: 100 at the references' mean feature vector, 0 at the farthest corner of the unit box."""
    centre = np.mean([r.vector() for r in references], axis=0)
    distance = float(np.linalg.norm(clip.vector() - centre))
    return 100.0 * max(0.0, 1.0 - distance / 2.0)  # the unit box's diagonal in 4-D is 2
