"""Attacks on SecureBoost transcripts: hidden splits (the default), revealed splits, per-level mode.

Hidden splits (``passive_splits = "hidden"``): the passive party's view has no row-level plaintext —
it computes each winner's bits under the label party's key without learning the winner
(crypto/ckks_select.py) — so :attr:`SBTranscript.bits`, the partitions it can read, is empty and
every score it can derive from the transcript is the same for every row (AUC 0.5).  The label
party still decrypts the bits (:attr:`SBTranscript.label_bits`), which its attack uses.

What the passive party holds (docs/secureboost.md, leakage table): the public context, per
computed node CKKS ciphertexts of ``g + 1j·h`` it cannot decrypt, and which of its own split
candidates won (so the left/right partition of every training row for each of its winning
splits), and how many nodes per level.  It never learns node membership.  Its attack
(``minority_side``): a row's score is the number of its winning splits that put it on the
smaller side (split finding isolates the riskier minority); reported with the orientation
that helps the attacker most, so it bounds any sign guess.

What the label party holds: for every passive split the left/right bit of every training
row.  Its attack (``reconstruct_features``): a few known rows fit a linear map from a row's
bits to each passive feature; R² on the other rows beside the same fit from its own features.

Per-level mode (``histogram_mode = "per_level"``): when the label party picks the lane layout
for a level, the passive party also receives the rows of every computed node of that level
(``rows``/``sizes`` in the ``hist`` command).  Its extra attacks: ``small_nodes`` (rows that sit
in small computed nodes: a tree isolates the riskier minority) and ``co_membership`` (the top
singular vector of the row × node indicator matrix: rows that the trees keep grouping together
have similar residuals), each with the orientation that helps the attacker most.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedcredit.codec import unpack_arrays, unpack_blobs
from fedcredit.data import split_by_ids, table_from_frame
from fedcredit.params import SecureBoostConfig
from fedcredit.transport import WireRecord
from simulations.attacks.common import auc, known_mask, known_rows_r2, median, random_baseline
from simulations.inprocess import run_secureboost_inprocess


@dataclass
class SBTranscript:
    bits: np.ndarray  # (splits, rows) bool: the partitions the *passive* party can read (none with hidden splits)
    hist_nodes: list[int]  # nodes per histogram command (the passive's view of the tree shape)
    node_rows: list[np.ndarray]  # per-level mode: the rows of every computed node it was shown
    X_passive_raw: np.ndarray
    X_label: np.ndarray
    y: np.ndarray
    test_auc: float | None
    label_bits: np.ndarray | None = None  # (splits, rows): what the label party reads (None: = bits)
    own_feature_auc: float = 0.5  # context: the passive's best single own feature, best sign (needs the labels)


def record(guest_df: pd.DataFrame, host_df: pd.DataFrame, cfg: SecureBoostConfig, *, host: str = "host",
           test_ids: set[str] | frozenset[str] | None = None) -> SBTranscript:
    """Run SecureBoost for real (CKKS, in-process roles) and keep what crosses between the two parties."""
    wire: list[WireRecord] = []
    out = run_secureboost_inprocess(guest_df, {host: host_df}, cfg, test_ids=test_ids, observers=[wire.append])
    bits: list[np.ndarray] = []
    nodes: list[int] = []
    node_rows: list[np.ndarray] = []
    guest = table_from_frame(guest_df, party="guest", source="guest", label_col="y")
    hosts = table_from_frame(host_df, party=host, source=host)
    common = set(hosts.ids)
    order = [i for i in guest.ids if i in common]
    g_train = split_by_ids(guest.align(order), frozenset(test_ids or ()))[0]
    h_train = split_by_ids(hosts.align(order), frozenset(test_ids or ()))[0]
    n = len(g_train)
    keeper = None
    if out.label.model.secret_context is not None:  # hidden splits: the label party reads the bits with its key
        from crypto import ckks
        from crypto.ckks_select import SelectionKeeper, n_pairs

        keeper = SelectionKeeper(ckks.load_secret(out.label.model.secret_context))
    label_bits: list[np.ndarray] = []
    for r in wire:
        if not r.tag.endswith((".cmd", ".reply")):
            continue
        blobs, meta = unpack_blobs(r.payload, what=r.tag)
        if r.tag.endswith(".cmd") and meta.get("op") == "hist":
            if "lanes" in meta:  # per-level layout: the level's node rows, in the clear
                arr, _ = unpack_arrays(blobs[0], what="node rows")
                cuts = np.cumsum(arr["sizes"])[:-1]
                node_rows += [np.asarray(x, dtype=np.int64) for x in np.split(arr["rows"], cuts)]
                nodes.append(len(arr["sizes"]))
            else:
                nodes.append(int(meta["nodes"]))
        if r.tag.endswith(".reply") and meta.get("op") == "split":
            arrays, _ = unpack_arrays(blobs[0], what="split bits")
            bits.append(np.unpackbits(arrays["bits"], axis=1, count=n).astype(bool))
        if r.tag.endswith(".reply") and meta.get("op") == "select" and keeper is not None:
            C2 = n_pairs(n)
            label_bits += [keeper.decrypt_bits(blobs[k : k + C2], n, host)[None, :] for k in range(0, len(blobs), C2)]
    y = g_train.y
    assert y is not None
    own = [auc(y.astype(np.float64), np.nan_to_num(h_train.X[:, j])) for j in range(h_train.X.shape[1])]
    return SBTranscript(np.vstack(bits) if bits else np.zeros((0, n), dtype=bool), nodes, node_rows, h_train.X,
                        g_train.X,
                        y.astype(np.float64), out.label.test_auc,
                        label_bits=np.vstack(label_bits) if label_bits else None,
                        own_feature_auc=max(max(a, 1.0 - a) for a in own) if own else 0.5)


def minority_side_scores(t: SBTranscript) -> np.ndarray:
    """Per row: how many of the passive's winning splits put it on the smaller side."""
    if not len(t.bits):
        return np.zeros(len(t.y))
    left_small = t.bits.mean(axis=1) < 0.5
    side = np.where(left_small[:, None], t.bits, ~t.bits)
    return side.sum(axis=0).astype(np.float64)


