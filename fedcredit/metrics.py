"""Credit-model quality metrics: AUC, KS, ROC/KS plots, and histogram-based global metrics.

A global test AUC across banks would normally need every bank's scores and labels in
one place.  Instead each bank bins its scores into a fixed grid of probability bins
(counts of negatives and positives per bin); the bins are summed under encryption,
and AUC/KS are computed from the summed histogram alone.  With 1000 bins the
histogram AUC is within ~0.001 of the exact AUC (scores in the same bin count as
ties).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, overload

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from crypto.files import write_text


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels ({y.shape[0]}) and scores ({p.shape[0]}) differ in length")
    return y, p


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present (AUC is undefined then)."""
    y, p = _check(y, p)
    if y.min(initial=0) == y.max(initial=0):
        return float("nan")
    return float(roc_auc_score(y, p))


def ks(y: np.ndarray, p: np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic: max distance between the score CDFs of goods and bads."""
    y, p = _check(y, p)
    if y.min(initial=0) == y.max(initial=0):
        return float("nan")
    fpr, tpr, _ = roc_curve(y, p)
    return float(np.max(tpr - fpr))


def auc_ks(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(ROC AUC, KS): the two figures credit teams report."""
    return auc(y, p), ks(y, p)


def write_evaluation(
    out_dir: str | Path,
    y: np.ndarray,
    scores: np.ndarray,
    *,
    name: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``<name>_report.json`` and ``<name>_roc_ks.png`` into ``out_dir``; return the report."""
    y, scores = _check(y, scores)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    a, k = auc_ks(y, scores)
    fpr, tpr, thr = roc_curve(y, scores)
    i = int(np.argmax(tpr - fpr))
    png = roc_ks_plot(y, scores, out / f"{name}_roc_ks.png", title=name)
    report: dict[str, Any] = {
        "name": name,
        "n": int(len(y)),
        "positives": int(np.sum(y)),
        "auc": round(a, 6),
        "ks": round(k, 6),
        "ks_threshold": float(thr[i]) if np.isfinite(thr[i]) else None,
        **dict(extra or {}),
        "plot": png.name,
    }
    write_text(out / f"{name}_report.json", json.dumps(report, indent=2))
    return report


def roc_ks_plot(y: np.ndarray, p: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Write a two-panel PNG (ROC curve; KS curve over thresholds) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, p = _check(y, p)
    fpr, tpr, thr = roc_curve(y, p)
    a, k = auc(y, p), ks(y, p)
    i = int(np.argmax(tpr - fpr))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    ax1.plot(fpr, tpr, lw=1.8, label=f"AUC = {a:.4f}")
    ax1.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax1.set_xlabel("false positive rate")
    ax1.set_ylabel("true positive rate")
    ax1.set_title("ROC")
    ax1.legend(loc="lower right")
    t = np.clip(thr, 0.0, 1.0)
    ax2.plot(t, tpr, label="cumulative bads (TPR)")
    ax2.plot(t, fpr, label="cumulative goods (FPR)")
    ax2.vlines(t[i], fpr[i], tpr[i], colors="k", linestyles=":", label=f"KS = {k:.4f}")
    ax2.set_xlabel("score threshold")
    ax2.set_title("KS")
    ax2.invert_xaxis()
    ax2.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def score_histogram(y: np.ndarray, p: np.ndarray, bins: int = 1000) -> np.ndarray:
    """Counts per probability bin: shape (2, bins); row 0 = negatives, row 1 = positives.

    Bins are a fixed uniform grid on [0, 1], so histograms from different parties
    line up and can be summed (under encryption) without sharing scores.
    """
    y, p = _check(y, p)
    idx = np.clip((np.clip(p, 0.0, 1.0) * bins).astype(np.int64), 0, bins - 1)
    hist = np.zeros((2, bins), dtype=np.float64)
    np.add.at(hist[0], idx[y == 0], 1.0)
    np.add.at(hist[1], idx[y == 1], 1.0)
    return hist


def auc_ks_from_histogram(hist: np.ndarray) -> tuple[float, float]:
    """AUC and KS from a (2, bins) histogram (e.g. a decrypted sum of parties' histograms).

    Scores in the same bin are ties (each counts half for AUC); KS is evaluated at the
    bin edges.  Counts are rounded first because CKKS decryption is approximate.
    """
    h = np.rint(np.asarray(hist, dtype=np.float64)).clip(min=0.0)
    if h.ndim == 1:
        h = h.reshape(2, -1)
    neg, pos = h[0], h[1]
    n_neg, n_pos = neg.sum(), pos.sum()
    if n_neg == 0 or n_pos == 0:
        return float("nan"), float("nan")
    neg_below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    a = float(np.sum(pos * (neg_below + 0.5 * neg)) / (n_pos * n_neg))
    # CDFs from the top score down (threshold sweeps from high to low, like roc_curve).
    tpr = np.cumsum(pos[::-1]) / n_pos
    fpr = np.cumsum(neg[::-1]) / n_neg
    return a, float(np.max(tpr - fpr))


@overload
def sigmoid(z: float) -> float: ...
@overload
def sigmoid(z: np.ndarray) -> np.ndarray: ...
def sigmoid(z: np.ndarray | float) -> np.ndarray | float:
    """Logistic link ``1 / (1 + e^-z)`` of every model here, numerically stable: ``z`` is clipped to
    [-500, 500], so ``exp`` never overflows, and small probabilities keep their relative precision."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))
