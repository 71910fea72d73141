"""SecureBoost online inference: passive decisions, their parsing, and the label party's tree walk.

A passive party answers a scoring batch with only the left/right bit of every split it
owns (:func:`passive_decisions`); the label party walks every tree with its own
thresholds and those bits (:func:`label_margin`, :func:`label_predict`).  Used for the
joint evaluation at the end of training and by the party's scoring service.

Hidden splits (``passive_splits = "hidden"``): the passive party does not know its splits' rules,
so it answers with ciphertexts whose decryption at the label party gives the same bits — per
applicant from its placed selectors (:class:`OnlinePassive`), per training-time batch from its
replicated ones (the passive role); :func:`read_decisions` decodes either form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crypto import ckks
from crypto.ckks_select import PlacedSelectors, SelectionKeeper, n_pairs
from fedcredit.codec import pack, pack_arrays, pack_blobs, unpack, unpack_arrays
from fedcredit.decision import Contributions, tree_contributions
from fedcredit.errors import ProtocolError
from fedcredit.metrics import sigmoid
from fedcredit.protocols.secureboost.trees import (
    LabelModelPart,
    PassiveModelPart,
    SplitRule,
    check_columns,
    node_rule,
    numeric_schema,
)

__all__ = ["passive_decisions", "parse_decisions", "read_decisions", "hidden_batch_answer", "CompiledRules",
           "LabelScorer", "TreeArrays", "mean_leaf_values", "label_margin", "label_predict", "OnlineLabel",
           "OnlinePassive"]


class CompiledRules:
    """Split rules as arrays, so a batch's bits are a few array operations however many rules there are."""

    def __init__(self, rules: Sequence[SplitRule]) -> None:
        self.n = len(rules)
        num = [k for k, r in enumerate(rules) if r.categories is None]
        self._num = np.array(num, dtype=np.int64)
        self._num_feature = np.array([rules[k].feature for k in num], dtype=np.int64)
        self._num_threshold = np.array([rules[k].threshold for k in num], dtype=np.float64)
        self._missing_left = np.array([r.missing_left for r in rules], dtype=bool)
        self._feature = np.array([r.feature for r in rules], dtype=np.int64)
        self._cat = [(k, r) for k, r in enumerate(rules) if r.categories is not None]

    def bits(self, X: np.ndarray) -> np.ndarray:
        """(rules x rows) bool: which rows go left under each rule (NaN: each rule's default direction)."""
        bits = np.zeros((self.n, X.shape[0]), dtype=bool)
        if not self.n:
            return bits
        with np.errstate(invalid="ignore"):
            bits[self._num] = X[:, self._num_feature].T <= self._num_threshold[:, None]  # NaN compares false
        for k, rule in self._cat:
            bits[k] = rule.left(X[:, rule.feature])
        bits |= np.isnan(X[:, self._feature].T) & self._missing_left[:, None]
        return bits


def hidden_batch_answer(party: str, n: int, split_ids: Sequence[int], cts: Sequence[bytes]) -> bytes:
    """A hidden-split passive party's batch answer: per split id, :func:`~crypto.ckks_select.n_pairs` ciphertexts."""
    return pack_blobs(list(cts), {"party": party, "n": int(n), "hidden": "batch", "split_ids": [int(s) for s in split_ids]})


