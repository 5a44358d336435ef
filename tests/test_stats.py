"""Claim statistics against hand-computed cases and scipy's t distribution."""
import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.power import TTestPower

from acllib import stats


def test_majority_score_and_learned_hand_cases():
    from acllib.train import majority_score
    labels = [1, 1, 1, 0]  # always 1: accuracy 75; MRPC's F1 of always-positive: 2*0.75/(1+0.75)
    assert majority_score("rte", labels)["accuracy"] == 75.0
    assert abs(majority_score("mrpc", labels)["f1"] - 100 * 1.5 / 1.75) < 1e-9
    assert majority_score("cola", labels)["mcc"] == 0.0
    assert stats.learned(77.0, 75.0) and not stats.learned(76.9, 75.0) and not stats.learned(47.4, 52.7)


# ---- claim tests with a family-wise error rate: hand cases, then simulations ------------------
# t distribution with 2 df in closed form: cdf(t) = 1/2 + t / (2 sqrt(2 + t^2)),
# quantile(q) = (2q - 1) / sqrt(2 q (1 - q)).
def _t2_cdf(t):
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


A3, B3 = [3.0, 5.0, 7.0], [1.0, 2.0, 3.0]  # differences 2, 3, 4: mean 3, sd 1, se 1/sqrt(3)


def test_difference_test_hand_case_and_edges():
    import warnings
    r = stats.difference_test(A3, B3)
    assert r["p"] == pytest.approx(2 * (1 - _t2_cdf(3 * math.sqrt(3))))
    half = 4.302652729911275 / math.sqrt(3)
    assert (r["lo"], r["hi"]) == pytest.approx((3 - half, 3 + half))
    assert (r["sd"], r["n"], r["p_support_side"]) == (1.0, 3, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(stats.difference_test([1.0], [0.0])["p"])
        same = stats.difference_test([1.0, 1.0], [1.0, 1.0])
        assert same["p"] == 1.0 and same["p_support_side"] == 0
        assert math.isnan(stats.equivalence_test([1.0], [0.0], 1.0)["p_equiv"])


def test_no_spread_never_gives_p_zero():
    """Equal paired differences: the t statistic is undefined, and every test falls back on the
    exact sign test (scipy's binomtest): n equal signs give 0.5^n one-sided, 2 x 0.5^n two-sided."""
    for n in (2, 5, 8):
        up, zero = np.full(n, 2.0), np.zeros(n)
        assert stats.difference_test(up, zero)["p"] == pytest.approx(2 * 0.5 ** n)
        assert stats.difference_test(up, zero)["p"] == pytest.approx(sps.binomtest(n, n, 0.5).pvalue)
        assert math.isnan(stats.difference_test(up, zero)["lo"])  # no interval to show
        ni = stats.noninferiority_test(up, zero, 1.0)
        assert (ni["p_support"], ni["p_contradict"]) == pytest.approx((0.5 ** n, 1.0))
        below = stats.noninferiority_test(zero, np.full(n, 3.0), 1.0)
        assert (below["p_support"], below["p_contradict"]) == pytest.approx((1.0, 0.5 ** n))
        inside = stats.equivalence_test(np.full(n, 0.5), zero, 1.0)
        assert (inside["p_equiv"], inside["p_nonequiv"]) == pytest.approx((0.5 ** n, 1.0))
        outside = stats.equivalence_test(np.full(n, -3.0), zero, 1.0)
        assert (outside["p_equiv"], outside["p_nonequiv"]) == pytest.approx((1.0, 0.5 ** n))
        assert math.isnan(stats.paired_variance_test(up, zero)["p"])  # no variance to compare
        assert stats.share_in_every_cluster(np.full(n, 10), np.full(n, 10), lower=0.9)["p_support"] == pytest.approx(0.9 ** 10)


def test_equivalence_test_hand_case():
    r = stats.equivalence_test(A3, B3, 5.0)
    # TOST: the binding side is the upper one, t = (3 - 5) sqrt(3) with 2 df
    assert r["p_equiv"] == pytest.approx(_t2_cdf(-2 * math.sqrt(3)))
    assert r["p_equiv"] == pytest.approx(0.5 - math.sqrt(3 / 14))
    assert r["p_nonequiv"] == pytest.approx(1 - _t2_cdf(-2 * math.sqrt(3)))
    t95 = 0.9 / math.sqrt(2 * 0.95 * 0.05)
    assert (r["lo90"], r["hi90"]) == pytest.approx((3 - t95 / math.sqrt(3), 3 + t95 / math.sqrt(3)))
    outside = stats.equivalence_test(A3, B3, 1.0)  # |3| beyond a margin of 1: t = 2 sqrt(3)
    assert outside["p_nonequiv"] == pytest.approx(1 - _t2_cdf(2 * math.sqrt(3)))
    assert outside["p_equiv"] > 0.5


def test_noninferiority_test_hand_case():
    r = stats.noninferiority_test(A3, B3, 1.0)  # t = (3 + 1) sqrt(3)
    assert r["p_support"] == pytest.approx(1 - _t2_cdf(4 * math.sqrt(3)))
    assert r["p_contradict"] == pytest.approx(_t2_cdf(4 * math.sqrt(3)))
    worse = stats.noninferiority_test(B3, A3, 1.0)  # mean -3 below -1: t = -2 sqrt(3)
    assert worse["p_contradict"] == pytest.approx(_t2_cdf(-2 * math.sqrt(3)))


def test_holm_hand_case_and_nan():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = stats.holm([0.01, np.nan, 0.03])  # family of 2: 0.02, then max(0.02, 0.03)
    assert math.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.02, 0.03])
    assert stats.holm([]).size == 0
    from statsmodels.stats.multitest import multipletests
    p = np.random.default_rng(4).uniform(0, 0.2, size=9) ** 2
    p[3] = p[5]  # a tie
    assert stats.holm(p) == pytest.approx(multipletests(p, method="holm")[1])


