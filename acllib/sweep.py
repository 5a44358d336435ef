"""The plan's missing runs on a Ray cluster: each run one Ray task (2st runs that share a stage 1
one task, as they share its features), stage 2 after its stage 1.

No shared filesystem is assumed: a task runs in a private temporary cache on its worker and sends
back the files a run leaves (its results and weights) through Ray's object store; the driver
writes them into its own cache, atomically, weights before results (runs.run's order). A 2st run's
task gets its stage 1's files the same way. A worker that dies mid-run has its task retried by Ray;
Ctrl-C cancels what is pending and keeps every run already written. Two sweeps on one cache do not
train a run twice: the driver claims a run (an exclusive claim file beside its results) before
submitting it, and skips runs another live driver has claimed.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from pathlib import Path

from . import plan, runs, store
from .config import AFTER_STAGE1, RunConfig


def _run_files(cfg: RunConfig) -> dict[str, bytes]:
    out = {"result": runs.result_path(cfg).read_bytes()}
    if runs.model_path(cfg).exists():
        out["weights"] = runs.model_path(cfg).read_bytes()
    return out


def _put_files(cfg: RunConfig, files: dict[str, bytes]) -> None:
    """A run's files into the current cache: weights first, so a results file always has its weights."""
    if "weights" in files:
        store._atomic(runs.model_path(cfg), lambda tmp: Path(tmp).write_bytes(files["weights"]))
    store._atomic(runs.result_path(cfg), lambda tmp: Path(tmp).write_bytes(files["result"]))


def execute(cfg_dicts: list[dict], stage1_files: dict[str, bytes] | None, threads: int) -> dict[str, dict[str, bytes]]:
    """One task, in a worker: a run, or 2st runs sharing one stage 1 (trained together, as
    runs.run_two_stage shares the frozen backbone's features), in a private cache; what they leave
    is sent back (hash -> files), not left on the worker."""
    import torch
    torch.set_num_threads(threads)
    cfgs = [RunConfig(**d) for d in cfg_dicts]
    crash = os.environ.get("ACL_SWEEP_CRASH_ONCE")  # tests: the first task to start kills its worker
    if crash and not os.path.exists(crash):
        Path(crash).write_text(cfgs[0].hash)
        os._exit(1)
    old = os.environ.get("ACL_CACHE")
    with tempfile.TemporaryDirectory(prefix="acl-sweep-") as tmp:
        os.environ["ACL_CACHE"] = tmp
        try:
            if stage1_files is not None:
                _put_files(cfgs[0].stage1(), stage1_files)
            if cfgs[0].strategy == "2st":
                runs.run_two_stage(cfgs, progress=False)
            else:
                runs.run(cfgs[0], progress=False)
            return {c.hash: _run_files(c) for c in cfgs}
        finally:
            if old is None:
                os.environ.pop("ACL_CACHE", None)
            else:
                os.environ["ACL_CACHE"] = old


def _claim_path(cfg: RunConfig) -> Path:
    return runs.result_path(cfg).with_suffix(".claim")


def _claim(cfg: RunConfig) -> bool:
    """Claim a run for this driver; False if another live driver on this host holds it."""
    path = _claim_path(cfg)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):  # being written by its holder, or left empty by a crash
                import time
                try:
                    if time.time() - path.stat().st_mtime > 60:
                        path.unlink(missing_ok=True)
                        continue
                except OSError:
                    pass
                return False
            if holder.get("host") == me["host"] and not _alive(holder.get("pid", -1)):
                path.unlink(missing_ok=True)  # its driver is gone: take it over
                continue
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _release(cfg: RunConfig) -> None:
    _claim_path(cfg).unlink(missing_ok=True)


def missing_runs(profile: str, chapters=None) -> list[RunConfig]:
    return [c for cfgs in plan.book_plan(profile, chapters).values() for c in cfgs if runs.load_result(c) is None]


