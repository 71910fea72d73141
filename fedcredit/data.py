"""A party's data table: ONE type (:class:`Table`) and ONE validating loader, for every protocol.

Why one module: a party's data never leaves the party, so a bad file must be caught
before any protocol step, with an error the data owner can act on, and the check the
party daemon runs at start-up must be the very check a job runs (else it is a false
assurance).  Every error names the party, the file, the column and the first
offending row; rows are 1-based data rows (the header is not counted), and for CSV
files the line number in the file is given as well.

Ids are read as text and normalised ONCE, here, with the PSI id rule
(:func:`crypto.psi.normalize_id`: ``"00123"`` stays ``"00123"``, surrounding
whitespace is dropped); everything downstream (PSI, splits, scoring look-ups)
compares the table's ids as they are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from crypto.psi import normalize_id as _psi_normalize_id
from fedcredit.config import DatasetSection
from fedcredit.errors import DataError

__all__ = [
    "ALWAYS_MISSING",
    "SUPPORTED_SUFFIXES",
    "ColumnKind",
    "InputSchema",
    "category_text",
    "OneHotEncoding",
    "Table",
    "normalize_id",
    "normalize_ids",
    "schema_fingerprint",
    "table_from_frame",
    "load_table",
    "load_dataset",
    "dataset_schema",
    "schema_toml",
    "dataset_columns",
    "split_by_ids",
    "require_numbers",
    "ParquetIds",
    "IdColumn",
    "id_hashes",
    "read_ids_stream",
    "iter_row_groups",
    "iter_feature_batches",
    "table_summary",
]

SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq")

ColumnKind = Literal["numeric", "categorical"]


# --------------------------------------------------------------------------- ids


def normalize_id(value: object) -> str:
    """The PSI id rule as text: the one definition of when two ids are the same customer."""
    return _psi_normalize_id(value).decode("utf-8")


def normalize_ids(values: Iterable[object], *, party: str, source: str) -> list[str]:
    """:func:`normalize_id` of each value; a bad one is a DataError naming party, source and position."""
    out: list[str] = []
    for k, v in enumerate(values):
        try:
            out.append(normalize_id(v))
        except DataError as e:
            raise DataError(f"party '{party}': {source}, id #{k + 1}: {e}") from None
    return out


def schema_fingerprint(feature_names: Sequence[str]) -> str:
    """Stable hash of an ordered feature list: parties compare schemas without shipping data."""
    blob = json.dumps(list(feature_names), separators=(",", ":"), ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------- the table


@dataclass
class Table:
    """One party's validated rows: normalised unique string ids, a float64 feature matrix, 0/1 labels or None.

    Feature values: ``NaN`` is a missing value (empty cell, NaN or a configured sentinel);
    a categorical column holds the category's code ``k`` as a float, meaning
    ``categories[name][k]`` (the table's own vocabulary, sorted), or NaN when missing.
    ``kinds[j]`` is the kind of column ``j``; every column is numeric unless declared or
    inferred categorical.  A model stores the category *strings* it was trained on and
    re-codes a scoring table with :meth:`codes` (codes differ between files).
    """

    party: str
    source: str
    ids: list[str]
    X: np.ndarray
    feature_names: list[str]
    y: np.ndarray | None = None
    _index: dict[str, int] | None = field(default=None, repr=False, compare=False)
    kinds: list[ColumnKind] = field(default_factory=list)
    categories: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.kinds:
            self.kinds = ["numeric"] * len(self.feature_names)
        if len(self.kinds) != len(self.feature_names):
            raise DataError(f"party '{self.party}', file {self.source}: {len(self.kinds)} column kinds for "
                            f"{len(self.feature_names)} features")

    def kind_of(self, feature: str) -> ColumnKind:
        return self.kinds[self.feature_names.index(feature)]

    @property
    def categorical_mask(self) -> np.ndarray:
        """Boolean per feature column: True where the column is categorical."""
        return np.array([k == "categorical" for k in self.kinds], dtype=bool)

    def codes(self, feature: str, vocabulary: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Column ``feature`` re-coded to ``vocabulary`` (a model's categories): (codes, unknown).

        ``codes`` is float64, NaN where the value is missing OR not in ``vocabulary``;
        ``unknown`` marks the latter, so a caller can apply its documented treatment.
        """
        j = self.feature_names.index(feature)
        if self.kinds[j] != "categorical":
            raise DataError(f"party '{self.party}', file {self.source}: column '{feature}' is numeric, "
                            "a model expected categories")
        own = self.categories.get(feature, [])
        pos = {c: k for k, c in enumerate(vocabulary)}
        lut = np.array([pos.get(c, -1) for c in own] + [-1], dtype=np.float64)
        col = self.X[:, j]
        missing = np.isnan(col)
        idx = np.where(missing, len(own), col).astype(np.int64)
        out = lut[idx]
        unknown = (out < 0) & ~missing
        out[out < 0] = np.nan
        return out, unknown

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def has_labels(self) -> bool:
        return self.y is not None

    def index(self) -> dict[str, int]:
        """id -> row number (built once; ids are unique by construction)."""
        if self._index is None:
            self._index = {i: k for k, i in enumerate(self.ids)}
        return self._index

    def take(self, rows: np.ndarray | Sequence[int]) -> Table:
        """The given rows, in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        return Table(
            party=self.party,
            source=self.source,
            ids=[self.ids[int(r)] for r in rows],
            X=self.X[rows],
            feature_names=list(self.feature_names),
            y=None if self.y is None else self.y[rows],
            kinds=list(self.kinds),
            categories=dict(self.categories),
        )

    def align(self, ids: Sequence[str]) -> Table:
        """Rows reordered to ``ids`` (e.g. the PSI intersection order); every id must be present."""
        idx = self.index()
        rows = np.empty(len(ids), dtype=np.int64)
        for k, i in enumerate(ids):
            r = idx.get(i)
            if r is None:
                raise DataError(
                    f"party '{self.party}': id {i!r} of the aligned id list is not in {self.source} "
                    "(was the intersection computed on a different file?)"
                )
            rows[k] = r
        return self.take(rows)

    def select(self, features: Sequence[str]) -> Table:
        """The same rows with only ``features``, in that order (a job or a model asks for its columns by name)."""
        features = list(features)
        if features == self.feature_names:
            return self
        missing = [c for c in features if c not in self.feature_names]
        if missing:
            raise DataError(
                f"party '{self.party}', file {self.source}: missing column(s) {missing}; expected {features}, "
                f"the table's features are {self.feature_names}"
            )
        cols = [self.feature_names.index(c) for c in features]
        return Table(self.party, self.source, self.ids, self.X[:, cols], features, self.y, self._index,
                     kinds=[self.kinds[j] for j in cols],
                     categories={c: v for c, v in self.categories.items() if c in features})


@dataclass(frozen=True)
class InputSchema:
    """What a model needs of a party's rows: feature names, kinds, and the categories it was trained on.

    Why: category codes are per file (each table sorts its own vocabulary), so a model
    keeps the *strings* it saw in training and every scorer re-codes through this one
    class.  The documented rule for a category the model never saw: it is treated as a
    missing value (NaN), and counted, so callers can report it (never a silent guess).
    """

    feature_names: tuple[str, ...]
    kinds: tuple[ColumnKind, ...]
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, table: Table) -> InputSchema:
        return cls(tuple(table.feature_names), tuple(table.kinds),
                   {f: tuple(table.categories.get(f, ())) for f, k in zip(table.feature_names, table.kinds)
                    if k == "categorical"})

    @property
    def has_categoricals(self) -> bool:
        return any(k == "categorical" for k in self.kinds)

    def encode(self, table: Table) -> tuple[np.ndarray, dict[str, int]]:
        """``table``'s columns in this schema's order and codes: (X, unknown-category count per feature)."""
        t = table.select(list(self.feature_names))
        X = np.array(t.X, dtype=np.float64, copy=True)
        unknown: dict[str, int] = {}
        for j, (f, k) in enumerate(zip(self.feature_names, self.kinds)):
            if k != t.kinds[j]:
                raise DataError(f"party '{table.party}', file {table.source}: column '{f}' is {t.kinds[j]}, "
                                f"the model was trained on it as {k}")
            if k == "categorical":
                X[:, j], unk = t.codes(f, self.categories.get(f, ()))
                if unk.any():
                    unknown[f] = int(unk.sum())
        return X, unknown

    def encode_rows(self, rows: Sequence[Mapping[str, object]], *, who: str) -> tuple[np.ndarray, dict[str, int]]:
        """Online requests (feature -> number, category text, or None/NaN = missing) as X: same rules as :meth:`encode`."""
        X = np.empty((len(rows), len(self.feature_names)), dtype=np.float64)
        unknown: dict[str, int] = {}
        pos = {f: {c: float(k) for k, c in enumerate(self.categories.get(f, ()))}
               for f, k in zip(self.feature_names, self.kinds) if k == "categorical"}
        for r, row in enumerate(rows):
            for j, (f, k) in enumerate(zip(self.feature_names, self.kinds)):
                if f not in row:
                    raise DataError(f"{who}: row {r + 1} lacks feature '{f}' (send None for a missing value)")
                v = row[f]
                if v is None or (isinstance(v, float) and np.isnan(v)):
                    X[r, j] = np.nan
                elif k == "categorical":
                    code = pos[f].get(category_text(v))
                    if code is None:
                        unknown[f] = unknown.get(f, 0) + 1
                    X[r, j] = np.nan if code is None else code
                else:
                    if isinstance(v, bool) or not isinstance(v, (int, float)):
                        raise DataError(f"{who}: row {r + 1}, feature '{f}' is numeric; got {v!r}")
                    if not np.isfinite(float(v)):
                        raise DataError(f"{who}: row {r + 1}, feature '{f}' is infinite; expected a finite number "
                                        "or None for missing")
                    X[r, j] = float(v)
        return X, unknown

    def to_dict(self) -> dict[str, object]:
        return {"feature_names": list(self.feature_names), "kinds": list(self.kinds),
                "categories": {f: list(v) for f, v in self.categories.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, object], *, source: str) -> InputSchema:
        try:
            names = [str(x) for x in d["feature_names"]]  # type: ignore[attr-defined]
            kinds = [str(x) for x in d.get("kinds") or ["numeric"] * len(names)]  # type: ignore[attr-defined]
            cats = {str(f): tuple(str(c) for c in v) for f, v in (d.get("categories") or {}).items()}  # type: ignore[attr-defined]
        except (KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{source}: bad input schema: {e}") from None
        if len(kinds) != len(names) or any(k not in ("numeric", "categorical") for k in kinds):
            raise DataError(f"{source}: input schema kinds {kinds} do not match features {names}")
        return cls(tuple(names), tuple(kinds), cats)  # type: ignore[arg-type]


MISSING_COLUMN = "(missing)"


def _category_text(v: float) -> str:
    """A numeric cell read as a category: "1" for 1.0 (a column of codes the loader inferred numeric)."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def category_text(v: object) -> str:
    """The one rule for a (non-missing) request value of a categorical feature: its category text.

    Numbers as the loader writes codes ("1" for 1 or 1.0), text stripped; every encoder and the
    unknown-category count use it, so a value is never counted known yet scored as missing.
    """
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return _category_text(float(v))
    return str(v).strip()


@dataclass(frozen=True)
class OneHotEncoding:
    """Raw features -> all-numeric columns by an AGREED rule (a horizontal job's ``[model]``), the same at every bank.

    Why agreed and not learnt: each bank's vocabulary and missingness are its own; if each
    bank encoded what it saw, the columns would differ between banks (and the column list
    would reveal them).  Columns, in feature order: a numeric feature ``f`` is one column
    (``fill`` where missing), plus ``f:missing`` (0/1) if ``f`` is in ``missing``; a
    categorical feature gets ``f=<c>`` per agreed category and ``f=(missing)`` for a
    missing cell.  A category not in the agreed list is counted (:meth:`encode` returns
    the counts; training refuses them, scoring treats them as missing, like
    :class:`InputSchema`).  A column of numeric codes (e.g. EDUCATION 1..6, inferred
    numeric) is read as the category text "1".."6".
    """

    features: tuple[str, ...]
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    fill: float = 0.0

    @property
    def is_identity(self) -> bool:
        return not self.categories and not self.missing

    @property
    def columns(self) -> list[str]:
        out: list[str] = []
        for f in self.features:
            if f in self.categories:
                out += [f"{f}={c}" for c in self.categories[f]] + [f"{f}={MISSING_COLUMN}"]
            else:
                out.append(f)
                if f in self.missing:
                    out.append(f"{f}:missing")
        return out

    def _check_names(self, who: str) -> None:
        stray = sorted((set(self.categories) | set(self.missing)) - set(self.features))
        if stray:
            raise DataError(f"{who}: [model].categories / missing_indicators name {stray}, which are not features "
                            f"of this job ({list(self.features)})")

    def encode(self, table: Table) -> tuple[Table, dict[str, int]]:
        """``table`` encoded (a Table of :attr:`columns`, all numeric, no NaN) and the unknown-category counts."""
        who = f"party '{table.party}', file {table.source}"
        self._check_names(who)
        t = table.select(list(self.features))
        cols: list[np.ndarray] = []
        unknown: dict[str, int] = {}
        for j, f in enumerate(self.features):
            col = t.X[:, j]
            if f in self.categories:
                vocab = self.categories[f]
                if t.kinds[j] == "categorical":
                    codes, unk = t.codes(f, vocab)
                else:  # numeric codes read as category text
                    pos = {c: k for k, c in enumerate(vocab)}
                    codes = np.array([np.nan if np.isnan(v) else pos.get(_category_text(v), -1) for v in col], dtype=float)
                    unk = codes < 0
                    codes[unk] = np.nan
                if unk.any():
                    unknown[f] = int(unk.sum())
                onehot = np.zeros((len(col), len(vocab) + 1))
                ok = ~np.isnan(codes)
                onehot[np.flatnonzero(ok), codes[ok].astype(np.int64)] = 1.0
                onehot[~ok, len(vocab)] = 1.0
                cols.extend(onehot.T)
                continue
            if t.kinds[j] == "categorical":
                raise DataError(f"{who}: column '{f}' is categorical; a horizontal job needs its agreed categories in "
                                f"[model.categories] (e.g. {f} = [...]) or the column left out of the job")
            miss = np.isnan(col)
            if miss.any() and f not in self.missing:
                raise DataError(f"{who}: column '{f}' has {int(miss.sum())} missing value(s) (the first at row "
                                f"{int(np.flatnonzero(miss)[0]) + 1}); list it in [model].missing_indicators (a 0/1 "
                                "missing column and missing_fill in its place)")
            cols.append(np.where(miss, self.fill, col))
            if f in self.missing:
                cols.append(miss.astype(np.float64))
        X = np.column_stack(cols) if cols else np.empty((len(t), 0))
        return Table(t.party, t.source, t.ids, X, self.columns, t.y, t._index), unknown

    def encode_rows(self, rows: Sequence[Mapping[str, object]], *, who: str) -> tuple[np.ndarray, list[int]]:
        """Online requests (feature -> number, text or None) as encoded rows; unknown categories per row (= missing)."""
        self._check_names(who)
        X = np.zeros((len(rows), len(self.columns)))
        unknown = [0] * len(rows)
        for r, row in enumerate(rows):
            k = 0
            for f in self.features:
                if f not in row:
                    raise DataError(f"{who}: row {r + 1} lacks feature '{f}' (send it as missing)")
                v = row[f]
                missing = v is None or (isinstance(v, float) and np.isnan(v))
                if f in self.categories:
                    vocab = self.categories[f]
                    text = None if missing else category_text(v)
                    code = vocab.index(text) if text in vocab else None
                    if text is not None and code is None:
                        unknown[r] += 1
                    X[r, k + (len(vocab) if code is None else code)] = 1.0
                    k += len(vocab) + 1
                    continue
                if not missing and (isinstance(v, bool) or not isinstance(v, (int, float))):
                    raise DataError(f"{who}: row {r + 1}, feature '{f}' is numeric; got {v!r}")
                if not missing and not np.isfinite(float(v)):  # type: ignore[arg-type]
                    raise DataError(f"{who}: row {r + 1}, feature '{f}' is infinite; expected a finite number or missing")
                if missing and f not in self.missing:
                    raise DataError(f"{who}: row {r + 1}, feature '{f}' is missing, and the model was trained without "
                                    "a missing indicator for it (it cannot score a missing value)")
                X[r, k] = self.fill if missing else float(v)  # type: ignore[arg-type]
                k += 1
                if f in self.missing:
                    X[r, k] = 1.0 if missing else 0.0
                    k += 1
        return X, unknown

    def to_dict(self) -> dict[str, object]:
        return {"features": list(self.features), "categories": {f: list(v) for f, v in self.categories.items()},
                "missing": list(self.missing), "fill": self.fill}

    @classmethod
    def from_dict(cls, d: Mapping[str, object], *, source: str) -> OneHotEncoding:
        try:
            feats = tuple(str(x) for x in d["features"])  # type: ignore[attr-defined]
            cats = {str(f): tuple(str(c) for c in v) for f, v in (d.get("categories") or {}).items()}  # type: ignore[attr-defined]
            miss = tuple(str(x) for x in d.get("missing") or ())  # type: ignore[attr-defined]
            fill = float(d.get("fill", 0.0))  # type: ignore[arg-type]
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise DataError(f"{source}: bad feature encoding: {e}") from None
        return cls(feats, cats, miss, fill)


# --------------------------------------------------------------------------- validation


def _where(party: str, source: str, row: int, csv_lines: bool, row0: int = 0) -> str:
    row += row0  # a row group's frame starts at file row ``row0``
    loc = f"row {row + 1}"
    if csv_lines:
        loc += f" (line {row + 2})"
    return f"party '{party}', file {source}: {loc}"


#: Text read as a missing feature value whatever the dataset declares (an empty cell is read as NaN already).
ALWAYS_MISSING = frozenset({"", "nan", "NaN", "NAN"})
#: More distinct values than this in one categorical column is refused (a free-text or id-like column).
MAX_CATEGORIES = 1000
#: Inference: a column with at least this share of numbers among its non-missing values, but not all, is ambiguous
#: (numbers with typos, or numeric category codes?): refused until its kind is declared, never guessed.
_NUMERIC_LOOKING = 0.5


def _text(raw: pd.Series) -> pd.Series:
    """A column as stripped text; numbers written without a spurious ".0" (a Parquet int column read as float)."""
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        vals = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        return pd.Series([None if np.isnan(v) else (str(int(v)) if float(v).is_integer() else repr(float(v)))
                          for v in vals], index=raw.index, dtype=object)
    return raw.map(lambda v: None if v is None or (not isinstance(v, str) and bool(pd.isna(v))) else str(v).strip())


def _missing_mask(raw: pd.Series, sentinels: Sequence[str]) -> np.ndarray:
    """True where a feature cell is missing: empty, NaN, or one of ``sentinels`` (as text, or equal as a number)."""
    miss = raw.isna().to_numpy().copy()
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        nums = [float(v) for v in sentinels if _as_float(v) is not None]
        if nums:
            miss |= raw.isin(nums).to_numpy()
        return miss
    text = _text(raw)
    tokens = ALWAYS_MISSING | frozenset(sentinels)
    miss |= text.isin(tokens).to_numpy()
    nums = [f for f in (_as_float(v) for v in sentinels) if f is not None]
    if nums:
        miss |= pd.to_numeric(text, errors="coerce").isin(nums).to_numpy()
    return miss


def _as_float(v: str) -> float | None:
    try:
        f = float(v)
    except ValueError:
        return None
    return f if np.isfinite(f) else None


def _numeric_column(df: pd.DataFrame, col: str, party: str, source: str, csv_lines: bool,
                    missing: np.ndarray | None = None, row0: int = 0) -> np.ndarray:
    """Column ``col`` as float64.  ``missing`` given (a feature): those cells are NaN; else (id/label) none may be.

    Unparsable and infinite values are errors naming party, file, column and row either way.
    """
    raw = df[col]
    if pd.api.types.is_bool_dtype(raw):
        return raw.to_numpy(dtype=np.float64)
    if missing is not None:
        raw = raw.mask(pd.Series(missing, index=raw.index))
    if pd.api.types.is_numeric_dtype(raw):
        vals = raw.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        coerced = pd.to_numeric(raw, errors="coerce")
        bad = coerced.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            shown = str(raw.iloc[i])
            shown = shown if len(shown) <= 24 else shown[:21] + "..."
            hint = (" or a missing value (empty, NaN or one of missing_values); declare the column "
                    "'categorical' in [datasets.<key>].columns if it holds categories") if missing is not None else ""
            raise DataError(
                f"{_where(party, source, i, csv_lines, row0)}: column '{col}' has non-numeric value {shown!r}; "
                f"expected a number{hint} ({int(bad.sum())} such value(s) in this column)"
            )
        vals = coerced.to_numpy(dtype=np.float64, na_value=np.nan)
    bad_vals = np.isinf(vals) if missing is not None else ~np.isfinite(vals)
    if bad_vals.any():
        i = int(np.flatnonzero(bad_vals)[0])
        kind = "a missing/NaN" if np.isnan(vals[i]) else "an infinite"
        raise DataError(
            f"{_where(party, source, i, csv_lines, row0)}: column '{col}' has {kind} value; "
            f"expected a finite number ({int(bad_vals.sum())} such value(s) in this column)"
        )
    return vals


def _categorical_column(df: pd.DataFrame, col: str, party: str, source: str,
                        missing: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Column ``col`` as (codes into its sorted vocabulary, NaN = missing; the vocabulary)."""
    text = _text(df[col])
    present = ~missing
    vocab = sorted(set(text[present].tolist()))
    if len(vocab) > MAX_CATEGORIES:
        raise DataError(f"party '{party}', file {source}: column '{col}' has {len(vocab)} distinct categories, "
                        f"more than {MAX_CATEGORIES}; a free-text or id-like column cannot be a feature (declare it "
                        "'ignore' in [datasets.<key>].columns)")
    pos = {c: float(k) for k, c in enumerate(vocab)}
    codes = np.full(len(text), np.nan)
    codes[present] = [pos[c] for c in text[present].tolist()]
    return codes, vocab


def _infer_kind(df: pd.DataFrame, col: str, missing: np.ndarray, party: str, source: str,
                csv_lines: bool) -> ColumnKind:
    """Numeric if every non-missing value parses as a number, else categorical; a column that is mostly numbers
    with a few that are not is refused (a typo, most likely), naming its first bad row."""
    raw = df[col]
    if pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw):
        return "numeric"
    text = _text(raw)
    present = ~missing
    parsed = pd.to_numeric(text.where(present), errors="coerce").notna().to_numpy() & present
    n = int(present.sum())
    if n == 0 or parsed.sum() == n:
        return "numeric"
    if parsed.sum() >= _NUMERIC_LOOKING * n:
        i = int(np.flatnonzero(present & ~parsed)[0])
        raise DataError(
            f"{_where(party, source, i, csv_lines)}: column '{col}' has non-numeric value {text.iloc[i]!r} among "
            f"numbers ({100 * parsed.sum() / n:.0f} % of its values are numbers); declare its kind in "
            "[datasets.<key>].columns (numeric: fix the value or add it to missing_values; categorical: every value "
            f"is a category) ({int((present & ~parsed).sum())} such value(s) in this column)"
        )
    return "categorical"


def _ids(df: pd.DataFrame, id_col: str, party: str, source: str, csv_lines: bool) -> list[str]:
    raw = df[id_col]
    if raw.isna().any():
        i = int(np.flatnonzero(raw.isna().to_numpy())[0])
        raise DataError(f"{_where(party, source, i, csv_lines)}: id column '{id_col}' is empty")
    ids: list[str] = []
    for k, v in enumerate(raw.tolist()):
        try:
            ids.append(normalize_id(v))
        except DataError as e:
            raise DataError(f"{_where(party, source, k, csv_lines)}: id column '{id_col}': {e}") from None
    first: dict[str, int] = {}
    dups = 0
    row = -1
    for k, ident in enumerate(ids):
        if ident in first:
            dups += 1
            row = k if row < 0 else row
        else:
            first[ident] = k
    if dups:
        raise DataError(
            f"{_where(party, source, row, csv_lines)}: duplicate id {ids[row]!r} in column '{id_col}' "
            f"(first seen at row {first[ids[row]] + 1}); ids must be unique ({dups} duplicate(s))"
        )
    return ids


def table_from_frame(
    df: pd.DataFrame,
    *,
    party: str,
    source: str,
    id_col: str | None = "id",
    label_col: str | None = None,
    feature_cols: Sequence[str] | None = None,
    csv_lines: bool = False,
    kinds: Mapping[str, str] | None = None,
    missing_values: Sequence[str] = (),
) -> Table:
    """Validate a DataFrame into a :class:`Table` (what :func:`load_table` does after reading the file).

    ``kinds``: feature -> ``numeric`` / ``categorical`` / ``ignore``; an undeclared feature's
    kind is inferred (numeric if every non-missing value parses).  ``missing_values``:
    sentinels read as missing in features (empty cells and NaN always are).
    ``feature_cols=None``: every column except the id and label columns and the ignored ones, in frame
    order (a file with only an id column is an id list, e.g. the agreed test ids);
    ``feature_cols=[]``: no features, an id list whatever else the file holds.
    ``id_col=None`` numbers the rows instead.  ``csv_lines``: the frame was read from
    a CSV file, so errors give file line numbers too.
    """
    cols = [str(c) for c in df.columns]
    df = df.set_axis(cols, axis=1)
    expected = [c for c in (id_col, label_col) if c] + list(feature_cols or [])
    missing = [c for c in expected if c not in cols]
    if missing:
        raise DataError(
            f"party '{party}', file {source}: missing column(s) {missing}; expected {expected}, the file has {cols}"
        )
    dupes = sorted({c for c in cols if cols.count(c) > 1})
    if dupes:
        raise DataError(f"party '{party}', file {source}: duplicate column name(s) {dupes}")
    kinds = dict(kinds or {})
    unknown_cols = sorted(set(kinds) - set(cols))
    if unknown_cols:
        raise DataError(f"party '{party}', file {source}: column kind(s) declared for {unknown_cols}, which the file "
                        f"does not have (typo?); its columns are {cols}")
    if feature_cols is None:
        features = [c for c in cols if c not in (id_col, label_col) and kinds.get(c) != "ignore"]
        if not features and label_col:
            # a file of only ids (no label declared) is an id list, e.g. the agreed test customers;
            # ids and labels without a single feature cannot train anything
            raise DataError(
                f"party '{party}', file {source}: no feature columns (the file has only {cols}); "
                "a list of ids needs no label_column (or declare feature_columns = [])"
            )
    else:
        features = list(feature_cols)
        if len(set(features)) != len(features):
            raise DataError(f"party '{party}', file {source}: feature_columns list a column twice: {features}")
        clash = [c for c in features if c in (id_col, label_col)]
        if clash:
            raise DataError(f"party '{party}', file {source}: column(s) {clash} cannot be both a feature and the "
                            f"id/label (id_column {id_col!r}, label_column {label_col!r})")
    if len(df) == 0:
        raise DataError(f"party '{party}', file {source}: the table has a header but no rows")

    ids = _ids(df, id_col, party, source, csv_lines) if id_col else [str(k) for k in range(len(df))]
    X = np.empty((len(df), len(features)), dtype=np.float64)
    col_kinds: list[ColumnKind] = []
    categories: dict[str, list[str]] = {}
    for j, c in enumerate(features):
        missing_cells = _missing_mask(df[c], missing_values)
        declared = kinds.get(c)
        if declared == "ignore":
            raise DataError(f"party '{party}', file {source}: column '{c}' is declared 'ignore' but asked for as a feature")
        kind: ColumnKind = (declared if declared in ("numeric", "categorical")  # type: ignore[assignment]
                            else _infer_kind(df, c, missing_cells, party, source, csv_lines))
        if kind == "categorical":
            X[:, j], categories[c] = _categorical_column(df, c, party, source, missing_cells)
        else:
            X[:, j] = _numeric_column(df, c, party, source, csv_lines, missing=missing_cells)
        col_kinds.append(kind)
    y: np.ndarray | None = None
    if label_col:
        lab = _numeric_column(df, label_col, party, source, csv_lines)
        bad = (lab != 0.0) & (lab != 1.0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{_where(party, source, i, csv_lines)}: label column '{label_col}' has value {lab[i]:g}; "
                f"expected 0 or 1 ({int(bad.sum())} such value(s))"
            )
        y = lab.astype(np.int64)
    return Table(party=party, source=source, ids=ids, X=X, feature_names=features, y=y, kinds=col_kinds,
                 categories=categories)


def _read(path: Path, party: str, id_col: str | None, text_cols: Sequence[str] = ()) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"party '{party}', file {path}: unsupported file type '{path.suffix or '(none)'}'; "
            f"expected one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    try:
        if suffix == ".csv":
            # ids are text ("00123" stays "00123"); only an empty cell is missing ("NA" may be an id)
            # declared categoricals are text too ("01" stays "01")
            as_text = {c: str for c in ([id_col] if id_col else []) + list(text_cols)}
            df = pd.read_csv(path, dtype=as_text or None, skipinitialspace=True,
                             keep_default_na=False, na_values=[""])
            _no_duplicate_header(path, party)
            return df
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"party '{party}', file {path}: the file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as e:
        raise DataError(f"party '{party}', file {path}: cannot be parsed as {suffix[1:]}: {e}") from None


def _no_duplicate_header(path: Path, party: str) -> None:
    """pandas renames a repeated CSV header ("x0", "x0" -> "x0", "x0.1"): refuse it instead of guessing."""
    raw = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, skipinitialspace=True)
    names = [str(c) for c in raw.iloc[0]] if len(raw) else []
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise DataError(f"party '{party}', file {path}: duplicate column name(s) {dupes} in the header; "
                        "every column needs its own name")


def load_table(
    path: str | Path,
    *,
    party: str,
    id_col: str | None = "id",
    label_col: str | None = None,
    feature_cols: Sequence[str] | None = None,
    kinds: Mapping[str, str] | None = None,
    missing_values: Sequence[str] = (),
) -> Table:
    """Read ``path`` (CSV or Parquet by suffix) and validate it with :func:`table_from_frame`.

    Raises :class:`~fedcredit.errors.DataError` naming party, file, column and row.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"party '{party}': data file {path} does not exist")
    if not path.is_file():
        raise DataError(f"party '{party}': data path {path} is not a file")
    text_cols = [c for c, k in (kinds or {}).items() if k == "categorical"]
    df = _read(path, party, id_col, text_cols)
    return table_from_frame(df, party=party, source=str(path), id_col=id_col, label_col=label_col,
                            feature_cols=feature_cols, csv_lines=path.suffix.lower() == ".csv",
                            kinds=kinds, missing_values=missing_values)


def dataset_schema(ds: DatasetSection, *, party: str) -> tuple[dict[str, str], list[str]]:
    """(declared kinds, missing-value sentinels) of a dataset: its ``schema_file`` overlaid by its own keys."""
    kinds: dict[str, str] = {}
    sentinels: list[str] = []
    if ds.schema_file is not None:
        from fedcredit.config import DatasetSchemaFile, load_config
        from fedcredit.errors import ConfigError

        if not Path(ds.schema_file).is_file():
            raise DataError(f"party '{party}': schema file {ds.schema_file} (schema_file of {ds.path}) does not exist")
        try:
            saved = load_config(ds.schema_file, DatasetSchemaFile)
        except ConfigError as e:
            raise DataError(f"party '{party}': {e}") from None
        kinds.update(saved.columns)
        sentinels.extend(saved.missing_values)
    kinds.update(ds.columns)
    sentinels.extend(v for v in ds.missing_values if v not in sentinels)
    for c in (ds.id_column, ds.label_column):
        kinds.pop(c or "", None)  # a saved schema may list them; their rules are fixed
    return kinds, sentinels


def load_dataset(ds: DatasetSection, *, party: str, feature_cols: Sequence[str] | None = None,
                 labels: bool = True) -> Table:
    """A configured dataset, loaded with the options of its ``[datasets.<key>]`` section.

    The one call behind the party daemon's start-up check, every job's tables and a
    passive party's scoring look-ups, so a dataset that passed the check loads the same
    way, with the same errors, everywhere.  ``feature_columns = []`` declares an id list
    (e.g. the agreed test customers).  ``feature_cols`` overrides the configured
    features (a model asks for its own); ``labels=False`` skips the label column.
    """
    kinds, sentinels = dataset_schema(ds, party=party)
    return load_table(ds.path, party=party, id_col=ds.id_column, label_col=ds.label_column if labels else None,
                      feature_cols=ds.feature_columns if feature_cols is None else feature_cols,
                      kinds=kinds, missing_values=sentinels)


def schema_toml(table: Table, ds: DatasetSection, *, dataset: str) -> str:
    """An editable TOML schema of a loaded dataset (``schema_file`` reads it back): kinds, sentinels, and a
    comment per column with what the loader saw (missing rate, categories or range)."""
    kinds, sentinels = dataset_schema(ds, party=table.party)

    def q(v: str) -> str:
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string

    lines = [f"# fedcredit dataset schema of {table.source} (party {table.party!r}, dataset {dataset!r}),",
             f"# {len(table)} rows.  Edit a kind (numeric | categorical | ignore) and set",
             f"# [datasets.{dataset}].schema_file to this file; the id column {ds.id_column!r} and the label "
             f"column {ds.label_column!r} are not listed (their rules are fixed).",
             f"missing_values = [{', '.join(q(v) for v in sentinels)}]", "", "[columns]"]
    for j, (f, k) in enumerate(zip(table.feature_names, table.kinds)):
        col = table.X[:, j]
        miss = float(np.isnan(col).mean()) if len(col) else 0.0
        if k == "categorical":
            cats = table.categories.get(f, [])
            shown = ", ".join(cats[:6]) + (", ..." if len(cats) > 6 else "")
            note = f"{len(cats)} categories: {shown}"
        else:
            ok = col[~np.isnan(col)]
            note = f"range {ok.min():g} .. {ok.max():g}" if ok.size else "no values"
        lines.append(f"{q(f)} = {q(k)}  # {100 * miss:.1f} % missing; {note}".replace("\n", " "))
    lines += [f"{q(c)} = \"ignore\"" for c, kind in kinds.items() if kind == "ignore"]
    return "\n".join(lines) + "\n"


def dataset_columns(ds: DatasetSection, *, party: str) -> list[str]:
    """The column names of a configured dataset's file, read from its header only (no rows).

    Why: a party decides which columns a job would use (``[policy.datasets]``) before
    it loads any data; the rows are validated later by :func:`load_dataset` as usual.
    """
    path = Path(ds.path)
    if not path.is_file():
        raise DataError(f"party '{party}': data file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return [str(c) for c in pd.read_csv(path, nrows=0, skipinitialspace=True).columns]
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
            index = {c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
            return [str(c) for c in schema.names if c not in index]  # a stored index is not a column
    except pd.errors.EmptyDataError:
        raise DataError(f"party '{party}', file {path}: the file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as e:
        raise DataError(f"party '{party}', file {path}: cannot read its header: {e}") from None
    raise DataError(f"party '{party}', file {path}: unsupported file type '{path.suffix or '(none)'}'; "
                    f"expected one of {', '.join(SUPPORTED_SUFFIXES)}")


def table_summary(table: Table, ds: DatasetSection, *, dataset: str) -> str:
    """One line for the daemon's start-up log: rows, kinds, which were inferred, columns with missing values."""
    declared, _ = dataset_schema(ds, party=table.party)
    n_cat = sum(k == "categorical" for k in table.kinds)
    inferred = [f for f in table.feature_names if f not in declared]
    gaps = [f for j, f in enumerate(table.feature_names) if np.isnan(table.X[:, j]).any()]
    line = (f"dataset '{dataset}': {len(table)} rows, {table.n_features} features ({n_cat} categorical"
            f"{f', {len(inferred)} inferred' if inferred else ''})")
    if gaps:
        line += f", missing values in {len(gaps)}: {', '.join(gaps[:5])}{', ...' if len(gaps) > 5 else ''}"
    if inferred and table.n_features:
        line += f" (fedcredit party schema --dataset {dataset} prints the kinds)"
    return line


def require_numbers(*tables: Table, why: str) -> None:
    """Refuse tables with a categorical column or a missing value, for a model that has no rule for them.

    Why: the loader accepts both (real tables have them); a model that would read a
    category code as a number, or a NaN as a value, must stop here with the column named
    instead of training on garbage.  Only counts are named (the message may leave the party).
    """
    for t in tables:
        for j, (f, k) in enumerate(zip(t.feature_names, t.kinds)):
            if k == "categorical":
                raise DataError(f"party '{t.party}', file {t.source}: column '{f}' is categorical; {why}")
            n = int(np.isnan(t.X[:, j]).sum())
            if n:
                raise DataError(f"party '{t.party}', file {t.source}: column '{f}' has {n} missing value(s); {why}")


def split_by_ids(table: Table, test_ids: set[str] | frozenset[str]) -> tuple[Table, Table]:
    """(train, test) keeping the table's (aligned) order; every party cuts the same rows."""
    is_test = np.fromiter((i in test_ids for i in table.ids), dtype=bool, count=len(table))
    train, test = table.take(np.flatnonzero(~is_test)), table.take(np.flatnonzero(is_test))
    if len(train) == 0:
        raise DataError(f"party '{table.party}': every aligned row of {table.source} is a test id; no training rows")
    return train, test



# --------------------------------------------------------------------------- Parquet in row groups (bounded memory)

#: rows per batch the streaming readers hand out (Arrow decodes one row group at a time underneath)
STREAM_BATCH_ROWS = 65_536


def _parquet(path: str | Path, party: str) -> tuple[Path, object]:
    """``path`` opened as a Parquet file (metadata only), or a DataError naming party and file."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise DataError(f"party '{party}': data file {path} does not exist")
    if not path.is_file():
        raise DataError(f"party '{party}': data path {path} is not a file")
    if path.suffix.lower() not in (".parquet", ".pq"):
        raise DataError(f"party '{party}', file {path}: streaming reads need a Parquet file (.parquet, .pq), "
                        f"not '{path.suffix or '(none)'}'; load_table reads CSV whole")
    try:
        return path, pq.ParquetFile(path)
    except (OSError, ValueError) as e:
        raise DataError(f"party '{party}', file {path}: cannot be parsed as parquet: {e}") from None


def _need_columns(pf: object, path: Path, party: str, cols: Sequence[str]) -> None:
    names = list(pf.schema_arrow.names)  # type: ignore[attr-defined]
    missing = [c for c in cols if c not in names]
    if missing:
        raise DataError(f"party '{party}', file {path}: missing column(s) {missing}; expected {list(cols)}, the file "
                        f"has {names}")


def iter_row_groups(path: str | Path, *, party: str, columns: Sequence[str],
                    batch_rows: int = STREAM_BATCH_ROWS) -> Iterator[tuple[int, pd.DataFrame]]:
    """``(first row, frame)`` of ``columns`` of a Parquet file, a bounded batch of rows at a time.

    Why: a party's 10M-row table need not be in memory for PSI and binning counts; Arrow
    decodes one row group at a time, and each frame holds at most ``batch_rows`` rows.
    """
    path, pf = _parquet(path, party)
    _need_columns(pf, path, party, columns)
    row0 = 0
    try:
        for rb in pf.iter_batches(batch_size=batch_rows, columns=list(columns)):  # type: ignore[attr-defined]
            df = rb.to_pandas()
            yield row0, df
            row0 += len(df)
    except (OSError, ValueError) as e:
        raise DataError(f"party '{party}', file {path}: cannot be read after row {row0}: {e}") from None


class ParquetIds:
    """The normalized ids of a Parquet file's id column, read batch by batch (an id source for PSI).

    Each id is normalized with the loader's rule and errors (party, file, column, row);
    uniqueness over the whole file is checked by its consumer (PSI does, in 8 bytes per id),
    since checking it here would hold every id.  ``len()`` comes from the file's metadata.
    """

    def __init__(self, path: str | Path, *, party: str, id_col: str = "id", batch_rows: int = STREAM_BATCH_ROWS) -> None:
        self.path, pf = _parquet(path, party)
        _need_columns(pf, self.path, party, [id_col])
        self.party, self.id_col, self.batch_rows = party, id_col, batch_rows
        self.source = str(self.path)
        self._n = int(pf.metadata.num_rows)  # type: ignore[attr-defined]
        if self._n == 0:
            raise DataError(f"party '{party}', file {self.path}: the table has a header but no rows")

    def __len__(self) -> int:
        return self._n

    def batches(self) -> Iterator[list[str]]:
        """Normalized ids in row order, at most ``batch_rows`` per batch; starts over at each call."""
        for row0, df in iter_row_groups(self.path, party=self.party, columns=[self.id_col], batch_rows=self.batch_rows):
            out: list[str] = []
            for k, v in enumerate(df[self.id_col].tolist()):
                if v is None or (isinstance(v, float) and v != v):
                    raise DataError(f"{_where(self.party, self.source, k, False, row0)}: id column "
                                    f"'{self.id_col}' is empty")
                try:
                    out.append(normalize_id(v))
                except DataError as e:
                    raise DataError(f"{_where(self.party, self.source, k, False, row0)}: id column "
                                    f"'{self.id_col}': {e}") from None
            yield out


def read_ids_stream(path: str | Path, *, party: str, id_col: str = "id",
                    batch_rows: int = STREAM_BATCH_ROWS) -> ParquetIds:
    """A Parquet file's ids as a stream for :func:`fedcredit.protocols.psi.run_psi` (bounded memory)."""
    return ParquetIds(path, party=party, id_col=id_col, batch_rows=batch_rows)


def iter_feature_batches(path: str | Path, *, party: str, feature_cols: Sequence[str],
                         kinds: Mapping[str, str] | None = None, missing_values: Sequence[str] = (),
                         categories: Mapping[str, Sequence[str]] | None = None,
                         batch_rows: int = STREAM_BATCH_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, float64 block)`` of ``feature_cols`` per batch, validated as :func:`load_table` does.

    Numeric columns: the loader's parsing, missing values and errors (naming file, column and
    file row).  A categorical column's codes index ``categories[col]`` (its vocabulary, which a
    whole-file pass or the table's schema gives); a value outside it is an error.  A column's
    kind is its declared kind, else numeric if its Parquet type is (inference that needs
    the whole column is the loader's job).
    """
    kinds = dict(kinds or {})
    vocab = {c: {v: float(k) for k, v in enumerate(vs)} for c, vs in (categories or {}).items()}
    path = Path(path)
    for row0, df in iter_row_groups(path, party=party, columns=list(feature_cols), batch_rows=batch_rows):
        X = np.empty((len(df), len(feature_cols)), dtype=np.float64)
        for j, c in enumerate(feature_cols):
            miss = _missing_mask(df[c], missing_values)
            kind = kinds.get(c) or ("numeric" if pd.api.types.is_numeric_dtype(df[c]) or
                                    pd.api.types.is_bool_dtype(df[c]) else None)
            if kind == "numeric":
                X[:, j] = _numeric_column(df, c, party, str(path), False, missing=miss, row0=row0)
            elif kind == "categorical":
                if c not in vocab:
                    raise DataError(f"party '{party}', file {path}: categorical column '{c}' needs its vocabulary "
                                    "(categories) to be read in batches")
                text = _text(df[c])
                codes = np.full(len(df), np.nan)
                for k, (t, m) in enumerate(zip(text.tolist(), miss.tolist())):
                    if m:
                        continue
                    code = vocab[c].get(t)
                    if code is None:
                        raise DataError(f"{_where(party, str(path), k, False, row0)}: column '{c}' has category "
                                        f"{t!r}, not among its {len(vocab[c])} known categories")
                    codes[k] = code
                X[:, j] = codes
            else:
                raise DataError(f"party '{party}', file {path}: column '{c}' is not a numeric Parquet column; "
                                "declare its kind in [datasets.<key>].columns to read it in batches")
        yield row0, X


def id_hashes(ids: Sequence[str]) -> np.ndarray:
    """A 64-bit hash of each id (vectorized): finds repeated ids by sorting 8 bytes per id instead of a set of strings.

    Equal ids hash equal; a repeated hash is only a candidate (confirm on the ids themselves).
    """
    return pd.util.hash_array(np.asarray(ids, dtype=object), categorize=False)


class IdColumn(Sequence[str]):
    """Ids held as one Arrow string column (not one Python object per id), e.g. a streamed PSI's intersection.

    Why: at 10M ids a list of ``str`` costs ~70 bytes per id; this costs the id's UTF-8
    bytes plus an 8-byte offset.  Compares equal to any sequence with the same ids in order.
    """

    def __init__(self, arr: object) -> None:
        self._arr: Any = arr  # pyarrow.Array of large_string

    @classmethod
    def gather(cls, batches: Iterable[Sequence[str]], positions: np.ndarray) -> IdColumn:
        """The ids at ``positions`` of the stream ``batches`` (row order), in the order of ``positions``; one pass."""
        import pyarrow as pa

        pos = np.sort(positions)
        chunks: list[Any] = []
        lo = 0
        for batch in batches:
            hi = lo + len(batch)
            a, b = np.searchsorted(pos, [lo, hi])
            if b > a:
                chunks.append(pa.array([batch[j] for j in (pos[a:b] - lo).tolist()], type=pa.large_string()))
            lo = hi
        if len(pos) and (pos[0] < 0 or pos[-1] >= lo):
            raise IndexError(f"id positions outside the {lo} ids of the stream")
        col = pa.chunked_array(chunks, type=pa.large_string()).combine_chunks() if chunks else \
            pa.array([], type=pa.large_string())
        return cls(col.take(pa.array(np.searchsorted(pos, positions))))

    def __len__(self) -> int:
        return len(self._arr)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self._arr[i].to_pylist()
        return self._arr[i].as_py()

    def __iter__(self) -> Iterator[str]:
        for at in range(0, len(self._arr), 65_536):
            yield from self._arr[at : at + 65_536].to_pylist()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IdColumn):
            return bool(self._arr.equals(other._arr))
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"IdColumn({len(self)} ids)"
