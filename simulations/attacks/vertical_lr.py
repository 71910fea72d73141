"""Attacks on vertical LR transcripts: label inference by the passive party, feature reconstruction by the label party.

What the passive party k holds after a run (docs/vertical_lr.md, leakage table): per step
its own gradient ``g = X_bᵀd/|b|`` (``d = sigmoid(z) - y`` on the batch's rows, which it
knows from the shared seed) after removing its own masks, three control bits per epoch, and
its own model part ``w_k``.  Its attacks score every training row (higher = "defaulted"):

* ``inversion``: per step the minimum-norm ``d̂`` with ``X_bᵀd̂ = |b|·g`` (exact when
  ``|b| ≤ d_k``: then ``y = [d̂ < 0]``); a row's score is ``-mean d̂`` over its steps.
* ``direction``: ``-mean_t cos(x_i, g_t)`` over the steps holding row i (the gradient-direction
  attack of split learning, here on batch gradients).
* ``own_model``: ``X_k w_k``, the passive's own part of the trained model, which it receives
  by design; what the model itself says about a row, not a leak of the transcript.

With ``passive_weights = "shared"`` the passive holds far less: no gradient sums come back
(its gradient share is minus its own masks), its weights are a share ``a_k`` (``w_k = a_k + b_k``,
``b_k`` at the label party) on its basis-changed columns ``X_k C``, and its final part is
``Enc(w_k)``.  The same attacks then run on what it has: ``gradient`` = its share, ``own_model``
= ``X_k C a_k`` at the best point (a curious passive keeps the share it is told to drop).

What the label party holds: per step ``Σ_k z_k`` (one passive: its ``X_k w_k^look``) on the
batch rows, the same on validation rows each epoch, and the final partial logits of the test
rows.  Its attack (``reconstruct_features``): a few rows whose passive features it knows
(``known_fraction``) fit a linear map from each row's received partial logits to each passive
feature; R² on the other rows, beside the same regression from its own features (what it
could guess without the protocol).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crypto import ckks
from fedcredit.codec import loads_json, unpack_arrays, unpack_blobs
from fedcredit.data import Table, split_by_ids
from fedcredit.params import VerticalLRConfig
from fedcredit.protocols import vertical_lr as vlr
from fedcredit.protocols.vertical_common import Standardizer, epoch_batches, validation_split
from fedcredit.transport import WireRecord
from simulations.attacks.common import auc, known_mask, known_rows_r2, median, random_baseline
from simulations.inprocess import run_vertical_lr_inprocess

_STEP = re.compile(r"^(?P<p>.+)/(?P<kind>z|gs|g)/(?P<e>\d+)/(?P<b>\d+)$")


@dataclass
class Step:
    epoch: int
    batch: int
    rows: np.ndarray  # positions in the fit rows (known to every party from the seed)
    full: bool  # full-batch phase
    gradient: np.ndarray | None = None  # passive: X_bᵀd/|b| (masks removed, flooding noise kept)
    partial: np.ndarray | None = None  # label: Σ_k z_k on the batch rows


@dataclass
class Transcript:
    """Both roles' views of one real run (one passive party), with the truth to score the attacks."""

    cfg: VerticalLRConfig
    batch_size: int
    steps: list[Step]
    ctl: list[dict[str, Any]]
    X_passive: np.ndarray  # passive's standardized fit rows (what it computes with)
    X_passive_raw: np.ndarray  # its raw fit rows (the reconstruction target)
    X_label: np.ndarray  # label party's raw fit rows (its own evidence)
    y: np.ndarray  # fit-row labels (truth, never seen by the passive)
    passive_weights: np.ndarray  # the passive's final model part
    test_auc: float | None
    bytes_sent: dict[str, int] = field(default_factory=dict)


@contextmanager
def _recording_final_share(store: list[np.ndarray]) -> Iterator[None]:
    """Shared weights: the passive's share a_k at the best point, as it adds it to Enc(b_k) (then told to drop it)."""
    orig = ckks.shift_replicated

    def keep(ctx: Any, cts: Any, shift: np.ndarray, *, what: str) -> list[bytes]:
        store.append(np.array(shift))
        return orig(ctx, cts, shift, what=what)

    ckks.shift_replicated = keep
    try:
        yield
    finally:
        ckks.shift_replicated = orig


