"""Oblivious split selection for SecureBoost's hidden passive splits: a key keeper and an evaluator.

Why: when a passive party learns which of its split candidates won, it holds a partition of
every training row by a threshold the labels chose, and ranks the rows by it (the
``minority_side`` attack, AUC 0.68 on the benchmark split; docs/attacks.md).  Here the label
party names the winner only under encryption, so the passive party computes the left/right
bits for the label party without learning the candidate, the bits, or the threshold.

* The passive party's candidate table ``T`` (candidates x rows, ``T[c, i]`` = row ``i`` goes left
  under candidate ``c``) is plaintext at the passive party; the label party sends ``Enc(e)``, the
  one-hot vector of the winning candidate, padded to a power of two ``B`` >= the candidate count
  and replicated ``SLOTS/B`` times.  The passive party returns ``Enc(T^T e)`` — the winner's bits —
  by the diagonal method: ``out = sum_k rot(Enc(e), k) * D_k`` with ``D_k[s] = T[(s+k) mod B, row(s)]``,
  the shifts split baby-step (``r1 < a``, rotations of the one input, shared by every chunk) /
  giant-step (``a*r2``, Horner, per output).  The masks ``D_k`` depend only on the rows, so they
  are encoded once per training and cached.  Two chunks of rows share one ciphertext (real and
  imaginary parts: ``e`` is real), so a selection costs ``B * ceil(C/2)`` plaintext products.
* Online scoring of one applicant uses the *placed* selector: ``Enc(e)`` in block ``j`` of a
  ciphertext (real or imaginary part), so ``sum_nodes placed_node * t(x)`` (``t(x)``: the
  applicant's candidate bits, replicated) puts node ``j``'s ``e * t(x)`` in block ``j``; as the blocks
  are disjoint, the placed selectors of one answer ciphertext are summed once at load, so an
  applicant costs one plaintext and one product per answer ciphertext.  A zero-sum mask per block hides every slot but the
  block's sum, which is the node's bit.
* Every returned value is flooded with fresh Gaussian noise (:data:`FLOOD_STD`, far above the
  CKKS error the key holder could know, far below the 0.5 that separates a 0 from a 1 bit), so
  the noise left in a decrypted bit says nothing of the other candidates' rows.

What each side learns: the label party exactly the winner's bits (what the revealed mode sends
in plaintext, nothing more from an honest passive party); the passive party ciphertexts only
(it holds no secret key) — not the candidate, not the partition, not its threshold.  A label
party that sends something other than a one-hot vector learns a linear mix of candidates'
bits: like today's ``split`` command that names any candidate, the label party is trusted to
follow the protocol here (docs/secureboost.md, leakage table).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tenseal import sealapi as _sa

from crypto import ckks
from crypto.ckks_hist import (
    CKKS_POLY_MODULUS_DEGREE,
    CKKS_SCALE_BITS,
    MASK_PLAIN_BYTES,
    SLOTS,
    SealIO,
    check_histogram_context,
    zero_product,
)
from fedcredit.errors import DataError, ProtocolError

__all__ = [
    "FLOOD_STD",
    "block_size",
    "galois_steps",
    "placed_position",
    "n_pairs",
    "SelectionKeeper",
    "SelectionEvaluator",
    "PlacedSelectors",
]

#: Std-dev of the fresh noise on every returned bit (training) and every block sum (scoring): the
#: CKKS error is ~1e-9 at scale 2^40, so the key holder's view of the other candidates is flooded
#: ~10^7-fold; a 0 and a 1 stay 25 sigma apart.
FLOOD_STD = 0.02
#: Std-dev of the per-slot zero-sum mask of a scoring answer: hides which slots of a block are nonzero.
_MASK_STD = 2.0**8
#: A decrypted bit farther than this from 0 or 1 is a malformed answer (25 sigma of the flooding is 0.5).
_BIT_TOLERANCE = 0.3


def block_size(n_candidates: int) -> int:
    """``B``: the power of two >= the candidate count that one selector occupies."""
    if not 0 < n_candidates <= SLOTS:
        raise DataError(f"hidden splits need 1 to {SLOTS} split candidates per passive party, this one has "
                        f"{n_candidates} (lower n_bins, or use passive_splits = \"revealed\")")
    return 1 << max(0, (n_candidates - 1).bit_length())


def galois_steps() -> list[int]:
    """Rotation steps the selection kernel may use: every power of two below the slot count."""
    return [1 << i for i in range(SLOTS.bit_length() - 1)]


def n_pairs(n_rows: int) -> int:
    """Ciphertexts of one selection's answer: two chunks of ``SLOTS`` rows each (real, imaginary)."""
    return max(1, -(-n_rows // (2 * SLOTS)))


def placed_position(split_id: int, block: int) -> tuple[int, int, bool]:
    """(answer ciphertext, block, imaginary part?) where split ``split_id``'s placed selector sits."""
    per = SLOTS // block
    g, u = divmod(int(split_id), 2 * per)
    return g, u % per, u >= per


def _baby(B: int, C2: int) -> int:
    """The baby step ``a`` (power of two <= B) with the fewest rotations (a-1) + C2*(B/a - 1)."""
    steps = [1 << i for i in range(B.bit_length()) if (1 << i) <= B]
    return min(steps, key=lambda a: ((a - 1) + C2 * (B // a - 1), -a))


def _check_fresh(ct: Any, top: Any, what: str) -> None:
    if ct.parms_id() != top or ct.size() != 2 or abs(math.log2(ct.scale) - CKKS_SCALE_BITS) > 1e-6:
        raise ProtocolError(f"{what} has an unexpected CKKS level or scale")


class SelectionKeeper:
    """Label party side: encrypts selectors, decrypts the returned bits (the only holder of the key)."""

    def __init__(self, ctx: ckks.SecretContext) -> None:
        if not isinstance(ctx, ckks.SecretContext):
            raise TypeError("SelectionKeeper needs the key holder's crypto.ckks.SecretContext")
        tctx = ctx.tenseal_context
        self._sctx = tctx.seal_context().data
        sk = tctx.secret_key().data
        self._encoder = _sa.CKKSEncoder(self._sctx)
        self._encryptor = _sa.Encryptor(self._sctx, sk)
        self._decryptor = _sa.Decryptor(self._sctx, sk)
        self._io = SealIO(self._sctx)
        self._top = self._sctx.first_parms_id()
        self._last = self._sctx.last_parms_id()
        self._lock = threading.Lock()

    def _encrypt(self, z: np.ndarray) -> bytes:
        pt = _sa.Plaintext()
        self._encoder.encode(np.ascontiguousarray(z, dtype=np.complex128), self._top, 2.0**CKKS_SCALE_BITS, pt)
        return self._io.dump(self._encryptor.encrypt_symmetric(pt))

    def selectors(self, candidate: int, n_candidates: int, split_id: int) -> tuple[bytes, bytes]:
        """(replicated, placed) selector of ``candidate`` for split ``split_id``: ``Enc(e)`` in every block, and
        in its :func:`placed_position` only."""
        B = block_size(n_candidates)
        if not 0 <= candidate < n_candidates:
            raise DataError(f"candidate {candidate} is outside the passive party's {n_candidates} candidates")
        rep = np.zeros(SLOTS, dtype=np.complex128)
        rep[np.arange(candidate, SLOTS, B)] = 1.0
        _, j, imag = placed_position(split_id, B)
        placed = np.zeros(SLOTS, dtype=np.complex128)
        placed[j * B + candidate] = 1j if imag else 1.0
        with self._lock:
            return self._encrypt(rep), self._encrypt(placed)

    def _decrypt(self, blobs: Sequence[bytes], sender: str) -> list[np.ndarray]:
        out = []
        pt = _sa.Plaintext()
        with self._lock:
            for k, b in enumerate(blobs):
                ct = self._io.load(b, f"selection answer {k} from party '{sender}'")
                if ct.parms_id() != self._last or ct.size() != 2:
                    raise ProtocolError(f"selection answer {k} from party '{sender}' is not at the expected CKKS level")
                self._decryptor.decrypt(ct, pt)
                out.append(np.asarray(self._encoder.decode_complex(pt), dtype=np.complex128))
        return out

    @staticmethod
    def _round(v: np.ndarray, sender: str) -> np.ndarray:
        r = np.rint(v)
        if v.size and (np.abs(v - r).max() > _BIT_TOLERANCE or r.min() < 0 or r.max() > 1):
            raise ProtocolError(f"the split bits from party '{sender}' are not 0/1 values (a malformed selection answer)")
        return r.astype(bool)

    def decrypt_bits(self, blobs: Sequence[bytes], n_rows: int, sender: str) -> np.ndarray:
        """The left/right bit of each of ``n_rows`` rows from one selection's :func:`n_pairs` ciphertexts."""
        if len(blobs) != n_pairs(n_rows):
            raise ProtocolError(f"party '{sender}' returned {len(blobs)} selection ciphertexts for {n_rows} rows, "
                                f"expected {n_pairs(n_rows)}")
        vals = np.concatenate([np.stack([v.real, v.imag]).ravel() for v in self._decrypt(blobs, sender)])
        return self._round(vals[:n_rows], sender)

    def decrypt_placed(self, blobs: Sequence[bytes], split_ids: Sequence[int], block: int, sender: str) -> dict[int, bool]:
        """Split id -> bit for one applicant, from a :class:`PlacedSelectors` answer."""
        per = SLOTS // block
        need = max((placed_position(s, block)[0] for s in split_ids), default=-1) + 1
        if len(blobs) != need:
            raise ProtocolError(f"party '{sender}' returned {len(blobs)} scoring ciphertexts, expected {need}")
        sums = [v.reshape(per, block).sum(axis=1) for v in self._decrypt(blobs, sender)]
        out: dict[int, bool] = {}
        for s in split_ids:
            g, j, imag = placed_position(s, block)
            val = sums[g][j].imag if imag else sums[g][j].real
            out[int(s)] = bool(self._round(np.array([val]), sender)[0])
        return out

    def close(self) -> None:
        self._io.close()


class SelectionEvaluator:
    """Passive side, one fixed set of rows: the winner's bits from a replicated selector (module docstring).

    ``T``: this party's own candidate bits for the rows, in its own (shuffled) candidate order: a
    bool (candidates x rows) array, or — for the training rows, where that array would be
    candidates x rows bytes (2 GB at 2,000 candidates and a million rows) — the bins ``(Xb,
    cand_feature, cand_left)`` it is read from (``T[c, i] = cand_left[c, Xb[i, cand_feature[c]]]``).
    Masks are encoded on first use and cached up to ``cache_mb``.
    """

    def __init__(self, ctx: ckks.PublicContext, T: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray], *,
                 galois: bytes | None, cache_mb: float, what: str = "the CKKS context") -> None:
        check_histogram_context(ctx, what, galois is not None)
        self._bins: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if isinstance(T, tuple):
            Xb, cf, cl = (np.asarray(a) for a in T)
            if Xb.ndim != 2 or cf.ndim != 1 or cl.ndim != 2 or len(cf) != len(cl) or cl.dtype != bool:
                raise DataError("candidate bins must be (rows x features) bins, a feature per candidate and a "
                                "boolean (candidates x bins) left-bin table")
            self._bins = (Xb, cf.astype(np.int64), cl)
            self.n_candidates, self.n_rows = len(cf), Xb.shape[0]
        else:
            T = np.asarray(T, dtype=bool)
            if T.ndim != 2:
                raise DataError("the candidate table must be (candidates x rows)")
            self.n_candidates, self.n_rows = T.shape
        self.block = B = block_size(self.n_candidates)
        tctx = ctx.tenseal_context
        self._sctx = tctx.seal_context().data
        self._encoder = _sa.CKKSEncoder(self._sctx)
        self._evaluator = _sa.Evaluator(self._sctx)
        self._io = SealIO(self._sctx)
        self._public_key = tctx.public_key().data
        self._galois = (tctx.galois_keys().data if galois is None
                        else self._io.load(galois, f"Galois keys with {what}", _sa.GaloisKeys))
        self._top = self._sctx.first_parms_id()
        self.n_pairs = C2 = n_pairs(self.n_rows)
        self.baby_step = _baby(B, C2)
        if self._bins is None:
            self._T = np.zeros((B, 2 * C2 * SLOTS), dtype=bool)
            self._T[: self.n_candidates, : self.n_rows] = T
        self._cache: dict[tuple[int, int], Any] = {}
        self._cache_limit = int(cache_mb * 2**20 // MASK_PLAIN_BYTES)
        self._lock = threading.Lock()
        self.stats: dict[str, float] = {"select_s": 0.0, "mask_encode_s": 0.0, "selections": 0, "rotations": 0,
                                        "plain_mults": 0}

    def _mask(self, q: int, k: int) -> Any:
        """D_k of chunk pair ``q`` (real: chunk 2q, imaginary: 2q+1), pre-rotated by the giant step; None if all 0."""
        hit = self._cache.get((q, k))
        if hit is not None or (q, k) in self._cache:
            return hit
        t = time.perf_counter()
        B, a = self.block, self.baby_step
        s = np.arange(SLOTS)
        c = (s + k) % B
        re, im = self._lookup(c, 2 * q * SLOTS + s), self._lookup(c, (2 * q + 1) * SLOTS + s)
        m = re.astype(np.float64) + 1j * im.astype(np.float64)
        giant = a * (k // a)
        if giant:
            m = np.roll(m, giant)
        pt = None
        if m.any():
            pt = _sa.Plaintext()
            self._encoder.encode(m, self._top, 2.0**CKKS_SCALE_BITS, pt)
        if len(self._cache) < self._cache_limit:
            self._cache[(q, k)] = pt
        self.stats["mask_encode_s"] += time.perf_counter() - t
        return pt

    def _lookup(self, c: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``T[c, rows]`` elementwise, 0 for padding candidates (>= the count) and rows (>= the row count)."""
        if self._bins is None:
            return self._T[c, rows]
        Xb, cf, cl = self._bins
        ok = (c < self.n_candidates) & (rows < self.n_rows)
        cc, rr = np.where(ok, c, 0), np.where(ok, rows, 0)
        return cl[cc, Xb[rr, cf[cc]]] & ok

    def bits(self, selector: bytes, sender: str = "label party") -> list[bytes]:
        """:attr:`n_pairs` ciphertexts of the selected candidate's (flooded) bits for every row."""
        with self._lock:
            return self._bits(selector, sender)

    def bits_many(self, selectors: Sequence[bytes], sender: str = "label party") -> list[list[bytes]]:
        """:meth:`bits` of each selector (the interface the pooled evaluator shares)."""
        return [self.bits(s, sender) for s in selectors]

    def _bits(self, selector: bytes, sender: str) -> list[bytes]:
        t0 = time.perf_counter()
        sa, ev = _sa, self._evaluator
        x = self._io.load(selector, f"split selector from {sender}")
        _check_fresh(x, self._top, f"split selector from {sender}")
        B, a = self.block, self.baby_step
        m = B // a
        baby = [x]
        for _ in range(1, a):
            y = sa.Ciphertext()
            ev.rotate_vector(baby[-1], 1, self._galois, y)
            baby.append(y)
            self.stats["rotations"] += 1
        out: list[bytes] = []
        tmp = sa.Ciphertext()
        flood = sa.Plaintext()
        for q in range(self.n_pairs):
            acc: list[Any] = [None] * m
            for r2 in range(m):
                for r1 in range(a):
                    pt = self._mask(q, r1 + a * r2)
                    if pt is None:
                        continue
                    if acc[r2] is None:
                        acc[r2] = sa.Ciphertext()
                        ev.multiply_plain(baby[r1], pt, acc[r2])
                    else:
                        ev.multiply_plain(baby[r1], pt, tmp)
                        ev.add_inplace(acc[r2], tmp)
                    self.stats["plain_mults"] += 1
            o = acc[m - 1]
            for r2 in range(m - 2, -1, -1):  # Horner: rot_a(...) + acc[r2]
                if o is not None:
                    y = sa.Ciphertext()
                    ev.rotate_vector(o, a, self._galois, y)
                    o = y
                    self.stats["rotations"] += 1
                if acc[r2] is not None:
                    if o is None:
                        o = acc[r2]
                    else:
                        ev.add_inplace(o, acc[r2])
            if o is None:  # no row of this pair goes left under any candidate: an encryption of zero
                o = zero_product(self._sctx, self._encoder, self._public_key)
            ev.rescale_to_next_inplace(o)
            z = ckks.gaussian(SLOTS, FLOOD_STD) + 1j * ckks.gaussian(SLOTS, FLOOD_STD)
            self._encoder.encode(z, o.parms_id(), o.scale, flood)
            ev.add_plain_inplace(o, flood)
            out.append(self._io.dump(o))
        self.stats["selections"] += 1
        self.stats["select_s"] += time.perf_counter() - t0
        return out

    def close(self) -> None:
        self._io.close()


class PlacedSelectors:
    """Passive side of online scoring: every split's placed selector, loaded once (read-only, thread-safe).

    :meth:`answer` gives, for one applicant's candidate bits ``t``, the ciphertexts whose block sums
    are each split's bit (zero-sum masked per block, one flooded sum per block).
    """

    def __init__(self, ctx: ckks.PublicContext, placed: Mapping[int, bytes], n_candidates: int, *, what: str) -> None:
        if not isinstance(ctx, ckks.PublicContext):
            raise TypeError("PlacedSelectors needs a crypto.ckks.PublicContext (a passive party holds no key)")
        parms = ctx.tenseal_context.seal_context().data.key_context_data().parms()
        if parms.poly_modulus_degree() != CKKS_POLY_MODULUS_DEGREE:
            raise ProtocolError(f"{what}: the CKKS context is not the SecureBoost context")
        self.block = block_size(n_candidates)
        self.n_candidates = n_candidates
        self._sctx = ctx.tenseal_context.seal_context().data
        self._encoder = _sa.CKKSEncoder(self._sctx)
        self._evaluator = _sa.Evaluator(self._sctx)
        self._io = SealIO(self._sctx)
        self._top = self._sctx.first_parms_id()
        groups: dict[int, list[Any]] = {}
        for sid, blob in sorted(placed.items()):
            ct = self._io.load(blob, f"{what}: the placed selector of split {sid}")
            _check_fresh(ct, self._top, f"{what}: the placed selector of split {sid}")
            groups.setdefault(placed_position(sid, self.block)[0], []).append(ct)
        # every split of a group sits in its own block and all meet the same plaintext t(x), so their sum is
        # taken once here: one product per group and applicant instead of one per split
        self._sums: dict[int, Any] = {}
        for g, cts in groups.items():
            acc = cts[0]
            for ct in cts[1:]:
                self._evaluator.add_inplace(acc, ct)
            self._sums[g] = acc
        self.n_answers = max(self._sums, default=-1) + 1
        if sorted(self._sums) != list(range(self.n_answers)):
            raise ProtocolError(f"{what}: the placed selectors' split ids are not dense")
        self._lock = threading.Lock()

    def answer(self, t: np.ndarray) -> list[bytes]:
        """:attr:`n_answers` ciphertexts for one applicant's candidate bits ``t`` (this party's candidate order)."""
        t = np.asarray(t, dtype=bool)
        if t.shape != (self.n_candidates,):
            raise DataError(f"candidate bits of shape {t.shape}, expected ({self.n_candidates},)")
        B, per = self.block, SLOTS // self.block
        rep = np.zeros((per, B))
        rep[:, : self.n_candidates] = t
        with self._lock:
            sa, ev = _sa, self._evaluator
            pt = sa.Plaintext()
            self._encoder.encode(rep.ravel().astype(np.complex128), self._top, 2.0**CKKS_SCALE_BITS, pt)
            out: list[bytes] = []
            mask = sa.Plaintext()
            for g in range(self.n_answers):
                o = sa.Ciphertext()
                ev.multiply_plain(self._sums[g], pt, o)
                ev.rescale_to_next_inplace(o)
                z = (ckks.gaussian(SLOTS, _MASK_STD) + 1j * ckks.gaussian(SLOTS, _MASK_STD)).reshape(per, B)
                z -= z.mean(axis=1, keepdims=True)  # zero-sum per block ...
                z[:, 0] += ckks.gaussian(per, FLOOD_STD) + 1j * ckks.gaussian(per, FLOOD_STD)  # ... + one flooded sum
                self._encoder.encode(z.ravel(), o.parms_id(), o.scale, mask)
                ev.add_plain_inplace(o, mask)
                out.append(self._io.dump(o))
            return out

    def close(self) -> None:
        self._io.close()
