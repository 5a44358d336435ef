"""Runs as cached, self-describing units: a config in, one results file (and a checkpoint) out.

data_cache/runs/<hash>.json holds per-epoch, per-exit dev metrics, the angle log, timings and
provenance; data_cache/models/<hash>.safetensors the fine-tuned weights of single, JT and ALT runs
(single runs are the stage 1 that 2st runs start from) and, for 2st runs, their intermediate exits. A run whose results file exists is never run again, and
every file is written atomically, so an interrupted run leaves nothing half-written.
"""
from __future__ import annotations

import os
import time

import torch

from . import data as gdata
from . import head_pruning, store, theseus, train
from .config import AFTER_STAGE1, RunConfig
from .models import load_tokenizer
# the run's files and results live one layer down; runs.load_result etc. are the executor's words too
from .results import _cpu_model, _git_commit, load_result, make_result, model_path, provenance, result_path  # noqa: F401


# Full fine-tuning strategies whose weights are saved: stage 1 of 2st, and the multi-exit models
# that early exiting reuses.
KEEPS_WEIGHTS = ("single", "jt", "alt")


def note_requested(cfgs) -> None:
    """Append the hashes of the runs asked for (2st, headprune, theseus with their stage 1) to the file named by
    $ACL_RUN_LEDGER, which book/build.py sets per chapter: the book's runs can then be held against
    acllib.plan's (tests/test_book.py). A log of requests, never read as results."""
    path = os.environ.get("ACL_RUN_LEDGER")
    if not path:
        return
    lines = [h for c in cfgs for h in ((c.stage1().hash,) if c.strategy in AFTER_STAGE1 else ()) + (c.hash,)]
    with open(path, "a") as f:
        f.write("".join(h + "\n" for h in lines))


def run(cfg: RunConfig, progress: bool = True, force: bool = False) -> dict:
    """The results of `cfg`, from the cache or by running it (and, for 2st, its stage 1)."""
    note_requested([cfg])
    if not force:
        cached = load_result(cfg)
        if cached is not None:
            return cached
    if cfg.strategy == "2st":
        return run_two_stage([cfg], progress, force)[0]
    if cfg.strategy in ("headprune", "theseus"):  # both start from their CE model, passed in
        base = cfg.stage1()
        base_model = load_model(base, progress)
        td = train.load_task_data(base, load_tokenizer(base.backbone))
        result = (head_pruning if cfg.strategy == "headprune" else theseus).run(cfg, base_model, td, progress)
        store.write_json(result_path(cfg), result)
        return result
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(cfg.backbone)
    td = train.load_task_data(cfg, tokenizer)
    model = train.build_model(cfg, gdata.get_task(cfg.task).num_labels)
    log = train.train_full(cfg, model, td, progress)
    if cfg.strategy in KEEPS_WEIGHTS:  # the checkpoint first: a results file always has its weights
        store.save_tensors(model_path(cfg), model.state_dict())
    result = make_result(cfg, log, td, model, log.epochs[-1]["eval"], time.perf_counter() - t0)
    store.write_json(result_path(cfg), result)
    return result


def load_stage1(model, stage1: RunConfig) -> None:
    """Put a finished stage-1 run's backbone and last exit into a multi-exit model."""
    state = store.load_tensors(model_path(stage1))
    missing, unexpected = model.load_state_dict(state, strict=False)
    last = str(model.exit_layers[-1])
    wrong = [k for k in missing if not k.startswith("exits.") or k.split(".")[1] == last]
    if unexpected or wrong:
        raise RuntimeError(f"stage-1 checkpoint {model_path(stage1)} does not fit: "
                           f"missing {wrong[:3]}, unexpected {unexpected[:3]}")


def load_model(cfg: RunConfig, progress: bool = False):
    """The trained model of a finished run (running it first if needed): single runs from their
    checkpoint, 2st runs from stage 1's checkpoint plus their own intermediate exits."""
    run(cfg, progress)
    model = train.build_model(cfg, gdata.get_task(cfg.task).num_labels)
    if cfg.strategy == "2st":
        load_stage1(model, cfg.stage1())
        model.load_state_dict(store.load_tensors(model_path(cfg)), strict=False)
    elif cfg.strategy in KEEPS_WEIGHTS:
        if not model_path(cfg).exists():  # finished before JT/ALT weights were kept
            run(cfg, progress, force=True)
        model.load_state_dict(store.load_tensors(model_path(cfg)))
    else:
        raise ValueError(f"weights are kept for {', '.join(KEEPS_WEIGHTS)} and '2st' runs, not {cfg.strategy!r}")
    return model.eval()