@contextmanager
def _recording_masks(store: list[np.ndarray], seed: int | None = None) -> Iterator[None]:
    """The passive's own slot masks, in order (a curious passive keeps them: it drew them); ``seed``: drawn from a
    seeded generator instead of the OS CSPRNG, so a measurement can be repeated exactly."""
    orig = vlr._uniform_mask
    rng = np.random.default_rng(seed) if seed is not None else None

    def keep(n: int, bound: float) -> np.ndarray:
        m = orig(n, bound) if rng is None else rng.uniform(-bound, bound, n)
        store.append(m)
        return m

    vlr._uniform_mask = keep
    try:
        yield
    finally:
        vlr._uniform_mask = orig


def record(guest: Table, host: Table, cfg: VerticalLRConfig, *, test_ids: set[str] | frozenset[str] | None = None,
           hub_timeout: float = 600.0, mask_seed: int | None = None) -> Transcript:
    """Run vertical LR for real (CKKS, in-process roles, every message observed) and rebuild both views.

    ``mask_seed``: the passive's slot masks from a seeded generator (reproducible tests; with shared weights they
    are the whole of its weight share)."""
    common = set(host.ids)
    order = [i for i in guest.ids if i in common]
    guest, host = guest.align(order), host.align(order)
    wire: list[WireRecord] = []
    masks: list[np.ndarray] = []
    final_share: list[np.ndarray] = []
    shared = cfg.passive_weights == "shared"
    with _recording_masks(masks, mask_seed), _recording_final_share(final_share):
        out = run_vertical_lr_inprocess(guest, {host.party: host}, cfg, test_ids=test_ids, psi=False,
                                        observers=[wire.append], hub_timeout=hub_timeout)
    secret = ckks.load_secret(out.label.model.secret_context) if out.label.model.secret_context else None
    P = host.party
    g_train = split_by_ids(guest, test_ids)[0] if test_ids else guest
    h_train = split_by_ids(host, test_ids)[0] if test_ids else host
    setup = next(loads_json(r.payload, what="setup") for r in wire if r.tag == f"{cfg.tag_prefix}/setup")
    batch = int(setup["config"]["batch_size"])
    fit, _ = validation_split(len(h_train), cfg.validation_fraction, cfg.seed, h_train.ids)
    fit_ids = [h_train.ids[i] for i in fit]
    ctl = [loads_json(r.payload, what="ctl") for r in wire if r.tag.startswith(f"{cfg.tag_prefix}/ctl/")]
    full_from = next((e + 1 for e, c in enumerate(ctl) if c.get("full")), 1 << 30)
    steps: dict[tuple[int, int], Step] = {}
    batches: dict[int, list[np.ndarray]] = {}

    def step(e: int, b: int) -> Step:
        if (e, b) not in steps:
            if e not in batches:
                batches[e] = [np.arange(len(fit))] if e >= full_from else epoch_batches(len(fit), batch, e, cfg.seed,
                                                                                      fit_ids)
            steps[(e, b)] = Step(e, b, batches[e][b], e >= full_from)
        return steps[(e, b)]

    n_gs = 0
    for r in wire:
        m = _STEP.match(r.tag)
        if not m or m["p"] != cfg.tag_prefix:
            continue
        st = step(int(m["e"]), int(m["b"]))
        if shared:
            if m["kind"] == "z" and r.sender == P and secret is not None:  # the label party decrypts them
                st.partial = vlr.decrypt_partial_scores(secret, r.payload, len(st.rows), what=r.tag)
            elif m["kind"] == "g" and r.sender == P:  # passive's view: its gradient share, minus its own masks
                mk = masks[n_gs]
                n_gs += 1
                d = len(unpack_blobs(r.payload, what=r.tag)[0])
                st.gradient = -mk.reshape(d, -1).sum(axis=1) / (2.0**vlr.RESIDUAL_SCALE_BITS * len(st.rows))
            continue
        if m["kind"] == "g":
            continue
        arrays, _ = unpack_arrays(r.payload, what=r.tag)
        if m["kind"] == "z" and r.sender == P:  # label party's view: the (only) passive's partial logits
            st.partial = vlr._from_fixed(arrays["q"])
        elif m["kind"] == "gs" and r.receiver == P:  # passive's view: its sums, unmasked with its own masks
            mk = masks[n_gs]
            n_gs += 1
            d = len(arrays["s"])
            sums = mk.reshape(d, -1).sum(axis=1)
            st.gradient = (arrays["s"] - sums) / (2.0**vlr.RESIDUAL_SCALE_BITS * len(st.rows))
    if n_gs != len(masks):
        raise RuntimeError(f"{n_gs} gradient sums but {len(masks)} mask draws: the transcript is out of step")
    std = Standardizer.fit(h_train.X)
    y = g_train.y
    assert y is not None
    Xp = std.transform(h_train.X)[fit]
    weights = out.passives[P].model.weights
    if shared:  # what the passive computes with: its basis-changed columns, and its share of the weights
        Xp = Xp @ np.linalg.cholesky(vlr._preconditioner(Xp, np.full(Xp.shape[1], cfg.l2), cfg.precondition))
        weights = final_share[-1]
    return Transcript(
        cfg=cfg, batch_size=batch, steps=[steps[k] for k in sorted(steps)], ctl=ctl,
        X_passive=Xp, X_passive_raw=h_train.X[fit], X_label=g_train.X[fit],
        y=y[fit].astype(np.float64), passive_weights=weights,
        test_auc=None if out.label.test_metrics is None else float(out.label.test_metrics["auc"]),
        bytes_sent=dict(out.bytes_by_sender),
    )


