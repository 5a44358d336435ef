"""Issue #26: the cost of a build before it starts, and Ctrl-C anywhere: one line, status 130, no
traceback, every finished run kept whole."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from acllib import cost, plan, runs
from acllib.store import REPO


def test_the_estimate_is_the_plans_flops_over_the_measured_rate(tmp_path, monkeypatch):
    """By hand: three runs to train, two of them 2st runs of one stage 1 (their frozen features,
    3 of their 10 and 12 TFLOPs, counted once) and a fine-tune of 20: 10 + 12 - 3 + 20 = 39 TFLOPs,
    at 0.01 TFLOP/s 3900 s, 65 minutes."""
    from acllib.config import make_config
    monkeypatch.setenv("ACL_CACHE", str(tmp_path))
    a, b = (make_config("smoke", "rte", seed=1, strategy="2st", stage2_epochs=e) for e in (1, 2))
    single = make_config("smoke", "rte", seed=2)
    flops = {a.hash: (10e12, 3e12), b.hash: (12e12, 3e12), single.hash: (20e12, 0.0)}
    monkeypatch.setattr(plan, "book_plan", lambda profile, chapters=None: {"02_table1": [a, b, single]})
    monkeypatch.setattr(cost, "run_flops", lambda c: {"flops": flops[c.hash][0], "features": flops[c.hash][1],
                                                      "train": flops[c.hash][0], "eval": 0.0, "examples_x_epochs": 1,
                                                      "tokens_source": "by hand"})
    monkeypatch.setattr(cost, "machine_flops_per_s", lambda step_s=None: (1e10, "a rate given by hand"))
    e = plan.build_estimate("smoke")
    assert e["to_run"] == e["runs"] == 3
    assert e["flops_to_run"] == pytest.approx(39e12)
    assert e["overhead"] == 1.0 and e["hours"] == pytest.approx(3900 / 3600)  # nothing cached to calibrate on
    text = cost.describe_estimate(e).splitlines()
    assert text[0] == "estimate: 3 of the 3 runs of profile 'smoke' to train, 0.039 PFLOPs: about 65 minutes of training here"
    native = "bf16, native on this CPU" if e["precision"] == "bf16" else "fp32 (this CPU has no native bf16)"
    assert native in text[1] and "0.01 TFLOP/s from a rate given by hand" in text[1]
    assert "too long?" in text[2]  # over an hour: what to do about it


def test_the_sweep_bars_eta_pools_the_estimate_with_the_rate_so_far():
    """By hand: 100 TFLOPs planned, an estimate of 0.1 TFLOP/s (1000 s in all), worth 600 s of
    observation. Nothing back yet: the estimate's 1000 s. After 300 s with 20 TFLOPs done: the rate
    (20 + 0.1 x 600) / (300 + 600) = 0.0889, 80 left: 900 s. Without an estimate the rate so far,
    80 / (20 / 300) = 1200 s, and no ETA before the first run is back."""
    from acllib import sweep
    assert sweep.eta_seconds(0, 100, 0, 0.1) == pytest.approx(1000)
    assert sweep.eta_seconds(20, 100, 300, 0.1) == pytest.approx(900)
    assert sweep.eta_seconds(20, 100, 300) == pytest.approx(1200)
    assert sweep.eta_seconds(0, 100, 30) is None
    assert sweep.eta_seconds(100, 100, 300, 0.1) == 0.0
    out = io.StringIO()
    bar = sweep._sweep_bar(0.1, total=100.0, file=out, bar_format="{n:.0f}/{total:.0f} [{elapsed}<{eta}]")
    bar.start_t = bar._time() - 300  # as if it had run 300 s
    bar.update(20)
    assert str(bar) == "20/100 [05:00<15:00]"
    bar.close()


def _interrupt_when(cmd, env, ready, timeout=600):
    """Start cmd in its own process group, send it SIGINT (a terminal's Ctrl-C reaches the whole
    group) once ready() holds, and return (status, stderr)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    t0 = time.time()
    while not ready() and proc.poll() is None and time.time() - t0 < timeout:
        time.sleep(0.5)
    assert proc.poll() is None, "it finished before it could be interrupted: " + proc.stderr.read()[-2000:]
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, err


