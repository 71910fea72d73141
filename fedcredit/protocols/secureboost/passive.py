"""SecureBoost passive party (host): its own features and the *public* CKKS context only.

It serves the label party's commands (:class:`~fedcredit.protocols.secureboost.messages.Op`):
encrypted histograms through its :class:`~crypto.ckks_hist.HistogramEvaluator`, the
partition of a chosen split, and scoring decisions.  For a split on one of its features
it alone knows the feature and threshold; the label party only gets an opaque split id.
With hidden splits (the default) it does not know them either: it computes each winner's bits
from an encrypted selector (crypto/ckks_select.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from crypto import ckks
from crypto.ckks_hist import HistogramEvaluator, lane_layout, max_lane_nodes
from crypto.ckks_hist_pool import PooledHistogramEvaluator, PooledSelectionEvaluator
from crypto.ckks_select import SelectionEvaluator
from fedcredit import compute
from fedcredit.checkpoint import Checkpoint, CheckpointStore, agree_step
from fedcredit.codec import pack_arrays, unpack_arrays
from fedcredit.data import Table
from fedcredit.errors import DataError, FedCreditError, PeerAborted, ProtocolError
from fedcredit.protocols.secureboost.messages import PROTOCOL_VERSION, STAGE, Op, recv, send, tags
from fedcredit.protocols.secureboost.scoring import CompiledRules, hidden_batch_answer, passive_decisions
from fedcredit.protocols.secureboost.trees import (
    PassiveModelPart,
    Progress,
    SecureBoostConfig,
    source_of,
)
from fedcredit.protocols.vertical_common import ids_digest
from fedcredit.transport import Transport

__all__ = ["run_secureboost_passive"]


def run_secureboost_passive(
    transport: Transport,
    table: Table,
    label_party: str,
    cfg: SecureBoostConfig | None = None,
    *,
    test_table: Table | None = None,
    tag_prefix: str = "sb",
    progress: Progress | None = None,
    checkpoint: CheckpointStore | None = None,
    resume: bool = False,
) -> PassiveModelPart:
    """Passive party: serve histogram / split / scoring requests until the label party says finish.

    Rows of ``table`` must be in the PSI order shared with the label party (checked by
    digest).  Scoring requests name ids, looked up in ``test_table`` then ``table``.
    Returns this party's model part (its split table only).  ``checkpoint``: on the label
    party's ``checkpoint`` command this party saves its own state only — its candidate order
    (a secret permutation of its own bins) and its split-id table; ``resume``: agree on the
    tree to continue after and restore that state (docs/resume.md).
    """
    cfg = cfg or SecureBoostConfig()
    me = transport.me
    tg = tags(tag_prefix)
    cmd, reply = tg
    restored: Checkpoint | None = None
    if resume:
        if checkpoint is None:
            raise ProtocolError(f"party '{me}': a resumed SecureBoost run needs a checkpoint store")
        try:
            step = agree_step(transport, leader=label_party, parties=[label_party, me], held=checkpoint.steps(STAGE),
                              tags=tg.resume, timeout=cfg.timeout_s)
        except BaseException as e:
            transport.abort(f"{type(e).__name__}: {e}")
            raise
        restored = checkpoint.load(STAGE, step) if step else None
    src = source_of(me, table, cfg, own=False, shuffle=True)
    engine: HistogramEvaluator | PooledHistogramEvaluator | None = None
    # hidden splits (crypto/ckks_select.py): the label party's context, its Galois keys, the selection kernel
    # over the training rows, and per split id the replicated and placed selectors it sent
    ctx: ckks.PublicContext | None = None
    ctx_bytes = b""
    galois: bytes | None = None
    selection: SelectionEvaluator | PooledSelectionEvaluator | None = None
    replicated: dict[int, bytes] = {}
    placed: dict[int, bytes] = {}
    lookup: dict[str, tuple[int, int]] = {}  # id -> (table number, row)
    tables = [tb for tb in (table, test_table) if tb is not None]
    encoded: list[np.ndarray] | None = None  # each table in the model's codes (built at the first scoring request)
    for n_tb, tb in enumerate(tables):
        for k, i in enumerate(tb.ids):
            lookup.setdefault(i, (n_tb, k))
    expected = 0
    hist_calls = 0
    try:
        while True:
            blobs, meta = recv(transport, label_party, cmd, cfg.timeout_s, f"command from label party '{label_party}'")
            op, seq = meta.get("op"), meta.get("seq")
            expected += 1
            if seq != expected:
                raise ProtocolError(f"party '{me}': command #{seq} from '{label_party}' arrived, #{expected} was expected")

            def answer(out_blobs: Sequence[bytes] = (), _op: str = str(op), _seq: int = int(seq), **m: Any) -> None:
                send(transport, label_party, reply, _op, _seq, out_blobs, **m)

            if op == Op.SETUP:
                if meta.get("version") != PROTOCOL_VERSION:
                    raise ProtocolError(f"party '{me}': label party speaks SecureBoost protocol v{meta.get('version')}, this is v{PROTOCOL_VERSION}")
                if int(meta.get("n_rows", -1)) != len(table) or meta.get("ids_digest") != ids_digest(table.ids):
                    raise ProtocolError(
                        f"party '{me}': training rows of {table.source} ({len(table)} rows) are not aligned with label "
                        f"party '{label_party}' ({meta.get('n_rows')} rows): the ordered id lists differ; align both "
                        "tables to the same PSI intersection"
                    )
                if meta.get("passive_splits", "revealed") != cfg.passive_splits:
                    raise ProtocolError(
                        f"party '{me}': label party '{label_party}' runs SecureBoost with passive_splits = "
                        f"{meta.get('passive_splits', 'revealed')!r}, this party's approved job says {cfg.passive_splits!r}")
                peer = {k: meta.get(k, getattr(cfg, k)) for k in ("n_bins", "pack", "min_category_count", "histogram_mode")}
                if peer != {k: getattr(cfg, k) for k in peer}:
                    cfg = SecureBoostConfig.from_dict({**cfg.to_dict(), **peer})  # a peer's values: checked
                    src = source_of(me, table, cfg, own=False, shuffle=True)
                if len(blobs) not in (1, 2):
                    raise ProtocolError(f"party '{me}': setup from '{label_party}' must carry one CKKS context "
                                        "(and optionally its Galois keys)")
                if restored is not None:
                    if int(restored.meta["n_bins"]) != cfg.n_bins:
                        raise ProtocolError(f"party '{me}': the checkpoint of tree {restored.step} was made with "
                                            f"n_bins={restored.meta['n_bins']}, the label party now asks {cfg.n_bins}")
                    if "perm" not in restored.arrays:
                        raise ProtocolError(f"party '{me}': the checkpoint of tree {restored.step} predates "
                                            "missing-value support (no candidate permutation); start the job afresh")
                    src.restore(restored.arrays["perm"], {int(c): int(s) for c, s in restored.meta["split_ids"]})
                what = f"party '{me}': the CKKS context from label party '{label_party}'"
                ctx = ckks.load_public(blobs[0], what=what)
                ctx_bytes = bytes(blobs[0])
                galois = blobs[1] if len(blobs) == 2 and blobs[1] else None
                pool = compute.default_pool()  # [compute] in party.toml: the passes shard over its workers
                if pool.parallel:
                    engine = PooledHistogramEvaluator(ctx, src.Xb, src.cand_f, src.cand_left, cfg.pack, cfg.mask_cache_mb,
                                                      pool=pool, what=what, party=me, galois=galois)
                else:
                    engine = HistogramEvaluator(ctx, src.Xb, src.cand_f, src.cand_left, cfg.pack, cfg.mask_cache_mb,
                                                what=what, galois=galois)
                answer(n_candidates=src.n_candidates)
            elif op == Op.HIST:
                if engine is None:
                    raise ProtocolError(f"party '{me}': histogram request before setup")
                out: list[bytes] = []
                if "lanes" in meta:  # per-level layout: the level's nodes' rows, then each lane group's chunks
                    out, nodes = _lane_pass(engine, blobs, meta["lanes"], cfg, me, label_party)
                else:
                    nodes = int(meta.get("nodes", -1))
                    if nodes < 1 or len(blobs) != nodes * engine.n_chunks:
                        raise ProtocolError(
                            f"party '{me}': histogram request with {len(blobs)} ciphertexts for {nodes} nodes "
                            f"(expected {engine.n_chunks} per node)"
                        )
                    for k in range(nodes):
                        C = engine.n_chunks
                        out += engine.histogram(blobs[k * C : (k + 1) * C], f"label party '{label_party}'")
                hist_calls += nodes
                answer(out)
                if progress:
                    progress("histograms", hist_calls, 0)
            elif op == Op.SELECT:
                if cfg.passive_splits != "hidden" or ctx is None:
                    raise ProtocolError(f"party '{me}': a hidden-split selection from '{label_party}', but this job "
                                        "reveals its splits (or setup has not run)")
                sids = meta.get("split_ids")
                if (not isinstance(sids, list) or not sids or len(blobs) != 2 * len(sids)
                        or sids != list(range(len(replicated), len(replicated) + len(sids)))):
                    raise ProtocolError(f"party '{me}': selection from '{label_party}' must carry two selectors per "
                                        f"new split id, numbered from {len(replicated)}")
                replay = meta.get("replay") is True  # a resumed run: the earlier splits' selectors, under its new key
                if selection is None and not replay:  # the kernel's masks depend on the training rows only: built once
                    swhat = f"party '{me}': the CKKS context from '{label_party}'"
                    spool = compute.default_pool()  # [compute] in party.toml: row pairs shard over its workers
                    selection = (PooledSelectionEvaluator(ctx, src.Xb, src.cand_f, src.cand_left, pool=spool,
                                                          cache_mb=cfg.mask_cache_mb, what=swhat, party=me,
                                                          galois=galois)
                                 if spool.parallel else
                                 SelectionEvaluator(ctx, (src.Xb, src.cand_f, src.cand_left), galois=galois,
                                                    cache_mb=cfg.mask_cache_mb, what=swhat))
                out = []
                if not replay:
                    assert selection is not None
                    for cts in selection.bits_many([blobs[2 * k] for k in range(len(sids))],
                                                   f"label party '{label_party}'"):
                        out += cts
                for k, sid in enumerate(sids):
                    replicated[sid], placed[sid] = bytes(blobs[2 * k]), bytes(blobs[2 * k + 1])
                answer(out)
            elif op == Op.SPLIT:
                if cfg.passive_splits == "hidden":
                    raise ProtocolError(f"party '{me}': label party '{label_party}' asked for a split in the clear, "
                                        "but this job hides passive splits (passive_splits = \"hidden\")")
                cands = meta.get("candidates")
                if not isinstance(cands, list) or not all(isinstance(c, int) and 0 <= c < src.n_candidates for c in cands):
                    raise ProtocolError(f"party '{me}': split request names unknown candidates")
                ids = [src.register(c) for c in cands]
                bits = np.packbits(np.stack([src.left_mask(c) for c in cands]), axis=1)
                answer([pack_arrays({"bits": bits})], split_ids=ids)
            elif op == Op.PREDICT:
                want = meta.get("ids")
                if not isinstance(want, list):
                    raise ProtocolError(f"party '{me}': scoring request without an id list")
                part = src.model_part(label_party)
                if encoded is None:  # the model's codes; an unknown category is missing (InputSchema rule)
                    encoded = [part.encode(tb)[0] for tb in tables]
                X = np.empty((len(want), table.n_features))
                for k, i in enumerate(want):
                    hit = lookup.get(str(i))
                    if hit is None:
                        raise DataError(f"party '{me}': scoring id {i!r} is not in {table.source} or the test table")
                    X[k] = encoded[hit[0]][hit[1]]
                if cfg.passive_splits == "hidden":
                    answer([_hidden_predict(ctx, galois, cfg, src.candidate_rules(), X, replicated, me, label_party)])
                else:
                    answer([passive_decisions(part, X)])
            elif op == Op.CHECKPOINT:
                tree = meta.get("tree")
                if not isinstance(tree, int) or tree < 1:
                    raise ProtocolError(f"party '{me}': checkpoint command without a tree number")
                if checkpoint is not None:  # this party's own state only: its candidate order and split ids
                    checkpoint.save(STAGE, tree, {"n_bins": cfg.n_bins, "pack": cfg.pack,
                                                  "split_ids": sorted(src.split_ids.items())},
                                    {"perm": src.perm})
                answer()
            elif op == Op.FINISH:
                part = (src.model_part(label_party, selectors=placed, context=ctx_bytes)
                        if cfg.passive_splits == "hidden" else src.model_part(label_party))
                timings = {k: round(float(v), 3) for k, v in (engine.stats if engine else {}).items()}
                if engine is not None:
                    timings["rotations_per_pass"] = engine.rotations_per_pass
                if selection is not None:
                    timings |= {f"selection_{k}": round(float(v), 3) for k, v in selection.stats.items()}
                answer(
                    model_sha256=hashlib.sha256(part.to_bytes()).hexdigest(),
                    splits=len(part.selectors) if part.hidden else len(part.splits),
                    timings=timings,
                )
                return part
            else:
                raise ProtocolError(f"party '{me}': unknown command {op!r} from label party '{label_party}'")
    except FedCreditError as e:
        if not isinstance(e, PeerAborted):
            transport.abort(str(e))  # the label party stops waiting for our reply, and learns why
        raise
    finally:
        if engine is not None:
            engine.close()
        if selection is not None:
            selection.close()


def _hidden_predict(ctx: ckks.PublicContext | None, galois: bytes | None, cfg: SecureBoostConfig, rules: list[Any],
                    X: np.ndarray, replicated: dict[int, bytes], me: str, label_party: str) -> bytes:
    """Hidden splits, a scoring batch: every split's bits for the batch rows, encrypted (its replicated selector
    over the batch's candidate table)."""
    if ctx is None:
        raise ProtocolError(f"party '{me}': scoring request before setup")
    if not replicated:  # none of its candidates won: nothing to answer
        return hidden_batch_answer(me, X.shape[0], [], [])
    ev = SelectionEvaluator(ctx, CompiledRules(rules).bits(X), galois=galois, cache_mb=cfg.mask_cache_mb,
                            what=f"party '{me}': the CKKS context from '{label_party}'")
    try:
        sids = sorted(replicated)
        cts = [ct for sid in sids for ct in ev.bits(replicated[sid], f"label party '{label_party}'")]
    finally:
        ev.close()
    return hidden_batch_answer(me, X.shape[0], sids, cts)


