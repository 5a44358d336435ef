"""Claim statistics against hand-computed cases and scipy's t distribution."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from acllib import stats


def test_paired_hand_case():
    a, b = [3.0, 5.0, 7.0], [1.0, 2.0, 3.0]  # differences 2, 3, 4: mean 3, sd 1
    r = stats.paired(a, b)
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, df=2) * 1 / sqrt(3)
    assert r["diff"] == pytest.approx(3.0) and r["n"] == 3
    assert r["lo"] == pytest.approx(3.0 - half) and r["hi"] == pytest.approx(3.0 + half)
    # paired t statistic 3 / (1 / sqrt 3) with 2 degrees of freedom
    assert r["p"] == pytest.approx(2 * sps.t.sf(3 * math.sqrt(3), 2))


def test_verdicts():
    assert stats.verdict({"lo": 0.5, "hi": 2.0}) == stats.SUPPORTED
    assert stats.verdict({"lo": -2.0, "hi": -0.5}) == stats.CONTRADICTED
    assert stats.verdict({"lo": -2.0, "hi": -0.5}, expected_sign=-1) == stats.SUPPORTED
    assert stats.verdict({"lo": -0.5, "hi": 0.5}) == stats.INCONCLUSIVE
    assert stats.verdict(stats.paired([1.0], [0.0])) == stats.INCONCLUSIVE  # one pair tells nothing


def test_changing_a_result_changes_the_verdict():
    base = [70.0, 71.0, 72.0, 70.5]
    better = [x + 1.0 + 0.1 * i for i, x in enumerate(base)]
    assert stats.verdict(stats.paired(better, base)) == stats.SUPPORTED
    worse = [x - 1.0 - 0.1 * i for i, x in enumerate(base)]
    assert stats.verdict(stats.paired(worse, base)) == stats.CONTRADICTED
    mixed = [x + d for x, d in zip(base, [1.0, -1.0, 0.5, -0.6])]
    assert stats.verdict(stats.paired(mixed, base)) == stats.INCONCLUSIVE


def test_majority_score_and_learned_hand_cases():
    from acllib.train import majority_score
    labels = [1, 1, 1, 0]  # always 1: accuracy 75; MRPC's F1 of always-positive: 2*0.75/(1+0.75)
    assert majority_score("rte", labels)["accuracy"] == 75.0
    assert abs(majority_score("mrpc", labels)["f1"] - 100 * 1.5 / 1.75) < 1e-9
    assert majority_score("cola", labels)["mcc"] == 0.0
    assert stats.learned(77.0, 75.0) and not stats.learned(76.9, 75.0) and not stats.learned(47.4, 52.7)
