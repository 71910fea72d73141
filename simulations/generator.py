"""Synthetic credit-card applications, so the default demo needs no download.

The columns mirror the UCI "default of credit card clients" data (Yeh & Lien 2009):
credit limit, sex, education, marriage, age, six months of repayment status
(PAY_0 = most recent, PAY_2..PAY_6 older; -2 no use, -1 paid in full, 0 revolving,
k = k months late), six bill amounts and six payment amounts.  Rows are drawn from a
generative story rather than resampled from the real data:

* each applicant has a hidden financial-stress level; limits grow with age and
  education and shrink with stress;
* a usage type (inactive / transactor / revolver) shapes bills and payments;
* repayment status is a monthly Markov chain whose late-payment and cure
  probabilities depend on stress, so delinquency is persistent like in real books;
* default next month depends non-linearly on recent delinquency, utilisation,
  the share of the bill repaid, age and the hidden stress (which no feature fully
  reveals, so no model is perfect).

The intercept is calibrated so ~22 % default (as in the UCI data); a logistic
regression reaches test AUC ~0.73 (like on the real data) and non-linear models do better.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from simulations.partition import partition

PAY_COLS = ["PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6"]
BILL_COLS = [f"BILL_AMT{i}" for i in range(1, 7)]
PAYAMT_COLS = [f"PAY_AMT{i}" for i in range(1, 7)]
FEATURES = ["LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE", *PAY_COLS, *BILL_COLS, *PAYAMT_COLS]
DEFAULT_RATE = 0.22


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _calibrate_intercept(z: np.ndarray, rate: float) -> float:
    """Intercept a such that mean(sigmoid(z + a)) == rate (bisection; monotone in a)."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _sigmoid(z + mid).mean() < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def generate_applications(n: int, seed: int) -> pd.DataFrame:
    """``n`` synthetic applications: columns ``id``, ``y`` (1 = default) and 23 features."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    rng = np.random.default_rng(seed)

    stress = rng.standard_normal(n)  # hidden; drives everything risky
    sex = np.where(rng.random(n) < 0.60, 2, 1)
    education = rng.choice([1, 2, 3, 4, 5, 6], size=n, p=[0.35, 0.47, 0.16, 0.005, 0.01, 0.005])
    age = np.clip(np.rint(21 + rng.gamma(shape=3.0, scale=4.8, size=n)), 21, 79).astype(int)
    p_married = _sigmoid((age - 34) / 5.0)
    marriage = np.where(rng.random(n) < p_married, 1, 2)
    marriage = np.where(rng.random(n) < 0.012, 3, marriage)

    log_limit = (
        11.55
        + 0.28 * (education == 1)
        - 0.22 * (education == 3)
        + 0.025 * np.minimum(age - 21, 25)
        - 0.30 * stress
        + 0.70 * rng.standard_normal(n)
    )
    limit = np.clip(np.rint(np.exp(log_limit) / 10_000) * 10_000, 10_000, 1_000_000)

    # usage type: 0 inactive, 1 transactor (pays in full), 2 revolver
    u = rng.random(n)
    p_inactive = 0.09 + 0.03 * (stress < -1)
    p_transactor = np.clip(0.30 - 0.10 * stress, 0.05, 0.6)
    usage = np.where(u < p_inactive, 0, np.where(u < p_inactive + p_transactor, 1, 2))

    # repayment status, oldest month first (PAY_6) to most recent (PAY_0): a late
    # account holds its delay (pays the minimum), falls further behind, or cures.
    p_late = _sigmoid(-3.6 + 1.1 * stress + 0.4 * (usage == 2))
    p_worse = _sigmoid(-2.4 + 0.7 * stress)
    p_cure = _sigmoid(-0.9 - 0.6 * stress)
    status = np.zeros((n, 6), dtype=int)  # column 0 = PAY_6 ... column 5 = PAY_0
    delay = np.where(rng.random(n) < 2.5 * p_late, 1 + (rng.random(n) < 0.5), 0)
    for t in range(6):
        r = rng.random(n)
        late_next = np.where(r < p_cure, 0, np.where(r < p_cure + p_worse, np.minimum(delay + 1, 8), delay))
        new_late = np.where(rng.random(n) < p_late, 1 + (rng.random(n) < 0.45), 0)
        delay = np.where(delay > 0, late_next, new_late)
        base = np.where(usage == 0, -2, np.where(usage == 1, -1, 0))
        # an occasional active month for inactives and revolving month for transactors
        flip = rng.random(n) < 0.12
        base = np.where(flip & (usage < 2), base + 1, base)
        status[:, t] = np.where(delay > 0, delay, base)
    pay = status[:, ::-1]  # PAY_0 first

    # utilisation and bills, newest first; older months drift back towards smaller bills
    util0 = np.clip(rng.beta(1.6, 2.4, n) + 0.12 * stress, 0.0, 1.08)
    util0 = np.where(usage == 0, 0.0, np.where(usage == 1, util0 * 0.35, util0))
    bills = np.empty((n, 6))
    util = util0.copy()
    for t in range(6):
        if t:
            util = np.clip(util * (0.97 + 0.08 * rng.standard_normal(n)), 0.0, 1.1)
        bills[:, t] = np.rint(limit * util)
    for t in range(6):
        neg = rng.random(n) < 0.015
        bills[neg, t] = -np.rint(rng.exponential(2_000, int(neg.sum())))

    # payments: transactors pay last bill, revolvers a fraction, late months ~nothing
    frac = np.clip(rng.beta(1.2, 5.0, n) - 0.05 * stress, 0.0, 1.0)
    frac = np.where(usage == 1, rng.uniform(0.85, 1.05, n), frac)
    payments = np.empty((n, 6))
    for t in range(6):
        prev_bill = bills[:, t + 1] if t < 5 else bills[:, t]
        paid = np.maximum(prev_bill, 0) * np.clip(frac * (1 + 0.25 * rng.standard_normal(n)), 0, 1.2)
        late = pay[:, t] > 0
        paid = np.where(late & (rng.random(n) < 0.7), 0.0, paid)
        paid = np.where(usage == 0, np.where(rng.random(n) < 0.1, rng.exponential(1_500, n), 0.0), paid)
        payments[:, t] = np.rint(paid)

    # label model: non-linear in observable behaviour plus the hidden stress
    recent = np.maximum(pay[:, 0], 0)
    util_now = np.clip(bills[:, 0] / limit, -0.1, 1.2)
    repaid_share = payments[:, 0] / np.maximum(bills[:, 1], 1_000)
    months_late = (pay > 0).sum(axis=1)
    z = (
        0.75 * (recent >= 1)
        + 0.65 * (recent >= 2)
        + 0.08 * np.minimum(recent, 6)
        + 0.06 * months_late
        + 2.0 * (util_now - 0.6) ** 2 * (util_now > 0.6)
        + 0.5 * util_now
        - 0.6 * np.tanh(2.0 * repaid_share) * (recent == 0)
        + 0.35 * (usage == 0) * (age > 45)
        + 0.25 * (age < 25)
        + 0.006 * np.maximum(age - 50, 0) ** 1.5
        - 0.12 * np.log(limit / 100_000)
        + 0.55 * stress
        + 0.9 * rng.standard_normal(n)
    )
    a = _calibrate_intercept(z, DEFAULT_RATE)
    y = (rng.random(n) < _sigmoid(z + a)).astype(int)

    df = pd.DataFrame({"id": [f"A{seed % 100000:05d}{i:07d}" for i in range(n)], "y": y})
    df["LIMIT_BAL"] = limit.astype(np.int64)
    df["SEX"] = sex
    df["EDUCATION"] = education
    df["MARRIAGE"] = marriage
    df["AGE"] = age
    for j, c in enumerate(PAY_COLS):
        df[c] = pay[:, j]
    for j, c in enumerate(BILL_COLS):
        df[c] = bills[:, j].astype(np.int64)
    for j, c in enumerate(PAYAMT_COLS):
        df[c] = payments[:, j].astype(np.int64)
    return df


Split = Literal["iid", "noniid-label", "noniid-age", "noniid-limit"] | str


def _split_args(split: str) -> dict[str, object]:
    s = split.strip().lower()
    if s == "iid":
        return {"mode": "iid"}
    if s == "noniid-label":
        return {"mode": "label"}
    if s.startswith("noniid-"):
        name = s[len("noniid-") :]
        aliases = {"age": "AGE", "limit": "LIMIT_BAL", "limit_bal": "LIMIT_BAL"}
        col = aliases.get(name) or next((c for c in FEATURES if c.lower() == name), None)
        if col is None:
            raise ValueError(f"unknown split {split!r}: no feature {name!r}; features are {FEATURES}")
        return {"mode": "feature", "feature": col}
    raise ValueError(f"unknown split {split!r}; expected 'iid', 'noniid-label' or 'noniid-<feature>' (e.g. noniid-age)")


def bank_names(n_banks: int) -> list[str]:
    """Party names used for generated banks: bank1, bank2, ..."""
    return [f"bank{i + 1}" for i in range(n_banks)]


def write_bank_files(
    out_dir: str | Path,
    n_banks: int,
    rows_per_bank: int,
    test_rows: int,
    seed: int,
    split: Split = "iid",
    *,
    skew: float = 0.7,
) -> dict[str, Path]:
    """Generate one population, split it into ``n_banks`` training files plus a test file.

    Returns ``{"bank1": path, ..., "test": path}``.  The test file is an IID sample of
    the same population, so every bank's model is judged on the same customers.
    """
    if n_banks < 1 or rows_per_bank < 1 or test_rows < 1:
        raise ValueError("n_banks, rows_per_bank and test_rows must all be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = generate_applications(n_banks * rows_per_bank + test_rows, seed)
    test = df.iloc[:test_rows]
    train = df.iloc[test_rows:].reset_index(drop=True)
    parts = partition(train, n_banks, seed=seed, skew=skew, **_split_args(split))  # type: ignore[arg-type]
    paths: dict[str, Path] = {}
    for name, part in zip(bank_names(n_banks), parts):
        p = out / f"{name}.csv"
        part.to_csv(p, index=False)
        paths[name] = p
    p = out / "test.csv"
    test.to_csv(p, index=False)
    paths["test"] = p
    return paths


# --------------------------------------------------------------------------- messy tables (missing values, categoricals)

#: Columns :func:`generate_messy_applications` writes as category text (EDUCATION, MARRIAGE re-labelled; HOUSING new).
MESSY_CATEGORICAL = ["EDUCATION", "MARRIAGE", "HOUSING"]
#: The sentinel :func:`generate_messy_applications` writes for "not recorded" in ``MONTHS_AT_ADDRESS``.
MESSY_SENTINEL = -999
_EDU_TEXT = {1: "graduate school", 2: "university", 3: "high school", 4: "others", 5: "unknown", 6: "unknown"}
_MAR_TEXT = {1: "married", 2: "single", 3: "others"}


def generate_messy_applications(n: int, seed: int, *, missing_rate: float = 0.09) -> pd.DataFrame:
    """:func:`generate_applications` made to look like a real bank extract (the loader's and models' test bed).

    Why: real credit tables carry category text, blank cells and sentinels, and the
    missingness is informative.  Changes to the clean table:

    * ``EDUCATION`` / ``MARRIAGE`` are text ("university", "married", ...), ~2 % blank;
    * ``HOUSING`` (new, categorical: "own", "rent", "mortgage", "family"), ~3 % blank, riskier when renting;
    * ``PAY_AMT1`` is blank for ``missing_rate`` of rows, more often for defaulters (not at random);
    * ``BILL_AMT1`` is blank for ~half of ``missing_rate`` at random;
    * ``MONTHS_AT_ADDRESS`` (new, numeric) holds the sentinel :data:`MESSY_SENTINEL` for ~6 % of rows.

    Declare ``missing_values = ["-999"]`` (or leave the loader to infer kinds) to load it.
    """
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(f"missing_rate must be in [0, 1), got {missing_rate}")
    df = generate_applications(n, seed)
    rng = np.random.default_rng(seed + 7919)
    y = df["y"].to_numpy()
    edu = df["EDUCATION"].map(_EDU_TEXT).astype(object)
    mar = df["MARRIAGE"].map(_MAR_TEXT).astype(object)
    edu[rng.random(n) < 0.02] = None
    mar[rng.random(n) < 0.02] = None
    df["EDUCATION"], df["MARRIAGE"] = edu, mar
    p_rent = np.where(y == 1, 0.40, 0.25)
    u = rng.random(n)
    housing = np.where(u < p_rent, "rent", np.where(u < p_rent + 0.35, "own",
                       np.where(u < p_rent + 0.6, "mortgage", "family"))).astype(object)
    housing[rng.random(n) < 0.03] = None
    df["HOUSING"] = housing
    # informative missingness: defaulters leave the payment amount out twice as often
    p_miss = missing_rate * np.where(y == 1, 1.6, 0.83)
    pay1 = df["PAY_AMT1"].astype("float64")
    pay1[rng.random(n) < p_miss] = np.nan
    df["PAY_AMT1"] = pay1
    bill1 = df["BILL_AMT1"].astype("float64")
    bill1[rng.random(n) < missing_rate / 2] = np.nan
    df["BILL_AMT1"] = bill1
    months = np.rint(rng.gamma(2.0, 30.0, n)).astype(np.int64)
    months[rng.random(n) < 0.06] = MESSY_SENTINEL
    df["MONTHS_AT_ADDRESS"] = months
    return df

# --------------------------------------------------------------------------- heavy-tailed raw amounts
# Why: the shipped benchmark tables are standardized and well conditioned, so an optimiser that
# stops early looks converged there.  Raw amounts reach 50-70 standard deviations; on them early
# stopping leaves LR percent-level short of (or past) the pooled optimum's test log-loss.  Used by
# tests/test_lr_convergence.py, simulations/bench_vertical_lr.py and bench_horizontal.py.

HEAVY_LABEL_COLUMNS = ["limit", "age", "status", "bill0", "bill1", "bill2"]  # a vertical split: the label party's
HEAVY_PASSIVE_COLUMNS = ["pay0", "pay1", "pay2"]  # and the passive party's


def generate_heavy_tailed(n: int = 5000, seed: int = 1, sigma: float = 2.0) -> pd.DataFrame:
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


def generate_vertical_portfolio(
    n: int = 1_000_000, n_features: int = 30, seed: int = 0, *, chunk: int = 250_000
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A bank-portfolio-sized vertical split: (label party frame ``id, y, g0..``, passive frame ``id, h0..``).

    Why: SecureBoost at a portfolio's scale (issue 11: 1,000,000 rows x 30 features per party)
    needs a table whose signal is spread over both parties, so splits on both sides matter.
    Each party's features are correlated Gaussian scores, a few rounded to few distinct values
    (like counts and grades); the default log-odds is a sum of non-linear effects of 4 label-side
    and 4 passive-side features plus noise, calibrated to ``DEFAULT_RATE``.  Generated ``chunk``
    rows at a time: peak memory is about two float64 copies of one party's matrix
    (n x n_features x 8 bytes, 240 MB at 1M x 30) plus the frames.
    """
    if n < 2 or n_features < 4:
        raise ValueError(f"need at least 2 rows and 4 features per party, got {n} rows, {n_features} features")
    rng = np.random.default_rng(seed)
    mix = {p: rng.normal(0.0, 0.4, (n_features, n_features)) + np.eye(n_features) for p in ("g", "h")}
    G = np.empty((n, n_features))
    H = np.empty((n, n_features))
    z = np.empty(n)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        latent = rng.normal(size=hi - lo)  # shared stress: both parties see part of it
        for X, p in ((G, "g"), (H, "h")):
            X[lo:hi] = rng.normal(size=(hi - lo, n_features)) @ mix[p] + 0.8 * latent[:, None]
        g, h = G[lo:hi], H[lo:hi]
        z[lo:hi] = (0.6 * latent + 0.5 * np.tanh(g[:, 0]) + 0.4 * (g[:, 1] > 0.5) - 0.3 * np.abs(g[:, 2])
                    + 0.2 * g[:, 3] * (g[:, 3] > 0) + 0.5 * np.tanh(h[:, 0]) - 0.4 * (h[:, 1] < -0.3)
                    + 0.3 * np.abs(h[:, 2]) - 0.2 * h[:, 3] + rng.normal(0.0, 0.5, hi - lo))
    for X in (G, H):  # a few discrete columns (counts, grades)
        X[:, -3:] = np.round(X[:, -3:] * 2.0)
    y = (rng.random(n) < _sigmoid(z + _calibrate_intercept(z, DEFAULT_RATE))).astype(np.int64)
    ids = np.char.add("c", np.arange(n).astype(str))
    guest = pd.DataFrame(G, columns=[f"g{i}" for i in range(n_features)])
    guest.insert(0, "y", y)
    guest.insert(0, "id", ids)
    host = pd.DataFrame(H, columns=[f"h{i}" for i in range(n_features)])
    host.insert(0, "id", ids)
    return guest, host