# --------------------------------------------------------------------------- passive party: label inference


def _mean_over_steps(n: int, steps: list[Step], per_step: Any) -> np.ndarray:
    acc, cnt = np.zeros(n), np.zeros(n)
    for st in steps:
        if st.gradient is None:
            continue
        acc[st.rows] += per_step(st)
        cnt[st.rows] += 1
    return np.divide(acc, cnt, out=np.zeros(n), where=cnt > 0)


def inversion_scores(t: Transcript, phase: str = "all") -> np.ndarray:
    """-mean over steps of the minimum-norm residual solving X_bᵀd̂ = |b|·g (exact for |b| ≤ d_k)."""
    X = t.X_passive

    def solve(st: Step) -> np.ndarray:
        Xb = X[st.rows]
        assert st.gradient is not None
        dhat = np.linalg.pinv(Xb.T, rcond=1e-9) @ (len(st.rows) * st.gradient)  # min-norm solution
        return -dhat

    return _mean_over_steps(len(X), _phase(t, phase), solve)


def direction_scores(t: Transcript, phase: str = "all") -> np.ndarray:
    """-mean over steps of cos(x_i, g): rows whose features point against the gradient are the positives."""
    X = t.X_passive
    norms = np.linalg.norm(X, axis=1) + 1e-12

    def cos(st: Step) -> np.ndarray:
        assert st.gradient is not None
        g = st.gradient / (np.linalg.norm(st.gradient) + 1e-12)
        return -(X[st.rows] @ g) / norms[st.rows]

    return _mean_over_steps(len(X), _phase(t, phase), cos)


def _phase(t: Transcript, phase: str) -> list[Step]:
    if phase == "mini":
        return [s for s in t.steps if not s.full]
    if phase == "full":
        return [s for s in t.steps if s.full]
    return list(t.steps)


