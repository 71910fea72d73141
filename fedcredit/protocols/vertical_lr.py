"""Vertical (hetero) logistic regression: one label party, one or more passive parties (all roles here).

Model: ``logit(x) = b + w_L·x_L + Σ_k w_k·x_k`` — the label party L owns ``b, w_L``
and the labels, passive party k owns ``w_k`` and its features.  Each party
standardizes its own features locally; nothing about raw rows crosses.

Training (mini-batch Nesterov SGD, L2, early stopping on a validation split); per
batch, with rows fixed by a shared seed (no row lists cross):

    P_k -> L   z_k = X_k[batch] w_k            partial logits (fixed-point, masked so that
                                               with >= 2 passives L learns only Σ_k z_k)
    L          d = sigmoid(z) - y              residual, exact sigmoid
    L -> P_k   Enc(2^12 d)                     CKKS, chunks of <= slot_count rows
    P_k        for each own column c:  Enc(2^12 d) ⊙ X_k[:, c] + m_c   (plaintext multiply, no rotation)
    P_k -> L   the masked ciphertexts          m_c random per slot, known only to P_k
    L -> P_k   s_c = Σ_slots Dec(...) + noise  = 2^12 (X_k^T d)_c + Σ m_c + noise  (still masked;
                                               flooded: the one decrypt-and-return, crypto.ckks.decrypt_sums)
    P_k        g_k = (s - Σ m) / (2^12 |batch|) + l2 w_k ; update w_k

Slot sums are taken by the key holder after decryption, so no rotation (and no
Galois key) is ever needed; the cost is |batch|·d_k/slots plaintext multiplications
per passive per step.  The ciphertext work is :func:`crypto.ckks.encrypt_chunks`,
:func:`crypto.ckks.masked_column_products` and :func:`crypto.ckks.decrypt_sums`.  Joint scoring (evaluation here, online scoring later):
each passive returns ``z_k`` for the requested ids; L adds them to its own logit
(:func:`passive_partial_scores`, :func:`combine`, :func:`request_scores`,
:func:`serve_scores`).  The leakage table is in docs/vertical_lr.md.

``passive_weights = "shared"`` (docs/vertical_lr.md, "Shared weights"): ``w_k = a_k + b_k``, ``a_k``
at P_k and ``b_k`` at L.  Per step L sends Enc(b_k + mu v^b_k) (one replicated ciphertext per
feature), P_k returns Enc(X_k (a + b) + pair masks + noise) and L decrypts Σ_k z_k as before; L
keeps the masked gradient sums as its share (no ``gs`` message), P_k's share is minus its masks.
At the end P_k keeps only Enc(w_k) and scoring answers ciphertexts.  Deviations from the brief,
with reasons: the passive adds its share to Enc(b) *before* the plaintext products (so shares of
~10^5 lose no precision and float64 shares suffice, no fixed-point ring); the full-batch momentum
restart (g·v > 0) of a passive block needs both shares, so in its place every block's momentum
restarts when the full-batch training loss rose (a function-value restart, O'Donoghue & Candès
2015: one more control bit from L, of the same kind as "improved"; not under label DP, whose
schedule is fixed); without it the full-batch phase oscillated to its step cap (345 steps
against 57 on the benchmark split); P_k adds Gaussian noise 2^-10 to its encrypted partial
logits so the CKKS error of its products (a function of X_k) reaches L drowned.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crypto import ckks
from crypto.files import write_text
from fedcredit import dp
from fedcredit.checkpoint import CheckpointStore, ResumeTags, agree_step
from fedcredit.codec import b64_bytes, b64_text, loads_json, pack_arrays, pack_blobs, unpack_arrays, unpack_blobs
from fedcredit.compute import WorkerPool, default_pool
from fedcredit.data import Table
from fedcredit.decision import Contributions, ScorecardPoints, lr_contributions
from fedcredit.errors import ConfigError, DataError, PeerAborted, ProtocolError, SecurityError
from fedcredit.metrics import auc_ks, sigmoid, write_evaluation
from fedcredit.params import ScorecardParams, VerticalLRConfig
from fedcredit.protocols.binning.transform import BinningTransform
from fedcredit.protocols.vertical_common import Standardizer, epoch_batches, ids_digest, validation_split
from fedcredit.scorecard import ScorecardPart, bin_design, build_part, score_scale
from fedcredit.transport import Transport

__all__ = [
    "VerticalLRConfig",
    "Tags",
    "ScoreTags",
    "SCORE_TAG",
    "LabelModel",
    "PassiveModel",
    "LabelResult",
    "PassiveResult",
    "run_vertical_lr_label",
    "run_vertical_lr_passive",
    "passive_partial_scores",
    "combine",
    "request_scores",
    "serve_scores",
    "with_scorecard",
    "convergence",
]

Progress = Callable[[str, int, int], None]

_FIXED_SCALE = 2.0**32  # fixed-point scale for masked partial logits (|z| < 2^31, resolution 2^-32)
_VERSION = 1  # model file format
#: checkpoint stage of vertical LR at both roles (step = epochs done; fedcredit.checkpoint)
STAGE = "vlr"
PROTOCOL_VERSION = 4  # wire protocol (2: residuals scaled by 2^RESIDUAL_SCALE_BITS, flooded gradient sums;
# 3: full-batch phase after the mini-batch epochs, switched on by "full" in vlr/ctl;
# 4: passive_weights = "shared" -- secret-shared passive weights, encrypted partial logits)
# The label party encrypts 2^12 * d and the passive masks with 2^12 * mask_bound, so the
# mask still hides each slot product as before while the CKKS error -- and the noise that
# floods it before the sums go back (crypto.ckks.decrypt_sums) -- shrinks 2^12-fold
# relative to the gradient.  Largest plaintext: 2^(30+12) * 2^40 = 2^82 < 2^99.
RESIDUAL_SCALE_BITS = 12
FLOOD_SIGMA_BITS = 40  # statistical parameter of the flooding of decrypted gradient sums
_SETTLED_STEPS = 3  # full-batch steps in a row whose training log-loss changed by < tol: converged
# shared weights: the pair masks among passives, added to the encrypted partial logits as reals (|z| << 2^30 hides z
# statistically, 2^-25 per value at |z| <= 32; the decrypted sum keeps ~1e-6 absolute precision)
_PAIR_MASK_BOUND = 2.0**30
# shared weights: Gaussian noise the passive adds to each encrypted partial logit it returns, so the CKKS error of its
# plaintext products (a function of its features X, ~1e-6) reaches the key holder drowned (a heuristic flooding: no
# measured bound as for decrypt_sums; 2^-10 = 0.001 is far below what moves a probability)
_LOGIT_FLOOD = 2.0**-10


# --------------------------------------------------------------------------- wire vocabulary


@dataclass(frozen=True)
class Tags:
    """Every vertical LR message tag, declared once for both roles (``L`` label party, ``P_k`` passive k).

    ``prefix`` is ``VerticalLRConfig.tag_prefix`` ("vlr"); ``step`` is ``"<epoch>/<batch>"``.
    The payload of each is the leakage table of docs/vertical_lr.md.
    """

    prefix: str = "vlr"

    @property
    def setup(self) -> str:  # L -> P_k: hyper-parameters, party list, row counts and id digests (JSON)
        return f"{self.prefix}/setup"

    @property
    def ctx(self) -> str:  # L -> P_k: the public CKKS context
        return f"{self.prefix}/ctx"

    @property
    def hello(self) -> str:  # P_k -> L: {"n_features"} (a refusal is Transport.abort, not a message)
        return f"{self.prefix}/hello"

    @property
    def pairseed(self) -> str:  # P_i -> P_j (i < j, >= 2 passives): 32-byte seed of their zero-sum masks
        return f"{self.prefix}/pairseed"

    def z(self, step: str) -> str:  # P_k -> L: masked fixed-point partial logits of the batch
        return f"{self.prefix}/z/{step}"

    def r(self, step: str) -> str:  # L -> P_k: Enc(2^12 d), the residual ciphertexts
        return f"{self.prefix}/r/{step}"

    def g(self, step: str) -> str:  # P_k -> L: masked gradient ciphertexts, one per own column
        return f"{self.prefix}/g/{step}"

    def gs(self, step: str) -> str:  # L -> P_k: flooded slot sums of those (decrypt-and-return)
        return f"{self.prefix}/gs/{step}"

    def zv(self, epoch: int) -> str:  # P_k -> L: masked partial logits of the validation rows
        return f"{self.prefix}/zv/{epoch}"

    def wb(self, step: str) -> str:  # L -> P_k (shared weights): Enc(b_k + mu v^b_k), one replicated ct per feature
        return f"{self.prefix}/wb/{step}"

    def wbv(self, epoch: int) -> str:  # L -> P_k (shared weights): Enc(b_k) for the validation rows
        return f"{self.prefix}/wbv/{epoch}"

    @property
    def wfinal(self) -> str:  # L -> P_k (shared weights): Enc(b_k) at the best point, once, at the end
        return f"{self.prefix}/wfinal"

    def ctl(self, epoch: int) -> str:  # L -> P_k: {"improved", "stop", "full"} after the epoch's validation
        return f"{self.prefix}/ctl/{epoch}"

    @property
    def score(self) -> str:  # joint scoring at the end: the prefix of ScoreTags
        return f"{self.prefix}/score"

    @property
    def resume(self) -> ResumeTags:  # P_k -> L held epochs, L -> P_k the epoch to resume after (resumed runs only)
        return ResumeTags(self.prefix)


@dataclass(frozen=True)
class ScoreTags:
    """Joint scoring round trip (evaluation, and online scoring under ``SCORE_TAG``)."""

    prefix: str = "vlr/score"

    @property
    def req(self) -> str:  # L -> P_k: {"ids"} to score
        return f"{self.prefix}/req"

    @property
    def resp(self) -> str:  # P_k -> L: partial logits "z" in id order, or {"error"}
        return f"{self.prefix}/resp"


SCORE_TAG = ScoreTags().prefix


# --------------------------------------------------------------------------- config and models


def _model_doc(text: str | bytes, kind: str, source: str) -> tuple[dict[str, Any], list[str], Standardizer, np.ndarray]:
    """The shared part of both model files: the object, its feature names, standardizer and weights,
    each checked against the others (a model file may come from another institution's artifact)."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    try:
        d = loads_json(raw, what=source)
    except ProtocolError as e:
        raise DataError(str(e)) from None
    if d.get("kind") != kind:
        raise DataError(f"{source}: not a {kind} model (kind={d.get('kind')!r})")
    try:
        names, sd = d["feature_names"], d["standardizer"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not isinstance(sd, dict):
            raise DataError(f"{source}: 'feature_names' must be a list of names and 'standardizer' an object")
        # a shared-weights passive part has no plaintext weights ("weights": null, "encrypted_weights" instead)
        w = (np.full(len(names), np.nan) if d["weights"] is None and "encrypted_weights" in d
             else np.asarray(d["weights"], dtype=np.float64))
        std = Standardizer.from_dict(sd)
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise DataError(f"{source}: not a {kind} model: {e!r}") from None
    k = len(names)
    if w.shape != (k,) or std.mean.shape != (k,) or std.scale.shape != (k,):
        raise DataError(f"{source}: {k} feature names but weights {w.shape}, standardizer "
                        f"{std.mean.shape}/{std.scale.shape}")
    return d, list(names), std, w


def _scorecard_doc(part: ScorecardPart | None) -> dict[str, Any]:
    return {} if part is None else {"scorecard": part.to_dict()}


def _scorecard_of(d: Mapping[str, Any], role: str, party: str, source: str) -> ScorecardPart | None:
    """The optional scorecard of a model file; it must be this party's, in this role."""
    if d.get("scorecard") is None:
        return None
    part = ScorecardPart.from_dict(d["scorecard"], source=source)
    if part.role != role or part.party != party:
        raise DataError(f"{source}: the scorecard is the {part.role} part of '{part.party}', "
                        f"expected the {role} part of '{party}'")
    if isinstance(d.get("binning"), Mapping):  # one rule: the scorecard bins exactly as the LR's transform
        tf = BinningTransform.from_dict(d["binning"], source=source)
        if [b.to_dict() for b in tf.features] != [f.bins.to_dict() for f in part.features]:
            raise DataError(f"{source}: the scorecard's bins differ from the model's binning transform")
    return part


@dataclass
class LabelModel:
    """The label party's part: its standardizer, weights and the intercept (nothing about passive features)."""

    party: str
    feature_names: list[str]
    standardizer: Standardizer
    weights: np.ndarray
    intercept: float
    passive_parties: list[str]
    #: binned jobs: this party's scorecard (fedcredit.scorecard); online scoring then goes through its points
    scorecard: ScorecardPart | None = None
    #: passive_weights = "shared": the CKKS secret context (with its key) under which every passive part's weights
    #: are encrypted; scoring decrypts the passives' Enc(X_k w_k) with it.  None: plaintext passive parts.
    secret_context: bytes | None = field(default=None, repr=False)

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": "vertical_lr/label",
                "version": _VERSION,
                "party": self.party,
                "feature_names": self.feature_names,
                "standardizer": self.standardizer.to_dict(),
                "weights": self.weights.tolist(),
                "intercept": self.intercept,
                "passive_parties": self.passive_parties,
                **_scorecard_doc(self.scorecard),
                **({"passive_weights": "shared", "ckks_secret_context": b64_text(self.secret_context)}
                   if self.secret_context is not None else {}),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str, *, source: str = "vertical LR label model") -> LabelModel:
        """Parse :meth:`to_json` output; anything malformed or inconsistent is a DataError naming ``source``."""
        d, names, std, w = _model_doc(text, "vertical_lr/label", source)
        try:
            intercept = float(d["intercept"])
            passives = d["passive_parties"]
            if not isinstance(passives, list) or not all(isinstance(x, str) for x in passives):
                raise DataError(f"{source}: 'passive_parties' must be a list of party names")
            party = d["party"]
            if not isinstance(party, str):
                raise DataError(f"{source}: 'party' must be a string")
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise DataError(f"{source}: not a vertical LR label-party model: {e!r}") from None
        secret = b64_bytes(d["ckks_secret_context"], source, "ckks_secret_context") if d.get("ckks_secret_context") else None
        return cls(party=party, feature_names=names, standardizer=std, weights=w, intercept=intercept,
                   passive_parties=list(passives), scorecard=_scorecard_of(d, "label", party, source),
                   secret_context=secret)

    def save(self, path: str | Path) -> None:
        write_text(Path(path), self.to_json())


@dataclass
class PassiveModel:
    """A passive party's part: its standardizer and weights over its own features only.

    With ``passive_weights = "shared"`` the weights are not here in plaintext (``weights`` is all NaN):
    ``encrypted_weights`` holds ``Enc(w'_j)`` under the label party's key (one replicated CKKS vector per
    column, ``public_context`` to compute with), on the columns ``standardizer.transform(X) @ basis``.
    """

    party: str
    feature_names: list[str]
    standardizer: Standardizer
    weights: np.ndarray
    label_party: str
    #: binned jobs: this party's own scorecard (its points; never sent to anyone)
    scorecard: ScorecardPart | None = None
    encrypted_weights: list[bytes] | None = field(default=None, repr=False)
    public_context: bytes | None = field(default=None, repr=False)
    basis: np.ndarray | None = field(default=None, repr=False)  # C with C Cᵀ = this party's preconditioner

    @property
    def shared(self) -> bool:
        """Trained with shared weights: scoring answers Enc(X w) ciphertexts only the label party can open."""
        return self.encrypted_weights is not None

    def to_json(self) -> str:
        enc: dict[str, Any] = {}
        if self.encrypted_weights is not None:
            assert self.public_context is not None and self.basis is not None
            enc = {"passive_weights": "shared", "encrypted_weights": [b64_text(c) for c in self.encrypted_weights],
                   "ckks_public_context": b64_text(self.public_context), "basis": self.basis.tolist()}
        return json.dumps(
            {
                "kind": "vertical_lr/passive",
                "version": _VERSION,
                "party": self.party,
                "feature_names": self.feature_names,
                "standardizer": self.standardizer.to_dict(),
                "weights": None if self.shared else self.weights.tolist(),
                "label_party": self.label_party,
                **_scorecard_doc(self.scorecard),
                **enc,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str, *, source: str = "vertical LR passive model") -> PassiveModel:
        """Parse :meth:`to_json` output; anything malformed or inconsistent is a DataError naming ``source``."""
        d, names, std, w = _model_doc(text, "vertical_lr/passive", source)
        party, label = d.get("party"), d.get("label_party")
        if not isinstance(party, str) or not isinstance(label, str):
            raise DataError(f"{source}: 'party' and 'label_party' must be strings")
        enc = basis = ctx = None
        if "encrypted_weights" in d:
            cts = d["encrypted_weights"]
            if not isinstance(cts, list) or len(cts) != len(names):
                raise DataError(f"{source}: 'encrypted_weights' must list one ciphertext per feature ({len(names)})")
            enc = [b64_bytes(c, source, "encrypted_weights") for c in cts]
            ctx = b64_bytes(d.get("ckks_public_context"), source, "ckks_public_context")
            try:
                basis = np.asarray(d["basis"], dtype=np.float64)
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(f"{source}: a shared-weights part needs its 'basis' matrix: {e!r}") from None
            if basis.shape != (len(names), len(names)):
                raise DataError(f"{source}: 'basis' is {basis.shape}, expected {(len(names), len(names))}")
        return cls(party=party, feature_names=names, standardizer=std, weights=w, label_party=label,
                   scorecard=_scorecard_of(d, "passive", party, source), encrypted_weights=enc, public_context=ctx,
                   basis=basis)

    def save(self, path: str | Path) -> None:
        write_text(Path(path), self.to_json())


@dataclass
class LabelResult:
    model: LabelModel
    history: list[dict[str, Any]]  # per epoch: val_loss, val_auc (label-party-only knowledge)
    best_epoch: int
    epochs_run: int
    steps: int
    train_seconds: float
    test_metrics: dict[str, Any] | None = None  # auc, ks, n (public metrics)
    test_scores: np.ndarray | None = field(default=None, repr=False)
    counters: dict[str, int] = field(default_factory=dict)  # encryptions, decryptions
    timings: dict[str, float] = field(default_factory=dict)  # seconds spent per activity at this party
    train_ids: list[str] = field(default_factory=list, repr=False)  # the aligned training ids, in protocol order
    test_ids: list[str] = field(default_factory=list, repr=False)  # the ids of test_scores, in their order
    privacy: dict[str, Any] = field(default_factory=dict)  # {"dp": ...} with [model.dp] (docs/privacy.md)


@dataclass
class PassiveResult:
    model: PassiveModel
    epochs_run: int
    steps: int
    counters: dict[str, int] = field(default_factory=dict)  # plaintext multiplications, rotations (always 0)
    timings: dict[str, float] = field(default_factory=dict)


def with_scorecard(model: LabelModel | PassiveModel, transform: BinningTransform,
                   params: ScorecardParams | None) -> None:
    """Give a trained part its scorecard, computed at this party from its own block only (nothing is sent).

    ``transform``: this party's binning transform (``fedcredit.protocols.binning``), whose
    output columns are the columns the part's weights are on, in order.
    """
    if isinstance(model, PassiveModel) and model.shared:
        raise ConfigError(f"party '{model.party}': no scorecard from a shared-weights part (passive_weights = "
                          "\"shared\"): its points per bin would be its plaintext weights; train with "
                          "passive_weights = \"plaintext\" for a scorecard")
    if transform.output_names != list(model.feature_names):
        raise DataError(f"party '{model.party}': the binning transform gives columns {transform.output_names[:4]}..., "
                        f"the LR part has {list(model.feature_names)[:4]}...")
    label = isinstance(model, LabelModel)
    bins = list(transform.features)
    model.scorecard = build_part(
        model.party, "label" if label else "passive", bins,
        bin_design(bins, transform.mode, [list(w) for w in transform.woe] if transform.mode == "woe" else None),
        model.standardizer.mean, model.standardizer.scale, model.weights,
        intercept=model.intercept if isinstance(model, LabelModel) else 0.0, score_scale=score_scale(params))


# --------------------------------------------------------------------------- joint scoring


def passive_partial_scores(model: PassiveModel, X: np.ndarray) -> np.ndarray:
    """A passive party's contribution to the logit of each row of its raw feature matrix ``X``."""
    if model.shared:
        raise ConfigError(f"party '{model.party}': a shared-weights part has no plaintext partial logit; it answers "
                          "Enc(X w) (passive_encrypted_scores), which only the label party decrypts")
    if X.shape[1] != len(model.weights):
        raise DataError(
            f"party '{model.party}': scoring needs {len(model.weights)} features {model.feature_names}, got {X.shape[1]}"
        )
    return model.standardizer.transform(X) @ model.weights


def passive_encrypted_scores(model: PassiveModel, X: np.ndarray, ctx: ckks.PublicContext | None = None,
                             weights: ckks.ReplicatedWeights | None = None) -> bytes:
    """A shared-weights part's answer: ``Enc(X' w' + noise)`` for the rows of raw ``X`` (the payload of a reply).

    ``X' = standardize(X) @ basis``; the noise (std 2^-10) floods the CKKS error of the products.
    ``ctx``: the part's loaded public context (loaded here when not given); ``weights``: its ciphertexts loaded
    once (:class:`OnlinePassive` keeps them; loaded here when not given).
    """
    if not model.shared or model.encrypted_weights is None or model.basis is None:
        raise ConfigError(f"party '{model.party}': not a shared-weights part")
    if X.shape[1] != len(model.feature_names):
        raise DataError(f"party '{model.party}': scoring needs {len(model.feature_names)} features "
                        f"{model.feature_names}, got {X.shape[1]}")
    ctx = ctx if ctx is not None else ckks.load_public(model.public_context or b"", what=f"party '{model.party}': "
                                                       "the CKKS context of its model part")
    Z = model.standardizer.transform(X) @ model.basis
    if weights is None:
        weights = ckks.ReplicatedWeights(ctx, model.encrypted_weights, what=f"party '{model.party}': its encrypted weights")
    cts = weights.dot(Z, ckks.gaussian(len(Z), _LOGIT_FLOOD), flood_std=_LOGIT_FLOOD)
    return pack_blobs(cts, {"rows": len(Z)})


def decrypt_partial_scores(secret: ckks.SecretContext, payload: bytes, n: int, *, what: str) -> np.ndarray:
    """The label party's side of :func:`passive_encrypted_scores`: ``n`` partial logits (or the reply's error)."""
    blobs, meta = unpack_blobs(payload, what=what)
    if meta.get("error"):
        raise DataError(f"{what} could not score: {meta['error']}")
    if meta.get("rows") != n:
        raise ProtocolError(f"{what}: encrypted scores for {meta.get('rows')} rows, expected {n}")
    return ckks.decrypt_chunks(secret, blobs, n, what=what)


def combine(model: LabelModel, X_label: np.ndarray, partials: Sequence[np.ndarray]) -> np.ndarray:
    """Default probability per row: the label party's own logit plus every passive party's partial logit."""
    if X_label.shape[1] != len(model.weights):
        raise DataError(f"party '{model.party}': scoring needs {len(model.weights)} features, got {X_label.shape[1]}")
    z = model.standardizer.transform(X_label) @ model.weights + model.intercept
    for p in partials:
        if p.shape != z.shape:
            raise ProtocolError(f"party '{model.party}': a partial score vector has shape {p.shape}, expected {z.shape}")
        z = z + p
    return sigmoid(z)


class OnlineLabel:
    """The label party's side of online joint scoring: its own logit plus each passive party's partial logit.

    What the scoring service caches per installed version (``fedcredit.kinds``); the
    contributions give the decision layer its reasons (a passive party's is its partial logit).
    """

    def __init__(self, model: LabelModel) -> None:
        self.model = model
        self.card = model.scorecard
        # a scorecard scores raw (binned) features; the LR's columns are their WOE / bin indicators
        self.feature_names = list(model.feature_names if self.card is None else self.card.feature_names)
        if self.card is not None:  # raw inputs with categories; a missing value scores its missing bin
            self.input_schema, self.accepts_missing = self.card.schema_dict(), True
        self.passive_parties = list(model.passive_parties)
        self.secret = (ckks.load_secret(model.secret_context, what=f"party '{model.party}': the CKKS key of its model")
                       if model.secret_context is not None else None)

    def score(self, X: np.ndarray, partials: Mapping[str, Any]) -> tuple[np.ndarray, list[Contributions]]:
        """(PD per row, contributions per row) from own features ``X`` and every passive party's partial logits.

        With a scorecard the contributions carry the points: base, own per-feature points and each passive
        party's subtotal (``-factor`` x its partial logit: the sum of its bins' points, computed there).
        Shared-weights model: each passive's answer is its ``Enc(X_k w_k)`` payload, decrypted here; as in
        plaintext mode a passive party contributes one number per row (its partial logit) -- per-feature reasons
        exist for this party's own features only.
        """
        z: dict[str, np.ndarray] = {}
        for p in self.passive_parties:
            if p not in partials:
                raise ProtocolError(f"scoring needs the partial scores of every passive party; missing '{p}'")
            if self.secret is not None:
                raw = partials[p]
                if not isinstance(raw, bytes | bytearray | memoryview):
                    raise ProtocolError(f"passive party '{p}' answered plaintext partial scores to a shared-weights "
                                        "model (expected its encrypted scores)")
                z[p] = decrypt_partial_scores(self.secret, bytes(raw), X.shape[0],
                                              what=f"encrypted scores of passive party '{p}'")
                continue
            v = np.asarray(partials[p], dtype=np.float64)
            if v.shape != (X.shape[0],):
                raise ProtocolError(f"passive party '{p}' returned {v.shape[0]} partial scores for {X.shape[0]} ids")
            z[p] = v
        if self.card is not None:
            return self._score_card(self.card, X, z)
        pd = combine(self.model, X, [z[p] for p in self.passive_parties])
        Z = self.model.standardizer.transform(X)
        contribs = [lr_contributions(self.model.weights, Z[k], self.feature_names, intercept=self.model.intercept,
                                     passive_partials={p: float(z[p][k]) for p in z}) for k in range(X.shape[0])]
        return pd, contribs

    def _score_card(self, card: ScorecardPart, X: np.ndarray,
                    z: Mapping[str, np.ndarray]) -> tuple[np.ndarray, list[Contributions]]:
        C = card.feature_logits(X)
        P = card.points_of_logit(C)
        logit = card.intercept + C.sum(axis=1) + sum((z[p] for p in self.passive_parties), np.zeros(X.shape[0]))
        scale = (card.scale.base_points, card.scale.base_odds, card.scale.pdo)
        names = card.feature_names
        out = []
        for k in range(X.shape[0]):
            pts = ScorecardPoints(card.base_points, {n: float(P[k, j]) for j, n in enumerate(names)},
                                  {p: float(card.points_of_logit(z[p][k])) for p in self.passive_parties}, scale)
            out.append(Contributions({n: float(C[k, j]) for j, n in enumerate(names)},
                                     {p: float(z[p][k]) for p in self.passive_parties}, card.intercept, pts))
        return sigmoid(logit), out


class OnlinePassive:
    """A passive party's side of online joint scoring: the partial logit of each asked-for row.

    With a scorecard the partial logit is the sum of this party's bins' logit contributions
    (its points subtotal is ``-factor`` times it); its points, bins and features stay here.
    """

    def __init__(self, model: PassiveModel) -> None:
        self.model = model
        self.card = model.scorecard
        self.feature_names = list(model.feature_names if self.card is None else self.card.feature_names)
        if self.card is not None:
            self.input_schema, self.accepts_missing = self.card.schema_dict(), True
        self.label_party = model.label_party
        self.ctx = (ckks.load_public(model.public_context or b"", what=f"party '{model.party}': its model's CKKS context")
                    if model.shared else None)
        self.weights = (ckks.ReplicatedWeights(self.ctx, model.encrypted_weights or [],
                                               what=f"party '{model.party}': its encrypted weights")
                        if self.ctx is not None else None)

    def answer(self, X: np.ndarray) -> np.ndarray | bytes:
        """Partial logits; a shared-weights part answers the :func:`passive_encrypted_scores` payload (bytes)."""
        if self.card is not None:
            return self.card.partial_logit(X)
        if self.ctx is not None:
            return passive_encrypted_scores(self.model, X, self.ctx, self.weights)
        return passive_partial_scores(self.model, X)


def request_scores(
    transport: Transport, passive: str, ids: Sequence[str], *, tag: str = SCORE_TAG, timeout: float | None = None,
    secret: ckks.SecretContext | None = None,
) -> np.ndarray:
    """Label side of one joint-scoring round trip: send ids, get that passive party's partial logits in id order.

    ``secret``: a shared-weights model's key; the passive then answers Enc(X_k w_k), decrypted here.
    """
    t = ScoreTags(tag)
    payload = json.dumps({"ids": list(ids)}).encode()
    transport.send(passive, t.req, payload)
    if secret is not None:
        return decrypt_partial_scores(secret, transport.recv(passive, t.resp, timeout), len(ids),
                                      what=f"party '{passive}'")
    arrays, meta = unpack_arrays(transport.recv(passive, t.resp, timeout), what=f"scores from '{passive}'")
    if meta.get("error"):
        raise DataError(f"party '{passive}' could not score: {meta['error']}")
    z = arrays.get("z")
    if z is None or z.shape != (len(ids),):
        raise ProtocolError(f"party '{passive}' returned {None if z is None else z.shape} scores for {len(ids)} ids")
    return z.astype(np.float64)


def read_score_request(payload: bytes, me: str, label: str) -> list[str]:
    """The ids of a joint-scoring request (``{"ids": [str, ...]}``); anything else is a ProtocolError."""
    what = f"party '{me}': scoring request from '{label}'"
    ids = loads_json(payload, what=what).get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ProtocolError(f"malformed {what}: 'ids' must be a list of strings")
    return ids


def serve_scores(
    transport: Transport,
    label: str,
    model: PassiveModel,
    table: Table,
    *,
    tag: str = SCORE_TAG,
    timeout: float | None = None,
) -> int:
    """Passive side of one joint-scoring round trip: answer partial logits for the ids the label party asks for."""
    t = ScoreTags(tag)
    ids = read_score_request(transport.recv(label, t.req, timeout), transport.me, label)
    index = table.index()
    missing = [i for i in ids if i not in index]
    if missing:
        msg = f"{len(missing)} requested ids are not in {table.source}"
        transport.send(label, t.resp, pack_blobs([], {"error": msg}) if model.shared else pack_arrays({}, {"error": msg}))
        raise DataError(f"party '{transport.me}': {msg} (first: {missing[0]!r})")
    rows = np.fromiter((index[i] for i in ids), dtype=np.int64, count=len(ids))
    if model.shared:
        transport.send(label, t.resp, passive_encrypted_scores(model, table.X[rows]))
        return len(ids)
    z = passive_partial_scores(model, table.X[rows]) if len(rows) else np.zeros(0)
    transport.send(label, t.resp, pack_arrays({"z": z}))
    return len(ids)


# --------------------------------------------------------------------------- fixed-point masking between passives


def _to_fixed(z: np.ndarray) -> np.ndarray:
    if np.any(np.abs(z) >= 2.0**31):
        raise ProtocolError("a partial logit exceeds the fixed-point range (|z| >= 2^31); training diverged")
    return np.round(z * _FIXED_SCALE).astype(np.int64).view(np.uint64)


def _from_fixed(q: np.ndarray) -> np.ndarray:
    return q.view(np.int64).astype(np.float64) / _FIXED_SCALE


def _prg_u64(seed: bytes, label: str, n: int) -> np.ndarray:
    """n uniform 64-bit words from SHAKE-256(seed, label): a cryptographic stream both mask holders can derive."""
    return np.frombuffer(hashlib.shake_256(seed + label.encode()).digest(8 * n), dtype="<u8").astype(np.uint64)


class _PairMasks:
    """Zero-sum masks among passive parties (pairwise seeds), so the label party only learns Σ_k z_k."""

    def __init__(self, me: str, seeds: Mapping[str, bytes]) -> None:
        self.me = me
        self.seeds = dict(seeds)

    def mask(self, label: str, n: int) -> np.ndarray:
        m = np.zeros(n, dtype=np.uint64)
        for other, seed in self.seeds.items():
            r = _prg_u64(seed, label, n)
            m = m + r if self.me < other else m - r  # uint64 arithmetic wraps mod 2^64
        return m

    def real_mask(self, label: str, n: int) -> np.ndarray:
        """The same zero-sum construction over the reals (uniform in ±_PAIR_MASK_BOUND per pair), for masks added
        to CKKS ciphertexts (shared weights), where there is no mod-2^64 ring."""
        m = np.zeros(n)
        for other, seed in self.seeds.items():
            r = ((_prg_u64(seed, label, n) >> np.uint64(11)).astype(np.float64) / 2.0**53 * 2.0 - 1.0) * _PAIR_MASK_BOUND
            m = m + r if self.me < other else m - r
        return m


def _exchange_pair_seeds(transport: Transport, passives: Sequence[str], tags: Tags, timeout: float | None) -> dict[str, bytes]:
    me = transport.me
    seeds: dict[str, bytes] = {}
    for other in passives:
        if other == me:
            continue
        if me < other:
            seeds[other] = os.urandom(32)
            transport.send(other, tags.pairseed, seeds[other])
    for other in passives:
        if other != me and other < me:
            s = transport.recv(other, tags.pairseed, timeout)
            if len(s) != 32:
                raise ProtocolError(f"party '{me}': mask seed from party '{other}' has {len(s)} bytes, expected 32")
            seeds[other] = s
    return seeds


# --------------------------------------------------------------------------- label party


def _chunk_bounds(n: int, slots: int) -> tuple[int, int]:
    """(number of ciphertexts, padded chunk length) for a batch of n rows."""
    k = max(1, -(-n // slots))
    return k, -(-n // k)


def _preconditioner(X: np.ndarray, l2: np.ndarray, enabled: bool) -> np.ndarray:
    """Inverse of this party's block of the fixed Hessian bound X^T X/(4n) + diag(l2) (Böhning).

    Computed locally from the party's own features: it removes the within-party
    correlation (e.g. six monthly bill amounts) that makes plain SGD slow, at no
    communication and no leakage.  Cross-party correlation is left to the iterations.
    """
    if not enabled:
        return np.eye(X.shape[1])
    H = X.T @ X / (4.0 * len(X)) + np.diag(np.maximum(l2, 1e-8))
    return np.linalg.inv(H)


def _full_batch_step(rate: float, passives: Sequence[str]) -> float:
    """``rate / K`` for K parties (blocks): K times the block-diagonal Hessian bound majorizes the whole Hessian,
    so a step of 1/K on preconditioned gradients never increases the loss (without momentum) -- a step of 1
    oscillates when two parties' features are correlated."""
    return rate / (1 + len(passives))


def convergence(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The run JSON's ``"convergence"`` key: per epoch ``{epoch, train_loss, val_loss}`` (``val_loss`` None without
    validation rows), what a report plots against the pooled optimum."""
    def num(v: Any) -> float | None:
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else None
    return [{"epoch": int(h["epoch"]), "train_loss": num(h.get("train_loss")), "val_loss": num(h.get("val_loss"))}
            for h in history]


def _logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def run_vertical_lr_label(
    transport: Transport,
    train: Table,
    passive_parties: Sequence[str],
    cfg: VerticalLRConfig = VerticalLRConfig(),
    *,
    test: Table | None = None,
    progress: Progress | None = None,
    out_dir: str | Path | None = None,
    report_name: str = "vertical_lr",
    checkpoint: CheckpointStore | None = None,
    resume: bool = False,
    pool: WorkerPool | None = None,
) -> LabelResult:
    """Label party's role: owns the CKKS secret key, the labels and the intercept.

    ``pool`` (default: this process's :func:`fedcredit.compute.default_pool`) encrypts each
    step's residual chunks in parallel; its workers hold only the public context.
    """
    with ExitStack() as stack:
        return _label_role(transport, train, passive_parties, cfg, test=test, progress=progress, out_dir=out_dir,
                           report_name=report_name, checkpoint=checkpoint, resume=resume,
                           pool=pool or default_pool(), stack=stack)


def _label_role(
    transport: Transport,
    train: Table,
    passive_parties: Sequence[str],
    cfg: VerticalLRConfig,
    *,
    test: Table | None,
    progress: Progress | None,
    out_dir: str | Path | None,
    report_name: str,
    checkpoint: CheckpointStore | None,
    resume: bool,
    pool: WorkerPool,
    stack: ExitStack,
) -> LabelResult:
    """Label party's role: owns the CKKS secret key, the labels and the intercept.

    ``checkpoint``: after each epoch's control message this party saves its own optimiser
    state (weights of its block + intercept, velocity, step size, best point, patience,
    history); ``resume``: agree with the passives on the last epoch all hold and continue
    after it (docs/resume.md).

    ``train``/``test`` are this party's rows already aligned to the PSI order and
    split by ids (``fedcredit.data.split_by_ids``).  With ``test`` given, the joint
    model is scored on it (one round trip per passive party) and, with ``out_dir``,
    a JSON report and ROC/KS PNG are written there.
    """
    me = transport.me
    if test is not None and len(test) == 0:
        test = None
    if train.y is None:
        raise DataError(f"party '{me}': the label party's table {train.source} has no label column")
    if len(np.unique(train.y)) < 2:
        raise DataError(f"party '{me}': labels in {train.source} are all {int(train.y[0])}; need both classes")
    passives = list(passive_parties)
    if not passives or me in passives or len(set(passives)) != len(passives):
        raise ConfigError(f"party '{me}': invalid passive party list {passives}")
    tg, to = Tags(cfg.tag_prefix), cfg.timeout
    t0 = time.perf_counter()

    ctx = ckks.new_context(cfg.poly_modulus_degree, cfg.coeff_mod_bit_sizes, cfg.scale_bits)
    flood = ckks.masked_sum_flooding(ctx, FLOOD_SIGMA_BITS)  # refuses parameters without a measured error bound
    slots = ckks.slot_count(ctx)
    n = len(train)
    fit_rows, val_rows = validation_split(n, cfg.validation_fraction, cfg.seed, train.ids)
    fit_ids = [train.ids[i] for i in fit_rows]
    if len(fit_rows) < cfg.min_batch:
        raise DataError(
            f"party '{me}': only {len(fit_rows)} aligned training rows in {train.source} after the validation split; "
            f"vertical LR needs at least min_batch={cfg.min_batch} so no gradient is computed over fewer rows"
        )
    batch = cfg.effective_batch(len(fit_rows))
    noise = dp.LabelNoise(dp.label_plan(cfg.dp, cfg.dp_releases(), "vertical-lr")) if cfg.dp is not None else None
    setup = {
        "version": PROTOCOL_VERSION,
        "config": {**cfg.public(), "batch_size": batch},
        "passives": passives,
        "n_train": n,
        "n_test": 0 if test is None else len(test),  # 0: no joint scoring at the end
        "train_digest": ids_digest(train.ids),
        "test_digest": None if test is None else ids_digest(test.ids),
    }
    pub = ckks.public_bytes(ctx)
    workers = stack.enter_context(pool.session(ckks.load_public, pub, what="vertical LR residual encryption", party=me)) \
        if pool.parallel else None
    for p in passives:
        transport.send(p, tg.setup, json.dumps(setup).encode())
        transport.send(p, tg.ctx, pub)
    dims: dict[str, int] = {}
    for p in passives:
        try:
            hello = loads_json(transport.recv(p, tg.hello, to), what=f"party '{me}': hello from '{p}'")
        except PeerAborted as e:
            raise ProtocolError(f"party '{me}': passive party '{p}' refused the job: {e.reason}") from None
        n_feat = hello.get("n_features")
        if isinstance(n_feat, bool) or not isinstance(n_feat, int) or n_feat < 0:
            raise ProtocolError(f"party '{me}': hello from '{p}' has no valid 'n_features' ({n_feat!r})")
        dims[p] = n_feat

    std = Standardizer.fit(train.X)
    X = std.transform(train.X)
    y = train.y.astype(np.float64)
    d = X.shape[1]
    XA = np.hstack([X, np.ones((n, 1))])  # last coefficient is the intercept (not penalized)
    l2v = np.r_[np.full(d, cfg.l2), 0.0]
    theta = np.zeros(d + 1)
    vel = np.zeros(d + 1)
    lr, mu = cfg.learning_rate, cfg.momentum
    counters = {"encryptions": 0, "decryptions": 0, "rotations": 0}
    tm = {"encrypt": 0.0, "decrypt": 0.0, "wait": 0.0}
    history: list[dict[str, Any]] = []
    best: tuple[float, int, np.ndarray] = (math.inf, 0, theta.copy())
    stale = 0
    steps = 0
    epochs_run = 0
    Xf, yf = XA[fit_rows], y[fit_rows]
    P = _preconditioner(Xf, l2v, cfg.precondition)
    first, stopped = 0, False
    full, calm, prev_loss = False, 0, math.inf  # full-batch phase; steps in a row with a settled training loss
    guard = math.inf  # full-batch phase: a validation loss above this means divergence
    total_epochs = cfg.max_epochs + cfg.full_batch_steps
    # shared weights: this party's share b_k of each passive block (w_k = a_k + b_k), its velocity and best point
    shared = cfg.passive_weights == "shared"
    secret = ctx if shared else None
    B = {p: np.zeros(dims[p]) for p in passives} if shared else {}
    VB = {p: np.zeros(dims[p]) for p in passives} if shared else {}
    BB = {p: np.zeros(dims[p]) for p in passives} if shared else {}
    if resume:
        if checkpoint is None:
            raise ConfigError(f"party '{me}': a resumed vertical LR run needs a checkpoint store")
        at = agree_step(transport, leader=me, parties=[me, *passives], held=checkpoint.steps(STAGE), tags=tg.resume,
                        timeout=to)
        if at:
            ck = checkpoint.load(STAGE, at)
            theta, vel, lr = ck.arrays["theta"], ck.arrays["vel"], float(ck.meta["lr"])
            best = (float(ck.meta["best_loss"]), int(ck.meta["best_epoch"]), ck.arrays["best_theta"])
            stale, steps, history = int(ck.meta["stale"]), int(ck.meta["steps"]), list(ck.meta["history"])
            first, epochs_run, stopped = at, at, bool(ck.meta["stop"])
            full, calm = bool(ck.meta.get("full", False)), int(ck.meta.get("calm", 0))
            prev_loss = float(ck.meta.get("prev_loss", math.inf))
            guard = float(ck.meta.get("guard", math.inf))
            if ck.meta.get("passive_weights", "plaintext") != cfg.passive_weights:
                raise DataError(f"party '{me}': the checkpoint of epoch {at} was saved with passive_weights = "
                                f"{ck.meta.get('passive_weights', 'plaintext')!r}, this job has {cfg.passive_weights!r}")
            for i, p in enumerate(passives if shared else []):
                B[p], VB[p], BB[p] = ck.arrays[f"b{i}"], ck.arrays[f"vb{i}"], ck.arrays[f"bb{i}"]
                if B[p].shape != (dims[p],):
                    raise DataError(f"party '{me}': the checkpoint of epoch {at} holds {B[p].shape} weight shares "
                                    f"for '{p}', which has {dims[p]} features")
            if progress:
                progress(f"resuming after epoch {at}", at, total_epochs)
    for epoch in range(first, 0 if stopped else total_epochs):
        e_lr, e_mu = (_full_batch_step(cfg.full_batch_learning_rate, passives), cfg.full_batch_momentum) if full \
            else (lr, mu)
        batches = [np.arange(len(fit_rows))] if full else epoch_batches(len(fit_rows), batch, epoch, cfg.seed, fit_ids)
        loss_sum, resid_sq = 0.0, 0.0
        for bi, rows in enumerate(batches):
            step = f"{epoch}/{bi}"
            look = theta + e_mu * vel  # Nesterov look-ahead point
            z = Xf[rows] @ look
            for p in B:  # shared weights: this party's share of each passive's look-ahead point, encrypted
                t1 = time.perf_counter()
                enc_b = ckks.encrypt_replicated(ctx, B[p] + e_mu * VB[p])
                tm["encrypt"] += time.perf_counter() - t1
                counters["encryptions"] += len(enc_b)
                transport.send(p, tg.wb(step), pack_blobs(enc_b, {"step": step}))
            t1 = time.perf_counter()
            z += _sum_partials(transport, passives, tg.z(step), len(rows), to, secret)
            if shared:
                tm["decrypt"] += time.perf_counter() - t1
            pz = sigmoid(z)
            loss_sum += _logloss(yf[rows], pz) * len(rows)
            resid = pz - yf[rows]
            resid_sq += float(resid @ resid)
            if noise is not None:  # label DP (fedcredit/dp.py): this block's step and the passives' use the noisy one
                resid = noise.noisy(resid)
            # encrypt the residual once, send the same ciphertexts to every passive party
            k, L = _chunk_bounds(len(rows), slots)
            padded = np.zeros(k * L)
            padded[: len(rows)] = resid * 2.0**RESIDUAL_SCALE_BITS
            t1 = time.perf_counter()
            cts = ckks.encrypt_chunks(ctx, padded, L, workers=workers)
            tm["encrypt"] += time.perf_counter() - t1
            counters["encryptions"] += k
            enc = pack_blobs(cts, {"step": step, "rows": len(rows), "chunk": L})
            for p in passives:
                transport.send(p, tg.r(step), enc)
            # own gradient in plaintext while the passives work
            g = Xf[rows].T @ resid / len(rows) + l2v * look
            if full and float(g @ vel) > 0:  # momentum points uphill in this block: restart it (each party its own)
                vel = np.zeros_like(vel)
            vel = e_mu * vel - e_lr * (P @ g)
            theta = theta + vel
            for p in passives:
                t1 = time.perf_counter()
                msg = transport.recv(p, tg.g(step), to)
                tm["wait"] += time.perf_counter() - t1
                t1 = time.perf_counter()
                blobs, meta = unpack_blobs(msg, what=f"gradient from '{p}'")
                if len(blobs) != dims[p] or meta.get("step") != step:
                    raise ProtocolError(f"party '{me}': party '{p}' sent {len(blobs)} gradient ciphertexts for {step}")
                sums = ckks.decrypt_sums(ctx, blobs, flood=flood, what=f"party '{me}': gradient from '{p}'")
                counters["decryptions"] += len(blobs)
                tm["decrypt"] += time.perf_counter() - t1
                if shared:  # keep the masked sums as this party's gradient share; the passive's is -its masks
                    lb = B[p] + e_mu * VB[p]
                    g_b = sums / (2.0**RESIDUAL_SCALE_BITS * len(rows)) + cfg.l2 * lb
                    VB[p] = e_mu * VB[p] - e_lr * g_b
                    B[p] = B[p] + VB[p]
                else:
                    transport.send(p, tg.gs(step), pack_arrays({"s": sums}, {"step": step}))
            steps += 1
        epochs_run = epoch + 1
        # training log-loss of the epoch: exact on all fit rows at the look-ahead point in the full-batch phase, the
        # row-weighted mean over the epoch's batches (each at its own look-ahead point) in the mini-batch phase
        train_loss = loss_sum / len(fit_rows)
        entry: dict[str, Any] = {"epoch": epoch + 1, "phase": "full_batch" if full else "mini_batch",
                                 "train_loss": train_loss}
        loss = math.nan
        if len(val_rows):  # validation at the label party: partial logits on the validation rows, current weights
            for p in B:
                enc_b = ckks.encrypt_replicated(ctx, B[p])
                counters["encryptions"] += len(enc_b)
                transport.send(p, tg.wbv(epoch), pack_blobs(enc_b, {"epoch": epoch}))
            zv = XA[val_rows] @ theta + _sum_partials(transport, passives, tg.zv(epoch), len(val_rows), to, secret)
            pv = sigmoid(zv)
            loss = _logloss(y[val_rows], pv)
            vauc = auc_ks(y[val_rows], pv)[0] if len(np.unique(y[val_rows])) == 2 else float("nan")
            entry.update(val_loss=loss, val_auc=vauc)
        history.append(entry)
        switch = False  # the mini-batch phase ends here; full-batch steps follow
        restart = False  # shared weights: every block's momentum restarts (the training loss rose)
        if full:  # converging: the validation loss only guards against divergence (twice the zero model's or the
            # mini-batch phase's best, whichever is larger: the optimum's may well be above the early-stopped one's)
            improved = bool(math.isfinite(loss) and loss <= guard) if len(val_rows) else math.isfinite(train_loss)
            # shared weights: the passives' flooding noise on the partial logits moves the measured loss by about
            # sigma * rms(p - y) / sqrt(n) per step (~5e-6 relative on the benchmark split, 5x the default tol):
            # changes below 3 of those cannot be seen, so they count as settled and never as a rise
            floor = 3.0 * _LOGIT_FLOOD * math.sqrt(resid_sq / len(fit_rows)) / math.sqrt(len(fit_rows)) \
                if shared else 0.0
            calm = calm + 1 if abs(prev_loss - train_loss) < max(cfg.tol * train_loss, floor) else 0
            restart = shared and noise is None and train_loss > prev_loss + floor  # shared blocks' momentum restart
            prev_loss = train_loss
            if noise is not None:  # label DP: the fixed schedule, so no control bit depends on a label
                improved, calm = True, 0
            if improved:
                best = (loss, epoch + 1, theta.copy())
            else:
                theta, vel = best[2].copy(), np.zeros_like(vel)
            stop = not improved or calm >= _SETTLED_STEPS or epoch + 1 == total_epochs
        else:
            if len(val_rows):
                improved = loss < best[0] - 1e-7
                if improved:
                    best, stale = (loss, epoch + 1, theta.copy()), 0
                else:  # back to the best point, slower: damps the oscillation momentum causes near the optimum
                    stale += 1
                    theta, vel, lr = best[2].copy(), np.zeros_like(vel), lr * 0.5
                warm_done = stale >= cfg.patience or epoch + 1 == cfg.max_epochs
            else:
                improved, warm_done = True, epoch + 1 == cfg.max_epochs
                best = (math.nan, epoch + 1, theta.copy())
            switch = warm_done and cfg.full_batch_steps > 0
            stop = warm_done and not switch
            if switch:  # from the best mini-batch point, without its velocity
                full, vel, calm, prev_loss = True, np.zeros_like(vel), 0, math.inf
                guard = 2.0 * max(math.log(2.0), best[0]) if math.isfinite(best[0]) else math.inf
        for p in passives:
            transport.send(p, tg.ctl(epoch), json.dumps({"improved": improved, "stop": stop, "full": switch,
                                                         **({"restart": True} if restart else {})}).encode())
        if restart:
            vel = np.zeros_like(vel)
        for p in B:  # the passive block's shares follow the same control as the passive's own (_passive_role)
            if improved:
                BB[p] = B[p].copy()
            else:
                B[p], VB[p] = BB[p].copy(), np.zeros_like(VB[p])
            if switch or restart:
                VB[p] = np.zeros_like(VB[p])
        if checkpoint is not None:  # this party's own optimiser state after the epoch
            shares = {k: v for i, p in enumerate(B) for k, v in ((f"b{i}", B[p]), (f"vb{i}", VB[p]), (f"bb{i}", BB[p]))}
            checkpoint.save(STAGE, epoch + 1, {"lr": lr, "best_loss": best[0], "best_epoch": best[1], "stale": stale,
                                               "steps": steps, "history": history, "stop": bool(stop), "full": full,
                                               "calm": calm, "prev_loss": prev_loss, "guard": guard,
                                               "passive_weights": cfg.passive_weights},
                            {"theta": theta, "vel": vel, "best_theta": best[2], **shares})
        if progress:
            h = history[-1]
            note = f"epoch {epoch + 1} ({h['phase'].replace('_', '-')}): train_loss={h['train_loss']:.5f}" + (
                f" val_loss={h['val_loss']:.5f} val_auc={h['val_auc']:.4f}" if "val_loss" in h else "")
            progress(note, epoch + 1, total_epochs)
        if stop:
            break
    _, best_epoch, theta = best
    w, b = theta[:d], float(theta[d])
    train_seconds = time.perf_counter() - t0
    for p in B:  # shared weights: the passive turns Enc(b_k) into its encrypted part Enc(a_k + b_k); b_k is forgotten
        transport.send(p, tg.wfinal, pack_blobs(ckks.encrypt_replicated(ctx, BB[p]), {}))
    B, VB, BB = {}, {}, {}
    model = LabelModel(me, list(train.feature_names), std, w, float(b), passives,
                       secret_context=ckks.secret_bytes(ctx) if shared else None)

    test_metrics = None
    scores = None
    if test is not None:
        partials = [request_scores(transport, p, test.ids, tag=tg.score, timeout=to, secret=secret) for p in passives]
        scores = combine(model, test.X, partials)
        if test.y is not None and len(np.unique(test.y)) == 2:
            auc, ks = auc_ks(test.y, scores)
            test_metrics = {"auc": auc, "ks": ks, "n": len(test)}
            if out_dir is not None:
                test_metrics = write_evaluation(
                    out_dir,
                    test.y,
                    scores,
                    name=report_name,
                    extra={
                        "model": "vertical_lr",
                        "label_party": me,
                        "passive_parties": passives,
                        "best_epoch": best_epoch,
                        "epochs_run": epochs_run,
                        "train_seconds": round(train_seconds, 3),
                        "history": history,
                        "convergence": convergence(history),
                        "config": cfg.public(),
                        **({"privacy": {"dp": noise.plan.report(epochs_run)}} if noise is not None else {}),
                    },
                )
    if out_dir is not None:
        model.save(Path(out_dir) / f"{report_name}_{me}_model.json")
    return LabelResult(model, history, best_epoch, epochs_run, steps, train_seconds, test_metrics, scores, counters, tm,
                       list(train.ids), list(test.ids) if test is not None else [],
                       {"dp": noise.plan.report(epochs_run)} if noise is not None else {})


def _sum_partials(transport: Transport, passives: Sequence[str], tag: str, n: int, timeout: float | None,
                  secret: ckks.SecretContext | None = None) -> np.ndarray:
    """Σ_k z_k from the passives (each masked so only the sum is revealed when there are several).

    ``secret`` (shared weights): each passive sends Enc(z_k + real pair masks), decrypted and summed here.
    """
    if secret is not None:
        tot = np.zeros(n)
        for p in passives:
            tot += decrypt_partial_scores(secret, transport.recv(p, tag, timeout), n,
                                          what=f"party '{transport.me}': encrypted partial logits from '{p}' ({tag})")
        return tot
    acc = np.zeros(n, dtype=np.uint64)
    for p in passives:
        arrays, meta = unpack_arrays(transport.recv(p, tag, timeout), what=f"partial logits from '{p}'")
        q = arrays.get("q")
        if q is None or q.dtype != np.dtype("<u8") or q.shape != (n,):
            raise ProtocolError(f"{transport.me}: party '{p}' sent malformed partial logits for {tag} (expected {n})")
        acc = acc + q.astype(np.uint64)
    return _from_fixed(acc)


# --------------------------------------------------------------------------- passive party


def run_vertical_lr_passive(
    transport: Transport,
    train: Table,
    label_party: str,
    cfg: VerticalLRConfig = VerticalLRConfig(),
    *,
    test: Table | None = None,
    out_dir: str | Path | None = None,
    model_name: str = "vertical_lr",
    checkpoint: CheckpointStore | None = None,
    resume: bool = False,
    pool: WorkerPool | None = None,
) -> PassiveResult:
    """Passive party's role: public CKKS context only; keeps its features and weights, sees no label.

    ``pool`` (default: :func:`fedcredit.compute.default_pool`) computes each step's encrypted
    gradient columns in parallel (one run of columns per worker).
    """
    with ExitStack() as stack:
        return _passive_role(transport, train, label_party, cfg, test=test, out_dir=out_dir, model_name=model_name,
                             checkpoint=checkpoint, resume=resume, pool=pool or default_pool(), stack=stack)


def _passive_role(
    transport: Transport,
    train: Table,
    label_party: str,
    cfg: VerticalLRConfig,
    *,
    test: Table | None,
    out_dir: str | Path | None,
    model_name: str,
    checkpoint: CheckpointStore | None,
    resume: bool,
    pool: WorkerPool,
    stack: ExitStack,
) -> PassiveResult:
    """Passive party's role: public CKKS context only; keeps its features and weights, sees no label.

    ``checkpoint``/``resume``: as the label party's — this party saves only its own block's
    weights, velocity, best point and step size after each epoch.

    Hyper-parameters come from the label party's setup message; this party's own
    choices are ``mask_bound`` (how strongly it masks what it sends for decryption).
    """
    me = transport.me
    tg, to = Tags(cfg.tag_prefix), cfg.timeout
    setup = loads_json(transport.recv(label_party, tg.setup, to), what=f"party '{me}': setup from '{label_party}'")
    ctx_raw = transport.recv(label_party, tg.ctx, to)
    error = None
    try:
        ctx = ckks.load_public(ctx_raw, what="the CKKS context sent by the label party")
    except SecurityError as e:  # answered to the label party like every other refusal below
        error = str(e)
    if error is not None:
        pass
    elif setup.get("version") != PROTOCOL_VERSION:
        error = f"protocol version {setup.get('version')} (this party speaks {PROTOCOL_VERSION})"
    elif not isinstance(setup.get("passives"), list) or not isinstance(setup.get("config"), dict):
        error = f"malformed setup from '{label_party}': 'passives' must be a list and 'config' an object"
    elif me not in setup.get("passives", []):
        error = f"'{me}' is not among the passive parties {setup.get('passives')} announced by '{label_party}'"
    elif setup.get("n_train") != len(train) or setup.get("train_digest") != ids_digest(train.ids):
        error = f"training rows are not aligned: label party has {setup.get('n_train')}, '{me}' has {len(train)} (or different ids/order)"
    elif setup.get("n_test") and (test is None or setup.get("test_digest") != ids_digest(test.ids)):
        error = "test rows are not aligned with the label party's"
    if error is None:  # the label party's hyper-parameters, through the same schema as a job file's
        try:
            pc = VerticalLRConfig.from_dict({**(setup.get("config") or {}), "min_batch": cfg.min_batch}).public()
        except ConfigError as e:
            error = f"the parameters announced by '{label_party}' are invalid: {e}"
    if error:
        transport.abort(error)  # the label party stops waiting for our hello, and learns why
        raise ProtocolError(f"party '{me}': {error}")
    transport.send(label_party, tg.hello, json.dumps({"n_features": train.n_features}).encode())
    workers = stack.enter_context(pool.session(ckks.load_public, ctx_raw, what="vertical LR gradient products", party=me)) \
        if pool.parallel and train.n_features > 1 else None

    lr, mu, l2 = float(pc["learning_rate"]), float(pc["momentum"]), float(pc["l2"])
    val_fraction, seed = float(pc["validation_fraction"]), int(pc["seed"])
    precondition = bool(pc.get("precondition", False))
    fb_lr, fb_mu = _full_batch_step(float(pc["full_batch_learning_rate"]), setup["passives"]), float(pc["full_batch_momentum"])
    total_epochs = int(pc["max_epochs"]) + int(pc["full_batch_steps"])
    full = False  # the label party's ctl switches every party to full-batch steps at once
    passives = [str(x) for x in setup["passives"]]
    masks = _PairMasks(me, _exchange_pair_seeds(transport, passives, tg, to)) if len(passives) > 1 else None

    std = Standardizer.fit(train.X)
    X = std.transform(train.X)
    d = X.shape[1]
    w = np.zeros(d)
    v = np.zeros(d)
    best_w = w.copy()
    fit_rows, val_rows = validation_split(len(train), val_fraction, seed, train.ids)
    fit_ids = [train.ids[i] for i in fit_rows]
    Xf = X[fit_rows]
    P = _preconditioner(Xf, np.full(d, l2), precondition)
    # shared weights: w, v, best_w below are this party's SHARES a_k (w_k = a_k + b_k, b_k at the label party), and
    # the preconditioner becomes a change of basis X' = X C (C Cᵀ = P): both shares then take plain gradient steps on
    # w' (w = C w'), which is what makes the update linear in the shares; l2 applies to w' (docs/vertical_lr.md)
    shared = pc.get("passive_weights", "plaintext") == "shared"
    basis = np.linalg.cholesky(P) if shared else None
    if basis is not None:
        X = X @ basis
        Xf = X[fit_rows]
        P = np.eye(d)
    Xcols = np.asfortranarray(Xf)
    counters = {"plain_multiplications": 0, "rotations": 0}
    tm = {"he_gradient": 0.0, "wait": 0.0}
    steps = 0
    epochs_run = 0
    first, stopped = 0, False
    if resume:
        if checkpoint is None:
            raise ProtocolError(f"party '{me}': a resumed vertical LR run needs a checkpoint store")
        at = agree_step(transport, leader=label_party, parties=[label_party, me], held=checkpoint.steps(STAGE),
                        tags=tg.resume, timeout=to)
        if at:
            ck = checkpoint.load(STAGE, at)
            w, v, best_w, lr = ck.arrays["w"], ck.arrays["v"], ck.arrays["best_w"], float(ck.meta["lr"])
            if ck.meta.get("passive_weights", "plaintext") != pc.get("passive_weights", "plaintext"):
                raise DataError(f"party '{me}': the checkpoint of epoch {at} was saved with passive_weights = "
                                f"{ck.meta.get('passive_weights', 'plaintext')!r}, this job has "
                                f"{pc.get('passive_weights')!r}")
            if w.shape != (d,):
                raise DataError(f"party '{me}': the checkpoint of epoch {at} holds {w.shape} weights, "
                                f"this table has {d} features")
            first, epochs_run, steps, stopped = at, at, int(ck.meta["steps"]), bool(ck.meta["stop"])
            full = bool(ck.meta.get("full", False))
    for epoch in range(first, 0 if stopped else total_epochs):
        e_lr, e_mu = (fb_lr, fb_mu) if full else (lr, mu)
        batches = ([np.arange(len(fit_rows))] if full else
                   epoch_batches(len(fit_rows), int(pc["batch_size"]), epoch, int(pc["seed"]), fit_ids))
        for bi, rows in enumerate(batches):
            step = f"{epoch}/{bi}"
            wl = w + e_mu * v
            if shared:  # Enc(X (a + b)) from the label party's Enc(b) and this party's share a (look-ahead points)
                enc_b = _recv_weights(transport, label_party, tg.wb(step), d, to)
                t1 = time.perf_counter()
                k = _send_encrypted_partial(transport, label_party, tg.z(step), ctx, enc_b, wl, Xf[rows], masks)
                counters["plain_multiplications"] += d * k
                tm["he_gradient"] += time.perf_counter() - t1
            else:
                _send_partial(transport, label_party, tg.z(step), Xf[rows] @ wl, masks)
            t1 = time.perf_counter()
            msg = transport.recv(label_party, tg.r(step), to)
            tm["wait"] += time.perf_counter() - t1
            t1 = time.perf_counter()
            blobs, meta = unpack_blobs(msg, what="encrypted residual")
            if meta.get("step") != step or meta.get("rows") != len(rows):
                raise ProtocolError(f"party '{me}': encrypted residual out of step (expected {step}, {len(rows)} rows)")
            L = int(meta["chunk"])
            if len(blobs) * L < len(rows) or (len(blobs) - 1) * L >= len(rows):
                raise ProtocolError(f"party '{me}': residual chunking {len(blobs)}x{L} does not fit {len(rows)} rows")
            Xb = np.zeros((len(blobs) * L, d))
            Xb[: len(rows)] = Xcols[rows]
            col_masks = _uniform_mask(d * L, cfg.mask_bound * 2.0**RESIDUAL_SCALE_BITS).reshape(d, L)  # known only here
            mask_sums = col_masks.sum(axis=1)
            out = ckks.masked_column_products(
                ctx, blobs, Xb, col_masks, what=f"party '{me}': residual ciphertext from '{label_party}'", workers=workers
            )
            counters["plain_multiplications"] += d * len(blobs)
            tm["he_gradient"] += time.perf_counter() - t1
            transport.send(label_party, tg.g(step), pack_blobs(out, {"step": step}))
            if shared:  # this party's gradient share: minus its own masks (the label party keeps the masked sums)
                # no momentum restart for this block: g·v needs both shares (the label party's guard still applies)
                g = -mask_sums / (2.0**RESIDUAL_SCALE_BITS * len(rows)) + l2 * wl
            else:
                arrays, meta = unpack_arrays(transport.recv(label_party, tg.gs(step), to), what="gradient sums")
                s = arrays.get("s")
                if s is None or s.shape != (d,) or meta.get("step") != step:
                    raise ProtocolError(f"party '{me}': malformed decrypted gradient sums for step {step}")
                g = (s - mask_sums) / (2.0**RESIDUAL_SCALE_BITS * len(rows)) + l2 * wl
                if full and float(g @ v) > 0:  # this block's own momentum restart: nothing crosses for it
                    v = np.zeros_like(v)
            v = e_mu * v - e_lr * (P @ g)
            w = w + v
            steps += 1
        epochs_run = epoch + 1
        if len(val_rows) and shared:
            enc_b = _recv_weights(transport, label_party, tg.wbv(epoch), d, to)
            _send_encrypted_partial(transport, label_party, tg.zv(epoch), ctx, enc_b, w, X[val_rows], masks)
        elif len(val_rows):
            _send_partial(transport, label_party, tg.zv(epoch), X[val_rows] @ w, masks)
        ctl = loads_json(transport.recv(label_party, tg.ctl(epoch), to), what=f"party '{me}': control from '{label_party}'")
        if ctl.get("improved"):
            best_w = w.copy()
        elif full:  # diverged (the label party's guard): back to the last accepted point; the run stops
            w, v = best_w.copy(), np.zeros_like(v)
        else:  # the label party's instruction: back to the best point with half the step
            w, v, lr = best_w.copy(), np.zeros_like(v), lr * 0.5
        if ctl.get("full") and not full:  # full-batch steps from here, from the best point without its velocity
            full, v = True, np.zeros_like(v)
        if ctl.get("restart") and shared:  # shared weights: the training loss rose, every block restarts momentum
            v = np.zeros_like(v)
        if checkpoint is not None:  # this party's own block only
            checkpoint.save(STAGE, epoch + 1, {"lr": lr, "steps": steps, "stop": bool(ctl.get("stop")), "full": full,
                                               "passive_weights": pc.get("passive_weights", "plaintext")},
                            {"w": w, "v": v, "best_w": best_w})
        if ctl.get("stop"):
            break
    if shared:  # the part kept: Enc(w') = Enc(b) + a under the label party's key; the share a is dropped here
        enc_w = ckks.shift_replicated(ctx, _recv_weights(transport, label_party, tg.wfinal, d, to), best_w,
                                      what=f"party '{me}': the final Enc(b) from '{label_party}'")
        w = v = best_w = np.full(d, np.nan)
        model = PassiveModel(me, list(train.feature_names), std, np.full(d, np.nan), label_party,
                             encrypted_weights=enc_w, public_context=ctx_raw, basis=basis)
    else:
        model = PassiveModel(me, list(train.feature_names), std, best_w, label_party)
    if setup["n_test"] and test is not None:
        serve_scores(transport, label_party, model, test, tag=tg.score, timeout=to)
    if out_dir is not None:
        model.save(Path(out_dir) / f"{model_name}_{me}_model.json")
    return PassiveResult(model, epochs_run, steps, counters, tm)


def _uniform_mask(n: int, bound: float) -> np.ndarray:
    """Uniform reals in [-bound, bound) from the OS CSPRNG (the label party must not predict them)."""
    u = np.frombuffer(os.urandom(8 * n), dtype="<u8") >> np.uint64(11)  # 53 random bits
    return (u.astype(np.float64) / 2.0**53 * 2.0 - 1.0) * bound


def _recv_weights(transport: Transport, label: str, tag: str, d: int, timeout: float | None) -> list[bytes]:
    """Shared weights: the label party's Enc(b) (one replicated ciphertext per own column)."""
    blobs, meta = unpack_blobs(transport.recv(label, tag, timeout), what=f"encrypted weight shares ({tag})")
    if len(blobs) != d:
        raise ProtocolError(f"party '{transport.me}': {len(blobs)} encrypted weight shares for {tag}, expected {d}")
    return blobs


def _send_encrypted_partial(transport: Transport, label: str, tag: str, ctx: ckks.PublicContext, enc_b: list[bytes],
                            a: np.ndarray, X: np.ndarray, masks: _PairMasks | None) -> int:
    """Shared weights: Enc(X (a + b) + pair masks + flooding) from Enc(b) and this party's share a; returns the ct count."""
    add = ckks.gaussian(len(X), _LOGIT_FLOOD)
    if masks is not None:
        add = add + masks.real_mask(tag, len(X))
    cts = ckks.encrypted_dot_chunks(ctx, enc_b, X, add, shift=a, what=f"party '{transport.me}': Enc(b) of {tag}")
    transport.send(label, tag, pack_blobs(cts, {"rows": len(X)}))
    return len(cts)


def _send_partial(transport: Transport, label: str, tag: str, z: np.ndarray, masks: _PairMasks | None) -> None:
    q = _to_fixed(z)
    if masks is not None:
        q = q + masks.mask(tag, len(q))
    transport.send(label, tag, pack_arrays({"q": q}))
