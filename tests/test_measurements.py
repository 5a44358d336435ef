"""Cached measurements are keyed by their arguments and by the source of the code that computes
them: an edit to that code invalidates the cache (issue #25: an edit to the angle or the probe
code served stale numbers before)."""
import importlib
import sys
import textwrap

import numpy as np
import pytest

from acllib import early_exit, measurements

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


def test_the_early_exit_sweep_is_keyed_by_its_measuring_code():
    """Every function the sweep's numbers pass through is in its code key."""
    names = {f.__name__ for f in early_exit.MEASURING_CODE}
    assert {"evaluate_rules", "simulate", "flop_table", "early_exit_flops", "time_settings"} <= names
