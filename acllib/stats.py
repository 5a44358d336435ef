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


# ---- claim tests with a family-wise error rate ----------------------------------------------
# scipy and statsmodels do the computations; written here by hand only what neither offers (the
# one-sided non-equivalence p, the exact power of a t-based TOST, the verdict rule over a family)
# and Holm's adjustment, whose statsmodels version is too slow to call per simulated family.

NOT_TESTABLE = "not testable here"
ALPHA = 0.05


def _diffs(a, b) -> np.ndarray:
    return np.asarray(a, float) - np.asarray(b, float)


def _t_interval(mean: float, sd: float, n: int, level: float) -> tuple[float, float]:
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n))
    return mean - half, mean + half


def difference_test(a, b) -> dict:
    """Paired two-sided t-test of mean(a - b) (scipy's ttest_rel) with its 95% t interval.
    Fewer than 2 pairs give p nan; equal differences (sd 0) give p 0 unless they are all 0."""
    d = _diffs(a, b)
    n, diff = len(d), float(d.mean()) if len(d) else np.nan
    side = int(np.sign(diff)) if n else 0
    if n < 2:
        return {"diff": diff, "lo": np.nan, "hi": np.nan, "p": np.nan, "sd": np.nan, "n": n,
                "p_support_side": side}
    sd = float(d.std(ddof=1))
    if sd == 0:
        return {"diff": diff, "lo": diff, "hi": diff, "p": 0.0 if diff != 0 else 1.0, "sd": 0.0,
                "n": n, "p_support_side": side}
    res = stats.ttest_rel(np.asarray(a, float), np.asarray(b, float))
    ci = res.confidence_interval(0.95)
    return {"diff": diff, "lo": float(ci.low), "hi": float(ci.high), "p": float(res.pvalue),
            "sd": sd, "n": n, "p_support_side": side}


def equivalence_test(a, b, margin: float) -> dict:
    """TOST for paired data, H1: |mean(a - b)| < margin (statsmodels' ttost_paired); lo90, hi90
    is the 90% t interval, inside (-margin, margin) exactly when TOST rejects at 0.05.
    p_nonequiv is the one-sided p for |mean| beyond the margin on the observed mean's side,
    t = (|diff| - margin) / se (statsmodels has no such test). Its size is alpha plus the chance
    of passing the far margin too, negligible unless the margin is small against se."""
    d = _diffs(a, b)
    n = len(d)
    diff = float(d.mean()) if n else np.nan
    if n < 2:
        return {"diff": diff, "lo90": np.nan, "hi90": np.nan, "p_equiv": np.nan,
                "p_nonequiv": np.nan, "sd": np.nan, "n": n}
    sd = float(d.std(ddof=1))
    if sd == 0:  # exactly on the margin (to rounding) shows neither side
        edge = np.isclose(abs(diff), margin, rtol=0, atol=1e-9)
        inside = abs(diff) < margin and not edge
        outside = abs(diff) > margin and not edge
        return {"diff": diff, "lo90": diff, "hi90": diff, "p_equiv": 0.0 if inside else 1.0,
                "p_nonequiv": 0.0 if outside else 1.0, "sd": 0.0, "n": n}
    from statsmodels.stats.weightstats import ttost_paired
    p_equiv = float(ttost_paired(np.asarray(a, float), np.asarray(b, float), -margin, margin)[0])
    se = sd / np.sqrt(n)
    lo90, hi90 = _t_interval(diff, sd, n, 0.90)
    return {"diff": diff, "lo90": lo90, "hi90": hi90, "p_equiv": p_equiv,
            "p_nonequiv": float(stats.t.sf((abs(diff) - margin) / se, n - 1)), "sd": sd, "n": n}


def noninferiority_test(a, b, margin: float) -> dict:
    """'a is at least as high as b' up to margin: p_support for H1 mean(a - b) > -margin and
    p_contradict for H1 mean(a - b) < -margin, one-sided t-tests of d + margin (scipy's
    ttest_1samp); lo90 is the one-sided 95% lower bound."""
    d = _diffs(a, b)
    n = len(d)
    diff = float(d.mean()) if n else np.nan
    if n < 2:
        return {"diff": diff, "lo90": np.nan, "hi90": np.nan, "p_support": np.nan,
                "p_contradict": np.nan, "sd": np.nan, "n": n}
    sd = float(d.std(ddof=1))
    if sd == 0:  # exactly on the margin (to rounding) shows neither side
        edge = np.isclose(diff, -margin, rtol=0, atol=1e-9)
        return {"diff": diff, "lo90": diff, "hi90": diff, "p_support": 0.0 if diff > -margin and not edge else 1.0,
                "p_contradict": 0.0 if diff < -margin and not edge else 1.0, "sd": 0.0, "n": n}
    lo90, hi90 = _t_interval(diff, sd, n, 0.90)
    return {"diff": diff, "lo90": lo90, "hi90": hi90,
            "p_support": float(stats.ttest_1samp(d + margin, 0.0, alternative="greater").pvalue),
            "p_contradict": float(stats.ttest_1samp(d + margin, 0.0, alternative="less").pvalue),
            "sd": sd, "n": n}