def label_inference(t: Transcript) -> dict[str, Any]:
    """Every passive-party attack's AUC on the training rows, beside the baselines."""
    y = t.y
    attacks = {
        "inversion": auc(y, inversion_scores(t)),
        "direction": auc(y, direction_scores(t)),
    }
    if any(s.full for s in t.steps):
        attacks["inversion (full-batch steps)"] = auc(y, inversion_scores(t, "full"))
        attacks["direction (full-batch steps)"] = auc(y, direction_scores(t, "full"))
    if any(not s.full for s in t.steps):
        attacks["inversion (mini-batch steps)"] = auc(y, inversion_scores(t, "mini"))
    inv = inversion_scores(t)
    acc = float(np.mean((inv > 0) == (y > 0.5)))  # the sign rule: d̂ < 0 <=> y = 1
    transcript_best = max(attacks.values())
    own = auc(y, t.X_passive @ t.passive_weights)
    # a score that knows nothing about the labels but uses the passive's features: random directions in its
    # column space.  Their AUC spreads around 0.5 (a random direction correlates with the predictive one by
    # chance); an attack inside this band tells the passive nothing it could not draw itself.
    rng = np.random.default_rng(0)
    rand = np.array([auc(y, t.X_passive @ rng.normal(size=t.X_passive.shape[1])) for _ in range(200)])
    return {
        "attacks": attacks,
        "best_transcript_attack_auc": transcript_best,
        "inversion_sign_accuracy": acc,
        "own_model_part_auc": own,
        "best_auc": max(transcript_best, own),
        "no_information_auc": random_baseline(y),
        "random_direction_auc_sd": float(np.std(rand)),
        "random_direction_auc_p95_deviation": float(np.percentile(np.abs(rand - 0.5), 95)),
        "majority_accuracy": float(max(y.mean(), 1 - y.mean())),
        "n_rows": len(y),
        "n_steps": len(t.steps),
        "batch_size": t.batch_size,
        "features": int(t.X_passive.shape[1]),
    }


# --------------------------------------------------------------------------- label party: feature reconstruction


def partial_logit_matrix(t: Transcript) -> np.ndarray:
    """Each fit row's received partial logits, one column per epoch (mini-batch) or step (full batch)."""
    n = len(t.y)
    cols: dict[tuple[int, int], np.ndarray] = {}
    for st in t.steps:
        if st.partial is None:
            continue
        key = (st.epoch, 0 if not st.full else st.batch)
        col = cols.setdefault(key, np.full(n, np.nan))
        col[st.rows] = st.partial
    M = np.column_stack([c for _, c in sorted(cols.items())]) if cols else np.zeros((n, 0))
    return M[:, np.all(np.isfinite(M), axis=0)]


def reconstruct_features(t: Transcript, known_fraction: float = 0.01, seed: int = 0) -> dict[str, Any]:
    """Known-rows linear reconstruction of the passive's raw features: from the partial logits vs from own features."""
    Z = partial_logit_matrix(t)
    known = known_mask(len(t.y), known_fraction, seed)
    Xp = t.X_passive_raw
    from_z = [known_rows_r2(Xp[:, j], Z, known) for j in range(Xp.shape[1])]
    from_own = [known_rows_r2(Xp[:, j], t.X_label, known) for j in range(Xp.shape[1])]
    everything = [known_rows_r2(Xp[:, j], np.column_stack([Z, t.X_label]), known) for j in range(Xp.shape[1])]
    oracle = [column_space_r2(Xp[:, j], Z) for j in range(Xp.shape[1])]
    return {
        "known_rows": int(known.sum()),
        "partial_logit_columns": int(Z.shape[1]),
        "r2_median_from_partials": median(from_z),
        "r2_median_from_partials_and_own": median(everything),
        "r2_median_from_own_features": median(from_own),
        "r2_median_column_space": median(oracle),
        "r2_per_feature_from_partials": [round(v, 4) for v in from_z],
        "r2_per_feature_from_own_features": [round(v, 4) for v in from_own],
    }


def column_space_r2(target: np.ndarray, evidence: np.ndarray) -> float:
    """In-sample R² of the best linear map (as if the attacker knew every row): the "up to a change of basis" bound."""
    A = np.column_stack([evidence, np.ones(len(evidence))])
    coef, *_ = np.linalg.lstsq(A, target, rcond=None)
    var = float(np.var(target))
    return float(1.0 - np.mean((target - A @ coef) ** 2) / var) if var > 0 else 0.0