def sweep(profile: str, chapters=None, address: str = "local", threads: int = 1, workers: int | None = None,
          max_retries: int = 3, progress: bool = True, configs=None) -> dict:
    """Run the plan's missing runs on Ray. address: "local" starts a Ray instance on this machine
    (bound to 127.0.0.1, `workers` CPUs, default all) and stops it after; "auto" or HOST:PORT joins a
    running cluster. Each run takes one GPU where the cluster has GPUs, `threads` CPUs otherwise.
    configs: run these instead of the plan's (the stage 1 of each 2st, headprune or theseus run among them or cached).
    Returns counts: trained here, skipped (claimed by another sweep), failed."""
    import ray
    from tqdm import tqdm

    todo = (missing_runs(profile, chapters) if configs is None
            else [c for c in configs if runs.load_result(c) is None])
    started = address == "local"
    if started:
        ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    counts = {"planned_missing": len(todo), "trained": 0, "skipped": 0, "failed": 0}
    bar = tqdm(total=len(todo), desc="sweep", unit="run", disable=not progress)
    pending: dict = {}  # ref -> the configs of its task
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        per_run = {"num_gpus": 1} if gpus else {"num_cpus": threads}
        task = ray.remote(execute).options(max_retries=max_retries, **per_run)
        # Tasks: each run, but 2st runs grouped by their stage 1; a run that starts from a stage 1
        # (2st, headprune, theseus) is submitted once its stage 1 is in the cache.
        groups: dict[str, list[RunConfig]] = {}
        for c in todo:
            if c.strategy == "2st":
                groups.setdefault(c.stage1().hash, []).append(c)
        ready: list[list[RunConfig]] = [[c] for c in todo if c.strategy not in AFTER_STAGE1]
        waiting = list(groups.values()) + [[c] for c in todo if c.strategy in AFTER_STAGE1 and c.strategy != "2st"]

        def release_waiting() -> None:
            for unit in [u for u in waiting if runs.load_result(u[0].stage1()) is not None]:
                waiting.remove(unit)
                ready.append(unit)

        failed1: set[str] = set()  # stage 1s that failed: the runs that start from them cannot run
        release_waiting()
        while ready or pending or waiting:
            for unit in ready:
                mine = [c for c in unit if _claim(c)]
                for c in [c for c in mine if runs.load_result(c) is not None]:  # finished meanwhile elsewhere
                    _release(c)
                    mine.remove(c)
                counts["skipped"] += len(unit) - len(mine)
                bar.update(len(unit) - len(mine))
                if not mine:
                    continue
                files1 = _run_files(mine[0].stage1()) if mine[0].strategy in AFTER_STAGE1 else None
                pending[task.remote([c.to_dict() for c in mine], files1, threads)] = mine
            ready = []
            if not pending:
                release_waiting()
                if not ready:  # their stage 1s failed here, or are held by another sweep: leave them
                    for g in waiting:
                        counts["failed" if g[0].stage1().hash in failed1 else "skipped"] += len(g)
                        bar.update(len(g))
                    break
                continue
            finished, _ = ray.wait(list(pending), num_returns=1)
            for ref in finished:
                unit = pending.pop(ref)
                try:
                    files = ray.get(ref)
                    for c in unit:
                        _put_files(c, files[c.hash])
                    counts["trained"] += len(unit)
                except Exception as err:  # a task that fails for good: say which, keep going
                    counts["failed"] += len(unit)
                    failed1.update(c.hash for c in unit if c.strategy not in AFTER_STAGE1)
                    text = str(err).strip()
                    print(f"run {unit[0].hash}{' and its group' if len(unit) > 1 else ''} failed: "
                          f"{text.splitlines()[-1] if text else type(err).__name__}", file=sys.stderr)
                finally:
                    for c in unit:
                        _release(c)
                bar.update(len(unit))
            release_waiting()
    except KeyboardInterrupt:
        for ref, unit in pending.items():
            ray.cancel(ref, force=True)
            for c in unit:
                _release(c)
        raise
    finally:
        bar.close()
        if started:
            ray.shutdown()
    return counts
