"""Synthetic clips for the authenticity tests: Amapiano-like and not."""
from __future__ import annotations

import numpy as np

SR = 22050


def _env(n: int, decay: float) -> np.ndarray:
    return np.exp(-np.arange(n) / (decay * SR))


def amapiano_like(seed: int, seconds: float = 8.0) -> np.ndarray:
    """~112 BPM, log-drum sub-bass hits, 16th-note shakers, sustained chords."""
    rng = np.random.default_rng(seed)
    bpm = rng.uniform(109, 117)
    n = int(seconds * SR)
    y = np.zeros(n)
    beat = 60 / bpm
    # sub-bass "log drum" hits on a syncopated pattern (8ths)
    for k in np.arange(0, seconds, beat / 2):
        if rng.random() < 0.7:
            i = int(k * SR)
            m = min(n - i, int(0.35 * SR))
            f = rng.uniform(50, 80)
            y[i:i + m] += 0.8 * np.sin(2 * np.pi * f * np.arange(m) / SR) * _env(m, 0.12)
    # 16th-note shakers: short high-passed noise bursts
    for k in np.arange(0, seconds, beat / 4):
        i = int(k * SR)
        m = min(n - i, int(0.03 * SR))
        burst = rng.standard_normal(m)
        burst = np.diff(burst, prepend=0)  # crude high-pass
        y[i:i + m] += 0.08 * burst * _env(m, 0.01)
    # sustained chords (a minor-7th voicing), changing every bar
    roots = rng.choice([220.0, 246.9, 196.0, 174.6], size=int(seconds / (4 * beat)) + 1)
    for b, root in enumerate(roots):
        i, m = int(b * 4 * beat * SR), int(4 * beat * SR)
        m = min(m, n - i)
        if m <= 0:
            break
        tt = np.arange(m) / SR
        chord = sum(np.sin(2 * np.pi * root * r * tt) for r in (1.0, 1.189, 1.498, 1.782))
        y[i:i + m] += 0.05 * chord
    return (y / (np.max(np.abs(y)) + 1e-9) * 0.8).astype(np.float32)


def not_amapiano(seed: int, seconds: float = 8.0) -> np.ndarray:
    """Other tempi, no sub-bass, no grid: irregular mid-range plucks, or a drone, or fast hats."""
    rng = np.random.default_rng(1000 + seed)
    n = int(seconds * SR)
    y = np.zeros(n)
    kind = seed % 3
    if kind == 0:  # free-time plucks, no pulse
        for k in np.sort(rng.uniform(0, seconds, size=int(seconds * 3))):
            i = int(k * SR)
            m = min(n - i, int(0.4 * SR))
            f = rng.uniform(300, 900)
            y[i:i + m] += 0.5 * np.sin(2 * np.pi * f * np.arange(m) / SR) * _env(m, 0.1)
    elif kind == 1:  # a fast 170 BPM breakbeat of mid/high noise, no low end
        beat = 60 / rng.uniform(160, 180)
        for k in np.arange(0, seconds, beat / 2):
            i = int(k * SR)
            m = min(n - i, int(0.05 * SR))
            y[i:i + m] += 0.3 * np.diff(rng.standard_normal(m), prepend=0) * _env(m, 0.02)
    else:  # a slow 75 BPM ballad: soft mid-range notes, no percussion
        beat = 60 / rng.uniform(70, 80)
        for k in np.arange(0, seconds, beat):
            i = int(k * SR)
            m = min(n - i, int(beat * SR))
            f = rng.choice([392.0, 440.0, 523.3])
            y[i:i + m] += 0.3 * np.sin(2 * np.pi * f * np.arange(m) / SR) * _env(m, 0.5)
    return (y / (np.max(np.abs(y)) + 1e-9) * 0.8).astype(np.float32)


def noise(colour: str, seconds: float = 8.0, seed: int = 0) -> np.ndarray:
    """White (flat), pink (1/f power) or brown (1/f^2 power) noise at -6 dBFS peak."""
    n = int(seconds * SR)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    k = np.maximum(np.arange(spectrum.size), 1)
    alpha = {"white": 0, "pink": 1, "brown": 2}[colour]
    y = np.fft.irfft(spectrum / k ** (alpha / 2), n)
    return (0.5 * y / np.max(np.abs(y))).astype(np.float32)


