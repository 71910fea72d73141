"""Binned scorecard from a WOE (or bin-indicator) logistic regression: points per bin per feature.

Why a separate part: a risk team reads, audits and deploys a scorecard as a table of
points, not as weights on standardized WOE columns.  The points are an exact rewrite of
the LR — nothing is re-fitted or rounded — so the scorecard score of a row is the LR's
score on the points scale to float precision.

The math (one party's features; ``fedcredit.binning`` conventions)::

    LR input of feature j  v_j(b)       the transform value of bin b: its WOE (one column), or the
                                        bin-indicator vector (one column per bin but the first)
    standardized           z = (v - mean) / scale     (the party's own Standardizer)
    logit contribution     c_j(b) = sum_cols w_c * z_c(b)
    points                 p_j(b) = -factor * c_j(b)
    base points            offset - factor * intercept          (label party only)
    score                  base + sum_j p_j(b_j(x)) = offset - factor * logit  (= decision.score_from_pd)

with ``factor = pdo / ln 2`` and ``offset = base_points - factor * ln(base_odds)`` from
:class:`fedcredit.decision.ScoreScale` (defaults: 600 points at odds 50:1 good:bad, 20
points to double the odds).  **The intercept is spread nowhere:** all of it is the label
party's base points, so a passive party's subtotal is exactly the sum of its own bins'
points (and equals ``-factor`` × its partial logit).  Points are kept unrounded (rounding
would break ``score == offset - factor * logit``); round in the presentation if wanted.

Who holds what: each party builds its own :class:`ScorecardPart` from its own weights,
standardizer and bins — no message is exchanged — and keeps it in its own model file.  The
label party's part names the passive parties only; online it receives one number per
passive party per application (that party's partial logit, from which its points
subtotal follows), never a passive bin, feature or point value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedcredit.binning import FeatureBins
from fedcredit.decision import ScoreScale
from fedcredit.errors import DataError
from fedcredit.params import ScorecardParams

__all__ = ["FORMAT", "Transform", "ScorecardFeature", "ScorecardPart", "bin_design", "bin_logits", "build_part",
           "score_scale"]

FORMAT = "fedcredit.scorecard/1"
Transform = Literal["woe", "indicators"]
Role = Literal["label", "passive"]


def bin_design(bins: Sequence[FeatureBins], transform: Transform,
               woes: Sequence[Sequence[float]] | None = None) -> list[np.ndarray]:
    """Per feature, the LR columns' values in each bin: ``(n_bins, n_columns)``.

    The column layout is that of :func:`fedcredit.binning.woe_matrix` (one WOE column per
    feature) or :func:`fedcredit.binning.indicator_matrix` (bins ``1 .. n_bins-1`` of each
    feature in order), so the LR's weight vector splits into consecutive blocks.
    """
    out: list[np.ndarray] = []
    if transform == "woe":
        if woes is None or len(woes) != len(bins):
            raise DataError(f"WOE scorecard: {0 if woes is None else len(woes)} WOE vectors for {len(bins)} features")
        for b, w in zip(bins, woes):
            v = np.asarray(w, dtype=np.float64)
            if v.shape != (b.n_bins,):
                raise DataError(f"feature '{b.feature}': {v.size} WOE values for {b.n_bins} bins")
            out.append(v[:, None])
    elif transform == "indicators":
        out = [np.eye(b.n_bins)[:, 1:] for b in bins]
    else:
        raise DataError(f"unknown scorecard transform {transform!r}; expected 'woe' or 'indicators'")
    return out


def bin_logits(design: Sequence[np.ndarray], mean: np.ndarray, scale: np.ndarray,
               weights: np.ndarray) -> list[np.ndarray]:
    """Logit contribution ``c_j(b)`` of every bin of every feature (see the module docstring)."""
    mean, scale, weights = (np.asarray(a, dtype=np.float64).ravel() for a in (mean, scale, weights))
    n_cols = sum(v.shape[1] for v in design)
    if not (mean.shape == scale.shape == weights.shape == (n_cols,)):
        raise DataError(f"scorecard: the bins give {n_cols} LR columns, the model has {weights.size} weights "
                        f"and a standardizer of {mean.size}/{scale.size}")
    out, k = [], 0
    for v in design:
        m = v.shape[1]
        out.append(((v - mean[k:k + m]) / scale[k:k + m]) @ weights[k:k + m])
        k += m
    return out


@dataclass(frozen=True)
class ScorecardFeature:
    """One feature's rows of the scorecard: its bins and, per bin, the logit contribution and the points."""

    bins: FeatureBins
    logit: np.ndarray
    points: np.ndarray

    @property
    def feature(self) -> str:
        return self.bins.feature


