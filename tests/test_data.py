"""fedcredit.data: loading a party's table, and every bad-input error naming party, file, column, row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcredit.data import load_table, schema_fingerprint
from fedcredit.errors import DataError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.usefixtures("shared_data")


def _write(tmp_path: Path, text: str, name: str = "bank.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@needs_data
def test_loads_real_homo_file() -> None:
    t = load_table(DATA / "default_credit_homo_guest.csv", party="guest", label_col="y")
    assert t.X.shape == (8000, 23) and t.X.dtype == np.float64
    assert t.feature_names == [f"x{i}" for i in range(23)]
    assert t.y is not None and set(np.unique(t.y)) == {0, 1}
    assert all(type(i) is str for i in t.ids) and len(set(t.ids)) == 8000


def test_parquet_and_csv_agree_and_ids_keep_leading_zeros(tmp_path: Path) -> None:
    df = pd.DataFrame({"id": ["007", "010", "011"], "y": [0, 1, 0], "a": [1.5, 2.0, -3.0], "b": [1, 2, 3]})
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet", index=False)
    c = load_table(tmp_path / "t.csv", party="p", label_col="y")
    q = load_table(tmp_path / "t.parquet", party="p", label_col="y")
    assert list(c.ids) == ["007", "010", "011"] == list(q.ids)
    np.testing.assert_array_equal(c.X, q.X)
    np.testing.assert_array_equal(c.y, q.y)


def test_feature_subset_order_and_no_id_or_label(tmp_path: Path) -> None:
    p = _write(tmp_path, "a,b,c\n1,2,3\n4,5,6\n")
    t = load_table(p, party="p", id_col=None, label_col=None, feature_cols=["c", "a"])
    assert t.feature_names == ["c", "a"] and t.y is None
    np.testing.assert_array_equal(t.X, [[3, 1], [6, 4]])
    assert list(t.ids) == ["0", "1"]


def test_schema_fingerprint_is_order_sensitive() -> None:
    assert schema_fingerprint(["a", "b"]) == schema_fingerprint(["a", "b"])
    assert schema_fingerprint(["a", "b"]) != schema_fingerprint(["b", "a"])


@pytest.mark.parametrize(
    "text, must_contain",
    [
        # mostly numbers and one text: a typo or codes?  never guessed (declare the kind)
        ("id,y,a\n1,0,1\n2,1,abc\n3,0,2\n", ["party 'bank7'", "bank.csv", "column 'a'", "row 2", "line 3", "'abc'",
                                          "declare its kind"]),
        ("id,y,a\n1,0,1\n2,,3\n", ["column 'y'", "row 2", "missing/NaN"]),  # a label is never missing
        ("id,y,a\n1,0,1\n,1,3\n", ["id column 'id'", "row 2", "empty"]),
        ("id,y,a\n1,0,1\n2,1,2\n3,0,inf\n", ["column 'a'", "row 3", "infinite"]),
        ("id,y,a\n1,0,1\n2,2,3\n", ["label column 'y'", "row 2", "expected 0 or 1"]),
        ("id,y,a\n1,0,1\n2,1,3\n1,0,4\n", ["duplicate id '1'", "row 3", "first seen at row 1"]),
        ("id,y,a\n", ["header but no rows"]),
        ("", ["file is empty"]),
        ("id,a\n1,2\n", ["missing column(s) ['y']", "expected ['id', 'y']", "has ['id', 'a']"]),
    ],
)
def test_bad_tables_name_party_file_column_row(tmp_path: Path, text: str, must_contain: list[str]) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(DataError) as e:
        load_table(p, party="bank7", label_col="y")
    msg = str(e.value)
    assert "bank7" in msg and str(p) in msg
    for part in must_contain:
        assert part in msg, f"{part!r} not in {msg!r}"


def test_missing_requested_features_are_listed(tmp_path: Path) -> None:
    p = _write(tmp_path, "id,y,a\n1,0,1\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['b', 'c'\]"):
        load_table(p, party="b1", label_col="y", feature_cols=["a", "b", "c"])


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"party 'b1': data file .*nope.csv does not exist"):
        load_table(tmp_path / "nope.csv", party="b1")
    p = _write(tmp_path, "id,y,a\n1,0,1\n", name="bank.xlsx")
    with pytest.raises(DataError, match=r"unsupported file type '.xlsx'"):
        load_table(p, party="b1")
