"""Attacks on SecureBoost transcripts (membership-hiding mode, today's only mode).

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

The per-level node-membership mode (``sb`` engineer, branch ``sb``) is not on this branch:
its passive party would learn which rows share a node at each level; not measured here.
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
    bits: np.ndarray  # (splits, rows) bool: left/right of every training row per passive split, in protocol order
    hist_nodes: list[int]  # nodes per histogram command (the passive's view of the tree shape)
    X_passive_raw: np.ndarray
    X_label: np.ndarray
    y: np.ndarray
    test_auc: float | None


def record(guest_df: pd.DataFrame, host_df: pd.DataFrame, cfg: SecureBoostConfig, *, host: str = "host",
           test_ids: set[str] | frozenset[str] | None = None) -> SBTranscript:
    """Run SecureBoost for real (CKKS, in-process roles) and keep what crosses between the two parties."""
    wire: list[WireRecord] = []
    out = run_secureboost_inprocess(guest_df, {host: host_df}, cfg, test_ids=test_ids, observers=[wire.append])
    bits: list[np.ndarray] = []
    nodes: list[int] = []
    guest = table_from_frame(guest_df, party="guest", source="guest", label_col="y")
    hosts = table_from_frame(host_df, party=host, source=host)
    common = set(hosts.ids)
    order = [i for i in guest.ids if i in common]
    g_train = split_by_ids(guest.align(order), frozenset(test_ids or ()))[0]
    h_train = split_by_ids(hosts.align(order), frozenset(test_ids or ()))[0]
    n = len(g_train)
    for r in wire:
        if not r.tag.endswith((".cmd", ".reply")):
            continue
        blobs, meta = unpack_blobs(r.payload, what=r.tag)
        if r.tag.endswith(".cmd") and meta.get("op") == "hist":
            nodes.append(int(meta["nodes"]))
        if r.tag.endswith(".reply") and meta.get("op") == "split":
            arrays, _ = unpack_arrays(blobs[0], what="split bits")
            bits.append(np.unpackbits(arrays["bits"], axis=1, count=n).astype(bool))
    y = g_train.y
    assert y is not None
    return SBTranscript(np.vstack(bits) if bits else np.zeros((0, n), dtype=bool), nodes, h_train.X, g_train.X,
                        y.astype(np.float64), out.label.test_auc)


def minority_side_scores(t: SBTranscript) -> np.ndarray:
    """Per row: how many of the passive's winning splits put it on the smaller side."""
    if not len(t.bits):
        return np.zeros(len(t.y))
    left_small = t.bits.mean(axis=1) < 0.5
    side = np.where(left_small[:, None], t.bits, ~t.bits)
    return side.sum(axis=0).astype(np.float64)


def label_inference(t: SBTranscript) -> dict[str, Any]:
    a = auc(t.y, minority_side_scores(t))
    return {"attacks": {"minority_side": a}, "best_auc": max(a, 1.0 - a), "no_information_auc": random_baseline(t.y),
            "passive_splits": int(len(t.bits)), "hist_commands": len(t.hist_nodes), "n_rows": len(t.y)}


def reconstruct_features(t: SBTranscript, known_fraction: float = 0.01, seed: int = 0) -> dict[str, Any]:
    known = known_mask(len(t.y), known_fraction, seed)
    Xp = t.X_passive_raw
    B = t.bits.T.astype(np.float64)
    ok = [j for j in range(Xp.shape[1]) if np.all(np.isfinite(Xp[:, j]))]
    from_bits = [known_rows_r2(Xp[:, j], B, known) for j in ok] if B.shape[1] else [0.0 for _ in ok]
    from_own = [known_rows_r2(Xp[:, j], t.X_label, known) for j in ok]
    return {"known_rows": int(known.sum()), "passive_splits": int(B.shape[1]),
            "r2_median_from_bits": median(from_bits), "r2_median_from_own_features": median(from_own),
            "r2_per_feature_from_bits": [round(v, 4) for v in from_bits],
            "r2_per_feature_from_own_features": [round(v, 4) for v in from_own]}
