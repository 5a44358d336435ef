"""The executor: runs as cached, self-describing units, a config in, one results file (and a
checkpoint) out. A run found in the cache is returned; otherwise its stage 1 is run first where its
strategy needs one, then its strategy (acllib/strategies/) trains it, and its files are written.

data_cache/runs/<hash>.json holds per-epoch, per-exit dev metrics, the angle log, timings and
provenance; data_cache/models/<hash>.safetensors the fine-tuned weights of single, JT and ALT runs
(single runs are the stage 1 that 2st runs start from) and, for 2st runs, their intermediate exits. A run whose results file exists is never run again, and
every file is written atomically, so an interrupted run leaves nothing half-written.
"""
from __future__ import annotations

import os

from . import data as gdata
from . import store, strategies, train
from .config import RunConfig
from .models import load_tokenizer
# the run's files and results live one layer down; runs.load_result etc. are the executor's words too
from .results import RunResult, load_result, model_path, result_path


def note_requested(cfgs) -> None:
    """Append the hashes of the runs asked for (with their prerequisites: stage 1s, random gates' pairs) to the file named by
    $ACL_RUN_LEDGER, which book/build.py sets per chapter: the book's runs can then be held against
    acllib.plan's (tests/test_book.py). A log of requests, never read as results."""
    path = os.environ.get("ACL_RUN_LEDGER")
    if not path:
        return
    lines = [n.hash for c in cfgs for n in strategies.prerequisites(c) + [c]]
    with open(path, "a") as f:
        f.write("".join(h + "\n" for h in lines))


def run(cfg: RunConfig, progress: bool = True, force: bool = False) -> RunResult:
    """The results of `cfg`, from the cache or by running it: its stage 1 first where its strategy
    starts from one, then the strategy, then its weights (first: a results file always has its
    weights) and its results, atomically."""
    note_requested([cfg])
    if not force:
        cached = load_result(cfg)
        if cached is not None:
            return cached
    strategy = strategies.get(cfg.strategy)
    if strategy.shares_stage1:
        return run_group([cfg], progress, force)[0]
    for needed in strategies.prerequisites(cfg):  # its stage 1, a random gate's Eq. 4 pair
        run(needed, progress)
    stage1 = None
    if strategy.needs_stage1:  # its stage 1's trained model and task data
        base = cfg.stage1()
        stage1 = (load_model(base, progress), train.load_task_data(base, load_tokenizer(base.backbone)))
    result, weights = strategy.train(cfg, progress, stage1)
    if weights is not None:
        store.save_tensors(model_path(cfg), weights)
    store.write_json(result_path(cfg), result.to_dict())
    return load_result(cfg)  # as every later reader sees it: the file, through JSON


def load_model(cfg: RunConfig, progress: bool = False):
    """The trained model of a finished run (running it first if needed), as its strategy keeps it:
    full fine-tunes from their checkpoint, 2st runs from stage 1's plus their own exits."""
    run(cfg, progress)
    strategy = strategies.get(cfg.strategy)
    if strategy.keeps_weights and not model_path(cfg).exists():  # finished before JT/ALT weights were kept
        run(cfg, progress, force=True)
    model = strategies.build_model(cfg, gdata.get_task(cfg.task).num_labels)
    strategy.load(cfg, model)
    return model.eval()


def run_group(cfgs: list[RunConfig], progress: bool = True, force: bool = False) -> list[RunResult]:
    """Runs whose strategy shares its stage 1 (2st), all of one stage 1: it is trained (or loaded)
    once, and the strategy trains every run on it (2st: on one set of frozen features)."""
    for _ in group_each(cfgs, progress, force):
        pass
    return [load_result(c) for c in cfgs]


def group_each(cfgs: list[RunConfig], progress: bool = True, force: bool = False):
    """run_group, yielding each config as soon as its results are written (a sweep sends each
    back as it finishes, so an interrupted group keeps its finished runs)."""
    stage1 = cfgs[0].stage1()
    strategy = strategies.get(cfgs[0].strategy)
    if not strategy.shares_stage1 or any(c.strategy != cfgs[0].strategy or c.stage1() != stage1 for c in cfgs):
        raise ValueError("a group takes runs of one strategy whose runs share a stage 1, all of one stage 1")
    todo = [c for c in cfgs if force or load_result(c) is None]
    # a random gate's Eq. 4 pair (same stage 1) trains before it, in this group if it has not run
    pairs = [p for c in todo if (p := c.gate_pair()) is not None and load_result(p) is None]
    todo = sorted(dict.fromkeys(pairs + todo), key=lambda c: c.gate_pair() is not None)
    if todo:
        if not model_path(stage1).exists() or load_result(stage1) is None:
            run(stage1, progress, force=True)
        for cfg, result, weights in strategy.train_group(todo, progress, load_result(stage1)):
            store.save_tensors(model_path(cfg), weights)
            store.write_json(result_path(cfg), result.to_dict())
            yield cfg


def run_many(cfgs: list[RunConfig], progress: bool = True) -> list[RunResult]:
    """Run (or load) many configs; runs that share a stage 1 (2st) are grouped so it is shared."""
    from tqdm import tqdm
    note_requested(cfgs)
    results: dict[str, RunResult] = {}
    groups: dict[str, list[RunConfig]] = {}
    shared = {c.hash for c in cfgs if strategies.get(c.strategy).shares_stage1}
    for cfg in cfgs:
        if cfg.hash in shared:
            groups.setdefault(cfg.stage1().hash, []).append(cfg)
    todo = [c for c in cfgs if c.hash not in shared] + [g[0] for g in groups.values()]
    for cfg in tqdm(todo, desc="runs", disable=not progress):
        if cfg.hash in shared:
            group = groups[cfg.stage1().hash]
            for c, r in zip(group, run_group(group, progress)):
                results[c.hash] = r
        else:
            results[cfg.hash] = run(cfg, progress)
    return [results[c.hash] for c in cfgs]
