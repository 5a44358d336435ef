"""The paper's claims as data, and the one rule that judges them all.

Each `Claim` names what it compares (the chapter file, the rows, the pairing unit), its kind and
direction, and for an equivalence its margin. `judge(profile)` reads the chapters' per-seed results
under data_cache/book/<profile>/, tests every claim per task, and gives the paper's claims one
family-wise error rate (Holm, `stats.family_verdicts`); comparisons of ours that the paper's text
does not make (`exploratory`) form a Holm family of their own. Beside each verdict: the smallest
effect the seeds could detect with 80% power, the paper's own effect and the seeds it would need, and the
share of leave-one-seed-out subsets that keep the verdict.

Kinds:
  difference      "A beats B": paired t-test of A - B over seeds (two-sided, expected sign); with
                  `gain_of`, "a method's gain is larger at A than at B" (the gains paired by seed)
  noninferiority  "A is at least as high as B": one-sided tests against -margin
  equivalence     "comparable", "about x": TOST against +-margin
  variance        "A is less stable than B": F test of the seed variances
  lambda-flat     "insensitive to lambda": every lambda's TOST against the default lambda (an
                  intersection-union test, valid at alpha without correction)
  lambda-effect   "sensitive to lambda": repeated-measures ANOVA of the score over lambda
  lambda-less     "less sensitive than": the method x lambda interaction (two-way RM ANOVA)
  not_testable    what no run here can test (weights that do not load offline)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from . import paper, stats, store
from .config import TABLE2_ROWS

ALPHA = stats.ALPHA
DIDNT_LEARN = "inconclusive: a compared model did not learn"
UNDERPOWERED = "underpowered"
MARGIN_POINTS = 1.0  # "comparable" / "at least as high": 1 point of the task's metric (see Claim.margin_why)
LAMBDA_MARGIN = 0.5  # the paper calls a 0.7-point range over lambda sensitive and 0.2 insensitive
SHARE_MARGIN = 0.10  # "around 20%" of batches: within 10 percentage points
BAND_SHARE = 0.90    # "the angles range from 75 to 105 degrees": at least 90% of batches inside


@dataclass(frozen=True)
class Claim:
    id: str
    text: str                 # as the paper makes it
    chapter: str              # the chapter's results folder under data_cache/book/<profile>/
    kind: str
    paper_says: str
    a: str = ""               # rows compared: a against b
    b: str = ""
    source: str = "per_seed.csv"
    key: str = "method"       # the column naming the rows
    value: str = "score"
    expected_sign: int = 1
    margin: float | None = None
    margin_why: str = ""
    paper_effect: Callable[[str], float] | None = None  # task -> the paper's own a - b, where it gives one
    filter: dict = field(default_factory=dict)          # column -> value, applied before pairing
    learned_check: str = "mean"  # mean: both rows' means clear the majority; exits: every exit does; none
    # a comparison of ours that the paper's text does not make (read off its tables): judged in a
    # Holm family of its own, so it neither dilutes nor borrows the paper's claims' error control
    exploratory: bool = False
    # a difference of gains: a and b name two values of `key` (e.g. two training-set sizes), and
    # what is compared per seed is gain_of[0] - gain_of[1] (two values of `method`) at a against at b
    gain_of: tuple[str, str] | None = None
    per: str = ""             # a column whose every value is a case of its own (e.g. the training-set size)


def _t1(model, method="-"):
    return lambda task: paper.table1(model, method).get("mnli_m" if task == "mnli" else task, np.nan)


def _t1_diff(a, b):
    return lambda task: _t1(*a)(task) - _t1(*b)(task)


def _t2_diff(a, b):
    return lambda task: paper.table2(a).get(task, np.nan) - paper.table2(b).get(task, np.nan)


def book_claims() -> list[Claim]:
    """Every claim the book judges, in the order of the paper."""
    P = paper.numbers()
    lo, hi = P["pilot"]["angle_range_deg"]
    share = P["acl_grad"]["share_over_90"]
    t1_margin = (f"{MARGIN_POINTS:g} point: the paper calls ACL 'comparable' where it trails by up to 0.3 "
                 "(Table 1), a margin no study of this size can establish; 1 point is the conventional choice")
    claims = []
    for model in ("CE", "CE+SCL"):
        claims.append(Claim(f"pilot-band-{model}", f"SCL/CE gradient angles of the fixed {model} model lie between {lo}° and {hi}°",
                            "01_pilot", "band", f"{lo}°–{hi}° (Fig. 2)", a=model, source="fixed_model_angles.csv",
                            margin=BAND_SHARE, margin_why=f"'range from {lo}° to {hi}°' read as at least {BAND_SHARE:.0%} of batches",
                            learned_check="none"))
    claims.append(Claim("pilot-stability", "CE+SCL is less stable over seeds than CE", "01_pilot", "variance",
                        f"std {P['pilot']['ce+scl']['std']} vs {P['pilot']['ce']['std']} (RTE)", a="CE+SCL", b="CE"))
    claims.append(Claim("pilot-share", f"about {share:.0%} of ACL-Embed batches have an ACL/CE angle over 90°", "01_pilot",
                        "equivalence", f"about {share:.0%} (sec. 4.3)", source="acl_embed_training_angles.csv", margin=SHARE_MARGIN,
                        margin_why=f"'around {share:.0%}' read as within ±{SHARE_MARGIN:.0%}", learned_check="none"))
    for base in ("CE", "CE+SCL"):
        claims.append(Claim(f"t1-beats-{base}", f"ACL beats {base} in full fine-tuning", "02_table1", "difference",
                            "higher on 5 of 7 GLUE tasks (Table 1, BERT)", a="ACL", b=base, key="row",
                            paper_effect=_t1_diff(("BERT", "ACL"), ("BERT", base))))
        claims.append(Claim(f"t1-atleast-{base}", f"ACL scores at least as high as {base} (outperforms or is comparable)",
                            "02_table1", "noninferiority", "abstract, takeaway (a)", a="ACL", b=base, key="row",
                            margin=MARGIN_POINTS, margin_why=t1_margin,
                            paper_effect=_t1_diff(("BERT", "ACL"), ("BERT", base))))
    claims.append(Claim("t1-half", "ACL-CL's half-depth exit beats the directly fine-tuned half model (ACL-BERT-6L > BERT-6L)",
                        "02_table1", "difference", "higher on 7 of 7 tasks (Table 1)", a="ACL-CL exit", b="direct", key="row",
                        paper_effect=_t1_diff(("ACL-BERT-6L", "ACL-CL"), ("BERT-6L", "-"))))
    acl6 = paper.table1("ACL-BERT-6L", "ACL-CL")
    for cid, row, label in (("t1-headprune", "HeadPrune", "head pruning"), ("t1-theseus", "BERT-of-Theseus", "BERT-of-Theseus")):
        quoted = paper.table1(row)
        cols = P["table1"]["columns"]
        higher = sum(acl6[c] > quoted[c] for c in cols)
        claims.append(Claim(cid, f"ACL-CL's half-depth exit beats {label} at equal or lower FLOPs", "02_table1", "difference",
                            f"not claimed in the text; in Table 1 ACL-BERT-6L ({acl6['flops_g']}G) is higher than {row} "
                            f"({quoted['flops_g']}G) on {higher} of {len(cols)} columns", a="ACL-CL exit", b=label, key="row",
                            paper_effect=_t1_diff(("ACL-BERT-6L", "ACL-CL"), (row, "-")), exploratory=True))
    claims.append(Claim("t1-tinybert", "ACL-RoBERTa-6L matches or beats TinyBERT", "02_table1", "not_testable",
                        "at least as high on 5 of 7 columns (Table 1)", a="no RoBERTa or TinyBERT weights load offline"))
    for base in ("JT", "JT-MHA", "ALT", "ALT-MHA", "2ST-linear", "2ST-MHA", "2ST-MHA+KD"):
        claims.append(Claim(f"lc-{base}", f"ACL's exits beat {base}'s (mean over exits)", "03_layer_curves", "difference",
                            "on most layers (Fig. 3-5)", a="ACL", b=base, source="layer_scores.csv", learned_check="exits"))
    claims.append(Claim("lc-mha", "MHA exits beat linear exits in 2ST (mean over exits)", "03_layer_curves", "difference",
                        "significantly (sec. 5.5)", a="2ST-MHA", b="2ST-linear", source="layer_scores.csv", learned_check="exits"))
    claims.append(Claim("lc-shallow", "ACL's gain over 2ST-MHA+KD is larger on the shallow half of the exits than on the deep half",
                        "03_layer_curves", "difference", "margins larger on shallow exits (sec. 5.5)", a="ACL", b="2ST-MHA+KD",
                        source="layer_scores.csv", learned_check="exits"))
    rows = list(TABLE2_ROWS)
    for a_row, b_row in zip(rows, rows[1:]):
        claims.append(Claim(f"t2-{a_row}", f"Ablation: '{a_row}' beats '{b_row}' (each component helps)", "04_table2",
                            "difference", "every step loses a little (Table 2)", a=a_row, b=b_row, key="row",
                            value="cross-layer average", paper_effect=_t2_diff(a_row, b_row)))
    t3 = P["table3"]
    for with_one in (True, False):
        suffix = "" if with_one else ", λ = 1 left out"
        tag = "all" if with_one else "no1"
        claims.append(Claim(f"t3-acl-flat-{tag}", f"ACL is not sensitive to λ{suffix}", "05_table3", "lambda-flat",
                            f"range {max(t3['acl']) - min(t3['acl']):.1f} over λ (Table 3, RTE)", a="ACL",
                            value="cross-layer average", margin=LAMBDA_MARGIN,
                            margin_why=f"{LAMBDA_MARGIN} point of every λ from λ = 0.02: the paper calls a 0.7-point range sensitive, 0.2 insensitive",
                            filter={"reading": "additive", "with_one": with_one}))
        claims.append(Claim(f"t3-scl-sensitive-{tag}", f"CE+SCL is sensitive to λ{suffix}", "05_table3", "lambda-effect",
                            f"range {max(t3['ce+scl']) - min(t3['ce+scl']):.1f} over λ (Table 3, RTE)", a="CE+SCL",
                            value="cross-layer average", filter={"reading": "additive", "with_one": with_one}))
        claims.append(Claim(f"t3-less-{tag}", f"ACL is less sensitive to λ than CE+SCL{suffix}", "05_table3", "lambda-less",
                            "see Table 3", a="ACL", b="CE+SCL", value="cross-layer average",
                            filter={"reading": "additive", "with_one": with_one}))
    # Beyond the paper (issue #13): the few-shot regime, where SCL is said to help most. Ours, so exploratory.
    claims.append(Claim("fs-scl-scarce", "CE+SCL's gain over CE is larger at the smallest training set than at the full one",
                        "08_few_shot", "difference", "Gunel et al. (ICLR 2021): SCL helps most in few-shot settings "
                        "(their claim; their numbers are not quoted here)", a="smallest", b="full", key="size_label",
                        gain_of=("CE+SCL", "CE"), exploratory=True))
    claims.append(Claim("fs-acl-atleast-scl", "ACL scores at least as high as CE+SCL in the few-shot regime", "08_few_shot",
                        "noninferiority", "not tested by the paper (full training sets only)", a="ACL", b="CE+SCL",
                        margin=MARGIN_POINTS, margin_why=t1_margin, filter={"regime": "few-shot"}, per="size", exploratory=True))
    claims.append(Claim("tsne-exit", "ACL's 3rd exit beats CE+SCL's", "06_tsne", "difference",
                        f"{P['tsne']['acl']} vs {P['tsne']['ce+scl']} on MRPC (sec. 5.7)", a="ACL", b="CE+SCL",
                        paper_effect=lambda task: P["tsne"]["acl"] - P["tsne"]["ce+scl"] if task == "mrpc" else np.nan))
    for col, what in (("FLOPs speed-up within 1 pt", "FLOPs speed-up within 1 point of its full model"),
                      ("best score at ≤ 50% FLOPs", "best dev score at ≤ 50% of its full model's FLOPs")):
        claims.append(Claim(f"ee-{col[:4]}", f"ACL gives better quality-speed trade-offs than 2ST-MHA: {what}", "07_early_exit",
                            "difference", "better quality-speed trade-offs (abstract), not measured in the paper",
                            a="ACL", b="2ST-MHA", source="tradeoff_per_seed.csv", value=col, learned_check="none"))
    return claims


# ------------------------------------------------------------------------------------- data
def _majority(profile: str, task: str, chapter: str = "") -> float:
    """The eval split's majority-class score: the claim's own chapter's, else another's (the chapters
    write it; the few-shot chapter evaluates QNLI and MNLI on a held-out half), else from the labels."""
    for source in dict.fromkeys(c for c in (chapter, "03_layer_curves", "01_pilot", "08_few_shot") if c):
        path = store.cache_dir("book", profile, source) / "majority.csv"
        if path.exists():
            m = pd.read_csv(path)
            if task in set(m.task):
                return float(m.set_index("task").loc[task, "majority"])
    from . import train
    from .config import make_config
    from .data import get_task
    from .models import load_tokenizer
    cfg = make_config(profile, task)
    dev = next(iter(train.load_task_data(cfg, load_tokenizer(cfg.backbone)).evals.values()))
    return train.majority_score(task, dev.labels.numpy())[get_task(task).metrics[0]]


def _rows(df: pd.DataFrame, key: str, name: str) -> pd.DataFrame:
    """Rows named `name`; a prefix match for Table 1's labels that carry the depth ('direct 3 layers')."""
    exact = df[df[key] == name]
    return exact if len(exact) else df[df[key].astype(str).str.startswith(name)]


