"""A credit table with heavy-tailed raw amounts (log-normal incomes, limits, bills, repayments) and a known logit.

Why: the shipped benchmark tables are standardized and well conditioned, so an optimiser that
stops early looks converged there.  Raw amounts reach 50-70 standard deviations; on them
early stopping leaves LR percent-level short of (or past) the pooled optimum's test log-loss.
Used by tests/test_lr_convergence.py and simulations/bench_vertical_lr.py (table ``heavy``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["heavy_tailed", "LABEL_COLUMNS", "PASSIVE_COLUMNS"]

LABEL_COLUMNS = ["limit", "age", "status", "bill0", "bill1", "bill2"]  # a vertical split: the label party's
PASSIVE_COLUMNS = ["pay0", "pay1", "pay2"]  # and the passive party's


def heavy_tailed(n: int = 5000, seed: int = 1, sigma: float = 2.0) -> pd.DataFrame:
    """Columns ``id, y, limit, age, status, bill0..2, pay0..2, test`` (``test``: a fixed 25 % hold-out flag)."""
    r = np.random.default_rng(seed)
    inc = r.lognormal(10, sigma, n)
    limit = inc * r.lognormal(0, 0.5, n)
    bills = limit[:, None] * r.beta(2, 3, (n, 3)) * r.lognormal(0, 0.3, (n, 3))
    pays = bills * r.beta(0.5, 2, (n, 3)) * r.lognormal(0, 1.0, (n, 3))
    age, status = r.normal(40, 10, n), r.integers(-1, 4, n).astype(float)
    logit = (-1.2 + 0.5 * status - 0.2 * np.log1p(pays).mean(1) + 0.8 * bills[:, 0] / limit
             - 0.06 * np.log(limit) + 0.01 * (age - 40))
    y = (r.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    df = pd.DataFrame({"id": [f"{i:06d}" for i in range(n)], "y": y, "limit": limit, "age": age, "status": status})
    for k in range(3):
        df[f"bill{k}"] = bills[:, k]
    for k in range(3):
        df[f"pay{k}"] = pays[:, k]
    df["test"] = np.random.default_rng(seed + 99).random(n) < 0.25
    return df
