"""SecureBoost label party (guest): labels, own features, the CKKS secret key; finds every split.

It computes gradients ``g`` and hessians ``h``, encrypts them with its
:class:`~crypto.ckks_hist.HistogramKeeper`, decrypts only per-candidate sums from the
passive parties, and keeps the tree structure and leaf weights.  For a split on a
passive party's feature it only ever sees ``(party, opaque split id)`` and the
partition bits.  Histogram subtraction: per pair of siblings only one child is
computed; the other is ``parent - child`` here (in plaintext, after decryption).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crypto.ckks_hist import (
    MASK_PLAIN_BYTES,
    SLOTS,
    HistogramKeeper,
    lane_layout,
    max_lane_nodes,
    n_chunks,
    n_outputs,
    pass_cost,
)
from crypto.ckks_select import SelectionKeeper, block_size, galois_steps, n_pairs
from fedcredit import dp
from fedcredit.checkpoint import CheckpointStore, agree_step
from fedcredit.codec import pack_arrays, unpack_arrays, unpack_blobs
from fedcredit.data import Table
from fedcredit.errors import ConfigError, PeerAborted, ProtocolError
from fedcredit.metrics import auc_ks, sigmoid, write_evaluation
from fedcredit.protocols.secureboost.messages import PROTOCOL_VERSION, STAGE, Op, send, tags
from fedcredit.protocols.secureboost.scoring import LabelScorer, read_decisions
from fedcredit.protocols.secureboost.trees import (
    Backend,
    LabelModelPart,
    PlainBackend,
    PlainSource,
    Progress,
    SecureBoostConfig,
    boost,
    check_labels,
    source_of,
)
from fedcredit.protocols.vertical_common import ids_digest
from fedcredit.transport import Transport

__all__ = ["SecureBoostResult", "run_secureboost_label"]


class RemotePassive:
    """The label party's handle on one passive party (request/reply over the transport)."""

    def __init__(self, transport: Transport, party: str, prefix: str, timeout: float) -> None:
        self.t = transport
        self.party = party
        self.cmd, self.reply = tags(prefix)
        self.timeout = timeout
        self.seq = 0
        self.n_candidates = 0
        self.bytes_in = 0
        self.next_split_id = 0  # hidden splits: the label party numbers this party's splits
        self.selected: list[int] = []  # hidden splits: the winning candidate of each split id (checkpointed here)

    def send(self, op: str, blobs: Sequence[bytes] = (), **meta: Any) -> None:
        self.seq += 1
        send(self.t, self.party, self.cmd, op, self.seq, blobs, **meta)

    def recv(self, op: str) -> tuple[list[bytes], dict[str, Any]]:
        try:
            raw = self.t.recv(self.party, self.reply, timeout=self.timeout)
        except PeerAborted as e:  # the passive party failed and said why (Transport.abort)
            raise ProtocolError(f"passive party '{self.party}' failed: {e.reason}") from None
        self.bytes_in += len(raw)
        blobs, meta = unpack_blobs(raw, what=f"'{op}' reply from passive party '{self.party}'")
        if meta.get("op") != op or meta.get("seq") != self.seq:
            raise ProtocolError(
                f"passive party '{self.party}' answered {meta.get('op')!r} #{meta.get('seq')} "
                f"while '{op}' #{self.seq} was expected (protocol out of step)"
            )
        return blobs, meta


