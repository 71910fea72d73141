"""Packed CKKS histogram kernel of vertical SecureBoost: a key keeper and an evaluator.

* :class:`HistogramKeeper` — the label party (the only holder of the secret key):
  encrypts node gradients (:meth:`~HistogramKeeper.encrypt_rows`) and decrypts the
  per-candidate sums (:meth:`~HistogramKeeper.decrypt_candidates`).
* :class:`HistogramEvaluator` — a passive party, built from the *public* context and its
  bin matrix: turns encrypted gradients into encrypted, masked split-candidate sums
  (:meth:`~HistogramEvaluator.histogram`) and never sees a plaintext gradient.

Encrypted histograms — why this layout (measured, see docs/secureboost.md):

* One CKKS ciphertext has 4096 *complex* slots.  Row ``i`` of the aligned training set
  always sits in slot ``i mod 4096`` of chunk ``i // 4096`` and carries ``g_i + 1j*h_i``
  (gradient and hessian packed in one slot).  For a node, rows outside it carry 0.
  Because the layout never changes, the passive party encodes its 0/1 selection masks
  **once** per training and every histogram is only ``multiply_plain`` + ``add``
  (0.2 ms per 4096 rows) — no encoding on the hot path.  A side effect is that the
  passive party never learns which rows are in a node.
* Masks are *cumulative* (``bin <= b``), so each output is directly the left-child sum
  ``(G_L, H_L)`` of one split candidate; candidates are shuffled by the passive party,
  so the label party sees neither feature boundaries nor bin order.
* Packing ``pack`` (K) candidates per output ciphertext: candidate ``k`` of a group is
  read from the slots ``s ≡ k (mod K)``, and for each shift ``r < K`` the mask selects row
  ``s + r`` there, so every row is counted exactly once per candidate.  The shifts are
  slot rotations split baby-step/giant-step (inputs by ``r1 < a``, per-group sums by
  ``a*r2``), which cuts the returned ciphertexts K-fold for C*(a-1) + J*(K/a-1) rotations.
* Before returning, the passive party adds a random mask whose slots sum to zero within
  each residue class, so after decrypting the label party learns only the per-candidate
  sums (no per-row products).  No rotate-and-sum is ever done.

Ciphertexts are handled with TenSEAL's SEAL bindings (``tenseal.sealapi``) because the
hot path needs pre-encoded plaintexts, complex slots and slot rotations, which the
TenSEAL vector API does not expose; contexts and keys come from :mod:`crypto.ckks`.
Importing this module imports ``tenseal.sealapi``, which registers SEAL's pybind types
(``seal::Modulus`` ...) in the process: without that, reading a received context's
moduli fails with a TypeError in a fresh process.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tenseal import sealapi as _sa  # registers SEAL's pybind types (see the module docstring)

from crypto import ckks
from fedcredit.errors import DataError, ProtocolError, SecurityError

__all__ = [
    "CKKS_POLY_MODULUS_DEGREE",
    "CKKS_COEFF_MOD_BIT_SIZES",
    "CKKS_SCALE_BITS",
    "SLOTS",
    "HistogramKeeper",
    "HistogramEvaluator",
    "CiphertextInfo",
    "describe_ciphertext",
    "n_chunks",
    "n_outputs",
    "LaneLayout",
    "lane_layout",
    "max_lane_nodes",
    "pass_cost",
    "ENCODE_COST",
    "ROTATE_COST",
    "MASK_PLAIN_BYTES",
    "SealIO",
    "check_histogram_context",
    "zero_product",
]

# CKKS parameters of the histogram protocol.  N=8192 with a 160-bit modulus is within the
# 218-bit bound of the HE standard for 128-bit security.  Data primes 60+40 bits: inputs
# and masks are encoded at 2^40, the product (2^80) is rescaled by the 40-bit prime and
# returned at the last level (one 60-bit prime: the smallest ciphertext we can send).
CKKS_POLY_MODULUS_DEGREE = 8192
CKKS_COEFF_MOD_BIT_SIZES = (60, 40, 60)
CKKS_SCALE_BITS = 40
SLOTS = CKKS_POLY_MODULUS_DEGREE // 2
# Bytes of one pre-encoded mask (two data primes in NTT form).
MASK_PLAIN_BYTES = CKKS_POLY_MODULUS_DEGREE * (len(CKKS_COEFF_MOD_BIT_SIZES) - 1) * 8
# Std-dev of the per-slot zero-sum mask on returned histograms.  Individual slots hold
# partial sums of at most chunks*K gradients (|g| <= 1); a Gaussian mask with sigma 2^16
# hides them statistically while the decrypted coefficients stay far below 2^59.
_MASK_SIGMA = 2.0**16


def n_chunks(n_rows: int) -> int:
    """Gradient ciphertexts per node for ``n_rows`` aligned training rows."""
    return max(1, -(-n_rows // SLOTS))


def n_outputs(n_candidates: int, pack: int) -> int:
    """Histogram ciphertexts per node returned for ``n_candidates`` split candidates."""
    return -(-n_candidates // pack) if n_candidates else 0


#: Cost of one 4096-slot mask encoding and of one slot rotation, in units of one ``multiply_plain``
#: (+ add).  Measured on this machine (docs/secureboost.md): encode 0.4-0.9 ms (up to 3.6 ms under
#: load 8), multiply 0.15-0.24 ms (0.7 ms), rotate 1.9 ms.  Only their ratio to a multiply matters.
ENCODE_COST = 2.5
ROTATE_COST = 8.0


def baby_step(C: int, J: int, K: int) -> int:
    """The baby step ``a`` (a power of two <= K) with the fewest rotations C*(a-1) + J*(K/a-1)."""
    steps = [1 << i for i in range(K.bit_length()) if (1 << i) <= K]
    return min(steps, key=lambda a: (C * (a - 1) + J * (K // a - 1), -a))


def pass_cost(n_chunks_in: int, n_candidates: int, pack: int, encode_fraction: float) -> float:
    """Modelled passive cost of one histogram pass over ``n_chunks_in`` input chunks, in multiplies.

    ``encode_fraction``: the share of masks that must be encoded for this pass (0: all pre-encoded,
    1: a per-level lane layout, whose masks are encoded on the fly).
    """
    J = n_outputs(n_candidates, pack)
    if not J:
        return 0.0
    a = baby_step(n_chunks_in, J, pack)
    mults = n_chunks_in * pack * J
    return mults * (1.0 + ENCODE_COST * encode_fraction) + ROTATE_COST * (n_chunks_in * (a - 1) + J * (pack // a - 1))


def max_lane_nodes(pack: int) -> int:
    """Most nodes one lane layout holds: each lane needs a gap of K-1 empty slots and >= K rows' width."""
    return SLOTS // (2 * pack)


