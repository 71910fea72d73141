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
from typing import Any, NamedTuple

import numpy as np

from crypto.files import write_file
from fedcredit.codec import b64_bytes, b64_text
from fedcredit.data import ColumnKind, InputSchema, Table
from fedcredit.errors import DataError
from fedcredit.metrics import sigmoid
from fedcredit.params import SecureBoostConfig

__all__ = [
    "SecureBoostConfig",
    "FeatureBinner",
    "LabelModelPart",
    "PassiveModelPart",
    "train_plaintext_reference",
    "train_plaintext_reference_tables",
    "SplitRule",
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

#: the numeric threshold of a "value present vs missing" split: every finite value is <= it
ALL_VALUES = float(np.finfo(np.float64).max)


@dataclass
class FeatureBinner:
    """Per-feature bins, fit by each party on its own training rows; missing values get their own bin.

    Numeric ``f``: ``edges[f]`` are strictly increasing thresholds placed midway between
    observed values and ``bin(x) = #{edges < x}``, so "bin <= b" is exactly
    ``x <= edges[f][b]`` on raw values (what inference evaluates).  Categorical ``f``:
    ``cat_bins[f][code]`` is the bin (group) of a category code; categories seen in fewer
    than ``min_count`` training rows, or beyond the ``n_bins`` most frequent, share one
    "other" group.  Groups are ordered by training event rate when the owner holds the
    labels (``y`` given: the label party), else by frequency.  A missing value (NaN) is in
    bin :attr:`missing_bin` (= ``n_bins``) of every feature.
    """

    feature_names: list[str]
    edges: list[np.ndarray]
    kinds: list[str] = field(default_factory=list)
    cat_bins: dict[int, np.ndarray] = field(default_factory=dict)
    has_missing: list[bool] = field(default_factory=list)
    n_bins: int = 256

    def __post_init__(self) -> None:
        F = len(self.feature_names)
        self.kinds = self.kinds or ["numeric"] * F
        self.has_missing = self.has_missing or [False] * F

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        feature_names: Sequence[str],
        n_bins: int,
        *,
        schema: InputSchema | None = None,
        y: np.ndarray | None = None,
        min_count: int = 1,
    ) -> FeatureBinner:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(feature_names):
            raise DataError(f"binning expects a matrix with {len(feature_names)} columns, got shape {X.shape}")
        if X.shape[0] == 0:
            raise DataError("cannot fit bins on an empty table")
        kinds = [str(k) for k in schema.kinds] if schema is not None else ["numeric"] * X.shape[1]
        if len(kinds) != X.shape[1]:
            raise DataError(f"binning: schema has {len(kinds)} columns, the matrix {X.shape[1]}")
        edges: list[np.ndarray] = []
        cat_bins: dict[int, np.ndarray] = {}
        has_missing: list[bool] = []
        for j in range(X.shape[1]):
            col = X[:, j]
            miss = np.isnan(col)
            if np.isinf(col).any():
                raise DataError(f"feature '{feature_names[j]}' has an infinite value (missing values are NaN)")
            has_missing.append(bool(miss.any()))
            x = col[~miss]
            if kinds[j] == "categorical":
                vocab = len(schema.categories.get(feature_names[j], ())) if schema is not None else 0
                cat_bins[j] = _category_groups(x, vocab, n_bins, min_count, None if y is None else y[~miss],
                                               str(feature_names[j]))
                edges.append(np.zeros(0))
                continue
            u = np.unique(x)
            if len(u) <= 1:
                e = np.zeros(0)
            elif len(u) <= n_bins:
                e = (u[:-1] + u[1:]) / 2.0
            else:
                q = np.quantile(x, np.arange(1, n_bins) / n_bins)
                idx = np.searchsorted(u, q, side="right") - 1
                idx = np.unique(np.clip(idx, 0, len(u) - 2))
                e = (u[idx] + u[idx + 1]) / 2.0
            edges.append(np.asarray(e, dtype=np.float64))
        return cls(list(feature_names), edges, kinds, cat_bins, has_missing, n_bins)

    @property
    def missing_bin(self) -> int:
        return self.n_bins

    def n_bins_of(self, f: int) -> int:
        """Value bins of feature ``f`` (the missing bin not counted)."""
        if self.kinds[f] == "categorical":
            cb = self.cat_bins[f]
            return int(cb.max()) + 1 if len(cb) else 0
        return len(self.edges[f]) + 1

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.edges):
            raise DataError(f"expected {len(self.edges)} feature columns, got shape {X.shape}")
        out = np.empty(X.shape, dtype=np.uint16)
        for j, e in enumerate(self.edges):
            col = X[:, j]
            miss = np.isnan(col)
            if self.kinds[j] == "categorical":
                cb = self.cat_bins[j]
                codes = np.where(miss, 0, col)
                if len(col) and (np.any(codes != np.round(codes)) or codes.min() < 0 or codes.max() >= max(len(cb), 1)):
                    raise DataError(f"feature '{self.feature_names[j]}': category codes outside the model's "
                                    f"{len(cb)} categories (re-code the table with the model's input schema)")
                b = cb[codes.astype(np.int64)] if len(cb) else np.zeros(len(col), dtype=np.int64)
            else:
                b = np.searchsorted(e, col, side="left")
            out[:, j] = np.where(miss, self.missing_bin, b)
        return out

    def candidates(self, *, prefix_categoricals: bool) -> tuple[np.ndarray, np.ndarray]:
        """Every split candidate as (feature per candidate, left-bin set per candidate: bool ``(P, n_bins + 1)``).

        Numeric: "bin <= b" for each inner threshold, and — when the feature has missing
        training values — the same with missing rows left, plus "value present" vs
        "missing".  Categorical: prefixes of the group order when the owner holds the
        labels (``prefix_categoricals``), else one group vs the rest (a passive party
        cannot order its groups by the labels without learning them); with missing values,
        each also with missing rows left, plus "present vs missing".
        """
        W = self.n_bins + 1
        fs: list[int] = []
        luts: list[np.ndarray] = []

        def add(f: int, bins: np.ndarray, missing_left: bool) -> None:
            lut = np.zeros(W, dtype=bool)
            lut[bins] = True
            lut[self.missing_bin] = missing_left
            fs.append(f)
            luts.append(lut)

        for f in range(len(self.feature_names)):
            k, m = self.n_bins_of(f), self.has_missing[f]
            if self.kinds[f] == "categorical" and not prefix_categoricals:
                sets = [np.array([b]) for b in (range(k) if k > 2 else range(k - 1))]
            else:
                sets = [np.arange(b + 1) for b in range(k - 1)]
            for bins in sets:
                add(f, bins, False)
                if m:
                    add(f, bins, True)
            if m and k >= 1:
                add(f, np.arange(k), False)
        if not fs:
            return np.zeros(0, dtype=np.int64), np.zeros((0, W), dtype=bool)
        return np.asarray(fs, dtype=np.int64), np.stack(luts)

    def rule(self, f: int, lut: np.ndarray) -> SplitRule:
        """The raw-value rule of candidate (``f``, left-bin set): what a model part stores and inference applies."""
        missing_left = bool(lut[self.missing_bin])
        k = self.n_bins_of(f)
        if self.kinds[f] == "categorical":
            codes = np.flatnonzero(lut[self.cat_bins[f]])
            return SplitRule(f, math.nan, missing_left, tuple(int(c) for c in codes))
        n_left = int(lut[:k].sum())
        thr = ALL_VALUES if n_left == k else float(self.edges[f][n_left - 1])
        return SplitRule(f, thr, missing_left)


def _category_groups(x: np.ndarray, vocab: int, n_bins: int, min_count: int, y: np.ndarray | None,
                     name: str) -> np.ndarray:
    """code -> group for one categorical column (non-missing training codes ``x``, vocabulary size ``vocab``)."""
    codes = x.astype(np.int64)
    if len(x) and (np.any(codes != x) or codes.min() < 0 or codes.max() >= vocab):
        raise DataError(f"feature '{name}': category codes must be integers in [0, {vocab}) (its vocabulary)")
    counts = np.bincount(codes, minlength=vocab)
    order = sorted(range(vocab), key=lambda c: (-counts[c], c))
    keep = [c for c in order if counts[c] >= min_count]
    if len(keep) > n_bins or (len(keep) == n_bins and len(keep) < vocab):
        keep = keep[: n_bins - 1]
    rest = [c for c in range(vocab) if c not in set(keep)]
    groups = [[c] for c in keep] + ([rest] if rest else [])
    if y is not None:
        events = np.bincount(codes, weights=y, minlength=vocab)

        def rate(gr: list[int]) -> float:
            n = counts[gr].sum()
            return float(events[gr].sum() / n) if n else math.inf  # an empty "other" group last

        groups.sort(key=lambda gr: (rate(gr), gr[0]))
    out = np.zeros(vocab, dtype=np.int64)
    for b, gr in enumerate(groups):
        out[gr] = b
    return out


class SplitRule(NamedTuple):
    """One split on raw values of the owner's feature ``feature``: which rows go left.

    Numeric: ``x <= threshold``; categorical (``categories`` given): ``x`` in
    ``categories`` (codes of the model's input schema).  A missing value (NaN) goes left
    iff ``missing_left`` — the default direction learned in training (a feature with no
    missing training values sends them right).
    """

    feature: int
    threshold: float
    missing_left: bool = False
    categories: tuple[int, ...] | None = None

    def left(self, col: np.ndarray) -> np.ndarray:
        col = np.asarray(col, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            go = np.isin(col, self.categories) if self.categories is not None else col <= self.threshold
        return (go | np.isnan(col)) if self.missing_left else go

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"categories": list(self.categories)} if self.categories is not None else {
            "threshold": float(self.threshold)}
        return d | {"missing_left": bool(self.missing_left)}

    @classmethod
    def parse(cls, feature: int, d: Mapping[str, Any]) -> SplitRule:
        """From a node / split entry; ``missing_left`` absent (models before missing-value support) = right."""
        ml = d.get("missing_left", False)
        if not isinstance(ml, bool):
            raise TypeError(f"missing_left must be true or false, got {ml!r}")
        if "categories" in d:
            cats = d["categories"]
            if not isinstance(cats, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in cats):
                raise TypeError(f"categories must be a list of category codes, got {cats!r}")
            return cls(feature, math.nan, ml, tuple(cats))
        return cls(feature, float(d["threshold"]), ml)


# --------------------------------------------------------------------------- model parts


def check_columns(names: Sequence[str], X: np.ndarray, who: str) -> None:
    if X.ndim != 2 or X.shape[1] != len(names):
        raise DataError(f"{who}: expected a matrix with {len(names)} feature columns {list(names)[:6]}..., got shape {X.shape}")


def _schema_dict(schema: InputSchema | None) -> dict[str, Any]:
    return {"input_schema": schema.to_dict()} if schema is not None else {}


def _schema_of(d: Mapping[str, Any], names: list[str], source: str) -> InputSchema | None:
    """The stored input schema (absent in models before categorical support: all numeric)."""
    raw = d.get("input_schema")
    if raw is None:
        return None
    schema = InputSchema.from_dict(raw, source=source)
    if list(schema.feature_names) != names:
        raise ValueError(f"input_schema features {list(schema.feature_names)} differ from feature_names {names}")
    return schema


def numeric_schema(names: Sequence[str]) -> InputSchema:
    """The input schema of a model from before categorical support: every column numeric."""
    kinds: list[ColumnKind] = ["numeric" for _ in names]
    return InputSchema(tuple(names), tuple(kinds))


def encode_for(schema: InputSchema | None, names: Sequence[str], table: Table) -> tuple[np.ndarray, dict[str, int]]:
    """``table`` as the model's X (its columns, its category codes): (X, unknown-category count per feature).

    The one re-coding rule (``InputSchema.encode``): a category the model never saw is a
    missing value and takes the split's default direction, counted so callers report it.
    """
    if schema is None:
        t = table.select(list(names))
        if any(k == "categorical" for k in t.kinds):
            raise DataError(f"party '{table.party}', file {table.source}: the model (all numeric) got categorical "
                            f"column(s) {[f for f, k in zip(t.feature_names, t.kinds) if k == 'categorical']}")
        return t.X, {}
    return schema.encode(table)


@dataclass
class PassiveModelPart:
    """What a passive party keeps: its own split table (opaque id -> :class:`SplitRule`) and input schema, nothing else.

    Hidden splits (``passive_splits = "hidden"``): it never learned which rule a split uses, so it keeps
    every one of its split ``candidates`` (its own rules, in its own shuffled order), each split's
    *placed selector* (``Enc(e)``, crypto/ckks_select.py, under the label party's key) and the label
    party's public CKKS ``context`` to evaluate them with; ``splits`` is empty.
    """

    party: str
    label_party: str
    feature_names: list[str]
    splits: dict[int, SplitRule] = field(default_factory=dict)  # split id -> rule on this party's raw values
    input_schema: InputSchema | None = None  # None: a model from before categorical support (all numeric)
    candidates: list[SplitRule] = field(default_factory=list)  # hidden splits: every candidate rule
    selectors: dict[int, bytes] = field(default_factory=dict, repr=False)  # hidden splits: split id -> placed Enc(e)
    context: bytes | None = field(default=None, repr=False)  # hidden splits: the label party's public CKKS context

    def __post_init__(self) -> None:
        self.splits = {int(k): v if isinstance(v, SplitRule) else SplitRule(int(v[0]), float(v[1]), *v[2:])
                       for k, v in self.splits.items()}
        self.selectors = {int(k): bytes(v) for k, v in self.selectors.items()}

    @property
    def hidden(self) -> bool:
        """Whether this part's splits are hidden from it (selectors instead of rules)."""
        return self.context is not None

    def encode(self, table: Table) -> tuple[np.ndarray, dict[str, int]]:
        """``table`` in this part's columns and category codes (unknown category = missing, counted)."""
        return encode_for(self.input_schema, self.feature_names, table)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "format": _PASSIVE_FORMAT,
            "party": self.party,
            "label_party": self.label_party,
            "feature_names": list(self.feature_names),
            **_schema_dict(self.input_schema),
            "splits": [
                {"id": int(k), "feature": self.feature_names[r.feature], **r.to_dict()}
                for k, r in sorted(self.splits.items())
            ],
        }
        if self.hidden:
            assert self.context is not None
            d["passive_splits"] = "hidden"
            d["candidates"] = [{"feature": self.feature_names[r.feature], **r.to_dict()} for r in self.candidates]
            d["selectors"] = [{"id": int(k), "ckks": b64_text(v)} for k, v in sorted(self.selectors.items())]
            d["ckks_public_context"] = b64_text(self.context)
        return d

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
            splits = {int(s["id"]): SplitRule.parse(pos[s["feature"]], s) for s in d["splits"]}
            part = cls(party=str(d["party"]), label_party=str(d["label_party"]), feature_names=names, splits=splits,
                       input_schema=_schema_of(d, names, source))
            if d.get("passive_splits") == "hidden":
                part.candidates = [SplitRule.parse(pos[c["feature"]], c) for c in d["candidates"]]
                part.selectors = {int(x["id"]): b64_bytes(x["ckks"], source, f"selector {x.get('id')}") for x in d["selectors"]}
                part.context = b64_bytes(d["ckks_public_context"], source, "ckks_public_context")
                if sorted(part.selectors) != list(range(len(part.selectors))) or not part.candidates:
                    raise ValueError("hidden splits need candidates and selectors with ids 0..n-1")
            return part
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError, RecursionError, DataError) as e:
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
    "right": j}`` plus, when the owner is the label party, ``"feature"``, ``"missing_left"``
    and ``"threshold"`` (numeric) or ``"categories"`` (codes going left); or ``"split_id"``
    (opaque, resolved by the owner) when it is a passive party (:class:`SplitRule`).
    """

    party: str
    passive_parties: list[str]
    feature_names: list[str]
    base_score: float
    trees: list[list[dict[str, Any]]]
    config: dict[str, Any] = field(default_factory=dict)
    input_schema: InputSchema | None = None  # None: a model from before categorical support (all numeric)
    #: hidden splits: the CKKS secret context the passive parties' selectors are under (decrypts their answers)
    secret_context: bytes | None = field(default=None, repr=False)
    #: hidden splits: each passive party's selector block (crypto.ckks_select.block_size of its candidate count)
    selection_blocks: dict[str, int] = field(default_factory=dict)

    def encode(self, table: Table) -> tuple[np.ndarray, dict[str, int]]:
        """``table`` in this part's columns and category codes (unknown category = missing, counted)."""
        return encode_for(self.input_schema, self.feature_names, table)

    def to_dict(self) -> dict[str, Any]:
        hidden = ({"passive_splits": "hidden", "ckks_secret_context": b64_text(self.secret_context),
                   "selection_blocks": dict(self.selection_blocks)} if self.secret_context is not None else {})
        return hidden | {
            "format": _LABEL_FORMAT,
            "party": self.party,
            "passive_parties": list(self.passive_parties),
            "feature_names": list(self.feature_names),
            **_schema_dict(self.input_schema),
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
            m.input_schema = _schema_of(d, m.feature_names, source)
            if d.get("passive_splits") == "hidden":
                m.secret_context = b64_bytes(d["ckks_secret_context"], source, "ckks_secret_context")
                m.selection_blocks = {str(k): int(v) for k, v in dict(d["selection_blocks"]).items()}
            m._check()
            return m
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError, RecursionError, DataError) as e:
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
                    SplitRule.parse(int(nd["feature"]), nd)
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


def node_rule(nd: Mapping[str, Any]) -> SplitRule:
    """The rule of a label party's own split node (see :class:`LabelModelPart`)."""
    return SplitRule.parse(int(nd["feature"]), nd)


class PlainSource:
    """Split candidates over one party's features, computed in plaintext by that party.

    Used for the label party's own features, by a passive party to answer split requests,
    and (for every party) in the plaintext reference.  Candidate ``c`` means "the bin of
    feature ``cand_f[c]`` is in the set ``cand_left[c]``" (:meth:`FeatureBinner.candidates`:
    thresholds, category sets, and the default direction of missing rows).
    """

    def __init__(self, party: str, binner: FeatureBinner, Xb: np.ndarray, *, own: bool, shuffle: bool,
                 schema: InputSchema | None = None) -> None:
        self.party = party
        self.binner = binner
        self.schema = schema
        self.Xb = Xb
        self.own = own  # label party's own features: split records carry feature + rule
        self._base = binner.candidates(prefix_categoricals=own)
        perm = np.arange(len(self._base[0]), dtype=np.int64)
        if shuffle and len(perm):
            perm = np.random.default_rng(secrets.randbits(128)).permutation(len(perm))
        self._apply(perm)
        self.split_ids: dict[int, int] = {}  # candidate -> split id (passive role)

    def _apply(self, perm: np.ndarray) -> None:
        self.perm = perm
        self.cand_f, self.cand_left = self._base[0][perm], self._base[1][perm]
        self._W = self.binner.n_bins + 1

    def restore(self, perm: np.ndarray, split_ids: Mapping[int, int]) -> None:
        """Back to a checkpointed candidate order and split-id table (a resumed run must name the same splits)."""
        perm = np.asarray(perm, dtype=np.int64)
        if sorted(perm.tolist()) != list(range(len(self._base[0]))):
            raise DataError(f"party '{self.party}': the checkpointed split candidates do not match this table's bins")
        self._apply(perm)
        self.split_ids = {int(c): int(s) for c, s in split_ids.items()}

    @property
    def n_candidates(self) -> int:
        return int(len(self.cand_f))

    def histogram(self, rows: np.ndarray, g: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(G_L, H_L) of every candidate over ``rows``."""
        if self.n_candidates == 0:
            return np.zeros(0), np.zeros(0)
        F, W = self.Xb.shape[1], self._W
        idx = (self.Xb[rows].astype(np.int64) + np.arange(F) * W).ravel()
        hg = np.bincount(idx, weights=np.repeat(g[rows], F), minlength=F * W).reshape(F, W)
        hh = np.bincount(idx, weights=np.repeat(h[rows], F), minlength=F * W).reshape(F, W)
        return (self.cand_left * hg[self.cand_f]).sum(axis=1), (self.cand_left * hh[self.cand_f]).sum(axis=1)

    def left_mask(self, cand: int) -> np.ndarray:
        return self.cand_left[cand][self.Xb[:, self.cand_f[cand]]]

    def candidate_table(self) -> np.ndarray:
        """(candidates x rows) bool: every candidate's left/right bit of every training row (hidden splits)."""
        P = self.n_candidates
        return self.cand_left[np.arange(P)[:, None], self.Xb[:, self.cand_f].T] if P else np.zeros((0, len(self.Xb)), bool)

    def candidate_rules(self) -> list[SplitRule]:
        """Every candidate as a raw-value rule, in this party's (shuffled) candidate order (hidden splits)."""
        return [self.rule(c) for c in range(self.n_candidates)]

    def rule(self, cand: int) -> SplitRule:
        return self.binner.rule(int(self.cand_f[cand]), self.cand_left[cand])

    def register(self, cand: int) -> int:
        """Opaque split id for a chosen candidate (the same candidate always gets the same id)."""
        if cand not in self.split_ids:
            self.split_ids[cand] = len(self.split_ids)
        return self.split_ids[cand]

    def split_record(self, cand: int) -> dict[str, Any]:
        if self.own:
            r = self.rule(cand)
            return {"owner": self.party, "feature": r.feature, **r.to_dict()}
        return {"owner": self.party, "split_id": self.register(cand)}

    def model_part(self, label_party: str, *, selectors: Mapping[int, bytes] | None = None,
                   context: bytes | None = None) -> PassiveModelPart:
        """This party's model part; with ``context`` (hidden splits) its candidates and placed ``selectors``."""
        if context is not None:
            return PassiveModelPart(party=self.party, label_party=label_party,
                                    feature_names=list(self.binner.feature_names), input_schema=self.schema,
                                    candidates=self.candidate_rules(), selectors=dict(selectors or {}), context=context)
        return PassiveModelPart(
            party=self.party,
            label_party=label_party,
            feature_names=list(self.binner.feature_names),
            splits={sid: self.rule(c) for c, sid in self.split_ids.items()},
            input_schema=self.schema,
        )


def source_of(party: str, table: Table, cfg: SecureBoostConfig, *, own: bool, shuffle: bool) -> PlainSource:
    """A party's bins and candidates over its training table (the same call in every role and the reference)."""
    schema = InputSchema.of(table)
    binner = FeatureBinner.fit(table.X, table.feature_names, cfg.n_bins, schema=schema,
                               y=table.y if own else None, min_count=cfg.min_category_count)
    return PlainSource(party, binner, binner.transform(table.X), own=own, shuffle=shuffle, schema=schema)


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

    Ties: candidates whose (G_L, H_L) equal the best's within :data:`_TIE_EPS` split the
    node's rows identically (no row lies between their thresholds, or two parties' features
    partition the node alike); the first of them (lowest party, then lowest candidate id)
    wins, so the choice does not depend on CKKS noise.
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
    # every candidate (of any party) whose left sums equal the best's: the first one (lowest party,
    # then lowest candidate id) wins, so CKKS noise picks neither the party nor the candidate
    same = valid & (np.abs(GL - GL[k]) <= _TIE_EPS) & (np.abs(HL - HL[k]) <= _TIE_EPS)
    k = int(np.flatnonzero(same)[0])
    bounds = np.cumsum(sizes)
    s = int(np.searchsorted(bounds, k, side="right"))
    lo = int(bounds[s - 1]) if s else 0
    c = k - lo
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
    label_noise: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[float, list[list[dict[str, Any]]], np.ndarray]:
    """Logistic-loss gradient boosting; returns (base score, trees, training margins).

    ``start`` = (trees, margins) of a checkpoint: boosting continues after them (the base
    score is a function of ``y`` alone, so it is recomputed, not stored).  ``label_noise``
    (label DP, fedcredit/dp.py): applied to each tree's gradients before anything uses them;
    the base score is then 0, a start that depends on no label.
    """
    p0 = float(np.clip(y.mean(), 1e-6, 1 - 1e-6)) if label_noise is None else 0.5
    base = math.log(p0 / (1 - p0))
    F = np.full(len(y), base)
    trees: list[list[dict[str, Any]]] = []
    if start is not None:
        trees, F = [list(t) for t in start[0]], np.array(start[1], dtype=np.float64)
        if F.shape != (len(y),):
            raise DataError(f"checkpointed training margins cover {F.shape} rows, the table has {len(y)}")
    for t in range(len(trees), cfg.n_trees):
        p = sigmoid(F)
        g = p - y if label_noise is None else label_noise(p - y)
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

    All-numeric matrices (NaN = missing); :func:`train_plaintext_reference_tables` takes
    :class:`~fedcredit.data.Table` s with categorical columns.  This is the yardstick for
    the federated run: with identical bins the federated trees must equal these up to CKKS
    noise.  With no passive parties it is the label-party-only model.
    """
    def table(party: str, X: np.ndarray, names: Sequence[str] | None, labels: np.ndarray | None) -> Table:
        X = np.asarray(X, dtype=np.float64)
        cols = list(names or [f"x{i}" for i in range(X.shape[1])])
        return Table(party, f"{party} matrix", [str(i) for i in range(X.shape[0])], X, cols, labels)

    yv = np.asarray(y, dtype=np.float64) if y is not None else None
    return train_plaintext_reference_tables(
        table(label_party, X_label, label_feature_names, yv),
        {p: table(p, Xp, (passive_feature_names or {}).get(p), None) for p, Xp in (passive_X or {}).items()},
        cfg,
    )


def train_plaintext_reference_tables(
    label_table: Table, passive_tables: Mapping[str, Table] | None = None, cfg: SecureBoostConfig | None = None
) -> tuple[LabelModelPart, dict[str, PassiveModelPart]]:
    """:func:`train_plaintext_reference` on aligned training tables (rows in the same order at every party)."""
    cfg = cfg or SecureBoostConfig()
    label_party = label_table.party
    yv = check_labels(label_table.y, f"label party '{label_party}'")
    sources = [source_of(label_party, label_table, cfg, own=True, shuffle=False)]
    for p, t in (passive_tables or {}).items():
        if len(t) != len(yv):
            raise DataError(f"passive party '{p}': {len(t)} rows, label party has {len(yv)}")
        sources.append(source_of(p, t, cfg, own=False, shuffle=False))
    base, trees, _ = boost(yv, PlainBackend(sources), cfg, None)
    label = LabelModelPart(label_party, list(passive_tables or {}), list(label_table.feature_names), base, trees,
                           cfg.to_dict(), input_schema=sources[0].schema)
    return label, {s.party: s.model_part(label_party) for s in sources[1:]}
