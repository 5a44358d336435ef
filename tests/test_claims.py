"""The claims table on synthetic per-seed tables with known answers: families, kinds per task from
the paper's numbers, zero spreads, the learned rule, Holm, power and robustness. The tables go
through the same builders and rules the book uses (claim_tables.from_frames, claims.judge)."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from acllib import claim_tables, claims, paper, stats

PROFILE = "smoke"  # its plan: Table 1 and the layer curves on RTE and MRPC, Table 3 and early exit on RTE


def _row(table, cid, task="rte"):
    r = table[(table.id == cid) & (table.task.str.startswith(task))]
    assert len(r) == 1, (cid, task, len(r))
    return r.iloc[0]


def _majority(level=50.0):
    return pd.DataFrame({"task": ["rte", "mrpc"], "split": "validation", "majority": level})


def _table1(acl_minus_ce, noise, seeds=8, ce_level=80.0, seed=0, tasks=("rte",)):
    rng = np.random.default_rng(seed)
    rows = []
    for task in tasks:
        for s in range(1, seeds + 1):
            ce = ce_level + rng.normal(0, 1)
            for row, v in (("CE", ce), ("CE+SCL", ce + rng.normal(0, 1)), ("ACL", ce + acl_minus_ce + rng.normal(0, noise)),
                           ("direct 3 layers (as BERT-6L)", 70 + rng.normal(0, 1)),
                           ("ACL-CL exit 3 (as ACL-BERT-6L)", 70 + rng.normal(0, 1))):
                rows.append({"row": row, "backbone": "tiny", "task": task, "seed": s, "score": v})
    return pd.DataFrame(rows)


def _judge(robustness=True, **frames):
    tables = claim_tables.from_frames(PROFILE, {"majority": _majority(), **frames})
    return claims.judge(PROFILE, tables, robustness=robustness)[0]


def test_claims_are_data_with_a_family_a_kind_and_a_margin_where_needed():
    cs = claims.book_claims()
    assert len({c.id for c in cs}) == len(cs)
    kinds = {"difference", "noninferiority", "equivalence", "variance", "band", "share", "most", "lambda-flat",
             "lambda-effect", "lambda-less", "not_testable"}
    for c in cs:
        assert c.kind in kinds and c.family in claims.FAMILIES, c.id
        assert c.table in claim_tables.COLUMNS, c.id
        if c.kind in ("noninferiority", "equivalence", "band", "share", "lambda-flat", "lambda-effect") or c.per_task_kind:
            assert c.margin is not None and c.margin_why, c.id
    # the abstract's two takeaways, fixed before any run: ACL at least as high as CE and as CE+SCL
    # (full fine-tuning), ACL-CL's exits above the equal-budget multi-exit baselines
    primary = {c.id: (c.kind, c.b) for c in cs if c.family == "primary"}
    assert primary == {"p-atleast-CE": ("noninferiority", "CE"), "p-atleast-CE+SCL": ("noninferiority", "CE+SCL"),
                       "p-exits-2ST-MHA": ("difference", "2ST-MHA"), "p-exits-2ST-MHA+KD": ("difference", "2ST-MHA+KD")}
    assert set(claims.PRIMARY_WHY) == set(primary)  # each with its reason
    # the early-exit rows compare with every equal-budget 2ST baseline, fixed beforehand
    assert {c.b for c in cs if c.chapter == "07_early_exit"} == {"2ST-MHA", "2ST-MHA+KD"}
    # JT's and ALT's exits train on other budgets: exploratory, their budgets beside them
    for c in cs:
        if c.id in ("lc-JT", "lc-JT-MHA", "lc-ALT", "lc-ALT-MHA"):
            assert c.family == "exploratory" and "lr" in c.budget
    assert {c.baseline for c in cs if c.id in ("t1-headprune", "t1-theseus")} == {claims.REIMPLEMENTED}


@pytest.mark.parametrize("cid, family, task, kind", [
    ("t1-vs-CE", "BERT", "sst2", "equivalence"),         # ACL 92.7 against CE 92.8: the paper's word is "comparable"
    ("t1-vs-CE+SCL", "BERT", "sst2", "difference"),     # 92.7 against 92.1: a gain
    ("t1-vs-CE", "BERT", "rte", "difference"),          # 66.2 against 65.3
    ("t1-vs-CE+SCL", "BERT", "qnli", "equivalence"),    # 89.7 against 89.7: a tie
    ("t1-vs-CE", "BERT", "qqp", "difference"),          # BERT: 88.9 against 88.7
    ("t1-vs-CE", "RoBERTa", "qqp", "equivalence"),      # RoBERTa: 90.2 against 90.3, its own row
    ("t2-ACL", "BERT", "mrpc", "equivalence"),          # Table 2: 86.9 against 86.9
    ("t2-ACL", "BERT", "rte", "difference"),            # 69.8 against 69.7
    ("t2-CE+SCL", "BERT", "sst2", "equivalence"),       # 90.5 against 90.6: a loss
])
def test_the_claim_on_each_task_follows_the_papers_own_number(cid, family, task, kind):
    c = next(c for c in claims.book_claims() if c.id == cid)
    backbone = "roberta-base" if family == "RoBERTa" else "minilm"
    assert claims._kind_on(c, backbone, task) == kind


def test_table2_says_where_its_own_steps_do_not_lose():
    rows = paper.numbers()["table2"]["rows"]
    ties_or_losses = sum(a <= b for r1, r2 in zip(rows, rows[1:]) for a, b in zip(r1["scores"], r2["scores"]))
    assert ties_or_losses == 3  # MRPC's first step, RTE's fourth, SST-2's fifth
    text = next(c for c in claims.book_claims() if c.id == "t1-vs-CE").paper_says
    assert "than CE on 5, than CE+SCL on 6, than both on 4 of 7" in text  # counted by hand from Table 1


def test_power_never_turns_an_effect_against_the_claim_into_a_gain():
    """ACL-BERT-6L trails HeadPrune on SST-2 in the paper (90.8 against 91.0): a "beats" row there is
    powered for the smallest effect of interest, not for |-0.2|; an equivalence row for its distance
    from the margin."""
    by_id = {c.id: c for c in claims.book_claims()}
    hp = by_id["t1-headprune"]
    assert hp.paper_effect("BERT", "sst2") == pytest.approx(-0.2)
    assert claims.effect_of_interest(hp, "difference", "minilm", "sst2") == claims.SMALLEST_EFFECT
    eq = by_id["t1-vs-CE"]
    assert claims.effect_of_interest(eq, "equivalence", "minilm", "sst2") == pytest.approx(claims.MARGIN_POINTS - 0.1)
    ni = by_id["p-atleast-CE"]  # at least as high: a paper loss powers for the margin alone, a gain adds to it
    assert claims.effect_of_interest(ni, "noninferiority", "minilm", "sst2") == pytest.approx(claims.MARGIN_POINTS)
    assert claims.effect_of_interest(ni, "noninferiority", "minilm", "rte") == pytest.approx(claims.MARGIN_POINTS + 0.9)


def test_power_against_the_noncentral_t_and_a_simulation():
    """A one-sided paired t-test at level 0.0125 against the margin of 1 point when the truth is on
    the SST-2 side (the paper's number is a loss: power for the margin alone), sd 1.2: the power is
    the noncentral t's tail, and the seeds needed the first n that reaches 80%."""
    c = next(c for c in claims.book_claims() if c.id == "p-atleast-CE")
    power, need = claims.row_power(c, "noninferiority", "minilm", "sst2", sd=1.2, n=8, level=0.0125)

    def by_hand(n):
        df = n - 1
        return st.nct.sf(st.t.ppf(1 - 0.0125, df), df, np.sqrt(n) * 1 / 1.2)
    assert power == pytest.approx(by_hand(8), rel=1e-6)
    assert by_hand(need) >= 0.8 > by_hand(need - 1)
    # and the rate at which the t-test itself rejects, by simulation (4000 builds of 8 seeds)
    d = np.random.default_rng(0).normal(1.0, 1.2, size=(4000, 8))  # 1 point above the margin
    t = d.mean(1) / (d.std(1, ddof=1) / np.sqrt(8))
    assert np.mean(t > st.t.ppf(1 - 0.0125, 7)) == pytest.approx(power, abs=3 * np.sqrt(power * (1 - power) / 4000))


def test_a_clear_win_is_supported_and_holm_runs_over_the_fixed_family():
    table = _judge(table1=_table1(3.0, 0.3))
    win = _row(table, "t1-vs-CE")  # RTE: the paper shows a gain, so "beats"
    assert win.kind == "difference" and win.verdict == stats.SUPPORTED
    assert _row(table, "p-atleast-CE").verdict == stats.SUPPORTED
    # MRPC has no rows: its rows stay in the family with p = 1, so the family's size is fixed
    assert _row(table, "p-atleast-CE", "mrpc").verdict == claims.NOT_RUN
    for family in table.family.unique():
        fam = table[(table.family == family) & table.p.notna()]
        p = np.sort(fam.p.values)
        assert fam["p (Holm)"].min() == pytest.approx(min(1.0, p[0] * len(p)))  # the smallest p times the family's size
    primary = table[table.family == claims.FAMILIES["primary"]]
    assert len(primary) == 8 and primary.p.notna().all()  # 4 claims x 2 tasks, all counted
    assert _row(table, "t1-tinybert", "").verdict == stats.NOT_TESTABLE and np.isnan(_row(table, "t1-tinybert", "").p)
    assert win["leave-one-seed-out agreement"] == 1.0 and not win.fragile


def test_a_loss_is_contradicted():
    table = _judge(table1=_table1(-3.0, 0.3))
    assert _row(table, "t1-vs-CE").verdict == stats.CONTRADICTED
    assert _row(table, "p-atleast-CE").verdict == stats.CONTRADICTED  # 3 points below a 1-point margin


def test_no_spread_gives_the_sign_tests_p_not_zero():
    """ACL exactly 3 points above CE on each of 8 seeds: the t statistic is undefined, and the row's
    p is the exact sign test's 0.5^8 (one-sided, non-inferiority) or 2 x 0.5^8 (two-sided)."""
    t = _table1(0.0, 0.0)
    ce = t[t.row == "CE"].set_index("seed")["score"]
    t.loc[t.row == "ACL", "score"] = ce.loc[t[t.row == "ACL"].seed].values + 3.0
    table = _judge(table1=t)
    assert _row(table, "p-atleast-CE").p == pytest.approx(0.5 ** 8)
    assert _row(table, "t1-vs-CE").p == pytest.approx(2 * 0.5 ** 8)
    assert "sign test" in _row(table, "t1-vs-CE").ours
    assert (table.p.dropna() > 0).all()


def test_a_model_below_the_majority_class_stays_in_the_family_with_p_one():
    table = _judge(table1=_table1(3.0, 0.3, ce_level=49.0))  # CE at 49 against a majority of 50
    row = _row(table, "t1-vs-CE")
    assert row.verdict == claims.DIDNT_LEARN and "CE" in row.note
    assert row.p == 1.0 and row["p (Holm)"] == 1.0


def _layers(gains, seeds=8, noise=0.3, seed=0, methods=("2ST-MHA", "2ST-MHA+KD", "2ST-linear", "JT")):
    """ACL's exits 1-6 at 80 + e + gains[e - 1] over every baseline at 80 + e (JT: exits 1-4 at the majority)."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(1, seeds + 1):
        for e in range(1, 7):
            rows.append({"method": "ACL", "backbone": "tiny", "task": "rte", "seed": s, "exit": e,
                         "score": 80 + e + gains[e - 1] + rng.normal(0, noise)})
            for m in methods:
                level = 50.5 if m == "JT" and e <= 4 else 80 + e
                rows.append({"method": m, "backbone": "tiny", "task": "rte", "seed": s, "exit": e, "score": level + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def test_layer_curve_claims_check_every_exit_and_count_the_exits():
    table = _judge(layer_scores=_layers([2, 2, 2, 2, 0, 0]))
    assert _row(table, "p-exits-2ST-MHA").verdict == stats.SUPPORTED
    most = _row(table, "lc-most-2ST-MHA")
    assert most.verdict == stats.SUPPORTED and "shown higher on 4" in most.ours
    jt = _row(table, "lc-JT")
    assert jt.verdict == claims.DIDNT_LEARN and "JT exit 1" in jt.note and jt.family == claims.FAMILIES["exploratory"]
    # three exits up are not "most" of six
    assert _row(_judge(layer_scores=_layers([2, 2, 2, 0, 0, 0])), "lc-most-2ST-MHA").verdict != stats.SUPPORTED


def test_the_shallow_deep_comparison_leaves_out_the_last_exit():
    """A gain on the last exit alone (stage 1's model) must not count for the deep half: shallow
    exits 1-2, deep 3-5; gains 1 on 1-2, 1 on 3-5 and 10 on exit 6 give no shallow-deep difference."""
    table = _judge(layer_scores=_layers([1, 1, 1, 1, 1, 10], noise=0.2))
    row = _row(table, "lc-shallow")
    assert abs(row.estimate) < 0.3 and row.verdict != stats.SUPPORTED


def test_fragile_when_one_seed_decides():
    """ACL - CE of +2 on five seeds and -6 on the sixth: inconclusive on all six, clearly supported
    without the sixth, so one of the six leave-one-seed-out re-runs of the family disagrees."""
    t = _table1(0.0, 0.01, seeds=6, seed=1)
    acl = t.row == "ACL"
    ce = t[t.row == "CE"].set_index("seed")["score"]
    t.loc[acl, "score"] = [ce[s] + d for s, d in zip(t.seed[acl], [2.0, 2.1, 1.9, 2.05, 1.95, -6.0])]
    row = _row(_judge(table1=t), "t1-vs-CE")
    assert row.verdict in (stats.INCONCLUSIVE, claims.UNDERPOWERED)
    assert row["leave-one-seed-out agreement"] == pytest.approx(5 / 6) and row.fragile


def _lambda_rows(scl_slope, acl_slope=0.0, noise=0.05, seeds=5, seed=0):
    rng = np.random.default_rng(seed)
    lams = [0.005, 0.01, 0.02, 0.1, 0.5, 1.0]
    rows = []
    for s in range(1, seeds + 1):
        base = 80 + rng.normal(0, 1)
        for i, lam in enumerate(lams):
            for m, slope in (("ACL", acl_slope), ("CE+SCL", scl_slope)):
                rows.append({"reading": "additive", "method": m, "task": "rte", "lambda": lam, "seed": s,
                             "cross-layer average": base - slope * (i - 2) + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def test_lambda_claims():
    table = _judge(table3=_lambda_rows(scl_slope=1.0))
    for tag in ("all", "no1"):
        assert _row(table, f"t3-acl-flat-{tag}").verdict == stats.SUPPORTED
        assert _row(table, f"t3-scl-sensitive-{tag}").verdict == stats.SUPPORTED
        assert _row(table, f"t3-less-{tag}").verdict == stats.SUPPORTED
    assert _row(table, "pilot-small-lambda").verdict == stats.SUPPORTED  # CE+SCL falls with λ here
    # equally sensitive, opposite slopes: "less sensitive" must not follow
    table = _judge(table3=_lambda_rows(scl_slope=1.0, acl_slope=-1.0))
    assert _row(table, "t3-less-all").verdict != stats.SUPPORTED
    # every λ within the margin: CE+SCL "sensitive" is contradicted
    table = _judge(table3=_lambda_rows(scl_slope=0.0, noise=0.02, seeds=8))
    assert _row(table, "t3-scl-sensitive-all").verdict == stats.CONTRADICTED


def test_stability_is_a_two_sided_paired_variance_test():
    rng = np.random.default_rng(3)
    rows = []
    for s in range(1, 9):
        common = rng.normal(0, 1)
        rows += [{"task": "rte", "method": "CE", "seed": s, "score": 80 + common + rng.normal(0, 0.5)},
                 {"task": "rte", "method": "CE+SCL", "seed": s, "score": 80 + common + rng.normal(0, 2.0)}]
    d = pd.DataFrame(rows)
    row = _row(_judge(pilot_scores=d), "pilot-stability")
    a, b = (d[d.method == m].score.values for m in ("CE+SCL", "CE"))
    # Pitman-Morgan by hand: the correlation of (a + b, a - b), its t on n - 2 degrees of freedom, two-sided
    rho = np.corrcoef(a + b, a - b)[0, 1]
    t = rho * np.sqrt(len(a) - 2) / np.sqrt(1 - rho ** 2)
    assert row.p == pytest.approx(2 * st.t.sf(abs(t), len(a) - 2))


def _angles(inside_share, batches, seeds=5, methods=("CE", "CE+SCL"), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for m in methods:
        for s in range(1, seeds + 1):
            k = int(round(inside_share * batches))
            for i in range(batches):
                rows.append({"task": "rte", "method": m, "aux": "scl" if m != "ACL-Embed" else "acl-embed", "seed": s, "batch": i,
                             "angle": 90 + rng.uniform(-10, 10) if i < k else 130.0})
    return pd.DataFrame(rows)


def test_the_band_is_judged_on_each_models_counts_of_batches():
    """Every batch inside on 5 seeds of 10 batches: 0.9^10 = 0.35 per model, no claim can rest on
    that (a t-test of the per-seed shares, all 1, gave p 0); 60 batches each: 0.9^60."""
    table = _judge(fixed_model_angles=_angles(1.0, 10))
    row = _row(table, "pilot-band-CE")
    assert row.p == pytest.approx(0.9 ** 10) and row.verdict != stats.SUPPORTED
    assert _row(_judge(fixed_model_angles=_angles(1.0, 60)), "pilot-band-CE").p == pytest.approx(0.9 ** 60)
    assert _row(_judge(fixed_model_angles=_angles(0.5, 60)), "pilot-band-CE").verdict == stats.CONTRADICTED


def test_the_share_over_90_degrees_and_acl_embeds_alignment():
    log = pd.DataFrame([{"task": "rte", "seed": s, "step": i, "angle": 95.0 if i % 5 == 0 else 80.0}
                        for s in range(1, 6) for i in range(400)])  # 20% over 90 degrees on every seed
    assert _row(_judge(acl_embed_angles=log), "pilot-share").verdict == stats.SUPPORTED
    # CE+SCL: 40-60% of 40 batches over 90 degrees on seed 1-8 (by seed); ACL-Embed: none
    scl = _angles(1.0, 40, seeds=8, methods=("CE+SCL",))
    scl["angle"] = np.where(scl.batch < 16 + scl.seed, 100.0, 80.0)
    angles = pd.concat([scl, _angles(1.0, 40, seeds=8, methods=("ACL-Embed",)).assign(angle=80.0)])
    row = _row(_judge(fixed_model_angles=angles), "embed-aligns")
    assert row.estimate == pytest.approx(-np.mean([(16 + s) / 40 for s in range(1, 9)]))
    assert row.verdict == stats.SUPPORTED


def test_early_exit_tradeoffs_by_hand():
    """Seed 1: best full model 80 (ACL); target 79. ACL reaches 79.5 at half the FLOPs (2x); the
    baseline's full model scores 78 and never reaches 79 (0x). Common FLOPs range: from 0.5 (the
    larger of the methods' smallest fractions) to 1."""
    sweep = pd.DataFrame([
        {"method": "ACL", "seed": 1, "rule": "none", "threshold": np.nan, "score": 80.0, "flops_fraction": 1.0},
        {"method": "ACL", "seed": 1, "rule": "entropy", "threshold": 0.1, "score": 79.5, "flops_fraction": 0.5},
        {"method": "ACL", "seed": 1, "rule": "entropy", "threshold": 0.3, "score": 70.0, "flops_fraction": 0.3},
        {"method": "B", "seed": 1, "rule": "none", "threshold": np.nan, "score": 78.0, "flops_fraction": 1.0},
        {"method": "B", "seed": 1, "rule": "entropy", "threshold": 0.1, "score": 77.0, "flops_fraction": 0.5},
    ])
    out = claims.early_exit_tradeoffs(sweep, points=3).set_index("method")  # f in {0.5, 0.75, 1}
    assert out.loc["ACL", "FLOPs speed-up at the common target"] == pytest.approx(2.0)
    assert out.loc["B", "FLOPs speed-up at the common target"] == 0.0
    assert out.loc["ACL", "mean best score over the common FLOPs range"] == pytest.approx((79.5 + 79.5 + 80.0) / 3)
    assert out.loc["B", "mean best score over the common FLOPs range"] == pytest.approx((77.0 + 77.0 + 78.0) / 3)


def test_label_alignment_by_hand():
    reps = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = np.array([0, 0, 1, 1])
    aligned = claim_tables.label_alignment(reps, labels, np.array([[1.0, 0.0], [0.0, 1.0]]))
    swapped = claim_tables.label_alignment(reps, labels, np.array([[0.0, 1.0], [1.0, 0.0]]))
    # by hand: the unit vectors of class 0 are (1, 0) and (0.99388, 0.11043); their mean, normalised,
    # is (0.99847, 0.05530): cosine 0.99847 to its own label embedding, 0.05530 to the other's
    # (class 1 is the mirror image), so own minus nearest other is 0.94317
    assert aligned == pytest.approx(0.94317, abs=1e-5) and swapped == pytest.approx(-aligned)


def _few_shot(gain_small, gain_full, acl_minus_scl, seeds_small=10, seeds_full=8, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for size, label, gain, n in ((20, "smallest", gain_small, seeds_small), (100, "100", gain_small, seeds_small),
                                 (800, "full", gain_full, seeds_full)):
        for s in range(1, n + 1):
            ce = 70 + rng.normal(0, 3)
            for m, v in (("CE", ce), ("CE+SCL", ce + gain + rng.normal(0, noise)),
                         ("ACL", ce + gain + acl_minus_scl + rng.normal(0, noise))):
                rows.append({"backbone": "tiny", "task": "rte", "method": m, "size": size, "size_label": label,
                             "regime": "full" if label == "full" else "few-shot", "seed": s, "score": v})
    return pd.DataFrame(rows)


def test_few_shot_claims_pair_gains_by_seed_and_split_by_size():
    df = _few_shot(gain_small=4.0, gain_full=0.0, acl_minus_scl=0.0)
    table = _judge(few_shot=df)
    scarce = _row(table, "fs-scl-scarce")
    w = df.pivot_table(index=["size_label", "seed"], columns="method", values="score")
    gain = w["CE+SCL"] - w["CE"]
    ref = st.ttest_rel(gain.loc["smallest"].loc[1:8].values, gain.loc["full"].values)
    assert scarce.p == pytest.approx(ref.pvalue) and scarce.seeds == 8
    assert scarce.verdict == stats.SUPPORTED and scarce.family == claims.FAMILIES["exploratory"]
    atleast = table[table.id == "fs-acl-atleast-scl"]
    assert sorted(atleast.task) == ["rte, size 100", "rte, size 20"]
    assert (atleast.seeds == 10).all()


def test_replicability_counts_the_tasks_where_an_effect_holds():
    t = pd.concat([_table1(3.0, 0.3, tasks=("rte",)), _table1(0.0, 0.3, tasks=("mrpc",), seed=5)])
    table = _judge(table1=t)
    rep = claims.replicability(table).set_index("claim")
    row = rep.loc[next(c.text for c in claims.book_claims() if c.id == "t1-vs-CE+SCL")]
    assert row["tasks tested"] == 2 and row["tasks where it holds (5% error)"] == 1


def test_the_tables_keep_their_declared_columns():
    with pytest.raises(ValueError, match="table1"):
        claim_tables.from_frames(PROFILE, {"table1": pd.DataFrame({"row": ["CE"]})})


def test_lambda_rows_get_prospective_power():
    """Issue #24: λ rows never had power. 'Not sensitive' is powered at the paper's worst λ (0.2
    from λ = 0.02 for ACL) inside the margin, every λ's TOST at once; 'sensitive' at the paper's
    worst λ for CE+SCL (0.7) beyond it, at level / 5; 'less sensitive' at the paper's sd difference."""
    by_id = {c.id: c for c in claims.book_claims()}
    flat, sens, less = by_id["t3-acl-flat-all"], by_id["t3-scl-sensitive-all"], by_id["t3-less-all"]
    assert claims.effect_of_interest(flat, "lambda-flat", None, "sst2") == pytest.approx(0.3)
    assert claims.effect_of_interest(sens, "lambda-effect", None, "sst2") == pytest.approx(0.2)
    # the paper's Table 3 (SST-2): ACL 69.7 69.8 69.8 69.7 69.7 69.6 (sd 0.0753), CE+SCL 69.1 69.3
    # 69.3 69.0 68.8 68.6 (sd 0.2787): the difference of the sds, by hand
    assert claims.effect_of_interest(less, "lambda-less", None, "sst2") == pytest.approx(0.2034, abs=1e-4)
    # "not sensitive": every λ's TOST (margin 0.5) at once, each with its true difference 0.2 from
    # λ = 0.02, sd 0.2, 8 seeds, level 0.01. The reported power is a lower bound (Bonferroni over 5
    # λ): a simulation of independent λs must reach it
    p_flat, _ = claims.row_power(flat, "lambda-flat", None, "sst2", sd=0.2, n=8, level=0.01)
    rng = np.random.default_rng(2)
    d = rng.normal(0.2, 0.2, size=(4000, 5, 8))
    m, se = d.mean(2), d.std(2, ddof=1) / np.sqrt(8)
    c = st.t.ppf(0.99, 7)
    all_pass = np.mean(((m - c * se > -0.5) & (m + c * se < 0.5)).all(1))
    assert 0.0 < p_flat <= all_pass + 3 * np.sqrt(all_pass * (1 - all_pass) / 4000)
    # "sensitive": the paper's worst λ for CE+SCL, 0.2 beyond the margin, sd 0.3, one-sided at 0.01 / 5:
    # the noncentral t by hand
    p_sens, _ = claims.row_power(sens, "lambda-effect", None, "sst2", sd=0.3, n=8, level=0.01)
    assert p_sens == pytest.approx(st.nct.sf(st.t.ppf(1 - 0.002, 7), 7, np.sqrt(8) * 0.2 / 0.3), rel=1e-6)


def test_each_row_names_the_runs_it_rests_on():
    t = _table1(3.0, 0.3, tasks=("rte", "mrpc"))
    t["run"] = [f"{r.split()[0]}-{task}-{s}" for r, task, s in zip(t.row, t.task, t.seed)]
    table = _judge(table1=t)
    row = _row(table, "p-atleast-CE", "rte")
    assert set(row["run hashes"].split()) == {f"{r}-rte-{s}" for r in ("CE", "ACL") for s in range(1, 9)}
    (ledger_row,) = [r for r in claims.ledger(table) if r["claim"] == "p-atleast-CE" and r["task"] == "rte"]
    assert sorted(ledger_row["runs"]) == sorted(row["run hashes"].split()) and ledger_row["verdict"] == row.verdict


def test_every_gate_stage_is_scored():
    """claim_tables scores each stage of config.GATE_STAGES (the two dicts are kept apart by the layers:
    config cannot import analysis); a stage added to one and not the other fails here, not in a build."""
    from acllib.config import GATE_STAGES
    assert set(claim_tables.GATE_SCORES) == set(GATE_STAGES)