@dataclass
class Case:
    """One claim on one task: a function from the seeds kept to the test dict of stats."""
    claim: Claim
    task: str
    seeds: list
    test: Callable[[list], dict]
    estimate: Callable[[list], str]
    learned: bool = True
    learned_note: str = ""
    sd: float = np.nan  # of the paired differences, for power


def _paired_arrays(df, c: Claim, task):
    x = _rows(df, c.key, c.a).set_index("seed")[c.value].dropna()
    y = _rows(df, c.key, c.b).set_index("seed")[c.value].dropna()
    seeds = sorted(set(x.index) & set(y.index))
    return seeds, x, y


def _fmt_diff(r, unit=" pts"):
    if np.isnan(r.get("lo", np.nan)):
        return f"{r['diff']:+.2f}{unit} (n={r['n']})"
    return f"{r['diff']:+.2f}{unit} [{r['lo']:+.2f}, {r['hi']:+.2f}]"


def _case_paired(c: Claim, df: pd.DataFrame, task: str) -> Case:
    seeds, x, y = _paired_arrays(df, c, task)

    def arrays(keep):
        return x.loc[keep].values, y.loc[keep].values

    def test(keep):
        a, b = arrays(keep)
        if c.kind == "difference":
            return {"kind": "difference", "expected_sign": c.expected_sign, **stats.difference_test(a, b)}
        if c.kind == "noninferiority":
            return {"kind": "noninferiority", **stats.noninferiority_test(a, b, c.margin)}
        return {"kind": "equivalence", **stats.equivalence_test(a, b, c.margin)}

    unit = "×" if "speed-up" in c.value else " pts"

    def estimate(keep):
        r = test(keep)
        if c.kind == "difference":
            return _fmt_diff(r, unit)
        return f"{r['diff']:+.2f} pts, 90% [{r['lo90']:+.2f}, {r['hi90']:+.2f}] (margin {c.margin:g})"

    a, b = arrays(seeds)
    return Case(c, task, seeds, test, estimate, sd=float(np.std(a - b, ddof=1)) if len(seeds) > 1 else np.nan)


