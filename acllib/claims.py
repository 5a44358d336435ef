"""The paper's claims as data, the rules that judge them, and the claims table.

Each `Claim` names the claims table it reads (acllib.claim_tables), the rows it compares and how
seeds pair them, its kind, and where it needs one its margin. `judge(profile)` builds the tables
from the run cache (or takes them), makes one row per claim and panel (task, or backbone and task)
that the profile's plan covers, and judges each family with Holm's step-down:

  primary      the abstract's two takeaways, a few rows fixed here with the reason for each
               (PRIMARY_WHY); the landing page leads with them, and the profile's seeds are sized
               for them by a prospective power analysis (`power_plan`)
  secondary    the rest of the paper's claims
  exploratory  comparisons of ours that the paper's text does not make

Families are fixed before any run: every row of the plan stays in its family, and a row that
cannot be tested (runs missing, a compared model that did not learn) counts with p = 1.

Kinds:
  difference      "A beats B": paired two-sided t-test of A - B over seeds (sign test if the
                  differences have no spread); on tasks where the paper's own number shows a tie
                  or a loss, a `per_task_kind` claim becomes an equivalence ("comparable")
  noninferiority  "A is at least as high as B": one-sided tests against -margin
  equivalence     "comparable", "about x": TOST against +-margin
  variance        "A is less stable than B": Pitman-Morgan test of paired variances, two-sided
  band            "the angles lie in [lo, hi]": on every seed's model, the share of batches inside
                  is above the margin (exact binomial, intersection-union over seeds)
  share           "in about x% of batches": every seed's share within +-margin of x (same)
  most            "on most of the exits": partial conjunction over the exits' one-sided tests
  lambda-flat     "insensitive to lambda": every lambda's TOST against lambda = 0.02 (an
                  intersection-union test, valid at alpha without correction)
  lambda-effect   "sensitive to lambda": some lambda outside the margin of lambda = 0.02
                  (Bonferroni over the lambdas); contradicted when every lambda is within it
  lambda-less     "less sensitive than": each seed's sd over lambda, A - B paired by seed
  not_testable    what no run here can test (weights that do not load offline)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np
import pandas as pd

from . import claim_tables, paper, plan, stats, strategies
from .config import GATE_LABELS, GATE_STAGES, TABLE2_ROWS, LAYER_CURVE_METHODS, get_profile, make_config

ALPHA = stats.ALPHA
DIDNT_LEARN = "inconclusive: a compared model did not learn"
NOT_RUN = "not run: its runs are missing from the cache"
UNDERPOWERED = "underpowered"
VERDICT_ORDER = [stats.SUPPORTED, stats.CONTRADICTED, stats.INCONCLUSIVE, UNDERPOWERED, DIDNT_LEARN, NOT_RUN,
                 stats.NOT_TESTABLE]
FAMILIES = {"primary": "primary: the abstract's takeaways", "secondary": "the paper's other claims",
            "exploratory": "exploratory (ours)",
            "gate": "beyond the paper: does ACL-Grad's conflict test matter? (ours)"}
OURS = ("exploratory", "gate")  # the families of claims the paper's text does not make
MARGIN_POINTS = 1.0  # "comparable" / "at least as high": 1 point of the task's metric (see Claim.margin_why)
LAMBDA_MARGIN = 0.5  # the paper calls a 0.7-point range over lambda sensitive and 0.2 insensitive
SHARE_MARGIN = 0.10  # "around 20%" of batches: within 10 percentage points
BAND_SHARE = 0.90    # "the angles range from 75 to 105 degrees": at least 90% of batches inside
ANGLE_MARGIN = 3.0   # "joint optimization does not make SCL more aligned": median angle not lower by more
SMALLEST_EFFECT = 1.0  # where the paper gives no number: the smallest effect worth detecting, in points
POWER = 0.8

RUN_HERE = "run here from our code"
REIMPLEMENTED = "re-implemented from its paper, run here"
QUOTED = "quoted from the paper (not run here)"

PRIMARY_WHY = {
    "p-atleast-CE": "takeaway (a): ACL 'outperforms or performs comparably with CE'; CE is the baseline every "
                    "fine-tuning study needs, run on the same seeds, data and budget",
    "p-atleast-CE+SCL": "takeaway (a) against the paper's own strong baseline, Gunel et al.'s CE+SCL, same budget",
    "p-exits-2ST-MHA": "takeaway (b): ACL-CL 'significantly surpasses the baseline methods' of multi-exit fine-tuning; "
                       "2ST-MHA is the paper's default multi-exit training (sec. 5.3), with the same exits and the same "
                       "exit budget as ACL's",
    "p-exits-2ST-MHA+KD": "takeaway (b) against the strongest baseline of equal budget: 2ST with Hinton's distillation "
                          "(Liu et al.; Table 2's '- 2ST' row)",
}


@dataclass(frozen=True)
class Claim:
    id: str
    text: str                 # as the paper makes it
    chapter: str              # the chapter that shows it (its notebook's name)
    table: str                # the claims table it reads (claim_tables.COLUMNS)
    kind: str
    paper_says: str
    family: str = "secondary"
    a: str = ""               # rows compared: a against b
    b: str = ""
    key: str = "method"       # the column naming the rows
    value: str = "score"
    expected_sign: int = 1
    margin: float | None = None
    margin_why: str = ""
    # (paper family "BERT"/"RoBERTa", task) -> the paper's own a - b, where it gives one
    paper_effect: Callable[[str, str], float] | None = None
    per_task_kind: bool = False  # the kind per task from the paper's number: a gain "beats", else "comparable"
    filter: dict = field(default_factory=dict)  # column -> value, applied before pairing
    learned_check: str = "mean"  # mean: both rows' means clear the majority; exits: every exit does; none
    baseline: str = RUN_HERE     # where the compared baseline comes from
    budget: str = ""             # the compared methods' training budgets, where they differ
    derive: str = ""             # a per-seed statistic computed from the table first (see _derived)
    # a difference of gains: a and b name two values of `key` (e.g. two training-set sizes), and
    # what is compared per seed is gain_of[0] - gain_of[1] (two values of `method`) at a against at b
    gain_of: tuple[str, str] | None = None
    per: str = ""             # a column whose every value is a case of its own (e.g. the training-set size)
    # the planning basis row whose paired sd plans this claim where it has none of its own (a claim
    # added after the basis was recorded), with why that spread is a fair stand-in
    planning_row: str = ""
    not_testable_why: str = ""


def _task_column(task: str) -> str:
    return "mnli_m" if task == "mnli" else task


def _t1_diff(a, b):
    """The paper's Table 1 a - b on a task for the backbone family; a, b: (model, method) with
    "{family}" standing for BERT or RoBERTa."""
    def effect(family, task):
        row = lambda m: paper.table1(m[0].format(family=family), m[1]).get(_task_column(task), np.nan)
        return row(a) - row(b)
    return effect


def _t2_diff(a, b):
    return lambda family, task: paper.table2(a).get(task, np.nan) - paper.table2(b).get(task, np.nan)


def _paper_counts() -> str:
    """On how many of Table 1's seven tasks the paper's BERT ACL is higher than CE, than CE+SCL, than both
    (MNLI counted once, when both its columns are higher)."""
    tasks = paper.numbers()["hyperparameters"]["tasks"]
    row = lambda m: paper.table1("BERT", m)
    def higher(task, *bases):
        cols = ["mnli_m", "mnli_mm"] if task == "mnli" else [task]
        return all(row("ACL")[c] > row(b)[c] for c in cols for b in bases)
    n = {k: sum(higher(t, *bases) for t in tasks) for k, bases in
         (("CE", ("CE",)), ("CE+SCL", ("CE+SCL",)), ("both", ("CE", "CE+SCL")))}
    return (f"the text says 5 of 7; its BERT rows show ACL higher than CE on {n['CE']}, than CE+SCL on "
            f"{n['CE+SCL']}, than both on {n['both']} of {len(tasks)}")


def _exit_budget(method: str) -> str:
    cfg = make_config("cpu", "sst2", **LAYER_CURVE_METHODS[method])
    return f"{method}: {strategies.get(cfg.strategy).exit_budget(cfg)}"


def book_claims() -> list[Claim]:
    """Every claim the book judges, primary first, then in the order of the paper."""
    P = paper.numbers()
    lo, hi = P["pilot"]["angle_range_deg"]
    share = P["acl_grad"]["share_over_90"]
    t3 = P["table3"]
    t1_margin = (f"{MARGIN_POINTS:g} point: the paper calls ACL 'comparable' where it trails by up to 0.3 "
                 "(Table 1), a margin no study of this size can establish; 1 point is the conventional choice")
    claims = []
    # ---- primary: the abstract's two takeaways
    for base in ("CE", "CE+SCL"):
        claims.append(Claim(f"p-atleast-{base}", f"ACL scores at least as high as {base} in full fine-tuning",
                            "02_table1", "table1", "noninferiority", "abstract, takeaway (a): outperforms or performs comparably",
                            family="primary", a="ACL", b=base, key="row", margin=MARGIN_POINTS, margin_why=t1_margin,
                            paper_effect=_t1_diff(("{family}", "ACL"), ("{family}", base))))
    for base in ("2ST-MHA", "2ST-MHA+KD"):
        claims.append(Claim(f"p-exits-{base}", f"ACL-CL's exits beat {base}'s (mean over exits)", "03_layer_curves",
                            "layer_scores", "difference", "abstract, takeaway (b): significantly surpasses the baselines (Fig. 3-5)",
                            family="primary", a="ACL", b=base, learned_check="exits", derive="exit-mean",
                            margin_why=f"no number in the paper (figures only): powered for {SMALLEST_EFFECT:g} point"))
    # ---- sec. 4.1: the pilot
    for model in ("CE", "CE+SCL"):
        claims.append(Claim(f"pilot-band-{model}", f"SCL/CE gradient angles of the fixed {model} model lie between {lo}° and {hi}°",
                            "01_pilot_angles", "fixed_model_angles", "band", f"{lo}°–{hi}° (Fig. 2)", a=model,
                            filter={"aux": "scl"}, margin=BAND_SHARE,
                            margin_why=f"'range from {lo}° to {hi}°' read as at least {BAND_SHARE:.0%} of each model's batches",
                            learned_check="none"))
    claims.append(Claim("pilot-joint", "Joint optimization does not make SCL more aligned with CE (CE+SCL's median "
                        "SCL/CE angle not below CE's)", "01_pilot_angles", "fixed_model_angles", "noninferiority",
                        "'the same observation' for CE+SCL (sec. 4.1)", a="CE+SCL", b="CE", filter={"aux": "scl"},
                        value="angle", derive="median-angle", margin=ANGLE_MARGIN,
                        margin_why=f"{ANGLE_MARGIN:g}°, a tenth of the {hi - lo}° band the paper reads off Fig. 2",
                        learned_check="none"))
    claims.append(Claim("pilot-stability", "CE+SCL is less stable over seeds than CE", "01_pilot_angles", "pilot_scores",
                        "variance", f"std {P['pilot']['ce+scl']['std']} vs {P['pilot']['ce']['std']} (RTE)", a="CE+SCL", b="CE"))
    small, large = (0.01, 0.02), (0.5, 1.0)
    mean_at = lambda lams, key: np.mean([dict(zip(t3["lambdas"], t3[key]))[x] for x in lams])
    claims.append(Claim("pilot-small-lambda", "SCL does better at small λ (0.01, 0.02) than at large λ (0.5, 1)",
                        "05_table3_lambda", "table3", "difference", "sec. 4.1; Table 3: "
                        f"{mean_at(small, 'ce+scl'):.2f} vs {mean_at(large, 'ce+scl'):.2f}", a="small λ", b="large λ",
                        value="cross-layer average", derive="small-large-lambda", filter={"reading": "additive", "method": "CE+SCL"},
                        learned_check="none",
                        paper_effect=lambda family, task: mean_at(small, "ce+scl") - mean_at(large, "ce+scl")))
    claims.append(Claim("pilot-share", f"about {share:.0%} of ACL-Embed batches have an ACL/CE angle over 90°",
                        "01_pilot_angles", "acl_embed_angles", "share", f"about {share:.0%} (sec. 4.3)", margin=SHARE_MARGIN,
                        margin_why=f"'around {share:.0%}' read as within ±{SHARE_MARGIN:.0%} on every seed's run",
                        learned_check="none"))
    claims.append(Claim("embed-aligns", "ACL-Embed aligns the objectives to a certain extent: fewer batches over 90° "
                        "than SCL's (fixed models)", "01_pilot_angles", "fixed_model_angles", "difference",
                        "'to a certain extent' (sec. 4.3)", a="ACL-Embed", b="CE+SCL", value="angle", derive="share-over-90",
                        expected_sign=-1, learned_check="none",
                        margin_why=f"no number in the paper: powered for {SMALLEST_EFFECT * 10:g} percentage points"))
    claims.append(Claim("grad-full", "ACL-Grad helps in full fine-tuning (ACL beats ACL-Embed)", "01_pilot_angles",
                        "table1", "difference", "ACL-Grad 'makes the optimization smoother' (sec. 4.3); no number",
                        a="ACL", b="ACL-Embed", key="row", derive="acl-vs-embed"))
    # ---- sec. 5.4: Table 1
    for base in ("CE", "CE+SCL"):
        claims.append(Claim(f"t1-vs-{base}", f"ACL beats {base} in full fine-tuning where the paper shows a gain, "
                            f"and is comparable where it does not", "02_table1", "table1", "difference",
                            f"sec. 5.4 ({_paper_counts()})", a="ACL", b=base, key="row", margin=MARGIN_POINTS,
                            margin_why=t1_margin, per_task_kind=True,
                            paper_effect=_t1_diff(("{family}", "ACL"), ("{family}", base))))
    claims.append(Claim("t1-roberta", "RoBERTa also benefits from ACL", "02_table1", "table1", "not_testable",
                        "sec. 5.4", not_testable_why="no RoBERTa weights load offline: the profile's Table 1 runs no RoBERTa "
                        "(the paper profile judges the rows above on roberta-base too)"))
    claims.append(Claim("t1-half", "ACL-CL's half-depth exit beats the directly fine-tuned half model (ACL-BERT-6L > BERT-6L)",
                        "02_table1", "table1", "difference", "higher on 7 of 7 tasks (Table 1)", a="ACL-CL exit", b="direct", key="row",
                        paper_effect=_t1_diff(("ACL-{family}-6L", "ACL-CL"), ("{family}-6L", "-"))))
    for row in ("TinyBERT (6L)", "LayerDrop-6L", "DistilBERT (6L)"):
        claims.append(Claim(f"t1-{row.split()[0].split('-')[0].lower()}", f"ACL-RoBERTa-6L outperforms or is comparable with {row}",
                            "02_table1", "table1", "not_testable", "sec. 5.4 (Table 1)", baseline=QUOTED,
                            not_testable_why=f"{row} and RoBERTa weights do not load offline: its number is quoted, not run"))
    acl6 = paper.table1("ACL-BERT-6L", "ACL-CL")
    for cid, row, label in (("t1-headprune", "HeadPrune", "head pruning"), ("t1-theseus", "BERT-of-Theseus", "BERT-of-Theseus")):
        quoted = paper.table1(row)
        cols = P["table1"]["columns"]
        higher = sum(acl6[c] > quoted[c] for c in cols)
        claims.append(Claim(cid, f"ACL-CL's half-depth exit beats {label} at equal or lower FLOPs", "02_table1", "table1", "difference",
                            f"not claimed in the text; in Table 1 ACL-BERT-6L ({acl6['flops_g']}G) is higher than {row} "
                            f"({quoted['flops_g']}G) on {higher} of {len(cols)} columns", family="exploratory",
                            a="ACL-CL exit", b=label, key="row", baseline=REIMPLEMENTED,
                            paper_effect=_t1_diff(("ACL-{family}-6L", "ACL-CL"), (row, "-"))))
    # ---- sec. 5.5: layer curves. The 2ST baselines train their exits as ACL's do; JT's and ALT's exits
    # get other budgets (epochs, lr, clipping) at the cpu profile, so those rows are exploratory.
    for base in ("2ST-linear", "2ST-MHA", "2ST-MHA+KD"):
        claims.append(Claim(f"lc-most-{base}", f"ACL's exits beat {base}'s on most of the exits", "03_layer_curves",
                            "layer_scores", "most", "on most of the layers (sec. 5.5, Fig. 3-5)", a="ACL", b=base,
                            learned_check="exits"))
    claims.append(Claim("lc-2ST-linear", "ACL's exits beat 2ST-linear's (mean over exits)", "03_layer_curves", "layer_scores",
                        "difference", "on most layers (Fig. 3-5)", a="ACL", b="2ST-linear", learned_check="exits", derive="exit-mean"))
    for base in ("JT", "JT-MHA", "ALT", "ALT-MHA"):
        claims.append(Claim(f"lc-{base}", f"ACL's exits beat {base}'s (mean over exits)", "03_layer_curves", "layer_scores",
                            "difference", "on most layers (Fig. 3-5)", family="exploratory", a="ACL", b=base,
                            learned_check="exits", derive="exit-mean", budget=f"{_exit_budget('ACL')}; {_exit_budget(base)}"))
    claims.append(Claim("lc-mha", "MHA exits beat linear exits in 2ST (mean over exits)", "03_layer_curves", "layer_scores",
                        "difference", "significantly (sec. 5.5)", a="2ST-MHA", b="2ST-linear", learned_check="exits", derive="exit-mean"))
    claims.append(Claim("lc-shallow", "ACL's gain over 2ST-MHA+KD is larger on the shallow half of the intermediate exits "
                        "than on the deep half", "03_layer_curves", "layer_scores", "difference",
                        "margins larger on shallow exits (sec. 5.5)", a="shallow", b="deep", learned_check="exits",
                        derive="shallow-deep", filter={"methods": ("ACL", "2ST-MHA+KD")},
                        margin_why="the last exit is left out: it is stage 1's model, so its gain is full fine-tuning's"))
    # ---- sec. 5.6: Table 2
    rows = list(TABLE2_ROWS)
    for a_row, b_row in zip(rows, rows[1:]):
        claims.append(Claim("t2-" + "-".join("".join(ch if ch.isalnum() or ch == "+" else " " for ch in a_row).split()), f"Ablation: '{a_row}' beats '{b_row}' where the paper shows a gain, "
                            "comparable where it does not", "04_table2_ablation", "table2", "difference",
                            "each component is beneficial (sec. 5.6; Table 2 shows a tie or a loss at 3 steps)", a=a_row, b=b_row,
                            key="row", value="cross-layer average", margin=MARGIN_POINTS, margin_why=t1_margin,
                            per_task_kind=True, paper_effect=_t2_diff(a_row, b_row)))
    # ---- sec. 5.8: Table 3
    for with_one in (True, False):
        suffix = "" if with_one else ", λ = 1 left out"
        tag = "all" if with_one else "no1"
        lam_why = f"{LAMBDA_MARGIN} point of every λ from λ = 0.02: the paper calls a 0.7-point range sensitive, 0.2 insensitive"
        f = {"reading": "additive", "with_one": with_one}
        lams = [x for x in t3["lambdas"] if with_one or x != 1.0]
        # the paper's largest |λ mean - λ = 0.02 mean| over the λ tested
        worst = lambda key, lams=lams: max(abs(dict(zip(t3["lambdas"], t3[key]))[x] - dict(zip(t3["lambdas"], t3[key]))[0.02])
                                           for x in lams)
        claims.append(Claim(f"t3-acl-flat-{tag}", f"ACL is not sensitive to λ{suffix}", "05_table3_lambda", "table3", "lambda-flat",
                            f"range {max(t3['acl']) - min(t3['acl']):.1f} over λ (Table 3, RTE)", a="ACL",
                            value="cross-layer average", margin=LAMBDA_MARGIN, margin_why=lam_why, filter=f, learned_check="none",
                            paper_effect=lambda family, task, w=worst("acl"): w))
        claims.append(Claim(f"t3-scl-sensitive-{tag}", f"CE+SCL is sensitive to λ{suffix}", "05_table3_lambda", "table3",
                            "lambda-effect", f"range {max(t3['ce+scl']) - min(t3['ce+scl']):.1f} over λ (Table 3, RTE)", a="CE+SCL",
                            value="cross-layer average", margin=LAMBDA_MARGIN, margin_why=lam_why, filter=f, learned_check="none",
                            paper_effect=lambda family, task, w=worst("ce+scl"): w))
        claims.append(Claim(f"t3-less-{tag}", f"ACL is less sensitive to λ than CE+SCL{suffix} (each seed's sd over λ)",
                            "05_table3_lambda", "table3", "lambda-less",
                            f"sd over λ {np.std(t3['acl'], ddof=1):.2f} vs {np.std(t3['ce+scl'], ddof=1):.2f} (Table 3)",
                            a="ACL", b="CE+SCL", value="cross-layer average", expected_sign=-1, filter=f, learned_check="none",
                            paper_effect=lambda family, task: float(np.std(t3["acl"], ddof=1) - np.std(t3["ce+scl"], ddof=1))))
    # ---- sec. 5.7: the t-SNE's exit
    claims.append(Claim("tsne-exit", "ACL's 3rd exit beats CE+SCL's", "06_tsne", "exit_representations", "difference",
                        f"{P['tsne']['acl']} vs {P['tsne']['ce+scl']} on MRPC (sec. 5.7)", a="ACL", b="CE+SCL",
                        paper_effect=lambda family, task: P["tsne"]["acl"] - P["tsne"]["ce+scl"] if task == "mrpc" else np.nan))
    claims.append(Claim("tsne-discriminative", "ACL's exit representations are more discriminative than CE+SCL's (silhouette)",
                        "06_tsne", "exit_representations", "difference", "'more discriminative representations' (sec. 5.7, Fig. 6)",
                        a="ACL", b="CE+SCL", value="silhouette", learned_check="none",
                        margin_why="no number in the paper (a picture); the silhouette of the dev representations by label, cosine"))
    claims.append(Claim("tsne-aligned", "ACL's label embeddings sit with their own class (closer to its centroid than to any other's)",
                        "06_tsne", "exit_representations", "difference", "'aligned with the samples of the corresponding classes' (sec. 5.7)",
                        a="ACL", b="zero", value="label alignment", derive="against-zero", learned_check="none"))
    # ---- the abstract's quality-speed trade-off: early exiting on the layer curves' models
    for base in ("2ST-MHA", "2ST-MHA+KD"):
        claims.append(Claim(f"ee-target-{base}", f"ACL's early exiting is faster than {base}'s at a common target "
                            "(within 1 point of the seed's best full model)", "07_early_exit", "early_exit", "difference",
                            "better quality-speed trade-offs than the baseline methods (abstract), not measured in the paper",
                            a="ACL", b=base, value="FLOPs speed-up at the common target", derive="ee-target", learned_check="none"))
        claims.append(Claim(f"ee-auc-{base}", f"ACL's quality-FLOPs curve lies above {base}'s (area over a common range)",
                            "07_early_exit", "early_exit", "difference",
                            "better quality-speed trade-offs than the baseline methods (abstract), not measured in the paper",
                            a="ACL", b=base, value="mean best score over the common FLOPs range", derive="ee-auc",
                            learned_check="none"))
    # ---- beyond the paper (issue #13): the few-shot regime, where SCL is said to help most
    claims.append(Claim("fs-scl-scarce", "CE+SCL's gain over CE is larger at the smallest training set than at the full one",
                        "08_few_shot", "few_shot", "difference", "Gunel et al. (ICLR 2021): SCL helps most in few-shot settings "
                        "(their claim; their numbers are not quoted here)", family="exploratory", a="smallest", b="full",
                        key="size_label", gain_of=("CE+SCL", "CE")))
    claims.append(Claim("fs-acl-atleast-scl", "ACL scores at least as high as CE+SCL in the few-shot regime", "08_few_shot",
                        "few_shot", "noninferiority", "not tested by the paper (full training sets only)", family="exploratory",
                        a="ACL", b="CE+SCL", margin=MARGIN_POINTS, margin_why=t1_margin, filter={"regime": "few-shot"}, per="size"))
    # ---- beyond the paper (issue #27): ACL-Grad's rule against a random gate at its own rate and
    # against PCGrad's projection, in both stages it acts in; a family of their own
    # Planned (no basis of their own) by the spread of a comparison of the same kind of runs: full
    # fine-tunes by ACL - CE's (1.66 points at the cpu profile: runs that differ in a few steps
    # diverge as far as runs of different objectives), stage 2 by ACL's exits against 2ST-MHA+KD's
    # (different stage 1s, so at least the spread of stage-2 variants on one).
    plans = {"full fine-tuning": "p-atleast-CE", "stage 2": "p-exits-2ST-MHA+KD"}
    for stage in GATE_STAGES:
        where = "in full fine-tuning" if stage == "full fine-tuning" else "in stage 2 (cross-layer average)"
        tag = "full" if stage == "full fine-tuning" else "stage2"
        claims.append(Claim(f"gate-random-{tag}", f"ACL-Grad's angle test beats a random gate that drops the aux term as often, {where}",
                            "04_table2_ablation", "gate_controls", "difference",
                            "not tested by the paper: Eq. 4 drops the aux term on conflict; is it the conflict test or less aux loss?",
                            family="gate", a=GATE_LABELS["angle"], b=GATE_LABELS["random"], key="gate", filter={"stage": stage},
                            margin_why=f"no number in the paper: powered for {SMALLEST_EFFECT:g} point", planning_row=plans[stage]))
        claims.append(Claim(f"gate-project-{tag}", f"PCGrad's projection scores at least as high as Eq. 4's drop, {where}",
                            "04_table2_ablation", "gate_controls", "noninferiority",
                            "not tested by the paper: gradient surgery (Yu et al. 2020) is the natural alternative to dropping",
                            family="gate", a=GATE_LABELS["project"], b=GATE_LABELS["angle"], key="gate", filter={"stage": stage},
                            margin=MARGIN_POINTS, margin_why=t1_margin, planning_row=plans[stage]))
    return claims


# ------------------------------------------------------------------------------- the panels
@lru_cache(maxsize=64)
def _chapter(profile: str, name: str) -> plan.ChapterPlan:
    return plan.CHAPTERS[name](profile)


def panels(profile: str, c: Claim) -> list[tuple[str | None, str]]:
    """The (backbone, task) panels the profile's plan gives a claim, fixed before any run."""
    chapter = _chapter(profile, "05_table3_lambda" if c.id == "pilot-small-lambda" else c.chapter)
    if c.id == "grad-full":  # ACL (Table 1) against the pilot's ACL-Embed: the tasks both run
        pilot_tasks = _chapter(profile, "01_pilot_angles").tasks
        return [(b, t) for b, t in _chapter(profile, "02_table1").panels if t in pilot_tasks]
    if c.chapter == "01_pilot_angles":
        return [(chapter.backbone, t) for t in chapter.tasks]
    return list(chapter.panels) if c.chapter in ("02_table1", "03_layer_curves", "08_few_shot") else \
        [(chapter.backbone, t) for t in chapter.tasks]