def write_id_table(path: str | Path, n: int, *, start: int = 0, seed: int = 0,
                   row_group_rows: int = 1_000_000) -> Path:
    """A Parquet id list of ``n`` customers ``C{start..start+n-1}`` in a shuffled order, one row group at a time.

    Why: PSI at 10M ids per party needs a table that is itself never in memory whole — neither
    when it is made nor when it is read.  The order is an affine permutation of the row number
    (``(a*i + b) mod n``, ``a`` coprime to ``n``, drawn from ``seed``), so it is shuffled
    without holding a permutation; two tables with overlapping ``start`` ranges share ids.
    """
    import math

    import pyarrow as pa
    import pyarrow.parquet as pq

    if n < 1 or row_group_rows < 1:
        raise ValueError("n and row_group_rows must be positive")
    rng = np.random.default_rng(seed)
    a = int(rng.integers(1, max(2, n)))
    while math.gcd(a, n) != 1:
        a += 1
    b = int(rng.integers(0, n))
    path = Path(path)
    schema = pa.schema([("id", pa.string())])
    with pq.ParquetWriter(path, schema) as w:
        for lo in range(0, n, row_group_rows):
            i = np.arange(lo, min(n, lo + row_group_rows), dtype=np.int64)
            num = start + (a * i + b) % n  # a*i stays below 2**63 for n < 3e9
            ids = np.char.add("C", np.char.zfill(num.astype(str), 11))
            w.write_table(pa.table({"id": pa.array(ids.tolist(), type=pa.string())}, schema=schema),
                          row_group_size=row_group_rows)
    return path
