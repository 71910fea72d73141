"""Decision layer: from a probability of default to a credit decision a bank can act on and explain.

Given the joint model's PD for one application, :func:`decide` returns

* a **score** on the usual points scale: ``score = offset + factor * ln(odds_good)``
  with ``odds_good = (1 - pd) / pd``, ``factor = pdo / ln 2`` and
  ``offset = base_points - factor * ln(base_odds)`` — so the score is
  ``base_points`` at ``base_odds`` and rises by ``pdo`` each time the odds double;
* **approve / refer / decline** from thresholds on the score or on the PD;
* a **credit limit** from PD bands × an exposure value (e.g. income or current
  limit), rounded down and clamped to ``[min_limit, max_limit]``;
* **reason codes**: the label party's top-k features by contribution to the logit,
  and every passive party's *aggregate* contribution — one number per party, so no
  passive feature name or value is revealed.

Contributions are in logit (log-odds of default) units, positive = raises the PD.
:func:`lr_contributions` (weight × standardized value; the baseline 0 is the
population mean) and :func:`tree_contributions` (Saabas: the change in node value
along the decision path, credited to the split's feature or owning party) build
them; for both, ``baseline + sum(contributions) == logit``.

Config lives in a ``[decision]`` TOML section (:func:`load_decision_policy`); see
``docs/deployment.md`` for an example.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from fedcredit.errors import ConfigError, DataError
from fedcredit.params import StrictModel, read_toml, validate

DECISIONS = ("approve", "refer", "decline")


# --------------------------------------------------------------------------- config


class _Strict(StrictModel):
    """Unknown keys (``aprove``) and unknown subsections are errors; thresholds must be numbers."""


class ScoreScale(_Strict):
    """Points scale: ``base_points`` at odds ``base_odds``:1 (good:bad); +``pdo`` points per doubling of the odds."""

    base_points: float = 600.0
    base_odds: float = Field(50.0, gt=0)
    pdo: float = Field(20.0, gt=0)
    pd_floor: float = Field(1e-6, gt=0, lt=0.5, description="PD is clipped to [pd_floor, 1 - pd_floor] so the score is finite")

    @property
    def factor(self) -> float:
        return self.pdo / math.log(2.0)

    @property
    def offset(self) -> float:
        return self.base_points - self.factor * math.log(self.base_odds)


class Thresholds(_Strict):
    """``on = "score"``: approve if score >= approve, decline if score < decline.
    ``on = "pd"``: approve if pd <= approve, decline if pd > decline.  Refer in between."""

    on: Literal["score", "pd"] = "score"
    approve: float = 560.0
    decline: float = 500.0

    @model_validator(mode="after")
    def _order(self) -> Thresholds:
        if self.on == "score" and self.approve < self.decline:
            raise ValueError(f"score thresholds need approve >= decline (got approve={self.approve}, decline={self.decline})")
        if self.on == "pd":
            if not (0.0 <= self.approve <= self.decline <= 1.0):
                raise ValueError(
                    f"pd thresholds need 0 <= approve <= decline <= 1 (got approve={self.approve}, decline={self.decline})"
                )
        return self


class LimitBand(_Strict):
    max_pd: float = Field(gt=0, le=1)
    multiplier: float = Field(ge=0)


class LimitPolicy(_Strict):
    """Credit limit = multiplier of the first band with ``pd <= max_pd`` × exposure, rounded down, clamped."""

    exposure_feature: str | None = Field(None, description="which application field the scorer passes as exposure")
    bands: list[LimitBand] = Field(min_length=1)
    min_limit: float = Field(0.0, ge=0)
    max_limit: float | None = Field(None, gt=0)
    round_to: float = Field(0.0, ge=0, description="round the limit down to a multiple of this (0 = no rounding)")
    default_exposure: float | None = Field(None, ge=0, description="used when a request carries no exposure")
    limit_on_refer: bool = True

    @model_validator(mode="after")
    def _bands(self) -> LimitPolicy:
        edges = [b.max_pd for b in self.bands]
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"bands must be listed with strictly increasing max_pd, got {edges}")
        if self.max_limit is not None and self.max_limit < self.min_limit:
            raise ValueError(f"max_limit {self.max_limit} is below min_limit {self.min_limit}")
        return self


class ReasonPolicy(_Strict):
    """``order = "risk"``: largest (most PD-raising) contribution first; ``"magnitude"``: largest |contribution|."""

    top_k: int = Field(4, ge=0)
    order: Literal["risk", "magnitude"] = "risk"
    codes: dict[str, str] = Field(default_factory=dict, description="feature or party -> reason code text")


class DecisionPolicy(_Strict):
    scale: ScoreScale = Field(default_factory=ScoreScale)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    limit: LimitPolicy | None = None
    reasons: ReasonPolicy = Field(default_factory=ReasonPolicy)


class _DecisionFile(_Strict):
    decision: DecisionPolicy


def load_decision_policy(path: str | Path) -> DecisionPolicy:
    """The ``[decision]`` section of a TOML file: a dedicated file (nothing else allowed in it) or a party config
    (whose other sections the party config's own schema checks)."""
    p = Path(path)
    data = read_toml(p, "decision config")
    if "decision" not in data:
        raise ConfigError(f"{p}: no [decision] section")
    table = {"decision": data["decision"]} if "party" in data else data
    return validate(_DecisionFile, table, p.resolve()).decision


# --------------------------------------------------------------------------- contributions


@dataclass(frozen=True)
class ScorecardPoints:
    """One application's scorecard points (``fedcredit.scorecard``): the label party's base points and per-feature
    points, and one subtotal per passive party (never its features or bins).  ``total`` is the score."""

    base: float
    features: dict[str, float]
    parties: dict[str, float]
    scale: tuple[float, float, float]  # (base_points, base_odds, pdo) the points are on

    @property
    def total(self) -> float:
        return self.base + math.fsum(self.features.values()) + math.fsum(self.parties.values())

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base, "features": dict(self.features), "parties": dict(self.parties),
                "total": self.total}


