"""The descriptor part of the authenticity score: how Amapiano-like a clip sounds, 0-100 %,
from librosa features alone (deterministic, no weights to download).

Four features, each mapped to [0, 1] and weighted:

    tempo     0.30  the beat tracker's tempo in Amapiano's range, 108-118 BPM: 1 inside,
                    falling linearly to 0 at 20 BPM outside (half and double tempo count too;
                    so does an in-range pulse at least 70 % as strong as the tracked one,
                    which a dotted log-drum pattern makes trackers hear as 4/3 of the tempo)
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
    variety   pitch classes from 110 Hz holding 30 % of the      (one note, held or pulsed,
              strongest's energy, on the harmonic salience of     however rich its overtones;
              the sustained part of a constant-Q spectrum (a      a tone between two semitones;
              note's overtones fold into its own class):          a click track, even of
              2 or fewer -> 0, 3 or more -> 1; times the          pitched blips; a sub-bass
              sustained share above 150 Hz: 0.01 % -> 0,          pulse; gated brown noise: 0)
              0.05 % -> 1
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


def track_tempo(onset_env: np.ndarray, sr: int) -> float:
    """The beat tracker's tempo, unless the onsets pulse almost as strongly (70 %) at a tempo in
    Amapiano's range, and clearly (twice the median over 50-240 BPM): a dotted log-drum pattern (3 + 3 + 2 sixteenths) makes trackers hear 4/3 of
    the tempo (150 BPM for 113), which the half/double-time allowance does not cover."""
    import librosa

    tracked = float(np.atleast_1d(librosa.feature.tempo(onset_envelope=onset_env, sr=sr, hop_length=HOP))[0])
    strength = librosa.feature.tempogram(onset_envelope=onset_env, sr=sr, hop_length=HOP).mean(axis=1)
    bpm = librosa.tempo_frequencies(strength.size, sr=sr, hop_length=HOP)
    beats = (bpm >= 50) & (bpm <= 240)
    near = beats & (np.abs(bpm - tracked) <= 0.03 * tracked)
    inside = (bpm >= TEMPO_RANGE[0]) & (bpm <= TEMPO_RANGE[1])
    if not inside.any() or not near.any():
        return tracked
    best = int(np.flatnonzero(inside)[np.argmax(strength[inside])])
    clear = strength[best] >= 2 * np.median(strength[beats])  # a peak, not noise's flat tempogram
    return float(bpm[best]) if clear and strength[best] >= 0.7 * strength[near].max() else tracked


def pitch_classes(y: np.ndarray, sr: int) -> int:
    """Pitch classes holding 30 % of the strongest's energy in the sustained part of the clip,
    counted from 110 Hz on harmonic salience: a constant-Q spectrum (3 bins a semitone), its
    sustained part (HPSS), each bin credited with its first six harmonics (the fundamental most),
    so a note's overtones fold into its own class: one sawtooth is one class, not the three its
    3rd and 5th harmonics would add. A click track (pitched blips too) has no sustained part; a
    tone between two semitones spreads over two classes at most."""
    import librosa

    per_octave, fmin = 36, 27.5  # A0: bin 3k is an A
    n_bins = min(per_octave * 8, int(per_octave * np.log2(0.45 * sr / fmin)))  # up to 7 kHz, under Nyquist
    cqt = np.abs(librosa.cqt(y, sr=sr, hop_length=HOP, fmin=fmin, n_bins=n_bins, bins_per_octave=per_octave))
    sustained, _ = librosa.decompose.hpss(cqt)
    salience = np.zeros_like(sustained)
    for h, w in zip(range(1, 7), (1.0, 0.8, 0.6, 0.5, 0.4, 0.3)):
        shift = int(round(per_octave * np.log2(h)))
        salience[:salience.shape[0] - shift] += w * sustained[shift:]
    energy = (salience ** 2).sum(axis=1)  # per bin over the clip; from 110 Hz, so the log drum's
    counted = np.arange(energy.size) >= 2 * per_octave  # sub-bass cannot drown quiet chords
    classes = np.zeros(12)
    np.add.at(classes, np.round(np.arange(energy.size)[counted] / 3).astype(int) % 12, energy[counted])
    return int((classes > 0.3 * classes.max()).sum()) if classes.max() > 0 else 0


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
    tempo = track_tempo(onset_env, sr)

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

    variety = _ramp(pitch_classes(y, sr), 2, 3) * _ramp(float(harm_power / total), 0.0001, 0.0005)
    return Features(tempo, tempo_score(tempo), log_drum, grid, harmony, sound=sound,
                    tonal=_ramp(tonality(stft ** 2, freqs), 0.15, 0.4), pulse=_ramp(pulse_strength(onset_env, sr), 0.2, 0.4),
                    variety=variety)


def reference_distance(clip: Features, references: list[Features]) -> float:
    """0-100 %: 100 at the references' mean feature vector, 0 at the farthest corner of the unit box."""
    centre = np.mean([r.vector() for r in references], axis=0)
    distance = float(np.linalg.norm(clip.vector() - centre))
    return 100.0 * max(0.0, 1.0 - distance / 2.0)  # the unit box's diagonal in 4-D is 2