def read_decisions(party: str, payload: bytes, n: int, *, keeper: SelectionKeeper | None = None, block: int = 0,
                   split_ids: Sequence[int] = ()) -> dict[int, np.ndarray]:
    """Split id -> bit per row from one passive party's answer for ``n`` rows, plaintext or hidden.

    A hidden answer needs the label party's ``keeper`` (its key), the party's selector ``block`` and,
    for a per-applicant answer, the ``split_ids`` the model uses at that party."""
    meta, _, blobs_d = unpack(payload, what=f"decisions from party '{party}'")
    kind = meta.get("hidden")
    if kind is None:
        if keeper is not None:
            raise ProtocolError(f"party '{party}' answered with plaintext split bits, but this model hides its splits")
        return parse_decisions(party, payload, n)
    if keeper is None:
        raise ProtocolError(f"party '{party}' answered with encrypted split bits, but this model does not hide its splits")
    if meta.get("party") != party:
        raise ProtocolError(f"decisions labelled as party {meta.get('party')!r} were given for party '{party}'")
    if meta.get("n") != n or isinstance(meta.get("n"), bool):
        raise ProtocolError(f"decisions from party '{party}' cover {meta.get('n')!r} rows, the batch has {n}")
    blobs = list(blobs_d.values())
    if kind == "batch":
        sids = meta.get("split_ids")
        C2 = n_pairs(n)
        if not isinstance(sids, list) or len(blobs) != len(sids) * C2:
            raise ProtocolError(f"the encrypted decisions from party '{party}' are malformed")
        return {int(s): keeper.decrypt_bits(blobs[k * C2 : (k + 1) * C2], n, party) for k, s in enumerate(sids)}
    if kind == "placed":
        per = meta.get("per_row")
        if not isinstance(per, int) or isinstance(per, bool) or per < 1 or len(blobs) != per * n:
            raise ProtocolError(f"the encrypted decisions from party '{party}' are malformed")
        out = {int(s): np.zeros(n, dtype=bool) for s in split_ids}
        for r in range(n):
            got = keeper.decrypt_placed(blobs[r * per : (r + 1) * per], list(split_ids), block, party)
            for s, b in got.items():
                out[s][r] = b
        return out
    raise ProtocolError(f"decisions from party '{party}' are of an unknown kind {kind!r}")


def passive_decisions(model_part: PassiveModelPart, X: np.ndarray) -> bytes:
    """A passive party's answer to a scoring batch: left/right bit of every split it owns, for every row.

    ``X`` is the passive party's own feature matrix for the batch (columns in
    ``model_part.feature_names`` order, category codes of its input schema:
    :meth:`PassiveModelPart.encode`; NaN = missing, which takes each split's learned
    default direction).  Only bits leave: never a value, threshold or category.
    """
    if model_part.hidden:
        raise ProtocolError(f"party '{model_part.party}': its SecureBoost splits are hidden from it; score with "
                            "OnlinePassive, whose answer only the label party can read")
    X = np.asarray(X, dtype=np.float64)
    check_columns(model_part.feature_names, X, f"party '{model_part.party}'")
    ids = np.array(sorted(model_part.splits), dtype=np.int64)
    bits = np.zeros((len(ids), X.shape[0]), dtype=bool)
    for k, sid in enumerate(ids.tolist()):
        rule = model_part.splits[sid]
        bits[k] = rule.left(X[:, rule.feature])
    return pack_arrays(
        {"split_ids": ids, "bits": np.packbits(bits, axis=1)},
        {"party": model_part.party, "n": int(X.shape[0])},
    )


def parse_decisions(party: str, payload: bytes, n: int) -> dict[int, np.ndarray]:
    """Split id -> left/right bit per row, from one passive party's :func:`passive_decisions` answer for ``n`` rows."""
    arrays, meta = unpack_arrays(payload, what=f"decisions from party '{party}'")
    if meta.get("party") != party:
        raise ProtocolError(f"decisions labelled as party {meta.get('party')!r} were given for party '{party}'")
    if meta.get("n") != n or isinstance(meta.get("n"), bool):
        raise ProtocolError(f"decisions from party '{party}' cover {meta.get('n')!r} rows, the batch has {n}")
    ids, bits = arrays.get("split_ids"), arrays.get("bits")
    if (ids is None or bits is None or ids.ndim != 1 or ids.dtype.kind not in "iu" or bits.dtype != np.uint8
            or bits.ndim != 2 or bits.shape[0] != ids.shape[0]):
        raise ProtocolError(f"decisions from party '{party}' are malformed (need split_ids and a bits matrix)")
    if bits.shape[1] != (n + 7) // 8:
        raise ProtocolError(f"decisions from party '{party}' have {bits.shape[1]} bytes per split, expected {(n + 7) // 8}")
    unpacked = np.unpackbits(bits, axis=1, count=n).astype(bool)
    return {int(s): unpacked[k] for k, s in enumerate(ids.tolist())}