@dataclass(frozen=True)
class Contributions:
    """Logit contributions of one application: the label party's own features, and one number per passive party."""

    features: dict[str, float] = field(default_factory=dict)
    parties: dict[str, float] = field(default_factory=dict)
    baseline: float = 0.0
    points: ScorecardPoints | None = None  # a scorecard model's points (the score is their total)

    @property
    def logit(self) -> float:
        return self.baseline + sum(self.features.values()) + sum(self.parties.values())

    @property
    def pd(self) -> float:
        from fedcredit.metrics import sigmoid  # lazily: metrics pulls in scikit-learn, and every config loader
        # imports this module for the [decision] schema

        return sigmoid(self.logit)


def lr_contributions(
    weights: Sequence[float] | np.ndarray,
    standardized: Sequence[float] | np.ndarray,
    feature_names: Sequence[str],
    *,
    intercept: float = 0.0,
    passive_partials: Mapping[str, float] | None = None,
) -> Contributions:
    """LR: feature j contributes ``w_j * z_j`` (z standardized, so 0 = population mean).

    ``passive_partials`` are the passive parties' partial logits from joint scoring —
    already their aggregate contribution, so nothing more is asked of them.
    """
    w = np.asarray(weights, dtype=np.float64).ravel()
    z = np.asarray(standardized, dtype=np.float64).ravel()
    if not (len(w) == len(z) == len(feature_names)):
        raise DataError(
            f"contributions need one weight and one value per feature: {len(w)} weights, {len(z)} values, "
            f"{len(feature_names)} names"
        )
    if not np.all(np.isfinite(z)):
        bad = [n for n, v in zip(feature_names, z) if not math.isfinite(v)]
        raise DataError(f"feature value(s) {bad} are missing or not finite")
    return Contributions(
        features={n: float(c) for n, c in zip(feature_names, w * z)},
        parties={p: float(v) for p, v in (passive_partials or {}).items()},
        baseline=float(intercept),
    )


