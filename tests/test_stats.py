"""Claim statistics against hand-computed cases and scipy's t distribution."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from acllib import stats


def test_paired_hand_case():
    a, b = [3.0, 5.0, 7.0], [1.0, 2.0, 3.0]  # differences 2, 3, 4: mean 3, sd 1
    r = stats.paired(a, b)
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, df=2) * 1 / sqrt(3)
    assert r["diff"] == pytest.approx(3.0) and r["n"] == 3
    assert r["lo"] == pytest.approx(3.0 - half) and r["hi"] == pytest.approx(3.0 + half)
    # paired t statistic 3 / (1 / sqrt 3) with 2 degrees of freedom
    assert r["p"] == pytest.approx(2 * sps.t.sf(3 * math.sqrt(3), 2))


def test_verdicts():
    assert stats.verdict({"lo": 0.5, "hi": 2.0}) == stats.SUPPORTED
    assert stats.verdict({"lo": -2.0, "hi": -0.5}) == stats.CONTRADICTED
    assert stats.verdict({"lo": -2.0, "hi": -0.5}, expected_sign=-1) == stats.SUPPORTED
    assert stats.verdict({"lo": -0.5, "hi": 0.5}) == stats.INCONCLUSIVE
    assert stats.verdict(stats.paired([1.0], [0.0])) == stats.INCONCLUSIVE  # one pair tells nothing


def test_changing_a_result_changes_the_verdict():
    base = [70.0, 71.0, 72.0, 70.5]
    better = [x + 1.0 + 0.1 * i for i, x in enumerate(base)]
    assert stats.verdict(stats.paired(better, base)) == stats.SUPPORTED
    worse = [x - 1.0 - 0.1 * i for i, x in enumerate(base)]
    assert stats.verdict(stats.paired(worse, base)) == stats.CONTRADICTED
    mixed = [x + d for x, d in zip(base, [1.0, -1.0, 0.5, -0.6])]
    assert stats.verdict(stats.paired(mixed, base)) == stats.INCONCLUSIVE


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
        assert stats.difference_test([2.0, 2.0], [1.0, 1.0])["p"] == 0.0
        same = stats.difference_test([1.0, 1.0], [1.0, 1.0])
        assert same["p"] == 1.0 and same["p_support_side"] == 0
        assert math.isnan(stats.equivalence_test([1.0], [0.0], 1.0)["p_equiv"])
        assert stats.equivalence_test([1.0, 1.0], [0.5, 0.5], 1.0)["p_equiv"] == 0.0
        assert stats.noninferiority_test([1.0, 1.0], [3.0, 3.0], 1.0)["p_contradict"] == 0.0


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


def test_min_detectable_effect_and_pairs_needed_against_noncentral_t():
    mde = stats.min_detectable_effect(2.0, 8)
    assert _t_power(mde, 2.0, 8) == pytest.approx(0.8, abs=1e-6)
    for effect, sd in [(0.5, 1.0), (1.0, 1.0), (3.0, 2.0)]:
        n = int(stats.pairs_needed(effect, sd))
        assert _t_power(effect, sd, n) >= 0.8 and (n == 2 or _t_power(effect, sd, n - 1) < 0.8)
    assert stats.pairs_needed(0.5, 1.0) == 34
    assert stats.pairs_needed(30.0, 1.0) == 2 and stats.pairs_needed(-0.5, 1.0) == 34
    assert stats.pairs_needed(0.0, 1.0) == math.inf and stats.pairs_needed(1.0, 0.0) == 2
    assert math.isnan(stats.min_detectable_effect(1.0, 1))
    assert stats.min_detectable_effect(0.0, 5) == 0
    one = stats.min_detectable_effect(1.0, 8, alternative="larger")
    df, c = 7, sps.t.ppf(0.95, 7)
    assert sps.nct.sf(c, df, one * math.sqrt(8)) == pytest.approx(0.8, abs=1e-6)


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
    margin = stats.min_equivalence_margin(1.0, 8)
    assert stats.tost_power(1.0, 8, margin) == pytest.approx(0.8, abs=1e-8)
    assert _tost_rate(rng, 1.0, 8, margin)[0] == pytest.approx(0.8, abs=0.03)
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
    mde = stats.min_detectable_effect(1.0, 8)
    d = np.random.default_rng(0).normal(mde, 1.0, size=(4000, 1, 8))
    tables, _ = _claims(d, ["difference"], 1.0)
    rate = np.mean([stats.family_verdicts(t)[0]["verdict"] == stats.SUPPORTED for t in tables])
    assert rate == pytest.approx(0.80, abs=0.03)


def test_leave_one_out_stability_flips():
    judge = lambda a, b: stats.verdict(stats.paired(a, b))
    b = np.zeros(5)
    a = np.array([1.0, 1.1, 0.9, 1.05, -3.0])  # the last pair alone hides a consistent gain
    assert judge(a, b) == stats.INCONCLUSIVE and judge(a[:4], b[:4]) == stats.SUPPORTED
    assert stats.leave_one_out_stability(a, b, judge) == pytest.approx(4 / 5)
    assert stats.leave_one_out_stability(a[:4], b[:4], judge) == 1.0
    assert math.isnan(stats.leave_one_out_stability(a[:2], b[:2], judge))


def test_proportion_and_clustered_share_intervals():
    k, n, z = 3, 10, sps.norm.ppf(0.975)  # Wilson's interval by hand
    centre = (k + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(k * (n - k) / n + z * z / 4)
    assert stats.proportion_interval(k, n) == pytest.approx((centre - half, centre + half))
    assert stats.proportion_interval(0, 10)[0] == pytest.approx(0.0)
    shares = [0.2, 0.4, 0.3]  # mean 0.3, sd 0.1
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert stats.clustered_share_interval(shares) == pytest.approx((0.3, 0.3 - half, 0.3 + half))


def _rm_hand(y):
    """One-way repeated-measures ANOVA by sums of squares: level, seed, and residual."""
    s, l = y.shape
    g = y.mean()
    ss_level = s * ((y.mean(0) - g) ** 2).sum()
    ss_seed = l * ((y.mean(1) - g) ** 2).sum()
    ss_error = ((y - g) ** 2).sum() - ss_level - ss_seed
    df1, df2 = l - 1, (l - 1) * (s - 1)
    f = ss_level / df1 / (ss_error / df2)
    return f, df1, df2, sps.f.sf(f, df1, df2), math.sqrt(ss_error / df2)


def test_repeated_measures_effect_hand_case():
    y = np.array([[70.0, 71.5, 73.0], [68.0, 70.5, 70.0], [72.0, 72.5, 75.5], [69.0, 71.0, 71.5]])
    r = stats.repeated_measures_effect(y)
    f, df1, df2, p, sd = _rm_hand(y)
    got = (r["F"], r["df_num"], r["df_den"], r["p"], r["sd_within"])
    assert got == pytest.approx((f, df1, df2, p, sd))
    assert r["range_of_means"] == pytest.approx(72.5 - 69.75)


def test_interaction_effect_hand_case():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 4)) + np.arange(4)  # method a rises with the level, b does not
    b = rng.normal(size=(5, 4))
    y = np.stack([a, b])  # method x seed x level
    g = y.mean()
    m_ml, m_m, m_l = y.mean(1), y.mean((1, 2)), y.mean((0, 1))
    m_ms, m_sl, m_s = y.mean(2), y.mean(0), y.mean((0, 2))
    ss_ml = 5 * ((m_ml - m_m[:, None] - m_l[None] + g) ** 2).sum()
    resid = (y - m_ml[:, None, :] - m_ms[:, :, None] - m_sl[None] + m_m[:, None, None]
             + m_l[None, None] + m_s[None, :, None] - g)
    f = (ss_ml / 3) / ((resid ** 2).sum() / 12)
    r = stats.interaction_effect(a, b)
    assert (r["F"], r["df_num"], r["df_den"]) == pytest.approx((f, 3, 12))
    assert r["p"] == pytest.approx(sps.f.sf(f, 3, 12))
    # with two methods it is the level effect on their per-seed differences
    assert r["F"] == pytest.approx(stats.repeated_measures_effect(a - b)["F"])


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
        reject += stats.paired_variance_test(x, y)["p_support"] < 0.05
    assert reject / 2000 < 0.05 + 2 * np.sqrt(0.05 * 0.95 / 2000)


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
