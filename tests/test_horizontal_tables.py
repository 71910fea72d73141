"""Horizontal jobs on real tables: the job's agreed one-hot encoding, and what happens when a bank's table
does not fit it (in process, the encrypted protocol end to end; the trained case is in test_scoring_inputs.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcredit.data import OneHotEncoding, Table
from fedcredit.errors import DataError
from fedcredit.params import HorizontalJob
from fedcredit.protocols.horizontal import run_coordinator
from simulations.generator import MESSY_SENTINEL, generate_messy_applications
from simulations.horizontal_sim import make_local_federation

EDU = ["graduate school", "high school", "others", "university", "unknown"]
MAR = ["married", "others", "single"]
HOUSING = ["family", "mortgage", "own", "rent"]
CATS = {"EDUCATION": EDU, "MARRIAGE": MAR, "HOUSING": HOUSING}
MISSING = ["PAY_AMT1", "BILL_AMT1", "MONTHS_AT_ADDRESS"]


@pytest.fixture(scope="module")
def banks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("messy")
    df = generate_messy_applications(2400, seed=3)
    out = {}
    for i, b in enumerate(["bank1", "bank2"]):
        out[b] = root / f"{b}.csv"
        df.iloc[i * 1000:(i + 1) * 1000].to_csv(out[b], index=False)
    out["test"] = root / "test.csv"
    df.iloc[2000:].to_csv(out["test"], index=False)
    return out


def _fed(banks: dict[str, Path], tmp: Path, **replace: Path):
    files = {b: replace.get(b, banks[b]) for b in ("bank1", "bank2")}
    return make_local_federation(files, {b: banks["test"] for b in files}, tmp, missing_values=[str(MESSY_SENTINEL)])


def test_generated_messy_banks_train_with_the_agreed_encoding(banks: dict[str, Path], tmp_path: Path) -> None:
    res = run_coordinator(_fed(banks, tmp_path).channel, HorizontalJob(
        run_id="messy", parties=["bank1", "bank2"], rounds=3, categories=CATS, missing_indicators=MISSING))
    assert not res.dropped and "HOUSING=rent" in res.feature_names and "PAY_AMT1:missing" in res.feature_names
    assert res.global_metrics is not None and res.global_metrics["auc"] > 0.65


def test_a_bank_whose_table_does_not_fit_the_job_is_named(banks: dict[str, Path], tmp_path: Path) -> None:
    job = dict(run_id="bad", parties=["bank1", "bank2"], rounds=1)
    with pytest.raises(DataError, match=r"party 'bank1'.*column 'EDUCATION' is categorical.*\[model.categories\]"):
        run_coordinator(_fed(banks, tmp_path / "a").channel, HorizontalJob(**job, missing_indicators=MISSING))
    with pytest.raises(DataError, match=r"party 'bank1'.*column 'BILL_AMT1' has \d+ missing value\(s\) \(the first at "
                                        r"row \d+\); list it in \[model\].missing_indicators"):
        run_coordinator(_fed(banks, tmp_path / "b").channel, HorizontalJob(**job, categories=CATS))
    # a category a bank holds but the job did not list: refused with a count, never the value (it may leave the bank)
    odd = tmp_path / "bank2_odd.csv"
    df = pd.read_csv(banks["bank2"])
    df.loc[5, "HOUSING"] = "houseboat-secret"
    df.to_csv(odd, index=False)
    with pytest.raises(DataError) as e:
        run_coordinator(_fed(banks, tmp_path / "c", bank2=odd).channel,
                        HorizontalJob(**job, categories=CATS, missing_indicators=MISSING))
    assert "party 'bank2'" in str(e.value) and "['HOUSING']" in str(e.value) and "houseboat" not in str(e.value)


def test_one_hot_encoding_columns_and_codes() -> None:
    t = Table("p", "f", ["a", "b", "c", "d"], np.array([[0.0, 1.0], [np.nan, np.nan], [1.0, 3.0], [2.0, 4.0]]),
              ["g", "n"], kinds=["categorical", "numeric"], categories={"g": ["x", "y", "z"]})
    enc = OneHotEncoding(("g", "n"), {"g": ("y", "x")}, ("n",), fill=-1.0)
    assert enc.columns == ["g=y", "g=x", "g=(missing)", "n", "n:missing"]
    out, unknown = enc.encode(t)
    np.testing.assert_array_equal(out.X, [[0, 1, 0, 1, 0], [0, 0, 1, -1, 1], [1, 0, 0, 3, 0], [0, 0, 1, 4, 0]])
    assert unknown == {"g": 1}  # "z" is not an agreed category: the (missing) column, counted
    X, per_row = enc.encode_rows([{"g": "x", "n": 1.0}, {"g": None, "n": None}, {"g": "z", "n": 4}], who="t")
    np.testing.assert_array_equal(X, [[0, 1, 0, 1, 0], [0, 0, 1, -1, 1], [0, 0, 1, 4, 0]])
    assert per_row == [0, 0, 1]
    assert OneHotEncoding.from_dict(enc.to_dict(), source="t") == enc