def tree_contributions(
    paths: Iterable[Sequence[tuple[str | None, float]]],
    *,
    passive_parties: Iterable[str] = (),
    base_score: float = 0.0,
) -> Contributions:
    """Saabas-style contributions of a tree ensemble for one application.

    ``paths`` holds, per tree, the decision path root -> leaf as
    ``(split_key, node_value)``: ``split_key`` is the label party's feature name or,
    for a split a passive party owns, that party's name (the label party never
    learns which of its features); the leaf's key is ignored.  ``node_value`` is
    the value the node would predict (leaf weight for leaves; e.g. ``-G/(H+λ)`` ×
    learning rate for inner nodes).  Each step credits ``child - parent`` to the
    parent's split key; the roots' values plus ``base_score`` form the baseline,
    so ``baseline + sum == base_score + sum of leaf values`` exactly.
    """
    passive = set(passive_parties)
    feats: dict[str, float] = {}
    parties: dict[str, float] = {p: 0.0 for p in passive}
    baseline = float(base_score)
    for t, path in enumerate(paths):
        if not path:
            raise DataError(f"tree {t}: empty decision path")
        baseline += float(path[0][1])
        for (key, parent), (_, child) in zip(path[:-1], path[1:]):
            if key is None:
                raise DataError(f"tree {t}: an inner node on the decision path has no split key")
            target = parties if key in passive else feats
            target[key] = target.get(key, 0.0) + float(child) - float(parent)
    return Contributions(features=feats, parties=parties, baseline=baseline)


# --------------------------------------------------------------------------- decision


@dataclass(frozen=True)
class Reason:
    """One reason code; unpacks as ``(name, contribution)``."""

    name: str
    contribution: float
    source: Literal["feature", "party"]
    code: str | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.name, self.contribution))


