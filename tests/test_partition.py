"""simulations.partition and simulations.generator: exact partitions, real skew, realistic data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from fedcredit.data import load_table
from simulations.generator import FEATURES, generate_applications, write_bank_files
from simulations.partition import partition


@pytest.fixture(scope="module")
def apps() -> pd.DataFrame:
    return generate_applications(12_000, seed=3)


def _assert_exact(df: pd.DataFrame, parts: list[pd.DataFrame]) -> None:
    ids = np.concatenate([p["id"].to_numpy() for p in parts])
    assert len(ids) == len(df), "rows lost or duplicated"
    assert len(set(ids)) == len(ids), "a row landed in two parties"
    assert set(ids) == set(df["id"])
    # rows are carried whole (not just ids): features still match the source row
    merged = pd.concat(parts).set_index("id").loc[df["id"]]
    np.testing.assert_array_equal(merged[FEATURES].to_numpy(), df[FEATURES].to_numpy())


@pytest.mark.parametrize("n", [1, 3, 7])
def test_iid_is_exact_and_balanced(apps: pd.DataFrame, n: int) -> None:
    parts = partition(apps, n, mode="iid", seed=1)
    _assert_exact(apps, parts)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    rates = [p["y"].mean() for p in parts]
    assert max(rates) - min(rates) < 0.05


@pytest.mark.parametrize("n", [3, 5])
def test_label_skew_gives_different_default_rates(apps: pd.DataFrame, n: int) -> None:
    parts = partition(apps, n, mode="label", skew=0.8, seed=2)
    _assert_exact(apps, parts)
    rates = np.array([p["y"].mean() for p in parts])
    overall = apps["y"].mean()
    assert rates.max() - rates.min() >= 1.4 * overall * 0.8 * 0.9, rates  # ~ 2*skew*overall spread
    assert np.all(np.diff(rates) > 0), "rates should increase bank by bank"
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


@pytest.mark.parametrize("feature", ["AGE", "LIMIT_BAL"])
def test_feature_skew_separates_feature_means(apps: pd.DataFrame, feature: str) -> None:
    parts = partition(apps, 3, mode="feature", feature=feature, skew=0.8, seed=4)
    _assert_exact(apps, parts)
    means = np.array([p[feature].mean() for p in parts])
    sd = apps[feature].std()
    assert np.all(np.diff(means) > 0.3 * sd), (feature, means, sd)
    iid = partition(apps, 3, mode="feature", feature=feature, skew=0.0, seed=4)
    iid_means = np.array([p[feature].mean() for p in iid])
    assert np.ptp(iid_means) < 0.1 * sd, "skew=0 must be (close to) IID"
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 2


def test_partition_rejects_bad_arguments(apps: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="needs feature"):
        partition(apps, 3, mode="feature")
    with pytest.raises(ValueError, match="not a column"):
        partition(apps, 3, mode="feature", feature="INCOME")
    with pytest.raises(ValueError, match="skew"):
        partition(apps, 3, mode="label", skew=1.5)
    with pytest.raises(ValueError, match="unknown partition mode"):
        partition(apps, 3, mode="dirichlet")  # type: ignore[arg-type]


def test_generator_is_realistic_and_learnable(apps: pd.DataFrame) -> None:
    assert list(apps.columns) == ["id", "y", *FEATURES]
    assert 0.19 < apps["y"].mean() < 0.25  # UCI: 22.1 %
    assert apps["AGE"].between(21, 79).all() and apps["LIMIT_BAL"].between(10_000, 1_000_000).all()
    assert set(apps["PAY_0"].unique()) <= set(range(-2, 9))
    # delinquency is predictive, as in the real book
    by_pay = apps.groupby(apps["PAY_0"] >= 2)["y"].mean()
    assert by_pay[True] > 2.5 * by_pay[False]
    X, y = apps[FEATURES].to_numpy(float), apps["y"].to_numpy()
    s = StandardScaler().fit(X[:8000])
    lr = LogisticRegression(max_iter=2000).fit(s.transform(X[:8000]), y[:8000])
    auc = roc_auc_score(y[8000:], lr.predict_proba(s.transform(X[8000:]))[:, 1])
    assert 0.68 < auc < 0.80, auc
    again = generate_applications(12_000, seed=3)
    pd.testing.assert_frame_equal(apps, again)
    assert not generate_applications(100, seed=4).equals(generate_applications(100, seed=3))


def test_write_bank_files_noniid_label(tmp_path: Path) -> None:
    paths = write_bank_files(tmp_path, n_banks=4, rows_per_bank=500, test_rows=300, seed=5, split="noniid-label")
    assert sorted(paths) == ["bank1", "bank2", "bank3", "bank4", "test"]
    tables = {p: load_table(f, party=p, label_col="y") for p, f in paths.items()}
    assert [len(tables[f"bank{i}"]) for i in range(1, 5)] == [500] * 4 and len(tables["test"]) == 300
    rates = [tables[f"bank{i}"].y.mean() for i in range(1, 5)]
    assert rates[-1] - rates[0] > 0.15
    all_ids = np.concatenate([t.ids for t in tables.values()])
    assert len(set(all_ids)) == len(all_ids) == 2300
    age = write_bank_files(tmp_path / "age", 2, 400, 100, seed=5, split="noniid-age")
    assert load_table(age["bank2"], party="b", label_col="y").X[:, FEATURES.index("AGE")].mean() > load_table(
        age["bank1"], party="b", label_col="y"
    ).X[:, FEATURES.index("AGE")].mean() + 3
    with pytest.raises(ValueError, match="unknown split"):
        write_bank_files(tmp_path, 2, 10, 10, seed=1, split="noniid-income")