def _gain_case(c: Claim, df: pd.DataFrame, task: str, majority: float) -> Case:
    """gain_of[0] - gain_of[1] per seed at key == a against at key == b, paired by seed number. The
    two gains of one seed come from unrelated runs, so the pairing removes no variance, but their
    differences are still independent draws, and the paired t-test of them a valid test."""
    up, base = c.gain_of
    def gain(at):
        d = df[df[c.key].astype(str) == str(at)].pivot_table(index="seed", columns="method", values=c.value)
        return (d[up] - d[base]).dropna() if {up, base} <= set(d.columns) else pd.Series(dtype=float)
    frame = pd.concat([pd.DataFrame({"seed": g.index, c.value: g.values, c.key: at}) for at in (c.a, c.b) for g in [gain(at)]],
                      ignore_index=True)
    case = _case_paired(c, frame, task)
    means = df.groupby([c.key, "method"])[c.value].mean()
    bad = [f"{m} at {at} {means.get((at, m), np.nan):.1f}" for at in (c.a, c.b) for m in (up, base)
           if not stats.learned(means.get((at, m), np.nan), majority)]
    if bad:
        case.learned = False
        case.learned_note = f"below majority ({majority:.1f}) + {stats.LEARNED_MARGIN:g}: " + ", ".join(bad)
    return case


