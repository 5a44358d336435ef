"""Sweeps on a local Ray instance that each test starts (bound to 127.0.0.1) and stops: results
equal sequential runs', a worker killed mid-run has its run retried, two sweeps on one cache train
each run once."""
import os
import re
import subprocess
import sys

import pytest
import torch

from acllib import plan, runs, store
from acllib.store import REPO

ray = pytest.importorskip("ray")
CHAPTER = ["06"]  # the t-SNE chapter at smoke: 4 two-stage runs and their 4 stage 1s, seconds each


def _comparable(result):
    return {k: result[k] for k in ("final", "score", "angles")} | {
        "epochs": [{k: v for k, v in e.items() if not k.endswith("seconds")} for e in result["epochs"]]}


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ACL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _sweep(**kw):
    from acllib.sweep import sweep
    assert not ray.is_initialized()
    counts = sweep("smoke", CHAPTER, address="local", workers=2, threads=1, progress=False, **kw)
    assert not ray.is_initialized()  # the instance it started is stopped
    return counts


def test_sweep_results_equal_sequential_runs(fresh_cache, tmp_path, monkeypatch):
    planned = [c for cfgs in plan.book_plan("smoke", CHAPTER).values() for c in cfgs]
    counts = _sweep()
    assert counts == {"planned_missing": len(planned), "trained": len(planned), "skipped": 0, "failed": 0}
    swept = {c.hash: runs.load_result(c) for c in planned}
    assert all(swept.values()) and all(runs.model_path(c).exists() for c in planned)  # single and 2st keep weights
    monkeypatch.setenv("ACL_CACHE", str(tmp_path / "sequential"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each sweep task
    try:
        for c in planned:
            assert _comparable(runs.run(c, progress=False)) == _comparable(swept[c.hash]), c.hash
    finally:
        torch.set_num_threads(threads)


def test_a_worker_killed_mid_run_has_its_run_retried(fresh_cache, tmp_path, monkeypatch):
    marker = tmp_path / "crashed"
    monkeypatch.setenv("ACL_SWEEP_CRASH_ONCE", str(marker))  # the first task to start kills its worker
    counts = _sweep()
    assert marker.exists()
    assert counts["trained"] == counts["planned_missing"] and counts["failed"] == 0
    assert not list(store.cache_dir("runs").glob("*.claim"))


def test_two_sweeps_on_one_cache_train_each_run_once(fresh_cache):
    env = {**os.environ, "ACL_CACHE": str(fresh_cache), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "acllib", "sweep", "--profile", "smoke", "--chapters", *CHAPTER,
           "--address", "local", "--workers", "1", "--quiet"]
    procs = [subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    trained = [int(re.search(r"trained (\d+)", o[0]).group(1)) for o in outs]
    planned = sum(len(c) for c in plan.book_plan("smoke", CHAPTER).values())
    assert sum(trained) == planned
    assert all(runs.load_result(c) for cfgs in plan.book_plan("smoke", CHAPTER).values() for c in cfgs)
