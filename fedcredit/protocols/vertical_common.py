"""Shared helpers for vertical (hetero) protocols: a party's private table, alignment, splits, wire arrays, metrics.

Every vertical protocol (logistic regression, SecureBoost) starts the same way: a
party loads its own table, PSI yields the common ids in one shared order, each party
reorders its rows to that order, and the train/test split is decided by ids so all
parties cut the same rows.  Rows never leave the party; only what each protocol
sends crosses the transport, as bytes built with :func:`pack_arrays` (a JSON header
plus raw little-endian buffers: no pickle, so a peer cannot make us execute code).

Evaluation (AUC, KS, ROC/KS PNG, JSON report) runs only at the label party.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from fedcredit.codec import pack_arrays, pack_blobs, unpack_arrays, unpack_blobs  # noqa: F401 - callers move next
from fedcredit.metrics import auc_ks, write_evaluation  # noqa: F401 - callers move next
from fedcredit.errors import DataError, ProtocolError

__all__ = [
    "VerticalTable",
    "load_vertical_table",
    "table_from_frame",
    "normalize_ids",
    "load_id_set",
    "split_by_ids",
    "Standardizer",
    "validation_split",
    "epoch_batches",
    "pack_arrays",
    "unpack_arrays",
    "pack_blobs",
    "unpack_blobs",
    "ids_digest",
    "auc_ks",
    "write_evaluation",
]


# --------------------------------------------------------------------------- tables


@dataclass
class VerticalTable:
    """One party's rows: normalized string ids, a float64 feature matrix, and labels at the label party only."""

    party: str
    source: str
    ids: list[str]
    X: np.ndarray
    feature_names: list[str]
    y: np.ndarray | None = None
    _index: dict[str, int] | None = field(default=None, repr=False, compare=False)

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

    def take(self, rows: np.ndarray | Sequence[int]) -> "VerticalTable":
        """The given rows, in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        return VerticalTable(
            party=self.party,
            source=self.source,
            ids=[self.ids[int(r)] for r in rows],
            X=self.X[rows],
            feature_names=list(self.feature_names),
            y=None if self.y is None else self.y[rows],
        )

    def align(self, ids: Sequence[str]) -> "VerticalTable":
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


def normalize_ids(values: Iterable[Any], *, party: str, source: str) -> list[str]:
    """Normalize ids with the PSI rule (``crypto.psi.normalize_id``) so tables and PSI agree on what an id is."""
    from crypto.psi import normalize_id  # imported lazily: crypto is a sibling package

    out: list[str] = []
    for k, v in enumerate(values):
        try:
            out.append(normalize_id(v).decode("utf-8"))
        except DataError as e:
            raise DataError(f"party '{party}': {source}, row {k + 1}: bad id {v!r}: {e}") from None
    return out


def _read_frame(path: Path, party: str, id_col: str):
    import pandas as pd

    if not path.exists():
        raise DataError(f"party '{party}': data file {path} does not exist")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        # ids are read as text: "00123" stays "00123" (see docs/psi.md, id normalization)
        return pd.read_csv(path, dtype={id_col: str}, keep_default_na=False, na_values=[""])
    except (OSError, ValueError) as e:
        raise DataError(f"party '{party}': cannot read {path}: {e}") from None


def table_from_frame(
    df: Any,
    *,
    party: str,
    source: str,
    id_col: str = "id",
    label_col: str | None = None,
    feature_cols: Sequence[str] | None = None,
) -> VerticalTable:
    """Validate a DataFrame into a :class:`VerticalTable` (errors name party, file and column)."""
    cols = list(df.columns)
    if id_col not in cols:
        raise DataError(f"party '{party}': {source} has no id column '{id_col}' (columns: {cols[:10]})")
    if label_col is not None and label_col not in cols:
        raise DataError(f"party '{party}': {source} has no label column '{label_col}'")
    if feature_cols is None:
        feature_cols = [c for c in cols if c not in (id_col, label_col)]
    else:
        missing = [c for c in feature_cols if c not in cols]
        if missing:
            raise DataError(f"party '{party}': {source} is missing feature columns {missing}")
    feature_cols = list(feature_cols)
    if not feature_cols:
        raise DataError(f"party '{party}': {source} has no feature columns")
    if len(df) == 0:
        raise DataError(f"party '{party}': {source} has no rows")

    ids = normalize_ids(df[id_col].tolist(), party=party, source=source)
    seen: dict[str, int] = {}
    for k, i in enumerate(ids):
        if i in seen:
            raise DataError(
                f"party '{party}': duplicate id {i!r} in {source} (rows {seen[i] + 2} and {k + 2}); ids must be unique"
            )
        seen[i] = k

    X = np.empty((len(df), len(feature_cols)), dtype=np.float64)
    for j, c in enumerate(feature_cols):
        col = df[c]
        try:
            vals = np.asarray(col, dtype=np.float64)
        except (TypeError, ValueError):
            import pandas as pd

            bad = pd.to_numeric(col, errors="coerce").isna() & col.notna()
            row = int(np.flatnonzero(np.asarray(bad))[0]) if bad.any() else 0
            raise DataError(
                f"party '{party}': {source}, column '{c}': non-numeric value {col.iloc[row]!r} at row {row + 2}"
            ) from None
        nan = ~np.isfinite(vals)
        if nan.any():
            row = int(np.flatnonzero(nan)[0])
            raise DataError(f"party '{party}': {source}, column '{c}': missing or non-finite value at row {row + 2}")
        X[:, j] = vals

    y = None
    if label_col is not None:
        try:
            yv = np.asarray(df[label_col], dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"party '{party}': {source}, label column '{label_col}' is not numeric") from None
        ok = (yv == 0) | (yv == 1)
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise DataError(
                f"party '{party}': {source}, label column '{label_col}' must be 0/1, got {df[label_col].iloc[row]} "
                f"at row {row + 2}"
            )
        y = yv.astype(np.int8)
    return VerticalTable(party=party, source=source, ids=ids, X=X, feature_names=feature_cols, y=y)


def load_vertical_table(
    path: str | Path,
    *,
    party: str,
    id_col: str = "id",
    label_col: str | None = None,
    feature_cols: Sequence[str] | None = None,
) -> VerticalTable:
    """Load a party's CSV/Parquet table; the label column is given only at the label party."""
    path = Path(path)
    df = _read_frame(path, party, id_col)
    return table_from_frame(df, party=party, source=str(path), id_col=id_col, label_col=label_col, feature_cols=feature_cols)


