"""Sweeps on a local Ray instance that each test starts (bound to 127.0.0.1) and stops: results
equal sequential runs', a worker the test kills mid-run has its run retried, Ctrl-C keeps every
finished run, a damaged results file is reported once and swept again, two sweeps on one cache train
each run once."""
import json
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
    return {"final": result.final, "score": result.score, "angles": result.angles,
            "epochs": [{k: v for k, v in e.items() if not k.endswith("seconds")} for e in result.epochs]}


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


def _our_workers_running_a_task() -> list:
    """The Ray workers of an instance this test started (descendants of this process, so no other
    Ray on the machine is touched) that are running a task: Ray titles them ray::execute."""
    import psutil
    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if " ".join(proc.cmdline()).startswith("ray::execute"):
                out.append(proc)
        except psutil.Error:
            pass
    return out


GROUP_STAGE2_EPOCHS = 60  # a stage 2 of seconds, so that a kill or Ctrl-C lands inside the group


def _group() -> list:
    """A stage 1 and the 2st runs that share it, which a sweep trains as one task: Table 2's rows on
    a CE backbone."""
    from acllib.config import TABLE2_ROWS, make_config
    variants = [make_config("smoke", "rte", strategy="2st", seed=1, stage2_epochs=GROUP_STAGE2_EPOCHS, **row)
                for row in TABLE2_ROWS.values() if row["method"] == "ce"][:3]
    assert len(variants) == 3 and len({c.stage1().hash for c in variants}) == 1
    return [variants[0].stage1(), *variants]


def test_a_worker_killed_inside_a_group_keeps_its_finished_runs_and_the_retry_does_the_rest(fresh_cache):
    """The test kills the worker of a 2st group once the group's first run is back: that run is kept
    (written once, before the kill), Ray retries the task, the others are written after. Meanwhile
    it checks that the Ray instance listens on 127.0.0.1 only."""
    import threading
    import time
    import psutil
    from acllib.sweep import sweep
    group = _group()
    variants = group[1:]
    state, listening, stop = {}, set(), threading.Event()

    def kill_when_the_first_run_is_back():
        deadline = time.monotonic() + 300
        while not stop.is_set() and time.monotonic() < deadline:
            if any(runs.result_path(c).exists() for c in variants):
                for p in [psutil.Process(), *psutil.Process().children(recursive=True)]:
                    try:
                        listening.update(c.laddr.ip for c in p.net_connections(kind="inet")
                                         if c.status == psutil.CONN_LISTEN)
                    except psutil.Error:
                        pass
                for proc in _our_workers_running_a_task():  # the group's, the only task left
                    state["killed_at"] = time.time_ns()
                    proc.kill()
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_the_first_run_is_back)
    killer.start()
    try:
        counts = sweep("smoke", address="local", workers=2, threads=1, progress=False, configs=group)
    finally:
        stop.set()
        killer.join()
    assert "killed_at" in state, "the group's worker was not seen running"
    assert counts == {"planned_missing": 4, "trained": 4, "skipped": 0, "failed": 0}
    written = {c.hash: runs.result_path(c).stat().st_mtime_ns for c in variants}
    before = [h for h, t in written.items() if t < state["killed_at"]]
    assert 1 <= len(before) < len(variants), written  # kept from the first attempt, the rest retried
    assert all(runs.load_result(c) and runs.model_path(c).exists() for c in group)
    assert not list(store.cache_dir("runs").glob("*.claim"))
    assert listening and {ip.removeprefix("::ffff:") for ip in listening} <= {"127.0.0.1"}, listening  # this machine only