def paired_variance_test(a, b) -> dict:
    """Whether var(a) > var(b) for paired samples (Pitman 1939, Morgan 1939): var(a) - var(b) =
    cov(a + b, a - b), so the one-sided test of Pearson's r between a + b and a - b (scipy's
    pearsonr) tests it; an F test would treat the samples as independent, and runs that share a
    seed share its batch order and initialisation. p_support: var(a) > var(b); p_contradict: <."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = len(a)
    if n < 3 or np.std(a + b) == 0 or np.std(a - b) == 0:
        return {"ratio": np.nan, "r": np.nan, "p_support": np.nan, "p_contradict": np.nan, "n": n}
    ratio = float(a.var(ddof=1) / b.var(ddof=1)) if b.var() > 0 else np.inf
    r = stats.pearsonr(a + b, a - b)
    return {"ratio": ratio, "r": float(r.statistic), "n": n,
            "p_support": float(stats.pearsonr(a + b, a - b, alternative="greater").pvalue),
            "p_contradict": float(stats.pearsonr(a + b, a - b, alternative="less").pvalue)}


def holm_multipliers(pvalues) -> np.ndarray:
    """Each p's Holm multiplier, m - k + 1 for the k-th smallest of m (NaN for NaN): the row is
    rejected at level alpha when its p is below alpha / multiplier and every smaller p is too."""
    p = np.asarray(pvalues, float).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    out[order] = np.arange(len(order), 0, -1)
    return out


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p: the k-th smallest of m times (m - k + 1), made monotone and capped at 1.
    NaN stays NaN and is left out of the family size. Written out because statsmodels'
    multipletests(method="holm") counts NaN in the family and runs a full gc.collect() on every
    call (0.15.0; tens of ms with pandas loaded), too slow for simulated families; the tests
    check this against it."""
    p = np.asarray(pvalues, float).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate(p[order] * np.arange(m, 0, -1)))
    return out


def _alternative(alternative: str) -> str:
    # effects are taken as magnitudes, so a one-sided test is in the direction of the effect
    return "two-sided" if alternative == "two-sided" else "larger"


def min_detectable_effect(sd: float, n: int, alpha: float = ALPHA, power: float = 0.8,
                          alternative: str = "two-sided") -> float:
    """Smallest true mean paired difference, in the data's units, that the paired t-test with n
    pairs detects with that power (statsmodels' TTestPower, noncentral t) given the sd."""
    if n < 2 or np.isnan(sd):
        return np.nan
    if sd == 0:
        return 0.0
    from statsmodels.stats.power import TTestPower
    es = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power,
                                  alternative=_alternative(alternative))
    return float(abs(np.asarray(es).item()) * sd)


def pairs_needed(effect: float, sd: float, alpha: float = ALPHA, power: float = 0.8,
                 alternative: str = "two-sided") -> float:
    """Smallest whole number of pairs (at least 2) whose paired t-test detects |effect| with that
    power given the sd (TTestPower). Effects large enough for 2 pairs are answered without the
    solver, which fails to converge near its lower bound."""
    effect = abs(effect)
    if effect == 0:
        return np.inf
    if sd == 0:
        return 2.0
    if np.isnan(effect) or np.isnan(sd):
        return np.nan
    from statsmodels.stats.power import TTestPower
    tp, alt = TTestPower(), _alternative(alternative)
    reach = lambda m: tp.power(effect_size=effect / sd, nobs=m, alpha=alpha, alternative=alt)
    if reach(2) >= power:
        return 2.0
    # power grows with the pairs: double, then bisect (solve_power fails to converge, with a
    # warning, for small effects at small alpha)
    hi = 4
    while reach(hi) < power:
        hi *= 2
        if hi > 10 ** 7:
            return np.inf
    lo = hi // 2  # reach(lo) < power <= reach(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reach(mid) >= power else (mid, hi)
    return float(hi)


