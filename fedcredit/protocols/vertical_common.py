"""Shared helpers for vertical (hetero) protocols: preprocessing, splits, wire arrays, metrics.

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

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fedcredit.data import Table
# re-exported, not redefined: secureboost.py (owned elsewhere) imports them from here
from fedcredit.data import split_by_ids, table_from_frame  # noqa: F401
from fedcredit.errors import DataError, ProtocolError

__all__ = [
    "VerticalTable",
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


# --------------------------------------------------------------------------- tables (fedcredit.data)

VerticalTable = Table  # secureboost.py and vertical_lr.py (owned elsewhere) still import this name; use fedcredit.data.Table


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


# --------------------------------------------------------------------------- wire format

_MAGIC = b"FCA1"


def pack_arrays(arrays: Mapping[str, np.ndarray] | None = None, meta: Mapping[str, Any] | None = None) -> bytes:
    """Serialize named numeric arrays + a JSON ``meta`` dict to bytes (no pickle)."""
    header: dict[str, Any] = {"meta": dict(meta or {}), "arrays": []}
    bufs: list[bytes] = []
    for name, a in (arrays or {}).items():
        a = np.ascontiguousarray(a)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"array '{name}' has non-numeric dtype {a.dtype}")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        b = a.tobytes()
        header["arrays"].append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "nbytes": len(b)})
        bufs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return b"".join([_MAGIC, struct.pack("<I", len(h)), h, *bufs])


def pack_blobs(blobs: Sequence[bytes], meta: Mapping[str, Any] | None = None) -> bytes:
    """Frame several opaque byte strings (e.g. serialized ciphertexts) + a JSON ``meta`` into one payload."""
    lens = np.fromiter((len(b) for b in blobs), dtype="<u8", count=len(blobs))
    return pack_arrays({"_len": lens}, {**dict(meta or {}), "_blobs": len(blobs)}) + b"".join(blobs)


def unpack_blobs(payload: bytes, *, what: str = "message") -> tuple[list[bytes], dict[str, Any]]:
    """Inverse of :func:`pack_blobs`; a malformed payload is a :class:`ProtocolError` naming ``what``."""
    try:
        if payload[:4] != _MAGIC:
            raise ValueError("bad magic")
        (hl,) = struct.unpack("<I", payload[4:8])
        header = json.loads(payload[8 : 8 + hl].decode("utf-8"))
        (spec,) = header["arrays"]
        if spec["name"] != "_len" or spec["dtype"] != "<u8":
            raise ValueError("not a blob frame")
        n = int(header["meta"].pop("_blobs"))
        off = 8 + hl
        lens = np.frombuffer(payload, dtype="<u8", count=n, offset=off)
        off += 8 * n
        out: list[bytes] = []
        mv = memoryview(payload)
        for ln in lens.tolist():
            if off + ln > len(payload):
                raise ValueError("truncated")
            out.append(bytes(mv[off : off + ln]))
            off += ln
        if off != len(payload):
            raise ValueError("trailing bytes")
        return out, header["meta"]
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as e:
        raise ProtocolError(f"malformed {what}: {e}") from None


def unpack_arrays(payload: bytes, *, what: str = "message") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Inverse of :func:`pack_arrays`; a malformed payload is a :class:`ProtocolError` naming ``what``."""
    try:
        if payload[:4] != _MAGIC:
            raise ValueError("bad magic")
        (hl,) = struct.unpack("<I", payload[4:8])
        header = json.loads(payload[8 : 8 + hl].decode("utf-8"))
        off = 8 + hl
        out: dict[str, np.ndarray] = {}
        for spec in header["arrays"]:
            dt = np.dtype(spec["dtype"])
            if dt.kind not in "biuf":
                raise ValueError(f"dtype {dt} not allowed")
            nb = int(spec["nbytes"])
            if off + nb > len(payload):
                raise ValueError("truncated")
            out[spec["name"]] = np.frombuffer(payload, dtype=dt, count=nb // dt.itemsize, offset=off).reshape(
                spec["shape"]
            )
            off += nb
        if off != len(payload):
            raise ValueError("trailing bytes")
        return out, header["meta"]
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as e:
        raise ProtocolError(f"malformed {what}: {e}") from None


def ids_digest(ids: Sequence[str]) -> str:
    """SHA-256 over the ordered ids: parties compare digests to prove their rows are aligned (reveals nothing new)."""
    import hashlib

    h = hashlib.sha256()
    for i in ids:
        b = i.encode("utf-8")
        h.update(struct.pack("<I", len(b)))
        h.update(b)
    return h.hexdigest()


# --------------------------------------------------------------------------- evaluation


def auc_ks(y: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """ROC AUC and the Kolmogorov-Smirnov statistic (max TPR - FPR), the two figures credit teams report."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y, scores)
    return float(roc_auc_score(y, scores)), float(np.max(tpr - fpr))


def write_evaluation(
    out_dir: str | Path,
    y: np.ndarray,
    scores: np.ndarray,
    *,
    name: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``<name>_report.json`` and ``<name>_roc_ks.png`` (ROC + KS curves) into ``out_dir``; return the report."""
    from sklearn.metrics import roc_curve

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    auc, ks = auc_ks(y, scores)
    fpr, tpr, thr = roc_curve(y, scores)
    k = int(np.argmax(tpr - fpr))
    report: dict[str, Any] = {
        "name": name,
        "n": int(len(y)),
        "positives": int(np.sum(y)),
        "auc": round(auc, 6),
        "ks": round(ks, 6),
        "ks_threshold": float(thr[k]) if np.isfinite(thr[k]) else None,
        **dict(extra or {}),
    }
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    a1.plot(fpr, tpr, label=f"AUC = {auc:.4f}")
    a1.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    a1.set_xlabel("false positive rate")
    a1.set_ylabel("true positive rate")
    a1.set_title(f"ROC — {name}")
    a1.legend(loc="lower right")
    order = np.argsort(-np.asarray(scores))
    ys = np.asarray(y)[order]
    frac = np.arange(1, len(ys) + 1) / len(ys)
    cum_pos = np.cumsum(ys) / max(1, ys.sum())
    cum_neg = np.cumsum(1 - ys) / max(1, (1 - ys).sum())
    a2.plot(frac, cum_pos, label="cumulative bad")
    a2.plot(frac, cum_neg, label="cumulative good")
    kk = int(np.argmax(cum_pos - cum_neg))
    a2.vlines(frac[kk], cum_neg[kk], cum_pos[kk], colors="red", label=f"KS = {ks:.4f}")
    a2.set_xlabel("fraction of population (by descending score)")
    a2.set_title(f"KS — {name}")
    a2.legend(loc="lower right")
    fig.tight_layout()
    png = out / f"{name}_roc_ks.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    report["plot"] = png.name
    (out / f"{name}_report.json").write_text(json.dumps(report, indent=2))
    return report
