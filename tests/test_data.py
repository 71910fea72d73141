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


# --------------------------------------------------------------------------- real tables: missing values, categoricals


def _ds(path: Path, **kw):
    from fedcredit.config import DatasetSection

    return DatasetSection(path=path, label_column="y", **kw)


def test_missing_cells_and_sentinels_are_nan_in_features_only(tmp_path: Path) -> None:
    from fedcredit.data import load_dataset

    p = _write(tmp_path, "id,y,a,b,c\n1,0,1.5,-999,NA\n2,1,,7,x\n3,0,NaN,8,NA\n4,1,2.5,9,y\n")
    t = load_dataset(_ds(p, missing_values=["-999", "NA"]), party="bank")
    assert t.kinds == ["numeric", "numeric", "categorical"]
    a, b, c = t.X.T
    np.testing.assert_array_equal(np.isnan(a), [False, True, True, False])  # empty and NaN: always missing
    np.testing.assert_array_equal(np.isnan(b), [True, False, False, False])  # the -999 sentinel
    assert t.categories["c"] == ["x", "y"]  # "NA" is a sentinel here, not a category
    np.testing.assert_array_equal(c, [np.nan, 0.0, np.nan, 1.0])
    # without the sentinel declared, -999 is a number and "NA" a category
    t2 = load_dataset(_ds(p), party="bank")
    assert t2.X[0, 1] == -999.0 and t2.categories["c"] == ["NA", "x", "y"]


def test_declared_categorical_keeps_text_and_vocabulary_is_sorted(tmp_path: Path) -> None:
    from fedcredit.data import InputSchema, load_dataset

    p = _write(tmp_path, "id,y,edu,amt\n1,0,02,10\n2,1,01,20\n3,0,10,30\n4,1,,40\n5,0,02,50\n")
    t = load_dataset(_ds(p, columns={"edu": "categorical"}), party="bank")
    assert t.kinds == ["categorical", "numeric"] and t.categories == {"edu": ["01", "02", "10"]}
    np.testing.assert_array_equal(t.X[:, 0], [1, 0, 2, np.nan, 1])
    # the model's codes from another file's own vocabulary: the InputSchema rule
    schema = InputSchema.of(t)
    q = _write(tmp_path, "id,y,edu,amt\n9,0,10,1\n8,1,99,2\n", name="score.csv")
    X, unknown = schema.encode(load_dataset(_ds(q, columns={"edu": "categorical"}), party="bank"))
    np.testing.assert_array_equal(X[:, 0], [2, np.nan])
    assert unknown == {"edu": 1}
    # undeclared, the same column of digits is numeric (inferred)
    assert load_dataset(_ds(p), party="bank").kinds == ["numeric", "numeric"]


def test_inference_and_its_refusals(tmp_path: Path) -> None:
    from fedcredit.data import load_dataset

    p = _write(tmp_path, "id,y,txt,num,mixed\n" + "".join(f"{i},{i % 2},c{i % 3},{i}.5,{i if i % 4 else 'z'}\n"
                                                        for i in range(1, 13)))
    with pytest.raises(DataError) as e:
        load_dataset(_ds(p), party="bank")
    msg = str(e.value)  # 9 of 12 values are numbers: a typo or codes? declare it, never a guess
    assert "column 'mixed'" in msg and "'z'" in msg and "row 4" in msg and "declare its kind" in msg
    t = load_dataset(_ds(p, columns={"mixed": "categorical"}), party="bank")
    assert t.kinds == ["categorical", "numeric", "categorical"] and t.categories["txt"] == ["c0", "c1", "c2"]
    t = load_dataset(_ds(p, columns={"mixed": "ignore"}), party="bank")
    assert t.feature_names == ["txt", "num"]
    with pytest.raises(DataError, match=r"row 4 \(line 5\): column 'mixed' has non-numeric value 'z'"):
        load_dataset(_ds(p, columns={"mixed": "numeric"}), party="bank")


