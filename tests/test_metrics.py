"""Tests of acllib.metrics against scikit-learn (the independent reference) and hand-computed cases."""
from __future__ import annotations

import math
import os
import sys
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from acllib import metrics  # noqa: E402


def sk(fn, *args, **kwargs):
    # sklearn warns (UndefinedMetricWarning / single-label) on degenerate inputs; it still returns 0.0.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(*args, **kwargs))


def random_cases(n_classes, count=150, seed=0):
    rng = np.random.default_rng(seed)
    for trial in range(count):
        n = int(rng.integers(1, 40))
        y_true = rng.integers(0, n_classes, n)
        mode = trial % 5
        if mode == 0:
            y_pred = rng.integers(0, n_classes, n)
        elif mode == 1:  # mostly correct
            y_pred = np.where(rng.random(n) < 0.8, y_true, rng.integers(0, n_classes, n))
        elif mode == 2:  # constant prediction (degenerate for MCC)
            y_pred = np.full(n, int(rng.integers(0, n_classes)))
        elif mode == 3:  # constant truth
            y_true = np.full(n, int(rng.integers(0, n_classes)))
            y_pred = rng.integers(0, n_classes, n)
        else:  # skewed
            y_pred = (rng.random(n) < 0.1).astype(int) * (n_classes - 1)
        yield y_true, y_pred


# ---------------------------------------------------------------- accuracy


@pytest.mark.parametrize("n_classes", [2, 3])
def test_accuracy_matches_sklearn(n_classes):
    for y_true, y_pred in random_cases(n_classes, seed=n_classes):
        assert metrics.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-12)


def test_accuracy_hand_and_list_input():
    assert metrics.accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == pytest.approx(0.75)
    assert metrics.accuracy([2, 2, 0], [2, 2, 0]) == 1.0
    assert metrics.accuracy([0, 1], [1, 0]) == 0.0


# ---------------------------------------------------------------- F1 (binary, positive class 1)


def test_f1_matches_sklearn_binary():
    for y_true, y_pred in random_cases(2, count=300, seed=11):
        expected = sk(skm.f1_score, y_true, y_pred, pos_label=1, average="binary", zero_division=0.0)
        assert metrics.f1_binary(y_true, y_pred) == pytest.approx(expected, abs=1e-12), (y_true, y_pred)


def test_f1_hand_cases():
    # tp = 2, |true positives| = 3, |predicted positives| = 2 -> 2*2 / (3+2) = 0.8
    assert metrics.f1_binary([1, 0, 1, 1], [1, 0, 0, 1]) == pytest.approx(0.8)
    # positive class is 1, not 0: swapping roles changes the score
    # for class 0: tp = 1, true 0's = 1, predicted 0's = 2 -> 2/3
    assert metrics.f1_binary([1, 0, 1, 1], [1, 0, 0, 1], positive=0) == pytest.approx(2.0 / 3.0)
    # no true and no predicted positives -> 0.0 (sklearn's zero_division default)
    assert metrics.f1_binary([0, 0, 0], [0, 0, 0]) == 0.0
    assert metrics.f1_binary([1, 1], [0, 0]) == 0.0
    assert metrics.f1_binary([1, 1, 0], [1, 1, 0]) == 1.0


# ---------------------------------------------------------------- Matthews correlation


@pytest.mark.parametrize("n_classes", [2, 3, 4])
def test_mcc_matches_sklearn(n_classes):
    for y_true, y_pred in random_cases(n_classes, count=300, seed=100 + n_classes):
        expected = sk(skm.matthews_corrcoef, y_true, y_pred)
        got = metrics.matthews_corrcoef(y_true, y_pred)
        assert math.isfinite(got)
        assert got == pytest.approx(expected, abs=1e-10), (y_true, y_pred)


@pytest.mark.parametrize(
    "y_true, y_pred",
    [
        ([0, 1, 0, 1], [1, 1, 1, 1]),  # constant prediction
        ([0, 1, 2, 1], [2, 2, 2, 2]),  # constant prediction, 3 classes
        ([1, 1, 1], [0, 1, 2]),  # constant truth
        ([0, 0, 0], [0, 0, 0]),  # everything one class
        ([2], [2]),
        ([0], [1]),
    ],
)
def test_mcc_degenerate_is_zero_like_sklearn(y_true, y_pred):
    assert sk(skm.matthews_corrcoef, y_true, y_pred) == 0.0
    assert metrics.matthews_corrcoef(y_true, y_pred) == 0.0


def test_mcc_hand_cases():
    # TP=2, TN=1, FP=0, FN=1: (2*1 - 0*1) / sqrt((2+0)(2+1)(1+0)(1+1)) = 2 / sqrt(12)
    assert metrics.matthews_corrcoef([1, 0, 1, 1], [1, 0, 0, 1]) == pytest.approx(2.0 / math.sqrt(12.0))
    assert metrics.matthews_corrcoef([0, 1, 2, 0], [0, 1, 2, 0]) == pytest.approx(1.0)
    assert metrics.matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    # Label values need not be 0..K-1
    assert metrics.matthews_corrcoef([5, 9, 9], [5, 9, 9]) == pytest.approx(1.0)


# ---------------------------------------------------------------- compute()


def test_compute_returns_percentages_hand_case():
    y_true, y_pred = [1, 0, 1, 1], [1, 0, 0, 1]
    out = metrics.compute(["accuracy", "f1", "mcc"], y_true, y_pred)
    assert set(out) == {"accuracy", "f1", "mcc"}
    assert out["accuracy"] == pytest.approx(75.0)
    assert out["f1"] == pytest.approx(80.0)
    assert out["mcc"] == pytest.approx(100.0 * 2.0 / math.sqrt(12.0))  # 57.735...


def test_compute_matches_sklearn_percentages():
    for y_true, y_pred in random_cases(2, count=60, seed=5):
        out = metrics.compute(["accuracy", "f1", "mcc"], y_true, y_pred)
        assert out["accuracy"] == pytest.approx(100.0 * skm.accuracy_score(y_true, y_pred), abs=1e-9)
        assert out["f1"] == pytest.approx(100.0 * sk(skm.f1_score, y_true, y_pred, zero_division=0.0), abs=1e-9)
        assert out["mcc"] == pytest.approx(100.0 * sk(skm.matthews_corrcoef, y_true, y_pred), abs=1e-8)


def test_compute_only_requested_names():
    out = metrics.compute(["mcc"], [0, 1, 2], [0, 1, 1])
    assert list(out) == ["mcc"]
    assert out["mcc"] == pytest.approx(100.0 * sk(skm.matthews_corrcoef, [0, 1, 2], [0, 1, 1]))
    assert metrics.compute([], [0], [0]) == {}