def _exit_means(df: pd.DataFrame, method: str) -> pd.Series:
    return df[df.method == method].groupby("exit")["score"].mean()


def _layer_case(c: Claim, df: pd.DataFrame, task: str, majority: float) -> Case:
    d = df[df.task == task]
    per_seed = d.groupby(["method", "seed"])["score"].mean().rename("score").reset_index()
    if c.id == "lc-shallow":  # the shallow-half gain minus the deep-half gain, per seed
        depth = d.exit.max()
        m = d.pivot_table(index=["seed", "exit"], columns="method", values="score")
        gain = (m[c.a] - m[c.b]).rename("gain").reset_index()
        gain["half"] = np.where(gain.exit <= depth // 2, "shallow", "deep")
        g = gain.groupby(["seed", "half"])["gain"].mean().unstack()
        per_seed = pd.concat([pd.DataFrame({"method": c.a, "seed": g.index, "score": g["shallow"].values}),
                              pd.DataFrame({"method": c.b, "seed": g.index, "score": g["deep"].values})])
    case = _case_paired(c, per_seed, task)
    bad = [f"{name} exit {e} ({v:.1f})" for name in (c.a, c.b) for e, v in _exit_means(d, name).items()
           if not stats.learned(v, majority)]
    if bad:
        case.learned = False
        case.learned_note = f"below majority ({majority:.1f}) + {stats.LEARNED_MARGIN:g}: " + ", ".join(bad[:4]) + (" …" if len(bad) > 4 else "")
    return case


def _variance_case(c: Claim, df: pd.DataFrame, task: str, majority: float) -> Case:
    seeds = sorted(set(df[df.method == c.a].seed) & set(df[df.method == c.b].seed))
    x, y = (df[df.method == m].set_index("seed")["score"] for m in (c.a, c.b))

    def test(keep):  # runs of one seed share its batch order and initialisation: paired variances
        r = stats.paired_variance_test(x.loc[keep].values, y.loc[keep].values)
        return {"kind": "noninferiority", "diff": r["ratio"], **r}

    def estimate(keep):
        a, b = x.loc[keep].values, y.loc[keep].values
        return f"std {a.std(ddof=1):.2f} vs {b.std(ddof=1):.2f} (variance ratio {test(keep)['diff']:.2f}, Pitman-Morgan)"

    case = Case(c, task, seeds, test, estimate)
    means = {m: df[df.method == m]["score"].mean() for m in (c.a, c.b)}
    bad = [f"{m} {v:.1f}" for m, v in means.items() if not stats.learned(v, majority)]
    if bad:
        case.learned, case.learned_note = False, f"below majority ({majority:.1f}) + {stats.LEARNED_MARGIN:g}: " + ", ".join(bad)
    return case


def _band_case(c: Claim, df: pd.DataFrame, task: str, lo: float, hi: float) -> Case:
    d = df[df.method == c.a]
    share = d.assign(inside=(d.angle >= lo) & (d.angle <= hi)).groupby("seed")["inside"].mean()
    seeds = sorted(share.index)

    def test(keep):
        s = share.loc[keep].values  # "at least margin": a share of exactly the margin counts (to rounding)
        return {"kind": "noninferiority", **stats.noninferiority_test(s, np.full_like(s, c.margin - 1e-9), 0.0)}

    def estimate(keep):
        mean, l, h = stats.clustered_share_interval(share.loc[keep].values)
        return f"{mean:.0%} of batches inside [{max(l, 0):.0%}, {min(h, 1):.0%}] (needs ≥ {c.margin:.0%})"

    return Case(c, task, seeds, test, estimate)


def _share_case(c: Claim, df: pd.DataFrame, task: str, target: float) -> Case:
    share = df.assign(over=df.angle > 90).groupby("seed")["over"].mean()
    seeds = sorted(share.index)

    def test(keep):
        s = share.loc[keep].values
        return {"kind": "equivalence", **stats.equivalence_test(s, np.full_like(s, target), c.margin)}

    def estimate(keep):
        r = test(keep)
        return f"{r['diff'] + target:.0%}, 90% [{max(r['lo90'] + target, 0):.0%}, {min(r['hi90'] + target, 1):.0%}]"

    s = share.values
    return Case(c, task, seeds, test, estimate, sd=float(s.std(ddof=1)) if len(s) > 1 else np.nan)


def _lambda_tables(c: Claim, df: pd.DataFrame, method: str):
    d = df[(df.method == method) & (df.reading == c.filter["reading"])]
    if not c.filter["with_one"]:
        d = d[d["lambda"] != 1.0]
    return d.pivot_table(index="seed", columns="lambda", values=c.value)


def _lambda_case(c: Claim, df: pd.DataFrame, task: str, majority: float) -> Case:
    d = df[df.task == task]
    tables = {m: _lambda_tables(c, d, m) for m in {c.a, c.b} - {""}}
    seeds = sorted(set.intersection(*(set(t.dropna().index) for t in tables.values())))

    def flat(t):
        others = [lam for lam in t.columns if lam != 0.02]
        if 0.02 not in t.columns or not others:
            return {"kind": "equivalence", "p_equiv": np.nan, "p_nonequiv": np.nan, "worst": np.nan}
        tests = [stats.equivalence_test(t[lam].values, t[0.02].values, LAMBDA_MARGIN) for lam in others]
        return {"kind": "equivalence", "p_equiv": max(r["p_equiv"] for r in tests),  # intersection-union
                "p_nonequiv": min(1.0, len(tests) * min(r["p_nonequiv"] for r in tests)),  # Bonferroni over λ
                "worst": max(abs(r["diff"]) for r in tests)}

    def test(keep):
        if c.kind == "lambda-flat":
            return flat(tables[c.a].loc[keep])
        if c.kind == "lambda-effect":  # contradicted when every λ is shown within the margin of λ = 0.02
            r = stats.repeated_measures_effect(tables[c.a].loc[keep].values)
            return {"kind": "noninferiority", **r, "p_support": r["p"], "p_contradict": flat(tables[c.a].loc[keep])["p_equiv"]}
        a, b = tables[c.a].loc[keep].values, tables[c.b].loc[keep].values
        r = stats.interaction_effect(a, b)
        less = a.mean(0).var() < b.mean(0).var()  # ACL's λ means vary less than CE+SCL's
        return {"kind": "noninferiority", "p_support": r["p"] if less else 1.0, "p_contradict": 1.0 if less else r["p"], **r}

    def estimate(keep):
        r = test(keep)
        if c.kind == "lambda-flat":
            return f"largest |λ-mean − λ=0.02 mean| {r.get('worst', np.nan):.2f} pts (margin {c.margin:g})"
        if c.kind == "lambda-effect":
            return f"F = {r['F']:.2f} ({r['df_num']:.0f}, {r['df_den']:.0f}); range of λ means {r['range_of_means']:.2f} pts"
        rng = {m: tables[m].loc[keep].mean(0) for m in (c.a, c.b)}
        return (f"interaction F = {r['F']:.2f}; ranges of λ means {c.a} {np.ptp(rng[c.a]):.2f}, "
                f"{c.b} {np.ptp(rng[c.b]):.2f} pts")

    case = Case(c, task, seeds, test, estimate)
    bad = [f"{m} λ={lam:g} ({v:.1f})" for m, t in tables.items() for lam, v in t.mean().items()
           if not stats.learned(v, majority)]
    if bad:  # a λ at which the method did not learn is itself a sensitivity to λ, not a reason to abstain
        case.learned_note = "not learned at " + ", ".join(bad)
    return case


def _cases(profile: str, claims: list[Claim]) -> tuple[list[Case], list[dict]]:
    book = store.cache_dir("book", profile)
    lo, hi = paper.numbers()["pilot"]["angle_range_deg"]
    cases, missing = [], []
    for c in claims:
        if c.kind == "not_testable":
            cases.append(Case(c, "", [], lambda keep: {"kind": "not_testable"}, lambda keep: c.a))
            continue
        path = book / c.chapter / c.source
        if not path.exists():
            missing.append({"claim": c.text, "chapter": c.chapter})
            continue
        df = pd.read_csv(path)
        for column, value in c.filter.items():  # filters naming a column select rows (others are the case's own)
            if column in df:
                df = df[df[column] == value]
        if "task" not in df:  # the early-exit chapter runs on one task
            from .config import get_profile
            df["task"] = get_profile(profile).chapter("early_exit", "tasks")[0]
        # one case per task, or per (backbone, task) where a chapter ran several backbones (paper profile)
        several = "backbone" in df and df.backbone.nunique() > 1
        panels = sorted(set(zip(df.backbone, df.task))) if several else [(None, t) for t in sorted(df.task.unique())]
        if c.per:  # one case per value of the column too: (backbone, task, value)
            panels = [(b, t, v) for b, t in panels
                      for v in sorted(df[(df.task == t) & ((df.backbone == b) if several else True)][c.per].unique())]
        for backbone, task, *value in panels:
            d = df[(df.task == task) & ((df.backbone == backbone) if several else True)]
            if value:
                d = d[d[c.per] == value[0]]
            names = [n for n in (c.a, c.b) if n] if c.kind not in ("band", "equivalence") or c.chapter != "01_pilot" else []
            if c.key in d and any(_rows(d, c.key, n).empty for n in names):
                missing.append({"claim": c.text, "chapter": c.chapter, "task": task})
                continue
            majority = _majority(profile, task, c.chapter) if c.learned_check != "none" else np.nan
            if c.gain_of:
                case = _gain_case(c, d, task, majority)
            elif c.kind in ("difference", "noninferiority", "equivalence") and c.chapter == "03_layer_curves":
                case = _layer_case(c, d, task, majority)
            elif c.kind == "band":
                case = _band_case(c, d, task, lo, hi)
            elif c.kind == "equivalence" and c.chapter == "01_pilot":
                case = _share_case(c, d, task, paper.numbers()["acl_grad"]["share_over_90"])
            elif c.kind == "variance":
                case = _variance_case(c, d, task, majority)
            elif c.kind.startswith("lambda"):
                case = _lambda_case(c, d, task, majority)
            else:
                case = _case_paired(c, d, task)
                if c.learned_check == "mean":
                    means = {n: _rows(d, c.key, n)[c.value].mean() for n in (c.a, c.b)}
                    bad = [f"{n} {v:.1f}" for n, v in means.items() if not stats.learned(v, majority)]
                    if bad:
                        case.learned = False
                        case.learned_note = f"below majority ({majority:.1f}) + {stats.LEARNED_MARGIN:g}: " + ", ".join(bad)
            if several:
                case.task = f"{task} [{backbone}]"
            if value:
                case.task = f"{case.task}, {c.per} {value[0]}"
            cases.append(case)
    return cases, missing


def _power(case: Case, n: int, level: float = ALPHA) -> dict:
    c = case.claim
    effect = c.paper_effect(case.task.split(" [")[0].split(",")[0]) if c.paper_effect else np.nan  # "rte [roberta-base]": rte
    out = {"paper effect": effect, "detectable at 80% power": np.nan, "seeds for the paper's effect": np.nan}
    if np.isnan(case.sd) or n < 2:
        return out
    if c.kind == "difference":
        out["detectable at 80% power"] = stats.min_detectable_effect(case.sd, n, level)
        if not np.isnan(effect):
            out["seeds for the paper's effect"] = stats.pairs_needed(effect, case.sd, level)
    elif c.kind == "equivalence":
        out["detectable at 80% power"] = stats.min_equivalence_margin(case.sd, n, level)  # the smallest margin TOST could establish
    elif c.kind == "noninferiority":
        out["detectable at 80% power"] = stats.min_detectable_effect(case.sd, n, level, alternative="larger")
        if not np.isnan(effect):
            out["seeds for the paper's effect"] = stats.pairs_needed(effect + c.margin, case.sd, level, alternative="larger")
    return out


def _underpowered(case: Case, power: dict) -> bool:
    c, mde = case.claim, power["detectable at 80% power"]
    if np.isnan(mde):
        return False
    if c.kind == "difference":
        effect = power["paper effect"]
        return not np.isnan(effect) and abs(effect) < mde
    if c.kind == "equivalence":
        return c.margin < mde
    if c.kind == "noninferiority":
        effect = power["paper effect"]
        return (c.margin + (effect if not np.isnan(effect) else 0.0)) < mde
    return False


def judge(profile: str, claims: list[Claim] | None = None, alpha: float = ALPHA) -> tuple[pd.DataFrame, list[dict]]:
    """The claims table of a built book: one row per claim and task, verdicts under Holm's
    correction over the tested rows of their family (the paper's claims; our exploratory ones).
    Returns (table, claims whose chapter has not run)."""
    claims = book_claims() if claims is None else claims
    cases, missing = _cases(profile, claims)
    tests = [case.test(case.seeds) if case.learned else {"kind": "not_testable"} for case in cases]
    verdicts, family_size = [None] * len(tests), [1] * len(tests)
    for exploratory in (False, True):  # two Holm families: the paper's claims, and our own comparisons
        idx = [i for i, case in enumerate(cases) if case.claim.exploratory == exploratory]
        fam = stats.family_verdicts([tests[i] for i in idx], alpha)
        size = max(1, sum(not np.isnan(v["p"]) for v in fam))
        for i, v in zip(idx, fam):
            verdicts[i], family_size[i] = v, size
    alone = [stats.family_verdicts([t], alpha)[0]["verdict"] for t in tests]  # each row at alpha, uncorrected
    rows = []
    for case, t, v, uncorrected, m in zip(cases, tests, verdicts, alone, family_size):
        c = case.claim
        verdict = v["verdict"]
        # power at the row's Holm level (the family size for rows left out), as its verdict is taken
        power = _power(case, len(case.seeds), alpha / (v["holm_multiplier"] if not np.isnan(v["holm_multiplier"]) else m))
        if c.kind != "not_testable" and not case.learned:
            verdict = DIDNT_LEARN
        elif verdict == stats.INCONCLUSIVE and _underpowered(case, power):
            verdict = UNDERPOWERED
        factor = v["holm_factor"]

        level = alpha / v["holm_multiplier"] if not np.isnan(v["holm_multiplier"]) else np.nan

        def loso_judge(keep, level=level, case=case):  # the row's own Holm level, uncapped
            return stats.family_verdicts([case.test(keep)], alpha=level)[0]["verdict"]

        stable = np.nan
        if case.learned and c.kind != "not_testable" and len(case.seeds) >= 3 and not np.isnan(level):
            full = loso_judge(case.seeds)
            stable = float(np.mean([loso_judge([s for s in case.seeds if s != drop]) == full for drop in case.seeds]))
        rows.append({
            "id": c.id, "claim": c.text, "task": case.task, "chapter": c.chapter, "kind": c.kind,
            "family": "exploratory (ours)" if c.exploratory else "the paper's claims",
            "paper": c.paper_says, "ours": case.estimate(case.seeds) if c.kind != "not_testable" else c.a,
            "seeds": len(case.seeds), "p": v["p"], "p (Holm)": v["p_adj"], "verdict": verdict,
            "verdict without correction": uncorrected if case.learned or c.kind == "not_testable" else DIDNT_LEARN,
            "margin": c.margin, "margin basis": c.margin_why, **power,
            "leave-one-seed-out agreement": stable, "fragile": bool(stable < 1.0) if not np.isnan(stable) else False,
            "learned check": case.learned_note,
        })
    return pd.DataFrame(rows), missing


def counts(table: pd.DataFrame, column: str = "verdict", exploratory: bool = False) -> dict[str, int]:
    """Verdict tallies of one family: the paper's claims (default) or our exploratory comparisons."""
    fam = table["family"] == ("exploratory (ours)" if exploratory else "the paper's claims")
    return table.loc[fam, column].value_counts().to_dict()
