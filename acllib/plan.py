"""The runs of every chapter, defined once.

Each chapter's function turns its parameters (the notebook's: tasks, seeds, backbones, overrides and
its own) into a ChapterPlan: the backbones and tasks it covers, its seeds, and its runs keyed as the
chapter reads them, first element the part of the chapter they belong to. The notebooks take their
configs from here and nowhere else; `python -m acllib plan` lists and prices the whole book from the
same functions (`book_plan`, deduplicated across chapters), and `python -m acllib sweep` runs what is
missing. The pilot's fixed-model angles, the t-SNE's representations and the early-exit timings are
measurements on these runs' models, not runs: they are cached by the chapters that make them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from typing import Any, Callable

import numpy as np

from . import cost, paper, strategies
from .config import (GATE_STAGES, GATES, LAYER_CURVE_METHODS, LAYER_CURVE_VARIANTS, TABLE2_ROWS, TABLE3_METHODS,
                     RunConfig, get_profile, make_config, resolve_precision)
from .data import has_split
from .models import backbone_depth
from .results import cpu_model, load_result
from .train import updates_per_epoch


@dataclass
class ChapterPlan:
    chapter: str                # the notebook's name, e.g. "02_table1"
    profile: str
    backbones: list[str]
    tasks: list[str]
    seeds: list[int]
    runs: dict[tuple, RunConfig]  # (part, ...) -> config, in the order the chapter runs them
    extra: dict[str, Any] = field(default_factory=dict)  # resolved chapter parameters (e.g. Table 3's lambdas)
    panels: list[tuple[str, str]] = field(default_factory=list)  # (backbone, task); default: all pairs

    def __post_init__(self):
        if not self.panels:
            self.panels = list(product(self.backbones, self.tasks))

    def part(self, name: str) -> dict[tuple, RunConfig]:
        """The runs of one part, keyed without the part's name."""
        return {k[1:]: c for k, c in self.runs.items() if k[0] == name}

    @property
    def backbone(self) -> str:
        """The chapter's one backbone (for chapters that draw a single one)."""
        return self.backbones[0]

    def configs(self) -> list[RunConfig]:
        return list(self.runs.values())


def _unique(items) -> list:
    return list(dict.fromkeys(items))


def _backbones(profile: str, chapter: str, backbones, single: bool, overrides=None) -> list[str]:
    """The chapter's backbones: as given, else an override's backbone, else the profile's choice."""
    prof = get_profile(profile)
    given = (overrides or {}).get("backbone")
    chosen = list(backbones or ([given] if given else None) or prof.chapter(chapter, "backbones") or [prof.run["backbone"]])
    if single and len(chosen) != 1:
        raise ValueError(f"chapter {chapter!r} draws one backbone; got {chosen!r}")
    return chosen


def _common(profile: str, chapter: str, tasks, seeds, backbones, single_backbone: bool = True, overrides=None):
    prof = get_profile(profile)
    return (_backbones(profile, chapter, backbones, single_backbone, overrides),
            list(tasks or prof.chapter(chapter, "tasks")), [int(s) for s in (seeds or prof.chapter(chapter, "seeds"))])


def pilot(profile: str, tasks=None, seeds=None, backbones=None, overrides=None) -> ChapterPlan:
    """Sec. 4: CE and CE+SCL fine-tunes (their fixed-model angles are measured on them), and ACL-Embed
    with its CE/ACL angle logged on every step."""
    (b,), tasks, seeds = _common(profile, "pilot", tasks, seeds, backbones, overrides=overrides)
    o = {**(overrides or {}), "backbone": b}
    own = get_profile(profile).chapter("pilot", "task_seeds") or {}  # tasks the profile runs on fewer seeds
    task_seeds = {t: [s for s in seeds if t not in own or s in own[t]] or seeds[:1] for t in tasks}
    runs = {("fine-tune", m, t, s): make_config(profile, t, method=m, seed=s, **o)
            for m in ("ce", "ce+scl") for t in tasks for s in task_seeds[t]}
    runs |= {("acl-embed", t, s): make_config(profile, t, method="acl-embed", log_angles=True, seed=s, **o)
             for t in tasks for s in task_seeds[t]}
    return ChapterPlan("01_pilot_angles", profile, [b], tasks, seeds, runs, {"task_seeds": task_seeds})