def _t_power(effect, sd, n, alpha=0.05):
    """Two-sided paired t power from the noncentral t, by hand."""
    df, nc, c = n - 1, effect / sd * math.sqrt(n), sps.t.ppf(1 - alpha / 2, n - 1)
    return sps.nct.sf(c, df, nc) + sps.nct.cdf(-c, df, nc)


def test_pairs_needed_against_noncentral_t():
    for effect, sd in [(0.5, 1.0), (1.0, 1.0), (3.0, 2.0)]:
        n = int(stats.pairs_needed(effect, sd))
        assert _t_power(effect, sd, n) >= 0.8 and (n == 2 or _t_power(effect, sd, n - 1) < 0.8)
    assert stats.pairs_needed(0.5, 1.0) == 34
    assert stats.pairs_needed(30.0, 1.0) == 2 and stats.pairs_needed(-0.5, 1.0) == 34
    assert stats.pairs_needed(0.0, 1.0) == math.inf and stats.pairs_needed(1.0, 0.0) == 2


def _tost_rate(rng, sd, n, margin, true_diff=0.0, draws=4000):
    d = rng.normal(true_diff, sd, size=(draws, n))
    m, se = d.mean(1), d.std(1, ddof=1) / math.sqrt(n)
    c = sps.t.ppf(0.95, n - 1)
    return np.mean((m - c * se > -margin) & (m + c * se < margin)), d


