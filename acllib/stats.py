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


# ---- claim tests with a family-wise error rate ----------------------------------------------
# scipy and statsmodels do the computations; written here by hand only what neither offers (the
# one-sided non-equivalence p, the exact power of a t-based TOST, the verdict rule over a family)
# and Holm's adjustment, whose statsmodels version is too slow to call per simulated family.

NOT_TESTABLE = "not testable here"
ALPHA = 0.05


def _diffs(a, b) -> np.ndarray:
    return np.asarray(a, float) - np.asarray(b, float)


def t_interval(mean: float, sd: float, n: int, level: float) -> tuple[float, float]:
    """The two-sided t interval at `level` of a mean of n paired differences with sd `sd`."""
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n))
    return mean - half, mean + half


def sign_test_p(d, alternative: str = "two-sided") -> float:
    """The exact sign test of the paired differences d against 0 (scipy's binomtest on the count of
    positive differences among the non-zero ones). The t-tests below fall back on it when the
    differences have no spread: there the t statistic is undefined (0 / 0 or x / 0), and a p of 0
    would claim certainty that n pairs cannot give. n equal differences give p = 0.5^n one-sided,
    2 x 0.5^n two-sided: the smallest p that n pairs give without assuming a distribution."""
    d = np.asarray(d, float)
    d = d[d != 0]
    if len(d) == 0:
        return 1.0
    return float(stats.binomtest(int((d > 0).sum()), len(d), 0.5, alternative=alternative).pvalue)


def difference_test(a, b) -> dict:
    """Paired two-sided t-test of mean(a - b) (scipy's ttest_rel) with its 95% t interval.
    Fewer than 2 pairs give p nan; differences without spread (sd 0) give the exact sign test's p
    (sign_test_p) and no interval."""
    d = _diffs(a, b)
    n, diff = len(d), float(d.mean()) if len(d) else np.nan
    side = int(np.sign(diff)) if n else 0
    if n < 2:
        return {"diff": diff, "lo": np.nan, "hi": np.nan, "p": np.nan, "sd": np.nan, "n": n,
                "p_support_side": side, "test": "none"}
    sd = float(d.std(ddof=1))
    if sd == 0:
        return {"diff": diff, "lo": np.nan, "hi": np.nan, "p": sign_test_p(d), "sd": 0.0,
                "n": n, "p_support_side": side, "test": "sign"}
    res = stats.ttest_rel(np.asarray(a, float), np.asarray(b, float))
    ci = res.confidence_interval(0.95)
    return {"diff": diff, "lo": float(ci.low), "hi": float(ci.high), "p": float(res.pvalue),
            "sd": sd, "n": n, "p_support_side": side, "test": "t"}


def equivalence_test(a, b, margin: float) -> dict:
    """TOST for paired data, H1: |mean(a - b)| < margin (statsmodels' ttost_paired); lo90, hi90
    is the 90% t interval, inside (-margin, margin) exactly when TOST rejects at 0.05.
    p_nonequiv is the one-sided p for |mean| beyond the margin on the observed mean's side,
    t = (|diff| - margin) / se (statsmodels has no such test). Its size is alpha plus the chance
    of passing the far margin too, negligible unless the margin is small against se.
    Differences without spread: both sides by the exact sign test of d against each margin."""
    d = _diffs(a, b)
    n = len(d)
    diff = float(d.mean()) if n else np.nan
    if n < 2:
        return {"diff": diff, "lo90": np.nan, "hi90": np.nan, "p_equiv": np.nan,
                "p_nonequiv": np.nan, "sd": np.nan, "n": n, "test": "none"}
    sd = float(d.std(ddof=1))
    if sd == 0:  # exactly on the margin (to rounding) shows neither side
        edge = lambda x: np.isclose(x, 0.0, rtol=0, atol=1e-9)
        lower, upper = d + margin, d - margin  # TOST: lower > 0 and upper < 0
        lower = np.where(edge(lower), 0.0, lower)
        upper = np.where(edge(upper), 0.0, upper)
        p_equiv = max(sign_test_p(lower, "greater"), sign_test_p(upper, "less"))
        p_nonequiv = sign_test_p(upper, "greater") if diff >= 0 else sign_test_p(lower, "less")
        return {"diff": diff, "lo90": np.nan, "hi90": np.nan, "p_equiv": p_equiv,
                "p_nonequiv": p_nonequiv, "sd": 0.0, "n": n, "test": "sign"}
    from statsmodels.stats.weightstats import ttost_paired
    p_equiv = float(ttost_paired(np.asarray(a, float), np.asarray(b, float), -margin, margin)[0])
    se = sd / np.sqrt(n)
    lo90, hi90 = t_interval(diff, sd, n, 0.90)
    return {"diff": diff, "lo90": lo90, "hi90": hi90, "p_equiv": p_equiv,
            "p_nonequiv": float(stats.t.sf((abs(diff) - margin) / se, n - 1)), "sd": sd, "n": n,
            "test": "t"}