def paper_family(backbone: str) -> str:
    """Which of the paper's Table 1 blocks a backbone's rows sit beside: "RoBERTa" or "BERT" (MiniLM
    and the tiny test models are BERT-architecture unless their name says RoBERTa)."""
    return "RoBERTa" if "roberta" in backbone.lower() else "BERT"


def table1_rows(depth: int, family: str = "BERT") -> dict[str, tuple[dict, int | None, tuple[str, str]]]:
    """Table 1's rows we run: label -> (config fields, exit read (None: the last), the paper's row)."""
    half = depth // 2
    return {
        "CE": (dict(method="ce"), None, (family, "CE")),
        "CE+SCL": (dict(method="ce+scl"), None, (family, "CE+SCL")),
        "ACL": (dict(method="acl"), None, (family, "ACL")),
        f"direct {half} layers (as {family}-6L)": (dict(strategy="direct", depth=half), None, (f"{family}-6L", "-")),
        f"ACL-CL exit {half} (as ACL-{family}-6L)": (dict(strategy="2st", **TABLE2_ROWS["ACL"]), half, (f"ACL-{family}-6L", "ACL-CL")),
        # the compression baselines, run on the CE row's model (the paper's rows are BERT-base's)
        "head pruning (as HeadPrune)": (dict(strategy="headprune"), None, ("HeadPrune", "-")),
        f"BERT-of-Theseus {half} layers": (dict(strategy="theseus"), None, ("BERT-of-Theseus", "-")),
    }


def table1(profile: str, tasks=None, seeds=None, backbones=None, overrides=None) -> ChapterPlan:
    """Table 1 on each of the chapter's backbones: full fine-tuning and the half-depth models. Rows
    the profile gives more seeds (`row_seeds`: the primary family's, sized by its power analysis,
    claims.power_plan) run on those; seeds given explicitly apply to every row."""
    own = (get_profile(profile).chapter("table1", "row_seeds") or {}) if seeds is None else {}
    bs, tasks, seeds = _common(profile, "table1", tasks, seeds, backbones, False, overrides)
    runs = {}
    for b in bs:
        rows = table1_rows(backbone_depth(b), paper_family(b))
        runs |= {("row", label, b, t, s): make_config(profile, t, seed=s, **{**fields, **(overrides or {}), "backbone": b})
                 for label, (fields, _, _) in rows.items() for t in tasks for s in own.get(label, seeds)}
    return ChapterPlan("02_table1", profile, bs, tasks, seeds, runs,
                       {"row_seeds": {label: list(s) for label, s in own.items()}})


def method_seeds(profile: str, method: str, seeds) -> list[int]:
    """The seeds a layer-curve method runs on: the chapter's, or the subset of them the profile
    gives that method (cpu: the linear-exit methods, whose shallow exits cannot learn there)."""
    own = (get_profile(profile).chapter("layer_curves", "method_seeds") or {}).get(method)
    return [s for s in seeds if own is None or s in own] or list(seeds)[:1]


def fewer_seeds(profile: str, seeds, methods=None) -> dict[str, list[int]]:
    """The layer-curve methods (default: all) that the profile runs on fewer of `seeds`, and theirs."""
    return {m: mine for m in (methods or LAYER_CURVE_METHODS) if (mine := method_seeds(profile, m, seeds)) != list(seeds)}