def test_tost_power_against_simulation():
    rng = np.random.default_rng(1)
    cases = [(1.0, 8, 1.2, 0.0), (1.0, 8, 0.9, 0.0), (1.0, 2, 8.0, 0.0), (2.0, 5, 3.0, 0.5)]
    for sd, n, margin, true_diff in cases:
        rate, d = _tost_rate(rng, sd, n, margin, true_diff)
        assert stats.tost_power(sd, n, margin, true_diff=true_diff) == pytest.approx(rate, abs=0.03)
    # the simulated rule is equivalence_test's: its p_equiv < 0.05 on the same draws
    calls = [stats.equivalence_test(x, np.zeros(5), 3.0)["p_equiv"] < 0.05 for x in d[:200]]
    m, se = d[:200].mean(1), d[:200].std(1, ddof=1) / math.sqrt(5)
    c = sps.t.ppf(0.95, 4)
    assert calls == list((m - c * se > -3.0) & (m + c * se < 3.0))
    powers = [stats.tost_power(1.0, 8, m) for m in (0.3, 0.6, 1.2, 2.4)]
    assert powers == sorted(powers) and powers[0] < 0.01 and powers[-1] > 0.99


def _claims(d, kinds, margin):
    """Claim tests for simulated differences d (tables x claims x pairs), vectorised by hand
    with the t distribution, in the form family_verdicts takes."""
    n = d.shape[-1]
    m, se = d.mean(-1), d.std(-1, ddof=1) / math.sqrt(n)
    t0, tl, tu = m / se, (m + margin) / se, (m - margin) / se
    p = 2 * sps.t.sf(np.abs(t0), n - 1)
    p_equiv = np.maximum(sps.t.sf(tl, n - 1), sps.t.cdf(tu, n - 1))
    p_nonequiv = sps.t.sf((np.abs(m) - margin) / se, n - 1)
    tables = []
    for i in range(d.shape[0]):
        row = []
        for j, kind in enumerate(kinds):
            if kind == "difference":
                row.append({"kind": kind, "diff": m[i, j], "p": p[i, j], "expected_sign": 1})
            elif kind == "equivalence":
                row.append({"kind": kind, "p_equiv": p_equiv[i, j],
                            "p_nonequiv": p_nonequiv[i, j]})
            elif kind == "noninferiority":
                row.append({"kind": kind, "p_support": sps.t.sf(tl[i, j], n - 1),
                            "p_contradict": sps.t.cdf(tl[i, j], n - 1)})
            else:
                row.append({"kind": kind})
        tables.append(row)
    return tables, p


def test_vectorised_claims_match_the_tests():
    d = np.random.default_rng(5).normal(0.3, 1.0, size=(1, 3, 8))
    kinds = ["difference", "equivalence", "noninferiority"]
    (row,), _ = _claims(d, kinds, 0.7)
    zero = np.zeros(8)
    assert row[0]["p"] == pytest.approx(stats.difference_test(d[0, 0], zero)["p"])
    eq = stats.equivalence_test(d[0, 1], zero, 0.7)
    assert (row[1]["p_equiv"], row[1]["p_nonequiv"]) == pytest.approx(
        (eq["p_equiv"], eq["p_nonequiv"]))
    ni = stats.noninferiority_test(d[0, 2], zero, 0.7)
    assert (row[2]["p_support"], row[2]["p_contradict"]) == pytest.approx(
        (ni["p_support"], ni["p_contradict"]))


def test_family_verdicts_hand_case():
    tests = [
        {"kind": "difference", "diff": 1.0, "p": 0.001, "expected_sign": 1},
        {"kind": "difference", "diff": -1.0, "p": 0.004, "expected_sign": 1},
        {"kind": "equivalence", "p_equiv": 0.3, "p_nonequiv": 0.9},
        {"kind": "noninferiority", "p_support": 0.02, "p_contradict": 0.98},
        {"kind": "not_testable"},
        {"kind": "difference", "diff": 1.0, "p": np.nan, "expected_sign": 1},
    ]
    out = stats.family_verdicts(tests)
    # four testable claims, p = 0.001, 0.004, 0.3, 0.02: Holm 0.004, 0.012, 0.3, 0.04
    assert [o["p_adj"] for o in out[:4]] == pytest.approx([0.004, 0.012, 0.3, 0.04])
    assert [o["verdict"] for o in out] == [stats.SUPPORTED, stats.CONTRADICTED, stats.INCONCLUSIVE,
                                           stats.SUPPORTED, stats.NOT_TESTABLE, stats.INCONCLUSIVE]
    assert out[0]["holm_factor"] == pytest.approx(4) and out[3]["holm_factor"] == pytest.approx(2)
    assert math.isnan(out[4]["holm_factor"]) and math.isnan(out[5]["p_adj"])
    alone = stats.family_verdicts(tests[3:4])  # without the family, 0.02 passes unadjusted
    assert alone[0]["p_adj"] == 0.02 and alone[0]["verdict"] == stats.SUPPORTED