def noninferiority_test(a, b, margin: float) -> dict:
    """'a is at least as high as b' up to margin: p_support for H1 mean(a - b) > -margin and
    p_contradict for H1 mean(a - b) < -margin, one-sided t-tests of d + margin (scipy's
    ttest_1samp); lo90 is the one-sided 95% lower bound. Differences without spread: the exact
    sign test of d + margin."""
    d = _diffs(a, b)
    n = len(d)
    diff = float(d.mean()) if n else np.nan
    if n < 2:
        return {"diff": diff, "lo90": np.nan, "hi90": np.nan, "p_support": np.nan,
                "p_contradict": np.nan, "sd": np.nan, "n": n, "test": "none"}
    sd = float(d.std(ddof=1))
    if sd == 0:  # exactly on the margin (to rounding) shows neither side
        shifted = d + margin
        shifted = np.where(np.isclose(shifted, 0.0, rtol=0, atol=1e-9), 0.0, shifted)
        return {"diff": diff, "lo90": np.nan, "hi90": np.nan, "p_support": sign_test_p(shifted, "greater"),
                "p_contradict": sign_test_p(shifted, "less"), "sd": 0.0, "n": n, "test": "sign"}
    lo90, hi90 = t_interval(diff, sd, n, 0.90)
    return {"diff": diff, "lo90": lo90, "hi90": hi90,
            "p_support": float(stats.ttest_1samp(d + margin, 0.0, alternative="greater").pvalue),
            "p_contradict": float(stats.ttest_1samp(d + margin, 0.0, alternative="less").pvalue),
            "sd": sd, "n": n, "test": "t"}


def paired_variance_test(a, b) -> dict:
    """Whether var(a) and var(b) differ for paired samples (Pitman 1939, Morgan 1939): var(a) -
    var(b) = cov(a + b, a - b), so the test of Pearson's r between a + b and a - b (scipy's
    pearsonr) tests it; an F test would treat the samples as independent, and runs that share a
    seed share its batch order and initialisation. p is two-sided, as a difference row's is: the
    claimed side and the opposite one split its level (two one-sided p at full level each would
    double the error); r > 0 means var(a) > var(b)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = len(a)
    if n < 3 or np.std(a + b) == 0 or np.std(a - b) == 0:
        return {"ratio": np.nan, "r": np.nan, "p": np.nan, "n": n}
    ratio = float(a.var(ddof=1) / b.var(ddof=1)) if b.var() > 0 else np.inf
    r = stats.pearsonr(a + b, a - b)
    return {"ratio": ratio, "r": float(r.statistic), "p": float(r.pvalue), "n": n}


def variance_ratio_interval(a, b, level: float = 0.95) -> tuple[float, float]:
    """The interval for var(a) / var(b) of paired samples that inverts the Pitman-Morgan test above:
    the ratios theta that the test of var(a / sqrt(theta)) = var(b) does not reject at 1 - level.
    Closed form (Pitman 1939): F (K -/+ sqrt(K^2 - 1)) with F the ratio of sample variances, r the
    correlation of a and b, K = 1 + 2 (1 - r^2) t^2 / (n - 2), t the two-sided t quantile on n - 2
    degrees of freedom (tests/test_stats.py inverts paired_variance_test numerically against it)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = len(a)
    if n < 3 or a.var() == 0 or b.var() == 0:
        return np.nan, np.nan
    f = a.var(ddof=1) / b.var(ddof=1)
    r = np.corrcoef(a, b)[0, 1]
    t = stats.t.ppf(0.5 + level / 2, n - 2)
    k = 1 + 2 * (1 - r * r) * t * t / (n - 2)
    root = np.sqrt(k * k - 1)
    return float(f * (k - root)), float(f * (k + root))