def layer_curves(profile: str, tasks=None, seeds=None, backbones=None, overrides=None, variant_seeds=None) -> ChapterPlan:
    """Figures 3-5: every multi-exit training method's exits, per panel (backbone, task): the paper
    draws RoBERTa on every task (Figs. 3-4) and BERT on RTE and MRPC (Fig. 5). The linear exit's
    pooling variants run on the first panel and the variant seeds (shown, not judged)."""
    prof = get_profile(profile)
    panels = prof.chapter("layer_curves", "panels") if not (tasks or backbones or (overrides or {}).get("backbone")) else None
    if panels:  # {backbone: tasks}
        panels = [(b, t) for b, ts in panels.items() for t in ts]
        seeds = [int(s) for s in (seeds or prof.chapter("layer_curves", "seeds"))]
    else:
        bs, ts, seeds = _common(profile, "layer_curves", tasks, seeds, backbones, False, overrides)
        panels = list(product(bs, ts))
    variant_seeds = [s for s in (variant_seeds or prof.chapter("layer_variants", "seeds")) if s in seeds] or seeds[:1]
    o = overrides or {}
    runs = {("curve", m, b, t, s): make_config(profile, t, seed=s, **{**f, **o, "backbone": b})
            for m, f in LAYER_CURVE_METHODS.items() for b, t in panels for s in method_seeds(profile, m, seeds)}
    runs |= {("variant", m, b, t, s): make_config(profile, t, seed=s, **{**f, **o, "backbone": b})
             for m, f in LAYER_CURVE_VARIANTS.items() for b, t in panels[:1] for s in variant_seeds}
    return ChapterPlan("03_layer_curves", profile, _unique(b for b, _ in panels), _unique(t for _, t in panels),
                       seeds, runs, {"variant_seeds": variant_seeds}, panels)


def table2(profile: str, tasks=None, seeds=None, backbones=None, overrides=None) -> ChapterPlan:
    """Table 2's ablation rows, ACL-Grad's reference (the exit's CE, or CE + KD) for the rows that use
    it, and (beyond the paper, issue #27) ACL under each gate in full fine-tuning and in stage 2."""
    prof = get_profile(profile)
    tasks = tasks or prof.chapters.get("table2", {}).get("tasks") or [t for t in ("mrpc", "rte", "sst2") if t in prof.tasks]
    (b,), tasks, seeds = _common(profile, "table2", tasks, seeds, backbones, overrides=overrides)
    o = {**(overrides or {}), "backbone": b}
    runs = {("row", row, t, s): make_config(profile, t, seed=s, strategy="2st", **{**f, **o})
            for row, f in TABLE2_ROWS.items() for t in tasks for s in seeds}
    grad_rows = [row for row, f in TABLE2_ROWS.items() if f.get("stage2_grad")]
    runs |= {("grad-ref", row, ref, t, s): make_config(profile, t, seed=s, strategy="2st", stage2_grad_ref=ref, **{**TABLE2_ROWS[row], **o})
             for row in grad_rows for ref in ("ce", "ce+kd") for t in tasks for s in seeds}
    runs |= {("gate", stage, gate, t, s): make_config(profile, t, seed=s, gate=gate, **{**f, **o})
             for stage, f in GATE_STAGES.items() for gate in GATES for t in tasks for s in seeds}
    return ChapterPlan("04_table2_ablation", profile, [b], tasks, seeds, runs, {"grad_rows": grad_rows})


def table3(profile: str, tasks=None, seeds=None, backbones=None, overrides=None, lambdas=None,
           convex_lambdas=None) -> ChapterPlan:
    """Table 3: both methods over λ, under the additive reading (the paper's six values) and the
    convex one (the profile's subset)."""
    (b,), tasks, seeds = _common(profile, "table3", tasks, seeds, backbones, overrides=overrides)
    t3 = paper.numbers()["table3"]
    readings = {"additive": [float(x) for x in (lambdas or t3["lambdas"])],
                "convex": [float(x) for x in (convex_lambdas or get_profile(profile).chapter("table3", "convex_lambdas", t3["lambdas"]))]}
    o = {**(overrides or {}), "backbone": b}
    runs = {("sweep", reading, m, t, lam, s): make_config(profile, t, seed=s, strategy="2st", lam=lam, aux_weighting=reading, **{**f, **o})
            for reading, lams in readings.items() for m, f in TABLE3_METHODS.items() for t in tasks for lam in lams for s in seeds}
    return ChapterPlan("05_table3_lambda", profile, [b], tasks, seeds, runs, {"readings": readings})