@dataclass(frozen=True)
class Decision:
    pd: float
    score: float
    odds: float  # good:bad odds, (1 - pd) / pd after clipping
    decision: Literal["approve", "refer", "decline"]
    credit_limit: float | None
    reasons: list[Reason]
    party_contributions: dict[str, float]
    limit_band: int | None = None  # index into policy.limit.bands, None if no band applied
    notes: list[str] = field(default_factory=list)
    points: ScorecardPoints | None = None  # scorecard models: base, own features' points, passive subtotals

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for answers and the audit log)."""
        return {
            "pd": self.pd,
            "score": self.score,
            "odds": self.odds,
            "decision": self.decision,
            "credit_limit": self.credit_limit,
            "limit_band": self.limit_band,
            "reasons": [
                {"name": r.name, "contribution": r.contribution, "source": r.source, "code": r.code}
                for r in self.reasons
            ],
            "party_contributions": dict(self.party_contributions),
            "notes": list(self.notes),
            "points": None if self.points is None else self.points.to_dict(),
        }


def _check_pd(pd: float) -> float:
    try:
        v = float(pd)
    except (TypeError, ValueError):
        raise DataError(f"probability of default must be a number, got {pd!r}") from None
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise DataError(f"probability of default must be in [0, 1], got {pd!r}")
    return v


def score_from_pd(pd: float, scale: ScoreScale) -> float:
    """Points-scale score of a PD (see the module docstring for the formula)."""
    p = min(max(_check_pd(pd), scale.pd_floor), 1.0 - scale.pd_floor)
    return scale.offset + scale.factor * math.log((1.0 - p) / p)


def pd_from_score(score: float, scale: ScoreScale) -> float:
    """Inverse of :func:`score_from_pd` (useful for setting thresholds)."""
    odds_good = math.exp((float(score) - scale.offset) / scale.factor)
    return 1.0 / (1.0 + odds_good)


# A PD computed to sit exactly on a threshold must not flip on float noise (1/(1+50/32) scores 499.99999999999994).
_SCORE_EPS = 1e-9
_PD_EPS = 1e-12


def _classify(pd: float, score: float, t: Thresholds) -> Literal["approve", "refer", "decline"]:
    if t.on == "score":
        if score >= t.approve - _SCORE_EPS:
            return "approve"
        return "decline" if score < t.decline - _SCORE_EPS else "refer"
    if pd <= t.approve + _PD_EPS:
        return "approve"
    return "decline" if pd > t.decline + _PD_EPS else "refer"


def _limit(pd: float, decision: str, exposure: float | None, lp: LimitPolicy, notes: list[str]) -> tuple[float, int | None]:
    if decision == "decline" or (decision == "refer" and not lp.limit_on_refer):
        return 0.0, None
    band = next((i for i, b in enumerate(lp.bands) if pd <= b.max_pd + _PD_EPS), None)
    if band is None:
        notes.append(f"pd {pd:.4f} is above every limit band (highest max_pd {lp.bands[-1].max_pd}); no credit line")
        return 0.0, None
    if exposure is None:
        if lp.default_exposure is None:
            what = f"'{lp.exposure_feature}'" if lp.exposure_feature else "exposure"
            raise DataError(f"the credit limit policy needs the application's {what} value, and the request has none")
        exposure = lp.default_exposure
        notes.append(f"no exposure in the request; used default_exposure {lp.default_exposure}")
    try:
        x = float(exposure)
    except (TypeError, ValueError):
        raise DataError(f"exposure {lp.exposure_feature or ''} must be a number, got {exposure!r}") from None
    if not math.isfinite(x) or x < 0:
        raise DataError(f"exposure {lp.exposure_feature or ''} must be a finite non-negative number, got {exposure!r}")
    mult = lp.bands[band].multiplier
    if mult == 0:
        return 0.0, band
    limit = mult * x
    if lp.round_to > 0:
        limit = math.floor(limit / lp.round_to + 1e-9) * lp.round_to
    limit = max(limit, lp.min_limit)
    if lp.max_limit is not None:
        limit = min(limit, lp.max_limit)
    return float(limit), band


def _rank(items: Mapping[str, float], order: str) -> list[tuple[str, float]]:
    key = (lambda kv: (-kv[1], kv[0])) if order == "risk" else (lambda kv: (-abs(kv[1]), kv[0]))
    return sorted(items.items(), key=key)


def decide(
    pd: float,
    contributions: Contributions | Mapping[str, float] | None,
    exposure: float | None,
    policy: DecisionPolicy,
) -> Decision:
    """Score, classify, set a limit and attach reasons for one application.

    ``contributions``: a :class:`Contributions`, or a plain ``{feature: contribution}``
    mapping (a horizontal model, all features local), or None (no reasons).
    ``exposure``: the value the limit policy multiplies (None -> ``default_exposure``).
    A scorecard model's contributions carry its points: the score is then their total
    (``offset - factor * logit`` on the scorecard's scale, unclipped), and a note says so
    when the policy's ``[decision.scale]`` differs from the scale the points were built on.
    """
    p = _check_pd(pd)
    sc = policy.scale
    notes: list[str] = []
    pts = contributions.points if isinstance(contributions, Contributions) else None
    if pts is None:
        score = score_from_pd(p, sc)
    else:
        score = pts.total
        if not all(math.isclose(a, b) for a, b in zip(pts.scale, (sc.base_points, sc.base_odds, sc.pdo))):
            notes.append(f"score = scorecard points on the model's scale {pts.scale[0]:g}/{pts.scale[1]:g}/"
                         f"{pts.scale[2]:g} (base points/odds/pdo), not [decision.scale] "
                         f"{sc.base_points:g}/{sc.base_odds:g}/{sc.pdo:g}")
    clipped = min(max(p, sc.pd_floor), 1.0 - sc.pd_floor)
    decision = _classify(p, score, policy.thresholds)
    limit, band = (None, None) if policy.limit is None else _limit(p, decision, exposure, policy.limit, notes)

    if contributions is None:
        contributions = Contributions()
    elif not isinstance(contributions, Contributions):
        contributions = Contributions(features={str(k): float(v) for k, v in contributions.items()})
    rp = policy.reasons
    reasons = [
        Reason(n, c, "feature", rp.codes.get(n)) for n, c in _rank(contributions.features, rp.order)[: rp.top_k]
    ]
    reasons += [Reason(n, c, "party", rp.codes.get(n)) for n, c in _rank(contributions.parties, rp.order)]
    return Decision(
        pd=p,
        score=score,
        odds=(1.0 - clipped) / clipped,
        decision=decision,
        credit_limit=limit,
        reasons=reasons,
        party_contributions=dict(contributions.parties),
        limit_band=band,
        notes=notes,
        points=pts,
    )
