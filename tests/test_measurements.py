"""Cached measurements are keyed by their arguments and by the source of the code that computes
them: an edit to that code invalidates the cache (issue #25: an edit to the angle or the probe
code served stale numbers before)."""
import importlib
import inspect
import sys
import textwrap

import numpy as np
import pytest

from acllib import early_exit, make_config, measurements, runs

SOURCE = '''
calls = []

def measure(x):
    calls.append(x)
    return {body}
'''


@pytest.fixture
def module(tmp_path, monkeypatch):
    monkeypatch.setenv("ACL_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "measured_thing.py"

    def write(body):
        path.write_text(textwrap.dedent(SOURCE.format(body=body)))
        if "measured_thing" in sys.modules:
            return importlib.reload(sys.modules["measured_thing"])
        return importlib.import_module("measured_thing")
    yield write
    sys.modules.pop("measured_thing", None)


def test_an_edit_to_the_code_invalidates_the_cache(module):
    m = module("[x, x * 2]")
    get = lambda mod, x: measurements.cached_json("thing", "run1", {"x": x}, (mod.measure,), lambda: mod.measure(x))
    assert get(m, 3) == [3, 6] and m.calls == [3]
    assert get(m, 3) == [3, 6] and m.calls == [3]  # cached: not computed again
    assert get(m, 4) == [4, 8] and m.calls == [3, 4]  # other arguments: computed
    v1 = measurements.code_version(m.measure)
    m = module("[x, x * 3]")  # the code changes
    assert measurements.code_version(m.measure) != v1
    assert get(m, 3) == [3, 9] and m.calls == [3]  # recomputed by the new code, not the stale [3, 6]
    assert [r["args"] for r in measurements.stored_json("thing", "run1", (m.measure,))] == [{"x": 3}]


def test_arrays_round_trip_and_key_by_arguments(module):
    m = module("x")
    calls = []

    def compute(seed):
        calls.append(seed)
        return {"xy": np.arange(6, dtype=np.float32).reshape(3, 2) + seed}
    a = measurements.cached_arrays("pts", "k", {"seed": 1}, (m.measure,), lambda: compute(1))
    b = measurements.cached_arrays("pts", "k", {"seed": 1}, (m.measure,), lambda: compute(1))
    np.testing.assert_array_equal(a["xy"], b["xy"])
    assert calls == [1]
    measurements.cached_arrays("pts", "k", {"seed": 2}, (m.measure,), lambda: compute(2))
    assert calls == [1, 2]


def test_the_early_exit_sweep_is_keyed_by_its_measuring_code(cache):
    """Every function of acllib.early_exit that an early-exit measurement runs (traced while it runs,
    timings included) lies inside the source of something in its code key: a function of the key,
    a method of a class in it, or a function nested in one. An edit to any of them invalidates it."""
    cfg = make_config("smoke", "rte", seed=1, strategy="2st", method="ce")
    runs.run(cfg, progress=False)
    spans = []
    for obj in early_exit.MEASURING_CODE:
        lines, first = inspect.getsourcelines(obj)
        spans.append((first, first + len(lines) - 1))
    called = set()

    def trace(frame, event, arg):
        if event == "call" and frame.f_code.co_filename == early_exit.__file__:
            called.add((frame.f_code.co_name, frame.f_code.co_firstlineno))
    sys.setprofile(trace)
    try:
        early_exit.evaluate_run(cfg, timing=True, latency_examples=8, repeats=1)
    finally:
        sys.setprofile(None)
    assert {"evaluate_rules", "simulate", "flop_table", "early_exit_flops", "time_settings"} <= {n for n, _ in called}
    outside = [(n, line) for n, line in called if not any(lo <= line <= hi for lo, hi in spans)]
    assert not outside, f"early-exit measurements run code their key does not cover: {outside}"