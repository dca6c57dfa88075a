"""CLAP (text-audio) evidence and the Frechet Audio Distance, the measures music-generation
papers (MusicGen's among them) judge outputs with.

`Clap.load` is transformers' `ClapModel.from_pretrained` (a music-trained checkpoint such as
`laion/larger_clap_music`); tests hand `Clap` a tiny random model. Three figures per clip:

- genre: the zero-shot probability of "amapiano" among `genres` ("a {genre} track" prompts,
  softmax over the model's scaled cosine similarities);
- description: the mean cosine similarity to the Amapiano `descriptions`, mapped 0.1 -> 0,
  0.4 -> 1 (music CLAP puts matching text-audio pairs around 0.3-0.5, unrelated ones near 0);
- embedding: the audio embedding, for the reference similarity and the FAD.

FAD on 32 clips and 512-dimensional embeddings is strongly biased upwards (the covariance is
rank-deficient and the bias falls like 1/n). As fadtk does, `fad_inf` computes the FAD on
subsets of several sizes and extrapolates the line FAD(1/n) to 1/n = 0 (Chung and Kim's FID-inf).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

CLAP_RATE = 48000


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-12)


def _tensor(out: Any) -> Any:
    """The projected embeddings, whether transformers returns a tensor or an output object."""
    return out if hasattr(out, "float") else getattr(out, "pooler_output", None) if getattr(out, "pooler_output", None) is not None else out[0]


@dataclass
class Clap:
    model: Any
    tokenizer: Any
    feature_extractor: Any
    genres: list[str]
    descriptions: list[str]

    @classmethod
    def load(cls, name: str, genres: list[str], descriptions: list[str]) -> "Clap":
        from transformers import ClapModel, ClapProcessor

        processor = ClapProcessor.from_pretrained(name)
        return cls(ClapModel.from_pretrained(name).eval(), processor.tokenizer, processor.feature_extractor, genres,
                   descriptions)

    def _text(self, texts: list[str]) -> np.ndarray:
        import torch

        inputs = self.tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        return _unit(_tensor(out).float().numpy())

    def embed(self, wave: np.ndarray, sr: int) -> np.ndarray:
        import librosa
        import torch

        audio = librosa.resample(np.asarray(wave, dtype=np.float32), orig_sr=sr, target_sr=CLAP_RATE) if sr != CLAP_RATE else wave
        inputs = self.feature_extractor([audio], sampling_rate=CLAP_RATE, return_tensors="pt")
        with torch.no_grad():
            out = self.model.get_audio_features(input_features=inputs["input_features"],
                                                is_longer=inputs.get("is_longer"))
        return _unit(_tensor(out).float().numpy()[0])

    def figures(self, embedding: np.ndarray) -> dict[str, float]:
        """{"genre": 0-1, "description": 0-1} for one audio embedding."""
        labels = ["amapiano", *[g for g in self.genres if g.lower() != "amapiano"]]
        genre_text = self._text([f"a {g} track" for g in labels])
        scale = float(self.model.logit_scale_a.exp().item()) if hasattr(self.model, "logit_scale_a") else 100.0
        logits = scale * genre_text @ embedding
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        cosine = float(np.mean(self._text(self.descriptions) @ embedding))
        return {"genre": float(probs[0]), "description": float(min(1.0, max(0.0, (cosine - 0.1) / 0.3))),
                "description_cosine": cosine}


def reference_similarity(embedding: np.ndarray, references: np.ndarray) -> float:
    """0-1: the clip's cosine to the references' centroid, against the references' own
    (leave-one-out) cosine to it; as close as a typical reference scores 1."""
    centre = _unit(references.mean(axis=0))
    own = []
    for i in range(len(references)):
        rest = _unit(np.delete(references, i, axis=0).mean(axis=0)) if len(references) > 1 else centre
        own.append(float(references[i] @ rest))
    typical = max(float(np.median(own)), 1e-6)
    return float(min(1.0, max(0.0, float(embedding @ centre) / typical)))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root, _ = linalg.sqrtm(s_a @ s_b, disp=False)
    root = root.real
    return float(max(0.0, ((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root)))


def fad_inf(generated: np.ndarray, references: np.ndarray, seed: int = 0, steps: int = 8,
            draws: int = 4) -> dict[str, float | None]:
    """FAD at full size and extrapolated to infinitely many generated clips (fadtk's score_inf):
    FAD on random subsets of sizes from n/2 to n, a least-squares line against 1/size, its
    intercept. None where there are fewer than 4 clips on either side."""
    n = len(generated)
    if n < 4 or len(references) < 4:
        return {"fad": None, "fad_inf": None, "n": n}
    rng = np.random.default_rng(seed)
    sizes = sorted({int(s) for s in np.linspace(max(3, n // 2), n, steps)})
    xs, ys = [], []
    for size in sizes:
        for _ in range(draws if size < n else 1):
            idx = rng.choice(n, size=size, replace=False)
            xs.append(1.0 / size)
            ys.append(frechet_distance(generated[idx], references))
    full = ys[-1]
    if len(set(xs)) < 2:
        return {"fad": full, "fad_inf": None, "n": n}
    slope, intercept = np.polyfit(xs, ys, 1)
    return {"fad": full, "fad_inf": float(intercept), "n": n}
