"""What crosses a party's boundary, as data: the leakage tables per protocol and mode, and a run's privacy report.

One source of truth.  Each protocol's leakage table is a :class:`ProtocolTable` here: its
messages (tag kind as :meth:`fedcredit.transport.CountingTransport.sent_by_tag` counts it,
sender role, **form** on the wire, content) and its rows per role (what that role learns in
plaintext, what it receives only encrypted or masked, what it never learns).
``docs/leakage.md`` is generated from these tables (``python -m fedcredit.privacy``; a test
keeps it in sync); the protocol docs (docs/vertical_lr.md, docs/secureboost.md, docs/psi.md,
docs/binning.md) explain the rows and how the tests check them.

:func:`privacy_section` builds the ``privacy`` key of a party's run report
(``fedcredit/report.py``): what this party sent, to whom and in what form, the rows that
applied, the DP parameters and ε spent (the run JSON's ``"privacy": {"dp": {...}}``, when
present) and the measured attack figures for the configuration used
(``fedcredit/attack_figures.json``, written by ``simulations/bench_attacks.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

__all__ = ["FORMS", "Message", "LeakageRow", "ProtocolTable", "TABLES", "table", "form_of", "privacy_section",
           "attack_figures", "markdown", "ATTACK_FIGURES"]

#: the forms a payload takes on the wire, weakest protection last
FORMS: Final = {
    "public": "public parameters or keys (no secret content)",
    "ciphertext": "CKKS ciphertext under the label party's key; the receiver cannot decrypt it",
    "blinded": "elliptic-curve points blinded with the sender's secret scalar (PSI)",
    "masked": "values masked with randomness only the sender knows (or zero-sum masks among passives)",
    "plaintext aggregate": "plaintext, but a sum over many rows (never one row's value)",
    "plaintext": "plaintext values the receiver reads as they are",
    "sealed": "a sealed envelope (crypto/envelope.py) to one named peer: the relay can neither open nor alter it",
}

ATTACK_FIGURES: Final = Path(__file__).with_name("attack_figures.json")


@dataclass(frozen=True)
class Message:
    """One message kind of a protocol: who sends it, in what form, carrying what."""

    kind: str  # tag without round/step numbers ("vlr/g"); a trailing "*" matches any suffix ("psi/resume*")
    sender: str  # "label", "passive", "leader", "any"
    form: str  # a key of FORMS
    content: str

    def matches(self, kind: str) -> bool:
        return kind.startswith(self.kind[:-1]) if self.kind.endswith("*") else kind == self.kind


@dataclass(frozen=True)
class LeakageRow:
    """One role's row of a leakage table."""

    role: str  # "label", "passive", "any party", "coordinator / relay"
    learns: str  # receives in plaintext / learns
    protected: str  # receives only encrypted or masked
    never: str  # does not learn


@dataclass(frozen=True)
class ProtocolTable:
    protocol: str  # "vertical-lr", "secureboost", "psi", "binning", "vertical-job"
    mode: str  # "default", or the protocol's mode ("hide_membership", "shared-weights")
    doc: str  # where the rows are explained and tested
    messages: tuple[Message, ...]
    rows: tuple[LeakageRow, ...]

    def rows_for(self, role: str) -> list[LeakageRow]:
        return [r for r in self.rows if r.role in (role, "any party")]


_RELAY = LeakageRow("coordinator / relay", "message sizes and timing only (payloads are sealed end to end by the data "
                    "plane): step and epoch counts, n, a party's feature or ciphertext counts", "every payload",
                    "any key, any plaintext")
#: every SecureBoost mode: the resume agreement (fedcredit.checkpoint)
_SB_RESUME = Message("sb/resume*", "any", "plaintext", "resumed runs: tree numbers held / to resume after")

