"""The paired comparison: improvement, paired bootstrap interval, Wilcoxon p, detectable effect."""
from __future__ import annotations

import numpy as np

from trainer.evaluation.paired import bootstrap_ci, compare, summary


def test_a_real_improvement_is_significant_and_identical_scores_are_not():
    rng = np.random.default_rng(0)
    base = rng.normal(30, 8, 32)
    better = compare(list(base + rng.normal(6, 4, 32)), list(base), seed=1)
    assert better["p_value"] < 0.001 and 0 < better["ci95_pct"][0] < better["improvement_pct"] < better["ci95_pct"][1]
    assert 0 < better["detectable_pct"] < better["improvement_pct"]
    same = compare(list(base), list(base))
    assert same["p_value"] == 1.0 and same["ci95_pct"] == [0.0, 0.0]


def test_worse_than_the_baseline_has_a_large_p():
    rng = np.random.default_rng(2)
    base = rng.normal(40, 5, 16)
    assert compare(list(base - 5 + rng.normal(0, 1, 16)), list(base))["p_value"] > 0.99


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    scores = [30.0, 35.0, 40.0, 45.0, 50.0, 38.0, 41.0]
    lo, hi = bootstrap_ci(scores, seed=1)
    assert (lo, hi) == bootstrap_ci(scores, seed=1)
    assert lo < np.mean(scores) < hi
    assert summary(scores)["n"] == 7 and compare([], [])["p_value"] is None