def test_ctrl_c_keeps_every_finished_run_and_a_sweep_finishes_the_rest(fresh_cache):
    import signal
    import time
    group = _group()
    variants = group[1:]
    script = ("from acllib.sweep import sweep\nfrom tests.test_sweep import _group\n"
              "sweep('smoke', address='local', workers=1, progress=False, configs=_group())\n")
    env = {**os.environ, "ACL_CACHE": str(fresh_cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while (time.monotonic() < deadline and proc.poll() is None
               and not any(runs.result_path(c).exists() for c in variants)):
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err[-2000:]
    kept = [c for c in variants if runs.result_path(c).exists()]
    assert 1 <= len(kept) < len(variants)  # interrupted inside the group, its finished run kept
    assert all(runs.load_result(c) and runs.model_path(c).exists() for c in [group[0], *kept])  # whole, with weights
    assert not list(store.cache_dir("runs").glob("*.claim"))
    counts = _sweep(configs=group)
    assert counts["trained"] == len(variants) - len(kept) and counts["failed"] == 0


def test_a_damaged_results_file_is_reported_once_and_swept_again(fresh_cache, capfd):
    planned = [c for cfgs in plan.book_plan("smoke", CHAPTER).values() for c in cfgs]
    _sweep()
    stage1 = next(c for c in planned if c.strategy == "single")
    two_stage = next(c for c in planned if c.strategy == "2st")
    truncated = runs.result_path(stage1).read_text()
    runs.result_path(stage1).write_text(truncated[: len(truncated) // 2])
    other = next(c for c in planned if c.strategy == "2st" and c.hash != two_stage.hash)
    runs.result_path(two_stage).write_text(runs.result_path(other).read_text())  # valid, but another config
    capfd.readouterr()
    counts = _sweep()
    err = [line for line in capfd.readouterr().err.splitlines() if "is not the complete result" in line]
    assert sorted(h for line in err for h in (stage1.hash, two_stage.hash) if h in line) == sorted([stage1.hash, two_stage.hash])
    assert counts["trained"] == 2 and counts["failed"] == 0
    assert runs.load_result(stage1).hash == stage1.hash and runs.load_result(two_stage).hash == two_stage.hash


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



def test_the_book_build_trains_on_ray_first_and_records_it(fresh_cache, tmp_path):
    """`make book RAY_ADDRESS=...` (book/build.py --ray): the sweep trains the chapter's runs, inside
    the build's timing; the notebook then finds them all in the cache."""
    import json
    import shutil
    book = tmp_path / "book"
    shutil.copytree(REPO / "book", book, ignore=shutil.ignore_patterns("_build", "executed", "_vendor"))
    env = {**os.environ, "ACL_CACHE": str(fresh_cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "book" / "build.py"), "--profile", "smoke", "--only",
                           "06_tsne", "--no-build", "--ray", "local", "--book-dir", str(book)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    planned = sum(len(c) for c in plan.book_plan("smoke", CHAPTER).values())
    assert f"'trained': {planned}," in proc.stdout  # the sweep trained every run: the notebook none
    record = json.loads((fresh_cache / "book" / "smoke" / "builds.json").read_text())[-1]
    assert record["trained_on"] == "ray (local)" and record["runs_trained"] == planned
    assert 0 < record["sweep_minutes"] <= record["minutes"]


def test_a_sweep_joins_a_head_that_ray_start_started(fresh_cache, tmp_path, monkeypatch, capfd):
    """Issue #26, item 7: `ray start --head` with token authentication on, the token in a file the
    driver can read (RAY_AUTH_TOKEN_PATH) but RAY_AUTH_MODE unset on the driver's side, as a user
    who followed the README has it. Before the fix Ray 2.60 refused the driver (InvalidAuthToken,
    then 'Failed to connect'). The head binds to 127.0.0.1, is started and stopped by the test (its
    process group, by id), and the sweep's runs land in the driver's cache."""
    import secrets
    import shutil
    import signal
    import socket
    import tempfile
    import time
    ray_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    head_env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # cluster mode off: every socket on 127.0.0.1
    head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                             "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", ray_dir],
                            env=head_env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and head.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        assert head.poll() is None, head.stderr.read()[-2000:]
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
        monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        from acllib.sweep import sweep
        group = [c for c in plan.book_plan("smoke", CHAPTER)["06_tsne"] if c.strategy == "single"][:2]
        counts = sweep("smoke", address=f"127.0.0.1:{port}", threads=1, progress=False, configs=group)
        assert counts == {"planned_missing": 2, "trained": 2, "skipped": 0, "failed": 0}
        assert all(runs.load_result(c) and runs.model_path(c).exists() for c in group)
        assert not ray.is_initialized() and "RAY_AUTH_MODE" not in os.environ  # left as it found them
        assert "no Ray auth token" not in capfd.readouterr().err
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` drains and stops what it started
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(ray_dir, ignore_errors=True)
        monkeypatch.undo()  # the token path gone: Ray's cached token must not outlive this test
        from acllib.sweep import _reload_ray_config
        _reload_ray_config()


def test_joining_without_a_token_says_what_to_set(monkeypatch, tmp_path):
    from acllib import sweep as sweep_mod
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    assert sweep_mod.auth_token_source() is None
    assert sweep_mod._join_environment("10.0.0.5:6379") == {}
    assert sweep_mod._join_environment("127.0.0.1:6379") == {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc")
    assert sweep_mod._join_environment("10.0.0.5:6379") == {"RAY_AUTH_MODE": "token"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the user's choice stands
    assert sweep_mod._join_environment("auto") == {}


def test_a_local_sweep_starts_its_own_instance_whatever_cluster_ray_would_find(fresh_cache, monkeypatch):
    """--address local never joins a cluster: not the one RAY_ADDRESS names (as a `ray start` or a
    stale /tmp/ray/ray_current_cluster would make ray.init() do), here an address nothing listens on."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    group = [c for c in plan.book_plan("smoke", CHAPTER)["06_tsne"] if c.strategy == "single"][:1]
    counts = _sweep(configs=group)
    assert counts["trained"] == 1 and runs.load_result(group[0])


def test_a_random_gate_is_sent_after_the_pair_it_reads(fresh_cache):
    """Issue #27: a random gate's run waits for its Eq. 4 pair (a full fine-tune: sent once the pair
    is back, with the pair's results; a stage 2: its group trains the pair first), and reads the
    pair's drop share there as it would sequentially."""
    from acllib import acl_grad
    from acllib.config import TABLE2_ROWS, make_config
    from acllib.sweep import sweep
    r1 = make_config("smoke", "rte", method="acl", gate="random", seed=2)
    r2 = make_config("smoke", "rte", strategy="2st", gate="random", seed=2, **TABLE2_ROWS["ACL"])
    todo = plan.with_stage1([r1, r2])
    assert [c.hash for c in todo] == [r1.gate_pair().hash, r1.hash, r2.gate_pair().hash, r2.hash]
    counts = sweep("smoke", configs=todo, address="local", workers=2, threads=1, progress=False)
    assert counts == {"planned_missing": 4, "trained": 4, "skipped": 0, "failed": 0}
    for r, groups in ((r1, 1), (r2, 3)):
        mine, pair = runs.load_result(r), runs.load_result(r.gate_pair())
        shares = [sum(a["lam"] == 0.0 for a in pair.angles[g::groups]) / len(pair.angles[g::groups]) for g in range(groups)]
        assert acl_grad.Gate.for_run(r)._rates(groups) == pytest.approx(shares)
        assert [a["angle"] for a in mine.angles[:groups]] == [a["angle"] for a in pair.angles[:groups]]


def test_a_random_gate_whose_pair_another_sweep_holds_is_left_to_it(fresh_cache):
    """A 2st group of a random gate and its pair, the pair claimed by another live sweep (a process
    here): both are skipped, nothing is sent, and the sweep ends (it used to crash reading the pair's
    missing results)."""
    import json
    import socket
    from acllib.config import TABLE2_ROWS, make_config
    from acllib.sweep import _claim_path, sweep
    r2 = make_config("smoke", "rte", strategy="2st", gate="random", seed=3, **TABLE2_ROWS["ACL"])
    pair = r2.gate_pair()
    runs.run(r2.stage1(), progress=False)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        path = _claim_path(pair)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid}))
        counts = sweep("smoke", configs=[pair, r2], address="local", workers=2, threads=1, progress=False)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert counts == {"planned_missing": 2, "trained": 0, "skipped": 2, "failed": 0}
    assert runs.load_result(r2) is None and path.exists()  # the other sweep's claim is left as it was


def test_a_worker_tokenizes_a_split_once_for_all_its_tasks(fresh_cache, monkeypatch):
    """Each task trains in a private cache; the worker's tokenized splits are shared across its tasks
    (two tasks in one worker: each split read from the GLUE files once, not twice), nothing is written
    in the driver's cache, and the results equal a run made there."""
    from acllib import data, sweep
    from acllib.config import make_config
    reads = []
    real = data.load_split
    monkeypatch.setattr(data, "load_split", lambda task, split, *a, **k: reads.append((task, split)) or real(task, split, *a, **k))
    monkeypatch.setattr(sweep, "_WORKER_TOKENIZED", None)  # a fresh worker
    threads = torch.get_num_threads()
    try:
        cfgs = [make_config("smoke", "rte", seed=s) for s in (1, 2)]
        files = [dict(sweep.execute([c.to_dict()], None, 1)) for c in cfgs]
    finally:
        torch.set_num_threads(threads)
    assert sorted(reads) == [("rte", "train"), ("rte", "validation")]  # once each, for both tasks
    assert os.environ["ACL_CACHE"] == str(fresh_cache) and not (fresh_cache / "runs").exists()  # nothing written here
    worker = sweep._WORKER_TOKENIZED.name
    assert len(os.listdir(worker)) == 2  # the two splits, kept for the worker's next task
    torch.set_num_threads(1)
    try:
        for c, f in zip(cfgs, files):
            assert json.loads(f[c.hash]["result"])["score"] == runs.run(c, progress=False).score
    finally:
        torch.set_num_threads(threads)
    sweep._WORKER_TOKENIZED.cleanup()