@pytest.mark.parametrize(
    "text, columns, must_contain",
    [
        ("id,y,a\n1,0,1\n2,1,inf\n", {}, ["column 'a'", "row 2", "infinite"]),
        ("id,y,a\n1,0,1\n2,1,-inf\n", {"a": "numeric"}, ["column 'a'", "row 2", "infinite"]),
        ("id,y,a\n1,0,x\n2,,y\n", {}, ["column 'y'", "row 2", "missing/NaN"]),
        ("id,y,a\n1,0,x\n,1,y\n", {"a": "categorical"}, ["id column 'id'", "row 2", "empty"]),
        ("id,y,a\n" + "".join(f"{i},0,t{i}\n" for i in range(1002)), {}, ["column 'a'", "1002 distinct categories",
                                                                          "'ignore'"]),
    ],
)
def test_real_table_errors_name_party_file_column_row(tmp_path: Path, text: str, columns: dict,
                                                      must_contain: list[str]) -> None:
    from fedcredit.data import load_dataset

    p = _write(tmp_path, text)
    with pytest.raises(DataError) as e:
        load_dataset(_ds(p, columns=columns, missing_values=["-999"]), party="bank7")
    for s in ["party 'bank7'", "bank.csv", *must_contain]:
        assert s in str(e.value), (s, str(e.value))


def test_parquet_categoricals_and_sentinels(tmp_path: Path) -> None:
    from fedcredit.data import load_dataset

    df = pd.DataFrame({"id": ["a", "b", "c"], "y": [0, 1, 0], "grade": pd.array(["B", None, "A"], dtype="string"),
                       "code": pd.array([3, -999, 1], dtype="Int64"), "amt": pd.array([1.0, None, 3.0], dtype="Float64")})
    df.to_parquet(tmp_path / "t.parquet", index=False)
    t = load_dataset(_ds(tmp_path / "t.parquet", columns={"code": "categorical"}, missing_values=["-999"]),
                     party="p")
    assert t.kinds == ["categorical", "categorical", "numeric"]
    assert t.categories == {"grade": ["A", "B"], "code": ["1", "3"]}  # an int column read as text "3", not "3.0"
    np.testing.assert_array_equal(t.X, [[1, 1, 1], [np.nan, np.nan, np.nan], [0, 0, 3]])


def test_schema_is_printed_saved_edited_and_read_back(tmp_path: Path) -> None:
    import tomllib

    from fedcredit.data import load_dataset, schema_toml

    p = _write(tmp_path, "id,y,grade,amt,note\n1,0,A,10,-999\n2,1,B,,5\n3,0,A,30,6\n")
    ds = _ds(p, missing_values=["-999"])
    t = load_dataset(ds, party="bank")
    text = schema_toml(t, ds, dataset="train")
    doc = tomllib.loads(text)
    assert doc == {"missing_values": ["-999"], "columns": {"grade": "categorical", "amt": "numeric", "note": "numeric"}}
    assert "33.3 % missing" in text and "2 categories: A, B" in text
    saved = tmp_path / "schema.toml"
    saved.write_text(text)
    back = load_dataset(_ds(p, schema_file=saved), party="bank")  # the sentinel comes from the file too
    assert back.kinds == t.kinds and back.categories == t.categories
    np.testing.assert_array_equal(back.X, t.X)
    # an edit to the file takes effect; the dataset's own keys win over it
    saved.write_text(text.replace('"note" = "numeric"', '"note" = "ignore"'))
    assert load_dataset(_ds(p, schema_file=saved), party="bank").feature_names == ["grade", "amt"]
    assert load_dataset(_ds(p, schema_file=saved, columns={"note": "categorical"}),
                        party="bank").kinds == ["categorical", "numeric", "categorical"]