def _any_wrong(tables, wrong):
    return np.mean([any(v["verdict"] in bad for v, bad in zip(stats.family_verdicts(t), wrong))
                    for t in tables])


def test_family_wise_error_under_the_null():
    rng = np.random.default_rng(0)
    draws, se_mc = 2000, math.sqrt(0.05 * 0.95 / 2000)
    # 12 difference claims, 8 pairs each, true mean 0: every decisive verdict is wrong
    d = rng.normal(0.0, 1.0, size=(draws, 12, 8))
    tables, p = _claims(d, ["difference"] * 12, 1.0)
    decisive = {stats.SUPPORTED, stats.CONTRADICTED}
    assert _any_wrong(tables, [decisive] * 12) <= 0.05 + 2 * se_mc
    assert np.mean((p < 0.05).any(axis=1)) > 0.3  # each at 0.05 without Holm: about 1 - 0.95^12

    # mixed tables, 8 pairs, sd 1, margin 2: 6 difference claims at 0, 3 equivalence claims at
    # |mean| = margin and 3 noninferiority claims at mean = -margin, and a claim not testable.
    # At the margin 'equivalent' / 'noninferior' is wrong; just inside it (the same
    # distribution), 'contradicted' is: each must stay within the family's alpha.
    margin, kinds = 2.0, ["difference"] * 6 + ["equivalence"] * 3 + ["noninferiority"] * 3
    mu = np.array([0.0] * 6 + [margin, -margin, margin] + [-margin] * 3)
    d = rng.normal(mu[None, :, None], 1.0, size=(draws, 12, 8))
    tables, _ = _claims(d, kinds, margin)
    tables = [t + [{"kind": "not_testable"}] for t in tables]
    at_margin = [decisive] * 6 + [{stats.SUPPORTED}] * 6 + [set()]
    inside = [decisive] * 6 + [{stats.CONTRADICTED}] * 6 + [set()]
    assert _any_wrong(tables, at_margin) <= 0.05 + 2 * se_mc
    assert _any_wrong(tables, inside) <= 0.05 + 2 * se_mc
    # a single equivalence claim at its margin, alone in its family, errs at about alpha
    single = [[t[6]] for t in tables]
    assert abs(_any_wrong(single, [{stats.SUPPORTED}]) - 0.05) <= 3 * se_mc


def test_supported_rate_at_the_min_detectable_effect():
    mde = TTestPower().solve_power(effect_size=None, nobs=8, alpha=0.05, power=0.8)  # sd 1: in points
    d = np.random.default_rng(0).normal(mde, 1.0, size=(4000, 1, 8))
    tables, _ = _claims(d, ["difference"], 1.0)
    rate = np.mean([stats.family_verdicts(t)[0]["verdict"] == stats.SUPPORTED for t in tables])
    assert rate == pytest.approx(0.80, abs=0.03)


def test_holm_multipliers_and_family_verdicts_report_them():
    m = stats.holm_multipliers([0.04, np.nan, 0.01, 0.03])
    assert m[0] == 1 and np.isnan(m[1]) and m[2] == 3 and m[3] == 2
    out = stats.family_verdicts([{"kind": "difference", "expected_sign": 1, "diff": 1.0, "p": p} for p in (0.5, 0.9)])
    assert [o["holm_multiplier"] for o in out] == [2.0, 1.0]  # p_adj of 0.5 is capped at 1, its multiplier is 2


