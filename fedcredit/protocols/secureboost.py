"""Vertical SecureBoost: gradient-boosted trees over features split between a label party and passive parties.

Roles (all side by side in this module, every send names its receiver):

* **label party** (guest) — holds the labels, its own features and the CKKS secret key.
  It computes gradients ``g`` and hessians ``h``, encrypts them, finds every split, and
  keeps the tree structure and leaf weights.
* **passive party** (host) — holds only its own features and the *public* CKKS context.
  It returns encrypted histograms, and for a split on one of its features it alone knows
  the feature and threshold; the label party only sees ``(party, opaque split id)``.

Encrypted histograms: the packed CKKS kernel (row layout, cumulative masks, K-fold
packing with baby-step/giant-step rotations, zero-sum output masks — and why) lives in
:mod:`crypto.ckks_hist`; the label party drives a :class:`~crypto.ckks_hist.HistogramKeeper`,
each passive party a :class:`~crypto.ckks_hist.HistogramEvaluator`.  Histogram
subtraction: per pair of siblings only one child is computed; the other is
``parent - child`` at the label party (in plaintext, after decryption).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from crypto import ckks
from crypto.ckks_hist import HistogramEvaluator, HistogramKeeper, n_outputs
from fedcredit.errors import ConfigError, DataError, FedCreditError, ProtocolError
from fedcredit.protocols.vertical_common import (
    VerticalTable,
    auc_ks,
    ids_digest,
    pack_arrays,
    pack_blobs,
    unpack_arrays,
    unpack_blobs,
    write_evaluation,
)
from fedcredit.transport import Transport

__all__ = [
    "SecureBoostConfig",
    "FeatureBinner",
    "LabelModelPart",
    "PassiveModelPart",
    "SecureBoostResult",
    "run_secureboost_label",
    "run_secureboost_passive",
    "train_plaintext_reference",
    "passive_decisions",
    "label_predict",
    "label_margin",
]

Progress = Callable[[str, int, int], None]

# Two split candidates whose left sums (G_L, H_L) agree this closely partition the node
# identically (CKKS noise on a sum is ~1e-5; one row's hessian is >> 1e-4 unless p is
# within 1e-4 of 0 or 1).
_TIE_EPS = 1e-4
_PROTOCOL_VERSION = 1
_LABEL_FORMAT = "fedcredit.secureboost.label/1"
_PASSIVE_FORMAT = "fedcredit.secureboost.passive/1"


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SecureBoostConfig:
    """Hyper-parameters (same meaning as XGBoost's) and protocol knobs.

    ``reg_lambda`` defaults to 0 like scikit-learn's HistGradientBoosting ``l2_regularization``
    (5-fold CV on the benchmark's training rows ties it with the best of 0/0.1/1/10).

    ``pack`` is K, the number of split candidates returned per ciphertext (K-1 slot
    rotations per input chunk); ``mask_cache_mb`` bounds the passive party's cache of
    pre-encoded masks (beyond it masks are encoded on the fly, ~4x slower).
    """

    n_trees: int = 30
    max_depth: int = 3
    n_bins: int = 32
    learning_rate: float = 0.3
    reg_lambda: float = 0.0
    min_child_weight: float = 1.0
    min_split_gain: float = 0.0
    pack: int = 8
    mask_cache_mb: float = 1024.0
    predict_batch: int = 4096
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"secureboost config: '{name}' = {getattr(self, name)!r}, expected {expected}")

        for name in ("n_trees", "max_depth", "n_bins", "pack", "predict_batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise bad(name, "an integer")
        for name in ("learning_rate", "reg_lambda", "min_child_weight", "min_split_gain", "mask_cache_mb", "timeout_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise bad(name, "a finite number")
        if self.n_trees < 1:
            raise bad("n_trees", ">= 1")
        if not 1 <= self.max_depth <= 16:
            raise bad("max_depth", "between 1 and 16")
        if not 2 <= self.n_bins <= 256:
            raise bad("n_bins", "between 2 and 256 (bins are stored as uint8)")
        if not 0 < self.learning_rate <= 1:
            raise bad("learning_rate", "in (0, 1]")
        if self.reg_lambda < 0:
            raise bad("reg_lambda", ">= 0")
        if self.min_child_weight <= 0:
            raise bad("min_child_weight", "> 0 (an empty child must never be a valid split)")
        if self.min_split_gain < 0:
            raise bad("min_split_gain", ">= 0")
        if self.pack < 1 or self.pack > 64 or (self.pack & (self.pack - 1)):
            raise bad("pack", "a power of two between 1 and 64 (it must divide the 4096 slots)")
        if self.mask_cache_mb < 0:
            raise bad("mask_cache_mb", ">= 0")
        if self.predict_batch < 1:
            raise bad("predict_batch", ">= 1")
        if self.timeout_s <= 0:
            raise bad("timeout_s", "> 0")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "SecureBoostConfig":
        """Build from a job's ``[model]`` table; unknown keys are an error (typos must not pass silently)."""
        d = dict(d or {})
        d.pop("type", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"secureboost config: unknown field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- binning


@dataclass
class FeatureBinner:
    """Per-feature quantile bins, fit by each party on its own training rows.

    ``edges[f]`` are strictly increasing thresholds placed midway between observed
    values, and ``bin(x) = #{edges < x}``; so the split candidate "bin <= b" is exactly
    ``x <= edges[f][b]`` on raw values, which is what inference evaluates.
    """

    feature_names: list[str]
    edges: list[np.ndarray]

    @classmethod
    def fit(cls, X: np.ndarray, feature_names: Sequence[str], n_bins: int) -> "FeatureBinner":
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(feature_names):
            raise DataError(f"binning expects a matrix with {len(feature_names)} columns, got shape {X.shape}")
        if X.shape[0] == 0:
            raise DataError("cannot fit bins on an empty table")
        edges = []
        for j in range(X.shape[1]):
            x = X[:, j]
            if not np.all(np.isfinite(x)):
                raise DataError(f"feature '{feature_names[j]}' has a missing or non-finite value")
            u = np.unique(x)
            if len(u) <= n_bins:
                e = (u[:-1] + u[1:]) / 2.0
            else:
                q = np.quantile(x, np.arange(1, n_bins) / n_bins)
                idx = np.searchsorted(u, q, side="right") - 1
                idx = np.unique(np.clip(idx, 0, len(u) - 2))
                e = (u[idx] + u[idx + 1]) / 2.0
            edges.append(np.asarray(e, dtype=np.float64))
        return cls(list(feature_names), edges)

    def n_bins_of(self, f: int) -> int:
        return len(self.edges[f]) + 1

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.edges):
            raise DataError(f"expected {len(self.edges)} feature columns, got shape {X.shape}")
        out = np.empty(X.shape, dtype=np.uint8)
        for j, e in enumerate(self.edges):
            out[:, j] = np.searchsorted(e, X[:, j], side="left")
        return out


# --------------------------------------------------------------------------- model parts


def _check_columns(names: Sequence[str], X: np.ndarray, who: str) -> None:
    if X.ndim != 2 or X.shape[1] != len(names):
        raise DataError(f"{who}: expected a matrix with {len(names)} feature columns {list(names)[:6]}..., got shape {X.shape}")


@dataclass
class PassiveModelPart:
    """What a passive party keeps: its own split table (opaque id -> feature, threshold) and nothing else."""

    party: str
    label_party: str
    feature_names: list[str]
    splits: dict[int, tuple[int, float]] = field(default_factory=dict)  # split id -> (feature index, threshold)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _PASSIVE_FORMAT,
            "party": self.party,
            "label_party": self.label_party,
            "feature_names": list(self.feature_names),
            "splits": [
                {"id": int(k), "feature": self.feature_names[f], "threshold": float(t)}
                for k, (f, t) in sorted(self.splits.items())
            ],
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "passive model part") -> "PassiveModelPart":
        try:
            d = json.loads(bytes(data).decode("utf-8"))
            if d.get("format") != _PASSIVE_FORMAT:
                raise ValueError(f"format {d.get('format')!r}, expected {_PASSIVE_FORMAT!r}")
            names = [str(n) for n in d["feature_names"]]
            pos = {n: i for i, n in enumerate(names)}
            splits = {int(s["id"]): (pos[s["feature"]], float(s["threshold"])) for s in d["splits"]}
            return cls(party=str(d["party"]), label_party=str(d["label_party"]), feature_names=names, splits=splits)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise DataError(f"{source}: not a SecureBoost passive model part: {e}") from None

    def save(self, path: str | Path) -> Path:
        return _atomic_write(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> "PassiveModelPart":
        p = Path(path)
        if not p.exists():
            raise DataError(f"model part {p} does not exist")
        return cls.from_bytes(p.read_bytes(), source=str(p))


@dataclass
class LabelModelPart:
    """What the label party keeps: tree structure, leaf weights and thresholds of its own features only.

    A node is ``{"leaf": true, "value": w}`` or a split ``{"owner": party, "left": i,
    "right": j}`` plus ``"feature"``/``"threshold"`` when the owner is the label party, or
    ``"split_id"`` (opaque, resolved by the owner) when it is a passive party.
    """

    party: str
    passive_parties: list[str]
    feature_names: list[str]
    base_score: float
    trees: list[list[dict[str, Any]]]
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _LABEL_FORMAT,
            "party": self.party,
            "passive_parties": list(self.passive_parties),
            "feature_names": list(self.feature_names),
            "base_score": float(self.base_score),
            "config": dict(self.config),
            "trees": self.trees,
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "label model part") -> "LabelModelPart":
        try:
            d = json.loads(bytes(data).decode("utf-8"))
            if d.get("format") != _LABEL_FORMAT:
                raise ValueError(f"format {d.get('format')!r}, expected {_LABEL_FORMAT!r}")
            m = cls(
                party=str(d["party"]),
                passive_parties=[str(p) for p in d["passive_parties"]],
                feature_names=[str(n) for n in d["feature_names"]],
                base_score=float(d["base_score"]),
                trees=list(d["trees"]),
                config=dict(d.get("config", {})),
            )
            m._check()
            return m
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise DataError(f"{source}: not a SecureBoost label model part: {e}") from None

    def _check(self) -> None:
        owners = {self.party, *self.passive_parties}
        for t, tree in enumerate(self.trees):
            for i, nd in enumerate(tree):
                if nd.get("leaf"):
                    float(nd["value"])
                    continue
                if nd["owner"] not in owners:
                    raise ValueError(f"tree {t} node {i}: unknown owner {nd['owner']!r}")
                for k in ("left", "right"):
                    if not 0 <= int(nd[k]) < len(tree):
                        raise ValueError(f"tree {t} node {i}: child index {nd[k]} out of range")
                if nd["owner"] == self.party:
                    if not 0 <= int(nd["feature"]) < len(self.feature_names):
                        raise ValueError(f"tree {t} node {i}: feature index {nd['feature']} out of range")
                    float(nd["threshold"])
                else:
                    int(nd["split_id"])

    def save(self, path: str | Path) -> Path:
        return _atomic_write(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> "LabelModelPart":
        p = Path(path)
        if not p.exists():
            raise DataError(f"model part {p} does not exist")
        return cls.from_bytes(p.read_bytes(), source=str(p))

    def splits_by_party(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for tree in self.trees:
            for nd in tree:
                if not nd.get("leaf"):
                    out[nd["owner"]] = out.get(nd["owner"], 0) + 1
        return out


def _atomic_write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- joint inference


def passive_decisions(model_part: PassiveModelPart, X: np.ndarray) -> bytes:
    """A passive party's answer to a scoring batch: left/right bit of every split it owns, for every row.

    ``X`` is the passive party's own feature matrix for the batch (columns in
    ``model_part.feature_names`` order).  Only bits leave: never a value or threshold.
    """
    X = np.asarray(X, dtype=np.float64)
    _check_columns(model_part.feature_names, X, f"party '{model_part.party}'")
    ids = np.array(sorted(model_part.splits), dtype=np.int64)
    bits = np.zeros((len(ids), X.shape[0]), dtype=bool)
    for k, sid in enumerate(ids.tolist()):
        f, thr = model_part.splits[sid]
        bits[k] = X[:, f] <= thr
    return pack_arrays(
        {"split_ids": ids, "bits": np.packbits(bits, axis=1)},
        {"party": model_part.party, "n": int(X.shape[0])},
    )


def _parse_decisions(party: str, payload: bytes, n: int) -> dict[int, np.ndarray]:
    arrays, meta = unpack_arrays(payload, what=f"decisions from party '{party}'")
    if meta.get("party") != party:
        raise ProtocolError(f"decisions labelled as party {meta.get('party')!r} were given for party '{party}'")
    if int(meta.get("n", -1)) != n:
        raise ProtocolError(f"decisions from party '{party}' cover {meta.get('n')} rows, the batch has {n}")
    ids, bits = arrays.get("split_ids"), arrays.get("bits")
    if ids is None or bits is None or bits.ndim != 2 or bits.shape[0] != ids.shape[0]:
        raise ProtocolError(f"decisions from party '{party}' are malformed (need split_ids and a bits matrix)")
    if bits.shape[1] != (n + 7) // 8:
        raise ProtocolError(f"decisions from party '{party}' have {bits.shape[1]} bytes per split, expected {(n + 7) // 8}")
    unpacked = np.unpackbits(bits, axis=1, count=n).astype(bool)
    return {int(s): unpacked[k] for k, s in enumerate(ids.tolist())}


def label_margin(model_part: LabelModelPart, X_label: np.ndarray, decisions_by_party: Mapping[str, bytes]) -> np.ndarray:
    """Raw score (log-odds) of a batch: walks every tree with own thresholds and the passive parties' bits."""
    X = np.asarray(X_label, dtype=np.float64)
    _check_columns(model_part.feature_names, X, f"label party '{model_part.party}'")
    n = X.shape[0]
    missing = [p for p in model_part.passive_parties if p not in decisions_by_party]
    if missing:
        raise ProtocolError(f"scoring needs decisions from every passive party; missing {missing}")
    dec = {p: _parse_decisions(p, decisions_by_party[p], n) for p in model_part.passive_parties}
    out = np.full(n, model_part.base_score, dtype=np.float64)
    rows = np.arange(n)
    for t, tree in enumerate(model_part.trees):
        m = len(tree)
        is_leaf = np.array([bool(nd.get("leaf")) for nd in tree])
        value = np.array([float(nd["value"]) if nd.get("leaf") else 0.0 for nd in tree])
        left = np.array([int(nd.get("left", i)) for i, nd in enumerate(tree)], dtype=np.int64)
        right = np.array([int(nd.get("right", i)) for i, nd in enumerate(tree)], dtype=np.int64)
        go_left = np.zeros((m, n), dtype=bool)
        for i, nd in enumerate(tree):
            if nd.get("leaf"):
                continue
            if nd["owner"] == model_part.party:
                go_left[i] = X[:, int(nd["feature"])] <= float(nd["threshold"])
            else:
                bits = dec[nd["owner"]].get(int(nd["split_id"]))
                if bits is None:
                    raise ProtocolError(
                        f"tree {t}: party '{nd['owner']}' sent no decision for its split id {nd['split_id']} "
                        "(is its model part from the same training run?)"
                    )
                go_left[i] = bits
        cur = np.zeros(n, dtype=np.int64)
        for _ in range(m):
            internal = ~is_leaf[cur]
            if not internal.any():
                break
            cur = np.where(internal, np.where(go_left[cur, rows], left[cur], right[cur]), cur)
        out += value[cur]
    return out


def label_predict(model_part: LabelModelPart, X_label: np.ndarray, decisions_by_party: Mapping[str, bytes]) -> np.ndarray:
    """Probability of the positive class (default) for a scoring batch; see :func:`passive_decisions`."""
    return _sigmoid(label_margin(model_part, X_label, decisions_by_party))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -500, 500)))