@dataclass(frozen=True)
class TreeArrays:
    """One tree of a label model part as arrays, built once (the JSON nodes are walked only here)."""

    is_leaf: np.ndarray
    value: np.ndarray
    left: np.ndarray
    right: np.ndarray
    own_nodes: np.ndarray
    own_feature: np.ndarray
    own_threshold: np.ndarray  # NaN for a categorical split (never true: its set is applied after)
    own_missing_left: np.ndarray
    own_categories: list[tuple[int, np.ndarray]]  # (position in own_nodes, codes going left) of categorical splits
    passive: dict[str, tuple[np.ndarray, list[int]]]  # owner -> (node indices, their split ids)

    @classmethod
    def of(cls, tree: Sequence[Mapping[str, Any]], me: str) -> TreeArrays:
        own = [i for i, nd in enumerate(tree) if not nd.get("leaf") and nd["owner"] == me]
        rules = [node_rule(tree[i]) for i in own]
        passive: dict[str, tuple[list[int], list[int]]] = {}
        for i, nd in enumerate(tree):
            if not nd.get("leaf") and nd["owner"] != me:
                nodes, sids = passive.setdefault(nd["owner"], ([], []))
                nodes.append(i)
                sids.append(int(nd["split_id"]))
        return cls(
            is_leaf=np.array([bool(nd.get("leaf")) for nd in tree]),
            value=np.array([float(nd["value"]) if nd.get("leaf") else 0.0 for nd in tree]),
            left=np.array([int(nd.get("left", i)) for i, nd in enumerate(tree)], dtype=np.int64),
            right=np.array([int(nd.get("right", i)) for i, nd in enumerate(tree)], dtype=np.int64),
            own_nodes=np.array(own, dtype=np.int64),
            own_feature=np.array([int(tree[i]["feature"]) for i in own], dtype=np.int64),
            own_threshold=np.array([r.threshold for r in rules], dtype=np.float64),
            own_missing_left=np.array([r.missing_left for r in rules], dtype=bool),
            own_categories=[(k, np.array(r.categories, dtype=np.float64)) for k, r in enumerate(rules)
                            if r.categories is not None],
            passive={p: (np.array(n, dtype=np.int64), s) for p, (n, s) in passive.items()},
        )


def mean_leaf_values(tree: Sequence[Mapping[str, Any]]) -> list[float]:
    """Unweighted mean of the leaf values below each node.

    The model part stores no node covers, so the Saabas node value (the cover-weighted
    mean) is approximated by the plain mean; contributions still sum exactly to the
    margin (each path telescopes from the root value to the leaf).
    """
    memo: dict[int, tuple[float, int]] = {}

    def walk(i: int) -> tuple[float, int]:
        if i in memo:
            return memo[i]
        nd = tree[i]
        if nd.get("leaf"):
            r = (float(nd["value"]), 1)
        else:
            a, b = walk(int(nd["left"])), walk(int(nd["right"]))
            r = (a[0] + b[0], a[1] + b[1])
        memo[i] = r
        return r

    return [walk(i)[0] / walk(i)[1] for i in range(len(tree))]


DecisionPath = list[tuple[str | None, float]]  # one tree's decision path: (split key, node value) root -> leaf

_LEAF, _NUMERIC, _CATEGORICAL, _PASSIVE = 0, 1, 2, 3
#: one node for :meth:`LabelScorer.walk`: (kind, split key, node value, feature index | split id,
#: threshold | category codes, missing_left, left child, right child)
_WalkNode = tuple[int, Any, float, int, Any, bool, int, int]