@dataclass(frozen=True)
class ScorecardPart:
    """One party's scorecard: its own features' points (plus, at the label party, the base points)."""

    party: str
    role: Role
    scale: ScoreScale
    intercept: float  # the LR intercept (label party); 0.0 at a passive party
    features: tuple[ScorecardFeature, ...]

    @property
    def feature_names(self) -> list[str]:
        return [f.feature for f in self.features]

    @property
    def base_points(self) -> float:
        """The intercept's points (label party); a passive party has none (its subtotal is its bins' sum)."""
        return self.scale.offset - self.scale.factor * self.intercept if self.role == "label" else 0.0

    def schema_dict(self) -> dict[str, Any]:
        """The raw input schema (``fedcredit.data.InputSchema.to_dict`` layout) the bins read."""
        return {"feature_names": self.feature_names, "kinds": [f.bins.kind for f in self.features],
                "categories": {f.feature: list(f.bins.categories) for f in self.features
                               if f.bins.kind == "categorical"}}

    def bin_indices(self, X: np.ndarray) -> np.ndarray:
        """Bin of each row per feature, ``(n, k)``; X in the model's codes (NaN = missing)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise DataError(f"party '{self.party}': the scorecard needs {len(self.features)} features "
                            f"{self.feature_names}, got {X.shape[1] if X.ndim == 2 else X.shape}")
        if np.any(np.isinf(X)):
            bad = sorted({self.feature_names[j] for j in np.argwhere(np.isinf(X))[:, 1]})
            raise DataError(f"party '{self.party}': feature(s) {bad} are infinite; expected a finite number or missing")
        if not len(self.features):
            return np.zeros((X.shape[0], 0), dtype=np.int64)
        return np.column_stack([f.bins.assign(X[:, j]) for j, f in enumerate(self.features)])

    def feature_points(self, X: np.ndarray) -> np.ndarray:
        """Points of each row per feature, ``(n, k)``."""
        idx = self.bin_indices(X)
        if not len(self.features):
            return np.zeros((X.shape[0], 0))
        return np.column_stack([f.points[idx[:, j]] for j, f in enumerate(self.features)])

    def feature_logits(self, X: np.ndarray) -> np.ndarray:
        """Logit contribution of each row per feature, ``(n, k)`` (the decision layer's reasons)."""
        idx = self.bin_indices(X)
        if not len(self.features):
            return np.zeros((X.shape[0], 0))
        return np.column_stack([f.logit[idx[:, j]] for j, f in enumerate(self.features)])

    def subtotal(self, X: np.ndarray) -> np.ndarray:
        """This party's points per row: its base points (label party) plus its bins' points."""
        return self.base_points + self.feature_points(X).sum(axis=1)

    def partial_logit(self, X: np.ndarray) -> np.ndarray:
        """This party's share of the logit per row (intercept included at the label party)."""
        return (self.intercept if self.role == "label" else 0.0) + self.feature_logits(X).sum(axis=1)

    def points_of_logit(self, z: np.ndarray | float) -> np.ndarray:
        """A passive party's partial logit as its points subtotal (``-factor * z``, no base)."""
        return -self.scale.factor * np.asarray(z, dtype=np.float64)

    def rows(self) -> list[dict[str, Any]]:
        """The table a person reads: one row per bin (``feature, bin, label, points``) and, at the label party,
        the base row first."""
        out: list[dict[str, Any]] = []
        if self.role == "label":
            out.append({"row_type": "base", "feature": "", "bin": "", "label": "intercept",
                        "points": self.base_points})
        for f in self.features:
            for b, (lab, p) in enumerate(zip(f.bins.labels(), f.points)):
                out.append({"row_type": "bin", "feature": f.feature, "bin": b, "label": lab, "points": float(p)})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "party": self.party,
            "role": self.role,
            "scale": {"base_points": self.scale.base_points, "base_odds": self.scale.base_odds,
                      "pdo": self.scale.pdo, "factor": self.scale.factor, "offset": self.scale.offset},
            "intercept": self.intercept,
            "base_points": self.base_points,
            "features": [{"bins": f.bins.to_dict(), "labels": f.bins.labels(), "logit": f.logit.tolist(),
                          "points": f.points.tolist()} for f in self.features],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str) -> ScorecardPart:
        """Parse :meth:`to_dict`; points that do not follow from the logits and the scale are refused."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise DataError(f"{source}: not a scorecard (format {d.get('format') if isinstance(d, Mapping) else d!r}, "
                            f"expected {FORMAT!r})")
        try:
            role = d["role"]
            if role not in ("label", "passive"):
                raise DataError(f"{source}: scorecard role must be 'label' or 'passive', got {role!r}")
            s = d["scale"]
            scale = ScoreScale(base_points=float(s["base_points"]), base_odds=float(s["base_odds"]),
                               pdo=float(s["pdo"]))
            intercept = float(d.get("intercept") or 0.0)
            feats = []
            for k, f in enumerate(d["features"]):
                bins = FeatureBins.from_dict(f["bins"], source=f"{source}: scorecard feature {k}")
                logit = np.asarray(f["logit"], dtype=np.float64)
                points = np.asarray(f["points"], dtype=np.float64)
                if logit.shape != (bins.n_bins,) or points.shape != (bins.n_bins,):
                    raise DataError(f"{source}: scorecard feature '{bins.feature}' has {bins.n_bins} bins but "
                                    f"{logit.size} logits and {points.size} points")
                if not np.all(np.isfinite(points)) or not np.allclose(points, -scale.factor * logit,
                                                                      rtol=1e-9, atol=1e-9):
                    raise DataError(f"{source}: scorecard feature '{bins.feature}': points are not "
                                    f"-factor x logit contributions")
                feats.append(ScorecardFeature(bins, logit, points))
            party = str(d["party"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{source}: malformed scorecard: {e!r}") from None
        if not math.isfinite(intercept):
            raise DataError(f"{source}: scorecard intercept must be finite")
        return cls(party, role, scale, intercept if role == "label" else 0.0, tuple(feats))


def build_part(party: str, role: Role, bins: Sequence[FeatureBins], design: Sequence[np.ndarray],
               mean: np.ndarray, scale: np.ndarray, weights: np.ndarray, *, intercept: float = 0.0,
               score_scale: ScoreScale | None = None) -> ScorecardPart:
    """One party's scorecard from its own LR block (weights, standardizer) and its bins' design.

    Computed where the weights are, from nothing but that party's own model: a passive
    party calls this at home and its points never leave it.
    """
    sc = score_scale or ScoreScale()
    if len(design) != len(bins):
        raise DataError(f"party '{party}': {len(design)} bin designs for {len(bins)} binned features")
    for b, v in zip(bins, design):
        if v.ndim != 2 or v.shape[0] != b.n_bins:
            raise DataError(f"party '{party}': feature '{b.feature}' has {b.n_bins} bins, design {v.shape}")
    logits = bin_logits(design, mean, scale, weights)
    feats = tuple(ScorecardFeature(b, c, -sc.factor * c) for b, c in zip(bins, logits))
    return ScorecardPart(party, role, sc, float(intercept) if role == "label" else 0.0, feats)


def score_scale(params: ScorecardParams | None) -> ScoreScale:
    """A job's ``[model.scorecard]`` as the decision layer's scale (defaults 600 / 50 / 20)."""
    p = params or ScorecardParams()
    return ScoreScale(base_points=p.base_points, base_odds=p.base_odds, pdo=p.pdo)