def non_music(seconds: float = 8.0) -> dict[str, np.ndarray]:
    """What a collapsed model might emit: noise of three colours, silence, a held sine, a bare
    113 BPM click track."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    click = np.zeros(n, dtype=np.float32)
    for k in np.arange(0, seconds, 60 / 113):
        click[int(k * SR):int(k * SR) + 50] = 0.8
    return {"white": noise("white", seconds), "pink": noise("pink", seconds), "brown": noise("brown", seconds),
            "silence": np.zeros(n, dtype=np.float32), "sine": (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
            "click": click}


def disguised_non_music(sr: int = 32000, seconds: float = 8.0) -> dict[str, np.ndarray]:
    """Non-music dressed up with Amapiano's pulse, at MusicGen's 32 kHz, each of which once scored
    21-65 %: a metronome
    of pitched 1 kHz blips (1.5 kHz on the one) at 113 BPM, brown noise (a random walk) gated in
    113 BPM eighths, a bare 60 Hz sub-bass pulse and a 1 kHz tone pulsed on the beat (a pitch
    between B and C, so its energy falls in two pitch classes)."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    beat = 60 / 113
    blips = np.zeros(n)
    m = int(0.05 * sr)
    for i, k in enumerate(np.arange(0, seconds, beat)):
        s = int(k * sr)
        blip = np.sin(2 * np.pi * (1500 if i % 4 == 0 else 1000) * t[:m]) * np.exp(-t[:m] / 0.01)
        blips[s:s + m] += blip[:n - s]
    walk = np.cumsum(np.random.default_rng(7).standard_normal(n))
    walk -= np.linspace(walk[0], walk[-1], n)
    gated = walk / np.max(np.abs(walk)) * (np.floor(t / (beat / 2)) % 2 == 0)
    pulse = np.exp(-np.mod(t, beat) / 0.1)
    clips = {"blip metronome": 0.8 * blips, "gated brown noise": 0.9 * gated,
             "sub-bass pulse": 0.8 * np.sin(2 * np.pi * 60 * t) * pulse,
             "pulsed tone": 0.8 * np.sin(2 * np.pi * 1000 * t) * pulse}
    return {k: v.astype(np.float32) for k, v in clips.items()}


def _piano(freqs: list[float], t: np.ndarray) -> np.ndarray:
    """Struck strings: seven partials, the higher ones dying faster."""
    return sum(np.sin(2 * np.pi * f * k * t) * np.exp(-t * (1.5 + k)) / k ** 1.5 for f in freqs for k in range(1, 8))


def dotted_groove(sr: int, bpm: float, chord_gain: float, bars: int = 4) -> np.ndarray:
    """A groove beat trackers misread: log drums falling on 16ths 0, 3, 6, 10, 11 and 14 of each
    bar (the dotted feel that makes them hear 4/3 of the tempo), a kick on the beats, 16th
    shakers, and a piano playing one seventh chord a bar, at `chord_gain` of the drums."""
    beat, rng = 60 / bpm, np.random.default_rng(int(bpm * 10) + sr)
    n = int(sr * beat * 4 * bars)
    t, y = np.arange(n) / sr, np.zeros(n)

    def put(at: float, hit: np.ndarray) -> None:
        i = int(at * sr)
        y[i:i + hit.size] += hit[:max(0, n - i)]

    drum_t = t[:int(0.45 * sr)]
    pitch = 55 + 30 * np.exp(-drum_t / 0.04)  # a log drum: a sub-bass sine bending down to 55 Hz
    log_drum = np.sin(2 * np.pi * np.cumsum(pitch) / sr) * np.exp(-drum_t / 0.12)
    kick_t = t[:int(0.25 * sr)]
    kick = np.sin(2 * np.pi * np.cumsum(45 + 105 * np.exp(-kick_t / 0.015)) / sr) * np.exp(-kick_t / 0.06)
    sevenths = [[57, 60, 64, 67], [53, 57, 60, 64], [50, 53, 57, 60], [52, 55, 59, 62]]  # Am7 Fmaj7 Dm7 Em7
    for b in range(bars):
        bar = b * 4 * beat
        for s in (0, 3, 6, 10, 11, 14):
            put(bar + s * beat / 4, 0.8 * log_drum)
        for k in range(4):
            put(bar + k * beat, 0.5 * kick)
        for s in range(16):
            m = int(0.03 * sr)
            put(bar + s * beat / 4, 0.25 * (1.0 if s % 4 == 2 else 0.55) * np.diff(rng.standard_normal(m + 1))
                * np.exp(-np.arange(m) / (0.008 * sr)))
        notes = [440 * 2 ** ((m - 69) / 12) for m in sevenths[b % 4]]
        put(bar, chord_gain * _piano(notes, t[:int(4 * beat * sr)]) / 4)
    return (0.8 * y / np.max(np.abs(y))).astype(np.float32)


def single_note(sr: int = 32000, seconds: float = 8.0) -> np.ndarray:
    """One A2 (110 Hz) of a band-limited sawtooth, switched on for the first half of every 113 BPM
    eighth: its overtones fill three pitch classes, yet it is one note."""
    t = np.arange(int(seconds * sr)) / sr
    saw = sum(np.sin(2 * np.pi * 110 * k * t) / k for k in range(1, int(sr / 2 / 110)))
    return (0.5 * saw / np.max(np.abs(saw)) * (np.mod(t, 60 / 113 / 2) < 60 / 113 / 4)).astype(np.float32)