def load_id_set(path: str | Path, *, party: str, id_col: str = "id") -> set[str]:
    """Normalized ids of a file (e.g. the agreed test-id list)."""
    path = Path(path)
    df = _read_frame(path, party, id_col)
    if id_col not in df.columns:
        raise DataError(f"party '{party}': {path} has no id column '{id_col}'")
    return set(normalize_ids(df[id_col].tolist(), party=party, source=str(path)))


def split_by_ids(table: VerticalTable, test_ids: set[str] | frozenset[str]) -> tuple[VerticalTable, VerticalTable]:
    """(train, test) keeping the table's (aligned) order; every party cuts the same rows."""
    is_test = np.fromiter((i in test_ids for i in table.ids), dtype=bool, count=len(table))
    train, test = table.take(np.flatnonzero(~is_test)), table.take(np.flatnonzero(is_test))
    if len(train) == 0:
        raise DataError(f"party '{table.party}': every aligned row of {table.source} is a test id; no training rows")
    return train, test


# --------------------------------------------------------------------------- preprocessing


@dataclass
class Standardizer:
    """Per-party z-scoring, fit on the party's own training rows only (features never leave the party)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> "Standardizer":
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        std[std < 1e-12] = 1.0  # a constant column stays 0 instead of dividing by zero
        return cls(mean=mean, scale=std)

    def transform(self, X: np.ndarray) -> np.ndarray:
        if X.shape[1] != self.mean.shape[0]:
            raise DataError(f"standardizer expects {self.mean.shape[0]} features, got {X.shape[1]}")
        return (X - self.mean) / self.scale

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[float]]) -> "Standardizer":
        return cls(mean=np.asarray(d["mean"], dtype=np.float64), scale=np.asarray(d["scale"], dtype=np.float64))


def _canonical(n: int, ids: Sequence[str] | None) -> np.ndarray:
    """Row of the k-th smallest id (identity without ids).

    A permutation drawn over id ranks instead of row positions picks the same
    customers whatever order PSI produced (its order changes with its fresh keys),
    so splits and batches, hence the trained model, are reproducible run to run.
    """
    if ids is None:
        return np.arange(n)
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} rows")
    return np.argsort(np.asarray(ids, dtype=object).astype(str), kind="stable")


def validation_split(
    n: int, fraction: float, seed: int, ids: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(fit_rows, validation_rows) of an aligned training set; same seed (and ids) -> same rows at every party."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    perm = _canonical(n, ids)[np.random.default_rng(seed).permutation(n)]
    n_val = int(round(n * fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, ids: Sequence[str] | None = None) -> list[np.ndarray]:
    """Mini-batch row positions (each batch at most ``batch_size`` rows, sizes within 1 of each other).

    The shuffle depends only on (seed, epoch) and, if given, the rows' ids, so every
    party derives the same batches without any message; ``batch_size <= 0`` means full batch.
    """
    if batch_size <= 0 or batch_size >= n:
        return [np.arange(n)]
    perm = _canonical(n, ids)[np.random.default_rng([seed, epoch]).permutation(n)]
    n_batches = -(-n // batch_size)
    return [np.sort(b) for b in np.array_split(perm, n_batches)]


# --------------------------------------------------------------------------- alignment digest


def ids_digest(ids: Sequence[str]) -> str:
    """SHA-256 over the ordered ids: parties compare digests to prove their rows are aligned (reveals nothing new)."""
    import hashlib

    h = hashlib.sha256()
    for i in ids:
        b = i.encode("utf-8")
        h.update(struct.pack("<I", len(b)))
        h.update(b)
    return h.hexdigest()