def _compile_walk(tree: Sequence[Mapping[str, Any]], me: str, names: Sequence[str],
                  values: Sequence[float]) -> list[_WalkNode]:
    """One tree as flat tuples of plain Python values (no per-row rule parsing, no numpy per node)."""
    out: list[_WalkNode] = []
    for i, nd in enumerate(tree):
        if nd.get("leaf"):
            out.append((_LEAF, None, float(nd["value"]), 0, None, False, i, i))
            continue
        left, right = int(nd["left"]), int(nd["right"])
        if nd["owner"] != me:
            out.append((_PASSIVE, nd["owner"], values[i], int(nd["split_id"]), None, False, left, right))
            continue
        rule = node_rule(nd)
        if rule.categories is not None:
            out.append((_CATEGORICAL, names[rule.feature], values[i], rule.feature,
                        frozenset(float(c) for c in rule.categories), rule.missing_left, left, right))
        else:
            out.append((_NUMERIC, names[rule.feature], values[i], rule.feature, float(rule.threshold),
                        rule.missing_left, left, right))
    return out


class LabelScorer:
    """A label model part compiled once into arrays for batch scoring (what a scoring service caches).

    Rebuilding the arrays from the JSON nodes on every call was most of a single
    decision's in-process cost; :func:`label_margin` is this walk on a fresh scorer.
    """

    def __init__(self, part: LabelModelPart) -> None:
        self.part = part
        self.trees = [TreeArrays.of(t, part.party) for t in part.trees]
        self.node_values = [mean_leaf_values(t) for t in part.trees]
        self._walk_trees = [_compile_walk(t, part.party, part.feature_names, v)
                            for t, v in zip(part.trees, self.node_values)]
        need: dict[str, dict[int, int]] = {}  # passive party -> split id -> first tree that needs it
        for t, ta in enumerate(self.trees):
            for p, (_, sids) in ta.passive.items():
                for sid in sids:
                    need.setdefault(p, {}).setdefault(sid, t)
        self._needed = need

    def split_ids(self, party: str) -> list[int]:
        """The split ids of ``party`` the trees use, in order (what a hidden-split answer is decrypted for)."""
        return sorted(self._needed.get(party, {}))

    def margin(self, X: np.ndarray, bits: Mapping[str, Mapping[int, np.ndarray]]) -> np.ndarray:
        """Raw score (log-odds) of a batch from own features ``X`` and every passive party's parsed bits."""
        n = X.shape[0]
        out = np.full(n, self.part.base_score, dtype=np.float64)
        rows = np.arange(n)
        for t, ta in enumerate(self.trees):
            go_left = np.zeros((len(ta.is_leaf), n), dtype=bool)
            if len(ta.own_nodes):
                cols = X[:, ta.own_feature].T
                with np.errstate(invalid="ignore"):
                    own = cols <= ta.own_threshold[:, None]  # NaN (missing) compares false
                for k, cats in ta.own_categories:
                    own[k] = np.isin(cols[k], cats)
                own |= np.isnan(cols) & ta.own_missing_left[:, None]  # missing rows: the learned default direction
                go_left[ta.own_nodes] = own
            for p, (nodes, sids) in ta.passive.items():
                pb = bits.get(p)
                if pb is None:
                    raise ProtocolError(f"scoring needs decisions from party '{p}', which sent none")
                try:
                    go_left[nodes] = np.stack([pb[s] for s in sids])
                except KeyError as e:
                    raise ProtocolError(
                        f"tree {t}: party '{p}' sent no decision for its split id {e.args[0]} "
                        "(is its model part from the same training run?)"
                    ) from None
            cur = np.zeros(n, dtype=np.int64)
            for _ in range(len(ta.is_leaf)):
                internal = ~ta.is_leaf[cur]
                if not internal.any():
                    break
                cur = np.where(internal, np.where(go_left[cur, rows], ta.left[cur], ta.right[cur]), cur)
            out += ta.value[cur]
        return out

    def predict(self, X: np.ndarray, bits: Mapping[str, Mapping[int, np.ndarray]]) -> np.ndarray:
        """Probability of the positive class (default) for a batch."""
        return sigmoid(self.margin(X, bits))

    def walk(self, X: np.ndarray, bits: Mapping[str, Mapping[int, np.ndarray]]) -> tuple[np.ndarray, list[list[DecisionPath]]]:
        """Margin and decision paths of every row in **one** walk per row and tree (what online scoring needs).

        The same values as :meth:`margin` (leaf values added in tree order to ``base_score``, so
        bit for bit) and :meth:`decision_paths`; for the few rows of an online batch a plain
        walk beats :meth:`margin`'s per-tree array passes, and the reasons need the paths anyway.
        """
        for p, sids in self._needed.items():
            pb = bits.get(p)
            if pb is None:
                raise ProtocolError(f"scoring needs decisions from party '{p}', which sent none")
            for sid, t in sids.items():
                if sid not in pb:
                    raise ProtocolError(f"tree {t}: party '{p}' sent no decision for its split id {sid} "
                                        "(is its model part from the same training run?)")
        row_bits = {p: {sid: pb[sid].tolist() for sid in self._needed.get(p, ())} for p, pb in bits.items()}
        base = float(self.part.base_score)
        margins = np.empty(X.shape[0], dtype=np.float64)
        paths: list[list[DecisionPath]] = []
        for k, x in enumerate(np.asarray(X, dtype=np.float64).tolist()):
            m = base
            row: list[DecisionPath] = []
            for tree in self._walk_trees:
                i = 0
                path: DecisionPath = []
                while True:
                    kind, key, value, a, b, missing_left, left, right = tree[i]
                    if kind == _LEAF:
                        path.append((None, value))
                        m += value
                        break
                    path.append((key, value))
                    if kind == _PASSIVE:
                        go = row_bits[key][a][k]
                    else:
                        v = x[a]
                        if v != v:  # NaN: missing, the learned default direction
                            go = missing_left
                        else:
                            go = v <= b if kind == _NUMERIC else v in b
                    i = left if go else right
                row.append(path)
            margins[k] = m
            paths.append(row)
        return margins, paths

    def decision_paths(self, x: np.ndarray, bits: Mapping[str, Mapping[int, bool]]) -> list[DecisionPath]:
        """One row's path through every tree, each split keyed by the label party's feature name or the owner party.

        Node values are :func:`mean_leaf_values`; this is the input of
        ``decision.tree_contributions`` (reasons for a decision).
        """
        part = self.part
        paths = []
        for t, tree in enumerate(part.trees):
            vals, i = self.node_values[t], 0
            path: DecisionPath = []
            while True:
                nd = tree[i]
                if nd.get("leaf"):
                    path.append((None, float(nd["value"])))
                    break
                if nd["owner"] == part.party:
                    rule = node_rule(nd)
                    path.append((part.feature_names[rule.feature], vals[i]))
                    left = bool(rule.left(x[rule.feature : rule.feature + 1])[0])
                else:
                    path.append((nd["owner"], vals[i]))
                    left = bool(bits[nd["owner"]][int(nd["split_id"])])
                i = int(nd["left"] if left else nd["right"])
            paths.append(path)
        return paths