def tsne(profile: str, tasks=None, seeds=None, backbones=None, overrides=None) -> ChapterPlan:
    """Sec. 5.7: CE+SCL's and ACL's multi-exit models on the chapter's (first) task."""
    (b,), tasks, seeds = _common(profile, "tsne", tasks, seeds, backbones, overrides=overrides)
    o = {**(overrides or {}), "backbone": b}
    runs = {("model", m, s): make_config(profile, tasks[0], seed=s, strategy="2st", **{**f, **o})
            for m, f in TABLE3_METHODS.items() for s in seeds}
    return ChapterPlan("06_tsne", profile, [b], tasks[:1], seeds, runs)


# Early exiting reuses the layer-curves chapter's multi-exit models (same configs, so the same runs).
EARLY_EXIT_METHODS = ("JT", "2ST-linear", "2ST-MHA", "2ST-MHA+KD", "ALT", "ACL")  # 2ST-MHA+KD: the claims' second baseline


def early_exit(profile: str, tasks=None, seeds=None, backbones=None, overrides=None) -> ChapterPlan:
    (b,), tasks, seeds = _common(profile, "early_exit", tasks, seeds, backbones, overrides=overrides)
    o = {**(overrides or {}), "backbone": b}
    runs = {("model", m, s): make_config(profile, tasks[0], seed=s, **{**LAYER_CURVE_METHODS[m], **o})
            for m in EARLY_EXIT_METHODS for s in method_seeds(profile, m, seeds)}
    return ChapterPlan("07_early_exit", profile, [b], tasks[:1], seeds, runs)


# The few-shot chapter's methods: the paper's full fine-tuning objectives, and ACL-Embed without the
# gate (its CE/ACL angle logged, as in the pilot) to show what ACL-Grad adds.
FEW_SHOT_METHODS = {"CE": dict(method="ce"), "CE+SCL": dict(method="ce+scl"),
                    "ACL-Embed": dict(method="acl-embed", log_angles=True), "ACL": dict(method="acl")}