TABLES: Final[tuple[ProtocolTable, ...]] = (
    ProtocolTable(
        "vertical-lr", "plaintext-weights", "docs/vertical_lr.md#leakage-table",
        (
            Message("vlr/setup", "label", "plaintext", "hyper-parameters, party list, row counts, id digests"),
            Message("vlr/ctx", "label", "public", "the public CKKS context (no secret key)"),
            Message("vlr/hello", "passive", "plaintext", "its feature count"),
            Message("vlr/pairseed", "passive", "plaintext", "a 32-byte zero-sum mask seed for another passive (>= 2)"),
            Message("vlr/z", "passive", "masked", "fixed-point partial logits X_k·w_k of the batch rows (with one "
                    "passive the label party reads them; with >= 2 only their sum)"),
            Message("vlr/r", "label", "ciphertext", "Enc(2^12·d): the batch residuals"),
            Message("vlr/g", "passive", "masked", "per own column Enc(2^12·d) ⊙ x_c + m_c, the mask known only to it"),
            Message("vlr/gs", "label", "masked", "flooded slot sums of those: still masked with the passive's masks; "
                    "the passive removes them and reads its own gradient X_kᵀd (a plaintext aggregate over the batch)"),
            Message("vlr/zv", "passive", "masked", "partial logits on the validation rows, as vlr/z"),
            Message("vlr/ctl", "label", "plaintext", "three bits per epoch: improved, stop, full"),
            Message("vlr/score/req", "label", "plaintext", "ids to score (customers both hold)"),
            Message("vlr/score/resp", "passive", "plaintext", "its partial logit per requested id"),
            Message("vlr/resume*", "any", "plaintext", "resumed runs: epoch numbers held / to resume after"),
        ),
        (
            LeakageRow("label", "each passive's feature count; per step Σ_k z_k for every batch row (one passive: its "
                       "X_k·w_k), the same on validation rows each epoch; the final partial logit per test id",
                       "per step and passive column a ciphertext of 2^12·x_ic·d_i + m_ic (mask uniform in ±2^42, "
                       "known only to the passive); it returns the slot sums flooded",
                       "passive raw features (only X_k up to an unknown linear map), weights, gradients; which "
                       "passive contributed what (>= 2 passives)"),
            LeakageRow("passive", "hyper-parameters, row counts, id digests; per step its own gradient X_kᵀd/|batch| "
                       "over >= min_batch rows (flooding noise σ ≈ 4·10⁻⁶); three control bits per epoch; its own "
                       "trained model part w_k", "Enc(d) under the label party's key",
                       "labels, residuals, predictions, the label party's features and weights"),
            _RELAY,
        ),
    ),
    ProtocolTable(
        "vertical-lr", "shared-weights", "docs/vertical_lr.md#shared-weights",
        (
            Message("vlr/setup", "label", "plaintext", "hyper-parameters (passive_weights = \"shared\"), party list, "
                    "row counts, id digests"),
            Message("vlr/ctx", "label", "public", "the public CKKS context (no secret key)"),
            Message("vlr/hello", "passive", "plaintext", "its feature count"),
            Message("vlr/pairseed", "passive", "plaintext", "a 32-byte zero-sum mask seed for another passive (>= 2)"),
            Message("vlr/wb", "label", "ciphertext", "Enc(b_k + μ·v_k): its share of the passive's look-ahead weights, "
                    "one replicated ciphertext per passive feature"),
            Message("vlr/z", "passive", "ciphertext", "Enc(X_k·(a_k + b_k) + pair masks + noise σ = 2^-10) of the batch "
                    "rows (one passive: the label party decrypts X_k·w_k; >= 2: only the sum is unmasked)"),
            Message("vlr/r", "label", "ciphertext", "Enc(2^12·d): the batch residuals"),
            Message("vlr/g", "passive", "masked", "per own column Enc(2^12·d) ⊙ x_c + m_c; the label party keeps the "
                    "slot sums as its gradient share (nothing returns)"),
            Message("vlr/wbv", "label", "ciphertext", "Enc(b_k) for the validation rows"),
            Message("vlr/zv", "passive", "ciphertext", "encrypted partial logits on the validation rows, as vlr/z"),
            Message("vlr/ctl", "label", "plaintext", "three bits per epoch: improved, stop, full"),
            Message("vlr/wfinal", "label", "ciphertext", "Enc(b_k) at the best point, once: the passive keeps "
                    "Enc(a_k + b_k) = Enc(w_k) as its model part and drops a_k"),
            Message("vlr/score/req", "label", "plaintext", "ids to score (customers both hold)"),
            Message("vlr/score/resp", "passive", "ciphertext", "Enc(X_k·w_k + noise) per requested id"),
            Message("vlr/resume*", "any", "plaintext", "resumed runs: epoch numbers held / to resume after"),
        ),
        (
            LeakageRow("label", "each passive's feature count; per step Σ_k z_k for every batch row (one passive: its "
                       "X_k·w_k, ± noise 2^-10), the same on validation rows each epoch; the final partial logit per "
                       "test id (as in plaintext mode); its share b_k of each passive's weights and per step the "
                       "masked sums 2^12·X_kᵀd + Σ m (its gradient share)",
                       "per step and passive column a ciphertext of 2^12·x_ic·d_i + m_ic (mask uniform in ±2^42)",
                       "passive raw features (only X_k up to an unknown linear map), the passive's weights w_k = "
                       "a_k + b_k and gradients (hidden by the passive's masks); which passive contributed what (>= 2)"),
            LeakageRow("passive", "hyper-parameters, row counts, id digests; three control bits per epoch; its own "
                       "masks (its gradient share is minus their sums, its weight share a_k their running sum: both "
                       "independent of the labels given the control bits)",
                       "Enc(d), Enc(b_k) under the label party's key; its final part Enc(w_k)",
                       "labels, residuals, predictions, its own weights w_k and gradients X_kᵀd, the label party's "
                       "features and weights"),
            _RELAY,
        ),
    ),
    ProtocolTable(
        "secureboost", "hidden-splits", "docs/secureboost.md#leakage-table",
        (
            Message("sb.cmd", "label", "ciphertext", "setup (public CKKS context and rotation keys, row digest, n_bins, "
                    "pack); per level Enc(g + 1j·h) of each computed node over all rows; per passive split won, a new "
                    "split id and the winner as Enc(one-hot over its candidates), replicated and placed; scoring ids; "
                    "checkpoint and finish commands"),
            Message("sb.reply", "passive", "masked", "per node the masked candidate sums (CKKS, zero-sum masked); per "
                    "selection the winner's left/right bit of every training row as CKKS ciphertexts under the label "
                    "party's key, flooded; scoring: every split's bits for the scored ids, encrypted the same way; "
                    "model digest and timings"),
            _SB_RESUME,
        ),
        (
            LeakageRow("label", "each passive's candidate count; per computed node the left sums G_L, H_L of every "
                       "passive candidate (no feature identity); per chosen passive split the left/right bit of every "
                       "training row (decrypted); at scoring the bits per scored id", "—",
                       "passive raw features, thresholds, feature names, bin edges"),
            LeakageRow("passive", "how many of its candidates won on each level (one selection per level names new "
                       "split ids); the number of trees, levels and computed nodes; the ids scored",
                       "Enc(g + 1j·h) of every node; Enc(one-hot winner) of each of its splits (it never learns which "
                       "candidate won, its threshold, or the partition)", "labels, gradients/hessians, node "
                       "membership, its own splits' rules and partitions, the label party's features, thresholds or "
                       "tree structure"),
            _RELAY,
        ),
    ),
    ProtocolTable(
        "secureboost", "hide_membership", "docs/secureboost.md#leakage-table",
        (
            Message("sb.cmd", "label", "ciphertext", "setup (public CKKS context, row digest, n_bins, pack); per level "
                    "Enc(g + 1j·h) of each computed node over all rows; split requests (winning candidate indices); "
                    "scoring ids; checkpoint and finish commands"),
            Message("sb.reply", "passive", "masked", "per node the masked candidate sums (CKKS, zero-sum masked); for "
                    "each chosen split an opaque split id and the left/right bit of every training row (plaintext); "
                    "scoring decision bits; model digest and timings"),
            _SB_RESUME,
        ),
        (
            LeakageRow("label", "each passive's candidate count; per computed node the left sums G_L, H_L of every "
                       "passive candidate (no feature identity); per chosen passive split the left/right bit of every "
                       "training row; at scoring the bits per scored id", "—",
                       "passive raw features, thresholds, feature names, bin edges"),
            LeakageRow("passive", "which of its own candidates won and how often per level; the number of trees, "
                       "levels and computed nodes; the ids scored", "Enc(g + 1j·h) of every node (it does not learn "
                       "which rows are in a node)", "labels, gradients/hessians, node membership, the label party's "
                       "features, thresholds or tree structure"),
            _RELAY,
        ),
    ),
    ProtocolTable(
        "secureboost", "per_level", "docs/secureboost.md#leakage-table",
        (
            Message("sb.cmd", "label", "ciphertext", "setup; per level, when the lane layout is cheaper, the rows of "
                    "every computed node of the level (plaintext row indices and node sizes) and their Enc(g + 1j·h) "
                    "once, compacted per node (otherwise as hide_membership); split requests; scoring ids; "
                    "checkpoint and finish commands"),
            Message("sb.reply", "passive", "masked", "per node the masked candidate sums; for each chosen split an "
                    "opaque split id and the left/right bit of every training row (plaintext); scoring decision "
                    "bits; model digest and timings"),
            _SB_RESUME,
        ),
        (
            LeakageRow("label", "as in hide_membership: per computed node the left sums of every passive candidate; "
                       "per chosen passive split the left/right bit of every training row", "—",
                       "passive raw features, thresholds, feature names, bin edges"),
            LeakageRow("passive", "which of its own candidates won; **node membership**: the rows of every computed "
                       "node of each level sent in the lane layout (so the tree structure over the rows, the label "
                       "party's splits included, though not their features or thresholds)",
                       "Enc(g + 1j·h) of the node rows", "labels, gradients/hessians, the label party's features "
                       "and thresholds"),
            _RELAY,
        ),
    ),
    ProtocolTable(
        "psi", "default", "docs/psi.md",
        (
            Message("psi/hello", "any", "plaintext", "protocol version, set size, batch count"),
            Message("psi/s", "any", "blinded", "its own ids, singly blinded k_P·H(x)"),
            Message("psi/d", "any", "blinded", "the peer's ids, doubly blinded (16-byte digests)"),
            Message("psi/final", "leader", "blinded", "the intersection's doubly-blinded values and its size"),
            Message("psi/resume*", "any", "plaintext", "resumed runs: which steps every party holds"),
            Message("psi/batch/resume*", "any", "plaintext", "resumed runs: the last batch round held"),
        ),
        (
            LeakageRow("any party", "the size of every other party's id set and the intersection (ids it already "
                       "holds)", "the other parties' ids, blinded", "any id outside the intersection"),
            _RELAY,
        ),
    ),
    ProtocolTable(
        "horizontal", "default", "docs/horizontal.md#4-leakage-table-what-each-role-receives-in-plaintext",
        (
            Message("h/setup", "bank", "plaintext", "feature names, schema fingerprint, whether it has a test table; "
                    "its secure-aggregation public keys and its mask seeds' Shamir shares sealed to each other bank "
                    "(the key holder also the public CKKS context)"),
            Message("h/install_key", "bank", "ciphertext", "its standardization sums, Enc((limbs + masks) mod M); with "
                    "dropouts allowed, the size and digest of the member list it masked among, sealed to each other "
                    "member (as with h/fit and h/finalize: checked by every survivor before it reveals a share)"),
            Message("h/fit", "bank", "ciphertext", "its update (or Newton sums), Enc((limbs + masks) mod M), and "
                    "public AUC/KS/n_test of the decrypted global model on its test rows"),
            Message("h/attest", "bank", "sealed", "only when a bank dropped out of an aggregation: the survivor set it "
                    "was told, sealed to each other survivor (the consistency check before any share is revealed)"),
            Message("h/unmask", "bank", "plaintext", "only with dropouts allowed: the shares it holds of the survivors' "
                    "self-mask seeds and the dropped banks' mask keys, for that one aggregation"),
            Message("h/finalize", "bank", "ciphertext", "its test-score histogram, masked and encrypted; public final "
                    "AUC/KS/n_test"),
            Message("h/global_metrics", "bank", "plaintext aggregate", "the key holder only: global AUC/KS/n_test from "
                    "the summed histogram"),
        ),
        (
            LeakageRow("bank", "the global mean/std, Σn_k, the global model after every round; in Newton rounds the "
                       "pooled gradient, Hessian and log-loss; the key holder also the summed test-score histogram",
                       "— (it holds the shared key but only ever decrypts sums)",
                       "another bank's rows, labels, n_k, statistics, update, Newton sums or histogram"),
            LeakageRow("coordinator / relay", "banks' secure-aggregation public keys, schema fingerprints, public test "
                       "metrics, message sizes and timing; per unmasked aggregation who sent and who dropped",
                       "every statistic, update and histogram (CKKS, masked)",
                       "any key, rows, labels, n_k, any bank's vector, the global model; with up to t-1 colluding "
                       "banks still nothing beyond the sum; lying about who dropped, the sum of one survivor set per "
                       "aggregation, never two (the consistency check, section 4a); announcing different member lists, a "
                       "refusal (each survivor checks the others' sealed lists)"),
        ),
    ),
    ProtocolTable(
        "vertical-job", "default", "docs/vertical_deployment.md",
        (Message("vjob/split", "label", "plaintext", "the test-row bitmask over the PSI order and its rule"),),
        (LeakageRow("passive", "which common rows are test rows", "—", "anything label-derived"),),
    ),
    ProtocolTable(
        "binning", "default", "docs/binning.md",
        (
            Message("bin/setup", "label", "plaintext", "binning method, bins, minimum bin size, row count, digest"),
            Message("bin/ctx", "label", "public", "the public CKKS context"),
            Message("bin/y", "label", "ciphertext", "Enc(y): the training labels"),
            Message("bin/counts", "passive", "plaintext aggregate", "rows per prebin of each own feature"),
            Message("bin/events", "passive", "masked", "Enc(events per prebin), slot-masked"),
            Message("bin/result", "label", "plaintext aggregate", "per own feature: selected, merge map, WOE per bin"),
        ),
        (
            LeakageRow("label", "rows and events per passive prebin (no bin edges, no feature values)", "—",
                       "passive raw features, bin edges"),
            LeakageRow("passive", "WOE per bin of its own features (an aggregate of labels over >= min_bin_size rows) "
                       "and whether each was selected", "Enc(y)", "any row's label"),
        ),
    ),
)