def test_cli_party_schema_prints_and_writes(tmp_path: Path, capsys) -> None:
    import tomllib

    from fedcredit.cli import main

    _write(tmp_path, "id,y,grade,amt\n1,0,A,10\n2,1,B,\n", name="train.csv")
    cfg = tmp_path / "bank.toml"
    cfg.write_text('[party]\nname = "bank"\nidentity_dir = "certs"\nstate_dir = "state"\n'
                   '[coordinator]\nflower_address = "127.0.0.1:1"\nrelay_address = "127.0.0.1:2"\n'
                   '[datasets.train]\npath = "train.csv"\nlabel_column = "y"\n')
    assert main(["party", "schema", "--config", str(cfg), "--dataset", "train", "--write", str(tmp_path / "s.toml")]) == 0
    out = capsys.readouterr().out
    assert '"grade" = "categorical"' in out and "s.toml" in out
    assert tomllib.loads((tmp_path / "s.toml").read_text())["columns"] == {"grade": "categorical", "amt": "numeric"}
    assert main(["party", "schema", "--config", str(cfg), "--dataset", "nope"]) == 2
    # an existing (perhaps hand-edited) schema file is never overwritten silently
    (tmp_path / "s.toml").write_text("# edited by the risk team\n")
    capsys.readouterr()
    assert main(["party", "schema", "--config", str(cfg), "--write", str(tmp_path / "s.toml")]) == 2
    assert "already exists" in capsys.readouterr().err and (tmp_path / "s.toml").read_text() == "# edited by the risk team\n"
    assert main(["party", "schema", "--config", str(cfg), "--write", str(tmp_path / "s.toml"), "--force"]) == 0
    assert "columns" in tomllib.loads((tmp_path / "s.toml").read_text())


def test_german_credit_tables_load_at_both_parties(tmp_path: Path) -> None:
    """The issue's failing case: ~9 % of the passive party's amount blank, a -999 sentinel at the label party."""
    from fedcredit.config import DatasetSection
    from fedcredit.data import load_dataset
    from simulations.german_credit import GERMAN_CATEGORICAL, write_german_vertical

    specs = write_german_vertical(tmp_path, missing=True)
    bank = load_dataset(DatasetSection(**specs["bank"]["train"]), party="bank")
    fintech = load_dataset(DatasetSection(**specs["fintech"]["train"]), party="fintech")
    assert len(bank) == len(fintech) == 1000 and bank.ids == fintech.ids and bank.y is not None
    assert int(bank.y.sum()) == 300
    for t in (bank, fintech):
        assert {f for f, k in zip(t.feature_names, t.kinds) if k == "categorical"} == \
            set(GERMAN_CATEGORICAL) & set(t.feature_names)
    amount = fintech.X[:, fintech.feature_names.index("credit_amount")]
    age = bank.X[:, bank.feature_names.index("age_in_years")]
    assert 0.06 < np.isnan(amount).mean() < 0.12 and 0.03 < np.isnan(age).mean() < 0.09
    assert np.nanmin(age) >= 18  # the sentinel never reaches a model as a number


def test_generated_messy_applications_load(tmp_path: Path) -> None:
    from fedcredit.config import DatasetSection
    from fedcredit.data import load_dataset
    from simulations.generator import MESSY_CATEGORICAL, MESSY_SENTINEL, generate_messy_applications

    generate_messy_applications(3000, seed=5).to_csv(tmp_path / "m.csv", index=False)
    t = load_dataset(DatasetSection(path=tmp_path / "m.csv", label_column="y",
                                    missing_values=[str(MESSY_SENTINEL)]), party="bank")
    assert [f for f, k in zip(t.feature_names, t.kinds) if k == "categorical"] == MESSY_CATEGORICAL
    miss = dict(zip(t.feature_names, np.isnan(t.X).mean(axis=0)))
    assert 0.06 < miss["PAY_AMT1"] < 0.12 and 0.03 < miss["MONTHS_AT_ADDRESS"] < 0.09 and miss["AGE"] == 0
    assert t.y is not None  # informative missingness: defaulters leave PAY_AMT1 out more often
    pay1 = np.isnan(t.X[:, t.feature_names.index("PAY_AMT1")])
    assert pay1[t.y == 1].mean() > 1.4 * pay1[t.y == 0].mean()