def label_margin(model_part: LabelModelPart, X_label: np.ndarray, decisions_by_party: Mapping[str, bytes]) -> np.ndarray:
    """Raw score (log-odds) of a batch: walks every tree with own thresholds and the passive parties' bits."""
    X = np.asarray(X_label, dtype=np.float64)
    check_columns(model_part.feature_names, X, f"label party '{model_part.party}'")
    n = X.shape[0]
    missing = [p for p in model_part.passive_parties if p not in decisions_by_party]
    if missing:
        raise ProtocolError(f"scoring needs decisions from every passive party; missing {missing}")
    dec = {p: parse_decisions(p, decisions_by_party[p], n) for p in model_part.passive_parties}
    return LabelScorer(model_part).margin(X, dec)


def label_predict(model_part: LabelModelPart, X_label: np.ndarray, decisions_by_party: Mapping[str, bytes]) -> np.ndarray:
    """Probability of the positive class (default) for a scoring batch; see :func:`passive_decisions`."""
    return sigmoid(label_margin(model_part, X_label, decisions_by_party))


class OnlineLabel:
    """The label party's side of online joint scoring: the compiled trees and the passives' split bits."""

    def __init__(self, part: LabelModelPart) -> None:
        self.part = part
        self.scorer = LabelScorer(part)
        self.feature_names = list(part.feature_names)
        self.passive_parties = list(part.passive_parties)
        #: how requests become X (``encode_rows``: category text -> codes, unknown = missing, counted)
        self.input_schema = part.input_schema or numeric_schema(part.feature_names)
        #: NaN (missing, or an unknown category) is scored by each split's learned default direction
        self.accepts_missing = True
        #: hidden splits: the key that reads the passive parties' encrypted bits (loaded once)
        self.keeper = (SelectionKeeper(ckks.load_secret(part.secret_context, what=f"party '{part.party}': the CKKS "
                                                        "key of its SecureBoost model"))
                       if part.secret_context is not None else None)
        self._split_ids = {p: self.scorer.split_ids(p) for p in self.passive_parties}

    def decisions(self, party: str, payload: bytes, n: int) -> dict[int, np.ndarray]:
        """One passive party's answer for ``n`` rows as split id -> bits (decrypted when the splits are hidden)."""
        return read_decisions(party, payload, n, keeper=self.keeper, block=self.part.selection_blocks.get(party, 0),
                              split_ids=self._split_ids.get(party, []))

    def score(self, X: np.ndarray, partials: Mapping[str, Any]) -> tuple[np.ndarray, list[Contributions]]:
        """(PD per row, contributions per row) from own features ``X`` (in :attr:`input_schema` codes, NaN =
        missing) and every passive party's decisions."""
        missing = [p for p in self.passive_parties if p not in partials]
        if missing:
            raise ProtocolError(f"scoring needs decisions from every passive party; missing {missing}")
        n = X.shape[0]
        bits = {p: self.decisions(p, bytes(partials[p]), n) for p in self.passive_parties}
        margin, paths = self.scorer.walk(X, bits)  # one walk gives the PD and the reasons
        contribs = [tree_contributions(row, passive_parties=self.passive_parties, base_score=self.part.base_score)
                    for row in paths]
        return sigmoid(margin), contribs


