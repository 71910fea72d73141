"""Split one table into the data of ``n`` banks: IID, skewed by a feature, or by label rate.

Real partner banks do not see the same customers: a regional bank skews young, a
private bank skews to high limits, a sub-prime lender has a higher default rate.
Federated algorithms behave differently under such skew (FedAvg drifts, FedProx
helps), so the simulation harness needs all three shapes.  Every mode is an exact
partition: each input row lands in exactly one bank (no loss, no duplication), and
bank sizes differ by at most a row or two.

``skew`` in [0, 1] controls how non-IID the split is: 0 gives IID, 1 gives the
extreme (feature mode: contiguous quantile ranges; label mode: default rates from
0 to 2x the overall rate).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

Mode = Literal["iid", "feature", "label"]


def _check(df: pd.DataFrame, n_parties: int, skew: float) -> None:
    if n_parties < 1:
        raise ValueError(f"n_parties must be >= 1, got {n_parties}")
    if len(df) < n_parties:
        raise ValueError(f"cannot split {len(df)} rows into {n_parties} non-empty parties")
    if not 0.0 <= skew <= 1.0:
        raise ValueError(f"skew must be in [0, 1], got {skew}")


def _iid(n: int, n_parties: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [np.sort(a) for a in np.array_split(rng.permutation(n), n_parties)]


def _by_feature(values: np.ndarray, n_parties: int, skew: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Quantile bins of the feature; a row of bin b goes to party b with prob skew + (1-skew)/n.

    The assignment is a balanced random matching (not independent coin flips), so party
    sizes stay equal: each bin sends round(n_b * q) rows home and spreads the rest
    evenly over the other parties.
    """
    n = len(values)
    order = np.lexsort((rng.random(n), values))  # ties broken at random
    bins = np.array_split(order, n_parties)
    k = n_parties
    stay = skew + (1.0 - skew) / k
    owner = np.empty(n, dtype=np.int64)
    for b, rows in enumerate(bins):
        rows = rng.permutation(rows)
        n_home = int(round(len(rows) * stay))
        owner[rows[:n_home]] = b
        others = [p for p in range(k) if p != b]
        rest = rows[n_home:]
        if others:
            rot = b % len(others)  # rotate who gets the remainder so sizes stay balanced
            others = others[rot:] + others[:rot]
            for j, chunk in enumerate(np.array_split(rest, len(others))):
                owner[chunk] = others[j]
        else:
            owner[rest] = b
    return [np.flatnonzero(owner == p) for p in range(k)]


def _largest_remainder(targets: np.ndarray, total: int, caps: np.ndarray) -> np.ndarray:
    """Integer counts close to ``targets``, summing to ``total``, each within [0, cap]."""
    base = np.clip(np.floor(targets), 0, caps).astype(np.int64)
    short = total - int(base.sum())
    frac = targets - np.floor(targets)
    for i in np.argsort(-frac, kind="stable"):
        if short <= 0:
            break
        if base[i] < caps[i]:
            base[i] += 1
            short -= 1
    while short > 0:  # targets were clipped by caps; fill wherever room is left
        room = np.flatnonzero(base < caps)
        base[room[0]] += 1
        short -= 1
    while short < 0:
        full = np.flatnonzero(base > 0)
        base[full[-1]] -= 1
        short += 1
    return base


def _by_label(y: np.ndarray, n_parties: int, skew: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Equal-size parties whose positive rates spread linearly over rate*(1 -/+ skew)."""
    n = len(y)
    pos = rng.permutation(np.flatnonzero(y == 1))
    neg = rng.permutation(np.flatnonzero(y != 1))
    sizes = np.array([len(a) for a in np.array_split(np.arange(n), n_parties)])
    rate = len(pos) / n
    if n_parties == 1:
        shape = np.zeros(1)
    else:
        shape = np.linspace(-1.0, 1.0, n_parties)
    target_rates = np.clip(rate * (1.0 + skew * shape), 0.0, 1.0)
    n_pos = _largest_remainder(target_rates * sizes, len(pos), sizes)
    n_neg = sizes - n_pos
    out, ip, ineg = [], 0, 0
    for k in range(n_parties):
        idx = np.concatenate([pos[ip : ip + n_pos[k]], neg[ineg : ineg + n_neg[k]]])
        ip += n_pos[k]
        ineg += n_neg[k]
        out.append(np.sort(idx))
    return out


def partition(
    df: pd.DataFrame,
    n_parties: int,
    *,
    mode: Mode = "iid",
    feature: str | None = None,
    label_column: str = "y",
    skew: float = 0.7,
    seed: int = 0,
) -> list[pd.DataFrame]:
    """Split ``df`` into ``n_parties`` disjoint tables covering every row exactly once."""
    _check(df, n_parties, skew)
    rng = np.random.default_rng(seed)
    if mode == "iid":
        parts = _iid(len(df), n_parties, rng)
    elif mode == "feature":
        if not feature:
            raise ValueError("mode='feature' needs feature=<column name> (e.g. 'AGE' or 'LIMIT_BAL')")
        if feature not in df.columns:
            raise ValueError(f"feature {feature!r} is not a column; columns are {list(df.columns)}")
        parts = _by_feature(df[feature].to_numpy(dtype=np.float64), n_parties, skew, rng)
    elif mode == "label":
        if label_column not in df.columns:
            raise ValueError(f"label column {label_column!r} is not a column; columns are {list(df.columns)}")
        parts = _by_label(df[label_column].to_numpy(), n_parties, skew, rng)
    else:
        raise ValueError(f"unknown partition mode {mode!r}; expected 'iid', 'feature' or 'label'")
    return [df.iloc[idx].reset_index(drop=True) for idx in parts]