def _lane_pass(engine: HistogramEvaluator | PooledHistogramEvaluator, blobs: list[bytes], groups: Any, cfg: SecureBoostConfig, me: str,
               label_party: str) -> tuple[list[bytes], int]:
    """One per-level histogram request: check the revealed node rows, then one pass per lane group."""
    who = f"party '{me}': per-level histogram request from '{label_party}'"
    if cfg.histogram_mode != "per_level":
        raise ProtocolError(f"{who}, but the job's histogram_mode is {cfg.histogram_mode!r}")
    if (not isinstance(groups, list) or not groups or not blobs
            or not all(isinstance(m, int) and 1 <= m <= max_lane_nodes(cfg.pack) for m in groups)):
        raise ProtocolError(f"{who} has malformed lane groups {groups!r}")
    arrays, _ = unpack_arrays(blobs[0], what=f"{who}: node rows")
    rows, sizes = arrays.get("rows"), arrays.get("sizes")
    n = engine.n_rows
    if (rows is None or sizes is None or rows.ndim != 1 or sizes.ndim != 1 or len(sizes) != sum(groups)
            or int(sizes.sum()) != len(rows) or (len(sizes) and sizes.min() < 2)):
        raise ProtocolError(f"{who}: node rows and sizes do not match {sum(groups)} nodes of >= 2 rows")
    rows = rows.astype(np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= n or len(np.unique(rows)) != len(rows)):
        raise ProtocolError(f"{who}: node rows must be distinct training rows in [0, {n})")
    out: list[bytes] = []
    at, node, r0 = 1, 0, 0
    for m in groups:
        sz = [int(v) for v in sizes[node : node + m]]
        layout = lane_layout(sz, cfg.pack)
        part = blobs[at : at + layout.n_chunks]
        if len(part) != layout.n_chunks:
            raise ProtocolError(f"{who}: {len(blobs) - 1} gradient ciphertexts, fewer than its lane layouts need")
        out += engine.histogram(part, f"label party '{label_party}'", lanes=(layout, rows[r0 : r0 + sum(sz)]))
        at, node, r0 = at + layout.n_chunks, node + m, r0 + sum(sz)
    if at != len(blobs):
        raise ProtocolError(f"{who}: {len(blobs) - at} gradient ciphertexts more than its lane layouts need")
    return out, int(len(sizes))