# --------------------------------------------------------------------------- split candidates (plaintext side)


class _PlainSource:
    """Split candidates over one party's features, computed in plaintext by that party.

    Used for the label party's own features, by a passive party to answer split requests,
    and (for every party) in the plaintext reference.  Candidate ``c`` means "bin of
    feature ``cand_f[c]`` <= ``cand_b[c]``".
    """

    def __init__(self, party: str, binner: FeatureBinner, Xb: np.ndarray, *, own: bool, shuffle: bool) -> None:
        self.party = party
        self.binner = binner
        self.Xb = Xb
        self.own = own  # label party's own features: split records carry feature + threshold
        nb = [binner.n_bins_of(f) for f in range(len(binner.edges))]
        cf = np.concatenate([np.full(k - 1, f, dtype=np.int64) for f, k in enumerate(nb)]) if nb else np.zeros(0, np.int64)
        cb = np.concatenate([np.arange(k - 1, dtype=np.int64) for k in nb]) if nb else np.zeros(0, np.int64)
        if shuffle and len(cf):
            perm = np.random.default_rng(secrets.randbits(128)).permutation(len(cf))
            cf, cb = cf[perm], cb[perm]
        self.cand_f, self.cand_b = cf, cb
        self.offsets = np.concatenate([[0], np.cumsum(nb)[:-1]]).astype(np.int64) if nb else np.zeros(0, np.int64)
        self.total_bins = int(sum(nb))
        self._cand_pos = self.offsets[cf] + cb if len(cf) else np.zeros(0, np.int64)
        self.split_ids: dict[int, int] = {}  # candidate -> split id (passive role)

    @property
    def n_candidates(self) -> int:
        return int(len(self.cand_f))

    def histogram(self, rows: np.ndarray, g: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cumulative (G_L, H_L) of every candidate over ``rows``."""
        if self.n_candidates == 0:
            return np.zeros(0), np.zeros(0)
        F = self.Xb.shape[1]
        idx = (self.Xb[rows].astype(np.int64) + self.offsets).ravel()
        hg = np.bincount(idx, weights=np.repeat(g[rows], F), minlength=self.total_bins)
        hh = np.bincount(idx, weights=np.repeat(h[rows], F), minlength=self.total_bins)
        return self._cumulative(hg)[self._cand_pos], self._cumulative(hh)[self._cand_pos]

    def _cumulative(self, hist: np.ndarray) -> np.ndarray:
        c = np.cumsum(hist)
        before = np.concatenate([[0.0], c])[self.offsets]  # running total before each feature's first bin
        seg = np.repeat(before, np.diff(np.concatenate([self.offsets, [self.total_bins]])))
        return c - seg

    def left_mask(self, cand: int) -> np.ndarray:
        return self.Xb[:, self.cand_f[cand]] <= self.cand_b[cand]

    def threshold(self, cand: int) -> tuple[int, float]:
        f = int(self.cand_f[cand])
        return f, float(self.binner.edges[f][int(self.cand_b[cand])])

    def register(self, cand: int) -> int:
        """Opaque split id for a chosen candidate (the same candidate always gets the same id)."""
        if cand not in self.split_ids:
            self.split_ids[cand] = len(self.split_ids)
        return self.split_ids[cand]

    def split_record(self, cand: int) -> dict[str, Any]:
        if self.own:
            f, thr = self.threshold(cand)
            return {"owner": self.party, "feature": f, "threshold": thr}
        return {"owner": self.party, "split_id": self.register(cand)}

    def model_part(self, label_party: str) -> PassiveModelPart:
        return PassiveModelPart(
            party=self.party,
            label_party=label_party,
            feature_names=list(self.binner.feature_names),
            splits={sid: self.threshold(c) for c, sid in self.split_ids.items()},
        )


# --------------------------------------------------------------------------- the tree grower (shared)


class _Backend:
    """Where the grower gets candidate histograms and partitions from (plaintext or federated)."""

    def histograms(self, reqs: list[np.ndarray], g: np.ndarray, h: np.ndarray) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        raise NotImplementedError

    def partitions(self, picks: list[tuple[int, int]]) -> list[tuple[dict[str, Any], np.ndarray]]:
        raise NotImplementedError


class _PlainBackend(_Backend):
    def __init__(self, sources: list[_PlainSource]) -> None:
        self.sources = sources

    def histograms(self, reqs, g, h):
        return [[s.histogram(rows, g, h) for s in self.sources] for rows in reqs]

    def partitions(self, picks):
        return [(self.sources[s].split_record(c), self.sources[s].left_mask(c)) for s, c in picks]


@dataclass
class _Node:
    depth: int
    rows: np.ndarray
    G: float
    H: float
    parent: int | None
    sibling: int | None = None
    split: dict[str, Any] | None = None
    left: int | None = None
    right: int | None = None


def _best_split(
    hs: list[tuple[np.ndarray, np.ndarray]], G: float, H: float, cfg: SecureBoostConfig
) -> tuple[int, int, float] | None:
    """(source, candidate, gain) maximising the XGBoost gain.

    Ties: candidates of one party whose (G_L, H_L) equal the best's within
    :data:`_TIE_EPS` split the node's rows identically (no row lies between their
    thresholds); the lowest candidate id among them wins, so the choice does not
    depend on CKKS noise.
    """
    sizes = [len(a) for a, _ in hs]
    if sum(sizes) == 0:
        return None
    GL = np.concatenate([a for a, _ in hs])
    HL = np.concatenate([b for _, b in hs])
    GR, HR = G - GL, H - HL
    lam = cfg.reg_lambda
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = 0.5 * (GL * GL / (HL + lam) + GR * GR / (HR + lam) - G * G / (H + lam))
    valid = (HL >= cfg.min_child_weight) & (HR >= cfg.min_child_weight)
    gain[~valid] = -np.inf
    k = int(np.argmax(gain))
    if not np.isfinite(gain[k]) or gain[k] <= max(cfg.min_split_gain, 1e-12):
        return None
    bounds = np.cumsum(sizes)
    s = int(np.searchsorted(bounds, k, side="right"))
    lo = int(bounds[s - 1]) if s else 0
    hi = int(bounds[s])
    same = valid[lo:hi] & (np.abs(GL[lo:hi] - GL[k]) <= _TIE_EPS) & (np.abs(HL[lo:hi] - HL[k]) <= _TIE_EPS)
    c = int(np.flatnonzero(same)[0])
    return s, c, float(gain[lo + c])


def _grow_tree(
    g: np.ndarray, h: np.ndarray, backend: _Backend, cfg: SecureBoostConfig
) -> tuple[list[dict[str, Any]], np.ndarray, int]:
    """One tree, level by level (one histogram and one partition round per level).

    Returns (nodes, leaf value of every training row, number of histograms computed).
    """
    n = len(g)
    nodes = [_Node(0, np.arange(n), float(g.sum()), float(h.sum()), None)]
    frontier = [0]
    parent_hist: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    computed = 0
    for _depth in range(cfg.max_depth):
        cand = [i for i in frontier if len(nodes[i].rows) >= 2 and nodes[i].H >= 2 * cfg.min_child_weight]
        if not cand:
            break
        cset = set(cand)
        compute: list[int] = []
        derive: list[tuple[int, int, int]] = []  # (node, parent, computed sibling)
        planned: set[int] = set()
        for i in cand:
            if i in planned:
                continue
            nd = nodes[i]
            sib = nd.sibling
            if nd.parent is not None and sib in cset and nd.parent in parent_hist:
                # histogram subtraction: compute the smaller sibling, derive the other
                small, big = (i, sib) if len(nd.rows) <= len(nodes[sib].rows) else (sib, i)
                compute.append(small)
                derive.append((big, nd.parent, small))
                planned |= {i, sib}
            else:
                compute.append(i)
                planned.add(i)
        hist = dict(zip(compute, backend.histograms([nodes[i].rows for i in compute], g, h)))
        computed += len(compute)
        for big, parent, small in derive:
            hist[big] = [(pg - sg, ph - sh) for (pg, ph), (sg, sh) in zip(parent_hist[parent], hist[small])]
        picks: list[tuple[int, tuple[int, int]]] = []
        for i in cand:
            best = _best_split(hist[i], nodes[i].G, nodes[i].H, cfg)
            if best is not None:
                picks.append((i, (best[0], best[1])))
        parts = backend.partitions([p for _, p in picks]) if picks else []
        parent_hist = {}
        nxt: list[int] = []
        for (i, _), (record, mask) in zip(picks, parts):
            nd = nodes[i]
            lm = mask[nd.rows]
            lrows, rrows = nd.rows[lm], nd.rows[~lm]
            if len(lrows) == 0 or len(rrows) == 0:  # only possible through CKKS noise at a boundary
                continue
            li, ri = len(nodes), len(nodes) + 1
            nodes.append(_Node(nd.depth + 1, lrows, float(g[lrows].sum()), float(h[lrows].sum()), i, ri))
            nodes.append(_Node(nd.depth + 1, rrows, float(g[rrows].sum()), float(h[rrows].sum()), i, li))
            nd.split, nd.left, nd.right = record, li, ri
            parent_hist[i] = hist[i]
            nxt += [li, ri]
        frontier = nxt
    row_value = np.zeros(n)
    out: list[dict[str, Any]] = []
    for nd in nodes:
        if nd.split is None:
            w = -cfg.learning_rate * nd.G / (nd.H + cfg.reg_lambda)
            row_value[nd.rows] = w
            out.append({"leaf": True, "value": float(w)})
        else:
            out.append({**nd.split, "left": nd.left, "right": nd.right})
    return out, row_value, computed


def _check_labels(y: np.ndarray | None, who: str) -> np.ndarray:
    if y is None:
        raise DataError(f"{who}: the label party's table has no label column")
    y = np.asarray(y, dtype=np.float64)
    if len(y) < 2 or y.min() == y.max():
        raise DataError(f"{who}: training labels must contain both classes 0 and 1 (got {len(y)} rows)")
    return y


def _boost(
    y: np.ndarray,
    backend: _Backend,
    cfg: SecureBoostConfig,
    progress: Progress | None,
    stats: dict[str, float] | None = None,
) -> tuple[float, list[list[dict[str, Any]]], np.ndarray]:
    """Logistic-loss gradient boosting; returns (base score, trees, training margins)."""
    p0 = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    base = math.log(p0 / (1 - p0))
    F = np.full(len(y), base)
    trees = []
    for t in range(cfg.n_trees):
        p = _sigmoid(F)
        g = p - y
        h = np.maximum(p * (1.0 - p), 1e-16)
        nodes, row_value, computed = _grow_tree(g, h, backend, cfg)
        F += row_value
        trees.append(nodes)
        if stats is not None:
            stats["histograms"] = stats.get("histograms", 0) + computed
        if progress:
            progress("tree", t + 1, cfg.n_trees)
    return base, trees, F


def train_plaintext_reference(
    X_label: np.ndarray,
    y: np.ndarray,
    passive_X: Mapping[str, np.ndarray] | None = None,
    cfg: SecureBoostConfig | None = None,
    *,
    label_party: str = "guest",
    label_feature_names: Sequence[str] | None = None,
    passive_feature_names: Mapping[str, Sequence[str]] | None = None,
) -> tuple[LabelModelPart, dict[str, PassiveModelPart]]:
    """The same algorithm on pooled plaintext (same bins, same grower), returning the same model parts.

    This is the yardstick for the federated run: with identical bins the federated trees
    must equal these up to CKKS noise.  With no passive parties it is the label-party-only model.
    """
    cfg = cfg or SecureBoostConfig()
    passive_X = dict(passive_X or {})
    yv = _check_labels(y, f"label party '{label_party}'")
    lnames = list(label_feature_names or [f"x{i}" for i in range(np.asarray(X_label).shape[1])])
    lb = FeatureBinner.fit(X_label, lnames, cfg.n_bins)
    sources = [_PlainSource(label_party, lb, lb.transform(X_label), own=True, shuffle=False)]
    for p, Xp in passive_X.items():
        names = list((passive_feature_names or {}).get(p) or [f"x{i}" for i in range(np.asarray(Xp).shape[1])])
        if np.asarray(Xp).shape[0] != len(yv):
            raise DataError(f"passive party '{p}': {np.asarray(Xp).shape[0]} rows, label party has {len(yv)}")
        b = FeatureBinner.fit(Xp, names, cfg.n_bins)
        sources.append(_PlainSource(p, b, b.transform(Xp), own=False, shuffle=False))
    base, trees, _ = _boost(yv, _PlainBackend(sources), cfg, None)
    label = LabelModelPart(label_party, list(passive_X), lnames, base, trees, cfg.to_dict())
    return label, {s.party: s.model_part(label_party) for s in sources[1:]}


# --------------------------------------------------------------------------- wire helpers


def _tags(prefix: str) -> tuple[str, str]:
    return f"{prefix}.cmd", f"{prefix}.reply"


def _send(transport: Transport, to: str, tag: str, op: str, seq: int, blobs: Sequence[bytes] = (), **meta: Any) -> None:
    transport.send(to, tag, pack_blobs(list(blobs), {"op": op, "seq": seq, **meta}))


def _recv(transport: Transport, frm: str, tag: str, timeout: float, what: str) -> tuple[list[bytes], dict[str, Any]]:
    return unpack_blobs(transport.recv(frm, tag, timeout=timeout), what=what)


class _RemotePassive:
    """The label party's handle on one passive party (request/reply over the transport)."""

    def __init__(self, transport: Transport, party: str, prefix: str, timeout: float) -> None:
        self.t = transport
        self.party = party
        self.cmd, self.reply = _tags(prefix)
        self.timeout = timeout
        self.seq = 0
        self.n_candidates = 0
        self.bytes_in = 0

    def send(self, op: str, blobs: Sequence[bytes] = (), **meta: Any) -> None:
        self.seq += 1
        _send(self.t, self.party, self.cmd, op, self.seq, blobs, **meta)

    def recv(self, op: str) -> tuple[list[bytes], dict[str, Any]]:
        raw = self.t.recv(self.party, self.reply, timeout=self.timeout)
        self.bytes_in += len(raw)
        blobs, meta = unpack_blobs(raw, what=f"'{op}' reply from passive party '{self.party}'")
        if meta.get("op") == "error":
            raise ProtocolError(f"passive party '{self.party}' failed: {meta.get('message', 'no reason given')}")
        if meta.get("op") != op or meta.get("seq") != self.seq:
            raise ProtocolError(
                f"passive party '{self.party}' answered {meta.get('op')!r} #{meta.get('seq')} "
                f"while '{op}' #{self.seq} was expected (protocol out of step)"
            )
        return blobs, meta


