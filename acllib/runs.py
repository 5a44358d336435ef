"""Runs as cached, self-describing units: a config in, one results file (and a checkpoint) out.

data_cache/runs/<hash>.json holds per-epoch, per-exit dev metrics, the angle log, timings and
provenance; data_cache/models/<hash>.safetensors the fine-tuned weights of single, JT and ALT runs
(single runs are the stage 1 that 2st runs start from) and, for 2st runs, their intermediate exits. A run whose results file exists is never run again, and
every file is written atomically, so an interrupted run leaves nothing half-written.
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import data as gdata
from . import store, train
from .config import AFTER_STAGE1, RunConfig
from .models import load_tokenizer


# Full fine-tuning strategies whose weights are saved: stage 1 of 2st, and the multi-exit models
# that early exiting reuses.
KEEPS_WEIGHTS = ("single", "jt", "alt")


def result_path(cfg: RunConfig) -> Path:
    return store.cache_dir("runs") / f"{cfg.hash}.json"


def model_path(cfg: RunConfig) -> Path:
    return store.cache_dir("models") / f"{cfg.hash}.safetensors"


def load_result(cfg: RunConfig) -> dict | None:
    """The finished run's results, or None. A file that does not parse (cut short by something other
    than our atomic writes, e.g. a copy) or that holds another config than its name's hash is
    reported in one line and treated as missing, so the run is done again and the file replaced."""
    path = result_path(cfg)
    if not path.exists():
        return None
    try:
        result = store.read_json(path)
        ok = result.get("hash") == cfg.hash and RunConfig(**result["config"]).hash == cfg.hash
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except OSError:  # gone meanwhile
            key = (str(path), -1)
        if key not in _REPORTED:  # once per damaged file, though a sweep looks at it many times
            _REPORTED.add(key)
            print(f"warning: {path} is not the complete result of run {cfg.hash} (unreadable, or another config); "
                  "it is ignored and the run will be done again", file=sys.stderr)
        return None
    return result


_REPORTED: set[tuple[str, int]] = set()


def _git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=store.REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "acllib"], cwd=store.REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def provenance(cfg: RunConfig) -> dict:
    import datasets
    import numpy
    import transformers
    dev = train.device()
    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "datasets": datasets.__version__,
        "numpy": numpy.__version__, "acllib_commit": _git_commit(),
        "device": str(dev), "device_name": torch.cuda.get_device_name() if dev.type == "cuda" else _cpu_model(),
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "precision": cfg.precision,
        "glue_source": gdata.glue_source(), "finished_at": datetime.datetime.now(datetime.UTC).isoformat(),
    }


def _result(cfg: RunConfig, log: train.FitLog, td: train.TaskData, model, final: dict,
            seconds: float, **extra) -> dict:
    task = gdata.get_task(cfg.task)
    primary = next(iter(td.evals))
    return {
        "hash": cfg.hash, "config": cfg.to_dict(), **extra,
        "headline_metric": task.metrics[0], "eval_split": primary,
        "score": {m: v[task.metrics[0]] for m, v in final[primary].items()},
        "final": final, "epochs": log.epochs, "angles": log.angles,
        "n_train": len(td.train), "n_eval": {s: len(d) for s, d in td.evals.items()},
        "missing_eval_splits": td.missing_eval_splits,
        "train_seconds": log.train_seconds,
        "train_examples_per_s": log.train_examples / log.train_seconds if log.train_seconds else None,
        "total_seconds": seconds, "params": model.parameter_report(),
        "provenance": provenance(cfg),
    }


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
    if cfg.strategy in ("headprune", "theseus"):
        from . import head_pruning, theseus
        result = (head_pruning if cfg.strategy == "headprune" else theseus).run(cfg, progress)
        store.write_json(result_path(cfg), result)
        return result
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(cfg.backbone)
    td = train.load_task_data(cfg, tokenizer)
    model = train.build_model(cfg, gdata.get_task(cfg.task).num_labels)
    log = train.train_full(cfg, model, td, progress)
    if cfg.strategy in KEEPS_WEIGHTS:  # the checkpoint first: a results file always has its weights
        store.save_tensors(model_path(cfg), model.state_dict())
    result = _result(cfg, log, td, model, log.epochs[-1]["eval"], time.perf_counter() - t0)
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
            result = _result(cfg, log, td, model, final, time.perf_counter() - t0,
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
