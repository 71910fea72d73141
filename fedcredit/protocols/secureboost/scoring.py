"""SecureBoost online inference: passive decisions, their parsing, and the label party's tree walk.

A passive party answers a scoring batch with only the left/right bit of every split it
owns (:func:`passive_decisions`); the label party walks every tree with its own
thresholds and those bits (:func:`label_margin`, :func:`label_predict`).  Used for the
joint evaluation at the end of training and by the party's scoring service.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from fedcredit.errors import ProtocolError
from fedcredit.protocols.secureboost.trees import LabelModelPart, PassiveModelPart, _sigmoid, check_columns
from fedcredit.protocols.vertical_common import pack_arrays, unpack_arrays

__all__ = ["passive_decisions", "parse_decisions", "label_margin", "label_predict"]


def passive_decisions(model_part: PassiveModelPart, X: np.ndarray) -> bytes:
    """A passive party's answer to a scoring batch: left/right bit of every split it owns, for every row.

    ``X`` is the passive party's own feature matrix for the batch (columns in
    ``model_part.feature_names`` order).  Only bits leave: never a value or threshold.
    """
    X = np.asarray(X, dtype=np.float64)
    check_columns(model_part.feature_names, X, f"party '{model_part.party}'")
    ids = np.array(sorted(model_part.splits), dtype=np.int64)
    bits = np.zeros((len(ids), X.shape[0]), dtype=bool)
    for k, sid in enumerate(ids.tolist()):
        f, thr = model_part.splits[sid]
        bits[k] = X[:, f] <= thr
    return pack_arrays(
        {"split_ids": ids, "bits": np.packbits(bits, axis=1)},
        {"party": model_part.party, "n": int(X.shape[0])},
    )


def parse_decisions(party: str, payload: bytes, n: int) -> dict[int, np.ndarray]:
    """Split id -> left/right bit per row, from one passive party's :func:`passive_decisions` answer for ``n`` rows."""
    arrays, meta = unpack_arrays(payload, what=f"decisions from party '{party}'")
    if meta.get("party") != party:
        raise ProtocolError(f"decisions labelled as party {meta.get('party')!r} were given for party '{party}'")
    if int(meta.get("n", -1)) != n:
        raise ProtocolError(f"decisions from party '{party}' cover {meta.get('n')} rows, the batch has {n}")
    ids, bits = arrays.get("split_ids"), arrays.get("bits")
    if ids is None or bits is None or bits.ndim != 2 or bits.shape[0] != ids.shape[0]:
        raise ProtocolError(f"decisions from party '{party}' are malformed (need split_ids and a bits matrix)")
    if bits.shape[1] != (n + 7) // 8:
        raise ProtocolError(f"decisions from party '{party}' have {bits.shape[1]} bytes per split, expected {(n + 7) // 8}")
    unpacked = np.unpackbits(bits, axis=1, count=n).astype(bool)
    return {int(s): unpacked[k] for k, s in enumerate(ids.tolist())}


def label_margin(model_part: LabelModelPart, X_label: np.ndarray, decisions_by_party: Mapping[str, bytes]) -> np.ndarray:
    """Raw score (log-odds) of a batch: walks every tree with own thresholds and the passive parties' bits."""
    X = np.asarray(X_label, dtype=np.float64)
    check_columns(model_part.feature_names, X, f"label party '{model_part.party}'")
    n = X.shape[0]
    missing = [p for p in model_part.passive_parties if p not in decisions_by_party]
    if missing:
        raise ProtocolError(f"scoring needs decisions from every passive party; missing {missing}")
    dec = {p: parse_decisions(p, decisions_by_party[p], n) for p in model_part.passive_parties}
    out = np.full(n, model_part.base_score, dtype=np.float64)
    rows = np.arange(n)
    for t, tree in enumerate(model_part.trees):
        m = len(tree)
        is_leaf = np.array([bool(nd.get("leaf")) for nd in tree])
        value = np.array([float(nd["value"]) if nd.get("leaf") else 0.0 for nd in tree])
        left = np.array([int(nd.get("left", i)) for i, nd in enumerate(tree)], dtype=np.int64)
        right = np.array([int(nd.get("right", i)) for i, nd in enumerate(tree)], dtype=np.int64)
        go_left = np.zeros((m, n), dtype=bool)
        for i, nd in enumerate(tree):
            if nd.get("leaf"):
                continue
            if nd["owner"] == model_part.party:
                go_left[i] = X[:, int(nd["feature"])] <= float(nd["threshold"])
            else:
                bits = dec[nd["owner"]].get(int(nd["split_id"]))
                if bits is None:
                    raise ProtocolError(
                        f"tree {t}: party '{nd['owner']}' sent no decision for its split id {nd['split_id']} "
                        "(is its model part from the same training run?)"
                    )
                go_left[i] = bits
        cur = np.zeros(n, dtype=np.int64)
        for _ in range(m):
            internal = ~is_leaf[cur]
            if not internal.any():
                break
            cur = np.where(internal, np.where(go_left[cur, rows], left[cur], right[cur]), cur)
        out += value[cur]
    return out


def label_predict(model_part: LabelModelPart, X_label: np.ndarray, decisions_by_party: Mapping[str, bytes]) -> np.ndarray:
    """Probability of the positive class (default) for a scoring batch; see :func:`passive_decisions`."""
    return _sigmoid(label_margin(model_part, X_label, decisions_by_party))
