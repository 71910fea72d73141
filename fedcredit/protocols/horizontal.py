"""Encrypted horizontal federation (FedAvg / FedProx) between banks with one feature schema.

Roles, side by side in this module:

* **party** (:func:`party_handler`) — one handler per bank, called once per
  coordinator message; every piece of state between calls (the shared CKKS secret
  context, the federated standardization, the job) lives in the party's
  :class:`~fedcredit.channel.StateStore`, because in deployment each call runs in a
  fresh process.
* **coordinator** (:func:`run_coordinator`) — drives the rounds over a
  :class:`~fedcredit.channel.PartyChannel`.  It holds only the *public* CKKS
  context: it sums ciphertexts and forwards sealed envelopes it cannot open.

Message flow (each line is one coordinator->parties hop; a hop costs 3-6 s in
Flower deployment mode, so steps are merged wherever the data dependencies allow):

1. ``setup``         -> all:   job spec.  Each party validates its data and replies its
   public schema (feature names + fingerprint) and its secure-aggregation material: mask
   public keys per aggregation and, sealed to each peer, those keys and the peer's Shamir
   shares of its mask keys and self-mask seeds.  The key holder also creates the
   CKKS context and replies the public context and one envelope per other party
   (the secret context sealed to that party's X25519 key from its certificate).
2. ``install_key``   -> all:   the sealed envelope (not to the holder) and the peers' sealed
   bundles.  The party opens them (authenticated), stores the secret context and the shares,
   replies its *masked* encrypted standardization sums ``[sum x, sum x^2, n]``.

   Every aggregated vector is masked (crypto/secagg.py): Enc((limbs + masks) mod M), so one
   bank's ciphertext alone decrypts to noise even with the shared key; when dropouts are
   allowed (``min_parties`` < n) an ``unmask`` hop after each aggregation collects the
   survivors' shares and the coordinator removes the remaining masks homomorphically.  When a
   bank dropped out of that aggregation, an ``attest`` hop comes first: each survivor commits to
   the survivor set it was told and seals it to every other survivor; a bank reveals mask-key
   shares only when a majority of the banks (``view_quorum``) attested the same set.  With
   dropouts allowed each masked vector travels with the size and digest of the member list it was
   masked among, sealed to each other member, and a bank reveals nothing unless every survivor's list is its own.
3. ``fit`` (r=1..R)  -> all:   round 1 carries the summed statistics, later rounds the
   summed previous updates.  The party decrypts, derives the global model
   (``sum_k n_k w_k / sum_k n_k`` -- the total weight rides in the same
   ciphertext), trains locally (FedProx: proximal term to the global model), and
   replies ``encrypt([n_k * w_k, n_k])`` plus public test metrics of the global model.
   Newton rounds (``lr`` family, after the FedAvg rounds): the party derives the point to
   evaluate from the summed previous reply (:func:`newton_step`) and replies
   ``encrypt([n_k g_k, n_k H_k, n_k loss_k, n_k])`` at that point (:func:`newton_sums`).
4. ``finalize``      -> all:   the last sum.  The party saves the global model and the
   standardization, evaluates on its own test table, replies public AUC/KS/n_test and
   an *encrypted* score histogram.
5. ``global_metrics`` -> one party: the summed histogram; replies the global AUC/KS only.
6. ``end``           -> parties that may still hold the key, only when the run failed or a
   party was dropped: each deletes the job's CKKS secret context from its state.

Job secret keys: every bank keeps the run's CKKS secret context in its state store between
calls and deletes it when its part of the job ends -- at ``finalize`` (all but the party
named to decrypt the global metrics), after ``global_metrics``, when one of its own calls
fails, or on ``end``.  No deployed model needs it (the global model is plaintext per bank).

Hops: R + 4, or 2R + 6 with dropouts allowed, plus one ``attest`` per aggregation a bank dropped out of
(+1 ``end`` after a failure).  Every payload is ``fedcredit.codec`` framing: a JSON header plus named binary
blobs (no pickle).  The leakage table (what each role sees in plaintext) is in
``docs/horizontal.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from crypto import ckks, secagg
from crypto.envelope import open_sealed, seal
from crypto.signing import canonical_json
from fedcredit import codec, dp, metrics
from fedcredit.channel import Handler, PartyChannel, StateStore
from fedcredit.data import OneHotEncoding, Table, schema_fingerprint
from fedcredit.errors import (
    ConfigError,
    ConsistencyCheckFailed,
    DataError,
    FedCreditError,
    ProtocolError,
    SecurityError,
)
from fedcredit.models import Model, make_model, save_model
from fedcredit.params import HorizontalJob

log = logging.getLogger("fedcredit.horizontal")

PROTOCOL = "horizontal/1"
Progress = Callable[[dict[str, Any]], None]

# --------------------------------------------------------------------------- job

# Tuned on the three-bank UCI split (docs/horizontal.md): 10 rounds reach the pooled
# model's AUC, and hops are what cost time in deployment, so fewer rounds with more
# local work per round.
# --------------------------------------------------------------------------- wire format

def encode_message(header: Mapping[str, Any], blobs: Mapping[str, bytes] | None = None) -> bytes:
    """A horizontal message: JSON header + named binary blobs (ciphertexts, envelopes), framed by fedcredit.codec."""
    return codec.pack(header, None, blobs)


def decode_message(data: bytes, what: str = "message") -> tuple[dict[str, Any], dict[str, bytes]]:
    """Inverse of :func:`encode_message`; malformed input is a ProtocolError naming ``what``."""
    header, _, blobs = codec.unpack(data, what=f"horizontal {what}")
    return header, blobs


# --------------------------------------------------------------------------- exact encrypted sums

@dataclass(frozen=True)
class ExactSpec:
    """Fixed-point layout of exact sums: ``limbs`` integer limbs of ``limb_bits`` at a resolution of 2**-frac_bits."""

    frac_bits: int
    limb_bits: int
    limbs: int

    @property
    def int_bits(self) -> int:
        return self.limbs * self.limb_bits - self.frac_bits


VALUES = ExactSpec(40, 24, 6)  # |v| < 2**104 at a resolution of 2**-40 (statistics, updates, Newton sums)


def value_spec(plan: secagg.Plan) -> ExactSpec:
    """Statistics/updates/Newton sums: 144 bits (|v| < 2**104, resolution 2**-40) in the plan's limbs."""
    return ExactSpec(40, plan.limb_bits, -(-144 // plan.limb_bits))


def count_spec(plan: secagg.Plan) -> ExactSpec:
    """Histogram counts: integers below 2**48."""
    return ExactSpec(0, plan.limb_bits, -(-48 // plan.limb_bits))


def encode_exact(v: np.ndarray, spec: ExactSpec = VALUES) -> np.ndarray:
    """Split each value into integer limbs so CKKS sums of them are exact (and maskable mod M).

    CKKS error is relative to the *largest* slot of a ciphertext (~1e-15 of it), so a
    sum of squared bill amounts (~1e14) next to a row count would drown the count.
    Limbs are integers below 2**limb_bits; summed over parties and decrypted they round back
    exactly, whatever the magnitudes of the data.  Layout: limb-major, ``spec.limbs * len(v)``.
    """
    v = np.asarray(v, dtype=np.float64).ravel()
    r = np.round(np.abs(v) * 2.0**spec.frac_bits)
    top = 2.0 ** (spec.limbs * spec.limb_bits)
    if np.any(r >= top):
        i = int(np.argmax(r >= top))
        raise DataError(f"statistic #{i} ({v[i]:.3g}) is too large for exact encrypted sums "
                        f"(|v| < 2**{spec.int_bits})")
    sign = np.sign(v)
    out = np.empty((spec.limbs, v.shape[0]))
    for k in reversed(range(spec.limbs)):
        base = 2.0 ** (spec.limb_bits * k)
        d = np.floor(r / base)
        r = r - d * base
        out[k] = d * sign
    return out.ravel()


def decode_exact(enc: np.ndarray, n: int, spec: ExactSpec = VALUES) -> np.ndarray:
    limbs = np.rint(np.asarray(enc, dtype=np.float64)).reshape(spec.limbs, n)
    scale = 2.0 ** (spec.limb_bits * np.arange(spec.limbs) - spec.frac_bits)
    return (limbs * scale[:, None]).sum(axis=0)


# --------------------------------------------------------------------------- secure aggregation (crypto/secagg.py)

STATS_TAG: Final = "stats"
HIST_TAG: Final = "hist"


def secagg_tags(job: HorizontalJob) -> list[str]:
    """Every vector a run aggregates, in order: each gets its own mask keys and self-mask seeds."""
    return [STATS_TAG, *[f"fit-{r}" for r in range(1, job.total_rounds + 1)], HIST_TAG]


def secagg_plan(job: HorizontalJob) -> secagg.Plan:
    """Limb width and mask modulus for the job's parties and CKKS parameters (identical at every role).

    The exact range of a slot: the data primes (all but the last, special one) less the scale,
    less 2 bits of margin (measured: N=4096, [40, 20, 40], scale 2**20 decodes |v| < 2**42)."""
    bits = list(job.ckks_coeff_mod_bit_sizes)
    data_bits = sum(bits[:-1]) if len(bits) > 1 else bits[0]
    return secagg.plan(len(job.parties), data_bits - job.ckks_scale_bits - 2)


def secagg_context(job: HorizontalJob, tag: str) -> bytes:
    return f"fedcredit/{PROTOCOL}/{job.run_id}/{tag}".encode()


# --------------------------------------------------------------------------- shared math


def fit_seed(job: HorizontalJob, round_idx: int, party: str) -> int:
    """Per-(run seed, round, party) training seed: reproducible, different at every party."""
    h = hashlib.sha256(f"{job.seed}/{round_idx}/{party}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def build_model(job: HorizontalJob, d: int) -> Model:
    """The round-0 global model: a pure function of the job, identical at every party."""
    return make_model(job.family, d, seed=job.seed, hidden=job.hidden, l2=job.l2)


def local_stats(X: np.ndarray) -> np.ndarray:
    """``[sum x_j..., sum x_j^2..., n]`` for federated standardization."""
    return np.concatenate([X.sum(axis=0), (X * X).sum(axis=0), [float(X.shape[0])]])


def standardizer_from_sums(sums: np.ndarray, d: int, standardize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Global mean and std from summed statistics (std of a constant feature is taken as 1)."""
    if not standardize:
        return np.zeros(d), np.ones(d)
    s1, s2, n = sums[:d], sums[d : 2 * d], float(sums[2 * d])
    if n <= 0:
        raise ProtocolError(f"federated statistics report {n} rows in total")
    mean = s1 / n
    var = np.maximum(s2 / n - mean * mean, 0.0)
    std = np.sqrt(var)
    std[std < 1e-12 * np.maximum(1.0, np.abs(mean))] = 1.0
    return mean, std


def local_update(
    job: HorizontalJob, global_flat: np.ndarray, X: np.ndarray, y: np.ndarray, round_idx: int, party: str
) -> np.ndarray:
    """One party's local training from the global model; returns its new flat parameters."""
    model = build_model(job, X.shape[1])
    model.set_flat(global_flat)
    model.fit_local(
        X,
        y,
        epochs=job.local_epochs,
        lr=job.lr,
        batch_size=job.batch_size,
        prox_mu=job.mu,
        global_flat=global_flat,
        seed=fit_seed(job, round_idx, party),
    )
    return model.get_flat()


def local_only_scores(job: HorizontalJob, train: Table, test: Table) -> np.ndarray:
    """A bank's local-only baseline for its report: the federation's model and optimiser on its own rows
    (its own standardisation, ``rounds x local_epochs`` epochs), scored on its test rows."""
    assert train.y is not None
    mean, std = standardizer_from_sums(local_stats(train.X), train.n_features, job.standardize)
    model = build_model(job, train.n_features)
    model.fit_local((train.X - mean) / std, train.y, epochs=job.rounds * job.local_epochs, lr=job.lr,
                    batch_size=job.batch_size, seed=job.seed)
    return model.predict_proba((test.X - mean) / std)

# --------------------------------------------------------------------------- Newton rounds (lr family)

_NEWTON_MIN_DAMPING = 1e-3  # the damping a rejected step starts from (then x4 per rejection)
_NEWTON_LOSS_SLACK = 1e-9  # a step is accepted if the pooled loss did not rise by more (CKKS noise is ~1e-7 of n)


def newton_sums(theta: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One bank's ``[Σ g, upper triangle of Σ H, Σ loss, n]`` of the log-loss at ``theta`` (``[w..., b]``).

    Unregularized sums over the bank's standardized rows: summed over banks under CKKS and
    divided by the total ``n`` they are the pooled mean gradient, Hessian and loss, so the
    Newton step every bank takes is the pooled data's, whatever the banks' sizes."""
    Za = np.hstack([np.asarray(X, dtype=np.float64), np.ones((X.shape[0], 1))])
    p = np.clip(1.0 / (1.0 + np.exp(-(Za @ theta))), 1e-12, 1 - 1e-12)
    g = Za.T @ (p - y)
    H = (Za * (p * (1 - p))[:, None]).T @ Za
    loss = -float(np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return np.concatenate([g, H[np.triu_indices(Za.shape[1])], [loss, float(X.shape[0])]])


def newton_sums_length(n_params: int) -> int:
    return n_params + n_params * (n_params + 1) // 2 + 2


@dataclass
class NewtonState:
    """Where the Newton rounds stand, identical at every bank (a function of the decrypted sums only).

    ``trial`` is the point this round evaluates; ``best`` the last accepted point with its
    pooled objective, gradient and Hessian; ``damping`` grows when a step raised the loss."""

    trial: np.ndarray
    best: np.ndarray | None = None
    best_loss: float = math.inf
    best_grad: np.ndarray | None = None
    best_hess: np.ndarray | None = None
    damping: float = 0.0
    accepted: int = 0
    rejected: int = 0
    losses: list[float] = field(default_factory=list)  # pooled training log-loss of each evaluated point, in order

    def to_bytes(self) -> bytes:
        def arr(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else [float(x) for x in np.ravel(a)]
        return json.dumps({"trial": arr(self.trial), "best": arr(self.best), "best_loss": self.best_loss,
                           "best_grad": arr(self.best_grad), "best_hess": arr(self.best_hess),
                           "damping": self.damping, "accepted": self.accepted, "rejected": self.rejected,
                           "losses": self.losses}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> NewtonState:
        d = json.loads(raw)
        k = len(d["trial"])

        def arr(v: list[float] | None, shape: tuple[int, ...]) -> np.ndarray | None:
            return None if v is None else np.asarray(v, dtype=np.float64).reshape(shape)
        return cls(trial=np.asarray(d["trial"], dtype=np.float64), best=arr(d["best"], (k,)),
                   best_loss=float(d["best_loss"]), best_grad=arr(d["best_grad"], (k,)),
                   best_hess=arr(d["best_hess"], (k, k)), damping=float(d["damping"]),
                   accepted=int(d["accepted"]), rejected=int(d["rejected"]),
                   losses=[float(x) for x in d.get("losses", [])])


def newton_step(state: NewtonState, sums: np.ndarray, l2: float) -> NewtonState:
    """The next state from the pooled sums at ``state.trial``: accept the trial if the pooled objective
    did not rise (then less damping), else go back to the best point with more damping; step from there.

    Objective = pooled mean log-loss + l2/2·|w|² (intercept not penalized), the one sklearn's
    ``LogisticRegression(C = 1/(l2·n))`` minimizes.  Levenberg–Marquardt damping makes a step
    that overshoots on heavy-tailed rows (where the Hessian is far from the loss's curvature
    one step away) shorter instead of divergent; no line-search round is needed because
    each round evaluates the loss at the point it also differentiates."""
    k = state.trial.shape[0]
    if sums.shape != (newton_sums_length(k),):
        raise ProtocolError(f"Newton sums have {sums.shape[0]} values; a model of {k} parameters needs "
                            f"{newton_sums_length(k)}")
    n = float(sums[-1])
    if not n > 0.5:
        raise ProtocolError(f"Newton sums report {n:.3g} rows in total; expected >= 1")
    reg = np.r_[np.full(k - 1, l2), 0.0]
    t = state.trial
    grad = sums[:k] / n + reg * t
    H = np.zeros((k, k))
    H[np.triu_indices(k)] = sums[k : k + k * (k + 1) // 2] / n
    H = H + np.triu(H, 1).T + np.diag(reg)
    loss = float(sums[-2]) / n + 0.5 * l2 * float(t[:-1] @ t[:-1])
    out = NewtonState(trial=t, best=state.best, best_loss=state.best_loss, best_grad=state.best_grad,
                      best_hess=state.best_hess, damping=state.damping, accepted=state.accepted,
                      rejected=state.rejected, losses=[*state.losses, float(sums[-2]) / n])
    if not math.isfinite(loss):
        raise ProtocolError("Newton sums hold a non-finite loss")
    if state.best is None or loss <= state.best_loss + _NEWTON_LOSS_SLACK:
        out.best, out.best_loss, out.best_grad, out.best_hess = t.copy(), loss, grad, H
        out.damping, out.accepted = state.damping / 4.0 if state.damping > _NEWTON_MIN_DAMPING else 0.0, state.accepted + 1
    else:
        out.damping, out.rejected = max(4.0 * state.damping, _NEWTON_MIN_DAMPING), state.rejected + 1
    assert out.best is not None and out.best_grad is not None and out.best_hess is not None
    A = out.best_hess + out.damping * np.eye(k) + 1e-12 * np.eye(k)
    out.trial = out.best - np.linalg.solve(A, out.best_grad)
    return out


# --------------------------------------------------------------------------- party role


@dataclass
class PartyEnv:
    """What a bank's party process knows locally (never sent anywhere as such).

    ``train``/``test`` are the bank's tables (the party runtime loads them), or
    zero-arg callables returning them: in a deployment every coordinator call runs in
    a fresh process, so a table is loaded only by a method that needs it, at most once
    per process.  ``peers`` maps other parties' names to their envelope public keys,
    taken from their CA-verified certificates.  ``tap`` (audit/tests) sees every
    plaintext vector right before it is encrypted.
    """

    name: str
    envelope_private: X25519PrivateKey
    peers: Mapping[str, X25519PublicKey]
    train: Table | Callable[[], Table]
    test: Table | Callable[[], Table] | None = None
    output_dir: Path = Path("runs")
    tap: Callable[[str, np.ndarray], None] | None = None


class Method:
    """Every coordinator -> party call of the horizontal protocol, declared once for both roles.

    The coordinator sends each with :meth:`_Coordinator.call`; :func:`party_handler`
    dispatches exactly these to the :class:`_Party` method of the same name.  Each party's
    reply is ``{"ok": true, ...}`` or ``{"ok": false, "kind", "error"}``.
    """

    SETUP: Final = "setup"  # coordinator -> all: job spec; replies schema, secagg keys + sealed shares (holder: ctx)
    INSTALL_KEY: Final = "install_key"  # coordinator -> all: key envelope (not the holder), peers' secagg bundles;
    # replies masked stats
    FIT: Final = "fit"  # coordinator -> all: summed stats (r=1) or summed updates; replies masked update + metrics
    ATTEST: Final = "attest"  # coordinator -> survivors of an aggregation a bank dropped out of: who sent, who
    # dropped; replies that view sealed to each other survivor (the consistency check, before any share is revealed)
    UNMASK: Final = "unmask"  # coordinator -> survivors of one aggregation: who sent, who dropped (+ the others'
    # attestations of that view when a bank dropped); replies shares
    FINALIZE: Final = "finalize"  # coordinator -> all: last sum, metrics_party; replies metrics + masked histogram
    GLOBAL_METRICS: Final = "global_metrics"  # coordinator -> metrics_party: summed histogram; replies AUC/KS
    END: Final = "end"  # coordinator -> parties that may hold the key (after failure/drop): delete it


_METHODS = (Method.SETUP, Method.INSTALL_KEY, Method.FIT, Method.ATTEST, Method.UNMASK, Method.FINALIZE,
            Method.GLOBAL_METRICS, Method.END)


def _safe(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", run_id)


class _Party:
    """The party role; methods take (header, blobs, state) and return (header, blobs)."""

    def __init__(self, env: PartyEnv) -> None:
        self.env = env
        self._tables: dict[str, Table] = {}

    # -- state helpers
    def _key(self, run_id: str, what: str) -> str:
        return f"hz-{_safe(run_id)}-{what}"

    def _job(self, header: Mapping[str, Any], state: StateStore) -> HorizontalJob:
        run_id = str(header.get("run_id", ""))
        raw = state.get(self._key(run_id, "job")) if run_id else None
        if raw is None:
            raise ProtocolError(f"party '{self.env.name}': no 'setup' for run '{run_id}' in this party's state")
        return HorizontalJob.from_dict(json.loads(raw))

    def _ctx(self, job: HorizontalJob, state: StateStore) -> ckks.SecretContext:
        raw = state.get(self._key(job.run_id, "ckks"))
        if raw is None:
            raise ProtocolError(f"party '{self.env.name}': no CKKS key installed for run '{job.run_id}'")
        return ckks.load_secret(raw, what=f"party '{self.env.name}': stored CKKS context")

    def _drop_key(self, run_id: str, state: StateStore) -> None:
        """The job's CKKS secret context leaves this party's state (its part of the job is over)."""
        state.delete(self._key(run_id, "ckks"))

    def _drop_secagg(self, run_id: str, state: StateStore) -> None:
        """This bank's mask keys, self-mask seeds and the shares it holds of others' leave its state."""
        raw = state.get(self._key(run_id, "job"))
        if raw is None:
            return
        job = HorizontalJob.from_dict(json.loads(raw))
        for k in ("sa-own", *[f"sa-from-{p}" for p in job.parties],
                  *[f"sa-{w}-{t}" for t in secagg_tags(job) for w in ("members", "revealed", "view")]):
            state.delete(self._key(run_id, k))

    # -- secure aggregation
    def _sa_own(self, job: HorizontalJob, state: StateStore) -> dict[str, secagg.TagSecrets]:
        raw = state.get(self._key(job.run_id, "sa-own"))
        if raw is None:
            raise ProtocolError(f"party '{self.env.name}': no secure-aggregation keys for run '{job.run_id}' "
                                "(its part of the run is over, or 'setup' did not reach it)")
        _, b = decode_message(raw, "stored secure-aggregation keys")
        return {t: secagg.TagSecrets(b[f"s:{t}"], b[f"b:{t}"]) for t in secagg_tags(job)}

    def _sa_bundle(self, job: HorizontalJob, state: StateStore, sender: str) -> dict[str, bytes]:
        """What ``sender`` sealed to this bank at setup: its mask public keys and this bank's shares of its secrets."""
        raw = state.get(self._key(job.run_id, f"sa-from-{sender}"))
        if raw is None:
            raise ProtocolError(f"party '{self.env.name}': no secure-aggregation keys from party '{sender}' "
                                f"in run '{job.run_id}'")
        return decode_message(raw, f"stored secure-aggregation bundle from '{sender}'")[1]

    def _sa_aad(self, job: HorizontalJob, sender: str, recipient: str) -> bytes:
        return f"fedcredit/{PROTOCOL}/{job.run_id}/secagg/{sender}->{recipient}".encode()

    def _members(self, job: HorizontalJob, header: Mapping[str, Any], tag: str, state: StateStore) -> list[str]:
        """The banks this aggregation masks among, as the coordinator announced; the same on a re-ask."""
        members = [str(p) for p in header.get("members", [])]
        me = self.env.name
        if me not in members or len(set(members)) != len(members) or not set(members) <= set(job.parties):
            raise ProtocolError(f"party '{me}': aggregation '{tag}' of run '{job.run_id}' announces members "
                                f"{members}; expected distinct parties of {job.parties} including '{me}'")
        if len(members) < job.threshold:
            raise SecurityError(f"party '{me}': aggregation '{tag}' has {len(members)} member(s) {members}, fewer "
                                f"than the secure-aggregation threshold {job.threshold}; refusing to contribute")
        key = self._key(job.run_id, f"sa-members-{tag}")
        prev = state.get(key)
        if prev is not None and json.loads(prev) != members:
            raise SecurityError(f"party '{me}': aggregation '{tag}' was announced with members {json.loads(prev)} "
                                f"and now with {members}; refusing a second masking of the same vector")
        state.put(key, json.dumps(members).encode())
        return members

    def _masked(self, job: HorizontalJob, ctx: ckks.Context, state: StateStore, tag: str, what: str,
                vec: np.ndarray, members: list[str], counts: bool = False, name: str = "update") -> dict[str, bytes]:
        """``name``: Enc((limbs(vec) + self-mask + Σ ±pairwise masks) mod M) -- alone, it decrypts to uniform noise --
        and, when dropouts are allowed, ``mem:<bank>``: the size and digest of the member list it was masked among,
        sealed to each other member (:meth:`_check_members` at unmasking: a coordinator cannot have banks mask among different lists)."""
        if self.env.tap is not None:
            self.env.tap(what, np.array(vec, dtype=np.float64, copy=True))
        plan = secagg_plan(job)
        limbs = encode_exact(vec, count_spec(plan) if counts else value_spec(plan))
        me = self.env.name
        i = secagg_tags(job).index(tag)
        pubs = {v: self._sa_bundle(job, state, v)["pub"][32 * i : 32 * (i + 1)] for v in members if v != me}
        y = secagg.mask(limbs, me, self._sa_own(job, state)[tag], pubs, plan, secagg_context(job, tag),
                        self_mask=job.max_dropouts > 0)
        out = {name: ckks.encrypt_vector(ctx, y)}
        if job.max_dropouts > 0:  # without dropouts nothing is ever revealed: no list to check
            body = self._members_word(tag, members)
            missing = [v for v in members if v != me and v not in self.env.peers]
            if missing:
                raise SecurityError(f"party '{me}' has no verified envelope key (certificate) for party(ies) {missing}")
            out.update({f"mem:{v}": seal(body, self.env.peers[v], self.env.envelope_private,
                                         self._members_aad(job, tag, me, v)) for v in members if v != me})
        return out

    @staticmethod
    def _members_word(tag: str, members: list[str]) -> bytes:
        """What a bank seals about its member list: its size and digest (~100 bytes at any n, not the list)."""
        digest = hashlib.sha256(canonical_json(sorted(members))).hexdigest()
        return canonical_json({"tag": tag, "members": len(members), "digest": digest})

    def _open_relayed(self, blob: bytes, sender: str, aad: bytes, what: str) -> bytes:
        """A peer's sealed word the coordinator relayed; one that does not open is a ConsistencyCheckFailed."""
        try:
            return open_sealed(blob, self.env.envelope_private, self.env.peers[sender], aad)
        except SecurityError as e:
            raise ConsistencyCheckFailed(f"party '{self.env.name}': the {what} relayed as party '{sender}''s "
                                         f"failed to open: {e}") from None

    def _members_aad(self, job: HorizontalJob, tag: str, sender: str, recipient: str) -> bytes:
        return f"fedcredit/{PROTOCOL}/{job.run_id}/secagg-members/{tag}/{sender}->{recipient}".encode()

    def _check_members(self, job: HorizontalJob, view: Mapping[str, Any], blobs: Mapping[str, bytes],
                       state: StateStore) -> None:
        """Before revealing any share: every survivor masked among the same members as this bank, by its own
        sealed word (``mem:<survivor>``, relayed by the coordinator with the unmask request).

        Without it a coordinator could tell one bank "you mask only with bank C" (a colluder) and everyone
        else the full list: the others' self-mask shares of that bank plus C's mask key would strip its
        ciphertext bare, and C's copy of the CKKS key would decrypt its vector."""
        me, tag = self.env.name, str(view["tag"])
        members = sorted(json.loads(state.get(self._key(job.run_id, f"sa-members-{tag}")) or b"[]"))
        body = self._members_word(tag, members)
        for u in view["survivors"]:
            if u == me:
                continue
            if f"mem:{u}" not in blobs or u not in self.env.peers:
                raise ConsistencyCheckFailed(f"party '{me}': unmask of '{tag}' carries no member list sealed by "
                                             f"survivor '{u}'; refusing to reveal")
            said = self._open_relayed(blobs[f"mem:{u}"], u, self._members_aad(job, tag, u, me),
                                      f"member list of '{tag}'")
            if said != body:
                theirs = json.loads(said).get("members")
                raise ConsistencyCheckFailed(
                    f"party '{me}': survivor '{u}' masked '{tag}' of run '{job.run_id}' among a different member list "
                    f"({theirs} banks) than this bank's {members}; refusing to reveal (the coordinator announced "
                    "different member lists)")

    def _open(self, job: HorizontalJob, ctx: ckks.SecretContext, blob: bytes, n: int, what: str,
              counts: bool = False) -> np.ndarray:
        """A summed, unmasked aggregate: decrypt, round, reduce mod M, join the limbs."""
        plan = secagg_plan(job)
        spec = count_spec(plan) if counts else value_spec(plan)
        vals = ckks.decrypt_vector(ctx, blob)
        if vals.shape[0] != spec.limbs * n:
            raise ProtocolError(f"party '{self.env.name}': {what} has {vals.shape[0]} slots; expected "
                                f"{spec.limbs * n} ({n} values x {spec.limbs} limbs)")
        ints = secagg.unmask(vals, plan, f"party '{self.env.name}': {what}")
        return decode_exact(ints.astype(np.float64), n, spec)

    def _std(self, job: HorizontalJob, state: StateStore) -> tuple[np.ndarray, np.ndarray]:
        raw = state.get(self._key(job.run_id, "std"))
        if raw is None:
            raise ProtocolError(f"party '{self.env.name}': no federated standardization for run '{job.run_id}'")
        a = np.frombuffer(raw, dtype="<f8")
        d = a.shape[0] // 2
        return a[:d].copy(), a[d:].copy()

    # -- data
    def _table(self, which: str, src: Table | Callable[[], Table]) -> Table:
        t = self._tables.get(which)
        if t is None:
            t = self._tables[which] = src() if callable(src) else src
        return t

    def _encoding(self, job: HorizontalJob) -> OneHotEncoding:
        """The job's agreed encoding of this bank's raw features (identity for an all-numeric, complete table)."""
        raw = self._table("train", self.env.train)
        feats = tuple(job.feature_columns if job.feature_columns is not None else raw.feature_names)
        return OneHotEncoding(feats, {f: tuple(v) for f, v in job.categories.items()}, tuple(job.missing_indicators),
                              job.missing_fill)

    def _encoded(self, which: str, job: HorizontalJob, src: Table | Callable[[], Table]) -> Table:
        """The ``which`` table encoded by :meth:`_encoding`; categories outside the agreed lists are refused
        at training (the count, never the values, is in the error: it may travel to the coordinator) and
        read as missing in a test table (the scoring rule)."""
        key = f"{which}:encoded"
        t = self._tables.get(key)
        if t is None:
            enc = self._encoding(job)
            raw = self._table(which, src).select(list(enc.features))
            if enc.is_identity and not raw.categorical_mask.any() and not np.isnan(raw.X).any():
                t = raw
            else:
                t, unknown = enc.encode(raw)
                if unknown and which == "train":
                    raise DataError(
                        f"party '{self.env.name}', file {raw.source}: {sum(unknown.values())} value(s) of "
                        f"{sorted(unknown)} are not among the job's [model.categories]; add every category the "
                        "banks hold to the job (values not shown: this message may leave the bank)")
                if unknown:
                    log.warning("party %s: %s test rows with categories outside the job's lists scored as missing",
                                self.env.name, unknown)
            self._tables[key] = t
        return t

    def _train(self, job: HorizontalJob) -> Table:
        t = self._encoded("train", job, self.env.train)
        if t.y is None:
            raise DataError(f"party '{self.env.name}', file {t.source}: training needs a label column "
                            "(label_column in its dataset config)")
        return t

    def _test(self, job: HorizontalJob, features: list[str]) -> Table | None:
        if self.env.test is None:
            return None
        t = self._encoded("test", job, self.env.test).select(features)
        if t.y is None:
            raise DataError(f"party '{self.env.name}', file {t.source}: testing needs a label column "
                            "(label_column in its dataset config)")
        return t

    def _need(self, method: str, blobs: Mapping[str, bytes], *names: str) -> None:
        missing = [n for n in names if n not in blobs]
        if missing:
            raise ProtocolError(f"party '{self.env.name}': '{method}' request lacks {missing} (has {sorted(blobs)})")


    def _aad(self, job: HorizontalJob, recipient: str) -> bytes:
        return f"fedcredit/{PROTOCOL}/{job.run_id}/ckks-secret/{job.holder}->{recipient}".encode()

    # -- methods
    def setup(self, header: Mapping[str, Any], blobs: Mapping[str, bytes], state: StateStore):
        job = HorizontalJob.from_dict(header["job"])
        me = self.env.name
        if me not in job.parties:
            raise ProtocolError(f"party '{me}' received setup for run '{job.run_id}' but is not one of {job.parties}")
        t = self._train(job)
        test = self._test(job, t.feature_names)
        state.put(self._key(job.run_id, "job"), json.dumps(job.to_dict()).encode())
        out_h: dict[str, Any] = {
            "features": t.feature_names,
            "fingerprint": schema_fingerprint(t.feature_names),
            "has_test": test is not None,
        }
        out_b: dict[str, bytes] = {}
        if me == job.holder:
            missing = [p for p in job.parties if p != me and p not in self.env.peers]
            if missing:
                raise SecurityError(
                    f"key holder '{me}' has no verified envelope key (certificate) for part(ies) {missing}"
                )
            ctx = ckks.new_context(
                poly_modulus_degree=job.ckks_poly_modulus_degree,
                coeff_mod_bit_sizes=tuple(job.ckks_coeff_mod_bit_sizes),
                scale_bits=job.ckks_scale_bits,
            )
            secret = ckks.secret_bytes(ctx)
            state.put(self._key(job.run_id, "ckks"), secret)
            out_b["public_ctx"] = ckks.public_bytes(ctx)
            for p in job.parties:
                if p != me:
                    out_b[f"envelope:{p}"] = seal(secret, self.env.peers[p], self.env.envelope_private, self._aad(job, p))
        out_b.update(self._sa_setup(job, state))
        return out_h, out_b

    def _sa_setup(self, job: HorizontalJob, state: StateStore) -> dict[str, bytes]:
        """Per aggregation tag: a fresh mask key and self-mask seed, Shamir-shared t-of-n; each peer's shares and
        this bank's mask public keys sealed to that peer (the coordinator relays them, cannot open or swap them).

        Replies ``sa:pub`` (the public keys, for the coordinator's corrections) and ``sa:to:<peer>``."""
        me, tags = self.env.name, secagg_tags(job)
        missing = [p for p in job.parties if p != me and p not in self.env.peers]
        if missing:
            raise SecurityError(f"party '{me}' has no verified envelope key (certificate) for part(ies) {missing}")
        key = self._key(job.run_id, "sa-own")
        if state.get(key) is None:  # a re-asked setup keeps the keys it already shared
            own = {t: secagg.new_tag_secrets() for t in tags}
            state.put(key, encode_message({}, {**{f"s:{t}": k.mask_key for t, k in own.items()},
                                               **{f"b:{t}": k.self_seed for t, k in own.items()}}))
        own = self._sa_own(job, state)
        n, thr = len(job.parties), job.threshold
        s_sh = {t: secagg.share(own[t].mask_key, thr, n) for t in tags}
        b_sh = {t: secagg.share(own[t].self_seed, thr, n) for t in tags}
        pubs = b"".join(own[t].public for t in tags)
        out: dict[str, bytes] = {"sa:pub": pubs}
        for i, p in enumerate(job.parties):
            bundle = encode_message({"from": me, "to": p, "tags": tags},
                                    {"pub": pubs, "s": b"".join(s_sh[t][i] for t in tags),
                                     "b": b"".join(b_sh[t][i] for t in tags)})
            if p == me:
                state.put(self._key(job.run_id, f"sa-from-{me}"), bundle)
            else:
                out[f"sa:to:{p}"] = seal(bundle, self.env.peers[p], self.env.envelope_private, self._sa_aad(job, me, p))
        return out

    def install_key(self, header: Mapping[str, Any], blobs: Mapping[str, bytes], state: StateStore):
        job = self._job(header, state)
        me, holder = self.env.name, job.holder
        if me != holder:
            if holder not in self.env.peers:
                raise SecurityError(f"party '{me}' has no verified envelope key (certificate) for key holder '{holder}'")
            self._need(Method.INSTALL_KEY, blobs, "envelope")
            try:
                secret = open_sealed(blobs["envelope"], self.env.envelope_private, self.env.peers[holder],
                                     self._aad(job, me))
            except SecurityError as e:
                raise SecurityError(f"party '{me}': the CKKS key envelope from '{holder}' failed to open: {e}") from None
            ckks.load_secret(secret, what=f"party '{me}': the key envelope from '{holder}'")
            state.put(self._key(job.run_id, "ckks"), secret)
        ctx = self._ctx(job, state)
        members = self._members(job, header, STATS_TAG, state)
        tags = secagg_tags(job)
        for u in members:
            if u == me:
                continue
            self._need(Method.INSTALL_KEY, blobs, f"sa:from:{u}")
            if u not in self.env.peers:
                raise SecurityError(f"party '{me}' has no verified envelope key (certificate) for party '{u}'")
            try:
                raw = open_sealed(blobs[f"sa:from:{u}"], self.env.envelope_private, self.env.peers[u],
                                  self._sa_aad(job, u, me))
            except SecurityError as e:
                raise SecurityError(f"party '{me}': the secure-aggregation keys from '{u}' failed to open: {e}") from None
            h, b = decode_message(raw, f"secure-aggregation bundle from '{u}'")
            if h.get("tags") != tags or any(len(b.get(k, b"")) != w * len(tags)
                                            for k, w in (("pub", 32), ("s", secagg.SHARE_BYTES),
                                                         ("b", secagg.SHARE_BYTES))):
                raise ProtocolError(f"party '{me}': the secure-aggregation bundle from '{u}' does not cover the "
                                    f"run's {len(tags)} aggregations")
            state.put(self._key(job.run_id, f"sa-from-{u}"), raw)
        t = self._train(job)
        return {}, self._masked(job, ctx, state, STATS_TAG, "stats", local_stats(t.X), members, name="stats")

    def _view(self, job: HorizontalJob, header: Mapping[str, Any], state: StateStore, what: str) -> dict[str, Any]:
        """The survivor set of one aggregation as the coordinator states it, checked against what this bank knows:
        a split of the members it masked among, with at least t survivors including this bank."""
        me, tag = self.env.name, str(header.get("tag", ""))
        if tag not in secagg_tags(job):
            raise ProtocolError(f"party '{me}': {what} of unknown aggregation '{tag}' in run '{job.run_id}'")
        if job.max_dropouts == 0:
            raise SecurityError(f"party '{me}': run '{job.run_id}' allows no dropouts (min_parties = all parties); "
                                f"refusing to reveal secure-aggregation shares for '{tag}'")
        raw = state.get(self._key(job.run_id, f"sa-members-{tag}"))
        if raw is None:
            raise ProtocolError(f"party '{me}': {what} of '{tag}' before this bank contributed to it")
        members = json.loads(raw)
        survivors = sorted(str(p) for p in header.get("survivors", []))
        dropped = sorted(str(p) for p in header.get("dropped", []))
        if (me not in survivors or set(survivors) & set(dropped) or set(survivors) | set(dropped) != set(members)
                or len(survivors) != len(set(survivors)) or len(survivors) < job.threshold):
            raise SecurityError(f"party '{me}': {what} of '{tag}' names survivors {survivors} and dropped {dropped}; "
                                f"expected a split of the members {members} with at least {job.threshold} survivors "
                                "including this bank")
        return {"tag": tag, "survivors": survivors, "dropped": dropped}

    def _commit_view(self, job: HorizontalJob, view: Mapping[str, Any], state: StateStore) -> None:
        """This bank acts on ONE survivor set per aggregation (attests it, reveals by it): a second one is refused."""
        key = self._key(job.run_id, f"sa-view-{view['tag']}")
        prev = state.get(key)
        if prev is not None and json.loads(prev) != dict(view):
            old = json.loads(prev)
            raise ConsistencyCheckFailed(
                f"party '{self.env.name}': aggregation '{view['tag']}' of run '{job.run_id}' was stated with survivors "
                f"{old['survivors']} / dropped {old['dropped']} and now with survivors {view['survivors']} / dropped "
                f"{view['dropped']}; refusing a second survivor set")
        state.put(key, json.dumps(dict(view)).encode())

    def _view_aad(self, job: HorizontalJob, tag: str, sender: str, recipient: str) -> bytes:
        return f"fedcredit/{PROTOCOL}/{job.run_id}/secagg-view/{tag}/{sender}->{recipient}".encode()

    def attest(self, header: Mapping[str, Any], blobs: Mapping[str, bytes], state: StateStore):
        """The consistency check's first half (Bonawitz et al. 2017, ConsistencyCheck), asked only when a bank
        dropped out of the aggregation: commit to the survivor set stated and tell each other survivor, sealed
        with this bank's certificate-bound envelope key (the coordinator relays it, cannot forge or alter it)."""
        job = self._job(header, state)
        view = self._view(job, header, state, "attest")
        if len(view["survivors"]) < job.view_quorum:
            raise ConsistencyCheckFailed(
                f"party '{self.env.name}': aggregation '{view['tag']}' names {len(view['survivors'])} survivor(s) "
                f"{view['survivors']}; the consistency check needs {job.view_quorum} banks attesting one survivor set")
        self._commit_view(job, view, state)
        body = canonical_json(view)
        me = self.env.name
        missing = [u for u in view["survivors"] if u != me and u not in self.env.peers]
        if missing:
            raise SecurityError(f"party '{me}' has no verified envelope key (certificate) for party(ies) {missing}")
        return {}, {f"att:{u}": seal(body, self.env.peers[u], self.env.envelope_private,
                                     self._view_aad(job, view["tag"], me, u))
                    for u in view["survivors"] if u != me}

    def _check_quorum(self, job: HorizontalJob, view: Mapping[str, Any], blobs: Mapping[str, bytes]) -> list[str]:
        """The banks (this one included) whose sealed attestation states exactly ``view``; at least the quorum."""
        me, tag = self.env.name, str(view["tag"])
        body = canonical_json(dict(view))
        agree: list[str] = [me]
        other: list[str] = []
        for u in view["survivors"]:
            if u == me or f"att:{u}" not in blobs or u not in self.env.peers:
                continue
            said = self._open_relayed(blobs[f"att:{u}"], u, self._view_aad(job, tag, u, me), f"attestation of '{tag}'")
            (agree if said == body else other).append(u)
        if len(agree) < job.view_quorum:
            raise ConsistencyCheckFailed(
                f"party '{me}': aggregation '{tag}' of run '{job.run_id}': survivors {view['survivors']} / dropped "
                f"{view['dropped']} attested by {sorted(agree)}" + (f" (a different set by {sorted(other)})" if other
                                                                    else "") +
                f"; {job.view_quorum} banks must attest the same set before this bank reveals any share")
        return agree

    def unmask(self, header: Mapping[str, Any], blobs: Mapping[str, bytes], state: StateStore):
        """Reveal this bank's shares for one aggregation: of the self-mask seed of each bank whose masked vector
        arrived, of the mask key of each bank that dropped before sending -- never both for one bank.

        When a bank dropped, only after ``view_quorum`` banks attested this same survivor set (:meth:`attest`):
        a coordinator that states different sets to different banks gets no mask key shares.  Always only when
        every survivor sealed the same member list as this bank's (:meth:`_check_members`)."""
        job = self._job(header, state)
        view = self._view(job, header, state, "unmask")
        me, tag, survivors, dropped = self.env.name, view["tag"], view["survivors"], view["dropped"]
        self._check_members(job, view, blobs, state)
        if dropped:
            prev = state.get(self._key(job.run_id, f"sa-view-{tag}"))
            if prev is None or json.loads(prev) != view:
                raise ConsistencyCheckFailed(f"party '{me}': unmask of '{tag}' names dropped bank(s) {dropped} but "
                                             "this bank did not attest that survivor set; refusing to reveal")
            self._check_quorum(job, view, blobs)
        else:  # nobody dropped: only self-mask seeds, and this bank is bound to that set from now on
            self._commit_view(job, view, state)
        key = self._key(job.run_id, f"sa-revealed-{tag}")
        revealed: dict[str, str] = json.loads(state.get(key) or b"{}")
        asked = {**{u: "b" for u in survivors}, **{d: "s" for d in dropped}}
        if clash := sorted(u for u, w in asked.items() if revealed.get(u, w) != w):
            raise SecurityError(f"party '{me}': aggregation '{tag}': refusing to reveal both the self-mask seed and "
                                f"the mask key of {clash}")
        state.put(key, json.dumps({**revealed, **asked}).encode())
        i = secagg_tags(job).index(tag)
        w = secagg.SHARE_BYTES
        out = {f"{kind}:{u}": self._sa_bundle(job, state, u)[kind][w * i : w * (i + 1)] for u, kind in asked.items()}
        if tag == HIST_TAG:  # the run's last aggregation: this bank's secure-aggregation material goes
            self._drop_secagg(job.run_id, state)
        return {}, out

    def _global(self, job: HorizontalJob, ctx: ckks.SecretContext, blob: bytes, n_params: int) -> np.ndarray:
        agg = self._open(job, ctx, blob, n_params + 1, f"aggregate of the {job.family} model's {n_params} parameters")
        total = agg[-1]
        if not total > 0.5:
            raise ProtocolError(f"party '{self.env.name}': aggregate total weight is {total:.3g}; expected >= 1")
        return agg[:-1] / total

    def _eval(self, model: Model, test: Table | None, mean: np.ndarray, std: np.ndarray) -> dict[str, Any]:
        if test is None:
            return {}
        p = model.predict_proba((test.X - mean) / std)
        assert test.y is not None
        return {"auc": _num(metrics.auc(test.y, p)), "ks": _num(metrics.ks(test.y, p)), "n_test": len(test)}

    def fit(self, header: Mapping[str, Any], blobs: Mapping[str, bytes], state: StateStore):
        job = self._job(header, state)
        r = int(header["round"])
        self._need(Method.FIT, blobs, "stats" if r == 1 else "model")
        ctx = self._ctx(job, state)
        members = self._members(job, header, f"fit-{r}", state)
        t = self._train(job)
        d = t.n_features
        if "stats" in blobs:
            sums = self._open(job, ctx, blobs["stats"], 2 * d + 1, "summed statistics")
            mean, std = standardizer_from_sums(sums, d, job.standardize)
            state.put(self._key(job.run_id, "std"), np.concatenate([mean, std]).astype("<f8").tobytes())
        mean, std = self._std(job, state)
        model = build_model(job, d)
        assert t.y is not None
        if r > job.rounds:  # a Newton round: the pooled sums at the point every bank derives the same way
            nst = self._newton_state(job, ctx, state, r, blobs["model"], model.n_params)
            model.set_flat(nst.trial)
            out_h: dict[str, Any] = {"round": r, "metrics": self._eval(model, self._test(job, t.feature_names), mean, std)}
            return out_h, self._masked(job, ctx, state, f"fit-{r}", "newton",
                                       newton_sums(nst.trial, (t.X - mean) / std, t.y), members)
        if "model" in blobs:
            model.set_flat(self._global(job, ctx, blobs["model"], model.n_params))
        global_flat = model.get_flat()
        out_h = {"round": r, "metrics": self._eval(model, self._test(job, t.feature_names), mean, std)}
        new = local_update(job, global_flat, (t.X - mean) / std, t.y, r, self.env.name)
        n_k = float(len(t))
        if job.dp is not None:  # client-level DP (fedcredit/dp.py): clipped + this bank's noise share, weight 1
            plan = dp.horizontal_plan(job.dp, job.rounds, job.required, len(job.parties))
            new, n_k = dp.private_update(new, global_flat, plan, job.required), 1.0
        return out_h, self._masked(job, ctx, state, f"fit-{r}", "update", np.concatenate([new * n_k, [n_k]]), members)

    def _newton_state(self, job: HorizontalJob, ctx: ckks.SecretContext, state: StateStore, r: int, blob: bytes,
                      n_params: int) -> NewtonState:
        """The Newton state of round ``r`` (stored, so a re-asked call gives the same reply): from the FedAvg
        global model in the first Newton round, else one :func:`newton_step` from round ``r - 1``'s state."""
        if r == job.rounds + 1:
            nst = NewtonState(trial=self._global(job, ctx, blob, n_params))
        else:
            prev = state.get(self._key(job.run_id, f"newton-{r - 1}"))
            if prev is None:
                raise ProtocolError(f"party '{self.env.name}': Newton round {r} of run '{job.run_id}' without the "
                                    f"state of round {r - 1}")
            nst = newton_step(NewtonState.from_bytes(prev),
                              self._open(job, ctx, blob, newton_sums_length(n_params), "Newton sums"), job.l2)
        state.put(self._key(job.run_id, f"newton-{r}"), nst.to_bytes())
        return nst

    def _privacy_report(self, job: HorizontalJob, header: Mapping[str, Any], has_test: bool,
                        privacy: Mapping[str, Any] | None) -> dict[str, Any]:
        """The report's privacy section: what this bank sent (sizes as the coordinator counted them), in what form,
        and the leakage rows that applied (fedcredit/privacy.py)."""
        from fedcredit.privacy import privacy_section

        got = header.get("sent")
        sent: Mapping[str, Any] = got if isinstance(got, Mapping) else {}
        rows = [{"to": "coordinator", "tag": f"h/{m}", "messages": v.get("messages"), "bytes": v.get("bytes")}
                for m, v in sorted(sent.items()) if isinstance(m, str) and m in _METHODS and isinstance(v, Mapping)
                and all(isinstance(v.get(k), int) for k in ("messages", "bytes"))]
        if has_test and header.get("members"):
            rows.append({"to": "coordinator", "tag": "h/finalize", "messages": 1, "bytes": None})
        out = privacy_section(protocol="horizontal", role="bank", sent_by_tag=rows, privacy=privacy)
        out["secagg"] = {"threshold": job.threshold, "max_dropouts": job.max_dropouts}
        return out

    def finalize(self, header: Mapping[str, Any], blobs: Mapping[str, bytes], state: StateStore):
        job = self._job(header, state)
        self._need(Method.FINALIZE, blobs, "model")
        ctx = self._ctx(job, state)
        t = self._train(job)
        mean, std = self._std(job, state)
        model = build_model(job, t.n_features)
        R = int(header.get("round", job.total_rounds))
        curve: list[dict[str, Any]] = []  # the run JSON's "convergence": pooled training log-loss per Newton round
        if job.newton and R > job.rounds:  # the last Newton sums decide the final point: the best accepted one
            prev = state.get(self._key(job.run_id, f"newton-{R}"))
            if prev is None:
                raise ProtocolError(f"party '{self.env.name}': finalize of run '{job.run_id}' without Newton round {R}")
            nst = newton_step(NewtonState.from_bytes(prev), self._open(
                job, ctx, blobs["model"], newton_sums_length(model.n_params), "Newton sums"), job.l2)
            assert nst.best is not None
            model.set_flat(nst.best)
            curve = [{"epoch": job.rounds + 1 + i, "train_loss": v, "val_loss": None} for i, v in enumerate(nst.losses)]
        else:
            model.set_flat(self._global(job, ctx, blobs["model"], model.n_params))
        test = self._test(job, t.feature_names)
        m = self._eval(model, test, mean, std)
        out_dir = Path(self.env.output_dir) / _safe(job.run_id)
        meta = {
            "run_id": job.run_id,
            "protocol": PROTOCOL,
            "algorithm": job.algorithm,
            "rounds": int(header.get("round", job.total_rounds)),
            "parties": list(header.get("parties", job.parties)),
            "party": self.env.name,
            "local_test": m,
            "convergence": curve,
        }
        if job.dp is not None:  # the run JSON's privacy section (docs/privacy.md)
            meta["privacy"] = {"dp": dp.horizontal_plan(job.dp, job.rounds, job.required, len(job.parties)).report()}
        enc = self._encoding(job)
        if not enc.is_identity:  # scoring re-encodes raw applications the same way (party/scoring.py)
            meta["encoding"] = enc.to_dict()
        path = save_model(out_dir / "global_model.json", model, mean=mean, std=std, feature_names=t.feature_names, meta=meta)
        (out_dir / "metrics.json").write_text(json.dumps({"party": self.env.name, "local_test": m, "convergence": curve},
                                                         indent=1))
        from fedcredit.report import horizontal_report  # this bank's own report: nothing in it leaves the party

        p_fed = model.predict_proba((test.X - mean) / std) if test is not None else None
        m = {**m, "report": horizontal_report(
            model_dir=out_dir, run_id=job.run_id, family=job.family, train=t, test=test, federated=p_fed,
            local_only=lambda tt: local_only_scores(job, t, tt),
            train_scores=lambda: model.predict_proba((t.X - mean) / std),
            run={k: v for k, v in meta.items() if k not in ("local_test", "convergence")},
            sections={**({"convergence": curve} if curve else {}),
                      "privacy": self._privacy_report(job, header, test is not None, meta.get("privacy"))})}  # type: ignore[arg-type]
        out_b: dict[str, bytes] = {}
        if test is not None and header.get("members"):
            assert test.y is not None and p_fed is not None
            hist = metrics.score_histogram(test.y, p_fed, bins=job.hist_bins)
            out_b.update(self._masked(job, ctx, state, HIST_TAG, "histogram", hist.ravel(),
                                      self._members(job, header, HIST_TAG, state), counts=True, name="hist"))
        if header.get("metrics_party") != self.env.name:  # no further decryption asked of this party
            self._drop_key(job.run_id, state)
        if job.max_dropouts == 0 or "hist" not in out_b:  # no unmask of the histogram will ask for this bank's shares
            self._drop_secagg(job.run_id, state)
        return {"metrics": m, "model_path": str(path)}, out_b

    def global_metrics(self, header: Mapping[str, Any], blobs: Mapping[str, bytes], state: StateStore):
        job = self._job(header, state)
        self._need(Method.GLOBAL_METRICS, blobs, "hist")
        ctx = self._ctx(job, state)
        try:  # exact counts: unmasking rounds away the CKKS error and refuses a slot far from an integer
            hist = self._open(job, ctx, blobs["hist"], 2 * job.hist_bins, "summed score histogram",
                              counts=True).reshape(2, -1)
        finally:
            self._drop_key(job.run_id, state)
        if np.any(hist < 0):
            raise ProtocolError(f"party '{self.env.name}': the summed score histogram does not hold counts")
        a, k = metrics.auc_ks_from_histogram(hist)
        from fedcredit.report import add_figures

        add_figures(Path(self.env.output_dir) / _safe(job.run_id), "federated, all banks' test rows",
                    {"auc": _num(a), "ks": _num(k), "n_test": int(hist.sum())}, note="from the summed histogram")
        return {"auc": _num(a), "ks": _num(k), "n_test": int(hist.sum())}, {}

    def end(self, header: Mapping[str, Any], blobs: Mapping[str, bytes], state: StateStore):
        run_id = str(header.get("run_id", ""))
        if run_id:
            self._drop_key(run_id, state)
            self._drop_secagg(run_id, state)
        return {}, {}


if missing := [m for m in _METHODS if not callable(getattr(_Party, m, None))]:  # the vocabulary is the dispatch table
    raise RuntimeError(f"horizontal protocol methods without a party handler: {missing}")


def _forget_key(role: _Party, run_id: str, state: StateStore) -> None:
    if run_id:
        try:
            role._drop_key(run_id, state)
            role._drop_secagg(run_id, state)
        except Exception:  # noqa: BLE001 - the error reply matters more; the sweep at 'end' retries
            log.exception("party %s: could not delete the CKKS key of run %s", role.env.name, run_id)


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def party_handler(env: PartyEnv) -> Handler:
    """The party role as a :data:`~fedcredit.channel.Handler` (``handle(method, payload, state)``).

    Never raises for a protocol or data problem: the reply says ``ok: false`` with an
    error that names this party, so the coordinator can report it and carry on with
    the others (min_parties).  Every method is idempotent for a given (state,
    payload), so the coordinator may safely re-ask.
    """
    role = _Party(env)

    def handle(method: str, payload: bytes, state: StateStore) -> bytes:
        run_id = ""
        try:
            if method not in _METHODS:
                raise ProtocolError(f"party '{env.name}': unknown horizontal method '{method}'")
            header, blobs = decode_message(payload, f"'{method}' request to party '{env.name}'")
            run_id = str(header.get("run_id", "")) or str((header.get("job") or {}).get("run_id", ""))
            out_h, out_b = getattr(role, method)(header, blobs, state)
            return encode_message({"ok": True, **out_h}, out_b)
        except FedCreditError as e:
            log.warning("party %s: %s failed: %s", env.name, method, e)
            _forget_key(role, run_id, state)  # a failed party is dropped from the run: its key goes
            return encode_message({"ok": False, "kind": type(e).__name__, "error": str(e)})
        except Exception as e:  # noqa: BLE001 - report, do not crash the party daemon
            log.exception("party %s: %s crashed", env.name, method)
            _forget_key(role, run_id, state)
            return encode_message(
                {"ok": False, "kind": "InternalError", "error": f"party '{env.name}': {method}: {type(e).__name__}: {e}"}
            )

    return handle


# --------------------------------------------------------------------------- coordinator role


@dataclass
class HorizontalResult:
    """Public outcome of a run: everything here is safe to show the coordinator's operator."""

    run_id: str
    parties: list[str]  # parties that finished
    dropped: dict[str, str]  # party -> reason
    rounds: int
    feature_names: list[str]
    schema_fingerprint: str
    party_metrics: dict[str, dict[str, Any]]
    global_metrics: dict[str, Any] | None
    history: list[dict[str, Any]]
    traffic: dict[str, dict[str, dict[str, int]]]  # method -> party -> {"to_party", "from_party"} bytes
    timings: dict[str, float]
    wall_time_s: float
    public_context_bytes: int
    privacy: dict[str, Any] = field(default_factory=dict)  # {"dp": ...} when the job has [model.dp]
    # threshold, max_dropouts, limb/modulus bits, and per aggregation that needed unmasking: survivors, dropped
    secagg: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def bytes_per_round(self) -> dict[str, dict[str, float]]:
        """Mean bytes per fit round per party, both directions."""
        fit = self.traffic.get(Method.FIT, {})
        return {
            p: {k: v / max(1, self.rounds) for k, v in d.items()}
            for p, d in fit.items()
        }


class _Coordinator:
    def __init__(self, channel: PartyChannel, job: HorizontalJob, progress: Progress | None) -> None:
        self.ch, self.job = channel, job
        self.progress = progress or (lambda ev: None)
        self.alive = list(job.parties)
        self.dropped: dict[str, str] = {}
        self.kinds: dict[str, str] = {}
        self.traffic: dict[str, dict[str, dict[str, int]]] = {}
        self.t0 = time.perf_counter()
        self.plan = secagg_plan(job)
        self.publics: dict[str, dict[str, bytes]] = {}  # party -> tag -> its mask public key (from setup)
        self.unmasked: list[dict[str, Any]] = []

    def emit(self, ev: dict[str, Any]) -> None:
        ev.setdefault("run_id", self.job.run_id)
        ev.setdefault("elapsed_s", round(time.perf_counter() - self.t0, 3))
        try:
            self.progress(ev)
        except Exception:  # noqa: BLE001 - a broken progress display must not break training
            log.exception("progress callback failed")

    def _count(self, method: str, party: str, to_party: int, from_party: int) -> None:
        d = self.traffic.setdefault(method, {}).setdefault(party, {"to_party": 0, "from_party": 0})
        d["to_party"] += to_party
        d["from_party"] += from_party
        if from_party:
            d["replies"] = d.get("replies", 0) + 1

    def sent_by(self, party: str) -> dict[str, dict[str, int]]:
        """What ``party`` has sent so far, per method: replies and bytes (sizes the coordinator sees anyway);
        the bank's privacy report lists them."""
        return {m: {"messages": int(d[party].get("replies", 0)), "bytes": int(d[party]["from_party"])}
                for m, d in self.traffic.items() if party in d and d[party]["from_party"]}

    def call(self, method: str, requests: Mapping[str, bytes]) -> dict[str, tuple[dict[str, Any], dict[str, bytes]]]:
        """One hop to ``requests``' parties; returns the good replies, drops the failed parties."""
        reqs = {p: (method, pl) for p, pl in requests.items()}
        raw: dict[str, bytes] = {}
        failed: dict[str, tuple[str, str]] = {}
        try:
            raw = dict(self.ch.call_all(reqs))
        except Exception as e:  # noqa: BLE001 - classify per party below
            errs = getattr(e, "errors", None)
            if isinstance(errs, Mapping):  # channel says which parties failed (e.g. Flower PartyFailure)
                raw = dict(getattr(e, "replies", {}) or {})
                for p, why in errs.items():
                    failed[str(p)] = ("ProtocolError", str(why))
            elif len(reqs) == 1:
                failed[next(iter(reqs))] = (type(e).__name__, str(e))
            else:  # re-ask one by one to learn who failed (every party method is idempotent)
                for p, req in reqs.items():
                    try:
                        raw.update(self.ch.call_all({p: req}))
                    except Exception as e1:  # noqa: BLE001
                        failed[p] = (type(e1).__name__, str(e1))
        out: dict[str, tuple[dict[str, Any], dict[str, bytes]]] = {}
        for p, (_m, pl) in reqs.items():
            if p in failed:
                self._count(method, p, len(pl), 0)
                continue
            if p not in raw:
                failed[p] = ("ProtocolError", "no reply")
                continue
            self._count(method, p, len(pl), len(raw[p]))
            try:
                h, b = decode_message(raw[p], f"'{method}' reply from party '{p}'")
            except ProtocolError as e:
                failed[p] = ("ProtocolError", str(e))
                continue
            if not h.get("ok"):
                failed[p] = (str(h.get("kind", "ProtocolError")), str(h.get("error", "unspecified error")))
                continue
            out[p] = (h, b)
        for p, (kind, why) in failed.items():
            self.drop(p, kind, f"{method}: {why}")
        return out

    def drop(self, party: str, kind: str, why: str) -> None:
        if party in self.alive:
            self.alive.remove(party)
        self.dropped[party] = why
        self.kinds[party] = kind
        self.emit({"event": "party_failed", "party": party, "reason": why, "alive": list(self.alive)})
        self.check()

    def aggregate(self, pub: ckks.PublicContext, tag: str, members: list[str],
                  replies: Mapping[str, Mapping[str, bytes]], name: str) -> bytes:
        """Sum the members' masked ciphertexts (``replies[bank][name]``) of one aggregation and, when self-masks or
        dropouts call for it, remove the masks homomorphically from the seeds the survivors' shares rebuild
        (coordinator: no key).  Each survivor's sealed member lists (``mem:<bank>``) are relayed to the others."""
        blobs = {p: r[name] for p, r in replies.items() if name in r}
        survivors = sorted(p for p in members if p in blobs)
        dropped = sorted(p for p in members if p not in blobs)
        if not survivors:
            self.check()
            raise ProtocolError(f"run '{self.job.run_id}': no masked contribution to '{tag}' arrived")
        total = ckks.add_encrypted(pub, [blobs[p] for p in survivors])
        if self.job.max_dropouts == 0 and not dropped:  # pairwise masks cancel; there are no self-masks
            return total
        asked = [p for p in survivors if p in self.alive]
        view = {"tag": tag, "survivors": survivors, "dropped": dropped}
        relay: dict[str, dict[str, bytes]] = {p: {} for p in asked}
        if dropped:  # the consistency check: every survivor attests this set to the others before any reveals
            att = self.call(Method.ATTEST, {p: self.msg(view) for p in asked})
            if len(att) < self.job.view_quorum:
                raise ProtocolError(
                    f"run '{self.job.run_id}' failed: aggregation '{tag}' cannot be unmasked: {len(att)} bank(s) "
                    f"{sorted(att)} attested its survivor set, the consistency quorum is {self.job.view_quorum}")
            asked = sorted(att)
            relay = {p: {f"att:{u}": b[f"att:{p}"] for u, (_, b) in att.items() if f"att:{p}" in b} for p in asked}
        for p in asked:  # each survivor's member list, sealed to p when it sent its vector
            relay[p].update({f"mem:{u}": replies[u][f"mem:{p}"] for u in survivors if f"mem:{p}" in replies[u]})
        rep = self.call(Method.UNMASK, {p: self.msg(view, relay[p]) for p in asked})
        thr = self.job.threshold
        if len(rep) < thr:
            reasons = "; ".join(f"party '{p}': {self.dropped.get(p, 'no reply')}" for p in sorted(set(members) - set(rep)))
            raise ProtocolError(
                f"run '{self.job.run_id}' failed: aggregation '{tag}' cannot be unmasked: {len(rep)} bank(s) "
                f"{sorted(rep)} revealed shares, the threshold is {thr}. {reasons}")
        shares = {p: b for p, (_, b) in rep.items()}

        def rebuild(kind: str, u: str, what: str) -> bytes:
            have = [b[f"{kind}:{u}"] for b in shares.values() if f"{kind}:{u}" in b]
            return secagg.combine(have, thr, f"run '{self.job.run_id}', '{tag}': {what} of party '{u}'")

        i = secagg_tags(self.job).index(tag)
        corr = secagg.correction(
            ckks.blob_length(total), self.plan, secagg_context(self.job, tag),
            self_seeds={u: rebuild("b", u, "self-mask seed") for u in survivors},
            dropped_keys={d: rebuild("s", d, "mask key") for d in dropped},
            publics={u: self.publics[u][secagg_tags(self.job)[i]] for u in survivors})
        self.unmasked.append({"tag": tag, "survivors": survivors, "dropped": dropped, "revealed_by": sorted(rep)})
        return ckks.add_plain(pub, total, corr)

    def check(self) -> None:
        if len(self.alive) >= self.job.required:
            return
        reasons = "; ".join(f"party '{p}': {why}" for p, why in self.dropped.items())
        msg = (
            f"run '{self.job.run_id}' failed: {len(self.alive)} of {len(self.job.parties)} parties left, "
            f"min_parties={self.job.required}. {reasons}"
        )
        kinds = set(self.kinds.values())
        if kinds and kinds <= {"DataError"}:
            raise DataError(msg)
        if kinds and kinds <= {"ConfigError"}:
            raise ConfigError(msg)
        if "SecurityError" in kinds:
            raise SecurityError(msg)
        raise ProtocolError(msg)

    def require_holder(self, stage: str) -> None:
        h = self.job.holder
        if h not in self.alive:
            raise ProtocolError(
                f"run '{self.job.run_id}' failed at {stage}: key holder '{h}' failed "
                f"({self.dropped.get(h, 'unknown reason')}); no one can distribute the CKKS key"
            )

    def msg(self, header: Mapping[str, Any] | None = None, blobs: Mapping[str, bytes] | None = None) -> bytes:
        return encode_message({"run_id": self.job.run_id, **(header or {})}, blobs)


def run_coordinator(channel: PartyChannel, job: HorizontalJob, progress: Progress | None = None) -> HorizontalResult:
    """Drive an encrypted horizontal job to completion; returns public results only.

    The coordinator never holds a secret key: it receives the public CKKS context
    from the key holder (refusing one that contains a secret key), sums parties'
    ciphertexts, and relays sealed envelopes.  A party that fails (error reply,
    exception or no reply) is dropped; the run continues while at least
    ``job.min_parties`` remain, otherwise it raises an error naming the parties.
    Whenever a party may still hold the job's secret key at the end (the run failed, or
    the party was dropped), it is sent ``end`` so it deletes it.
    """
    c = _Coordinator(channel, job, progress)
    try:
        result = _run(c, channel, job)
    except BaseException:
        _end(c, [p for p in job.parties if p in channel.parties])
        raise
    if c.dropped:
        _end(c, [p for p in c.dropped if p in channel.parties])
    return result


def _end(c: _Coordinator, parties: list[str]) -> None:
    """Best effort: tell ``parties`` the job is over so each deletes its CKKS secret context."""
    if not parties:
        return
    try:
        c.ch.call_all({p: (Method.END, c.msg({})) for p in parties})
    except Exception as e:  # noqa: BLE001 - the run's own outcome is what the caller must see
        log.warning("run %s: 'end' did not reach every party (%s); their keys go when their calls fail", c.job.run_id, e)


def _run(c: _Coordinator, channel: PartyChannel, job: HorizontalJob) -> HorizontalResult:
    unknown = [p for p in job.parties if p not in channel.parties]
    if unknown:
        raise ProtocolError(f"run '{job.run_id}': part(ies) {unknown} are not connected (channel has {channel.parties})")
    timings: dict[str, float] = {}
    holder = job.holder
    c.emit({"event": "start", "parties": list(job.parties), "key_holder": holder, "rounds": job.total_rounds,
            "family": job.family, "algorithm": job.algorithm})

    # 1. setup (+ key generation at the key holder)
    t = time.perf_counter()
    rep = c.call(Method.SETUP, {p: c.msg({"job": job.to_dict()}) for p in c.alive})
    c.require_holder("setup")
    ref = rep[holder][0]
    features, fp = list(ref["features"]), str(ref["fingerprint"])
    has_test = {p: bool(h.get("has_test")) for p, (h, _) in rep.items()}
    for p, (h, _) in rep.items():
        if p != holder and h.get("fingerprint") != fp:
            c.drop(p, "DataError", _schema_diff(p, list(h.get("features", [])), holder, features))
    pub_raw = rep[holder][1].get("public_ctx")
    if pub_raw is None:
        raise ProtocolError(f"run '{job.run_id}': key holder '{holder}' sent no public CKKS context")
    pub = ckks.load_public(
        pub_raw, what=f"run '{job.run_id}': the CKKS context key holder '{holder}' sent to the coordinator"
    )
    envelopes: dict[str, bytes] = {}
    for p in c.alive:
        if p != holder and (env_blob := rep[holder][1].get(f"envelope:{p}")) is not None:
            envelopes[p] = env_blob
    tags = secagg_tags(job)
    bundles: dict[str, Mapping[str, bytes]] = {}
    for p in list(c.alive):
        pubs = rep[p][1].get("sa:pub", b"") if p in rep else b""
        if len(pubs) != 32 * len(tags):
            c.drop(p, "ProtocolError", f"setup: party '{p}' sent {len(pubs) // 32} secure-aggregation keys, "
                                       f"{len(tags)} expected")
            continue
        c.publics[p] = {t: pubs[32 * i : 32 * (i + 1)] for i, t in enumerate(tags)}
        bundles[p] = rep[p][1]
    timings["setup_s"] = time.perf_counter() - t
    c.emit({"event": "setup", "features": features, "fingerprint": fp, "alive": list(c.alive),
            "public_context_bytes": len(pub_raw)})

    # 2. key distribution (sealed envelopes, relayed untouched) + encrypted statistics
    t = time.perf_counter()
    for p in [q for q in c.alive if q != holder and q not in envelopes]:
        c.drop(p, "ProtocolError", f"key holder '{holder}' produced no key envelope for it")
    members = list(c.alive)
    reqs = {}
    for p in members:  # each bank: its key envelope and every other member's sealed secure-aggregation bundle
        b = {f"sa:from:{u}": bundles[u][f"sa:to:{p}"] for u in members if u != p and f"sa:to:{p}" in bundles[u]}
        if p != holder:
            b["envelope"] = envelopes[p]
        reqs[p] = c.msg({"members": members}, b)
    rep = c.call(Method.INSTALL_KEY, reqs)
    stats_sum = c.aggregate(pub, STATS_TAG, members, {p: b for p, (_, b) in rep.items()}, "stats")
    timings["keys_and_stats_s"] = time.perf_counter() - t
    c.emit({"event": "keys", "alive": list(c.alive)})

    # 3. rounds
    history: list[dict[str, Any]] = []
    agg: bytes | None = None
    t_rounds = time.perf_counter()
    for r in range(1, job.total_rounds + 1):  # FedAvg rounds, then (lr family) Newton rounds
        tr = time.perf_counter()
        blobs = {"stats": stats_sum} if r == 1 else {"model": agg}
        members = list(c.alive)
        payload = c.msg({"round": r, "members": members}, blobs)  # type: ignore[arg-type]
        rep = c.call(Method.FIT, {p: payload for p in c.alive})
        if not rep:
            c.check()
        agg = c.aggregate(pub, f"fit-{r}", members, {p: b for p, (_, b) in rep.items()}, "update")
        per_party = {p: {"status": "ok", **h.get("metrics", {})} for p, (h, _) in rep.items()}
        for p in job.parties:
            if p not in per_party:
                per_party[p] = {"status": "failed" if p in c.dropped else "absent"}
        entry = {"round": r, "parties": per_party, "contributors": sorted(rep), "seconds": time.perf_counter() - tr}
        history.append(entry)
        c.emit({"event": "round", "round": r, "rounds": job.total_rounds, **{k: v for k, v in entry.items() if k != "round"}})
    timings["rounds_s"] = time.perf_counter() - t_rounds

    # 4. finalize: save the global model everywhere, public local metrics, encrypted histograms
    t = time.perf_counter()
    final_parties = sorted(c.alive)
    target = holder if holder in c.alive else c.alive[0]  # keeps its key to decrypt the summed histogram
    testers = [p for p in c.alive if has_test.get(p)]  # banks without a test table have no histogram to mask
    if len(testers) < job.threshold:  # fewer than t histograms: their sum would not hide one bank's; no global metrics
        testers = []
    rep = c.call(Method.FINALIZE, {p: c.msg({"round": job.total_rounds, "parties": final_parties, "metrics_party": target,
                                            "members": testers, "sent": c.sent_by(p)},
                                           {"model": agg}) for p in c.alive})  # type: ignore[dict-item]
    party_metrics = {p: dict(h.get("metrics", {})) for p, (h, _) in rep.items()}
    hists = {p: b for p, (_, b) in rep.items() if "hist" in b}
    timings["finalize_s"] = time.perf_counter() - t

    # 5. global metrics from the summed histogram, decrypted by one party (AUC/KS come back only)
    global_m: dict[str, Any] | None = None
    if hists and target in c.alive:
        t = time.perf_counter()
        hsum = c.aggregate(pub, HIST_TAG, testers, hists, "hist")
        rep = c.call(Method.GLOBAL_METRICS, {target: c.msg({}, {"hist": hsum})})
        if target in rep:
            h = rep[target][0]
            global_m = {"auc": h.get("auc"), "ks": h.get("ks"), "n_test": h.get("n_test"), "decrypted_by": target}
        timings["global_metrics_s"] = time.perf_counter() - t
    elif target in c.alive:  # nothing to decrypt after all: the metrics party's key goes now
        _end(c, [target])
    if target not in c.alive or not hists:  # (no histogram unmask asked for their shares) their masks go
        _end(c, [p for p in testers if p in c.alive])
    wall = time.perf_counter() - c.t0
    result = HorizontalResult(
        run_id=job.run_id,
        parties=sorted(c.alive),
        dropped=dict(c.dropped),
        rounds=job.total_rounds,
        feature_names=features,
        schema_fingerprint=fp,
        party_metrics=party_metrics,
        global_metrics=global_m,
        history=history,
        traffic=c.traffic,
        timings={k: round(v, 4) for k, v in timings.items()},
        wall_time_s=round(wall, 4),
        public_context_bytes=len(pub_raw),
        privacy={"dp": dp.horizontal_plan(job.dp, job.rounds, job.required, len(job.parties)).report()}
        if job.dp is not None else {},
        secagg={"threshold": job.threshold, "max_dropouts": job.max_dropouts, "limb_bits": c.plan.limb_bits,
                "modulus_bits": c.plan.modulus_bits, "unmasked": c.unmasked},
    )
    c.emit({"event": "done", "parties": result.parties, "dropped": result.dropped,
            "party_metrics": party_metrics, "global_metrics": global_m, "wall_time_s": result.wall_time_s})
    return result


def _schema_diff(party: str, theirs: list[str], holder: str, ref: list[str]) -> str:
    missing = [f for f in ref if f not in theirs]
    extra = [f for f in theirs if f not in ref]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing feature(s) {missing}")
        if extra:
            parts.append(f"unexpected feature(s) {extra}")
        detail = ", ".join(parts)
    else:
        i = next(i for i, (a, b) in enumerate(zip(theirs, ref)) if a != b)
        detail = f"feature order differs at position {i + 1}: '{theirs[i]}' where '{ref[i]}' is expected"
    return f"setup: schema of party '{party}' differs from key holder '{holder}': {detail}"