def test_boundary_of_the_margin_shows_neither_side():
    r = stats.noninferiority_test([0.9, 0.9, 0.9], [1.0, 1.0, 1.0], 0.1)  # exactly on -margin, sd 0
    assert r["p_support"] == 1.0 and r["p_contradict"] == 1.0
    r = stats.equivalence_test([1.1, 1.1], [1.0, 1.0], 0.1)
    assert r["p_equiv"] == 1.0 and r["p_nonequiv"] == 1.0


def test_paired_variance_test_by_simulation_and_hand():
    # hand: a + b and a - b perfectly correlated when b is constant-shifted a scaled down
    a = np.array([1.0, 2.0, 4.0, 7.0])
    b = 0.5 * a
    r = stats.paired_variance_test(a, b)
    assert r["ratio"] == pytest.approx(4.0) and r["r"] == pytest.approx(1.0)
    # null: equal variances, strongly correlated pairs; rejection rate at most alpha (+ MC error)
    rng = np.random.default_rng(0)
    reject = 0
    for _ in range(2000):
        z = rng.normal(size=8)
        x, y = z + 0.5 * rng.normal(size=8), z + 0.5 * rng.normal(size=8)
        reject += stats.paired_variance_test(x, y)["p"] < 0.05  # two-sided, as the claims use it
    assert reject / 2000 < 0.05 + 2 * np.sqrt(0.05 * 0.95 / 2000)
    # hand: Pitman-Morgan is the correlation test of (a + b, a - b): r from np.corrcoef, its t with
    # n - 2 degrees of freedom, two-sided
    a = np.array([3.1, 0.4, 2.2, 5.0, 1.7, 4.4])
    b = np.array([2.0, 1.1, 1.9, 2.8, 1.0, 2.1])
    rho = np.corrcoef(a + b, a - b)[0, 1]
    t = rho * np.sqrt(len(a) - 2) / np.sqrt(1 - rho ** 2)
    out = stats.paired_variance_test(a, b)
    assert out["r"] == pytest.approx(rho) and out["p"] == pytest.approx(2 * sps.t.sf(abs(t), len(a) - 2), rel=1e-9)
    assert out["ratio"] == pytest.approx(a.var(ddof=1) / b.var(ddof=1))


def test_variance_ratio_interval_inverts_the_pitman_morgan_test():
    # independent reference: the ratios theta at which scipy's pearsonr test of (a/sqrt(theta) + b,
    # a/sqrt(theta) - b) has p = 0.05, found by root search on either side of the sample ratio
    from scipy.optimize import brentq
    rng = np.random.default_rng(5)
    for n in (5, 8, 20):
        z = rng.normal(size=n)
        a, b = 2 * z + rng.normal(size=n), z + rng.normal(size=n)
        lo, hi = stats.variance_ratio_interval(a, b, 0.95)
        f = a.var(ddof=1) / b.var(ddof=1)
        p_at = lambda theta: sps.pearsonr(a / np.sqrt(theta) + b, a / np.sqrt(theta) - b).pvalue - 0.05
        assert lo < f < hi
        assert lo == pytest.approx(brentq(p_at, f * 1e-4, f), rel=1e-6)
        assert hi == pytest.approx(brentq(p_at, f, f * 1e4), rel=1e-6)
    # coverage by simulation: the true ratio 4 inside the 90% interval about 90% of the time
    inside = 0
    for _ in range(2000):
        z = rng.normal(size=6)
        x, y = 2 * (z + rng.normal(size=6)), z + rng.normal(size=6)
        lo, hi = stats.variance_ratio_interval(x, y, 0.90)
        inside += lo <= 4.0 <= hi
    assert abs(inside / 2000 - 0.90) < 3 * np.sqrt(0.9 * 0.1 / 2000)
    assert all(map(math.isnan, stats.variance_ratio_interval([1, 2], [2, 1])))  # n < 3: no interval


