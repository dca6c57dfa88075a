"""The statistics of the milestone: a bootstrap interval of a mean, the paired comparison of
model and baseline (mean improvement, paired bootstrap interval, one-sided Wilcoxon signed-rank
p-value), and the smallest improvement n pairs can detect. Deterministic for a seed."""
from __future__ import annotations

import numpy as np

Z_ALPHA, Z_POWER = 1.645, 0.842   # one-sided 5 %, 80 % power
WILCOXON_ARE = 3 / np.pi          # its efficiency against the t-test for normal data (0.955)


def bootstrap_ci(scores: list[float], n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap of the mean; deterministic for a seed."""
    x = np.asarray(scores, dtype=float)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n, x.size))].mean(axis=1)
    lo, hi = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def summary(scores: list[float], seed: int = 0) -> dict:
    lo, hi = bootstrap_ci(scores, seed=seed)
    return {"n": len(scores), "mean_pct": float(np.mean(scores)) if scores else None, "ci95_pct": [lo, hi]}


def wilcoxon_greater(diff: np.ndarray) -> float:
    """p of H0 "no improvement" against "model better": signed ranks, zero differences dropped
    (Wilcoxon's own treatment); 1.0 when every difference is zero."""
    from scipy.stats import wilcoxon

    if not np.any(diff):
        return 1.0
    return float(wilcoxon(diff, alternative="greater", zero_method="wilcox").pvalue)


def detectable(diff: np.ndarray) -> float | None:
    """The smallest mean improvement (points) n pairs detect at one-sided 5 % with 80 % power,
    from the differences' spread (normal approximation, scaled by the signed-rank test's
    efficiency)."""
    if diff.size < 2:
        return None
    return float((Z_ALPHA + Z_POWER) * diff.std(ddof=1) / np.sqrt(diff.size * WILCOXON_ARE))


def compare(model: list[float], baseline: list[float], seed: int = 0, n_boot: int = 4000) -> dict:
    """Model minus baseline, pair by pair."""
    diff = np.asarray(model, dtype=float) - np.asarray(baseline, dtype=float)
    if diff.size == 0:
        return {"n": 0, "improvement_pct": None, "ci95_pct": None, "p_value": None, "detectable_pct": None}
    lo, hi = bootstrap_ci(list(diff), n=n_boot, seed=seed)
    return {"n": int(diff.size), "improvement_pct": float(diff.mean()), "ci95_pct": [lo, hi],
            "p_value": wilcoxon_greater(diff), "test": "Wilcoxon signed-rank, one-sided (model > baseline)",
            "detectable_pct": detectable(diff)}