def table(protocol: str, mode: str = "default") -> ProtocolTable:
    """The leakage table of ``protocol`` in ``mode``; a KeyError names what exists."""
    for t in TABLES:
        if t.protocol == protocol and t.mode == mode:
            return t
    raise KeyError(f"no leakage table for {protocol!r} mode {mode!r}; known: "
                   f"{sorted((t.protocol, t.mode) for t in TABLES)}")


def _protocol_of(kind: str) -> str | None:
    head = kind.split("/", 1)[0].split(".", 1)[0]
    return {"vlr": "vertical-lr", "sb": "secureboost", "psi": "psi", "vjob": "vertical-job", "bin": "binning",
            "h": "horizontal"}.get(head)


def form_of(kind: str, tables: Sequence[ProtocolTable] = TABLES) -> tuple[str, str, str] | None:
    """(protocol, form, content) of a sent message kind, or None when no table declares it."""
    for t in tables:
        for m in t.messages:
            if m.matches(kind):
                return t.protocol, m.form, m.content
    return None


@lru_cache(maxsize=4)
def _load_figures(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        return {}
    doc = json.loads(p.read_text(encoding="utf-8"))
    return doc if isinstance(doc, dict) else {}


def attack_figures(path: Path = ATTACK_FIGURES) -> dict[str, Any]:
    """The measured attack figures the package ships (``simulations/bench_attacks.py`` writes them)."""
    return _load_figures(str(path))


def _vlr_batch(mode: str) -> int | None:
    if mode == "default":
        return 4096
    if mode.startswith("batch_size="):
        return int(mode.split("=", 1)[1])
    return None


def attack_mode(protocol: str, config: Mapping[str, Any] | None) -> str:
    """The measured configuration that applies to ``config``.

    Vertical LR: the measured batch size that is the largest not above the run's (a smaller
    batch leaks more, so the figure is an upper bound for the run), ``batch_size=0`` for full
    batch; SecureBoost: ``hidden-splits`` (the default since ``passive_splits`` existed), else its
    histogram mode (a run recorded before the key existed revealed its splits).
    """
    cfg = dict(config or {})
    if protocol == "secureboost":
        mode = str(cfg.get("histogram_mode", "hide_membership"))
        return "hidden-splits" if mode == "hide_membership" and cfg.get("passive_splits") == "hidden" else mode
    if protocol != "vertical-lr":
        return "default"
    b = int(cfg.get("batch_size", 4096))
    if b <= 0:
        return "batch_size=0"
    measured = sorted({bb for e in attack_figures().get("entries", []) if e.get("protocol") == protocol
                       for bb in [_vlr_batch(str(e.get("mode")))] if bb})
    fit = [bb for bb in measured if bb <= b]
    if not fit:
        return "default"
    best = max(fit)
    return "default" if best == 4096 else f"batch_size={best}"


def _dp_eps(defence: str) -> float | None:
    """ε of a measured defence key ``"label-dp eps=1"``; None for ``"none"``."""
    if not defence.startswith("label-dp eps="):
        return None
    try:
        return float(defence.split("=", 1)[1])
    except ValueError:
        return None


def _job_dp_epsilon(protocol: str, config: Mapping[str, Any] | None) -> float | None:
    """ε of the job's ``[model.dp]`` when this party holds no DP report of its own.

    Why: in SecureBoost only the label party adds the noise and reports ε; the passive party approved
    the same job, so its report must show the label-DP figures too, not the no-DP ones."""
    d = (config or {}).get("dp")
    if not isinstance(d, Mapping):
        return None
    if isinstance(d.get("epsilon"), int | float):
        return float(d["epsilon"])
    z = d.get("noise_multiplier")
    if protocol == "secureboost" and isinstance(z, int | float):  # one release per tree (fedcredit/dp.py)
        from fedcredit import dp as dp_

        return dp_.epsilon(float(z), int((config or {}).get("n_trees", 30)), float(d.get("delta", 1e-5)))
    return None


def _applying_figures(protocol: str, config: Mapping[str, Any] | None, dp: Mapping[str, Any]) -> dict[str, Any]:
    """The measured entries for this run's mode; with DP, those of the measured ε nearest the run's (log scale)."""
    doc = attack_figures()
    mode = attack_mode(protocol, config)
    entries = [e for e in doc.get("entries", []) if e.get("protocol") == protocol and e.get("mode") == mode]
    eps = (dp.get("target_epsilon") or dp.get("epsilon")) if dp else _job_dp_epsilon(protocol, config)
    want, note = "none", ""
    if dp or eps is not None:
        measured = sorted({x for e in entries for x in [_dp_eps(str(e.get("defence")))] if x})
        if isinstance(eps, int | float) and eps > 0 and measured:
            near = min(measured, key=lambda m: abs(math.log(m / float(eps))))
            want = f"label-dp eps={near:g}"
            if near != eps:
                note = f"measured at ε = {near:g}, the nearest to this run's ε = {float(eps):g}"
        else:
            note = "no figure was measured with DP for this configuration: the figures are without DP"
    if protocol == "vertical-lr" and vlr_weights_mode(config or {}) == "shared-weights" and not dp:
        want = "shared-weights"
    chosen = [e for e in entries if e.get("defence") == want]
    measured_by = next((e["command"] for e in chosen if e.get("command")), doc.get("command", "not measured"))
    return {"mode": mode, "defence": want, "entries": chosen, "note": note,
            "source": "fedcredit/attack_figures.json: " + str(measured_by),
            "goal": "passive-party label inference AUC <= 0.55"}


def vlr_weights_mode(config: Mapping[str, Any]) -> str:
    """The vertical LR leakage table of a job's model parameters: ``"shared-weights"`` (the default since
    ``passive_weights = "shared"`` became it) or ``"plaintext-weights"``; a run recorded before the key existed
    trained with plaintext weights."""
    return "shared-weights" if config.get("passive_weights", "plaintext") == "shared" else "plaintext-weights"


def privacy_section(*, protocol: str, role: str, sent_by_tag: Sequence[Mapping[str, Any]],
                    config: Mapping[str, Any] | None = None, privacy: Mapping[str, Any] | None = None,
                    also: Sequence[str] = ()) -> dict[str, Any]:
    """The run report's ``privacy`` key at one party (docs/reports.md, "Privacy report").

    ``sent_by_tag``: this party's ``CountingTransport.sent_by_tag()``; ``config``: the job's model
    parameters (for the mode and the attack figures); ``privacy``: the run JSON's ``"privacy"``
    object (``{"dp": {...}}`` when a DP option was on); ``also``: protocols the run used besides those this
    party sent messages of (a vertical job's PSI and test-row split: a passive party only receives the split).
    """
    cfg = dict(config or {})
    mode = attack_mode(protocol, cfg) if protocol == "secureboost" else vlr_weights_mode(cfg) \
        if protocol == "vertical-lr" else "default"
    ordered = sorted(TABLES, key=lambda t: not (t.protocol == protocol and t.mode == mode))  # this mode's forms first
    sent = []
    used = {protocol, *also}
    for r in sent_by_tag:
        kind = str(r.get("tag", ""))
        hit = form_of(kind, ordered)
        p = hit[0] if hit else _protocol_of(kind)
        if p:
            used.add(p)
        sent.append({"to": r.get("to"), "tag": kind, "messages": r.get("messages"), "bytes": r.get("bytes"),
                     "form": hit[1] if hit else "undeclared", "content": hit[2] if hit else
                     "not in any leakage table (fedcredit/privacy.py): report it"})
    order = ["psi", "vertical-job", "binning", protocol]
    leakage = []
    for p in [q for q in order if q in used] + sorted(used - set(order)):
        try:
            t = table(p, mode if p == protocol else "default")
        except KeyError:
            continue
        leakage += [{"protocol": t.protocol, "mode": t.mode, "doc": t.doc, "role": r.role, "learns": r.learns,
                     "protected": r.protected, "never": r.never} for r in t.rows]
    dp = dict((privacy or {}).get("dp") or {})
    return {
        "protocol": protocol, "mode": mode, "role": role,
        "sent": sent,
        "leakage": leakage,
        "dp": dp or None,
        "attacks": _applying_figures(protocol, cfg, dp),
    }


def markdown() -> str:
    """docs/leakage.md: every table above, as the docs show it."""
    out = ["# Leakage tables (generated)", "",
           "Generated from `fedcredit/privacy.py` by `python -m fedcredit.privacy > docs/leakage.md`; "
           "`tests/test_privacy_report.py` keeps this file in sync. Each run's privacy report "
           "(docs/reports.md, \"Privacy report\") shows the rows that applied to it. The protocol docs "
           "explain each row and how it is tested.", "", "Forms on the wire:", "",
           "| form | meaning |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in FORMS.items()]
    for t in TABLES:
        out += ["", f"## {t.protocol} ({t.mode})", "", f"Explained in `{t.doc}`.", "",
                "| message | sender | form | content |", "|---|---|---|---|"]
        out += [f"| `{m.kind}` | {m.sender} | {m.form} | {m.content} |" for m in t.messages]
        out += ["", "| role | learns (plaintext) | receives only encrypted / masked | never learns |",
                "|---|---|---|---|"]
        out += [f"| {r.role} | {r.learns} | {r.protected} | {r.never} |" for r in t.rows]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