def few_shot_epochs(cfg: RunConfig, size: int, min_updates: int) -> int:
    """Epochs for a training set of `size`: the profile's, or more where they would give fewer than
    `min_updates` optimizer updates (20 examples make one batch an epoch)."""
    return max(cfg.epochs, -(-min_updates // updates_per_epoch(cfg, size)))


def few_shot(profile: str, tasks=None, seeds=None, backbones=None, overrides=None, sizes=None,
             small_seeds=None, min_updates=None) -> ChapterPlan:
    """Learning curves over training-set sizes (issue #13): every method of FEW_SHOT_METHODS on
    label-balanced subsets drawn per seed at each few-shot size, with at least `min_updates` updates
    each, on `small_seeds`; and at the full size (the profile's training set) the profile's own runs
    on its seeds, Table 1's and the pilot's, reused. A task with no train split here (QNLI, MNLI)
    draws from a seeded half of its validation split and is evaluated on the other half, at every size."""
    prof = get_profile(profile)
    bs, tasks, seeds = _common(profile, "few_shot", tasks, seeds, backbones, False, overrides)
    sizes = sorted(int(n) for n in (sizes or prof.chapter("few_shot", "sizes")))
    small_seeds = [int(s) for s in (small_seeds or prof.chapter("few_shot", "small_seeds") or seeds)]
    min_updates = int(min_updates or prof.chapter("few_shot", "min_updates", 0))
    runs, full_sizes, pools = {}, {}, {}
    for b, t in product(bs, tasks):
        pool = "train" if has_split(t, "train") else "validation-half"
        o = {**(overrides or {}), "backbone": b, **({"train_pool": pool} if pool != "train" else {})}
        full = make_config(profile, t, **o)
        full_sizes[t], pools[t] = full.train_size, pool
        for m, f in FEW_SHOT_METHODS.items():
            for n in sizes:
                if full.train_size is not None and n >= full.train_size:
                    raise ValueError(f"few-shot size {n} is not below {t}'s full training size ({full.train_size})")
                small = make_config(profile, t, **{**f, **o, "train_size": n, "train_subset": "balanced-per-seed"})
                epochs = few_shot_epochs(small, n, min_updates)
                runs |= {("run", m, b, t, n, s): make_config(profile, t, seed=s, **{**f, **o, "train_size": n, "epochs": epochs,
                                                                                       "train_subset": "balanced-per-seed"})
                         for s in small_seeds}
            runs |= {("run", m, b, t, "full", s): make_config(profile, t, seed=s, **{**f, **o}) for s in seeds}
    return ChapterPlan("08_few_shot", profile, bs, tasks, seeds, runs,
                       {"sizes": sizes, "small_seeds": small_seeds, "min_updates": min_updates,
                        "full_sizes": full_sizes, "pools": pools})


CHAPTERS: dict[str, Callable[..., ChapterPlan]] = {
    "01_pilot_angles": pilot, "02_table1": table1, "03_layer_curves": layer_curves,
    "04_table2_ablation": table2, "05_table3_lambda": table3, "06_tsne": tsne, "07_early_exit": early_exit,
    "08_few_shot": few_shot,
}


def chapter_names(chapters=None) -> list[str]:
    """Chapter names in book order; each may be given by its full name or its number ("02")."""
    if not chapters:
        return list(CHAPTERS)
    out = []
    for c in chapters:
        match = [n for n in CHAPTERS if n == c or n.split("_")[0] == c or n.split("_", 1)[1] == c]
        if len(match) != 1:
            raise ValueError(f"unknown chapter {c!r}; choose from {', '.join(CHAPTERS)} (or their numbers)")
        out.append(match[0])
    return sorted(set(out), key=list(CHAPTERS).index)


def with_stage1(cfgs) -> list[RunConfig]:
    """The configs and the stage-1 runs their 2st, headprune and theseus configs start from, and the
    Eq. 4 pairs their random gates read (each once, what a run needs before it)."""
    out: dict[str, RunConfig] = {}
    for c in cfgs:
        for needed in strategies.prerequisites(c):
            out.setdefault(needed.hash, needed)
        out.setdefault(c.hash, c)
    return list(out.values())


def book_plan(profile: str, chapters=None) -> dict[str, list[RunConfig]]:
    """Every chapter's runs at its default parameters, stage 1s included, each run under the first
    chapter that needs it (a model many chapters share counts once)."""
    seen: set[str] = set()
    plan = {}
    for name in chapter_names(chapters):
        own = [c for c in with_stage1(CHAPTERS[name](profile).configs()) if c.hash not in seen]
        seen |= {c.hash for c in own}
        plan[name] = own
    return plan


def cost_table(profile: str, chapters=None, flops_per_s: float | None = None, gpu: str = "V100-16GB",
               gpu_utilisation: float = 0.3):
    """The plan of a profile as a table: per chapter and backbone (each run under the first chapter
    that needs it), per backbone and in total, the runs, how many are already in the cache, training
    examples x epochs, training FLOPs, hours on this machine and GPU-hours on `gpu`. Hours here come from `flops_per_s` (this
    machine's measured training throughput, cost.machine_flops_per_s), scaled by how much longer
    than their training FLOPs predict this machine's cached full fine-tunes took, where there are any."""
    import pandas as pd
    plan = book_plan(profile, chapters)
    rows, calib = [], []
    flops = cost.set_flops([c for cfgs in plan.values() for c in cfgs])  # a 2st group's features once
    for name, cfgs in plan.items():
        f = [flops[c.hash] for c in cfgs]
        done = [load_result(c) for c in cfgs]
        for c, x, r in zip(cfgs, f, done):  # calibrate on full fine-tunes: their train_seconds are their training steps
            if r is not None and not strategies.get(c.strategy).needs_stage1 and r.train_seconds and flops_per_s:
                calib.append(r.train_seconds / (x["train"] / flops_per_s))
        for b in _unique(c.backbone for c in cfgs) or [""]:
            mine = [(x, r) for c, x, r in zip(cfgs, f, done) if c.backbone == b]
            rows.append({"chapter": name, "backbone": b, "runs": len(mine), "in the cache": sum(r is not None for _, r in mine),
                         "examples x epochs": sum(x["examples_x_epochs"] for x, _ in mine),
                         "PFLOPs": sum(x["flops"] for x, _ in mine) / 1e15,
                         "PFLOPs to run": sum(x["flops"] for x, r in mine if r is None) / 1e15})
    table = pd.DataFrame(rows)
    backbones = [b for b in _unique(table.backbone) if b]  # "": a chapter without runs
    totals = [{"chapter": "total", "backbone": b, **table[table.backbone == b].drop(columns=["chapter", "backbone"]).sum().to_dict()}
              for b in backbones] if len(backbones) > 1 else []
    totals.append({"chapter": "total", "backbone": "all" if len(backbones) > 1 else "".join(backbones),
                   **table.drop(columns=["chapter", "backbone"]).sum().to_dict()})
    table = pd.concat([table, pd.DataFrame(totals)], ignore_index=True)
    table = table.astype({"runs": int, "in the cache": int, "examples x epochs": int})  # counts, not floats
    overhead = float(np.median(calib)) if calib else 1.0
    if flops_per_s:
        table["hours here"] = table["PFLOPs"] * 1e15 / flops_per_s * overhead / 3600
        table["hours here, to run"] = table["PFLOPs to run"] * 1e15 / flops_per_s * overhead / 3600
    peak = cost.GPUS[gpu]["mixed"]
    table[f"{gpu} GPU-hours"] = table["PFLOPs"] * 1e15 / (peak * gpu_utilisation) / 3600
    notes = {"overhead": overhead, "calibration_runs": len(calib),
             "gpu": f"{gpu}: {peak / 1e12:g} TFLOP/s mixed-precision peak ({cost.GPUS[gpu]['source']}) at an assumed "
                    f"{gpu_utilisation:.0%} utilisation",
             "tokens": sorted({cost.run_flops(c)["tokens_source"] + f" ({c.task})" for cfgs in plan.values() for c in cfgs})}
    return table, notes


def build_estimate(profile: str, chapters=None, step_s: float | None = None) -> dict:
    """What training a profile's missing runs will cost on this machine, before it starts: the plan's
    runs (cost_table), those not yet in the cache, their training FLOPs, and hours at this
    machine's throughput (from a timed CE step, `step_s` if given, scaled by the cached runs'
    overhead where there are any), with the machine's precision and CPU."""
    flops_per_s, how = cost.machine_flops_per_s(step_s)
    table, notes = cost_table(profile, chapters, flops_per_s)
    total = table[table.chapter == "total"].iloc[-1]
    return {"profile": profile, "runs": int(total["runs"]), "to_run": int(total["runs"] - total["in the cache"]),
            "flops_to_run": float(total["PFLOPs to run"]) * 1e15, "hours": float(total["hours here, to run"]),
            "flops_per_s": flops_per_s, "overhead": notes["overhead"], "how": how,
            "precision": resolve_precision("auto"), "cpu": cpu_model()}