class _FederatedBackend(_Backend):
    """Label party's view: own candidates in plaintext, passive candidates through CKKS."""

    def __init__(self, own: _PlainSource, remotes: list[_RemotePassive], crypto: HistogramKeeper, pack: int) -> None:
        self.own = own
        self.remotes = remotes
        self.crypto = crypto
        self.pack = pack
        self.stats = {"encrypt_s": 0.0, "decrypt_s": 0.0, "own_hist_s": 0.0, "wait_s": 0.0, "split_rounds": 0}

    def histograms(self, reqs, g, h):
        t = time.perf_counter()
        own = [self.own.histogram(rows, g, h) for rows in reqs]
        self.stats["own_hist_s"] += time.perf_counter() - t
        if not self.remotes:
            return [[o] for o in own]
        t = time.perf_counter()
        blobs: list[bytes] = []
        for rows in reqs:
            z = np.zeros(len(g), dtype=np.complex128)
            z[rows] = g[rows] + 1j * h[rows]
            blobs += self.crypto.encrypt_rows(z)
        self.stats["encrypt_s"] += time.perf_counter() - t
        for rem in self.remotes:  # send to all first: passive parties work in parallel
            rem.send("hist", blobs, nodes=len(reqs))
        per_remote = []
        for rem in self.remotes:
            t = time.perf_counter()
            out, _ = rem.recv("hist")
            self.stats["wait_s"] += time.perf_counter() - t
            J = n_outputs(rem.n_candidates, self.pack)
            if len(out) != J * len(reqs):
                raise ProtocolError(
                    f"passive party '{rem.party}' returned {len(out)} histogram ciphertexts, expected {J * len(reqs)}"
                )
            t = time.perf_counter()
            per_remote.append(
                [
                    self.crypto.decrypt_candidates(out[k * J : (k + 1) * J], rem.n_candidates, self.pack, rem.party)
                    for k in range(len(reqs))
                ]
            )
            self.stats["decrypt_s"] += time.perf_counter() - t
        return [[own[k]] + [pr[k] for pr in per_remote] for k in range(len(reqs))]

    def partitions(self, picks):
        out: list[tuple[dict[str, Any], np.ndarray] | None] = [None] * len(picks)
        asked: dict[int, list[int]] = {}
        for k, (s, c) in enumerate(picks):
            if s == 0:
                out[k] = (self.own.split_record(c), self.own.left_mask(c))
            else:
                asked.setdefault(s, []).append(k)
        for s, ks in asked.items():
            self.remotes[s - 1].send("split", candidates=[int(picks[k][1]) for k in ks])
        n = len(self.own.Xb)
        for s, ks in asked.items():
            rem = self.remotes[s - 1]
            t = time.perf_counter()
            blobs, meta = rem.recv("split")
            self.stats["wait_s"] += time.perf_counter() - t
            ids = meta.get("split_ids")
            if len(blobs) != 1 or not isinstance(ids, list) or len(ids) != len(ks):
                raise ProtocolError(f"passive party '{rem.party}' sent a malformed split reply")
            arrays, _ = unpack_arrays(blobs[0], what=f"split bits from passive party '{rem.party}'")
            bits = arrays.get("bits")
            if bits is None or bits.shape != (len(ks), (n + 7) // 8):
                raise ProtocolError(f"passive party '{rem.party}' sent split bits of the wrong shape")
            masks = np.unpackbits(bits, axis=1, count=n).astype(bool)
            for row, (k, sid) in enumerate(zip(ks, ids)):
                out[k] = ({"owner": rem.party, "split_id": int(sid)}, masks[row])
        self.stats["split_rounds"] += 1
        return out  # type: ignore[return-value]


# --------------------------------------------------------------------------- label party role


@dataclass
class SecureBoostResult:
    """Label party's outcome: its model part, public metrics, and timings (no per-row data)."""

    model: LabelModelPart
    train_auc: float
    train_ks: float
    test_auc: float | None
    test_ks: float | None
    test_scores: np.ndarray | None
    train_seconds: float
    report: dict[str, Any]


def run_secureboost_label(
    transport: Transport,
    table: VerticalTable,
    passive_parties: Sequence[str],
    cfg: SecureBoostConfig | None = None,
    progress: Progress | None = None,
    *,
    test_table: VerticalTable | None = None,
    out_dir: str | Path | None = None,
    tag_prefix: str = "sb",
) -> SecureBoostResult:
    """Label party: train SecureBoost with ``passive_parties`` (rows already aligned by PSI), then score ``test_table``.

    ``progress(stage, done, total)`` is called after each tree and each scoring batch.
    Writes ``secureboost_test_report.json`` + ROC/KS PNG into ``out_dir`` when given.
    """
    cfg = cfg or SecureBoostConfig()
    me = transport.me
    passive_parties = list(passive_parties)
    if len(set(passive_parties)) != len(passive_parties) or me in passive_parties:
        raise ConfigError(f"label party '{me}': passive parties {passive_parties} must be distinct and exclude itself")
    y = _check_labels(table.y, f"label party '{me}' ({table.source})")
    t_start = time.perf_counter()
    binner = FeatureBinner.fit(table.X, table.feature_names, cfg.n_bins)
    own = _PlainSource(me, binner, binner.transform(table.X), own=True, shuffle=False)
    remotes = [_RemotePassive(transport, p, tag_prefix, cfg.timeout_s) for p in passive_parties]
    crypto = HistogramKeeper() if remotes else None
    try:
        for rem in remotes:
            rem.send(
                "setup",
                [crypto.public_bytes],  # type: ignore[union-attr]
                version=_PROTOCOL_VERSION,
                n_rows=len(table),
                ids_digest=ids_digest(table.ids),
                pack=cfg.pack,
                n_bins=cfg.n_bins,
            )
        for rem in remotes:
            _, meta = rem.recv("setup")
            rem.n_candidates = int(meta.get("n_candidates", -1))
            if rem.n_candidates < 0:
                raise ProtocolError(f"passive party '{rem.party}' did not report its number of split candidates")
        setup_s = time.perf_counter() - t_start
        backend: _Backend = (
            _FederatedBackend(own, remotes, crypto, cfg.pack) if crypto else _PlainBackend([own])  # type: ignore[arg-type]
        )
        stats: dict[str, float] = {}
        base, trees, F = _boost(y, backend, cfg, progress, stats)
        train_s = time.perf_counter() - t_start
        model = LabelModelPart(me, passive_parties, list(table.feature_names), base, trees, cfg.to_dict())
        train_auc, train_ks = auc_ks(y, _sigmoid(F))

        test_auc = test_ks = None
        scores = None
        t_eval = time.perf_counter()
        if test_table is not None and len(test_table):
            scores = _joint_predict(model, test_table, remotes, cfg, progress)
        eval_s = time.perf_counter() - t_eval
        passive_stats = {}
        for rem in remotes:
            rem.send("finish", status="ok")
        for rem in remotes:
            _, meta = rem.recv("finish")
            passive_stats[rem.party] = {
                "model_sha256": meta.get("model_sha256"),
                "splits": meta.get("splits"),
                "timings": meta.get("timings"),
            }
    except BaseException as e:
        for rem in remotes:
            try:
                rem.send("abort", reason=f"{type(e).__name__}: {e}"[:500])
            except Exception:  # the transport itself may be what failed
                pass
        raise
    finally:
        if crypto:
            crypto.close()

    report: dict[str, Any] = {
        "model": "secureboost",
        "label_party": me,
        "passive_parties": passive_parties,
        "n_train": len(table),
        "config": cfg.to_dict(),
        "train_auc": round(train_auc, 6),
        "train_ks": round(train_ks, 6),
        "train_seconds": round(train_s, 3),
        "setup_seconds": round(setup_s, 3),
        "eval_seconds": round(eval_s, 3),
        "splits_by_party": model.splits_by_party(),
        "label_timings": {k: round(float(v), 3) for k, v in getattr(backend, "stats", {}).items()} | {
            "histograms_computed": int(stats.get("histograms", 0))
        },
        "passive": passive_stats,
        "bytes_received_from_passive": {rem.party: rem.bytes_in for rem in remotes},
    }
    if scores is not None and test_table is not None and test_table.y is not None:
        test_auc, test_ks = auc_ks(test_table.y, scores)
        report.update({"n_test": len(test_table), "test_auc": round(test_auc, 6), "test_ks": round(test_ks, 6)})
        if out_dir is not None:
            write_evaluation(out_dir, test_table.y, scores, name="secureboost_test", extra={"train": report})
    return SecureBoostResult(model, train_auc, train_ks, test_auc, test_ks, scores, train_s, report)


def _joint_predict(
    model: LabelModelPart,
    table: VerticalTable,
    remotes: list[_RemotePassive],
    cfg: SecureBoostConfig,
    progress: Progress | None,
) -> np.ndarray:
    """Joint inference: per batch one round trip per passive party (ids out, decision bits back)."""
    n = len(table)
    out = np.empty(n)
    batches = list(range(0, n, cfg.predict_batch))
    for b, lo in enumerate(batches):
        hi = min(n, lo + cfg.predict_batch)
        ids = table.ids[lo:hi]
        for rem in remotes:
            rem.send("predict", ids=ids)
        dec = {}
        for rem in remotes:
            blobs, _ = rem.recv("predict")
            if len(blobs) != 1:
                raise ProtocolError(f"passive party '{rem.party}' sent a malformed decision reply")
            dec[rem.party] = blobs[0]
        out[lo:hi] = label_predict(model, table.X[lo:hi], dec)
        if progress:
            progress("predict", b + 1, len(batches))
    return out


# --------------------------------------------------------------------------- passive party role


def run_secureboost_passive(
    transport: Transport,
    table: VerticalTable,
    label_party: str,
    cfg: SecureBoostConfig | None = None,
    *,
    test_table: VerticalTable | None = None,
    tag_prefix: str = "sb",
    progress: Progress | None = None,
) -> PassiveModelPart:
    """Passive party: serve histogram / split / scoring requests until the label party says finish.

    Rows of ``table`` must be in the PSI order shared with the label party (checked by
    digest).  Scoring requests name ids, looked up in ``test_table`` then ``table``.
    Returns this party's model part (its split table only).
    """
    cfg = cfg or SecureBoostConfig()
    me = transport.me
    cmd, reply = _tags(tag_prefix)
    binner = FeatureBinner.fit(table.X, table.feature_names, cfg.n_bins)
    src = _PlainSource(me, binner, binner.transform(table.X), own=False, shuffle=True)
    engine: HistogramEvaluator | None = None
    lookup: dict[str, tuple[VerticalTable, int]] = {}
    for tb in (table, test_table):
        if tb is not None:
            for k, i in enumerate(tb.ids):
                lookup.setdefault(i, (tb, k))
    expected = 0
    hist_calls = 0
    try:
        while True:
            blobs, meta = _recv(transport, label_party, cmd, cfg.timeout_s, f"command from label party '{label_party}'")
            op, seq = meta.get("op"), meta.get("seq")
            if op == "abort":
                raise ProtocolError(f"party '{me}': label party '{label_party}' aborted: {meta.get('reason', '')}")
            expected += 1
            if seq != expected:
                raise ProtocolError(f"party '{me}': command #{seq} from '{label_party}' arrived, #{expected} was expected")

            def answer(out_blobs: Sequence[bytes] = (), **m: Any) -> None:
                _send(transport, label_party, reply, str(op), int(seq), out_blobs, **m)

            if op == "setup":
                if meta.get("version") != _PROTOCOL_VERSION:
                    raise ProtocolError(f"party '{me}': label party speaks SecureBoost protocol v{meta.get('version')}, this is v{_PROTOCOL_VERSION}")
                if int(meta.get("n_rows", -1)) != len(table) or meta.get("ids_digest") != ids_digest(table.ids):
                    raise ProtocolError(
                        f"party '{me}': training rows of {table.source} ({len(table)} rows) are not aligned with label "
                        f"party '{label_party}' ({meta.get('n_rows')} rows): the ordered id lists differ; align both "
                        "tables to the same PSI intersection"
                    )
                if int(meta.get("n_bins", cfg.n_bins)) != cfg.n_bins or int(meta.get("pack", cfg.pack)) != cfg.pack:
                    cfg = SecureBoostConfig(**{**cfg.to_dict(), "n_bins": int(meta["n_bins"]), "pack": int(meta["pack"])})
                    binner = FeatureBinner.fit(table.X, table.feature_names, cfg.n_bins)
                    src = _PlainSource(me, binner, binner.transform(table.X), own=False, shuffle=True)
                if len(blobs) != 1:
                    raise ProtocolError(f"party '{me}': setup from '{label_party}' must carry exactly one CKKS context")
                what = f"party '{me}': the CKKS context from label party '{label_party}'"
                ctx = ckks.load_public(blobs[0], what=what)
                engine = HistogramEvaluator(ctx, src.Xb, src.cand_f, src.cand_b, cfg.pack, cfg.mask_cache_mb, what=what)
                answer(n_candidates=src.n_candidates)
            elif op == "hist":
                if engine is None:
                    raise ProtocolError(f"party '{me}': histogram request before setup")
                nodes = int(meta.get("nodes", -1))
                if nodes < 1 or len(blobs) != nodes * engine.n_chunks:
                    raise ProtocolError(
                        f"party '{me}': histogram request with {len(blobs)} ciphertexts for {nodes} nodes "
                        f"(expected {engine.n_chunks} per node)"
                    )
                out: list[bytes] = []
                for k in range(nodes):
                    C = engine.n_chunks
                    out += engine.histogram(blobs[k * C : (k + 1) * C], f"label party '{label_party}'")
                hist_calls += nodes
                answer(out)
                if progress:
                    progress("histograms", hist_calls, 0)
            elif op == "split":
                cands = meta.get("candidates")
                if not isinstance(cands, list) or not all(isinstance(c, int) and 0 <= c < src.n_candidates for c in cands):
                    raise ProtocolError(f"party '{me}': split request names unknown candidates")
                ids = [src.register(c) for c in cands]
                bits = np.packbits(np.stack([src.left_mask(c) for c in cands]), axis=1)
                answer([pack_arrays({"bits": bits})], split_ids=ids)
            elif op == "predict":
                want = meta.get("ids")
                if not isinstance(want, list):
                    raise ProtocolError(f"party '{me}': scoring request without an id list")
                X = np.empty((len(want), table.n_features))
                for k, i in enumerate(want):
                    hit = lookup.get(str(i))
                    if hit is None:
                        raise DataError(f"party '{me}': scoring id {i!r} is not in {table.source} or the test table")
                    X[k] = hit[0].X[hit[1]]
                answer([passive_decisions(src.model_part(label_party), X)])
            elif op == "finish":
                part = src.model_part(label_party)
                timings = {k: round(float(v), 3) for k, v in (engine.stats if engine else {}).items()}
                if engine is not None:
                    timings["rotations_per_pass"] = engine.rotations_per_pass
                answer(
                    model_sha256=hashlib.sha256(part.to_bytes()).hexdigest(),
                    splits=len(part.splits),
                    timings=timings,
                )
                return part
            else:
                raise ProtocolError(f"party '{me}': unknown command {op!r} from label party '{label_party}'")
    except FedCreditError as e:
        if "aborted:" not in str(e):
            try:
                _send(transport, label_party, reply, "error", -1, message=str(e)[:500])
            except Exception:
                pass
        raise
    finally:
        if engine is not None:
            engine.close()
