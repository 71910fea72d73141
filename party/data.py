"""Loading and validating a party's local table (CSV or Parquet).

A party's data never leaves the party, so a bad file must be caught here, before any
protocol step, with an error the data owner can act on: it names the party, the file,
the column and the first offending row.  Row numbers are 1-based data rows (the
header is not counted); for CSV files the line number in the file is given as well.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from fedcredit.errors import DataError

SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass
class LocalTable:
    """A party's validated table: ids, a float64 feature matrix and (optionally) 0/1 labels."""

    party: str
    path: Path
    ids: np.ndarray
    X: np.ndarray
    y: np.ndarray | None
    feature_names: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        return int(self.X.shape[1])


def schema_fingerprint(feature_names: Sequence[str]) -> str:
    """Stable hash of an ordered feature list: parties compare schemas without shipping data."""
    blob = json.dumps(list(feature_names), separators=(",", ":"), ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _where(party: str, path: Path, row: int, is_csv: bool) -> str:
    loc = f"row {row + 1}"
    if is_csv:
        loc += f" (line {row + 2})"
    return f"party '{party}', file {path}: {loc}"


def _read(path: Path, party: str, id_column: str | None) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"party '{party}', file {path}: unsupported file type '{path.suffix or '(none)'}'; "
            f"expected one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    try:
        if suffix == ".csv":
            dtype = {id_column: str} if id_column else None
            return pd.read_csv(path, dtype=dtype, skipinitialspace=True)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"party '{party}', file {path}: the file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as e:
        raise DataError(f"party '{party}', file {path}: cannot be parsed as {suffix[1:]}: {e}") from None


def _numeric_column(df: pd.DataFrame, col: str, party: str, path: Path, is_csv: bool) -> np.ndarray:
    raw = df[col]
    if pd.api.types.is_bool_dtype(raw):
        return raw.to_numpy(dtype=np.float64)
    if pd.api.types.is_numeric_dtype(raw):
        vals = raw.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        coerced = pd.to_numeric(raw, errors="coerce")
        bad = coerced.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            shown = str(raw.iloc[i])
            shown = shown if len(shown) <= 24 else shown[:21] + "..."
            raise DataError(
                f"{_where(party, path, i, is_csv)}: column '{col}' has non-numeric value {shown!r}; "
                f"expected a number ({int(bad.sum())} such value(s) in this column)"
            )
        vals = coerced.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(vals)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        kind = "missing/NaN" if np.isnan(vals[i]) else "infinite"
        raise DataError(
            f"{_where(party, path, i, is_csv)}: column '{col}' has a {kind} value; "
            f"expected a finite number ({int((~finite).sum())} such value(s) in this column)"
        )
    return vals


def load_table(
    path: str | Path,
    *,
    party: str,
    id_column: str | None = "id",
    label_column: str | None = "y",
    feature_columns: Sequence[str] | None = None,
) -> LocalTable:
    """Read ``path`` (CSV or Parquet by suffix) and validate it for federated training.

    ``feature_columns=None`` means every column except the id and label columns, in
    file order.  ``id_column=None`` numbers the rows instead.  Raises
    :class:`~fedcredit.errors.DataError` naming party, file, column and row.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"party '{party}': data file {path} does not exist")
    if not path.is_file():
        raise DataError(f"party '{party}': data path {path} is not a file")
    is_csv = path.suffix.lower() == ".csv"
    df = _read(path, party, id_column)
    cols = [str(c) for c in df.columns]
    df.columns = cols

    expected: list[str] = []
    if id_column:
        expected.append(id_column)
    if label_column:
        expected.append(label_column)
    if feature_columns is not None:
        expected.extend(feature_columns)
    missing = [c for c in expected if c not in cols]
    if missing:
        raise DataError(
            f"party '{party}', file {path}: missing column(s) {missing}; expected {expected}, "
            f"the file has {cols}"
        )
    dupes = sorted({c for c in cols if cols.count(c) > 1})
    if dupes:
        raise DataError(f"party '{party}', file {path}: duplicate column name(s) {dupes}")

    if feature_columns is None:
        features = [c for c in cols if c not in (id_column, label_column)]
    else:
        features = list(feature_columns)
        if len(set(features)) != len(features):
            raise DataError(f"party '{party}': feature_columns lists a column twice: {features}")
        clash = [c for c in features if c in (id_column, label_column)]
        if clash:
            raise DataError(f"party '{party}': column(s) {clash} cannot be both a feature and the id/label")
    if not features:
        raise DataError(f"party '{party}', file {path}: no feature columns (the file has only {cols})")
    if len(df) == 0:
        raise DataError(f"party '{party}', file {path}: the table has a header but no rows")

    if id_column:
        id_raw = df[id_column]
        if id_raw.isna().any():
            i = int(np.flatnonzero(id_raw.isna().to_numpy())[0])
            raise DataError(f"{_where(party, path, i, is_csv)}: id column '{id_column}' is empty")
        ids = id_raw.astype(str).str.strip().to_numpy(dtype=object).astype(str)
        dup = pd.Series(ids).duplicated()
        if dup.any():
            i = int(np.flatnonzero(dup.to_numpy())[0])
            first = int(np.flatnonzero(ids == ids[i])[0])
            raise DataError(
                f"{_where(party, path, i, is_csv)}: duplicate id {str(ids[i])!r} in column '{id_column}' "
                f"(first seen at row {first + 1}); ids must be unique ({int(dup.sum())} duplicate(s))"
            )
    else:
        ids = np.arange(len(df)).astype(str)

    X = np.empty((len(df), len(features)), dtype=np.float64)
    for j, c in enumerate(features):
        X[:, j] = _numeric_column(df, c, party, path, is_csv)

    y: np.ndarray | None = None
    if label_column:
        lab = _numeric_column(df, label_column, party, path, is_csv)
        bad = (lab != 0.0) & (lab != 1.0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{_where(party, path, i, is_csv)}: label column '{label_column}' has value {lab[i]:g}; "
                f"expected 0 or 1 ({int(bad.sum())} such value(s))"
            )
        y = lab.astype(np.int64)

    return LocalTable(party=party, path=path, ids=ids, X=X, y=y, feature_names=features)