@dataclass(frozen=True)
class LaneLayout:
    """Where each row of a level's nodes sits in a per-level (node-membership revealing) pass.

    Node ``q`` owns the slot range ``[starts[q], starts[q] + widths[q])`` — its *lane* — in every
    chunk; its ``t``-th row sits in chunk ``t // widths[q]``, slot ``starts[q] + t % widths[q]``.
    Lanes are separated by (and the chunk starts with) ``K-1`` empty slots, so the K-row window of
    every output slot (``s .. s+K-1``, cyclic within a chunk) meets one lane at most: one set of
    J output ciphertexts then carries every node's sums, and :attr:`owner` tells whose each slot is.
    """

    n_chunks: int
    starts: tuple[int, ...]
    widths: tuple[int, ...]
    sizes: tuple[int, ...]
    pack: int

    def owner(self) -> np.ndarray:
        """(SLOTS,) node whose sums the output slot carries (-1: none)."""
        out = np.full(SLOTS, -1, dtype=np.int64)
        gap = self.pack - 1
        for q, (a, w) in enumerate(zip(self.starts, self.widths)):
            out[a - gap : a + w] = q
        return out

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(chunk, slot) of every row, nodes in order, each node's rows in the order given."""
        ch, sl = [], []
        for a, w, n in zip(self.starts, self.widths, self.sizes):
            t = np.arange(n)
            ch.append(t // w)
            sl.append(a + t % w)
        return (np.concatenate(ch), np.concatenate(sl)) if ch else (np.zeros(0, np.int64), np.zeros(0, np.int64))

    def place(self, values: np.ndarray, fill: Any = 0) -> np.ndarray:
        """(n_chunks, SLOTS) array with ``values`` (one per row, nodes in order) at their positions."""
        out = np.full((self.n_chunks, SLOTS), fill, dtype=np.asarray(values).dtype)
        c, s = self.positions()
        out[c, s] = values
        return out


def lane_layout(sizes: Sequence[int], pack: int) -> LaneLayout:
    """The layout both roles derive from the node sizes alone: the fewest chunks that hold every lane."""
    m, gap = len(sizes), pack - 1
    if m < 1 or any(int(n) < 1 for n in sizes):
        raise ProtocolError(f"a lane layout needs at least one node, each with rows (got sizes {list(sizes)[:8]})")
    if m > max_lane_nodes(pack):
        raise ProtocolError(f"{m} nodes do not fit one lane layout (at most {max_lane_nodes(pack)} at pack={pack})")
    total = int(sum(sizes))
    C = max(1, -(-total // (SLOTS - m * gap)))
    while sum(gap + -(-int(n) // C) for n in sizes) > SLOTS:  # at most m more chunks than the bound
        C += 1
    widths = [-(-int(n) // C) for n in sizes]
    starts, a = [], gap
    for w in widths:
        starts.append(a)
        a += w + gap
    return LaneLayout(C, tuple(starts), tuple(widths), tuple(int(n) for n in sizes), pack)


def zero_product(sctx: Any, encoder: Any, public_key: Any) -> Any:
    """An encryption of zero under the public key at the top level and the scale of a product (scale²), for a
    kernel output no mask selected: SEAL refuses a product that would be a transparent (all-zero) ciphertext."""
    pt, ct = _sa.Plaintext(), _sa.Ciphertext()
    encoder.encode([0.0] * SLOTS, sctx.first_parms_id(), 2.0 ** (2 * CKKS_SCALE_BITS), pt)
    _sa.Encryptor(sctx, public_key).encrypt(pt, ct)
    return ct


class SealIO:
    """Bytes <-> SEAL ciphertexts.  The bindings only (de)serialize through a path, so we use
    an anonymous in-memory file (memfd) — nothing touches disk; only ciphertexts pass here."""

    def __init__(self, seal_context: Any) -> None:
        self._ctx = seal_context
        self._lock = threading.Lock()
        self._dir: str | None = None
        if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
            self._fd = os.memfd_create("fedcredit-secureboost", os.MFD_CLOEXEC)
            self._path = f"/proc/self/fd/{self._fd}"
        else:  # pragma: no cover - non-Linux fallback
            self._dir = tempfile.mkdtemp(prefix="fedcredit-sb-")
            self._path = os.path.join(self._dir, "ct")
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)

    def dump(self, obj: Any) -> bytes:
        with self._lock:
            obj.save(self._path)
            return os.pread(self._fd, os.fstat(self._fd).st_size, 0)

    def load(self, data: bytes, what: str, kind: Any = None) -> Any:
        with self._lock:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
            ct = (kind or _sa.Ciphertext)()
            try:
                ct.load(self._ctx, self._path)
            except (RuntimeError, ValueError) as e:
                raise ProtocolError(f"{what} is not a valid CKKS ciphertext for this context: {e}") from None
            return ct

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


def check_histogram_context(ctx: ckks.PublicContext, what: str, galois_apart: bool = False) -> None:
    """The evaluator's context must be public and carry this protocol's parameters and Galois keys."""
    if not isinstance(ctx, ckks.PublicContext):
        raise SecurityError(
            f"{what} contains a secret key; refusing it (a passive party must only ever hold the public context)"
        )
    tctx = ctx.tenseal_context
    parms = tctx.seal_context().data.key_context_data().parms()
    bits = [m.bit_count() for m in parms.coeff_modulus()]
    if parms.poly_modulus_degree() != CKKS_POLY_MODULUS_DEGREE or tuple(bits) != CKKS_COEFF_MOD_BIT_SIZES:
        raise ProtocolError(
            f"{what} has N={parms.poly_modulus_degree()}, moduli {bits}; "
            f"this protocol uses N={CKKS_POLY_MODULUS_DEGREE}, moduli {list(CKKS_COEFF_MOD_BIT_SIZES)}"
        )
    if not galois_apart and not tctx.has_galois_keys():
        raise ProtocolError(f"{what} has no Galois keys (needed for slot rotations)")


class HistogramKeeper:
    """Key holder side: encrypt node gradients (symmetric, seeded: half-size ciphertexts), decrypt histograms.

    Creates its own secret context with the protocol's parameters; only
    :attr:`public_bytes` ever leaves it.  Call :meth:`close` when done.
    """

    def __init__(self, pack: int | None = None, extra_steps: Sequence[int] = ()) -> None:
        # ``extra_steps``: more rotation steps to key (the hidden-split selection kernel, crypto.ckks_select).
        # With ``pack`` known, only the rotations the kernel uses get Galois keys (steps 1, 2, 4 .. K:
        # the baby step 1 and every possible giant step), sent apart as :attr:`galois_bytes` —
        # 7 keys at K=64 instead of TenSEAL's full set (the 18.6 MB context becomes ~6.5 MB).
        self.ctx = ckks.new_context(CKKS_POLY_MODULUS_DEGREE, CKKS_COEFF_MOD_BIT_SIZES, CKKS_SCALE_BITS,
                                    galois_keys=pack is None)
        self.public_bytes = self.ctx.public_bytes()
        tctx = self.ctx.tenseal_context
        self._sctx = tctx.seal_context().data
        self.galois_bytes: bytes | None = None
        if pack is not None:
            steps = sorted({1 << i for i in range(int(pack).bit_length()) if (1 << i) <= pack} | {int(s) for s in extra_steps})
            # SEAL's Galois element of a left rotation by ``step`` slots: 3^step mod 2N (the list
            # overload of create_galois_keys that pybind picks takes elements, not steps)
            elts = [pow(3, st, 2 * CKKS_POLY_MODULUS_DEGREE) for st in steps]
            gk = _sa.GaloisKeys()
            _sa.KeyGenerator(self._sctx, tctx.secret_key().data).create_galois_keys(elts, gk)
            io = SealIO(self._sctx)
            try:
                self.galois_bytes = io.dump(gk)
            finally:
                io.close()
        self._encoder = _sa.CKKSEncoder(self._sctx)
        sk = tctx.secret_key().data
        self._encryptor = _sa.Encryptor(self._sctx, sk)
        self._decryptor = _sa.Decryptor(self._sctx, sk)
        self._io = SealIO(self._sctx)
        self._top = self._sctx.first_parms_id()
        self._last = self._sctx.last_parms_id()

    def encrypt_rows(self, z: np.ndarray) -> list[bytes]:
        """Encrypt a complex row vector (``g + 1j*h`` per row, 0 outside the node) into :func:`n_chunks` ciphertexts."""
        seg = np.zeros(n_chunks(len(z)) * SLOTS, dtype=np.complex128)
        seg[: len(z)] = z
        return self.encrypt_chunks(seg.reshape(-1, SLOTS))

    def encrypt_chunks(self, Z: np.ndarray) -> list[bytes]:
        """Encrypt a (chunks, SLOTS) complex array, one ciphertext per chunk (a dense or lane layout)."""
        out = []
        pt = _sa.Plaintext()
        for seg in Z:
            self._encoder.encode(np.ascontiguousarray(seg), self._top, 2.0**CKKS_SCALE_BITS, pt)  # ndarray: faster here
            out.append(self._io.dump(self._encryptor.encrypt_symmetric(pt)))
        return out

    def _decrypt(self, blobs: Sequence[bytes], sender: str) -> Any:
        pt = _sa.Plaintext()
        for j, b in enumerate(blobs):
            ct = self._io.load(b, f"histogram ciphertext {j} from party '{sender}'")
            if ct.parms_id() != self._last or ct.size() != 2:
                raise ProtocolError(f"histogram ciphertext {j} from party '{sender}' is not at the expected CKKS level")
            self._decryptor.decrypt(ct, pt)
            yield np.asarray(self._encoder.decode_complex(pt), dtype=np.complex128)

    def decrypt_lanes(
        self, blobs: Sequence[bytes], n_candidates: int, layout: LaneLayout, sender: str
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(G_L, H_L) of every candidate for each node of a lane layout, from its J histogram ciphertexts."""
        K, m = layout.pack, len(layout.sizes)
        owner = layout.owner()
        keep = owner >= 0
        group = (owner * K + np.arange(SLOTS) % K)[keep]
        vals = np.zeros((m, len(blobs) * K), dtype=np.complex128)
        for j, v in enumerate(self._decrypt(blobs, sender)):
            re = np.bincount(group, weights=v.real[keep], minlength=m * K)
            im = np.bincount(group, weights=v.imag[keep], minlength=m * K)
            vals[:, j * K : (j + 1) * K] = (re + 1j * im).reshape(m, K)
        vals = vals[:, :n_candidates]
        return [(vals[q].real.copy(), vals[q].imag.copy()) for q in range(m)]

    def decrypt_candidates(
        self, blobs: Sequence[bytes], n_candidates: int, pack: int, sender: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(G_L, H_L) of every split candidate from one node's histogram ciphertexts (``sender`` names the party)."""
        vals = np.zeros(len(blobs) * pack, dtype=np.complex128)
        for j, v in enumerate(self._decrypt(blobs, sender)):
            vals[j * pack : (j + 1) * pack] = v.reshape(-1, pack).sum(axis=0)
        vals = vals[:n_candidates]
        return vals.real.copy(), vals.imag.copy()

    def close(self) -> None:
        self._io.close()


class HistogramEvaluator:
    """Passive side: encrypted cumulative histograms with pre-encoded masks (see module docstring).

    Built from the public context and the party's bin matrix ``Xb`` (rows x features);
    split candidate ``c`` means "``Xb[:, cand_feature[c]] <= cand_bin[c]``" when ``cand_bin``
    is one threshold per candidate, or "``cand_bin[c, Xb[:, cand_feature[c]]]``" when it is a
    boolean (candidates x bins) table of left-bin sets (category sets, a missing-value bin
    sent left or right) — in the party's own, shuffled, candidate order.  Either way a mask
    is a 0/1 vector per candidate, so the kernel below does not change.

    Rotations use a baby-step/giant-step split of the K shifts ``r = r1 + a*r2``: each input
    chunk is rotated by ``r1 < a`` (C*(a-1) rotations), each group's partial sums by ``a*r2``
    (Horner, J*(K/a - 1) rotations, only power-of-two steps).  ``a`` minimises the total:
    inputs are rotated when chunks are few, outputs when chunks outnumber groups.
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
        what: str = "the CKKS context",
        galois: bytes | None = None,
    ) -> None:
        check_histogram_context(ctx, what, galois is not None)
        if len(cand_feature) != len(cand_bin):
            raise DataError(f"{len(cand_feature)} candidate features but {len(cand_bin)} candidate bins")
        cand_bin = np.asarray(cand_bin)
        width = int(Xb.max()) + 1 if Xb.size else 1
        if cand_bin.ndim == 1:  # thresholds -> left-bin sets
            cand_bin = np.arange(width)[None, :] <= cand_bin[:, None]
        elif cand_bin.ndim != 2 or cand_bin.dtype != bool or (len(cand_bin) and cand_bin.shape[1] < width):
            raise DataError(f"candidate left-bin sets must be a boolean (candidates x >= {width} bins) table")
        tctx = ctx.tenseal_context
        self._sctx = tctx.seal_context().data
        self._encoder = _sa.CKKSEncoder(self._sctx)
        self._evaluator = _sa.Evaluator(self._sctx)
        self._public_key = tctx.public_key().data
        self._io = SealIO(self._sctx)
        if galois is None:
            self._galois = tctx.galois_keys().data
        else:  # the key holder's subset of rotation keys (HistogramKeeper.galois_bytes)
            try:
                self._galois = self._io.load(galois, f"Galois keys with {what}", _sa.GaloisKeys)
            except ProtocolError:
                raise ProtocolError(f"the Galois keys sent with {what} are not valid for this context") from None
            if self._galois.size() < 1:
                raise ProtocolError(f"the Galois keys sent with {what} are empty")
        self._top = self._sctx.first_parms_id()
        self._Xb = Xb
        self._cand_f = np.asarray(cand_feature)
        self._cand_left = cand_bin
        self.n_rows = Xb.shape[0]
        self.n_chunks = n_chunks(self.n_rows)  # C: gradient ciphertexts per node
        self.pack = pack  # K
        self.n_candidates = int(len(self._cand_f))  # P
        self.n_outputs = n_outputs(self.n_candidates, pack)  # J: histogram ciphertexts per node
        C, K, J = self.n_chunks, self.pack, self.n_outputs
        self.baby_step = baby_step(C, J, K)  # a
        self.rotations_per_pass = C * (self.baby_step - 1) + J * (K // self.baby_step - 1) if J else 0
        self._rng = np.random.default_rng(secrets.randbits(128))
        self._cache_limit = int(cache_mb * 2**20 // MASK_PLAIN_BYTES)
        self._cache: dict[tuple[int, int], list[Any]] = {}
        self.stats: dict[str, float] = {"mask_encode_s": 0.0, "hist_s": 0.0, "rotations": 0, "plain_mults": 0,
                                        "lane_passes": 0, "lane_nodes": 0}
        t = time.perf_counter()
        for c in range(C):  # pre-encode as many masks as the budget allows (chunk-major)
            for r in range(K):
                if (len(self._cache) + 1) * J > self._cache_limit:
                    break
                self._cache[(c, r)] = self._encode_masks(self._dense_rows(c), r, self.baby_step)
        self.stats["mask_encode_s"] += time.perf_counter() - t

    def _dense_rows(self, c: int) -> np.ndarray:
        """Row in each slot of chunk ``c`` of the fixed (membership-hiding) layout; -1 past the last row."""
        rows = c * SLOTS + np.arange(SLOTS)
        return np.where(rows < self.n_rows, rows, -1)

    def _mask_matrix(self, rows_c: np.ndarray, r: int, a: int) -> np.ndarray:
        """(J, SLOTS) 0/1: after a total shift r, slot s of group j selects the row in slot (s + r) of the
        chunk (``rows_c``: row per slot, -1 empty) for candidate j*K + s%K; stored pre-shifted by the
        giant step ``a*(r // a)``."""
        K, J, P = self.pack, self.n_outputs, self.n_candidates
        s = np.arange(SLOTS)
        rows = rows_c[(s + r) % SLOTS]
        p = np.arange(J)[:, None] * K + (s % K)[None, :]
        ok = (rows >= 0)[None, :] & (p < P)
        pc, rc = np.minimum(p, P - 1), np.maximum(rows, 0)[None, :]
        m = (self._cand_left[pc, self._Xb[rc, self._cand_f[pc]]] & ok).astype(np.float64)
        giant = a * (r // a)
        return np.roll(m, giant, axis=1) if giant else m  # rot_{-giant}(M): undone by the giant rotation

    def _encode_masks(self, rows_c: np.ndarray, r: int, a: int) -> list[Any]:
        """Encoded masks; ``None`` for an all-zero mask, because SEAL refuses a product that would be a
        transparent (all-zero, keyless) ciphertext — it happens on the short last chunk of rows."""
        out: list[Any] = []
        for row in self._mask_matrix(rows_c, r, a):
            if not row.any():
                out.append(None)
                continue
            pt = _sa.Plaintext()
            self._encoder.encode(row.tolist(), self._top, 2.0**CKKS_SCALE_BITS, pt)
            out.append(pt)
        return out

    def _zero_ciphertext(self) -> Any:
        return zero_product(self._sctx, self._encoder, self._public_key)

    def _masks(self, c: int, r: int, pos: np.ndarray | None, a: int) -> list[Any]:
        m = self._cache.get((c, r)) if pos is None else None
        if m is None:  # beyond the cache, or a lane layout (its masks exist for this pass only)
            t = time.perf_counter()
            m = self._encode_masks(self._dense_rows(c) if pos is None else pos[c], r, a)
            self.stats["mask_encode_s"] += time.perf_counter() - t
        return m

    def histogram(
        self, blobs: Sequence[bytes], sender: str = "label party", *, lanes: tuple[LaneLayout, np.ndarray] | None = None
    ) -> list[bytes]:
        """One pass: gradient ciphertexts in, :attr:`n_outputs` out.

        Without ``lanes``: one node in the fixed layout (:attr:`n_chunks` ciphertexts); slot class k
        of output j sums to (G_L, H_L) of candidate j*K + k.  With ``lanes = (layout, rows)``: every
        node of a level at once (``layout.n_chunks`` ciphertexts; ``rows``: the nodes' rows, in
        order), masks encoded for this pass only, and slot class k of output j sums to the candidate's
        (G_L, H_L) within each node's slots (``layout.owner()``).  ``sender`` names the gradients'
        sender in errors.
        """
        if self.n_outputs == 0:
            return []
        pos: np.ndarray | None = None
        owner = np.zeros(SLOTS, dtype=np.int64)
        C, a = self.n_chunks, self.baby_step
        if lanes is not None:
            layout, rows = lanes
            if layout.pack != self.pack or len(rows) != sum(layout.sizes):
                raise ProtocolError(f"lane layout from {sender} does not match pack={self.pack} and its {len(rows)} rows")
            pos = layout.place(np.asarray(rows, dtype=np.int64), fill=-1)
            owner = layout.owner()
            C = layout.n_chunks
            a = baby_step(C, self.n_outputs, self.pack)
            self.stats["lane_passes"] += 1
            self.stats["lane_nodes"] += len(layout.sizes)
        if len(blobs) != C:
            raise ProtocolError(f"histogram needs {C} gradient ciphertexts from {sender}, got {len(blobs)}")
        sa, ev = _sa, self._evaluator
        t0 = time.perf_counter()
        J = self.n_outputs
        m = self.pack // a
        acc: list[list[Any]] = [[None] * J for _ in range(m)]  # acc[r2][j]
        tmp = sa.Ciphertext()
        for c, b in enumerate(blobs):
            x = self._io.load(b, f"gradient ciphertext {c} from {sender}")
            if x.parms_id() != self._top or x.size() != 2 or abs(math.log2(x.scale) - CKKS_SCALE_BITS) > 1e-6:
                raise ProtocolError(f"gradient ciphertext {c} from {sender} has unexpected level/scale")
            for r1 in range(a):
                if r1:
                    y = sa.Ciphertext()
                    ev.rotate_vector(x, 1, self._galois, y)
                    x = y
                    self.stats["rotations"] += 1
                for r2 in range(m):
                    row = acc[r2]
                    for j, pt in enumerate(self._masks(c, r1 + a * r2, pos, a)):
                        if pt is None:
                            continue
                        if row[j] is None:
                            row[j] = sa.Ciphertext()
                            ev.multiply_plain(x, pt, row[j])
                        else:
                            ev.multiply_plain(x, pt, tmp)
                            ev.add_inplace(row[j], tmp)
                    self.stats["plain_mults"] += J
        result = []
        zpt = sa.Plaintext()
        group = (owner + 1) * self.pack + np.arange(SLOTS) % self.pack  # zero-sum groups: (node, residue class)
        counts = np.bincount(group)
        for j in range(J):
            o = acc[m - 1][j]
            for r2 in range(m - 2, -1, -1):  # Horner: rot_a(...) + acc[r2]; None = nothing selected yet
                if o is not None:
                    y = sa.Ciphertext()
                    ev.rotate_vector(o, a, self._galois, y)
                    o = y
                    self.stats["rotations"] += 1
                if acc[r2][j] is not None:
                    if o is None:
                        o = acc[r2][j]
                    else:
                        ev.add_inplace(o, acc[r2][j])
            if o is None:  # no row selected for any candidate of this output: a fresh encryption of zero
                o = self._zero_ciphertext()
            ev.rescale_to_next_inplace(o)
            z = self._rng.normal(0.0, _MASK_SIGMA, SLOTS) + 1j * self._rng.normal(0.0, _MASK_SIGMA, SLOTS)
            z -= (np.bincount(group, z.real) + 1j * np.bincount(group, z.imag))[group] / counts[group]
            self._encoder.encode(z, o.parms_id(), o.scale, zpt)
            ev.add_plain_inplace(o, zpt)
            result.append(self._io.dump(o))
        self.stats["hist_s"] += time.perf_counter() - t0
        return result

    def close(self) -> None:
        self._io.close()


@dataclass(frozen=True)
class CiphertextInfo:
    """What anyone holding the public context can see of a ciphertext: its size and level."""

    size: int  # polynomials (2 for a fresh or relinearized ciphertext)
    chain_index: int  # modulus-chain level; 0 = the last level (what histograms are returned at)


def describe_ciphertext(ctx: ckks.Context, blob: bytes, what: str = "ciphertext") -> CiphertextInfo:
    """Parse one kernel ciphertext under ``ctx`` (for inspection and tests; nothing is decrypted)."""
    if not isinstance(ctx, (ckks.PublicContext, ckks.SecretContext)):
        raise TypeError(f"expected a crypto.ckks context, got {type(ctx).__name__}")
    sctx = ctx.tenseal_context.seal_context().data
    io = SealIO(sctx)
    try:
        ct = io.load(blob, what)
        return CiphertextInfo(int(ct.size()), int(sctx.get_context_data(ct.parms_id()).chain_index()))
    finally:
        io.close()