def test_stability_at_its_stated_error():
    """Issue #24: both one-sided Pitman-Morgan p at full alpha decided 9.4% of null cases; the
    two-sided p, read as a difference row (its sign the claimed side), decides at most 5%."""
    rng = np.random.default_rng(2)
    decided = 0
    for _ in range(4000):
        z = rng.normal(size=5)
        x, y = z + rng.normal(size=5), z + rng.normal(size=5)
        r = stats.paired_variance_test(x, y)
        t = {"kind": "difference", "expected_sign": 1, "diff": r["r"], "p": r["p"]}
        decided += stats.family_verdicts([t])[0]["verdict"] != stats.INCONCLUSIVE
    assert decided / 4000 < 0.05 + 2 * np.sqrt(0.05 * 0.95 / 4000)


def test_share_in_every_cluster_against_scipy_and_by_simulation():
    r = stats.share_in_every_cluster([9, 10, 8], [10, 10, 10], lower=0.6)
    per = [sps.binomtest(k, 10, 0.6, alternative="greater").pvalue for k in (9, 10, 8)]
    assert r["p_support"] == pytest.approx(max(per))  # intersection-union: the largest
    low = [sps.binomtest(k, 10, 0.6, alternative="less").pvalue for k in (9, 10, 8)]
    assert r["p_contradict"] == pytest.approx(min(1.0, 3 * min(low)))  # Bonferroni union
    assert (r["share"], r["lo"], r["hi"]) == pytest.approx((0.9, 0.8, 1.0))
    two = stats.share_in_every_cluster([2, 3], [10, 10], lower=0.1, upper=0.3)
    assert two["p_support"] == pytest.approx(max(sps.binomtest(k, 10, b, alternative=a).pvalue
                                                 for k in (2, 3) for b, a in ((0.1, "greater"), (0.3, "less"))))
    # every seed's true share at the bound: "every model inside" is wrongly supported at most 5%
    rng = np.random.default_rng(0)
    wrong = np.mean([stats.share_in_every_cluster(rng.binomial(40, 0.9, 5), [40] * 5, lower=0.9)["p_support"] < 0.05
                     for _ in range(2000)])
    assert wrong <= 0.05


def test_partial_conjunction_and_replicability_by_hand():
    p = [0.001, 0.01, 0.02, 0.3]
    # "at least u of 4": (4 - u + 1) x the u-th smallest
    assert [stats.partial_conjunction_p(p, u) for u in (1, 2, 3, 4)] == pytest.approx([0.004, 0.03, 0.04, 0.3])
    assert stats.replicability_count(p) == 3
    assert stats.replicability_count([0.2, 0.01]) == 1 and stats.replicability_count([0.5, 0.6]) == 0
    assert math.isnan(stats.partial_conjunction_p(p, 5))
    # under the null on all of 4 (independent uniform p), "at least 1" is claimed at most 5% of the time
    rng = np.random.default_rng(1)
    assert np.mean([stats.replicability_count(rng.uniform(size=4)) >= 1 for _ in range(4000)]) <= 0.05 + 0.007


def test_median_interval_coverage_by_hand_and_by_simulation():
    x = np.arange(9.0)
    med, lo, hi, cover = stats.median_interval(x)
    # n = 9: k = 2 covers 1 - 2 * (1 + 9) / 2^9 = 0.9609; k = 3 only 1 - 2 * 46 / 512 = 0.8203
    assert (med, lo, hi) == (4.0, 1.0, 7.0) and cover == pytest.approx(1 - 20 / 512)
    med, lo, hi, cover = stats.median_interval([3.0, 1.0, 2.0, 5.0, 4.0])  # too few for 95%: min, max
    assert (lo, hi) == (1.0, 5.0) and cover == pytest.approx(1 - 2 / 32)
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(4000):  # skewed noise, true median log(2) of an exponential(1)
        _, lo, hi, _ = stats.median_interval(rng.exponential(size=9))
        hits += lo <= math.log(2) <= hi
    assert abs(hits / 4000 - (1 - 20 / 512)) < 0.015