def tost_power(sd: float, n: int, margin: float, alpha: float = ALPHA,
               true_diff: float = 0.0) -> float:
    """Exact power of the paired TOST (90% interval inside +-margin at alpha 0.05) with n pairs
    when the true mean difference is true_diff. Neither scipy nor statsmodels has it for the
    t-test (statsmodels' TOST power is for z-tests), so it is integrated here (Owen 1965): given
    the sample sd s, TOST rejects iff the mean lies in (-margin + c s, margin - c s) with
    c = t(1 - alpha, n - 1) / sqrt(n), a normal probability; s / sd follows a chi distribution
    with n - 1 df scaled by 1 / sqrt(n - 1), over which scipy's quad integrates."""
    if n < 2 or np.isnan(sd):
        return np.nan
    if sd == 0:
        return float(abs(true_diff) < margin)
    if margin <= 0:
        return 0.0
    from scipy import integrate
    k, root_n = n - 1, np.sqrt(n)
    c = stats.t.ppf(1 - alpha, k) / root_n

    def given_s(w):  # w = s / sd
        upper = (margin - c * sd * w - true_diff) * root_n / sd
        lower = (-margin + c * sd * w - true_diff) * root_n / sd
        return max(0.0, stats.norm.cdf(upper) - stats.norm.cdf(lower)) * \
            stats.chi.pdf(w * np.sqrt(k), k) * np.sqrt(k)

    w_max = margin / (c * sd)  # beyond it the interval is wider than the band
    return float(min(1.0, integrate.quad(given_s, 0.0, w_max, limit=200)[0]))


def min_equivalence_margin(sd: float, n: int, alpha: float = ALPHA, power: float = 0.8) -> float:
    """Smallest margin that TOST with n pairs establishes with that power when the true
    difference is 0: the root of tost_power (scipy's brentq); margins below it are not testable
    at this scale."""
    if n < 2 or np.isnan(sd):
        return np.nan
    if sd == 0:
        return 0.0
    if power >= 1:
        return np.inf
    from scipy import optimize
    hi = sd
    while tost_power(sd, n, hi, alpha) < power:
        hi *= 2
    return float(optimize.brentq(lambda m: tost_power(sd, n, m, alpha) - power, 0.0, hi,
                                 xtol=1e-10 * sd))


def _claim_sides(test: dict) -> tuple[float, float]:
    kind = test["kind"]
    if kind == "difference":
        if np.isnan(test["diff"]) or np.isnan(test["p"]):
            return np.nan, np.nan  # no pairs to test
        side, p = int(np.sign(test["diff"])), test["p"]
        if side == test["expected_sign"]:
            return p, 1.0
        if side == -test["expected_sign"]:
            return 1.0, p
        return p, p  # a mean of exactly 0 (or none) supports neither side
    if kind == "equivalence":
        return test["p_equiv"], test["p_nonequiv"]
    if kind == "noninferiority":
        return test["p_support"], test["p_contradict"]
    raise ValueError(f"unknown claim kind {kind!r}")


def family_verdicts(tests, alpha: float = ALPHA) -> list[dict]:
    """Verdicts for a family of claim tests with a family-wise error rate of alpha.
    Each claim gets p_support and p_contradict and p = min of them, and Holm adjusts the claims'
    p (not_testable and nan claims are left out). A claim is supported (contradicted) when its
    adjusted p < alpha and p_support (p_contradict) is the smaller, else inconclusive.
    Why this keeps the chance of any wrong verdict at alpha: a claim's two rejection regions
    are for disjoint hypotheses (mean on the claimed side of 0 or not; |mean| < margin or not;
    mean > -margin or not, the boundary counting as not), so at most one of them can be a false
    rejection, and its p is valid at every level (a difference claim's two-sided p splits its
    level between the sides); Holm over the claims then bounds the family's false rejections by
    alpha (exactly so for independent claims, Shaffer 1980, as checked by simulation in
    tests/test_stats.py)."""
    sides, ps = [], []
    for t in tests:
        s = (np.nan, np.nan) if t["kind"] == "not_testable" else _claim_sides(t)
        sides.append(s)
        ps.append(np.nan if np.isnan(s[0]) or np.isnan(s[1]) else min(s))
    ps = np.asarray(ps, float)
    adj = holm(ps)
    mult = holm_multipliers(ps)
    out = []
    for t, (p_s, p_c), p, p_adj, k in zip(tests, sides, ps, adj, mult):
        if t["kind"] == "not_testable":
            v = NOT_TESTABLE
        elif p_adj < alpha and p_s < p_c:
            v = SUPPORTED
        elif p_adj < alpha and p_c < p_s:
            v = CONTRADICTED
        else:
            v = INCONCLUSIVE
        factor = float(p_adj / p) if p > 0 else np.nan  # nan and 0 give nan, without warnings
        out.append({"p": float(p), "p_adj": float(p_adj), "verdict": v, "holm_factor": factor,
                    "holm_multiplier": float(k),
                    "p_support": float(p_s), "p_contradict": float(p_c)})
    return out


