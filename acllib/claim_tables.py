"""The per-seed tables the claims are judged on, built from the run cache alone.

Each table has declared columns (COLUMNS) and is built from the chapters' plans at the profile's
defaults (acllib.plan): the finished runs' results files, and measurements on their saved models
(fixed-model angles, exit representations, early-exit sweeps; each cached by the function that
makes it). Nothing here trains: a run that is not in the cache is named in `Tables.missing`, one
line each, and its rows are absent. The notebooks, the claims chapter and `python -m acllib claims`
read the same tables, so a verdict can be recomputed without executing any notebook.

The majority-class floor is one number per task and evaluation split (`majority`), from the labels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import analysis, early_exit, paper, plan, runs, train
from .config import GATE_LABELS, RunConfig, get_profile
from .results import RunResult
from .data import get_task
from .models import backbone_depth, load_tokenizer

# every table but the majority floor carries, per row, the hash of the run it comes from
COLUMNS = {
    "majority": ["task", "split", "majority"],
    "pilot_scores": ["task", "method", "seed", "score", "run"],
    # one row per measured batch; aux: the auxiliary loss whose gradient is compared with CE's
    "fixed_model_angles": ["task", "method", "aux", "seed", "batch", "angle", "run"],
    "acl_embed_angles": ["task", "seed", "step", "angle", "run"],
    "table1": ["row", "backbone", "task", "seed", "score", "run"],
    "layer_scores": ["method", "backbone", "task", "seed", "exit", "score", "run"],
    "table2": ["row", "task", "seed", "cross-layer average", "run"],
    # beyond the paper (issue #27): ACL under each gate; score: the last exit's in full fine-tuning,
    # the cross-layer average (as Table 2's) in stage 2
    "gate_controls": ["stage", "gate", "task", "seed", "score", "run"],
    "table3": ["reading", "method", "task", "lambda", "seed", "cross-layer average", "run"],
    # the t-SNE chapter's exit: its score, how well its representations separate the classes
    # (silhouette, cosine), and how its label embeddings sit against the class centroids
    "exit_representations": ["method", "task", "seed", "exit", "score", "silhouette", "label alignment", "run"],
    "early_exit": ["method", "task", "seed", "rule", "threshold", "score", "flops_fraction", "run"],
    "few_shot": ["backbone", "task", "method", "size", "size_label", "regime", "seed", "score", "run"],
}

PILOT_METHODS = {"ce": "CE", "ce+scl": "CE+SCL"}


@dataclass
class Tables:
    """The claims' tables of one profile, the runs each rests on, and what is missing."""
    profile: str
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    hashes: dict[str, list[str]] = field(default_factory=dict)  # table -> the run hashes it was built from
    missing: list[str] = field(default_factory=list)            # one line per run not in the cache

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.frames[name]

    def majority(self, task: str, split: str | None = None) -> float:
        m = self.frames.get("majority", pd.DataFrame(columns=COLUMNS["majority"]))
        m = m[(m.task == task) & ((m.split == split) if split else True)]
        return float(m.majority.iloc[0]) if len(m) else np.nan


def _frame(name: str, rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS[name]) if rows else pd.DataFrame(columns=COLUMNS[name])
    return df[COLUMNS[name]]


class _Collector:
    def __init__(self, tables: Tables):
        self.t = tables
        self._majority: dict[tuple, dict] = {}

    def result(self, table: str, cfg: RunConfig, what: str) -> RunResult | None:
        """A finished run's results, noted under `table`; None (and a line in missing) if not cached."""
        r = runs.load_result(cfg)
        if r is None:
            self.t.missing.append(f"{table}: {what} ({cfg.task}, seed {cfg.seed}) not in the cache [run {cfg.hash}]")
            return None
        self.t.hashes.setdefault(table, []).append(cfg.hash)
        return r

    def note_majority(self, cfg: RunConfig, result: RunResult) -> None:
        """The majority-class score of the run's evaluation split (from its labels), once per split."""
        split = result.eval_split
        key = (cfg.task, split)
        if key in self._majority:
            return
        td = train.load_task_data(cfg, load_tokenizer(cfg.backbone))
        labels = td.evals[next(iter(td.evals))].labels.numpy()
        self._majority[key] = {"task": cfg.task, "split": split,
                               "majority": train.majority_score(cfg.task, labels)[get_task(cfg.task).metrics[0]]}

    def majority_rows(self) -> list[dict]:
        return list(self._majority.values())