def share_in_every_cluster(successes, trials, lower: float | None = None, upper: float | None = None) -> dict:
    """Whether every cluster's share of items with a property (a seed's run: its batches inside the
    angle band, its steps over 90 degrees) lies above `lower` and/or below `upper`, from counts.
    Each cluster's exact one-sided binomial tests (scipy's binomtest) against each bound; the claim
    holds for every cluster, so its p is the largest of them (an intersection-union test, exact at
    its level without correction), and "some cluster lies outside" gets the Bonferroni union of
    each cluster's test of its nearer bound. No assumption about how clusters differ: with few
    seeds, pooling the counts (even deflated by an estimated design effect) rejected a true 90%
    share in up to 18% of simulated cases at a nominal 5% (5 seeds of 10 batches, ICC 0.3).
    Counts, not per-seed shares: shares of 1 on every seed have no spread and a t-test of them
    gives p 0, while 10 of 10 batches against 0.9 give 0.9^10 = 0.35."""
    k = np.asarray(successes, int)
    m = np.asarray(trials, int)
    g = len(m)
    if g == 0 or (m == 0).any():
        return {"share": np.nan, "lo": np.nan, "hi": np.nan, "p_support": np.nan, "p_contradict": np.nan,
                "clusters": g, "items": int(m.sum()) if g else 0}
    support, outside = [], []
    for ki, mi in zip(k, m):
        p_above = stats.binomtest(int(ki), int(mi), lower, alternative="greater").pvalue if lower is not None else 0.0
        p_below = stats.binomtest(int(ki), int(mi), upper, alternative="less").pvalue if upper is not None else 0.0
        support.append(max(p_above, p_below))
        share = ki / mi
        nearer_lower = lower is not None and (upper is None or share <= (lower + upper) / 2)
        outside.append(stats.binomtest(int(ki), int(mi), lower, alternative="less").pvalue if nearer_lower
                       else stats.binomtest(int(ki), int(mi), upper, alternative="greater").pvalue)
    shares = k / m
    return {"share": float(k.sum() / m.sum()), "lo": float(shares.min()), "hi": float(shares.max()),
            "p_support": float(max(support)), "p_contradict": float(min(1.0, g * min(outside))),
            "clusters": g, "items": int(m.sum())}


def partial_conjunction_p(pvalues, u: int) -> float:
    """The p-value of "at least u of these n hypotheses are false" (Benjamini & Heller 2008): the
    Bonferroni combination of the n - u + 1 largest p, (n - u + 1) x p_(u), valid under any
    dependence between the tests (the exits of one model, the tasks of one method). The
    replicability analysis of Dror et al. (2017) counts the tasks on which an effect holds with it."""
    p = np.sort(np.asarray(pvalues, float))
    n = len(p)
    if not 1 <= u <= n or np.isnan(p).any():
        return np.nan
    return float(min(1.0, (n - u + 1) * p[u - 1]))


def replicability_count(pvalues, alpha: float = ALPHA) -> int:
    """How many of the hypotheses are false, with error control at alpha (Dror et al. 2017): the
    largest u whose partial conjunction p is below alpha (0 if none). The p of "at least u" grows with
    u, so the count is that of the first u that fails, less one."""
    n = len(pvalues)
    count = 0
    for u in range(1, n + 1):
        if partial_conjunction_p(pvalues, u) < alpha:
            count = u
        else:
            break
    return count


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
