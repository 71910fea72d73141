"""SecureBoost's plaintext half: configuration, binning, model parts, the tree grower, the plaintext reference.

Everything here is shared by both roles and by the plaintext reference: the grower
(:func:`boost`) asks a :class:`Backend` for candidate histograms and partitions, which is
:class:`PlainBackend` over :class:`PlainSource` candidates in plaintext, or the label
party's federated backend (:mod:`.label`) that gets passive parties' candidates through
CKKS.  With identical bins the federated trees equal the plaintext reference's up to CKKS
noise (ties are broken so that the noise cannot change the choice; see :func:`_best_split`).
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crypto.files import write_file
from fedcredit.errors import DataError
from fedcredit.metrics import sigmoid
from fedcredit.params import SecureBoostConfig

__all__ = [
    "SecureBoostConfig",
    "FeatureBinner",
    "LabelModelPart",
    "PassiveModelPart",
    "train_plaintext_reference",
]

Progress = Callable[[str, int, int], None]

# Two split candidates whose left sums (G_L, H_L) agree this closely partition the node
# identically (CKKS noise on a sum is ~1e-5; one row's hessian is >> 1e-4 unless p is
# within 1e-4 of 0 or 1).
_TIE_EPS = 1e-4
_LABEL_FORMAT = "fedcredit.secureboost.label/1"
_PASSIVE_FORMAT = "fedcredit.secureboost.passive/1"



# --------------------------------------------------------------------------- configuration


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
    def fit(cls, X: np.ndarray, feature_names: Sequence[str], n_bins: int) -> FeatureBinner:
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


def check_columns(names: Sequence[str], X: np.ndarray, who: str) -> None:
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
    def from_bytes(cls, data: bytes, *, source: str = "passive model part") -> PassiveModelPart:
        try:
            d = json.loads(bytes(data).decode("utf-8"))
            if not isinstance(d, dict):
                raise TypeError(f"expected a JSON object, got {type(d).__name__}")
            if d.get("format") != _PASSIVE_FORMAT:
                raise ValueError(f"format {d.get('format')!r}, expected {_PASSIVE_FORMAT!r}")
            names = [str(n) for n in d["feature_names"]]
            pos = {n: i for i, n in enumerate(names)}
            splits = {int(s["id"]): (pos[s["feature"]], float(s["threshold"])) for s in d["splits"]}
            return cls(party=str(d["party"]), label_party=str(d["label_party"]), feature_names=names, splits=splits)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError, RecursionError) as e:
            raise DataError(f"{source}: not a SecureBoost passive model part: {e!r}") from None

    def save(self, path: str | Path) -> Path:
        return write_file(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> PassiveModelPart:
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
    def from_bytes(cls, data: bytes, *, source: str = "label model part") -> LabelModelPart:
        try:
            d = json.loads(bytes(data).decode("utf-8"))
            if not isinstance(d, dict):
                raise TypeError(f"expected a JSON object, got {type(d).__name__}")
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
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError, RecursionError) as e:
            raise DataError(f"{source}: not a SecureBoost label model part: {e!r}") from None

    def _check(self) -> None:
        owners = {self.party, *self.passive_parties}
        for t, tree in enumerate(self.trees):
            if not isinstance(tree, list) or not tree or not all(isinstance(nd, dict) for nd in tree):
                raise ValueError(f"tree {t} is not a non-empty list of node objects")
            for i, nd in enumerate(tree):
                if nd.get("leaf"):
                    float(nd["value"])
                    continue
                if nd["owner"] not in owners:
                    raise ValueError(f"tree {t} node {i}: unknown owner {nd['owner']!r}")
                for k in ("left", "right"):  # children come after their parent: no cycle, depth bounded
                    if not i < int(nd[k]) < len(tree):
                        raise ValueError(f"tree {t} node {i}: child index {nd[k]} out of range")
                if nd["owner"] == self.party:
                    if not 0 <= int(nd["feature"]) < len(self.feature_names):
                        raise ValueError(f"tree {t} node {i}: feature index {nd['feature']} out of range")
                    float(nd["threshold"])
                else:
                    int(nd["split_id"])

    def save(self, path: str | Path) -> Path:
        return write_file(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> LabelModelPart:
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



# --------------------------------------------------------------------------- split candidates (plaintext side)


class PlainSource:
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

    def restore(self, cand_f: np.ndarray, cand_b: np.ndarray, split_ids: Mapping[int, int]) -> None:
        """Back to a checkpointed candidate order and split-id table (a resumed run must name the same splits)."""
        cf, cb = np.asarray(cand_f, dtype=np.int64), np.asarray(cand_b, dtype=np.int64)
        if sorted(zip(cf.tolist(), cb.tolist())) != sorted(zip(self.cand_f.tolist(), self.cand_b.tolist())):
            raise DataError(f"party '{self.party}': the checkpointed split candidates do not match this table's bins")
        self.cand_f, self.cand_b = cf, cb
        self._cand_pos = self.offsets[cf] + cb if len(cf) else np.zeros(0, np.int64)
        self.split_ids = {int(c): int(s) for c, s in split_ids.items()}

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


class Backend:
    """Where the grower gets candidate histograms and partitions from (plaintext or federated)."""

    def histograms(self, reqs: list[np.ndarray], g: np.ndarray, h: np.ndarray) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        raise NotImplementedError

    def partitions(self, picks: list[tuple[int, int]]) -> list[tuple[dict[str, Any], np.ndarray]]:
        raise NotImplementedError


class PlainBackend(Backend):
    def __init__(self, sources: list[PlainSource]) -> None:
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
    g: np.ndarray, h: np.ndarray, backend: Backend, cfg: SecureBoostConfig
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


def check_labels(y: np.ndarray | None, who: str) -> np.ndarray:
    if y is None:
        raise DataError(f"{who}: the label party's table has no label column")
    y = np.asarray(y, dtype=np.float64)
    if len(y) < 2 or y.min() == y.max():
        raise DataError(f"{who}: training labels must contain both classes 0 and 1 (got {len(y)} rows)")
    return y


#: called after each tree with (trees so far, training margins): where a checkpoint is written
AfterTree = Callable[[list[list[dict[str, Any]]], np.ndarray], None]


def boost(
    y: np.ndarray,
    backend: Backend,
    cfg: SecureBoostConfig,
    progress: Progress | None,
    stats: dict[str, float] | None = None,
    *,
    start: tuple[list[list[dict[str, Any]]], np.ndarray] | None = None,
    after_tree: AfterTree | None = None,
) -> tuple[float, list[list[dict[str, Any]]], np.ndarray]:
    """Logistic-loss gradient boosting; returns (base score, trees, training margins).

    ``start`` = (trees, margins) of a checkpoint: boosting continues after them (the base
    score is a function of ``y`` alone, so it is recomputed, not stored).
    """
    p0 = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    base = math.log(p0 / (1 - p0))
    F = np.full(len(y), base)
    trees: list[list[dict[str, Any]]] = []
    if start is not None:
        trees, F = [list(t) for t in start[0]], np.array(start[1], dtype=np.float64)
        if F.shape != (len(y),):
            raise DataError(f"checkpointed training margins cover {F.shape} rows, the table has {len(y)}")
    for t in range(len(trees), cfg.n_trees):
        p = sigmoid(F)
        g = p - y
        h = np.maximum(p * (1.0 - p), 1e-16)
        nodes, row_value, computed = _grow_tree(g, h, backend, cfg)
        F += row_value
        trees.append(nodes)
        if stats is not None:
            stats["histograms"] = stats.get("histograms", 0) + computed
        if after_tree is not None:
            after_tree(trees, F)
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
    yv = check_labels(y, f"label party '{label_party}'")
    lnames = list(label_feature_names or [f"x{i}" for i in range(np.asarray(X_label).shape[1])])
    lb = FeatureBinner.fit(X_label, lnames, cfg.n_bins)
    sources = [PlainSource(label_party, lb, lb.transform(X_label), own=True, shuffle=False)]
    for p, Xp in passive_X.items():
        names = list((passive_feature_names or {}).get(p) or [f"x{i}" for i in range(np.asarray(Xp).shape[1])])
        if np.asarray(Xp).shape[0] != len(yv):
            raise DataError(f"passive party '{p}': {np.asarray(Xp).shape[0]} rows, label party has {len(yv)}")
        b = FeatureBinner.fit(Xp, names, cfg.n_bins)
        sources.append(PlainSource(p, b, b.transform(Xp), own=False, shuffle=False))
    base, trees, _ = boost(yv, PlainBackend(sources), cfg, None)
    label = LabelModelPart(label_party, list(passive_X), lnames, base, trees, cfg.to_dict())
    return label, {s.party: s.model_part(label_party) for s in sources[1:]}