def leave_one_out_stability(a, b, judge) -> float:
    """Share of the n leave-one-pair-out subsets on which judge(a, b) (any verdict function)
    gives the verdict it gives on all pairs; nan below 3 pairs."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = len(a)
    if n < 3:
        return np.nan
    full = judge(a, b)
    return float(np.mean([judge(np.delete(a, i), np.delete(b, i)) == full for i in range(n)]))


def proportion_interval(k: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Wilson interval for k successes in n independent trials (statsmodels' proportion_confint);
    unlike the normal interval it stays inside [0, 1] and does not collapse at k = 0 or n."""
    if n == 0:
        return np.nan, np.nan
    from statsmodels.stats.proportion import proportion_confint
    lo, hi = proportion_confint(k, n, alpha=alpha, method="wilson")
    return float(lo), float(hi)


def clustered_share_interval(shares, alpha: float = ALPHA) -> tuple[float, float, float]:
    """Mean of per-seed shares and its t interval over seeds: the items within a seed share its
    training run, so the seeds, not the items, are the independent units."""
    x = np.asarray(shares, float)
    n = len(x)
    mean = float(x.mean()) if n else np.nan
    if n < 2:
        return mean, np.nan, np.nan
    sd = float(x.std(ddof=1))
    lo, hi = _t_interval(mean, sd, n, 1 - alpha)
    return mean, lo, hi


def _long(table, **columns):
    import pandas as pd
    y = np.asarray(table, float)
    seed, level = np.indices(y.shape)
    return pd.DataFrame({"seed": seed.ravel(), "level": level.ravel(), "y": y.ravel(), **columns})


def repeated_measures_effect(table) -> dict:
    """Whether the level (e.g. lambda) changes a seeds x levels table beyond seed noise: the
    one-way repeated-measures ANOVA F test (statsmodels' AnovaRM; seeds are the subjects, and
    no sphericity correction is applied). sd_within is the root residual mean square of the
    additive seed + level model, range_of_means the spread of the level means."""
    from statsmodels.stats.anova import AnovaRM
    y = np.asarray(table, float)
    with np.errstate(divide="ignore", invalid="ignore"):  # identical seeds: no residual, F is inf or nan
        row = AnovaRM(_long(y), "y", "seed", within=["level"]).fit().anova_table.loc["level"]
    means = y.mean(axis=0)
    resid = y - y.mean(axis=1, keepdims=True) - means + y.mean()
    return {"F": float(row["F Value"]), "df_num": float(row["Num DF"]),
            "df_den": float(row["Den DF"]), "p": float(row["Pr > F"]),
            "range_of_means": float(means.max() - means.min()),
            "sd_within": float(np.sqrt((resid ** 2).sum() / ((y.shape[0] - 1) * (y.shape[1] - 1))))}


def interaction_effect(table_a, table_b) -> dict:
    """Whether the level's effect differs between two methods measured on the same seeds and
    levels: the method x level interaction of a two-way repeated-measures ANOVA (AnovaRM)."""
    import pandas as pd
    from statsmodels.stats.anova import AnovaRM
    if np.shape(table_a) != np.shape(table_b):
        raise ValueError("both methods need the same seeds x levels table")
    data = pd.concat([_long(table_a, method=0), _long(table_b, method=1)], ignore_index=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        table = AnovaRM(data, "y", "seed", within=["method", "level"]).fit().anova_table
    row = table.loc["method:level"]
    return {"F": float(row["F Value"]), "df_num": float(row["Num DF"]),
            "df_den": float(row["Den DF"]), "p": float(row["Pr > F"])}


def median_interval(x, level: float = 0.95) -> tuple[float, float, float, float]:
    """(median, lo, hi, coverage): the distribution-free interval for the median from order
    statistics, x_(k) to x_(n+1-k) with the largest k whose coverage P(k <= Binom(n, 1/2) <= n-k)
    is at least `level`; with too few values for `level`, the widest interval (min, max) and its
    smaller coverage. For timings, whose noise is skewed (a busy machine only slows a repeat down)."""
    from scipy.stats import binom
    x = np.sort(np.asarray(x, dtype=float))
    n = len(x)
    if n == 0:
        return (np.nan, np.nan, np.nan, np.nan)
    best_k, cover = 1, 1.0 - 2 * binom.cdf(0, n, 0.5)
    for k in range(1, n // 2 + 1):
        c = 1.0 - 2 * binom.cdf(k - 1, n, 0.5)  # P(k <= B <= n - k)
        if c >= level:
            best_k, cover = k, c
    return float(np.median(x)), float(x[best_k - 1]), float(x[n - best_k]), float(cover)
