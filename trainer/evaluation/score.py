"""The authenticity score, 0-100 %: the parts, their weights, and `amapiano-train score`.

    part         weight  needs                          measures
    genre        0.35    CLAP weights                   zero-shot P("amapiano") among [milestone] genres
    description  0.15    CLAP weights                   similarity to [milestone] descriptions
    reference    0.25    CLAP weights + reference_dir   closeness to real Amapiano clips' centroid
    descriptors  0.25    nothing (librosa)              tempo, log drum, 16th grid, chords

A part that cannot be computed (no CLAP weights on disk, `--offline`, no reference clips) drops
out and the others' weights are scaled up to sum to 1; the mode says which parts counted. The
whole sum is multiplied by the descriptors' gate (authenticity.py): silence, noise, a single
tone or a bare click track score 0 whatever CLAP makes of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import authenticity

WEIGHTS = {"genre": 0.35, "description": 0.15, "reference": 0.25, "descriptors": 0.25}
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


@dataclass
class Scorer:
    clap: Any = None                                  # clap.Clap, or None: descriptors only
    references: np.ndarray | None = None              # CLAP embeddings of the reference clips
    notes: list[str] = field(default_factory=list)    # why a part is missing, said once

    @property
    def parts(self) -> list[str]:
        parts = ["descriptors"]
        if self.clap is not None:
            parts += ["genre", "description"] + (["reference"] if self.references is not None else [])
        return parts

    @property
    def mode(self) -> str:
        return "offline (descriptors only)" if self.clap is None else "+".join(sorted(self.parts))

    def score(self, wave: np.ndarray, sr: int) -> dict:
        """{"authenticity_pct", "gate", "parts": {part: 0-1}, "descriptors": {...}, "embedding"?}."""
        from .clap import reference_similarity

        f = authenticity.features(wave, sr)
        parts: dict[str, float] = {"descriptors": f.raw}
        out: dict[str, Any] = {"descriptors": f.to_json()}
        if self.clap is not None:
            embedding = self.clap.embed(wave, sr)
            figures = self.clap.figures(embedding)
            parts.update(genre=figures["genre"], description=figures["description"])
            out["description_cosine"] = figures["description_cosine"]
            if self.references is not None:
                parts["reference"] = reference_similarity(embedding, self.references)
            out["embedding"] = embedding
        total = sum(WEIGHTS[k] for k in parts)
        value = sum(WEIGHTS[k] * v for k, v in parts.items()) / total
        return {"authenticity_pct": 100.0 * f.gate * value, "gate": f.gate, "parts": parts, **out}


def audio_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        files += sorted(q for q in p.rglob("*") if q.suffix.lower() in AUDIO_SUFFIXES) if p.is_dir() else [p]
    return files


MAX_SECONDS = 120.0   # what `score` analyses of one file: the generated samples are 10-30 s
MIN_RATE = 4000       # Hz; below it there is no music to hear, only a broken header
PEAK_LIMIT = 16.0     # +24 dBFS: float audio past it is not audio (a 1e30 sample overflows the analysis)


class AudioError(ValueError):
    """A file that reads but cannot be scored: the message says why, in a few words."""


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 and its rate (at most MAX_SECONDS of it); any format soundfile (or librosa's
    fallback) reads. AudioError, or the reader's own error, for what cannot be scored."""
    import warnings

    import soundfile as sf

    if path.exists() and not path.is_file():  # a FIFO or a device would block the read for ever
        raise AudioError("not a regular file")
    try:
        with sf.SoundFile(str(path)) as f:
            wave = f.read(frames=int(MAX_SECONDS * f.samplerate), dtype="float32", always_2d=True).mean(axis=1)
            sr = int(f.samplerate)
    except sf.LibsndfileError:
        import librosa

        with warnings.catch_warnings():  # audioread's and librosa's deprecation chatter is not the user's
            warnings.simplefilter("ignore")
            wave, sr = librosa.load(str(path), sr=None, mono=True, duration=MAX_SECONDS)
        wave, sr = wave.astype(np.float32), int(sr)
    if sr < MIN_RATE:
        raise AudioError(f"sample rate {sr} Hz (needs at least {MIN_RATE} Hz)")
    if wave.size < sr // 4:
        raise AudioError(f"{wave.size / sr:.2f} s long (needs at least 0.25 s)")
    if not np.all(np.isfinite(wave)):
        raise AudioError("NaN or infinite samples")
    peak = float(np.max(np.abs(wave)))
    if peak > PEAK_LIMIT:
        raise AudioError(f"samples reach {peak:.3g}, far outside [-1, 1]")
    return wave, sr


def unreadable(e: Exception) -> str:
    """Why a file could not be scored, in one line: the reader's message, or a plain one for the
    exceptions that carry none (a zero-byte file, a text file named .wav)."""
    if isinstance(e, AudioError):
        return str(e)
    text = str(e).strip().splitlines()[0] if str(e).strip() else "not audio that soundfile or librosa can decode"
    return f"cannot read ({type(e).__name__}: {text})"


def build_scorer(milestone: Any, offline: bool, log: Any = None, base: Path | None = None) -> Scorer:
    """CLAP from `[milestone] clap_model` unless offline or it cannot load; the references'
    embeddings from `[milestone] reference_dir` when it holds audio."""
    if offline or not milestone.clap_model:
        return Scorer(notes=["offline: descriptors only" if offline else "[milestone] clap_model is empty: descriptors only"])
    from .clap import Clap

    try:
        clap = Clap.load(milestone.clap_model, list(milestone.genres), list(milestone.descriptions))
    except Exception as e:  # no weights on disk and no network: say so, score with what there is
        note = f"CLAP model {milestone.clap_model!r} did not load ({type(e).__name__}); descriptors only"
        if log is not None:
            log.warning("score.clap_unavailable", model=milestone.clap_model, error=str(e)[:300])
        return Scorer(notes=[note])
    scorer = Scorer(clap=clap)
    ref_dir = Path(milestone.reference_dir).expanduser() if milestone.reference_dir else None
    if ref_dir is not None and not ref_dir.is_absolute() and base is not None:
        ref_dir = base / ref_dir
    embedded = []
    for path in audio_files([ref_dir]) if ref_dir and ref_dir.is_dir() else []:
        try:
            embedded.append(clap.embed(*read_audio(path)))
        except Exception as e:  # one bad reference is left out and said, not the whole scorer lost
            scorer.notes.append(f"reference {path} left out: {unreadable(e)}")
    if len(embedded) >= 2:
        scorer.references = np.stack(embedded)
    else:
        scorer.notes.append("no reference clips ([milestone] reference_dir): the reference part is left out")
    return scorer
