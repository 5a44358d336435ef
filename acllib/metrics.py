"""GLUE metrics, written from their definitions (tests check them against scikit-learn)."""
from __future__ import annotations

import math

import numpy as np


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean())


def f1_binary(y_true, y_pred, positive: int = 1) -> float:
    """F1 of the positive class; 0.0 when there is no true and no predicted positive."""
    t, p = np.asarray(y_true) == positive, np.asarray(y_pred) == positive
    tp = int((t & p).sum())
    denom = int(t.sum()) + int(p.sum())
    return 2.0 * tp / denom if denom else 0.0


def matthews_corrcoef(y_true, y_pred) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K); 0.0 when it is undefined."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = np.union1d(y_true, y_pred)
    t = (y_true[:, None] == classes).astype(np.float64)  # one-hot [n, C]
    p = (y_pred[:, None] == classes).astype(np.float64)
    n = len(y_true)
    correct = float((y_true == y_pred).sum())
    t_k, p_k = t.sum(0), p.sum(0)
    cov_tp = correct * n - float(t_k @ p_k)
    cov_pp = n * n - float(p_k @ p_k)
    cov_tt = n * n - float(t_k @ t_k)
    if cov_pp == 0 or cov_tt == 0:
        return 0.0
    return cov_tp / math.sqrt(cov_tt * cov_pp)


METRICS = {"accuracy": accuracy, "f1": f1_binary, "mcc": matthews_corrcoef}


def compute(names, y_true, y_pred) -> dict[str, float]:
    """Score predictions with each named metric, as percentages (the paper's scale)."""
    return {name: 100.0 * METRICS[name](y_true, y_pred) for name in names}