# ------------------------------------------------------------------------------- the cases
@dataclass
class Case:
    """One claim on one panel: a function from the seeds kept to the test dict of stats."""
    claim: Claim
    task: str
    backbone: str | None
    label: str                 # "sst2", or "sst2 [roberta-base]" where a chapter draws several backbones
    kind: str                  # the claim's kind on this task (per_task_kind resolved)
    seeds: list
    test: Callable[[list], dict]
    estimate: Callable[[list], dict]  # {"text", "estimate", "lo", "hi", "unit", "level", _lines()} for the table and the plot
    status: str = ""           # "" (tested), NOT_RUN, DIDNT_LEARN, NOT_TESTABLE
    note: str = ""
    hashes: tuple = ()


def _family_of(backbone: str | None) -> str:
    return plan.paper_family(backbone or "")


def _rows(df: pd.DataFrame, key: str, name: str) -> pd.DataFrame:
    """Rows named `name`; a prefix match for Table 1's labels that carry the depth ('direct 3 layers')."""
    exact = df[df[key] == name]
    return exact if len(exact) else df[df[key].astype(str).str.startswith(name)]


def _derived(c: Claim, d: pd.DataFrame, tables: claim_tables.Tables, backbone, task) -> pd.DataFrame:
    """The claim's per-seed table (key, seed, value) from its claims table's rows of one panel."""
    v = c.value
    if c.derive == "exit-mean":
        return d.groupby([c.key, "seed"])[v].mean().reset_index()
    if c.derive == "shallow-deep":  # per seed: the mean gain over the shallow half minus over the deep half
        a, b = c.filter["methods"]
        last = int(d.exit.max())
        m = d.pivot_table(index=["seed", "exit"], columns="method", values="score")
        if not {a, b} <= set(m.columns):
            return pd.DataFrame(columns=[c.key, "seed", v])
        gain = (m[a] - m[b]).rename("gain").reset_index()
        gain = gain[gain.exit < last]  # the last exit is stage 1's
        gain["half"] = np.where(gain.exit <= (last - 1) // 2, "shallow", "deep")
        g = gain.groupby(["seed", "half"])["gain"].mean().unstack()
        return pd.concat([pd.DataFrame({c.key: half, "seed": g.index, v: g[half].values}) for half in ("shallow", "deep")
                          if half in g])
    if c.derive == "median-angle":
        return d.groupby([c.key, "seed"])["angle"].median().rename(v).reset_index()
    if c.derive == "share-over-90":
        return d.assign(over=d.angle > 90).groupby([c.key, "seed"])["over"].mean().rename(v).reset_index()
    if c.derive == "small-large-lambda":
        at = lambda lams, label: d[d["lambda"].isin(lams)].groupby("seed")[v].mean().rename(v).reset_index().assign(**{c.key: label})
        return pd.concat([at([0.01, 0.02], "small λ"), at([0.5, 1.0], "large λ")])
    if c.derive == "acl-vs-embed":
        acl = d[d.row == "ACL"][["seed", "score"]].assign(row="ACL")
        p = tables["pilot_scores"]
        embed = p[(p.task == task) & (p.method == "ACL-Embed")][["seed", "score"]].assign(row="ACL-Embed")
        return pd.concat([acl, embed])
    if c.derive == "against-zero":
        mine = d[d[c.key] == c.a][[c.key, "seed", v]]
        return pd.concat([mine, mine.assign(**{c.key: c.b, v: 0.0})])
    if c.derive in ("ee-target", "ee-auc"):
        return early_exit_tradeoffs(d).rename(columns={"method": c.key})[[c.key, "seed", v]]
    return d


def early_exit_tradeoffs(sweep: pd.DataFrame, points: int = 50) -> pd.DataFrame:
    """Per method and seed, two summaries of the early-exit settings' (FLOPs fraction, score):
    - the FLOPs speed-up at the common target: the largest 1 / FLOPs fraction among settings (the
      full model among them) scoring within 1 point of the seed's best full model over all methods;
      0 where none does (the method's best cannot reach the target);
    - the mean, over a grid of FLOPs fractions f from the seed's common start (the largest of the
      methods' smallest fractions, so every method has a setting there) to 1, of the best score at
      FLOPs <= f: the area under the quality-FLOPs front over a range every method covers."""
    rows = []
    for seed, s in sweep.groupby("seed"):
        best_full = s[s.rule == "none"]["score"].max()
        start = s.groupby("method")["flops_fraction"].min().max()
        grid = np.linspace(start, 1.0, points)
        for m, d in s.groupby("method"):
            ok = d[d.score >= best_full - 1.0]
            speed = float((1 / ok.flops_fraction).max()) if len(ok) else 0.0
            front = [d[d.flops_fraction <= f + 1e-12]["score"].max() for f in grid]
            rows.append({"method": m, "seed": seed, "FLOPs speed-up at the common target": speed,
                         "mean best score over the common FLOPs range": float(np.mean(front)),
                         "common FLOPs range start": start})
    return pd.DataFrame(rows)


def _lines(reference=np.nan, margin_lo=np.nan, margin_hi=np.nan) -> dict:
    """Where a row's estimate is read against, in its own unit: the no-effect value and the margins
    the claim must clear (NaN where there is none); the forest plots draw them (acllib/forest.py)."""
    return {"reference": reference, "margin lo": margin_lo, "margin hi": margin_hi}


def _fmt(x, unit):
    return f"{x:+.2f}{unit}" if np.isfinite(x) else "n/a"


def _paired_case(c: Claim, kind: str, per_seed: pd.DataFrame, margin: float | None) -> tuple:
    x = _rows(per_seed, c.key, c.a).set_index("seed")[c.value].dropna()
    y = _rows(per_seed, c.key, c.b).set_index("seed")[c.value].dropna()
    x, y = x[~x.index.duplicated()], y[~y.index.duplicated()]
    seeds = sorted(set(x.index) & set(y.index))
    unit = "×" if "speed-up" in c.value else ("°" if c.value == "angle" and c.derive != "share-over-90" else " pts")
    if c.derive == "share-over-90":
        unit = " (share)"
    if c.value in ("silhouette", "label alignment"):
        unit = ""

    def test(keep):
        a, b = x.loc[keep].values, y.loc[keep].values
        if kind == "difference":
            return {"kind": "difference", "expected_sign": c.expected_sign, **stats.difference_test(a, b)}
        if kind == "noninferiority":
            return {"kind": "noninferiority", **stats.noninferiority_test(a, b, margin)}
        return {"kind": "equivalence", **stats.equivalence_test(a, b, margin)}

    def estimate(keep):
        r = test(keep)
        if kind == "difference":
            text = _fmt(r["diff"], unit) + ("" if np.isnan(r["lo"]) else f" [{r['lo']:+.2f}, {r['hi']:+.2f}]")
            if r.get("test") == "sign":
                text += f" (no spread: sign test of {r['n']} seeds)"
            return {"text": text, "estimate": r["diff"], "lo": r["lo"], "hi": r["hi"], "unit": unit, "level": 0.95,
                    **_lines(0.0)}
        text = f"{_fmt(r['diff'], unit)}, 90% [{r['lo90']:+.2f}, {r['hi90']:+.2f}] (margin {margin:g})"
        if r.get("test") == "sign":
            text = f"{_fmt(r['diff'], unit)} on every seed (no spread: sign test; margin {margin:g})"
        return {"text": text, "estimate": r["diff"], "lo": r["lo90"], "hi": r["hi90"], "unit": unit, "level": 0.90,
                **_lines(0.0, -margin, margin if kind == "equivalence" else np.nan)}

    return seeds, test, estimate, (x, y)


def _variance_case(c: Claim, per_seed: pd.DataFrame):
    x, y = (per_seed[per_seed[c.key] == m].set_index("seed")[c.value] for m in (c.a, c.b))
    seeds = sorted(set(x.index) & set(y.index))

    def test(keep):  # runs of one seed share its batch order and initialisation: paired variances
        r = stats.paired_variance_test(x.loc[keep].values, y.loc[keep].values)
        return {"kind": "difference", "expected_sign": 1, "diff": r["r"], "p": r["p"], "ratio": r["ratio"]}

    def estimate(keep):
        a, b = x.loc[keep].values, y.loc[keep].values
        ratio = test(keep)["ratio"]
        lo, hi = stats.variance_ratio_interval(a, b, 0.95)
        return {"text": f"std {a.std(ddof=1):.2f} vs {b.std(ddof=1):.2f} (variance ratio {ratio:.2f} [{lo:.2f}, {hi:.2f}], "
                        "Pitman-Morgan)", "estimate": ratio, "lo": lo, "hi": hi, "unit": "× variance", "level": 0.95,
                **_lines(1.0)}

    return seeds, test, estimate


def _share_case(c: Claim, counts: pd.DataFrame, lower, upper):
    counts = counts.set_index("seed")
    seeds = sorted(counts.index)

    def test(keep):
        r = stats.share_in_every_cluster(counts.loc[keep, "k"].values, counts.loc[keep, "n"].values, lower, upper)
        return {"kind": "noninferiority", **r}

    def estimate(keep):
        r = test(keep)
        need = f"needs ≥ {lower:.0%} on every seed" if upper is None else f"needs {lower:.0%}–{upper:.0%} on every seed"
        return {"text": f"{r['share']:.0%} of {r['items']} batches; per seed {r['lo']:.0%}–{r['hi']:.0%} ({need})",
                "estimate": r["share"], "lo": r["lo"], "hi": r["hi"], "unit": "share", "level": np.nan,  # lo-hi: the seeds' range
                **_lines(np.nan, lower, np.nan if upper is None else upper)}

    return seeds, test, estimate


def _most_case(c: Claim, d: pd.DataFrame):
    m = d.pivot_table(index=["exit", "seed"], columns="method", values="score")
    exits = sorted(d.exit.unique())
    u = len(exits) // 2 + 1  # "most": more than half
    seeds = sorted(set(d[d.method == c.a].seed) & set(d[d.method == c.b].seed))

    def test(keep):
        ups, downs = [], []
        for e in exits:
            diff = (m.loc[e][c.a] - m.loc[e][c.b]).loc[keep].values
            r = stats.difference_test(diff, np.zeros_like(diff))
            one_sided = r["p"] / 2 if not np.isnan(r["p"]) else np.nan
            ups.append(one_sided if r["diff"] > 0 else 1 - one_sided if not np.isnan(one_sided) else np.nan)
            downs.append(one_sided if r["diff"] < 0 else 1 - one_sided if not np.isnan(one_sided) else np.nan)
        return {"kind": "noninferiority", "p_support": stats.partial_conjunction_p(ups, u),
                "p_contradict": stats.partial_conjunction_p(downs, len(exits) - u + 1),
                "exits_up": stats.replicability_count(ups), "ups": ups}

    def estimate(keep):
        r = test(keep)
        higher = int(sum(((m.loc[e][c.a] - m.loc[e][c.b]).loc[keep].mean() > 0) for e in exits))
        # [shown higher, every exit]: the partial conjunction's count is a 95% lower confidence bound
        return {"text": f"higher on {higher} of {len(exits)} exits; shown higher on {r['exits_up']} "
                        f"(partial conjunction, needs {u})", "estimate": float(higher), "lo": float(r["exits_up"]),
                "hi": float(len(exits)), "unit": "exits", "level": 0.95, **_lines(np.nan, float(u))}

    return seeds, test, estimate, u


def _lambda_case(c: Claim, d: pd.DataFrame):
    d = d[d.reading == c.filter["reading"]]
    if not c.filter["with_one"]:
        d = d[d["lambda"] != 1.0]
    tables = {m: d[d.method == m].pivot_table(index="seed", columns="lambda", values=c.value) for m in {c.a, c.b} - {""}}
    seeds = sorted(set.intersection(*(set(t.dropna().index) for t in tables.values()))) if tables else []

    def flat(t):
        others = [lam for lam in t.columns if lam != 0.02]
        if 0.02 not in t.columns or not others:
            return {"p_equiv": np.nan, "p_nonequiv": np.nan, "worst": np.nan}
        tests = [stats.equivalence_test(t[lam].values, t[0.02].values, LAMBDA_MARGIN) for lam in others]
        return {"p_equiv": max(r["p_equiv"] for r in tests),  # intersection-union: every λ within the margin
                "p_nonequiv": min(1.0, len(tests) * min(r["p_nonequiv"] for r in tests)),  # Bonferroni: some λ outside
                "worst": max(abs(r["diff"]) for r in tests), "sd": max(r["sd"] for r in tests), "lambdas": len(tests)}

    def test(keep):
        if c.kind == "lambda-flat":
            r = flat(tables[c.a].loc[keep])
            return {"kind": "noninferiority", "p_support": r["p_equiv"], "p_contradict": r["p_nonequiv"], **r}
        if c.kind == "lambda-effect":
            r = flat(tables[c.a].loc[keep])
            return {"kind": "noninferiority", "p_support": r["p_nonequiv"], "p_contradict": r["p_equiv"], **r}
        sd = {m: tables[m].loc[keep].std(axis=1, ddof=1).values for m in (c.a, c.b)}
        return {"kind": "difference", "expected_sign": c.expected_sign, **stats.difference_test(sd[c.a], sd[c.b])}

    def estimate(keep):
        r = test(keep)
        if c.kind in ("lambda-flat", "lambda-effect"):
            return {"text": f"largest |λ mean − λ=0.02 mean| {r.get('worst', np.nan):.2f} pts (margin {LAMBDA_MARGIN:g})",
                    "estimate": r.get("worst", np.nan), "lo": np.nan, "hi": np.nan, "unit": " pts (largest |Δ| over λ)",
                    "level": np.nan, **_lines(0.0, np.nan, LAMBDA_MARGIN)}
        text = _fmt(r["diff"], " pts") + ("" if np.isnan(r["lo"]) else f" [{r['lo']:+.2f}, {r['hi']:+.2f}]")
        return {"text": f"sd over λ, {c.a} − {c.b}: {text}", "estimate": r["diff"], "lo": r["lo"], "hi": r["hi"],
                "unit": " pts (sd over λ)", "level": 0.95, **_lines(0.0)}

    return seeds, test, estimate, tables


def _gain_frame(c: Claim, d: pd.DataFrame) -> pd.DataFrame:
    """gain_of[0] - gain_of[1] per seed at key == a and at key == b, paired by seed number. The two
    gains of one seed come from unrelated runs, so the pairing removes no variance, but their
    differences are still independent draws, and the paired t-test of them a valid test."""
    up, base = c.gain_of

    def gain(at):
        w = d[d[c.key].astype(str) == str(at)].pivot_table(index="seed", columns="method", values=c.value)
        return (w[up] - w[base]).dropna() if {up, base} <= set(w.columns) else pd.Series(dtype=float)
    return pd.concat([pd.DataFrame({"seed": g.index, c.value: g.values, c.key: at}) for at in (c.a, c.b) for g in [gain(at)]],
                     ignore_index=True)


def _learned(c: Claim, d: pd.DataFrame, tables, task) -> str:
    """Why the compared models did not learn (below the majority class + LEARNED_MARGIN), or ""."""
    if c.learned_check == "none":
        return ""
    majority = tables.majority(task)
    if np.isnan(majority):
        return ""
    floor = f"below majority ({majority:.1f}) + {stats.LEARNED_MARGIN:g}: "
    if c.learned_check == "exits":
        names = c.filter.get("methods", (c.a, c.b))
        bad = [f"{n} exit {e} ({v:.1f})" for n in names for e, v in d[d.method == n].groupby("exit")["score"].mean().items()
               if not stats.learned(v, majority)]
    elif c.gain_of:
        means = d.groupby([c.key, "method"])[c.value].mean()
        bad = [f"{m} at {at} {means.get((at, m), np.nan):.1f}" for at in (c.a, c.b) for m in c.gain_of
               if not stats.learned(means.get((at, m), np.nan), majority)]
    else:
        means = {n: _rows(d, c.key, n)[c.value].mean() for n in (c.a, c.b) if n and n != "zero"}
        bad = [f"{n} {v:.1f}" for n, v in means.items() if not stats.learned(v, majority)]
    return floor + ", ".join(bad[:4]) + (" …" if len(bad) > 4 else "") if bad else ""


def _hashes(c: Claim, d: pd.DataFrame, tables: claim_tables.Tables, task) -> tuple:
    """The runs a row rests on: those of its compared rows in its panel (all of the panel's where the
    claim reads them all)."""
    if "run" not in d:
        return ()
    names = list(c.filter.get("methods", ())) or [n for n in (c.a, c.b) if n and n != "zero"]
    used = d
    if c.key in d and names and not c.gain_of and c.derive != "small-large-lambda":
        used = pd.concat([_rows(d, c.key, n) for n in names])
    runs = set(used.run)
    if c.derive == "acl-vs-embed":
        p = tables["pilot_scores"]
        runs |= set(p[(p.task == task) & (p.method == c.b)].run)
    return tuple(sorted(runs - {""}))


def _kind_on(c: Claim, backbone, task) -> str:
    if not c.per_task_kind or c.paper_effect is None:
        return c.kind
    effect = c.paper_effect(_family_of(backbone), task)
    return "difference" if np.isnan(effect) or effect > 0 else "equivalence"


def _case(c: Claim, tables: claim_tables.Tables, backbone, task, label, value=None) -> Case:
    kind = _kind_on(c, backbone, task)
    none = lambda keep: {"kind": "not_testable"}
    blank = lambda keep: {"text": "", "estimate": np.nan, "lo": np.nan, "hi": np.nan, "unit": "", "level": np.nan, **_lines()}
    if c.kind == "not_testable":
        return Case(c, task, backbone, label, kind, [], none, lambda keep: {**blank(keep), "text": c.not_testable_why},
                    status=stats.NOT_TESTABLE, note=c.not_testable_why)
    df = tables[c.table]
    d = df[df.task == task] if "task" in df else df
    if backbone is not None and "backbone" in d and d.backbone.nunique() > 0:
        d = d[d.backbone == backbone]
    for column, v in c.filter.items():  # filters naming a column select rows (others are the claim's own)
        if column in d:
            d = d[d[column] == v]
    if value is not None:
        d = d[d[c.per] == value]
    hashes = _hashes(c, d, tables, task)
    not_run = Case(c, task, backbone, label, kind, [], none, blank, status=NOT_RUN, note="no rows in the cache", hashes=hashes)
    if d.empty:
        return not_run
    margin = c.margin
    per_seed = d  # the rows a mean check reads, unless a paired kind derives its own below
    if c.kind == "band":
        lo, hi = paper.numbers()["pilot"]["angle_range_deg"]
        mine = d[d.method == c.a]
        counts = mine.assign(inside=(mine.angle >= lo) & (mine.angle <= hi)).groupby("seed")["inside"].agg(k="sum", n="count").reset_index()
        seeds, test, estimate = _share_case(c, counts, c.margin, None)
    elif c.kind == "share":
        target = paper.numbers()["acl_grad"]["share_over_90"]
        counts = d.assign(over=d.angle > 90).groupby("seed")["over"].agg(k="sum", n="count").reset_index()
        seeds, test, estimate = _share_case(c, counts, target - c.margin, target + c.margin)
    elif c.kind == "most":
        seeds, test, estimate, _ = _most_case(c, d)
    elif c.kind.startswith("lambda"):
        seeds, test, estimate, _ = _lambda_case(c, d)
    elif c.kind == "variance":
        seeds, test, estimate = _variance_case(c, d)
    else:
        per_seed = _gain_frame(c, d) if c.gain_of else _derived(c, d, tables, backbone, task)
        seeds, test, estimate, _ = _paired_case(c, kind, per_seed, margin)
    if len(seeds) < 2:
        return Case(c, task, backbone, label, kind, seeds, none, blank, status=NOT_RUN,
                    note=f"{len(seeds)} paired seed(s) in the cache", hashes=hashes)
    case = Case(c, task, backbone, label, kind, seeds, test, estimate, hashes=hashes)
    # the exits check reads every exit; a mean check the per-seed values compared (derived ones included)
    note = _learned(c, d if c.learned_check == "exits" or c.gain_of or c.kind == "variance" else per_seed, tables, task)
    if note:
        case.status, case.note = DIDNT_LEARN, note
    return case


def cases(profile: str, tables: claim_tables.Tables, claims: list[Claim] | None = None) -> list[Case]:
    """One case per claim and panel of the profile's plan (and per value of a claim's `per` column)."""
    out = []
    for c in claims or book_claims():
        ps = panels(profile, c)
        several = len({b for b, _ in ps}) > 1
        if c.kind == "not_testable":
            if c.id == "t1-roberta" and any(_family_of(b) == "RoBERTa" for b, _ in ps):
                continue  # the paper profile: the t1-vs rows' RoBERTa panels are this claim
            out.append(_case(c, tables, None, "", ""))
            continue
        for backbone, task in ps:
            label = f"{task} [{backbone}]" if several else task
            if c.per:
                d = tables[c.table]
                values = sorted(d[(d.task == task) & (d[list(c.filter)[0]] == list(c.filter.values())[0])][c.per].unique()) \
                    if c.filter and len(d) else []
                for v in values or [None]:
                    out.append(_case(c, tables, backbone, task, f"{label}, {c.per} {v}" if v is not None else label, v))
            else:
                out.append(_case(c, tables, backbone, task, label))
    return out


# ------------------------------------------------------------------------------- power
def planning_basis() -> dict:
    """The planning basis of the prospective power analysis (acllib/planning_basis.json): the paired
    spread of each row in a build made before this design, with that build's commit and profile."""
    from importlib import resources
    path = resources.files("acllib") / "planning_basis.json"
    return __import__("json").loads(path.read_text()) if path.is_file() else {"rows": {}}


def planning_sd(c: Claim, label: str, rows: dict) -> float:
    """The paired sd that plans a claim row: its own in the planning basis, else its planning_row's."""
    own = rows.get(f"{c.id}|{label}") or rows.get(f"{c.planning_row}|{label}") or {}
    return own.get("sd", np.nan)


def effect_of_interest(c: Claim, kind: str, backbone, task) -> float:
    """The effect a row is powered for, in the claim's direction: the paper's own effect where it
    gives one on the claim's side, else SMALLEST_EFFECT (a tenth of it for shares); for a
    non-inferiority or equivalence, the distance from the margin at the paper's effect (at most the
    margin, 0 effect assumed where the paper shows a loss)."""
    effect = c.paper_effect(_family_of(backbone), task) if c.paper_effect else np.nan
    signed = c.expected_sign * effect if not np.isnan(effect) else np.nan
    smallest = SMALLEST_EFFECT / 10 if c.derive == "share-over-90" else SMALLEST_EFFECT
    if kind in ("difference", "lambda-less"):
        return signed if not np.isnan(signed) and signed > 0 else smallest
    if kind == "lambda-flat":  # the worst λ's distance inside the margin
        return c.margin - min(effect if not np.isnan(effect) else 0.0, c.margin)
    if kind == "lambda-effect":  # the worst λ's distance beyond the margin (0: the paper's sits on it)
        return max(0.0, effect - c.margin) if not np.isnan(effect) else np.nan
    if kind == "noninferiority":
        return c.margin + max(0.0, signed if not np.isnan(signed) else 0.0)
    if kind == "equivalence":
        return c.margin - min(abs(effect) if not np.isnan(effect) else 0.0, c.margin)
    return np.nan


def row_power(c: Claim, kind: str, backbone, task, sd: float, n: int, level: float) -> tuple[float, float]:
    """(power at n seeds, seeds for 80% power) of a row at `level`, given the planning sd."""
    effect = effect_of_interest(c, kind, backbone, task)
    if np.isnan(sd) or np.isnan(effect) or n < 2:
        return np.nan, np.nan
    from statsmodels.stats.power import TTestPower
    lambdas = 5 if c.filter.get("with_one", True) else 4  # the λ compared with λ = 0.02
    if kind == "lambda-flat":  # every λ's TOST must pass: at least 1 - k (1 - one TOST's power)
        reach = lambda m: max(0.0, 1 - lambdas * (1 - stats.tost_power(sd, m, c.margin, level, true_diff=c.margin - effect)))
        need = next((m for m in (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128) if reach(m) >= POWER), np.inf)
        return reach(n), float(need)
    if kind == "lambda-effect":  # one λ beyond the margin, at level / k (Bonferroni over the λ)
        if effect <= 0:
            return float(level / lambdas), np.inf
        power = float(TTestPower().power(effect_size=effect / sd, nobs=n, alpha=level / lambdas, alternative="larger"))
        return power, stats.pairs_needed(effect, sd, level / lambdas, POWER, alternative="larger")
    if kind == "lambda-less":
        kind = "difference"
    if kind == "equivalence":
        true = c.margin - effect
        reach = lambda m: stats.tost_power(sd, m, c.margin, level, true_diff=true)
        hi = 2
        while reach(hi) < POWER and hi < 4096:
            hi *= 2
        lo = hi // 2
        while hi - lo > 1 and reach(lo) < POWER:  # reach(lo) < POWER <= reach(hi)
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if reach(mid) >= POWER else (mid, hi)
        return reach(n), float(hi) if reach(hi) >= POWER else np.inf
    alt = "larger" if kind == "noninferiority" else "two-sided"
    if sd == 0:
        return 1.0, 2.0
    power = float(TTestPower().power(effect_size=effect / sd, nobs=n, alpha=level, alternative=alt))
    return power, stats.pairs_needed(effect, sd, level, POWER, alternative=alt)


# ------------------------------------------------------------------------------- the verdicts
def _verdicts(tests: list[dict], fam_idx: dict[str, list[int]], alpha: float) -> list[dict]:
    out = [None] * len(tests)
    for idx in fam_idx.values():
        for i, v in zip(idx, stats.family_verdicts([tests[i] for i in idx], alpha)):
            out[i] = v
    return out


def _row_test(case: Case, keep) -> dict:
    """A case's test on the kept seeds; untestable rows of a family count with p = 1 (defect 7 of
    issue #24: families are fixed before any run, so a row that cannot be tested cannot leave)."""
    if case.status == stats.NOT_TESTABLE:
        return {"kind": "not_testable"}
    if case.status in (NOT_RUN, DIDNT_LEARN):
        return {"kind": "noninferiority", "p_support": 1.0, "p_contradict": 1.0}
    t = case.test(keep)
    if t["kind"] == "difference" and np.isnan(t.get("p", np.nan)) or \
            t["kind"] == "noninferiority" and np.isnan(t.get("p_support", np.nan)) or \
            t["kind"] == "equivalence" and np.isnan(t.get("p_equiv", np.nan)):
        return {"kind": "noninferiority", "p_support": 1.0, "p_contradict": 1.0}
    return t


def judge(profile: str, tables: claim_tables.Tables | None = None, claims: list[Claim] | None = None,
          alpha: float = ALPHA, robustness: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """The claims table: one row per claim and panel, verdicts under Holm's step-down within each
    family. Returns (table, the runs missing from the cache, one line each). robustness=False skips
    the leave-one-seed-out re-judging (simulations)."""
    tables = claim_tables.build(profile) if tables is None else tables
    cs = cases(profile, tables, claims)
    fam_idx: dict[str, list[int]] = {}
    for i, case in enumerate(cs):
        fam_idx.setdefault(case.claim.family, []).append(i)
    tests = [_row_test(case, case.seeds) for case in cs]
    verdicts = _verdicts(tests, fam_idx, alpha)
    alone = [stats.family_verdicts([t], alpha)[0]["verdict"] for t in tests]
    # leave one seed out, the displayed rule re-run: that seed dropped from every row of the family,
    # Holm's step-down over the family again
    agree = {i: [] for i in range(len(cs))}
    for fam, idx in fam_idx.items() if robustness else ():
        all_seeds = sorted({s for i in idx for s in cs[i].seeds})
        for s in all_seeds:
            dropped = [_row_test(cs[i], [x for x in cs[i].seeds if x != s]) if s in cs[i].seeds and len(cs[i].seeds) >= 3
                       else tests[i] for i in idx]
            for i, v in zip(idx, stats.family_verdicts(dropped, alpha)):
                if s in cs[i].seeds and len(cs[i].seeds) >= 3 and not cs[i].status:
                    agree[i].append(v["verdict"] == verdicts[i]["verdict"])
    basis = planning_basis().get("rows", {})
    sizes = {fam: sum(tests[i]["kind"] != "not_testable" for i in idx) for fam, idx in fam_idx.items()}
    rows = []
    for i, (case, t, v) in enumerate(zip(cs, tests, verdicts)):
        c = case.claim
        verdict = v["verdict"]
        m = sizes[c.family]
        level = alpha / max(m, 1)  # the planning level: Holm's first step (Bonferroni)
        sd = planning_sd(c, case.label, basis)
        power, need = row_power(c, case.kind, case.backbone, case.task, sd, len(case.seeds), level) \
            if not case.status else (np.nan, np.nan)
        if case.status:
            verdict = case.status
        elif verdict == stats.INCONCLUSIVE and not np.isnan(power) and power < POWER:
            verdict = UNDERPOWERED
        # a row whose model did not learn keeps its estimate (the forest plots draw it, marked as such)
        est = case.estimate(case.seeds) if case.status in ("", DIDNT_LEARN) else \
            {"text": case.note, "estimate": np.nan, "lo": np.nan, "hi": np.nan, "unit": "", "level": np.nan, **_lines()}
        stable = float(np.mean(agree[i])) if agree[i] else np.nan
        effect = c.paper_effect(_family_of(case.backbone), case.task) if c.paper_effect and case.task else np.nan
        rows.append({
            "id": c.id, "claim": c.text, "task": case.label, "chapter": c.chapter, "kind": case.kind,
            "family": FAMILIES[c.family], "paper": c.paper_says, "ours": est["text"],
            "estimate": est["estimate"], "lo": est["lo"], "hi": est["hi"], "unit": est["unit"], "interval level": est["level"],
            "reference": est["reference"], "margin lo": est["margin lo"], "margin hi": est["margin hi"],
            "seeds": len(case.seeds), "sd": t.get("sd", np.nan) if not case.status else np.nan,
            "p": v["p"], "p (Holm)": v["p_adj"], "p support": v["p_support"] if not case.status else np.nan,
            "verdict": verdict,
            "verdict without correction": case.status or alone[i],
            "margin": c.margin, "margin basis": c.margin_why, "baseline": c.baseline, "budgets": c.budget,
            "paper effect": effect, "effect of interest": effect_of_interest(c, case.kind, case.backbone, case.task)
            if case.task and c.kind != "not_testable" else np.nan,
            "planning sd": sd, "planning level": level, "power": power, "seeds for 80% power": need,
            "leave-one-seed-out agreement": stable, "fragile": bool(stable < 1.0) if not np.isnan(stable) else False,
            "note": case.note, "runs": len(case.hashes), "run hashes": " ".join(case.hashes),
        })
    return pd.DataFrame(rows), tables.missing


def counts(table: pd.DataFrame, column: str = "verdict", family: str = "primary") -> dict[str, int]:
    """Verdict tallies of one family ("primary", "secondary", "exploratory"), in VERDICT_ORDER."""
    tally = table.loc[table["family"] == FAMILIES[family], column].value_counts().to_dict()
    return {k: tally[k] for k in VERDICT_ORDER if k in tally}


def replicability(table: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """For each claim tested on two or more tasks: on how many its effect holds, with error control
    at alpha (Dror et al. 2017: partial conjunction tests of the rows' one-sided p for the claim,
    stats.replicability_count), beside the tasks tested."""
    tested = table.dropna(subset=["p support"])
    rows = []
    for cid, g in tested.groupby("id", sort=False):
        if len(g) < 2:
            continue
        rows.append({"claim": g.claim.iloc[0], "family": g.family.iloc[0], "tasks tested": len(g),
                     "tasks where it holds (5% error)": stats.replicability_count(g["p support"].values, alpha),
                     "tasks": ", ".join(g.task)})
    return pd.DataFrame(rows)


def ledger(table: pd.DataFrame) -> list[dict]:
    """The machine-readable verdicts: claim, task, kind, family, verdict, p, p (Holm), and the
    hashes of the runs each row rests on."""
    num = lambda x: None if pd.isna(x) else float(x)
    return [{"claim": r["id"], "text": r["claim"], "task": r["task"], "kind": r["kind"], "family": r["family"],
             "verdict": r["verdict"], "p": num(r["p"]), "p_holm": num(r["p (Holm)"]),
             "runs": str(r["run hashes"]).split() if isinstance(r["run hashes"], str) else []}
            for r in table.to_dict("records")]


# ------------------------------------------------------------------------------- the design
def _row_seeds(profile: str, c: Claim) -> list[int]:
    """The seeds a claim's two rows share in the profile's plan (Table 1's rows may have their own)."""
    chapter = _chapter(profile, c.chapter)
    own = chapter.extra.get("row_seeds", {})
    return sorted(set(own.get(c.a, chapter.seeds)) & set(own.get(c.b, chapter.seeds)))


def write_planning_basis(table: pd.DataFrame, profile: str, commit: str, machine: str, path=None) -> dict:
    """Record each tested row's paired spread (the sd of its per-seed differences) as the planning
    basis of later designs: acllib/planning_basis.json, with the build's profile, commit and machine."""
    import json
    from pathlib import Path
    rows = {f"{r['id']}|{r['task']}": {"sd": float(r["sd"]), "seeds": int(r["seeds"])}
            for r in table.to_dict("records") if not pd.isna(r["sd"]) and r["seeds"] >= 2}
    basis = {"_about": "The paired spread of each claim row in a build made before the design it plans: "
                       "claims.power_plan reads it to size the primary family's seeds (issue #24).",
             "profile": profile, "commit": commit, "machine": machine, "rows": rows}
    path = Path(path) if path else Path(__file__).with_name("planning_basis.json")
    path.write_text(json.dumps(basis, indent=1, sort_keys=True) + "\n")
    return basis


def power_plan(profile: str, family: str = "primary", alpha: float = ALPHA) -> pd.DataFrame:
    """The prospective power analysis of a family at a profile: for each of its rows, the planning
    sd (planning_basis.json), the effect of interest, the seeds the profile runs, the power there
    and the seeds for 80% power, all at the family's Bonferroni level alpha / m (Holm's first step,
    so the power of every row at least this)."""
    basis = planning_basis()
    cs = [c for c in book_claims() if c.family == family and c.kind != "not_testable"]
    rows = []
    for c in cs:
        for backbone, task in panels(profile, c):
            label = task if len({b for b, _ in panels(profile, c)}) == 1 else f"{task} [{backbone}]"
            kind = _kind_on(c, backbone, task)
            seeds = len(_row_seeds(profile, c))
            rows.append({"id": c.id, "task": label, "kind": kind, "why": PRIMARY_WHY.get(c.id, ""),
                         "planning sd": planning_sd(c, label, basis.get("rows", {})),
                         "effect of interest": effect_of_interest(c, kind, backbone, task), "seeds": seeds})
    out = pd.DataFrame(rows)
    level = alpha / max(len(out), 1)
    out["level"] = level
    pw = [row_power(next(c for c in cs if c.id == r["id"]), r["kind"], None, r["task"].split(" [")[0], r["planning sd"],
                    int(r["seeds"]) if not pd.isna(r["seeds"]) else 0, level) for r in rows]
    out["power at these seeds"] = [p for p, _ in pw]
    out["seeds for 80% power"] = [n for _, n in pw]
    out.attrs["basis"] = {k: basis.get(k) for k in ("profile", "commit", "machine")}
    return out
