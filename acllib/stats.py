"""Verdicts on claims from per-seed results: paired differences, t intervals, and a three-way call."""
from __future__ import annotations

import numpy as np
from scipy import stats

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive at this scale"
LEARNED_MARGIN = 2.0  # points above the majority-class score before a model counts as having learned


def learned(score: float, majority: float) -> bool:
    """Whether a model clears always predicting the most frequent class by LEARNED_MARGIN points;
    comparisons between models that do not say nothing about learning the task."""
    return score >= majority + LEARNED_MARGIN


def paired(a, b, alpha: float = 0.05) -> dict:
    """Mean of a - b over pairs (seeds, or seed x task), its t interval and the paired t-test's p."""
    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return {"diff": mean, "lo": np.nan, "hi": np.nan, "p": np.nan, "n": n}
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(1 - alpha / 2, n - 1) * sd / np.sqrt(n))
    p = float(stats.ttest_rel(a, b).pvalue) if sd > 0 else (0.0 if mean != 0 else 1.0)
    return {"diff": mean, "lo": mean - half, "hi": mean + half, "p": p, "n": n}


def verdict(result: dict, expected_sign: int = 1) -> str:
    """Supported when the interval lies on the claimed side of 0, contradicted when it lies on the
    other side, inconclusive when it covers 0 (or there are too few pairs to tell)."""
    lo, hi = result["lo"], result["hi"]
    if np.isnan(lo):
        return INCONCLUSIVE
    lo, hi = sorted((expected_sign * lo, expected_sign * hi))
    if lo > 0:
        return SUPPORTED
    if hi < 0:
        return CONTRADICTED
    return INCONCLUSIVE
