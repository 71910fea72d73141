"""What every attack reports: the attacker's AUC / R² beside a no-information baseline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedcredit.metrics import auc_ks


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """AUC of an attacker's score (higher = "label 1") against the true labels; 0.5 = no information."""
    return float(auc_ks(np.asarray(y, dtype=np.float64), np.asarray(score, dtype=np.float64))[0])


def random_baseline(y: np.ndarray, seed: int = 0) -> float:
    """AUC of a score that knows nothing (uniform noise): the no-information baseline, ~0.5."""
    return auc(y, np.random.default_rng(seed).random(len(y)))


def known_rows_r2(target: np.ndarray, evidence: np.ndarray, known: np.ndarray, ridge: float = 1.0) -> float:
    """R² on the unknown rows of ``target`` predicted linearly from ``evidence``, fitted on the ``known`` rows only.

    The attacker's side knowledge: a few rows whose true value it knows (e.g. customers who
    told it); it fits a linear map from what it received to the value and applies it to all
    (ridge-regularised on standardised evidence, so many columns and few known rows do not overfit).
    """
    E = np.asarray(evidence, dtype=np.float64)
    mu, sd = E[known].mean(axis=0), E[known].std(axis=0) + 1e-12
    A = np.column_stack([(E - mu) / sd, np.ones(len(E))])
    Ak = A[known]
    reg = ridge * np.eye(A.shape[1])
    reg[-1, -1] = 0.0  # the intercept is not shrunk
    coef = np.linalg.solve(Ak.T @ Ak + reg, Ak.T @ target[known])
    rest = ~known
    resid = target[rest] - A[rest] @ coef
    var = float(np.var(target[rest]))
    return float(1.0 - np.mean(resid**2) / var) if var > 0 else 0.0


def r2_per_feature(X: np.ndarray, evidence: np.ndarray, known: np.ndarray) -> list[float]:
    """:func:`known_rows_r2` of every column of ``X`` (NaN-free columns only; others get NaN)."""
    out = []
    for j in range(X.shape[1]):
        col = X[:, j]
        out.append(known_rows_r2(col, evidence, known) if np.all(np.isfinite(col)) else float("nan"))
    return out


def known_mask(n: int, fraction: float, seed: int = 0) -> np.ndarray:
    """The attacker's known rows: a random ``fraction`` of them (at least 30)."""
    k = max(30, int(round(n * fraction)))
    m = np.zeros(n, dtype=bool)
    m[np.random.default_rng(seed).choice(n, size=min(k, n), replace=False)] = True
    return m


def median(xs: Sequence[float]) -> float:
    v = [x for x in xs if np.isfinite(x)]
    return float(np.median(v)) if v else float("nan")