def run_two_stage(cfgs: list[RunConfig], progress: bool = True, force: bool = False) -> list[dict]:
    """2st runs sharing one stage 1: it is trained (or loaded) once, the frozen backbone's features
    are computed once, and each variant trains its intermediate exits on them."""
    for _ in two_stage_each(cfgs, progress, force):
        pass
    return [load_result(c) for c in cfgs]


def two_stage_each(cfgs: list[RunConfig], progress: bool = True, force: bool = False):
    """run_two_stage, yielding each config as soon as its results are written (a sweep sends each
    back as it finishes, so an interrupted group keeps its finished variants)."""
    stage1 = cfgs[0].stage1()
    if any(c.strategy != "2st" or c.stage1() != stage1 for c in cfgs):
        raise ValueError("run_two_stage takes 2st configs that share one stage 1")
    todo = [c for c in cfgs if force or load_result(c) is None]
    if todo:
        if not model_path(stage1).exists() or load_result(stage1) is None:
            run(stage1, progress, force=True)
        r1 = load_result(stage1)
        tokenizer = load_tokenizer(stage1.backbone)
        td = train.load_task_data(stage1, tokenizer)
        t_feat = time.perf_counter()
        model = train.build_model(todo[0], gdata.get_task(stage1.task).num_labels)  # variants share its shape
        load_stage1(model, stage1)
        layers = train.freeze_for_stage2(model)
        features = train.build_features(todo[0], model, td, layers, progress)
        feature_seconds = time.perf_counter() - t_feat
        # Every variant starts from these exits (the seed's initialisation, stage 1's last exit)
        # and the seed's random stream, so its result does not depend on which variants ran before.
        start = {k: v.clone() for k, v in model.exits.state_dict().items()}
        for cfg in todo:
            t0 = time.perf_counter()
            model.exits.load_state_dict(start)
            torch.manual_seed(cfg.seed)
            log, features = train.train_stage2(cfg, model, td, features, progress)
            last = str(model.exit_layers[-1])
            for epoch in log.epochs:  # the last exit is stage 1's, unchanged by stage 2
                for split, scores in (epoch["eval"] or {}).items():
                    scores[last] = r1["final"][split][last]
            final = log.epochs[-1]["eval"]
            result = make_result(cfg, log, td, model, final, time.perf_counter() - t0,
                             stage1_hash=stage1.hash, feature_seconds=feature_seconds,
                             stage1_train_seconds=r1["train_seconds"])
            # The intermediate exits only (the rest is stage 1's checkpoint): ~1% of the model.
            store.save_tensors(model_path(cfg), {k: v for k, v in model.state_dict().items()
                                                 if k.startswith("exits.") and k.split(".")[1] != last})
            store.write_json(result_path(cfg), result)
            yield cfg


def run_many(cfgs: list[RunConfig], progress: bool = True) -> list[dict]:
    """Run (or load) many configs; 2st runs are grouped by their stage 1 so it is shared."""
    from tqdm import tqdm
    note_requested(cfgs)
    results: dict[str, dict] = {}
    groups: dict[str, list[RunConfig]] = {}
    for cfg in cfgs:
        if cfg.strategy == "2st":
            groups.setdefault(cfg.stage1().hash, []).append(cfg)
    todo = [c for c in cfgs if c.strategy != "2st"] + [g[0] for g in groups.values()]
    for cfg in tqdm(todo, desc="runs", disable=not progress):
        if cfg.strategy == "2st":
            group = groups[cfg.stage1().hash]
            for c, r in zip(group, run_two_stage(group, progress)):
                results[c.hash] = r
        else:
            results[cfg.hash] = run(cfg, progress)
    return [results[c.hash] for c in cfgs]