class FederatedBackend(Backend):
    """Label party's view: own candidates in plaintext, passive candidates through CKKS."""

    def __init__(self, own: PlainSource, remotes: list[RemotePassive], crypto: HistogramKeeper, pack: int,
                 mode: str = "hide_membership", cache_mb: float = 1024.0, selector: SelectionKeeper | None = None) -> None:
        self.own = own
        self.selector = selector  # hidden splits: encrypts each winner, decrypts its bits
        self.remotes = remotes
        self.crypto = crypto
        self.pack = pack
        self.mode = mode
        self.cache_mb = cache_mb
        self.stats = {"encrypt_s": 0.0, "decrypt_s": 0.0, "own_hist_s": 0.0, "wait_s": 0.0, "split_rounds": 0,
                      "dense_levels": 0, "lane_levels": 0}

    def _lane_groups(self, reqs: list[np.ndarray]) -> list[list[int]]:
        step = max_lane_nodes(self.pack)
        return [list(range(i, min(i + step, len(reqs)))) for i in range(0, len(reqs), step)]

    def _use_lanes(self, reqs: list[np.ndarray]) -> bool:
        """Per-level mode: the layout the passive parties' modelled cost favours for this level."""
        if self.mode != "per_level":
            return False
        n, K = len(self.own.Xb), self.pack
        C = n_chunks(n)
        dense = lanes = 0.0
        limit = int(self.cache_mb * 2**20 // MASK_PLAIN_BYTES)
        for rem in self.remotes:
            J = n_outputs(rem.n_candidates, K)
            cached = min(C * K, limit // J) if J else C * K
            dense += len(reqs) * pass_cost(C, rem.n_candidates, K, 1.0 - cached / (C * K))
            for grp in self._lane_groups(reqs):
                lanes += pass_cost(lane_layout([len(reqs[i]) for i in grp], K).n_chunks, rem.n_candidates, K, 1.0)
        return lanes < dense

    def histograms(self, reqs, g, h):
        t = time.perf_counter()
        own = [self.own.histogram(rows, g, h) for rows in reqs]
        self.stats["own_hist_s"] += time.perf_counter() - t
        if not self.remotes:
            return [[o] for o in own]
        if self._use_lanes(reqs):
            self.stats["lane_levels"] += 1
            return self._lane_histograms(reqs, g, h, own)
        self.stats["dense_levels"] += 1
        t = time.perf_counter()
        blobs: list[bytes] = []
        for rows in reqs:
            z = np.zeros(len(g), dtype=np.complex128)
            z[rows] = g[rows] + 1j * h[rows]
            blobs += self.crypto.encrypt_rows(z)
        self.stats["encrypt_s"] += time.perf_counter() - t
        for rem in self.remotes:  # send to all first: passive parties work in parallel
            rem.send(Op.HIST, blobs, nodes=len(reqs))
        per_remote = []
        for rem in self.remotes:
            out, J = self._receive(rem, len(reqs))
            t = time.perf_counter()
            per_remote.append(
                [
                    self.crypto.decrypt_candidates(out[k * J : (k + 1) * J], rem.n_candidates, self.pack, rem.party)
                    for k in range(len(reqs))
                ]
            )
            self.stats["decrypt_s"] += time.perf_counter() - t
        return [[own[k]] + [pr[k] for pr in per_remote] for k in range(len(reqs))]

    def _receive(self, rem: RemotePassive, passes: int) -> tuple[list[bytes], int]:
        """One passive party's histogram reply: ``passes`` sets of J ciphertexts (J per its candidate count)."""
        t = time.perf_counter()
        out, _ = rem.recv(Op.HIST)
        self.stats["wait_s"] += time.perf_counter() - t
        J = n_outputs(rem.n_candidates, self.pack)
        if len(out) != J * passes:
            raise ProtocolError(
                f"passive party '{rem.party}' returned {len(out)} histogram ciphertexts, expected {J * passes}"
            )
        return out, J

    def _lane_histograms(self, reqs, g, h, own):
        """Per-level layout: the level's nodes' rows (revealed) and their gradients once, compacted per node."""
        t = time.perf_counter()
        groups = self._lane_groups(reqs)
        layouts = [lane_layout([len(reqs[i]) for i in grp], self.pack) for grp in groups]
        rows = np.concatenate(reqs)
        blobs = [pack_arrays({"rows": rows.astype(np.int32), "sizes": np.array([len(r) for r in reqs], np.int64)})]
        for grp, lay in zip(groups, layouts):
            r = np.concatenate([reqs[i] for i in grp])
            blobs += self.crypto.encrypt_chunks(lay.place(g[r] + 1j * h[r]))
        self.stats["encrypt_s"] += time.perf_counter() - t
        for rem in self.remotes:
            rem.send(Op.HIST, blobs, lanes=[len(grp) for grp in groups])
        per_remote = []
        for rem in self.remotes:
            out, J = self._receive(rem, len(groups))
            t = time.perf_counter()
            res: list[tuple[np.ndarray, np.ndarray]] = []
            for k, lay in enumerate(layouts):
                res += self.crypto.decrypt_lanes(out[k * J : (k + 1) * J], rem.n_candidates, lay, rem.party)
            per_remote.append(res)
            self.stats["decrypt_s"] += time.perf_counter() - t
        return [[own[k]] + [pr[k] for pr in per_remote] for k in range(len(reqs))]

    def partitions(self, picks):
        out: list[tuple[dict[str, Any], np.ndarray] | None] = [None] * len(picks)
        asked: dict[int, list[int]] = {}
        for k, (s, c) in enumerate(picks):
            if s == 0:
                out[k] = (self.own.split_record(c), self.own.left_mask(c))
            else:
                asked.setdefault(s, []).append(k)
        if self.selector is not None:
            self._select(picks, asked, out)
            self.stats["split_rounds"] += 1
            return out
        for s, ks in asked.items():
            self.remotes[s - 1].send(Op.SPLIT, candidates=[int(picks[k][1]) for k in ks])
        n = len(self.own.Xb)
        for s, ks in asked.items():
            rem = self.remotes[s - 1]
            t = time.perf_counter()
            blobs, meta = rem.recv(Op.SPLIT)
            self.stats["wait_s"] += time.perf_counter() - t
            ids = meta.get("split_ids")
            if len(blobs) != 1 or not isinstance(ids, list) or len(ids) != len(ks):
                raise ProtocolError(f"passive party '{rem.party}' sent a malformed split reply")
            arrays, _ = unpack_arrays(blobs[0], what=f"split bits from passive party '{rem.party}'")
            bits = arrays.get("bits")
            if bits is None or bits.shape != (len(ks), (n + 7) // 8):
                raise ProtocolError(f"passive party '{rem.party}' sent split bits of the wrong shape")
            masks = np.unpackbits(bits, axis=1, count=n).astype(bool)
            for row, (k, sid) in enumerate(zip(ks, ids)):
                out[k] = ({"owner": rem.party, "split_id": int(sid)}, masks[row])
        self.stats["split_rounds"] += 1
        return out

    def _select(self, picks, asked, out) -> None:
        """Hidden splits: each winner goes out only as Enc(one-hot) (crypto/ckks_select.py); its bits come back
        encrypted and are decrypted here."""
        assert self.selector is not None
        t = time.perf_counter()
        sent: dict[int, list[int]] = {}
        for s, ks in asked.items():
            rem = self.remotes[s - 1]
            blobs: list[bytes] = []
            sids = []
            for k in ks:
                sid = rem.next_split_id
                rem.next_split_id += 1
                blobs += self.selector.selectors(int(picks[k][1]), rem.n_candidates, sid)
                sids.append(sid)
                rem.selected.append(int(picks[k][1]))
            sent[s] = sids
            rem.send(Op.SELECT, blobs, split_ids=sids)
        self.stats["encrypt_s"] += time.perf_counter() - t
        n = len(self.own.Xb)
        C2 = n_pairs(n)
        for s, ks in asked.items():
            rem = self.remotes[s - 1]
            t = time.perf_counter()
            blobs, _ = rem.recv(Op.SELECT)
            self.stats["wait_s"] += time.perf_counter() - t
            if len(blobs) != C2 * len(ks):
                raise ProtocolError(f"passive party '{rem.party}' returned {len(blobs)} selection ciphertexts, "
                                    f"expected {C2 * len(ks)}")
            t = time.perf_counter()
            for j, (k, sid) in enumerate(zip(ks, sent[s])):
                out[k] = ({"owner": rem.party, "split_id": sid},
                          self.selector.decrypt_bits(blobs[j * C2 : (j + 1) * C2], n, rem.party))
            self.stats["decrypt_s"] += time.perf_counter() - t


# --------------------------------------------------------------------------- label party role


@dataclass
class SecureBoostResult:
    """Label party's outcome: its model part, public metrics, and timings (no per-row data)."""

    model: LabelModelPart
    train_auc: float
    train_ks: float
    test_auc: float | None
    test_ks: float | None
    test_scores: np.ndarray | None
    train_seconds: float
    report: dict[str, Any]


def run_secureboost_label(
    transport: Transport,
    table: Table,
    passive_parties: Sequence[str],
    cfg: SecureBoostConfig | None = None,
    progress: Progress | None = None,
    *,
    test_table: Table | None = None,
    out_dir: str | Path | None = None,
    tag_prefix: str = "sb",
    checkpoint: CheckpointStore | None = None,
    resume: bool = False,
) -> SecureBoostResult:
    """Label party: train SecureBoost with ``passive_parties`` (rows already aligned by PSI), then score ``test_table``.

    ``progress(stage, done, total)`` is called after each tree and each scoring batch.
    Writes ``secureboost_test_report.json`` + ROC/KS PNG into ``out_dir`` when given.
    ``checkpoint``: after each tree every passive party and then this party save their own state
    (stage ``sb``, step = trees done); ``resume``: first agree with the passives on the latest tree
    all hold and continue after it (docs/resume.md).
    """
    cfg = cfg or SecureBoostConfig()
    me = transport.me
    passive_parties = list(passive_parties)
    if len(set(passive_parties)) != len(passive_parties) or me in passive_parties:
        raise ConfigError(f"label party '{me}': passive parties {passive_parties} must be distinct and exclude itself")
    y = check_labels(table.y, f"label party '{me}' ({table.source})")
    t_start = time.perf_counter()
    own = source_of(me, table, cfg, own=True, shuffle=False)
    remotes = [RemotePassive(transport, p, tag_prefix, cfg.timeout_s) for p in passive_parties]
    start: tuple[list[list[dict[str, Any]]], np.ndarray] | None = None
    selected: dict[str, list[int]] = {}  # hidden splits, resumed run: each passive's winners so far
    if resume:
        if checkpoint is None:
            raise ConfigError(f"label party '{me}': a resumed SecureBoost run needs a checkpoint store")
        try:
            step = agree_step(transport, leader=me, parties=[me, *passive_parties], held=checkpoint.steps(STAGE),
                              tags=tags(tag_prefix).resume, timeout=cfg.timeout_s)
        except BaseException as e:
            transport.abort(f"{type(e).__name__}: {e}")
            raise
        if step:
            ck = checkpoint.load(STAGE, step)
            start = (list(ck.meta["trees"]), ck.arrays["F"])
            selected = {str(p): [int(c) for c in v] for p, v in dict(ck.meta.get("selected", {})).items()}
            if progress:
                progress(f"resuming after tree {step}", step, cfg.n_trees)
    hidden = cfg.passive_splits == "hidden" and bool(remotes)
    crypto = HistogramKeeper(cfg.pack, extra_steps=galois_steps() if hidden else ()) if remotes else None
    selector = SelectionKeeper(crypto.ctx) if hidden and crypto is not None else None

    def after_tree(trees: list[list[dict[str, Any]]], F: np.ndarray) -> None:
        if checkpoint is None:
            return
        for rem in remotes:  # the passives first: a label checkpoint never gets ahead of theirs
            rem.send(Op.CHECKPOINT, tree=len(trees))
        for rem in remotes:
            rem.recv(Op.CHECKPOINT)
        checkpoint.save(STAGE, len(trees), {"trees": trees, "selected": {r.party: r.selected for r in remotes}},
                        {"F": F})

    try:
        for rem in remotes:
            rem.send(
                Op.SETUP,
                [crypto.public_bytes, crypto.galois_bytes or b""],  # type: ignore[union-attr]
                version=PROTOCOL_VERSION,
                n_rows=len(table),
                ids_digest=ids_digest(table.ids),
                pack=cfg.pack,
                histogram_mode=cfg.histogram_mode,
                passive_splits=cfg.passive_splits,
                n_bins=cfg.n_bins,
                min_category_count=cfg.min_category_count,
            )
        for rem in remotes:
            _, meta = rem.recv(Op.SETUP)
            rem.n_candidates = int(meta.get("n_candidates", -1))
            if rem.n_candidates < 0:
                raise ProtocolError(f"passive party '{rem.party}' did not report its number of split candidates")
            if hidden and rem.n_candidates:
                block_size(rem.n_candidates)  # more candidates than one selector holds: a clear error, now
        if hidden and start is not None:  # a resumed run: this attempt's key is new, so the passives get the
            for rem in remotes:           # earlier splits' selectors again (no bits computed), then number on
                used = 1 + max((int(nd["split_id"]) for tree in start[0] for nd in tree
                                if not nd.get("leaf") and nd["owner"] == rem.party), default=-1)
                old = selected.get(rem.party, [])
                if len(old) != used:
                    raise ProtocolError(f"label party '{me}': the checkpoint names {len(old)} hidden splits of "
                                        f"'{rem.party}', its trees use {used}; start the job afresh")
                if old and selector is not None:
                    blobs = [b for sid, c in enumerate(old) for b in selector.selectors(c, rem.n_candidates, sid)]
                    rem.send(Op.SELECT, blobs, split_ids=list(range(len(old))), replay=True)
                    rem.recv(Op.SELECT)
                rem.next_split_id, rem.selected = len(old), list(old)
        setup_s = time.perf_counter() - t_start
        backend: Backend = (
            FederatedBackend(own, remotes, crypto, cfg.pack, cfg.histogram_mode, cfg.mask_cache_mb, selector)
            if crypto else PlainBackend([own])
        )
        stats: dict[str, float] = {}
        noise = dp.LabelNoise(dp.label_plan(cfg.dp, cfg.n_trees, "secureboost")) if cfg.dp is not None else None
        base, trees, F = boost(y, backend, cfg, progress, stats, start=start, after_tree=after_tree,
                               label_noise=noise.noisy if noise is not None else None)  # label DP: noisy g
        train_s = time.perf_counter() - t_start
        model = LabelModelPart(me, passive_parties, list(table.feature_names), base, trees, cfg.to_dict(),
                               input_schema=own.schema)
        if selector is not None and crypto is not None:  # the key that reads the passives' encrypted bits at scoring
            model.secret_context = crypto.ctx.secret_bytes()
            model.selection_blocks = {rem.party: block_size(rem.n_candidates) for rem in remotes if rem.n_candidates}
        train_auc, train_ks = auc_ks(y, sigmoid(F))

        test_auc = test_ks = None
        scores = None
        unknown: dict[str, int] = {}
        t_eval = time.perf_counter()
        if test_table is not None and len(test_table):
            scores, unknown = _joint_predict(model, test_table, remotes, cfg, progress, selector)
        eval_s = time.perf_counter() - t_eval
        passive_stats = {}
        for rem in remotes:
            rem.send(Op.FINISH, status="ok")
        for rem in remotes:
            _, meta = rem.recv(Op.FINISH)
            passive_stats[rem.party] = {
                "model_sha256": meta.get("model_sha256"),
                "splits": meta.get("splits"),
                "timings": meta.get("timings"),
            }
    except BaseException as e:
        transport.abort(f"{type(e).__name__}: {e}")  # every passive party stops waiting for commands
        raise
    finally:
        if crypto:
            crypto.close()
        if selector is not None:
            selector.close()

    report: dict[str, Any] = {
        "model": "secureboost",
        "label_party": me,
        "passive_parties": passive_parties,
        "n_train": len(table),
        "config": cfg.to_dict(),
        "train_auc": round(train_auc, 6),
        "train_ks": round(train_ks, 6),
        "train_seconds": round(train_s, 3),
        "setup_seconds": round(setup_s, 3),
        "eval_seconds": round(eval_s, 3),
        "splits_by_party": model.splits_by_party(),
        "split_candidates": {me: own.n_candidates} | {rem.party: rem.n_candidates for rem in remotes},
        "label_timings": {k: round(float(v), 3) for k, v in getattr(backend, "stats", {}).items()} | {
            "histograms_computed": int(stats.get("histograms", 0))
        },
        "passive": passive_stats,
        "missing_rate": {f: round(float(r), 6) for f, r in zip(table.feature_names, np.isnan(table.X).mean(axis=0))},
        "unknown_categories_in_test": unknown,  # own features; scored as missing (InputSchema rule)
        "bytes_received_from_passive": {rem.party: rem.bytes_in for rem in remotes},
    }
    if noise is not None:  # the run JSON's privacy section (docs/privacy.md)
        report["privacy"] = {"dp": noise.plan.report(len(trees))}
    if scores is not None and test_table is not None and test_table.y is not None:
        test_auc, test_ks = auc_ks(test_table.y, scores)
        report.update({"n_test": len(test_table), "test_auc": round(test_auc, 6), "test_ks": round(test_ks, 6)})
        if out_dir is not None:
            write_evaluation(out_dir, test_table.y, scores, name="secureboost_test", extra={"train": report})
    return SecureBoostResult(model, train_auc, train_ks, test_auc, test_ks, scores, train_s, report)


def _joint_predict(
    model: LabelModelPart,
    table: Table,
    remotes: list[RemotePassive],
    cfg: SecureBoostConfig,
    progress: Progress | None,
    selector: SelectionKeeper | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Joint inference: per batch one round trip per passive party (ids out, decision bits back).

    Hidden splits: the bits come back encrypted and ``selector`` decrypts them; batches are whole
    answer ciphertexts (``2 * 4096`` rows), because a passive party's cost is per split and ciphertext.
    Returns (scores, unknown-category count per own feature: scored as missing)."""
    n = len(table)
    X, unknown = model.encode(table)
    out = np.empty(n)
    scorer = LabelScorer(model)
    pair = 2 * SLOTS  # rows per hidden-split answer ciphertext (crypto.ckks_select.n_pairs)
    step = cfg.predict_batch if selector is None else -(-cfg.predict_batch // pair) * pair
    batches = list(range(0, n, step))
    for b, lo in enumerate(batches):
        hi = min(n, lo + step)
        ids = table.ids[lo:hi]
        for rem in remotes:
            rem.send(Op.PREDICT, ids=ids)
        dec = {}
        for rem in remotes:
            blobs, _ = rem.recv(Op.PREDICT)
            if len(blobs) != 1:
                raise ProtocolError(f"passive party '{rem.party}' sent a malformed decision reply")
            dec[rem.party] = read_decisions(rem.party, blobs[0], hi - lo, keeper=selector)
        out[lo:hi] = scorer.predict(X[lo:hi], dec)
        if progress:
            progress("predict", b + 1, len(batches))
    return out, unknown