def small_node_scores(t: SBTranscript) -> np.ndarray:
    """Per row: mean of -log(size) over the revealed nodes holding it (rows the trees isolate in small nodes)."""
    acc, cnt = np.zeros(len(t.y)), np.zeros(len(t.y))
    for r in t.node_rows:
        acc[r] += -np.log(len(r))
        cnt[r] += 1
    return np.divide(acc, cnt, out=np.zeros(len(t.y)), where=cnt > 0)


def co_membership_scores(t: SBTranscript) -> np.ndarray:
    """Top left singular vector of the centred row x revealed-node indicator matrix."""
    if not t.node_rows:
        return np.zeros(len(t.y))
    M = np.zeros((len(t.y), len(t.node_rows)), dtype=np.float32)
    for j, r in enumerate(t.node_rows):
        M[r, j] = 1.0
    M -= M.mean(axis=0)
    u, _, _ = np.linalg.svd(M, full_matrices=False)
    return u[:, 0].astype(np.float64)


def label_inference(t: SBTranscript) -> dict[str, Any]:
    """Every passive-party attack's AUC (best orientation: an upper bound on any sign guess) and the baseline."""
    scores = {"minority_side": minority_side_scores(t)}
    if t.node_rows:
        scores["small_nodes"] = small_node_scores(t)
        scores["co_membership"] = co_membership_scores(t)
    attacks = {}
    for k, sc in scores.items():
        a = auc(t.y, sc)
        attacks[k] = max(a, 1.0 - a)
    return {"attacks": attacks, "best_auc": max(attacks.values()), "no_information_auc": random_baseline(t.y),
            "passive_splits": int(len(t.bits) if t.label_bits is None else len(t.label_bits)),
            "partitions_readable_by_passive": int(len(t.bits)), "hist_commands": len(t.hist_nodes),
            "revealed_nodes": len(t.node_rows), "n_rows": len(t.y),
            "own_best_feature_auc": round(t.own_feature_auc, 4)}


def reconstruct_features(t: SBTranscript, known_fraction: float = 0.01, seed: int = 0) -> dict[str, Any]:
    known = known_mask(len(t.y), known_fraction, seed)
    Xp = t.X_passive_raw
    B = (t.bits if t.label_bits is None else t.label_bits).T.astype(np.float64)
    ok = [j for j in range(Xp.shape[1]) if np.all(np.isfinite(Xp[:, j]))]
    from_bits = [known_rows_r2(Xp[:, j], B, known) for j in ok] if B.shape[1] else [0.0 for _ in ok]
    from_own = [known_rows_r2(Xp[:, j], t.X_label, known) for j in ok]
    return {"known_rows": int(known.sum()), "passive_splits": int(B.shape[1]),
            "r2_median_from_bits": median(from_bits), "r2_median_from_own_features": median(from_own),
            "r2_per_feature_from_bits": [round(v, 4) for v in from_bits],
            "r2_per_feature_from_own_features": [round(v, 4) for v in from_own]}
