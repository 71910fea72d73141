"""SecureBoost's histogram pass on several cores: :class:`HistogramEvaluator` shards over candidate groups.

Why shard by *candidate group* (``pack`` candidates that share one output ciphertext): the
outputs of a pass are independent per group, so a worker that holds groups ``[j0, j1)`` returns
exactly outputs ``j0 … j1-1`` of the single-process evaluator, and the concatenation is the same
histogram (the zero-sum masks are fresh random either way).  Each worker builds its own
:class:`~crypto.ckks_hist.HistogramEvaluator` from the *public* context bytes and only the
bin-matrix columns its candidates read, so its pre-encoded masks (the memory of a pass) live in
that worker alone: the mask budget is split, not multiplied.  What stays per worker: loading the
gradient ciphertexts and rotating them (``C*(a-1)`` input rotations are repeated by every shard).

The pool is anything with ``shards(init, args, what=...)`` — ``fedcredit.compute.WorkerPool``
(this layer may not import it; the protocol passes ``default_pool()`` in).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from crypto import ckks
from crypto.ckks_hist import HistogramEvaluator, LaneLayout, check_histogram_context, n_chunks, n_outputs
from fedcredit.errors import DataError, ProtocolError

__all__ = ["PooledHistogramEvaluator", "shard_groups"]


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
