"""Differential privacy options: the Gaussian mechanisms, their calibration, and the accountant.

Three options, each off unless a job has a ``[model.dp]`` table (fedcredit/params.py;
docs/privacy.md says what each protects, and from whom):

* **client-level DP, horizontal** (:func:`private_update`): each bank clips its round
  update to L2 norm ``clip`` and adds its share of Gaussian noise *before* encrypting it,
  so the coordinator never needs a plaintext update and the decrypted sum carries the
  calibrated noise (std ``noise_multiplier * clip``) when every bank adds its share.
* **label DP, vertical LR** and **label DP, SecureBoost** (:class:`LabelNoise`): the
  label party adds Gaussian noise to every label-derived per-row value before it is used
  — the residual ``sigmoid(z) - y`` (vertical LR) or the gradient ``p - y`` (SecureBoost).
  Changing one label moves that row's value by exactly 1, so the sensitivity is 1; the
  label party then uses the noisy values for everything, its own block included, so all
  a passive party receives is post-processing of them.

Why a library accountant: composition of many Gaussian releases is where hand-written
privacy arithmetic goes wrong.  ``dp-accounting`` (Google's, Flower's own ``dp`` extra)
computes ε by Rényi DP (Mironov 2017) and calibrates the noise to a target ε.  Every
release here is a full (unsampled) Gaussian mechanism: a bank takes part in every round,
and a label enters one step per epoch (batches of an epoch are disjoint) — no subsampling
amplification is claimed.

Noise comes from numpy's PCG64 seeded by the OS (``np.random.default_rng()``): never from
a job's ``seed``, which every party of the job knows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from fedcredit.errors import ConfigError
from fedcredit.params import DPParams, HorizontalDP, LabelDP

__all__ = ["ACCOUNTANT", "epsilon", "calibrate", "clip_l2", "GaussianPlan", "plan", "private_update",
           "horizontal_plan", "LabelNoise", "label_plan"]

#: What reports name as the accountant (the pinned library and its method).
ACCOUNTANT = "RDP (dp-accounting 0.6.0, RdpAccountant)"
_MAX_NOISE = 1e4  # calibration search bracket: a noise multiplier beyond this is no useful model


def _accountant() -> Any:
    import dp_accounting  # lazily: a job without [model.dp] never loads it

    return dp_accounting


def epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """ε after ``releases`` Gaussian mechanisms of noise multiplier ``noise_multiplier`` (std / sensitivity) at ``delta``."""
    if releases <= 0:
        return 0.0
    if not noise_multiplier > 0:
        return math.inf
    return float(_epsilon(float(noise_multiplier), int(releases), float(delta)))


@lru_cache(maxsize=4096)
def _epsilon(z: float, releases: int, delta: float) -> float:
    dpa = _accountant()
    acc = dpa.rdp.RdpAccountant()
    acc.compose(dpa.GaussianDpEvent(z), releases)
    return float(acc.get_epsilon(delta))


def calibrate(target_epsilon: float, releases: int, delta: float) -> float:
    """The smallest noise multiplier whose ``releases`` Gaussian mechanisms spend at most ``target_epsilon`` at ``delta``."""
    return _calibrate(float(target_epsilon), int(releases), float(delta))


@lru_cache(maxsize=256)
def _calibrate(target_epsilon: float, releases: int, delta: float) -> float:
    if releases <= 0:
        raise ConfigError("[model.dp]: nothing to calibrate the noise for (the run releases nothing)")
    dpa = _accountant()
    if epsilon(_MAX_NOISE, releases, delta) > target_epsilon:
        raise ConfigError(f"[model.dp].epsilon = {target_epsilon:g} at delta = {delta:g} cannot be reached over "
                          f"{releases} releases with a noise multiplier up to {_MAX_NOISE:g}; raise epsilon or "
                          "lower the number of rounds/steps/trees")

    def make_event(z: float) -> Any:
        return dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(z), releases)

    z = dpa.calibrate_dp_mechanism(dpa.rdp.RdpAccountant, make_event, target_epsilon, delta,
                                   bracket_interval=dpa.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-6)
    while epsilon(z, releases, delta) > target_epsilon:  # the search's tolerance must never overspend
        z *= 1.0 + 1e-6
    return float(z)


def clip_l2(v: np.ndarray, clip: float) -> tuple[np.ndarray, float]:
    """``v`` scaled down to L2 norm ``clip`` if longer (its direction kept); returns (clipped, original norm)."""
    v = np.asarray(v, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    return (v * (clip / norm) if norm > clip else v.copy()), norm


@dataclass(frozen=True)
class GaussianPlan:
    """One run's resolved Gaussian mechanism: noise multiplier z, sensitivity, how many releases, δ.

    ``noise_std`` = z · sensitivity is the std of the noise on each released value."""

    option: str
    noise_multiplier: float
    sensitivity: float
    releases: int  # planned (rounds / steps a label enters / trees)
    delta: float
    target_epsilon: float | None
    unit: str  # what one neighbouring dataset changes
    released: str  # what carries the noise
    protects_from: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.sensitivity

    def report(self, releases_done: int | None = None) -> dict[str, Any]:
        """The run JSON's ``privacy.dp``: the mechanism's parameters and ε spent by the releases made."""
        done = self.releases if releases_done is None else int(releases_done)
        return {
            "option": self.option,
            "mechanism": "gaussian",
            "noise_multiplier": self.noise_multiplier,
            "sensitivity": self.sensitivity,
            "noise_std": self.noise_std,
            "releases": done,
            "releases_planned": self.releases,
            "delta": self.delta,
            "epsilon": round(epsilon(self.noise_multiplier, done, self.delta), 6),
            "target_epsilon": self.target_epsilon,
            "accountant": ACCOUNTANT,
            "unit": self.unit,
            "released": self.released,
            "protects_from": self.protects_from,
            **self.extra,
        }


def plan(params: DPParams, releases: int, *, option: str, sensitivity: float, unit: str, released: str,
         protects_from: str, extra: dict[str, Any] | None = None) -> GaussianPlan:
    """Resolve ``params`` for a run of ``releases``: a given noise multiplier, or one calibrated to ``epsilon``."""
    z = params.noise_multiplier if params.noise_multiplier is not None else \
        calibrate(float(params.epsilon), releases, params.delta)  # type: ignore[arg-type]  # exactly one is set
    return GaussianPlan(option, float(z), float(sensitivity), int(releases), float(params.delta), params.epsilon,
                        unit, released, protects_from, dict(extra or {}))


# --------------------------------------------------------------------------- client-level DP (horizontal)


def horizontal_plan(params: HorizontalDP, rounds: int, contributors: int, banks: int) -> GaussianPlan:
    """Client-level DP of a horizontal run: ``rounds`` releases of the sum of clipped updates.

    ``contributors`` is the fewest banks whose updates a round may sum (``min_parties``):
    each bank adds noise of std σ/√contributors, so any round that completes carries at
    least σ in its sum.  ``epsilon_if_update_seen`` is ε for one bank's own noised update
    (std σ/√contributors): what remains if the coordinator and at least ``secagg_threshold``
    banks collude to unmask a single update."""
    base = plan(params, rounds, option="client-level (horizontal)", sensitivity=params.clip,
                unit="one bank's whole contribution (add/remove one bank), every round",
                released="the sum of the banks' clipped round updates (FedAvg rounds)",
                protects_from="everyone who sees the aggregated model: the coordinator, other banks, model users")
    share = base.noise_multiplier / math.sqrt(contributors)
    return replace(base, extra={
        "clip": params.clip, "banks": banks, "noise_split": "each bank adds N(0, (z*clip)^2 / min_parties)",
        "noise_std_per_bank": share * params.clip, "min_contributors": contributors,
        "weighting": "uniform (each bank weight 1: a sample-count weight would scale the sensitivity)",
        "epsilon_if_update_seen": round(epsilon(share, rounds, params.delta), 6),
        "trust": "the sum carries the calibrated noise only if at least min_parties banks add their share honestly",
        "not_covered": "the federated standardization sums (feature sums, no labels) and test metrics",
    })


def private_update(new: np.ndarray, global_flat: np.ndarray, plan_: GaussianPlan, contributors: int,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """A bank's round reply under client-level DP: ``global + clip(new - global) + N(0, σ²/contributors)``.

    Sent with weight 1 (not the sample count), so the decrypted mean is the global model
    plus the mean clipped update plus the calibrated noise divided by the number of banks."""
    rng = rng or np.random.default_rng()
    g = np.asarray(global_flat, dtype=np.float64)
    delta, _ = clip_l2(np.asarray(new, dtype=np.float64) - g, plan_.sensitivity)
    return g + delta + rng.normal(0.0, plan_.noise_std / math.sqrt(contributors), size=g.shape)


# --------------------------------------------------------------------------- label DP (vertical LR, SecureBoost)

LabelOption = Literal["vertical-lr", "secureboost"]
_LABEL_TEXT = {
    "vertical-lr": ("label (vertical LR residuals)", "every residual sigmoid(z) - y the label party encrypts (and uses "
                    "for its own block)", "one step per mini-batch epoch, one per full-batch step"),
    "secureboost": ("label (SecureBoost gradients)", "every gradient p - y the label party encrypts and splits on "
                    "(the hessian p(1-p) depends on no label given the earlier trees)", "one per tree"),
}


def label_plan(params: LabelDP, releases: int, option: LabelOption) -> GaussianPlan:
    """Label DP for ``releases`` releases of the noisy per-row values (sensitivity 1: labels are 0/1)."""
    name, released, per = _LABEL_TEXT[option]
    return plan(params, releases, option=name, sensitivity=1.0,
                unit="one row's label (change y_i)", released=released,
                protects_from="the passive party (and anyone it shares with); the label party knows its labels",
                extra={"releases_are": per})


class LabelNoise:
    """Gaussian noise of std ``plan.noise_std`` on label-derived per-row values at the label party.

    The caller reports ε for the releases it made (:meth:`GaussianPlan.report`): a tree, or
    an epoch of vertical LR (its batches are disjoint, so a label enters one of them)."""

    def __init__(self, plan_: GaussianPlan, rng: np.random.Generator | None = None) -> None:
        self.plan = plan_
        self.rng = rng or np.random.default_rng()

    def noisy(self, v: np.ndarray) -> np.ndarray:
        """``v`` + N(0, noise_std²), independently per value."""
        v = np.asarray(v, dtype=np.float64)
        return v + self.rng.normal(0.0, self.plan.noise_std, size=v.shape)
