"""SecureBoost's histogram pass on several cores: :class:`HistogramEvaluator` shards over candidate groups.

Why shard by *candidate group* (``pack`` candidates that share one output ciphertext): the
outputs of a pass are independent per group, so a worker that holds groups ``[j0, j1)`` returns
exactly outputs ``j0 … j1-1`` of the single-process evaluator, and the concatenation is the same
histogram (the zero-sum masks are fresh random either way).  Each worker builds its own
:class:`~crypto.ckks_hist.HistogramEvaluator` from the *public* context bytes and only the
bin-matrix columns its candidates read, so its pre-encoded masks (the memory of a pass) live in
that worker alone: the mask budget is split, not multiplied.  What stays per worker: loading the
gradient ciphertexts and rotating them (``C*(a-1)`` input rotations are repeated by every shard).

The hidden-split selection kernel (:class:`~crypto.ckks_select.SelectionEvaluator`) shards the same
way over *row pairs* (its outputs are independent per 8,192-row pair): :class:`PooledSelectionEvaluator`.

The pool is anything with ``shards(init, args, what=...)`` — ``fedcredit.compute.WorkerPool``
(this layer may not import it; the protocol passes ``default_pool()`` in).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from crypto import ckks
from crypto.ckks_hist import SLOTS, HistogramEvaluator, LaneLayout, check_histogram_context, n_chunks, n_outputs
from crypto.ckks_select import SelectionEvaluator, block_size, n_pairs
from fedcredit.errors import DataError, ProtocolError

__all__ = ["PooledHistogramEvaluator", "PooledSelectionEvaluator", "shard_groups", "shard_pairs"]


class _Shards(Protocol):
    n: int

    def broadcast(self, fn: Any, item: Any) -> list[Any]: ...

    def close(self) -> None: ...


class _Pool(Protocol):
    workers: int

    def shards(self, init: Any, args: Sequence[Any], *, what: str = ..., party: str | None = ...) -> _Shards: ...


def shard_groups(n_candidates: int, pack: int, shards: int) -> list[tuple[int, int]]:
    """Candidate ranges ``[lo, hi)`` of at most ``shards`` contiguous runs of whole groups (balanced)."""
    J = n_outputs(n_candidates, pack)
    k = max(1, min(shards, J))
    bounds = [i * J // k for i in range(k + 1)]
    return [(bounds[i] * pack, min(bounds[i + 1] * pack, n_candidates)) for i in range(k) if bounds[i + 1] > bounds[i]]


def _boot(
    arg: tuple[bytes, np.ndarray, np.ndarray, np.ndarray, int, float, str, bytes | None],
) -> HistogramEvaluator:
    ctx_bytes, Xb, cand_f, cand_bin, pack, cache_mb, what, galois = arg
    return HistogramEvaluator(ckks.load_public(ctx_bytes, what=what), Xb, cand_f, cand_bin, pack, cache_mb, what=what,
                              galois=galois)


def _outputs(ev: HistogramEvaluator, _item: None) -> tuple[int, int]:
    return ev.n_outputs, ev.rotations_per_pass


_Lanes = tuple[LaneLayout, np.ndarray] | None


def _pass(
    ev: HistogramEvaluator, item: tuple[list[list[bytes]], str, _Lanes]
) -> tuple[list[list[bytes]], dict[str, float]]:
    nodes, sender, lanes = item
    before = dict(ev.stats)
    out = [ev.histogram(blobs, sender, lanes=lanes) for blobs in nodes]
    return out, {k: ev.stats[k] - before[k] for k in ev.stats}


class PooledHistogramEvaluator:
    """The :class:`HistogramEvaluator` interface (``n_chunks``, ``n_outputs``, ``histogram`` …) on a pool's shards.

    Same constructor arguments plus ``pool`` (and ``work``/``party``, named if a worker dies); ``cache_mb`` is the budget of the whole party
    (each of the ``k`` shards gets ``cache_mb / k``).  :meth:`histograms` does several nodes in
    one round trip to the workers.  Call :meth:`close` to stop the workers.
    """

    def __init__(
        self,
        ctx: ckks.PublicContext,
        Xb: np.ndarray,
        cand_feature: np.ndarray,
        cand_bin: np.ndarray,
        pack: int,
        cache_mb: float,
        *,
        pool: _Pool,
        what: str = "the CKKS context",
        work: str = "SecureBoost histograms",
        party: str | None = None,
        galois: bytes | None = None,
    ) -> None:
        check_histogram_context(ctx, what, galois is not None)  # in the parent: a wrong context fails before any worker starts
        if len(cand_feature) != len(cand_bin):
            raise DataError(f"{len(cand_feature)} candidate features but {len(cand_bin)} candidate bins")
        cand_f = np.asarray(cand_feature)
        cand_bin = np.asarray(cand_bin)
        self.n_rows = int(Xb.shape[0])
        self.n_chunks = n_chunks(self.n_rows)
        self.pack = pack
        self.n_candidates = int(len(cand_f))
        self.n_outputs = n_outputs(self.n_candidates, pack)
        ranges = shard_groups(self.n_candidates, pack, pool.workers)
        ctx_bytes = ctx.to_bytes()
        args = []
        for lo, hi in ranges:
            feats = np.unique(cand_f[lo:hi])
            args.append(
                (ctx_bytes, np.ascontiguousarray(Xb[:, feats]), np.searchsorted(feats, cand_f[lo:hi]),
                 cand_bin[lo:hi], pack, cache_mb / len(ranges), what, galois)
            )
        self._shards = pool.shards(_boot, args, what=work, party=party) if ranges else None
        self.stats: dict[str, float] = {"mask_encode_s": 0.0, "hist_s": 0.0, "rotations": 0, "plain_mults": 0}
        self.rotations_per_pass = 0
        if self._shards is not None:  # boot now: a bad shard fails at setup, and mask pre-encoding is setup time
            try:
                got = self._shards.broadcast(_outputs, None)
            except BaseException:
                self.close()
                raise
            if sum(o for o, _ in got) != self.n_outputs:
                self.close()
                raise ProtocolError(f"histogram shards return {sum(o for o, _ in got)} ciphertexts, "
                                    f"expected {self.n_outputs}")
            self.rotations_per_pass = sum(r for _, r in got)

    @property
    def n_shards(self) -> int:
        return self._shards.n if self._shards is not None else 0

    def histograms(self, nodes: Sequence[Sequence[bytes]], sender: str = "label party", *,
                   lanes: _Lanes = None) -> list[list[bytes]]:
        """Several passes in one round trip to the workers: each :attr:`n_chunks` gradient ciphertexts in (or,
        with ``lanes``, a level's lane layout as :meth:`HistogramEvaluator.histogram`), :attr:`n_outputs` out."""
        for blobs in nodes:
            if lanes is None and len(blobs) != self.n_chunks:
                raise ProtocolError(f"histogram needs {self.n_chunks} gradient ciphertexts from {sender}, got {len(blobs)}")
        if self._shards is None:
            return [[] for _ in nodes]
        parts = self._shards.broadcast(_pass, ([list(b) for b in nodes], sender, lanes))
        for _, st in parts:
            for k, v in st.items():
                self.stats[k] = self.stats.get(k, 0) + v
        return [[ct for out, _ in parts for ct in out[k]] for k in range(len(nodes))]

    def histogram(self, blobs: Sequence[bytes], sender: str = "label party", *, lanes: _Lanes = None) -> list[bytes]:
        """One pass, as :meth:`HistogramEvaluator.histogram` (fixed layout, or a level's lanes)."""
        return self.histograms([blobs], sender, lanes=lanes)[0]

    def close(self) -> None:
        if self._shards is not None:
            self._shards.close()
            self._shards = None


def shard_pairs(n_rows: int, shards: int) -> list[tuple[int, int]]:
    """Row ranges ``[lo, hi)`` of at most ``shards`` contiguous runs of whole 8,192-row pairs (balanced)."""
    C2 = n_pairs(n_rows)
    k = max(1, min(shards, C2))
    bounds = [i * C2 // k for i in range(k + 1)]
    return [(bounds[i] * 2 * SLOTS, min(bounds[i + 1] * 2 * SLOTS, n_rows)) for i in range(k) if bounds[i + 1] > bounds[i]]


def _boot_select(arg: tuple[bytes, np.ndarray, np.ndarray, np.ndarray, float, str, bytes | None]) -> SelectionEvaluator:
    ctx_bytes, Xb, cand_f, cand_left, cache_mb, what, galois = arg
    return SelectionEvaluator(ckks.load_public(ctx_bytes, what=what), (Xb, cand_f, cand_left), galois=galois,
                              cache_mb=cache_mb, what=what)


def _select(ev: SelectionEvaluator, item: tuple[list[bytes], str]) -> tuple[list[list[bytes]], dict[str, float]]:
    selectors, sender = item
    before = dict(ev.stats)
    out = ev.bits_many(selectors, sender)
    return out, {k: ev.stats[k] - before[k] for k in ev.stats}


class PooledSelectionEvaluator:
    """:class:`~crypto.ckks_select.SelectionEvaluator` over the training rows, sharded over a pool by row pairs.

    Each worker holds its rows' bins and its own mask cache (``cache_mb`` is split); each repeats the
    selector's baby-step rotations (``a - 1``, a few ms).  Outputs concatenated in row order are the
    single-process evaluator's.  Call :meth:`close` to stop the workers.
    """

    def __init__(self, ctx: ckks.PublicContext, Xb: np.ndarray, cand_feature: np.ndarray, cand_left: np.ndarray, *,
                 pool: _Pool, cache_mb: float, what: str = "the CKKS context", party: str | None = None,
                 galois: bytes | None = None) -> None:
        check_histogram_context(ctx, what, galois is not None)
        self.n_rows, self.n_candidates = int(Xb.shape[0]), int(len(cand_feature))
        self.block = block_size(self.n_candidates)
        self.n_pairs = n_pairs(self.n_rows)
        ranges = shard_pairs(self.n_rows, pool.workers)
        ctx_bytes = ctx.to_bytes()
        args = [(ctx_bytes, np.ascontiguousarray(Xb[lo:hi]), np.asarray(cand_feature), np.asarray(cand_left),
                 cache_mb / len(ranges), what, galois) for lo, hi in ranges]
        self._shards: _Shards | None = pool.shards(_boot_select, args, what="SecureBoost hidden-split selections",
                                                   party=party)
        self.stats: dict[str, float] = {"select_s": 0.0, "mask_encode_s": 0.0, "selections": 0, "rotations": 0,
                                        "plain_mults": 0}

    def bits_many(self, selectors: Sequence[bytes], sender: str = "label party") -> list[list[bytes]]:
        """Per selector, its :attr:`n_pairs` answer ciphertexts (one round trip to the workers for all)."""
        if self._shards is None:
            raise ProtocolError("the selection workers are closed")
        parts = self._shards.broadcast(_select, (list(selectors), sender))
        for _, st in parts:
            for k, v in st.items():
                self.stats[k] = self.stats.get(k, 0) + (v if k != "selections" else 0)
        self.stats["selections"] += len(selectors)
        return [[ct for out, _ in parts for ct in out[i]] for i in range(len(selectors))]

    def bits(self, selector: bytes, sender: str = "label party") -> list[bytes]:
        return self.bits_many([selector], sender)[0]

    def close(self) -> None:
        if self._shards is not None:
            self._shards.close()
            self._shards = None
