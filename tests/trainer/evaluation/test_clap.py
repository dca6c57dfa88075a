"""CLAP parts and FAD on a tiny random ClapModel (no weights to download): the shapes, the ranges,
the gate over them, and FAD-inf against the plain FAD on few samples."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from amapiano_synth import SR, amapiano_like, noise  # noqa: E402

from trainer.evaluation.clap import Clap, fad_inf, frechet_distance, reference_similarity  # noqa: E402
from trainer.evaluation.score import Scorer  # noqa: E402


@pytest.fixture(scope="module")
def clap() -> Clap:
    import torch
    from transformers import ByT5Tokenizer, ClapConfig, ClapFeatureExtractor, ClapModel

    torch.manual_seed(0)
    config = ClapConfig(text_config=dict(vocab_size=384, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=130),
                        audio_config=dict(hidden_size=32, depths=[1, 1, 1, 1], num_attention_heads=[2, 2, 2, 2],
                                          patch_embeds_hidden_size=4, window_size=4), projection_dim=16)
    return Clap(ClapModel(config).eval(), ByT5Tokenizer(), ClapFeatureExtractor(truncation="rand_trunc"),
                genres=["amapiano", "techno", "jazz"], descriptions=["an amapiano track with log drums"])


def test_clap_parts_are_in_range_and_the_gate_holds_over_them(clap):
    groove = amapiano_like(0, seconds=4.0)
    refs = np.stack([clap.embed(amapiano_like(s, seconds=4.0), SR) for s in (1, 2, 3)])
    scorer = Scorer(clap=clap, references=refs)
    r = scorer.score(groove, SR)
    assert set(r["parts"]) == {"genre", "description", "reference", "descriptors"}
    assert all(0.0 <= v <= 1.0 for v in r["parts"].values()) and 0 <= r["authenticity_pct"] <= 100
    assert r["embedding"].shape == (16,) and abs(np.linalg.norm(r["embedding"]) - 1) < 1e-5
    # whatever a random CLAP says of white noise, the closed gate keeps it under 10 %
    assert scorer.score(noise("white", 4.0), SR)["authenticity_pct"] <= 10.0
    assert Scorer(clap=clap).parts == ["descriptors", "genre", "description"]


def test_reference_similarity_is_one_at_the_references():
    rng = np.random.default_rng(0)
    refs = rng.normal(size=(8, 16)) + 3
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    centre = refs.mean(axis=0) / np.linalg.norm(refs.mean(axis=0))
    assert reference_similarity(centre, refs) == 1.0
    assert reference_similarity(-centre, refs) == 0.0


def test_fad_inf_removes_the_small_sample_bias():
    """Same distribution: the FAD of 32 draws is biased well above 0; FAD-inf lands nearer 0."""
    rng = np.random.default_rng(1)
    ref, gen = rng.normal(size=(400, 8)), rng.normal(size=(32, 8))
    r = fad_inf(gen, ref, seed=0)
    assert r["fad"] > 0.5 and abs(r["fad_inf"]) < r["fad"] / 2
    far = fad_inf(gen + 2.0, ref, seed=0)
    assert far["fad_inf"] > 20
    assert fad_inf(gen[:3], ref)["fad"] is None
    assert frechet_distance(ref, ref) == pytest.approx(0.0, abs=1e-6)