def _pilot(col: _Collector, profile: str) -> dict[str, list[dict]]:
    chapter = plan.pilot(profile)
    batches = get_profile(profile).chapter("pilot", "angle_batches")
    scores, angles, log = [], [], []
    for (m, t, s), cfg in chapter.part("fine-tune").items():
        r = col.result("pilot_scores", cfg, f"pilot {PILOT_METHODS[m]}")
        if r is None:
            continue
        col.note_majority(cfg, r)
        scores.append({"task": t, "method": PILOT_METHODS[m], "seed": s, "score": analysis.score_of(r), "run": cfg.hash})
        for i, a in enumerate(analysis.fixed_model_angles(cfg, progress=False, max_batches=batches)):
            angles.append({"task": t, "method": PILOT_METHODS[m], "aux": "scl", "seed": s, "batch": i, "angle": a, "run": cfg.hash})
    for (t, s), cfg in chapter.part("acl-embed").items():
        r = col.result("acl_embed_angles", cfg, "pilot ACL-Embed")
        if r is None:
            continue
        scores.append({"task": t, "method": "ACL-Embed", "seed": s, "score": analysis.score_of(r), "run": cfg.hash})
        log += [{"task": t, "seed": s, "step": a["step"], "angle": a["angle"], "run": cfg.hash} for a in r.angles]
        # sec. 4.3's "aligns to a certain extent": the same fixed-model measurement with ACL-Embed's loss
        for i, a in enumerate(analysis.fixed_model_angles(cfg, progress=False, max_batches=batches, aux="acl-embed")):
            angles.append({"task": t, "method": "ACL-Embed", "aux": "acl-embed", "seed": s, "batch": i, "angle": a, "run": cfg.hash})
    return {"pilot_scores": scores, "fixed_model_angles": angles, "acl_embed_angles": log}


def _table1(col: _Collector, profile: str) -> dict[str, list[dict]]:
    chapter = plan.table1(profile)
    exits = {b: {label: layer for label, (_, layer, _) in plan.table1_rows(backbone_depth(b), plan.paper_family(b)).items()}
             for b in chapter.backbones}
    rows = []
    for (label, b, t, s), cfg in chapter.part("row").items():
        r = col.result("table1", cfg, f"Table 1 {label} [{b}]")
        if r is not None:
            col.note_majority(cfg, r)
            rows.append({"row": label, "backbone": b, "task": t, "seed": s, "score": analysis.score_of(r, exits[b][label]), "run": cfg.hash})
    return {"table1": rows}


def _layer_curves(col: _Collector, profile: str) -> dict[str, list[dict]]:
    chapter = plan.layer_curves(profile)
    rows = []
    for (m, b, t, s), cfg in chapter.part("curve").items():
        r = col.result("layer_scores", cfg, f"layer curves {m} [{b}]")
        if r is not None:
            col.note_majority(cfg, r)
            rows += [{"method": m, "backbone": b, "task": t, "seed": s, "exit": int(e), "score": v, "run": cfg.hash}
                     for e, v in r.score.items()]
    return {"layer_scores": rows}


# what a gate's run is scored by, per stage (the stages of config.GATE_STAGES)
GATE_SCORES = {"full fine-tuning": analysis.score_of, "stage 2": analysis.cross_layer_average}


def _table2(col: _Collector, profile: str) -> dict[str, list[dict]]:
    chapter = plan.table2(profile)
    rows, gates = [], []
    for (row, t, s), cfg in chapter.part("row").items():
        r = col.result("table2", cfg, f"Table 2 '{row}'")
        if r is not None:
            col.note_majority(cfg, r)
            rows.append({"row": row, "task": t, "seed": s, "cross-layer average": analysis.cross_layer_average(r), "run": cfg.hash})
    for (stage, gate, t, s), cfg in chapter.part("gate").items():
        r = col.result("gate_controls", cfg, f"ACL, {stage}, gate {gate!r}")
        if r is not None:
            col.note_majority(cfg, r)
            gates.append({"stage": stage, "gate": GATE_LABELS[gate], "task": t, "seed": s,
                          "score": GATE_SCORES[stage](r), "run": cfg.hash})
    return {"table2": rows, "gate_controls": gates}


def _table3(col: _Collector, profile: str) -> dict[str, list[dict]]:
    rows = []
    for (reading, m, t, lam, s), cfg in plan.table3(profile).part("sweep").items():
        r = col.result("table3", cfg, f"Table 3 {m} λ={lam:g} ({reading})")
        if r is not None:
            col.note_majority(cfg, r)
            rows.append({"reading": reading, "method": m, "task": t, "lambda": lam, "seed": s,
                         "cross-layer average": analysis.cross_layer_average(r), "run": cfg.hash})
    return {"table3": rows}


def tsne_exit(profile: str, depth: int) -> int:
    """The exit the t-SNE chapter reads: the paper's 3rd, or the deepest intermediate one of a shallower model."""
    return min(int(paper.numbers()["tsne"]["exit"]), depth - 1)


