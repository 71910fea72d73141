"""Federated binning, WOE/IV and IV selection: the label party's and a passive party's role, side by side.

Protocol (docs/binning.md; tags in :mod:`.messages`):

1. ``L -> P`` setup (method, prebins, ``min_rows``, transform, row count, ids digest), the
   public CKKS context, and ``Enc(y)`` over the aligned training rows.
2. ``P``: prebins each own feature **without labels** (equal-frequency edges / one bin per
   category, rare ones grouped; missing its own bin), every non-empty bin >= ``min_rows``
   rows (a bin of one row would reveal that row's label), then per prebin
   ``Σ_rows Enc(y) ⊙ 1[bin]`` plus a zero-sum slot mask (``crypto.ckks.masked_column_products``):
   the key holder learns the per-bin event count and nothing per row.
3. ``L`` decrypts **counts only** (``crypto.ckks.decrypt_counts``: slot sums rounded to
   integers), merges the prebins from counts (optimal binning), computes WOE/IV with
   ``fedcredit.binning`` (the pooled reference's code), selects by IV.
4. ``L -> P`` per feature: selected (1 bit), the merge map of its prebins (optimal), and in
   ``woe`` mode the WOE of each final bin.  ``P`` builds its final bins and transform.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from crypto import ckks
from fedcredit import binning as B
from fedcredit.codec import loads_json, pack, pack_blobs, unpack, unpack_blobs
from fedcredit.compute import WorkerPool, default_pool
from fedcredit.errors import ConfigError, DataError, PeerAborted, ProtocolError
from fedcredit.params import BinningParams
from fedcredit.protocols.binning.messages import PROTOCOL_VERSION, Tags
from fedcredit.protocols.binning.transform import BinningTransform
from fedcredit.protocols.vertical_common import ids_digest
from fedcredit.transport import Transport

if TYPE_CHECKING:
    from fedcredit.data import ColumnKind, Table

__all__ = ["PASSIVE_MIN_BIN_ROWS", "LabelBinning", "PassiveBinning", "run_binning_label", "run_binning_passive",
           "min_rows_for", "passive_feature_id"]

#: A passive party never reports a non-empty bin of fewer rows than this, whatever the job asks.
PASSIVE_MIN_BIN_ROWS = 20
#: zero-sum slot masks are Gaussian with this standard deviation (hide each slot's partial sum of 0/1 labels)
MASK_STD = 2.0**24


def min_rows_for(params: BinningParams, n_rows: int) -> int:
    """The job's min bin size as a row count over ``n_rows`` training rows, at least the passive floor."""
    return max(B.rows_of_size(params.min_bin_size, n_rows), PASSIVE_MIN_BIN_ROWS)


def passive_feature_id(party: str, j: int) -> str:
    """How the label party names a passive party's feature: by position only (it never learns the name)."""
    return f"{party}#{j}"


@dataclass
class LabelBinning:
    """The label party's outcome: its own bins and tables, every passive party's tables (bin indices only), selection."""

    own: list[tuple[B.FeatureBins, B.BinningTable]]
    passive: dict[str, list[B.BinningTable]]
    selected_own: list[bool]
    selected_passive: dict[str, list[bool]]
    transform: BinningTransform
    params: BinningParams
    seconds: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)

    def tables(self) -> list[B.BinningTable]:
        return [t for _, t in self.own] + [t for p in self.passive for t in self.passive[p]]

    def selection(self) -> dict[str, Any]:
        """The run JSON's ``"selection"``: threshold, and per feature owner, IV and whether it is kept."""
        rows = [{"feature": t.feature, "owner": t.owner, "iv": t.iv_total, "selected": bool(k)}
                for (_, t), k in zip(self.own, self.selected_own)]
        for p, ts in self.passive.items():
            rows += [{"feature": t.feature, "owner": p, "iv": t.iv_total, "selected": bool(k)}
                     for t, k in zip(ts, self.selected_passive[p])]
        return {"min_iv": self.params.min_iv, "features": rows,
                "selected": [r["feature"] for r in rows if r["selected"]]}


