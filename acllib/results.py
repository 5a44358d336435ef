"""A run's files, at the bottom of the package: where its results and weights live, reading them
back (a damaged file reported once and treated as missing), and the one results record every
strategy returns (RunResult, made by make_result), with its provenance. No training here: runs.py
executes, the strategies train, and everything reads and writes results through this module.
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from . import data as gdata
from . import store
from .config import RunConfig


@dataclass
class RunResult:
    """One finished run: what runs/<hash>.json holds, each key an attribute (the file's layout is
    to_dict's: these fields, then the strategy's extras at the same level)."""
    hash: str
    config: dict[str, Any]                      # the run's RunConfig.to_dict() (run_config: the object)
    headline_metric: str                        # the task's first metric: what `score` holds
    eval_split: str                             # the split `score` is measured on
    score: dict[str, float]                     # headline metric per exit layer ("6": 91.2), on eval_split
    final: dict[str, dict[str, dict[str, float]]]  # split -> exit layer -> metric -> value, after training
    epochs: list[dict[str, Any]]                # train.FitLog.epochs: loss, seconds, evaluation per epoch
    angles: list[dict[str, Any]]                # measured gradient angles: epoch, step, angle, lam used
    n_train: int
    n_eval: dict[str, int]                      # examples per evaluation split
    missing_eval_splits: list[str]
    train_seconds: float                        # the training steps alone
    train_examples_per_s: float | None
    total_seconds: float                        # the whole run: data, training, evaluation
    params: dict[str, float]                    # MultiExitModel.parameter_report()
    provenance: dict[str, Any]                  # where and with what it ran (provenance())
    # what a strategy adds: 2st its stage1_hash, feature_seconds, stage1_train_seconds; head pruning
    # its path and importances; Theseus its schedule
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def run_config(self) -> RunConfig:
        return RunConfig(**self.config)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extras"}
        clash = set(out) & set(self.extras)
        if clash:
            raise ValueError(f"extras {sorted(clash)} would overwrite fields of RunResult")
        return {**out, **self.extras}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunResult":
        names = [f.name for f in fields(cls) if f.name != "extras"]
        missing = [n for n in names if n not in d]
        if missing:
            raise KeyError(f"a run's results lack {missing}")
        return cls(**{n: d[n] for n in names}, extras={k: v for k, v in d.items() if k not in names})


def result_path(cfg: RunConfig) -> Path:
    return store.cache_dir("runs") / f"{cfg.hash}.json"


def model_path(cfg: RunConfig) -> Path:
    return store.cache_dir("models") / f"{cfg.hash}.safetensors"


def load_result(cfg: RunConfig) -> RunResult | None:
    """The finished run's results, or None. A file that does not parse (cut short by something other
    than our atomic writes, e.g. a copy) or that holds another config than its name's hash is
    reported in one line and treated as missing, so the run is done again and the file replaced."""
    path = result_path(cfg)
    if not path.exists():
        return None
    try:
        result = RunResult.from_dict(store.read_json(path))
        ok = result.hash == cfg.hash and result.run_config.hash == cfg.hash
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


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=store.REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        # --no-optional-locks: status then never writes .git/index.lock, which two runs finishing at
        # once (or one killed by the timeout) left behind, blocking the user's next git command
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--", "acllib"],
                               cwd=store.REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
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
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # train.device()
    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "datasets": datasets.__version__,
        "numpy": numpy.__version__, "acllib_commit": git_commit(),
        "device": str(dev), "device_name": torch.cuda.get_device_name() if dev.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "precision": cfg.precision,
        "glue_source": gdata.glue_source(), "finished_at": datetime.datetime.now(datetime.UTC).isoformat(),
    }


def make_result(cfg: RunConfig, log, td, model, final: dict, seconds: float, **extra) -> RunResult:
    """The results of a run: `log` its train.FitLog, `td` its train.TaskData, `model` as trained,
    `final` its dev scores per split and exit; `extra` what the strategy adds (its stage 1's hash ...)."""
    task = gdata.get_task(cfg.task)
    primary = next(iter(td.evals))
    return RunResult(
        hash=cfg.hash, config=cfg.to_dict(),
        headline_metric=task.metrics[0], eval_split=primary,
        score={m: v[task.metrics[0]] for m, v in final[primary].items()},
        final=final, epochs=log.epochs, angles=log.angles,
        n_train=len(td.train), n_eval={s: len(d) for s, d in td.evals.items()},
        missing_eval_splits=td.missing_eval_splits,
        train_seconds=log.train_seconds,
        train_examples_per_s=log.train_examples / log.train_seconds if log.train_seconds else None,
        total_seconds=seconds, params=model.parameter_report(),
        provenance=provenance(cfg), extras=extra)