def label_alignment(reps: np.ndarray, labels: np.ndarray, label_embeddings: np.ndarray) -> float:
    """How much closer each label embedding is (cosine) to its own class's centroid of the
    representations than to the nearest other class's, averaged over the labels: > 0 when the
    label embeddings sit with their classes (sec. 5.7's "aligned with their class")."""
    z = reps / np.linalg.norm(reps, axis=1, keepdims=True).clip(min=1e-12)
    classes = np.unique(labels)
    centroids = np.stack([z[labels == k].mean(0) for k in classes])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True).clip(min=1e-12)
    emb = label_embeddings[classes] / np.linalg.norm(label_embeddings[classes], axis=1, keepdims=True).clip(min=1e-12)
    cos = emb @ centroids.T  # [label, class]
    others = np.where(np.eye(len(classes), dtype=bool), -np.inf, cos).max(axis=1)
    return float(np.mean(np.diag(cos) - others))


def _tsne(col: _Collector, profile: str) -> dict[str, list[dict]]:
    from sklearn.metrics import silhouette_score
    chapter = plan.tsne(profile)
    layer = tsne_exit(profile, backbone_depth(chapter.backbone))
    rows = []
    for (m, s), cfg in chapter.part("model").items():
        r = col.result("exit_representations", cfg, f"t-SNE {m}")
        if r is None:
            continue
        rep = analysis.exit_representations(cfg, layer)
        labels = rep["labels"]
        sil = float(silhouette_score(rep["reps"], labels, metric="cosine")) if len(np.unique(labels)) > 1 else np.nan
        rows.append({"method": m, "task": cfg.task, "seed": s, "exit": layer, "score": rep["score"][get_task(cfg.task).metrics[0]],
                     "silhouette": sil, "label alignment": label_alignment(rep["reps"], labels, rep["label_embeddings"]),
                     "run": cfg.hash})
    return {"exit_representations": rows}


def _early_exit(col: _Collector, profile: str) -> dict[str, list[dict]]:
    rows = []
    for (m, s), cfg in plan.early_exit(profile).part("model").items():
        r = col.result("early_exit", cfg, f"early exit {m}")
        if r is None:
            continue
        col.note_majority(cfg, r)
        rows += [{"method": m, "task": cfg.task, "seed": s, "rule": x["rule"], "threshold": x["threshold"],
                  "score": x["score"], "flops_fraction": x["flops_fraction"], "run": cfg.hash} for x in early_exit.quality_rows(cfg)]
    return {"early_exit": rows}


def _few_shot(col: _Collector, profile: str) -> dict[str, list[dict]]:
    chapter = plan.few_shot(profile)
    results = {}
    for key, cfg in chapter.part("run").items():
        r = col.result("few_shot", cfg, f"few-shot {key[0]} size {key[3]}")
        if r is not None:
            col.note_majority(cfg, r)
            results[key] = r
    if not results:
        return {"few_shot": []}
    per_seed = analysis.few_shot_per_seed(chapter, results)
    per_seed["run"] = [chapter.runs[("run", *key)].hash for key in results]  # few_shot_per_seed keeps the results' order
    return {"few_shot": per_seed[COLUMNS["few_shot"]].to_dict("records")}


BUILDERS = {"01_pilot_angles": _pilot, "02_table1": _table1, "03_layer_curves": _layer_curves,
            "04_table2_ablation": _table2, "05_table3_lambda": _table3, "06_tsne": _tsne,
            "07_early_exit": _early_exit, "08_few_shot": _few_shot}


def build(profile: str, chapters=None) -> Tables:
    """Every claims table of `profile` (or of the named chapters') from the run cache; runs that are
    not there are listed in `missing`, never trained."""
    tables = Tables(profile)
    col = _Collector(tables)
    for name in plan.chapter_names(chapters):
        for table, rows in BUILDERS[name](col, profile).items():
            tables.frames[table] = _frame(table, rows)
    tables.frames["majority"] = _frame("majority", col.majority_rows())
    for name in COLUMNS:
        tables.frames.setdefault(name, _frame(name, []))
    return tables


def from_frames(profile: str, frames: dict[str, pd.DataFrame]) -> Tables:
    """Tables given directly (synthetic ones in the tests, the same columns as `build` makes)."""
    tables = Tables(profile)
    for name, cols in COLUMNS.items():
        df = frames.get(name)
        if df is not None:
            if "run" in cols and "run" not in df.columns:  # synthetic tables rest on no run
                df = df.assign(run="")
            unknown = [c for c in cols if c not in df.columns]
            if unknown:
                raise ValueError(f"table {name!r} lacks columns {unknown}; it has {list(df.columns)}")
        tables.frames[name] = df.copy() if df is not None else _frame(name, [])
    return tables