@dataclass
class PassiveBinning:
    """A passive party's outcome: its final bins, what it was told (selection, WOE in woe mode), its transform."""

    bins: list[B.FeatureBins]
    counts: list[list[int]]  # rows per final bin (its own knowledge)
    selected: list[bool]
    woe: list[list[float]] | None  # woe mode: per feature, its bins' WOE ([] for a dropped feature)
    transform: BinningTransform
    seconds: float = 0.0

    def tables(self, party: str) -> list[dict[str, Any]]:
        """This party's binning tables for its report: bins and row counts; events/WOE only if it was given WOE."""
        out = []
        for j, (b, n) in enumerate(zip(self.bins, self.counts)):
            d: dict[str, Any] = {"feature": b.feature, "owner": party, "kind": b.kind, "labels": b.labels(),
                                 "counts": n, "selected": self.selected[j]}
            if self.woe is not None and self.selected[j]:
                d["woe"] = self.woe[j]
            out.append(d)
        return out

    def selection(self, party: str, min_iv: float) -> dict[str, Any]:
        rows = [{"feature": b.feature, "owner": party, "selected": k} for b, k in zip(self.bins, self.selected)]
        return {"min_iv": min_iv, "features": rows, "selected": [r["feature"] for r in rows if r["selected"]]}


def _keep(ivs: Sequence[float], min_iv: float) -> list[bool]:
    """IV >= min_iv; a party whose every feature falls below keeps its best one (the model needs a column)."""
    keep = [v >= min_iv for v in ivs]
    if ivs and not any(keep):
        keep[int(np.argmax(ivs))] = True
    return keep


def count_prebins(pre: Sequence[B.FeatureBins], blocks: Iterable[np.ndarray], *, min_rows: int,
                  me: str) -> list[int]:
    """Rows per prebin of every feature (flat, feature by feature), accumulated one row block at a time.

    Why blocks: the counts need only a running sum per bin, so a party can feed row groups of
    its Parquet file (:func:`fedcredit.data.iter_feature_batches`, columns in ``pre``'s order)
    instead of a whole column.  A non-empty bin below ``min_rows`` is refused: prebin
    guarantees it, and a party never answers if not.
    """
    acc = [np.zeros(b.n_bins, dtype=np.int64) for b in pre]
    for X in blocks:
        for j, b in enumerate(pre):
            acc[j] += np.bincount(b.assign(X[:, j]), minlength=b.n_bins)
    counts: list[int] = []
    for b, bc in zip(pre, acc):
        small = (bc > 0) & (bc < min_rows)
        if small.any():
            raise DataError(f"party '{me}': feature '{b.feature}' would report a bin of {int(bc[small][0])} rows")
        counts += bc.tolist()
    return counts


def _row_blocks(X: np.ndarray, rows: int = 65_536) -> Iterator[np.ndarray]:
    for lo in range(0, len(X), rows):
        yield X[lo : lo + rows]


def _prebin_table(t: Table, method: str, n_bins: int, n_prebins: int, min_rows: int) -> list[B.FeatureBins]:
    nb = n_prebins if method == "optimal" else n_bins
    return [B.prebin(f, t.X[:, j], kind=t.kinds[j], categories=t.categories.get(f, ()), n_bins=nb,
                     min_rows=min_rows) for j, f in enumerate(t.feature_names)]


# --------------------------------------------------------------------------- label party