def test_vertical_lr_without_binning_refuses_missing_values_naming_the_column(tmp_path: Path) -> None:
    """The loader accepts the issue's table; a model with no rule for missing values stops, naming the column."""
    import time

    from rich.console import Console

    from fedcredit.config import JobConfig
    from simulations.german_credit import write_german_vertical
    from simulations.vertical_sim import run_vertical_inprocess

    data = write_german_vertical(tmp_path / "data", missing=True)
    job = JobConfig.model_validate({"job": {"type": "vertical-lr", "parties": ["bank", "fintech"],
                                            "label_party": "bank", "round_timeout_s": 900.0},
                                    "model": {"test_fraction": 0.2, "max_epochs": 2}})
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"party '(bank|fintech)'.*column '\w+' (is categorical|has \d+ missing value)"
                                        r".*\[model.binning\]"):
        run_vertical_inprocess(job, data, tmp_path / "out", Console(quiet=True))  # type: ignore[arg-type]
    assert time.perf_counter() - t0 < 60


def test_startup_summary_says_what_was_inferred_and_where_values_are_missing(tmp_path: Path) -> None:
    from fedcredit.data import load_dataset, table_summary

    p = _write(tmp_path, "id,y,grade,amt,n\n1,0,A,10,1\n2,1,B,,2\n")
    ds = _ds(p, columns={"n": "numeric"})
    line = table_summary(load_dataset(ds, party="bank"), ds, dataset="train")
    assert line == ("dataset 'train': 2 rows, 3 features (1 categorical, 2 inferred), missing values in 1: amt "
                    "(fedcredit party schema --dataset train prints the kinds)")


def test_a_column_named_like_a_config_path_keeps_its_kind(tmp_path: Path) -> None:
    from fedcredit.config import PartyConfig, parse_config

    cfg = parse_config({"party": {"name": "bank", "identity_dir": "certs", "state_dir": "state"},
                        "coordinator": {"flower_address": "127.0.0.1:1", "relay_address": "127.0.0.1:2"},
                        "datasets": {"train": {"path": "t.csv", "columns": {"path": "categorical"},
                                               "schema_file": "s.toml"}}}, PartyConfig, tmp_path / "bank.toml")
    ds = cfg.dataset("train")
    assert ds.columns == {"path": "categorical"} and ds.schema_file == (tmp_path / "s.toml").resolve()


def test_a_numeric_request_value_of_a_categorical_feature_is_its_category_text() -> None:
    """1 / 1.0 sent for a category column of codes is category "1" in every encoder (never scored as missing while
    the unknown-category count calls it known): the one rule is data.category_text."""
    from fedcredit.data import InputSchema, OneHotEncoding, category_text

    assert [category_text(v) for v in (1, 1.0, " 2 ", "x", 2.5)] == ["1", "1", "2", "x", "2.5"]
    schema = InputSchema(("c",), ("categorical",), {"c": ("1", "2")})
    X, unknown = schema.encode_rows([{"c": 1.0}, {"c": 2}, {"c": " 1 "}, {"c": 3}], who="test")
    assert X[:, 0].tolist()[:3] == [0.0, 1.0, 0.0] and np.isnan(X[3, 0]) and unknown == {"c": 1}
    enc = OneHotEncoding(features=("c",), categories={"c": ("1", "2")}, missing=(), fill=0.0)
    Xh, per_row = enc.encode_rows([{"c": 1.0}, {"c": 3}], who="test")
    assert Xh[0].tolist() == [1.0, 0.0, 0.0] and per_row == [0, 1]