def test_ctrl_c_in_a_book_build_keeps_the_finished_runs(tmp_path):
    """A chapter building on the smoke profile, interrupted once its first run is written: status
    130, one closing line saying what was kept and how to resume, no traceback, and every results
    file in the cache complete (it loads against its config)."""
    cache = tmp_path / "cache"
    env = {**os.environ, "ACL_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    results = cache / "runs"
    book = tmp_path / "book"
    import shutil
    shutil.copytree(REPO / "book", book, ignore=shutil.ignore_patterns("_build", "executed", "_vendor"))
    code, err = _interrupt_when([sys.executable, str(REPO / "book" / "build.py"), "--profile", "smoke", "--only", "02_table1",
                                 "--no-build", "--book-dir", str(book)], env,
                                lambda: results.exists() and any(results.glob("*.json")))
    assert code == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("interrupted:") and "make book" in last
    kept = {p.stem for p in results.glob("*.json")}
    assert kept
    by_hash = {c.hash: c for c in plan.with_stage1(plan.table1("smoke").configs())}
    os.environ["ACL_CACHE"], old = str(cache), os.environ.get("ACL_CACHE")
    try:
        for h in kept:
            assert runs.load_result(by_hash[h]) is not None  # whole, and the run the plan asked for
    finally:
        if old is None:
            del os.environ["ACL_CACHE"]
        else:
            os.environ["ACL_CACHE"] = old
    assert not list(results.glob(".*.tmp"))  # no half-written file left behind


def test_ctrl_c_in_a_run(tmp_path):
    env = {**os.environ, "ACL_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    started = tmp_path / "tokenized"
    code, err = _interrupt_when([sys.executable, "-m", "acllib", "run", "--profile", "smoke", "--task", "rte",
                                 "--set", "epochs=200", "--quiet"], env, lambda: started.exists() and any(started.iterdir()))
    # 130 from main(), or death by SIGINT after it: under `python -m`, CPython 3.11 exits by SIGINT
    # (after finalization, whatever sys.exit said) once a KeyboardInterrupt has left a nested PyRun_*
    # evaluation, even a caught one (its flag _Py_UnhandledKeyboardInterrupt read at exit: 1 in such a
    # run, 0 in one that exited 130). A Ctrl-C at a random moment lands there in 4 of 165 runs (fast
    # kind). A shell reports both as status 130; what the command said and left is checked below.
    assert code in (130, -signal.SIGINT) and "Traceback" not in err, err[-3000:]
    assert [line for line in err.splitlines() if line.strip()][-1].startswith("interrupted:")
    assert not list((tmp_path / "runs").glob("*.json")) if (tmp_path / "runs").exists() else True


def test_a_ctrl_c_swallowed_by_a_callback_is_raised_again():
    """A KeyboardInterrupt inside a weakref callback is 'ignored' by Python; the command lines' hook
    (store.reraise_swallowed_ctrl_c) sends the signal again, so the program still stops."""
    code = ("import weakref, signal, sys, time\n"
            "from acllib.store import reraise_swallowed_ctrl_c\n"
            "reraise_swallowed_ctrl_c()\n"
            "class C: pass\n"
            "def cb(ref): raise KeyboardInterrupt\n"
            "c = C(); r = weakref.ref(c, cb)\n"
            "try:\n"
            "    del c\n"
            "    time.sleep(5)\n"
            "    print('went on')\n"
            "except KeyboardInterrupt:\n"
            "    print('stopped'); sys.exit(130)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 130 and proc.stdout.strip() == "stopped", proc.stdout + proc.stderr
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr
