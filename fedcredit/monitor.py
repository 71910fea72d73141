"""Population stability (PSI) of a model's score and of a party's own features: the reference and the formula.

Why this module: a model drifts silently when the applicants it scores stop looking like the
ones it was trained on.  At the end of a training run each party that decides (a vertical
label party, a horizontal bank) saves a *reference* of its training population in its model
dir — bin edges and bin shares only, never rows: score deciles and, per own feature, decile
edges (numeric) or category shares (categorical), each with a missing bin.  ``fedcredit party
monitor`` later bins the scored population from the party's decision log the same way and
computes PSI per item.

Convention (docs/reports.md): shares ``e_i`` (reference) and ``a_i`` (scored), each floored at
``EPSILON`` = 1e-4 so an empty bin gives a large but finite term; PSI = Σ (a_i − e_i)·ln(a_i / e_i).
Bands: PSI < 0.1 ``stable``, 0.1 ≤ PSI < 0.25 ``watch``, PSI ≥ 0.25 ``act``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from crypto.files import write_text
from fedcredit.data import Table
from fedcredit.errors import ConfigError

__all__ = ["EPSILON", "BANDS", "REFERENCE_FILE", "psi", "band", "build_reference", "save_reference",
           "load_reference", "population_stability", "CONVENTION"]

EPSILON: Final = 1e-4
#: (upper bound, band): PSI below 0.1 is stable, below 0.25 watch, otherwise act
BANDS: Final = ((0.1, "stable"), (0.25, "watch"), (math.inf, "act"))
REFERENCE_FILE: Final = "reference.json"
REFERENCE_FORMAT: Final = "fedcredit-psi-reference/1"
CONVENTION: Final = ("PSI = sum over bins of (a - e) * ln(a / e), e = reference share, a = scored share, each "
                     f"floored at {EPSILON:g}; bands: < 0.1 stable, 0.1-0.25 watch, >= 0.25 act.")
MISSING: Final = "(missing)"
OTHER: Final = "(other/unknown)"


def psi(expected: Sequence[float], actual: Sequence[float], eps: float = EPSILON) -> float:
    """PSI of two share vectors over the same bins (each normalised to sum 1, then floored at ``eps``)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1 or len(e) == 0:
        raise ValueError(f"PSI needs two share vectors over the same bins (got {e.shape} and {a.shape})")
    e = np.maximum(e / e.sum() if e.sum() > 0 else e, eps)
    a = np.maximum(a / a.sum() if a.sum() > 0 else a, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def band(value: float) -> str:
    """``stable`` (< 0.1), ``watch`` (0.1 – 0.25) or ``act`` (≥ 0.25)."""
    for hi, name in BANDS:
        if value < hi:
            return name
    return BANDS[-1][1]


# --------------------------------------------------------------------------- binning rules


def _numeric_edges(values: np.ndarray, bins: int) -> list[float]:
    """Inner cut points: unique quantiles at 1/bins … (bins-1)/bins (fewer when values repeat)."""
    if len(values) == 0:
        return []
    q = np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return [float(v) for v in np.unique(q)]


def _numeric_labels(edges: Sequence[float]) -> list[str]:
    if not edges:
        return ["all"]
    lab = [f"≤ {edges[0]:.4g}"]
    lab += [f"({lo:.4g}, {hi:.4g}]" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    return lab + [f"> {edges[-1]:.4g}"]


def _numeric_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts per bin: len(edges)+1 value bins (right-closed, like the labels) and a last missing bin."""
    miss = np.isnan(values)
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values[~miss], side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)
    return np.concatenate([counts, [float(miss.sum())]])


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [round(float(c / total), 8) if total else 0.0 for c in counts]


def build_reference(table: Table, scores: np.ndarray | None, *, run_id: str, party: str, score_rows: str = "",
                    bins: int = 10) -> dict[str, Any]:
    """The training population's bins and shares (no rows): score deciles and each own feature's bins."""
    ref: dict[str, Any] = {"format": REFERENCE_FORMAT, "run_id": run_id, "party": party, "bins": bins,
                           "features": {}}
    if scores is not None and len(scores):
        s = np.asarray(scores, dtype=np.float64)
        edges = _numeric_edges(s, bins)
        ref["score"] = {"what": "pd", "rows": int(len(s)), "from": score_rows, "edges": edges,
                        "shares": _shares(_numeric_counts(s, edges))}
    for j, name in enumerate(table.feature_names):
        col = table.X[:, j]
        if table.kinds[j] == "categorical":
            cats = list(table.categories.get(name, []))
            miss = np.isnan(col)
            counts = np.bincount(col[~miss].astype(np.int64), minlength=len(cats)).astype(np.float64)[: len(cats)]
            shares = _shares(np.concatenate([counts, [0.0], [float(miss.sum())]]))
            ref["features"][name] = {"kind": "categorical", "categories": cats, "shares": shares}
        else:
            edges = _numeric_edges(col[~np.isnan(col)], bins)
            ref["features"][name] = {"kind": "numeric", "edges": edges, "shares": _shares(_numeric_counts(col, edges))}
    ref["rows"] = len(table)
    return ref


def save_reference(model_dir: str | Path, ref: Mapping[str, Any]) -> Path:
    path = Path(model_dir) / REFERENCE_FILE
    write_text(path, json.dumps(ref, indent=1, allow_nan=False))
    return path


def load_reference(path: str | Path) -> dict[str, Any]:
    """A saved reference; ConfigError naming the file when it is missing or not one."""
    p = Path(path)
    try:
        ref = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no training reference at {p} (it is written at the end of a training run by the "
                          "label party or a horizontal bank)") from None
    except ValueError as e:
        raise ConfigError(f"training reference {p} is not JSON ({e})") from None
    if not isinstance(ref, dict) or ref.get("format") != REFERENCE_FORMAT:
        raise ConfigError(f"{p} is not a fedcredit training reference (expected format {REFERENCE_FORMAT!r})")
    return ref


# --------------------------------------------------------------------------- scoring the scored population


def _as_float(v: Any) -> float:
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _item(name: str, labels: list[str], expected: Sequence[float], counts: np.ndarray) -> dict[str, Any]:
    n = float(counts.sum())
    actual = _shares(counts)
    value = psi(expected, actual) if n else math.nan
    return {"name": name, "psi": round(value, 6) if n else None, "band": band(value) if n else "no data",
            "n": int(n), "missing": int(counts[-1]),
            "bins": [{"bin": lab, "expected": round(float(e), 6), "actual": round(float(a), 6)}
                     for lab, e, a in zip(labels, expected, actual, strict=True)]}


def population_stability(ref: Mapping[str, Any], decisions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """PSI of the score (``pd``) and of each reference feature over the decision log lines given.

    A line without ``features`` (written before monitoring was added) counts for the score only.
    Returns ``{"n_decisions", "score": item, "features": [item…]}`` with items
    ``{name, psi, band, n, missing, bins: [{bin, expected, actual}]}``, features sorted by PSI, worst first.
    """
    lines = list(decisions)
    out: dict[str, Any] = {"n_decisions": len(lines), "run_id": ref.get("run_id"), "convention": CONVENTION}
    times = [float(d["time"]) for d in lines if isinstance(d.get("time"), (int, float))]
    if times:
        import datetime as _dt

        out["since"] = _dt.datetime.fromtimestamp(min(times), _dt.UTC).isoformat(timespec="seconds")
        out["until"] = _dt.datetime.fromtimestamp(max(times), _dt.UTC).isoformat(timespec="seconds")
    sc = ref.get("score")
    if isinstance(sc, Mapping):
        vals = np.array([_as_float(d.get("pd")) for d in lines], dtype=np.float64)
        out["score"] = _item("score (PD)", _numeric_labels(sc["edges"]) + [MISSING], sc["shares"],
                             _numeric_counts(vals, sc["edges"]))
    feats = []
    with_features = [d["features"] for d in lines if isinstance(d.get("features"), Mapping)]
    for name, spec in (ref.get("features") or {}).items():
        if not any(name in f for f in with_features):
            continue  # not an input of the scoring model (or never logged): nothing to compare
        raw = [f.get(name) for f in with_features]
        if spec.get("kind") == "categorical":
            cats = list(spec["categories"])
            pos = {c: k for k, c in enumerate(cats)}
            counts = np.zeros(len(cats) + 2)
            for v in raw:
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    counts[-1] += 1
                else:
                    key = str(v)
                    if isinstance(v, float) and v.is_integer() and key not in pos:
                        key = str(int(v))  # a number-like category logged as a number
                    counts[pos.get(key, len(cats))] += 1
            feats.append(_item(name, cats + [OTHER, MISSING], spec["shares"], counts))
        else:
            vals = np.array([_as_float(v) for v in raw], dtype=np.float64)
            feats.append(_item(name, _numeric_labels(spec["edges"]) + [MISSING], spec["shares"],
                               _numeric_counts(vals, spec["edges"])))
    out["features"] = sorted(feats, key=lambda i: -(i["psi"] if i["psi"] is not None else -1.0))
    return out
