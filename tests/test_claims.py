"""The claims table on synthetic chapter results with known answers: kinds, the learned rule, Holm,
power labels, robustness and the lambda tests."""
import numpy as np
import pandas as pd
import pytest

from acllib import claims, stats

KINDS = {"difference", "noninferiority", "equivalence", "variance", "band", "lambda-flat", "lambda-effect",
         "lambda-less", "not_testable"}


def test_claims_are_data_with_a_kind_and_a_margin_where_needed():
    cs = claims.book_claims()
    assert len({c.id for c in cs}) == len(cs)
    for c in cs:
        assert c.kind in KINDS, c.id
        if c.kind in ("noninferiority", "equivalence", "band", "lambda-flat"):
            assert c.margin is not None and c.margin_why, c.id
    ee = [c for c in cs if c.chapter == "07_early_exit"]
    assert ee and all(c.b == "2ST-MHA" for c in ee)  # the baseline is fixed beforehand


@pytest.fixture
def book(tmp_path, monkeypatch):
    monkeypatch.setenv("ACL_CACHE", str(tmp_path))
    root = tmp_path / "book" / "smoke"

    def write(chapter, name, df):
        (root / chapter).mkdir(parents=True, exist_ok=True)
        df.to_csv(root / chapter / name, index=False)

    write("03_layer_curves", "majority.csv", pd.DataFrame({"task": ["sst2"], "majority": [50.0]}))
    return write