def run_binning_label(transport: Transport, train: Table, passives: Sequence[str], params: BinningParams, *,
                      timeout: float | None = None) -> LabelBinning:
    """The label party's role over ``transport``: own binning in plaintext, every passive's counts under CKKS."""
    me = transport.me
    if train.y is None:
        raise DataError(f"party '{me}': binning needs the label column of {train.source}")
    t0 = time.perf_counter()
    tg = Tags(params.tag_prefix)
    to = params.timeout or timeout
    n = len(train)
    y = train.y.astype(np.float64)
    min_rows = min_rows_for(params, n)
    ctx = ckks.new_context()
    slots = ckks.slot_count(ctx)
    setup = {"version": PROTOCOL_VERSION, "n": n, "digest": ids_digest(train.ids), "chunk": slots,
             "config": {"method": params.method, "n_bins": params.n_bins, "n_prebins": params.n_prebins,
                        "min_rows": min_rows, "transform": params.transform}}
    y_pad = np.zeros(-(-n // slots) * slots)  # whole chunks: the passive multiplies each by a full column slice
    y_pad[:n] = y
    enc_y = ckks.encrypt_chunks(ctx, y_pad, slots)
    pub = ckks.public_bytes(ctx)
    y_msg = pack_blobs(enc_y, {"chunk": slots, "n": n})
    for p in passives:
        transport.send(p, tg.setup, json.dumps(setup).encode())
        transport.send(p, tg.ctx, pub)
        transport.send(p, tg.y, y_msg)

    # own features: the same code as the pooled reference
    own = []
    for j, f in enumerate(train.feature_names):
        own.append(B.fit_feature(f, train.X[:, j], y, kind=train.kinds[j], categories=train.categories.get(f, ()),
                                 method=params.method, n_bins=params.n_bins, n_prebins=params.n_prebins,
                                 max_bins=params.max_bins, min_rows=min_rows, monotonic=params.monotonic, owner=me))
    sel_own = _keep([t.iv_total for _, t in own], params.min_iv)

    tables: dict[str, list[B.BinningTable]] = {}
    selected: dict[str, list[bool]] = {}
    decryptions = 0
    for p in passives:
        try:
            meta, arrays, _ = unpack(transport.recv(p, tg.counts, to), what=f"binning counts from '{p}'")
        except PeerAborted as e:
            raise ProtocolError(f"party '{me}': passive party '{p}' refused binning: {e.reason}") from None
        feats = meta.get("features")
        counts = arrays.get("counts")
        if not isinstance(feats, list) or counts is None or counts.dtype.kind not in "iu" or counts.ndim != 1:
            raise ProtocolError(f"party '{me}': binning counts from '{p}' lack 'features' / integer 'counts'")
        raw_sizes = [f.get("n_bins") if isinstance(f, dict) else None for f in feats]
        raw_kinds = [f.get("kind") if isinstance(f, dict) else None for f in feats]
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 2 for s in raw_sizes) or \
                any(k not in ("numeric", "categorical") for k in raw_kinds):
            raise ProtocolError(f"party '{me}': binning counts from '{p}': bad bins {raw_sizes} / kinds {raw_kinds}")
        sizes: list[int] = [int(s) for s in raw_sizes]  # type: ignore[arg-type]
        kinds: list[ColumnKind] = [k for k in raw_kinds]  # type: ignore[misc]
        if sum(sizes) != len(counts):
            raise ProtocolError(f"party '{me}': binning counts from '{p}': bins {sizes} do not fit "
                                f"{len(counts)} counts")
        parts: list[np.ndarray] = []
        for j, s in enumerate(sizes):
            cts, _ = unpack_blobs(transport.recv(p, tg.events(j), to), what=f"binning events of feature {j} from '{p}'")
            if len(cts) != s:
                raise ProtocolError(f"party '{me}': {len(cts)} event ciphertexts for feature {j} from '{p}', "
                                    f"which has {s} bins")
            parts.append(ckks.decrypt_counts(ctx, cts, what=f"binning event counts of feature {j} from '{p}'"))
            decryptions += s
        events = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        cnt = counts.astype(np.int64)
        if np.any(events < 0) or np.any(events > cnt) or int(cnt.sum()) != n * len(sizes):
            raise ProtocolError(f"party '{me}': binning counts from '{p}' are inconsistent (events outside "
                                f"0..rows per bin, or bins not covering the {n} training rows)")
        small = (cnt > 0) & (cnt < min_rows)
        if small.any():
            raise ProtocolError(f"party '{me}': passive party '{p}' reported a bin of {int(cnt[small][0])} rows, "
                                f"below min_rows={min_rows}")
        ts: list[B.BinningTable] = []
        results: list[dict[str, Any]] = []
        at = 0
        for j, (s, kind) in enumerate(zip(sizes, kinds)):
            pc, pe = cnt[at: at + s], events[at: at + s]
            at += s
            mm = list(range(s - 1)) if params.method == "equal_freq" else B.prebin_merge_map(
                kind, pc, pe, max_bins=params.max_bins, min_rows=min_rows, monotonic=params.monotonic)
            k = max(mm) + 1
            fn = np.zeros(k + 1, dtype=np.int64)
            fe = np.zeros(k + 1, dtype=np.int64)
            np.add.at(fn, [*mm, k], pc)
            np.add.at(fe, [*mm, k], pe)
            labels = [f"bin {b}" for b in range(k)] + ["missing"]
            ts.append(B.BinningTable.from_counts(passive_feature_id(p, j), labels, fn, fe, owner=p, kind=kind))
            results.append({"merge": mm})
        keep = _keep([t.iv_total for t in ts], params.min_iv)
        out = []
        for r, t, kp in zip(results, ts, keep):
            d: dict[str, Any] = {"selected": kp}
            if kp:
                d["merge"] = r["merge"]
                if params.transform == "woe":
                    d["woe"] = t.woe
            out.append(d)
        transport.send(p, tg.result, json.dumps({"features": out}).encode())
        tables[p], selected[p] = ts, keep

    kept = [(b, t) for (b, t), k in zip(own, sel_own) if k]
    transform = BinningTransform("woe", tuple(b for b, _ in kept), tuple(tuple(t.woe) for _, t in kept))
    return LabelBinning(own, tables, sel_own, selected, transform, params, time.perf_counter() - t0,
                        {"encryptions": len(enc_y), "decryptions": decryptions})


# --------------------------------------------------------------------------- passive party


def run_binning_passive(transport: Transport, train: Table, label_party: str, *, min_bin_rows: int = PASSIVE_MIN_BIN_ROWS,
                        timeout: float | None = None, tag_prefix: str = "bin",
                        pool: WorkerPool | None = None) -> PassiveBinning:
    """A passive party's role: label-free prebins, encrypted per-bin event sums, then the label party's verdict.

    It refuses a job whose ``min_rows`` is below its own floor ``min_bin_rows``, and a
    ciphertext count that does not match its rows.
    """
    me = transport.me
    t0 = time.perf_counter()
    tg = Tags(tag_prefix)
    setup = loads_json(transport.recv(label_party, tg.setup, timeout), what=f"party '{me}': binning setup")
    if setup.get("version") != PROTOCOL_VERSION:
        raise ProtocolError(f"party '{me}': binning protocol version {setup.get('version')!r} from '{label_party}'; "
                            f"this party speaks {PROTOCOL_VERSION}")
    if setup.get("n") != len(train) or setup.get("digest") != ids_digest(train.ids):
        raise ProtocolError(f"party '{me}': the label party's binning rows ({setup.get('n')}) are not this party's "
                            f"{len(train)} aligned training rows")
    cfg = setup.get("config")
    if not isinstance(cfg, dict):
        raise ProtocolError(f"party '{me}': binning setup from '{label_party}' has no config")
    min_rows = cfg.get("min_rows")
    if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < min_bin_rows:
        raise ConfigError(f"party '{me}': the job asks for bins of min_rows={min_rows!r}; this party reports no "
                          f"bin smaller than {min_bin_rows} rows (a small bin's event count reveals its rows' labels)")
    method, transform = cfg.get("method"), cfg.get("transform")
    nb, npre = cfg.get("n_bins"), cfg.get("n_prebins")
    if method not in ("equal_freq", "optimal") or transform not in ("woe", "indicators") or \
            not all(isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= 200 for v in (nb, npre)):
        raise ProtocolError(f"party '{me}': bad binning config from '{label_party}': {cfg}")
    pub = ckks.load_public(transport.recv(label_party, tg.ctx, timeout), what=f"party '{me}': binning CKKS context")
    enc_y, ymeta = unpack_blobs(transport.recv(label_party, tg.y, timeout), what=f"party '{me}': Enc(y)")
    chunk = ymeta.get("chunk")
    n = len(train)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 2 or chunk > ckks.slot_count(pub) or \
            len(enc_y) != -(-n // chunk):
        raise ProtocolError(f"party '{me}': Enc(y) from '{label_party}' has {len(enc_y)} ciphertexts of chunk "
                            f"{chunk!r} for {n} rows")

    pre = _prebin_table(train, str(method), int(nb), int(npre), min_rows)  # type: ignore[arg-type]
    L = int(chunk)
    counts = count_prebins(pre, _row_blocks(train.X), min_rows=min_rows, me=me)
    idxs = [b.assign(train.X[:, j]) for j, b in enumerate(pre)]
    transport.send(label_party, tg.counts,
                   pack({"features": [{"n_bins": b.n_bins, "kind": b.kind} for b in pre]},
                        {"counts": np.asarray(counts, dtype=np.int64)}))
    pool = pool or default_pool()  # each feature's bins split over the pool's workers (public context only)
    with ExitStack() as stack:
        workers = stack.enter_context(pool.session(ckks.load_public, ckks.public_bytes(pub),
                                                   what="binning event counts", party=me)) if pool.parallel else None
        for j, (b, idx) in enumerate(zip(pre, idxs)):  # one message per feature: ~235 KB per prebin at N=8192
            M = np.zeros((len(enc_y) * L, b.n_bins), dtype=np.float64)
            M[np.arange(n), idx] = 1.0
            masks = np.stack([ckks.mask_zero_sum(L, scale=MASK_STD) for _ in range(b.n_bins)])
            cts = ckks.masked_column_products(pub, enc_y, M, masks, what=f"party '{me}': Enc(y) from '{label_party}'",
                                              workers=workers)
            transport.send(label_party, tg.events(j), pack_blobs(cts))

    res = loads_json(transport.recv(label_party, tg.result, timeout), what=f"party '{me}': binning result")
    feats = res.get("features")
    if not isinstance(feats, list) or len(feats) != len(pre):
        raise ProtocolError(f"party '{me}': binning result from '{label_party}' does not cover its {len(pre)} features")
    bins: list[B.FeatureBins] = []
    selected: list[bool] = []
    woes: list[list[float]] = []
    fcounts: list[list[int]] = []
    at = 0
    for j, (b, d) in enumerate(zip(pre, feats)):
        c = counts[at: at + b.n_bins]
        at += b.n_bins
        if not isinstance(d, dict) or not isinstance(d.get("selected"), bool):
            raise ProtocolError(f"party '{me}': binning result for feature {j} has no 'selected' flag")
        fb = b
        w_j: list[float] = []
        if d["selected"]:
            try:
                fb = b.merged(d["merge"]) if method == "optimal" else b
            except (KeyError, TypeError, ValueError, DataError) as e:
                raise ProtocolError(f"party '{me}': bad merge map for feature {j} from '{label_party}': {e}") from None
            if transform == "woe":
                w = d.get("woe")
                if not isinstance(w, list) or len(w) != fb.n_bins or \
                        not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in w):
                    raise ProtocolError(f"party '{me}': WOE for feature {j} from '{label_party}' does not fit its "
                                        f"{fb.n_bins} bins")
                w_j = [float(v) for v in w]
        fm = B.final_map(b, fb)
        fc = np.zeros(fb.n_bins, dtype=np.int64)
        np.add.at(fc, fm, np.asarray(c, dtype=np.int64))
        bins.append(fb)
        fcounts.append(fc.tolist())
        selected.append(bool(d["selected"]))
        woes.append(w_j)
    kept = [b for b, k in zip(bins, selected) if k]
    tf = BinningTransform("woe" if transform == "woe" else "indicators", tuple(kept),
                          tuple(tuple(w) for w, k in zip(woes, selected) if k) if transform == "woe" else ())
    return PassiveBinning(bins, fcounts, selected, woes if transform == "woe" else None, tf,
                          time.perf_counter() - t0)
