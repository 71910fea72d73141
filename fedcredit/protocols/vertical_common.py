"""Shared helpers for vertical (hetero) protocols: preprocessing, validation split, mini-batches, alignment digest.

Every vertical protocol (logistic regression, SecureBoost) starts the same way: a
party is handed its own :class:`fedcredit.data.Table`, PSI yields the common ids in
one shared order, each party reorders its rows to that order, and the train/test
split is decided by ids so all parties cut the same rows.  Rows never leave the
party; only what each protocol sends crosses the transport, as bytes built with
:func:`pack_arrays` (a JSON header plus raw little-endian buffers: no pickle, so a
peer cannot make us execute code).

Evaluation (AUC, KS, ROC/KS PNG, JSON report) runs only at the label party.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedcredit.errors import DataError

__all__ = ["Standardizer", "validation_split", "epoch_batches", "ids_digest"]


# --------------------------------------------------------------------------- preprocessing


@dataclass
class Standardizer:
    """Per-party z-scoring, fit on the party's own training rows only (features never leave the party)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
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
    def from_dict(cls, d: Mapping[str, Sequence[float]]) -> Standardizer:
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
