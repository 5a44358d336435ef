"""The plan's missing runs on a Ray cluster: each run one Ray task (2st runs that share a stage 1
one task, as they share its features, each run sent back as it finishes), stage 2 after its stage 1.

No shared filesystem is assumed: a task runs in a private temporary cache on its worker and sends
back the files a run leaves (its results and weights) through Ray's object store (a worker keeps
only its tokenized splits, for its next task); the driver
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

from tqdm import tqdm

from . import plan, runs, store, strategies
from .config import RunConfig
from .cost import set_flops


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


_WORKER_TOKENIZED: tempfile.TemporaryDirectory | None = None  # this worker's tokenized splits


def _share_tokenized(cache: str) -> None:
    """Give a task's private cache this worker's tokenized splits (a link), so a worker tokenizes
    a split once, not once per run: tokenizing SST-2 again took 4.2 s of a cpu run's 4-5 s outside
    its training and evaluation (fast kind, 1 thread; f49c6c6's cold book). A split's file is named by its source, task,
    split, tokenizer and length (data.encode_split), so any run may read any; a worker runs one task
    at a time, and the folder goes with the worker process (TemporaryDirectory's finalizer)."""
    global _WORKER_TOKENIZED
    if _WORKER_TOKENIZED is None:
        _WORKER_TOKENIZED = tempfile.TemporaryDirectory(prefix="acl-sweep-tokenized-")
    os.symlink(_WORKER_TOKENIZED.name, Path(cache) / "tokenized", target_is_directory=True)


def execute(cfg_dicts: list[dict], stage1_files: dict[str, bytes] | None, threads: int,
            pair_files: list[tuple[dict, dict[str, bytes]]] | None = None):
    """One task, in a worker (a Ray generator task): a run, or 2st runs sharing one stage 1 (trained
    together, as runs.run_group shares the frozen backbone's features), in a private cache.
    stage1_files: its stage 1's files; pair_files: (config, files) of the Eq. 4 runs its random
    gates read. Yields (hash, files) for each run as it finishes, so the driver writes it at once and an
    interrupted or failed group keeps its finished runs; nothing of a run is left on the worker (it
    keeps its tokenized splits for its next task: _share_tokenized)."""
    import torch
    torch.set_num_threads(threads)
    cfgs = [RunConfig(**d) for d in cfg_dicts]
    old = os.environ.get("ACL_CACHE")
    with tempfile.TemporaryDirectory(prefix="acl-sweep-") as tmp:
        os.environ["ACL_CACHE"] = tmp
        try:
            _share_tokenized(tmp)
            if stage1_files is not None:
                _put_files(cfgs[0].stage1(), stage1_files)
            for d, files in pair_files or []:
                _put_files(RunConfig(**d), files)
            if strategies.get(cfgs[0].strategy).shares_stage1:
                for c in runs.group_each(cfgs, progress=False):
                    yield c.hash, _run_files(c)
            else:
                runs.run(cfgs[0], progress=False)
                yield cfgs[0].hash, _run_files(cfgs[0])
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


TIMINGS = store.REPO / "benchmarks" / "records" / "ray_vs_sequential.json"


def whole_book_timing(records: list[dict] | None = None) -> dict | None:
    """The newest Ray-against-sequential measurement of the cpu book's whole plan (every current
    chapter, every seed; benchmarks/ray_vs_sequential.py), or None."""
    records = json.loads(TIMINGS.read_text()) if records is None and TIMINGS.exists() else records or []
    book = [n.split("_")[0] for n in plan.chapter_names()]
    whole = [r for r in records if r["profile"] == "cpu" and r["chapters"] == book and not r["seeds"]]
    return whole[-1] if whole else None


def faster_way(timing: dict) -> str:
    """The issue's rule: `make book` trains the way that took less time ("ray" or "sequential")."""
    return "ray" if timing["ray_over_sequential"] < 1 else "sequential"


def missing_runs(profile: str, chapters=None) -> list[RunConfig]:
    return [c for cfgs in plan.book_plan(profile, chapters).values() for c in cfgs if runs.load_result(c) is None]


_NO_CLUSTER = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _restore_cluster_mode(saved: tuple) -> None:
    from ray._private import ray_constants
    if saved[0] is None:
        os.environ.pop(_NO_CLUSTER, None)
    else:
        os.environ[_NO_CLUSTER] = saved[0]
    ray_constants.ENABLE_RAY_CLUSTER = saved[1]


def _reload_ray_config() -> None:
    """Ray reads RAY_AUTH_MODE into its cached config when it is first imported: a change made
    later is seen only after the config is initialised again (as Ray's own _enable_token_auth does),
    and the token loader reads its file again after a reset."""
    from ray._raylet import AuthenticationTokenLoader, Config
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _restore_join(saved_env: dict, saved_mode: tuple) -> None:
    for k, v in saved_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _restore_cluster_mode(saved_mode)
    _reload_ray_config()


def auth_token_source() -> str | None:
    """Where Ray would read its token, in Ray's order (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, then
    ~/.ray/auth_token), or None when there is none here."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return os.environ["RAY_AUTH_TOKEN_PATH"]
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


NO_TOKEN = ("no Ray auth token on this machine (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token): a head "
            "started by `ray start` (Ray >= 2.59) refuses it; copy the head's token here (`ray get-auth-token` there)")


def _join_environment(address: str) -> dict[str, str]:
    """What a driver must set to join a running cluster, as Ray 2.60 behaves (issue #26):
    - RAY_AUTH_MODE=token where this machine has a token and the variable is unset. `ray start`
      turns token authentication on for the cluster it starts, but a driver that joins by address
      reads RAY_AUTH_MODE only and sends no token without it: the head answers InvalidAuthToken until
      the connection gives up, even with the token at its default path. A head without
      authentication accepts a driver that sends one (checked), so sending it is always safe.
    - cluster mode off where the head is on this machine's loopback: Ray rewrites 127.0.0.1 to the
      machine's reachable address, where a head bound to loopback (as tests bind theirs) does not
      listen; a head bound to every interface answers on loopback too (checked)."""
    env = {}
    if "RAY_AUTH_MODE" not in os.environ and auth_token_source() is not None:
        env["RAY_AUTH_MODE"] = "token"
    host = address.rsplit(":", 1)[0] if ":" in address else address
    if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        env[_NO_CLUSTER] = "0"
    return env


# How much the estimate printed before a sweep counts in its bar's ETA: as much as this many seconds
# of the sweep's own progress (so the ETA starts at the estimate, weighs both equally at 10 minutes,
# and follows the measured rate after that)
PRIOR_WEIGHT_S = 600.0


def eta_seconds(done: float, total: float, elapsed: float, prior_rate: float | None = None,
                weight_s: float = PRIOR_WEIGHT_S) -> float | None:
    """Seconds left for a sweep that has trained `done` of its `total` planned FLOPs in `elapsed`
    seconds: the FLOPs left over the rate so far pooled with the estimate's rate (`prior_rate`,
    FLOPs per second) as if that had been observed over `weight_s` seconds. Without an estimate, the
    rate so far (None before the first run is back). Runs differ 100x in cost, so FLOPs, not runs."""
    if prior_rate:
        rate = (done + prior_rate * weight_s) / (elapsed + weight_s)
    elif done > 0 and elapsed > 0:
        rate = done / elapsed
    else:
        return None
    return max(0.0, total - done) / rate


def _sweep_bar(prior_rate: float | None, **kwargs):
    """A tqdm bar over planned TFLOPs whose ETA is eta_seconds (the field {eta} of its format)."""

    class SweepBar(tqdm):
        @property
        def format_dict(self):
            d = super().format_dict
            left = eta_seconds(d["n"], d["total"], d["elapsed"], prior_rate)
            return {**d, "eta": "?" if left is None else tqdm.format_interval(left)}

    return SweepBar(**kwargs)


def sweep(profile: str, chapters=None, address: str = "local", threads: int = 1, workers: int | None = None,
          max_retries: int = 3, progress: bool = True, configs=None, prior_flops_per_s: float | None = None) -> dict:
    """Run the plan's missing runs on Ray. address: "local" starts a Ray instance on this machine
    (bound to 127.0.0.1, `workers` CPUs, default all) and stops it after; "auto" or HOST:PORT joins a
    running cluster. Each run takes one GPU where the cluster has GPUs, `threads` CPUs otherwise.
    configs: run these instead of the plan's (the stage 1 of each 2st, headprune or theseus run among them or cached).
    prior_flops_per_s: the training rate the printed estimate assumed (plan.build_estimate's
    flops_per_s / overhead), which the bar's ETA starts from (eta_seconds).
    Returns counts: trained here, skipped (claimed by another sweep), failed."""
    import ray

    todo = (missing_runs(profile, chapters) if configs is None
            else [c for c in configs if runs.load_result(c) is None])
    started = address == "local"
    if started:
        # Ray replaces a node address of 127.0.0.1 by the machine's reachable one and then listens
        # there and on all interfaces; with its cluster mode off (the variable's name says Windows
        # and macOS, where that is the default) every process of the instance binds to 127.0.0.1
        # (tests/test_sweep.py checks the sockets). Undone after, so a later sweep can join a cluster.
        from ray._private import ray_constants
        saved = os.environ.get(_NO_CLUSTER), ray_constants.ENABLE_RAY_CLUSTER
        os.environ[_NO_CLUSTER], ray_constants.ENABLE_RAY_CLUSTER = "0", False
        try:
            # address="local": a new instance even where `ray start` left a cluster (or a stale
            # /tmp/ray/ray_current_cluster) that ray.init() would otherwise join
            _reload_ray_config()  # the token and auth mode as the environment has them now
            ray.init(address="local", num_cpus=workers or os.cpu_count(), include_dashboard=False,
                     _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
        except BaseException:
            _restore_cluster_mode(saved)
            raise
    else:
        joining = _join_environment(address)
        if "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_MODE" not in joining:
            print(f"warning: {NO_TOKEN}", file=sys.stderr)
        from ray._private import ray_constants
        saved_env = {k: os.environ.get(k) for k in joining}
        saved = os.environ.get(_NO_CLUSTER), ray_constants.ENABLE_RAY_CLUSTER
        os.environ.update(joining)
        if _NO_CLUSTER in joining:
            ray_constants.ENABLE_RAY_CLUSTER = False
        _reload_ray_config()
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except BaseException as err:
            _restore_join(saved_env, saved)
            if isinstance(err, ConnectionError):
                raise ConnectionError(f"could not join the Ray cluster at {address!r}: {str(err).strip()}"
                                      + ("" if auth_token_source() else f"; {NO_TOKEN}")) from err
            raise
    counts = {"planned_missing": len(todo), "trained": 0, "skipped": 0, "failed": 0}
    held: dict[str, RunConfig] = {}  # this driver's claims, all released on the way out

    def claim(c: RunConfig) -> bool:
        if _claim(c):
            held[c.hash] = c
            return True
        return False

    def release(c: RunConfig) -> None:
        _release(c)
        held.pop(c.hash, None)

    # The bar counts planned training FLOPs (runs differ in cost by 100x: a count of runs gives no
    # ETA until many are done), its ETA from the estimate pooled with the rate so far (eta_seconds);
    # runs in the postfix.
    tflops = {h: x["flops"] / 1e12 for h, x in set_flops(todo).items()}  # a 2st group's features once
    bar = _sweep_bar(None if prior_flops_per_s is None else prior_flops_per_s / 1e12,
                     total=sum(tflops.values()), desc="sweep", unit="TFLOP", disable=not progress, dynamic_ncols=True,
                     bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} TFLOP [{elapsed}<{eta}{postfix}]")
    done = {"runs": 0}

    def advance(cs) -> None:
        done["runs"] += len(cs)
        bar.set_postfix_str(f"runs {done['runs']}/{len(todo)}", refresh=False)
        # no further than the total: float sums in another order overshoot it by an ulp (tqdm warns)
        bar.update(min(sum(tflops.get(c.hash, 0.0) for c in cs), bar.total - bar.n))
    pending: dict = {}  # task (a generator of refs) -> its runs not yet sent back, by hash
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        per_run = {"num_gpus": 1} if gpus else {"num_cpus": threads}
        task = ray.remote(execute).options(max_retries=max_retries, **per_run)
        # Tasks: each run, but 2st runs grouped by their stage 1; a task is submitted once what its
        # runs need is in the cache: the stage 1 they start from (2st, headprune, theseus), the Eq. 4
        # pair a random gate reads (a 2st group trains a pair among its own runs first itself).
        groups: dict[str, list[RunConfig]] = {}
        for c in todo:
            if strategies.get(c.strategy).shares_stage1:
                groups.setdefault(c.stage1().hash, []).append(c)
        ready: list[list[RunConfig]] = []
        waiting = [[c] for c in todo if not strategies.get(c.strategy).shares_stage1] + list(groups.values())

        def needs(unit: list[RunConfig]) -> list[RunConfig]:
            own = {c.hash for c in unit}  # a group's stage 1 first (its runs share one), then the rest
            needed = {n.hash: n for c in unit for n in strategies.prerequisites(c) if n.hash not in own}
            return list(needed.values())

        def release_waiting() -> None:
            for unit in [u for u in waiting if all(runs.load_result(n) is not None for n in needs(u))]:
                waiting.remove(unit)
                ready.append(unit)

        failed1: set[str] = set()  # runs that failed: the runs that need them cannot run
        release_waiting()
        while ready or pending or waiting:
            for unit in ready:
                mine = [c for c in unit if claim(c)]
                for c in [c for c in mine if runs.load_result(c) is not None]:  # finished meanwhile elsewhere
                    release(c)
                    mine.remove(c)
                own = {c.hash for c in mine}
                for c in [c for c in mine if (p := c.gate_pair()) is not None and p.hash not in own
                          and runs.load_result(p) is None]:  # its pair is held by another sweep, unfinished
                    release(c)
                    mine.remove(c)
                counts["skipped"] += len(unit) - len(mine)
                advance([c for c in unit if c not in mine])
                if not mine:
                    continue
                needs1 = strategies.get(mine[0].strategy).needs_stage1
                files1 = _run_files(mine[0].stage1()) if needs1 else None
                pairs = [(n.to_dict(), {"result": runs.result_path(n).read_bytes()}) for n in needs(mine)[int(needs1):]]
                pending[task.remote([c.to_dict() for c in mine], files1, threads, pairs)] = {c.hash: c for c in mine}
            ready = []
            if not pending:
                release_waiting()
                if not ready:  # their stage 1s failed here, or are held by another sweep: leave them
                    for g in waiting:
                        counts["failed" if any(n.hash in failed1 for n in needs(g)) else "skipped"] += len(g)
                        advance(g)
                    break
                continue
            finished, _ = ray.wait(list(pending), num_returns=1)
            for gen in finished:
                left = pending[gen]
                try:
                    key, files = ray.get(next(gen))
                    if key in left:  # a retried task sends again what its first attempt sent: written once
                        _put_files(left[key], files)
                        c = left.pop(key)
                        release(c)
                        counts["trained"] += 1
                        advance([c])
                    if not left:  # every run is back: done with it (not waiting on its end of stream)
                        del pending[gen]
                except StopIteration:
                    del pending[gen]
                    why = "its task ended without it"
                except Exception as err:  # a task that fails for good, or a write that failed: say which, go on
                    del pending[gen]
                    try:
                        ray.cancel(gen, force=True)  # no one reads it any more
                    except Exception:
                        pass
                    text = str(err).strip()
                    why = text.splitlines()[-1] if text else type(err).__name__
                else:
                    continue
                if left:  # the task ended (or failed) without sending these: they failed
                    counts["failed"] += len(left)
                    failed1.update(left)
                    print(f"run {next(iter(left))}{f' and {len(left) - 1} more of its group' if len(left) > 1 else ''} "
                          f"failed: {why}", file=sys.stderr)
                    for c in list(left.values()):
                        release(c)
                    advance(list(left.values()))
            release_waiting()
    except KeyboardInterrupt:
        for gen in pending:
            ray.cancel(gen, force=True)  # the runs already sent back are written and kept
        raise
    finally:
        for c in list(held.values()):
            release(c)
        bar.close()
        ray.shutdown()  # a joined cluster goes on: only this driver leaves it
        if started:
            _restore_cluster_mode(saved)
        else:
            _restore_join(saved_env, saved)
    return counts