class OnlinePassive:
    """A passive party's side of online joint scoring: the left/right bit of each of its splits per row
    (hidden splits: per applicant, ciphertexts of them from its placed selectors)."""

    def __init__(self, part: PassiveModelPart) -> None:
        self.part = part
        self.feature_names = list(part.feature_names)
        self.label_party = part.label_party
        #: how requests become X (``encode_rows``: category text -> codes, unknown = missing, counted)
        self.input_schema = part.input_schema or numeric_schema(part.feature_names)
        #: NaN (missing, or an unknown category) is scored by each split's learned default direction
        self.accepts_missing = True
        ids = sorted(self.part.splits)
        self._ids = np.array(ids, dtype=np.int64)
        self._rules = CompiledRules([self.part.splits[i] for i in ids])
        self._placed: PlacedSelectors | None = None
        if part.hidden:
            assert part.context is not None
            what = f"party '{part.party}': its SecureBoost model"
            self._rules = CompiledRules(part.candidates)
            self._placed = PlacedSelectors(ckks.load_public(part.context, what=f"{what}'s CKKS context"), part.selectors,
                                           len(part.candidates), what=what)

    def answer(self, X: np.ndarray) -> bytes:
        """Decision bits for own features ``X`` (in :attr:`input_schema` codes, NaN = missing): the bytes of
        :func:`passive_decisions`, computed on the compiled split arrays; hidden splits: their ciphertexts."""
        X = np.asarray(X, dtype=np.float64)
        check_columns(self.part.feature_names, X, f"party '{self.part.party}'")
        bits = self._rules.bits(X)
        if self._placed is not None:
            cts = [ct for r in range(X.shape[0]) for ct in self._placed.answer(bits[:, r])]
            return pack({"party": self.part.party, "n": int(X.shape[0]), "hidden": "placed",
                         "per_row": self._placed.n_answers}, None, {str(i): b for i, b in enumerate(cts)})
        return pack_arrays(
            {"split_ids": self._ids, "bits": np.packbits(bits, axis=1)},
            {"party": self.part.party, "n": int(X.shape[0])},
        )