def _table1(acl_minus_ce, noise, seeds=8, ce_level=80.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(1, seeds + 1):
        ce = ce_level + rng.normal(0, 1)
        for row, v in (("CE", ce), ("CE+SCL", ce + rng.normal(0, 1)), ("ACL", ce + acl_minus_ce + rng.normal(0, noise)),
                       ("direct 3 layers (as BERT-6L)", 70 + rng.normal(0, 1)),
                       ("ACL-CL exit 3 (as ACL-BERT-6L)", 70 + rng.normal(0, 1))):
            rows.append({"row": row, "task": "sst2", "seed": s, "score": v})
    return pd.DataFrame(rows)


def _row(table, cid):
    r = table[table.id == cid]
    assert len(r) == 1, cid
    return r.iloc[0]


def test_a_clear_win_is_supported_and_holm_adjusts_over_the_family(book):
    book("02_table1", "per_seed.csv", _table1(3.0, 0.3))
    table, missing = claims.judge("smoke")
    assert missing  # the other chapters have not run
    win = _row(table, "t1-beats-CE")
    assert win.verdict == stats.SUPPORTED and win["verdict without correction"] == stats.SUPPORTED
    tested = table[~table.verdict.isin([stats.NOT_TESTABLE, claims.DIDNT_LEARN])]
    # Holm by hand: the smallest raw p is multiplied by the number of tested rows
    p = np.sort(tested.p.values)
    assert tested["p (Holm)"].min() == pytest.approx(min(1.0, p[0] * len(p)))
    assert _row(table, "t1-tinybert").verdict == stats.NOT_TESTABLE
    assert _row(table, "t1-atleast-CE").verdict == stats.SUPPORTED  # 3 points up is at least as high
    assert win["leave-one-seed-out agreement"] == 1.0 and not win.fragile


def test_a_loss_is_contradicted_and_no_difference_is_inconclusive_or_underpowered(book):
    book("02_table1", "per_seed.csv", _table1(-3.0, 0.3))
    table, _ = claims.judge("smoke")
    assert _row(table, "t1-beats-CE").verdict == stats.CONTRADICTED
    assert _row(table, "t1-atleast-CE").verdict == stats.CONTRADICTED  # 3 points below a 1-point margin
    book("02_table1", "per_seed.csv", _table1(0.0, 2.0, seed=3))
    table, _ = claims.judge("smoke")
    # the paper's SST-2 effect (BERT ACL - CE = -0.1) is far below what 8 noisy seeds detect
    row = _row(table, "t1-beats-CE")
    assert row.verdict == claims.UNDERPOWERED
    assert row["detectable at 80% power"] > abs(row["paper effect"])
    assert row["seeds for the paper's effect"] > 8


def test_a_model_below_the_majority_class_makes_the_comparison_inconclusive(book):
    t = _table1(3.0, 0.3, ce_level=49.0)  # CE at 49 against a majority of 50
    book("02_table1", "per_seed.csv", t)
    table, _ = claims.judge("smoke")
    row = _row(table, "t1-beats-CE")
    assert row.verdict == claims.DIDNT_LEARN and "CE" in row["learned check"]
    assert np.isnan(row["p (Holm)"])  # left out of the family


def test_layer_curve_claims_check_every_exit(book):
    rows = []
    rng = np.random.default_rng(0)
    for s in range(1, 9):
        for e in range(1, 7):
            rows.append({"method": "ACL", "task": "sst2", "seed": s, "exit": e, "score": 80 + e + rng.normal(0, 0.3)})
            rows.append({"method": "2ST-MHA", "task": "sst2", "seed": s, "exit": e, "score": 78 + e + rng.normal(0, 0.3)})
            rows.append({"method": "JT", "task": "sst2", "seed": s, "exit": e,  # exits 1-4 at the majority class
                         "score": (50.5 if e <= 4 else 85.0) + rng.normal(0, 0.3)})
    book("03_layer_curves", "layer_scores.csv", pd.DataFrame(rows))
    table, _ = claims.judge("smoke")
    assert _row(table, "lc-2ST-MHA").verdict == stats.SUPPORTED
    jt = _row(table, "lc-JT")
    assert jt.verdict == claims.DIDNT_LEARN and "JT exit 1" in jt["learned check"]


def test_fragile_when_one_seed_decides(book):
    """ACL - CE of +2 on five seeds and -6 on the sixth: inconclusive on all six, clearly supported
    without the sixth, so one of the six leave-one-seed-out subsets disagrees."""
    t = _table1(0.0, 0.01, seeds=6, seed=1)
    acl = t.row == "ACL"
    ce = t[t.row == "CE"].set_index("seed")["score"]
    t.loc[acl, "score"] = [ce[s] + d for s, d in zip(t.seed[acl], [2.0, 2.1, 1.9, 2.05, 1.95, -6.0])]
    book("02_table1", "per_seed.csv", t)
    table, _ = claims.judge("smoke")
    row = _row(table, "t1-beats-CE")
    assert row.verdict in (stats.INCONCLUSIVE, claims.UNDERPOWERED)
    assert row["leave-one-seed-out agreement"] == pytest.approx(5 / 6) and row.fragile


def _lambda_rows(scl_effect, acl_noise=0.05, seeds=5, with_one_collapse=False):
    rng = np.random.default_rng(0)
    lams = [0.005, 0.01, 0.02, 0.1, 0.5, 1.0]
    rows = []
    for s in range(1, seeds + 1):
        base = 80 + rng.normal(0, 1)
        for i, lam in enumerate(lams):
            rows.append({"reading": "additive", "method": "ACL", "task": "sst2", "lambda": lam, "seed": s,
                         "cross-layer average": base + rng.normal(0, acl_noise), "min exit": 70})
            scl = base - scl_effect * i + rng.normal(0, acl_noise)
            if with_one_collapse and lam == 1.0:
                scl = 50.0
            rows.append({"reading": "additive", "method": "CE+SCL", "task": "sst2", "lambda": lam, "seed": s,
                         "cross-layer average": scl, "min exit": 70})
    return pd.DataFrame(rows)


def test_lambda_claims_test_the_effect_of_lambda_against_seed_noise(book):
    book("05_table3", "per_seed.csv", _lambda_rows(scl_effect=1.0))
    table, _ = claims.judge("smoke")
    for tag in ("all", "no1"):
        assert _row(table, f"t3-acl-flat-{tag}").verdict == stats.SUPPORTED
        assert _row(table, f"t3-scl-sensitive-{tag}").verdict == stats.SUPPORTED
        assert _row(table, f"t3-less-{tag}").verdict == stats.SUPPORTED
    book("05_table3", "per_seed.csv", _lambda_rows(scl_effect=0.0, acl_noise=0.05))
    table, _ = claims.judge("smoke")
    assert _row(table, "t3-scl-sensitive-all").verdict != stats.SUPPORTED
    assert _row(table, "t3-less-all").verdict != stats.SUPPORTED


def test_lambda_collapse_at_one_alone_drives_only_the_rows_that_keep_it(book):
    book("05_table3", "per_seed.csv", _lambda_rows(scl_effect=0.0, with_one_collapse=True))
    table, _ = claims.judge("smoke")
    assert _row(table, "t3-scl-sensitive-all").verdict == stats.SUPPORTED
    assert _row(table, "t3-scl-sensitive-no1").verdict != stats.SUPPORTED
    assert "CE+SCL λ=1" in _row(table, "t3-scl-sensitive-all")["learned check"]


def test_pilot_share_is_an_equivalence_and_the_band_a_share_of_batches(book):
    rng = np.random.default_rng(0)
    angles = pd.DataFrame([{"task": "sst2", "method": m, "seed": s, "angle": a}
                           for m in ("CE", "CE+SCL") for s in range(1, 6) for a in rng.normal(90, 3, 40)])
    book("01_pilot", "fixed_model_angles.csv", angles)
    log = pd.DataFrame([{"task": "sst2", "seed": s, "step": i, "angle": 95.0 if i % 5 == 0 else 80.0}
                        for s in range(1, 6) for i in range(100 + s)])  # 20-21% over 90 degrees
    book("01_pilot", "acl_embed_training_angles.csv", log)
    table, _ = claims.judge("smoke")
    assert _row(table, "pilot-band-CE").verdict == stats.SUPPORTED  # ~100% of N(90, 3) inside 75-105
    assert _row(table, "pilot-share").verdict == stats.SUPPORTED


def test_exploratory_comparisons_form_their_own_holm_family(book):
    t = _table1(3.0, 0.3)
    rng = np.random.default_rng(7)
    half = t[t.row == "ACL-CL exit 3 (as ACL-BERT-6L)"].set_index("seed")["score"]
    extra = [{"row": row, "task": "sst2", "seed": s, "score": half[s] - d + rng.normal(0, 0.3)}
             for row, d in (("head pruning (as HeadPrune)", 5.0), ("BERT-of-Theseus 3 layers", 0.5)) for s in half.index]
    book("02_table1", "per_seed.csv", pd.concat([t, pd.DataFrame(extra)]))
    table, _ = claims.judge("smoke")
    assert set(table[table.family == "exploratory (ours)"].id) == {"t1-headprune", "t1-theseus"}
    for family in table.family.unique():  # Holm by hand within each family: the smallest p times its size
        tested = table[(table.family == family) & table.p.notna()]
        p = np.sort(tested.p.values)
        assert tested["p (Holm)"].min() == pytest.approx(min(1.0, p[0] * len(p)))
    assert _row(table, "t1-headprune").verdict == stats.SUPPORTED
    paper_only = claims.counts(table)
    assert sum(paper_only.values()) == (table.family == "the paper's claims").sum()
    assert sum(claims.counts(table, exploratory=True).values()) == 2


def _few_shot(gain_small, gain_full, acl_minus_scl, seeds_small=10, seeds_full=8, noise=1.0, seed=0):
    """The few-shot chapter's per_seed.csv: CE, CE+SCL, ACL at sizes 20, 100 and the full 800."""
    rng = np.random.default_rng(seed)
    rows = []
    for size, label, gain, n in ((20, "smallest", gain_small, seeds_small), (100, "100", gain_small, seeds_small),
                                 (800, "full", gain_full, seeds_full)):
        for s in range(1, n + 1):
            ce = 70 + rng.normal(0, 3)
            for m, v in (("CE", ce), ("CE+SCL", ce + gain + rng.normal(0, noise)),
                         ("ACL", ce + gain + acl_minus_scl + rng.normal(0, noise))):
                rows.append({"task": "sst2", "method": m, "size": size, "size_label": label,
                             "regime": "full" if label == "full" else "few-shot", "seed": s, "score": v})
    return pd.DataFrame(rows)


def test_few_shot_claims_pair_gains_by_seed_and_split_by_size(book):
    from scipy import stats as st
    df = _few_shot(gain_small=4.0, gain_full=0.0, acl_minus_scl=0.0)
    book("08_few_shot", "per_seed.csv", df)
    book("08_few_shot", "majority.csv", pd.DataFrame({"task": ["sst2"], "majority": [50.0]}))
    table, _ = claims.judge("smoke")
    scarce = _row(table, "fs-scl-scarce")
    # by hand: CE+SCL - CE per seed at 20 minus the same at the full size, over the seeds both have (1-8)
    w = df.pivot_table(index=["size_label", "seed"], columns="method", values="score")
    gain = (w["CE+SCL"] - w["CE"])
    ref = st.ttest_rel(gain.loc["smallest"].loc[1:8].values, gain.loc["full"].values)
    assert scarce.p == pytest.approx(ref.pvalue) and scarce.seeds == 8
    assert scarce.verdict == stats.SUPPORTED and scarce.family == "exploratory (ours)"
    atleast = table[table.id == "fs-acl-atleast-scl"]
    assert sorted(atleast.task) == ["sst2, size 100", "sst2, size 20"]  # one row per few-shot size, not the full
    assert (atleast.seeds == 10).all()
    assert (atleast["p (Holm)"] >= atleast.p).all()


def test_a_few_shot_gain_of_models_that_did_not_learn_is_not_judged(book):
    df = _few_shot(gain_small=4.0, gain_full=0.0, acl_minus_scl=0.0)
    df.loc[df.size_label == "smallest", "score"] -= 25  # CE at ~45 against a majority of 50
    book("08_few_shot", "per_seed.csv", df)
    book("08_few_shot", "majority.csv", pd.DataFrame({"task": ["sst2"], "majority": [50.0]}))
    row = _row(claims.judge("smoke")[0], "fs-scl-scarce")
    assert row.verdict == claims.DIDNT_LEARN and "CE at smallest" in row["learned check"]
