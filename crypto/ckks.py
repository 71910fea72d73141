"""TenSEAL CKKS wrapper: contexts, chunked vector blobs, ciphertext sums and scaling.

Why blobs: protocols move encrypted vectors of arbitrary length (model updates,
residuals, histograms).  One CKKS ciphertext holds ``slot_count`` (= N/2) values,
so a vector is cut into ``ceil(n / slots)`` ciphertexts and framed as one blob::

    b"FCKK" | version u8 | n u64 | chunks u32 | (len u32 | serialized ciphertext) * chunks

(all integers little-endian).  The header lets the coordinator validate shapes and
sum blobs without ever holding a secret key.

Cost model (DESIGN.md, N=8192): encrypt 4096 slots ~5 ms, decrypt ~1.2 ms,
ct+ct 0.06 ms, ct*scalar 0.8 ms, ``copy()`` ~160 ms.  Hence every function here
deserializes each chunk once, accumulates in place (``+=`` / ``*=``) and never
copies.  ``new_context`` enables no Galois keys by default: rotations are avoided
by design (see :func:`mask_zero_sum`), and Galois keys make the public context
much larger.

Key keeper as a type: :class:`SecretContext` (the key holder's context) and
:class:`PublicContext` (everyone else's).  Bytes from the wire become a context only
through :func:`load_public`, which refuses a secret key, or :func:`load_secret`; so
"is this context public?" is answered once, here, and a party that holds a
``PublicContext`` provably cannot decrypt.  ``decrypt_*`` accept only a
``SecretContext``; encrypting and evaluating accept either.

Vertical LR's kernel (:func:`encrypt_chunks`, :func:`masked_column_products`,
:func:`decrypt_sums`) works on bare serialized CKKS vectors (no ``FCKK`` framing; the
protocol frames them): the passive party multiplies each residual chunk by a
plaintext feature column and adds a mask, and the key holder only ever decrypts
slot *sums*, so no rotation and no Galois key is needed.
"""

from __future__ import annotations

import math
import os
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import tenseal as ts
from tenseal import sealapi as sa  # SEAL objects for flooded decryption (decrypt_sums)

from fedcredit.errors import ConfigError, DataError, ProtocolError, SecurityError

MAGIC = b"FCKK"
VERSION = 1
_HEADER = struct.Struct("<4sBQI")
_LEN = struct.Struct("<I")


class PublicContext:
    """A CKKS context without a secret key: encrypts and evaluates, never decrypts.

    Made by :func:`load_public` or :meth:`SecretContext.public`; the constructor refuses a
    context that holds a secret key, so the type itself is the proof.
    """

    __slots__ = ("_ctx",)

    def __init__(self, ctx: ts.Context) -> None:
        if ctx.has_secret_key():
            raise SecurityError("a PublicContext cannot wrap a CKKS context that holds a secret key")
        self._ctx = ctx

    @property
    def tenseal_context(self) -> ts.Context:
        """The wrapped TenSEAL context, for the kernels inside ``crypto/`` (and tests) only."""
        return self._ctx

    def to_bytes(self) -> bytes:
        """Serialized public context (what :func:`load_public` reads)."""
        return public_bytes(self)


class SecretContext:
    """The key holder's CKKS context (holds the secret key): the only type ``decrypt_*`` accept."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: ts.Context) -> None:
        if not ctx.has_secret_key():
            raise SecurityError("a SecretContext needs a CKKS context that holds its secret key")
        self._ctx = ctx

    @property
    def tenseal_context(self) -> ts.Context:
        """The wrapped TenSEAL context, for the kernels inside ``crypto/`` (and tests) only."""
        return self._ctx

    def public_bytes(self) -> bytes:
        """This context WITHOUT its secret key (safe to send to the coordinator / passive parties)."""
        return public_bytes(self)

    def secret_bytes(self) -> bytes:
        """This context including its secret key (only ever inside a sealed envelope)."""
        return secret_bytes(self)

    def public(self) -> PublicContext:
        """The matching public context (a separate copy without the secret key)."""
        return load_public(self.public_bytes())


Context = PublicContext | SecretContext


def _ts(ctx: Context) -> ts.Context:
    if not isinstance(ctx, (PublicContext, SecretContext)):
        raise TypeError(f"expected a crypto.ckks PublicContext or SecretContext, got {type(ctx).__name__}")
    return ctx.tenseal_context


def _require_secret(ctx: Context, action: str) -> ts.Context:
    if not isinstance(ctx, SecretContext):
        raise SecurityError(f"cannot {action}: this context is public (holds no secret key)")
    return ctx.tenseal_context


def new_context(
    poly_modulus_degree: int = 8192,
    coeff_mod_bit_sizes: Sequence[int] = (60, 40, 40, 60),
    scale_bits: int = 40,
    galois_keys: bool = False,
) -> SecretContext:
    """Fresh CKKS context holding a secret key (keep it at the key holder only).

    The defaults give 128-bit security (N=8192, 200-bit modulus) and two multiplicative
    levels of 40-bit precision.
    """
    try:
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree, coeff_mod_bit_sizes=list(coeff_mod_bit_sizes))
    except ValueError as exc:
        raise DataError(
            f"invalid CKKS parameters N={poly_modulus_degree}, coeff_mod_bit_sizes={list(coeff_mod_bit_sizes)}: {exc}"
        ) from None
    ctx.global_scale = 2.0**scale_bits
    ctx.generate_relin_keys()
    if galois_keys:
        ctx.generate_galois_keys()
    return SecretContext(ctx)


def public_bytes(ctx: Context) -> bytes:
    """Serialize ``ctx`` WITHOUT its secret key (safe to send to the coordinator / passive parties)."""
    return _ts(ctx).serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=True)


def secret_bytes(ctx: SecretContext) -> bytes:
    """Serialize ``ctx`` including its secret key (only ever inside a sealed envelope)."""
    if not isinstance(ctx, SecretContext):
        raise SecurityError("cannot export a secret CKKS context: this context holds no secret key")
    return ctx.tenseal_context.serialize(
        save_public_key=True, save_secret_key=True, save_galois_keys=True, save_relin_keys=True
    )


def _parse(data: bytes, what: str) -> ts.Context:
    try:
        return ts.context_from(bytes(data))
    except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError for garbage
        raise ProtocolError(f"cannot load {what} ({len(data)} bytes): {exc}") from None


def load_public(data: bytes, *, what: str = "CKKS context") -> PublicContext:
    """Deserialize a context that must be public; bytes carrying a secret key are refused.

    ``what`` names the context and its sender in the error (e.g. "party 'bank': the CKKS
    context from label party 'guest'").  This is the one place that decides whether a
    received context may be held by a non-key-holder.
    """
    ctx = _parse(data, what)
    if ctx.has_secret_key():
        raise SecurityError(
            f"{what} contains a secret key; refusing it (a CKKS secret key never leaves its holder unsealed, "
            "only the public context may be held here)"
        )
    return PublicContext(ctx)


def load_secret(data: bytes, *, what: str = "CKKS context") -> SecretContext:
    """Deserialize the key holder's context (e.g. from a sealed envelope); it must hold the secret key."""
    ctx = _parse(data, what)
    if not ctx.has_secret_key():
        raise SecurityError(f"{what} holds no secret key")
    return SecretContext(ctx)


def slot_count(ctx: Context) -> int:
    """Values per ciphertext (N/2)."""
    return _ts(ctx).seal_context().data.key_context_data().parms().poly_modulus_degree() // 2


def _check_header(blob: bytes, what: str) -> tuple[int, int]:
    if len(blob) < _HEADER.size:
        raise ProtocolError(f"{what} is not a CKKS blob: {len(blob)} bytes, shorter than the {_HEADER.size}-byte header")
    magic, version, n, chunks = _HEADER.unpack_from(blob, 0)
    if magic != MAGIC:
        raise ProtocolError(f"{what} is not a CKKS blob (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise ProtocolError(f"{what} has CKKS blob version {version}, this build reads version {VERSION}")
    return n, chunks


def _split(blob: bytes, what: str) -> tuple[int, list[bytes]]:
    blob = bytes(blob)
    n, count = _check_header(blob, what)
    mv = memoryview(blob)
    off = _HEADER.size
    out: list[bytes] = []
    for i in range(count):
        if off + _LEN.size > len(blob):
            raise ProtocolError(f"{what} is truncated in the length of chunk {i} of {count}")
        (ln,) = _LEN.unpack_from(blob, off)
        off += _LEN.size
        if off + ln > len(blob):
            raise ProtocolError(f"{what} is truncated in chunk {i} of {count} ({ln} bytes announced)")
        out.append(bytes(mv[off : off + ln]))
        off += ln
    if off != len(blob):
        raise ProtocolError(f"{what} has {len(blob) - off} trailing bytes after {count} chunks")
    return n, out


def _join(n: int, chunks: Sequence[bytes]) -> bytes:
    parts = [_HEADER.pack(MAGIC, VERSION, n, len(chunks))]
    for c in chunks:
        parts.append(_LEN.pack(len(c)))
        parts.append(c)
    return b"".join(parts)


def _load_chunk(ctx: ts.Context, data: bytes, what: str, i: int) -> ts.CKKSVector:
    try:
        return ts.ckks_vector_from(ctx, data)
    except Exception as exc:
        raise ProtocolError(f"{what} chunk {i} is not a valid CKKS ciphertext for this context: {exc}") from None


def is_ckks_blob(blob: bytes) -> bool:
    """Cheap header check (magic + version), not a full parse."""
    return len(blob) >= _HEADER.size and bytes(blob[:4]) == MAGIC and blob[4] == VERSION


def blob_length(blob: bytes) -> int:
    """Number of plaintext values ``n`` the blob encrypts (from its header)."""
    n, _ = _check_header(bytes(blob[: _HEADER.size]), "blob")
    return n


def encrypt_vector(ctx: Context, values: np.ndarray) -> bytes:
    """Encrypt a 1-D float vector of any length into one blob (public context suffices)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise DataError(f"encrypt_vector expects a 1-D vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise DataError(f"encrypt_vector got a non-finite value at index {bad} ({arr[bad]})")
    slots = slot_count(ctx)
    n = int(arr.shape[0])
    tctx = _ts(ctx)
    chunks = [ts.ckks_vector(tctx, arr[i : i + slots].tolist()).serialize() for i in range(0, n, slots)]
    return _join(n, chunks)


def decrypt_vector(ctx: SecretContext, blob: bytes) -> np.ndarray:
    """Decrypt a blob to a float64 vector of its original length (needs the secret key)."""
    tctx = _require_secret(ctx, "decrypt CKKS blob")
    n, chunks = _split(blob, "blob")
    if len(chunks) != -(-n // slot_count(ctx)):
        raise ProtocolError(f"blob header says n={n} but carries {len(chunks)} chunks")
    # No buffer of the header's n up front: n is only a claim (a blob of empty chunks could announce
    # billions of values); the output grows with the ciphertexts that actually decrypt.
    parts: list[np.ndarray] = []
    off = 0
    for i, c in enumerate(chunks):
        vals = np.asarray(_load_chunk(tctx, c, "blob", i).decrypt(), dtype=np.float64)
        if off + len(vals) > n:
            raise ProtocolError(f"blob chunk {i} holds more values than the header's n={n}")
        parts.append(vals)
        off += len(vals)
    if off != n:
        raise ProtocolError(f"blob decrypted to {off} values but its header says n={n}")
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float64)


def add_encrypted(ctx: Context, blobs: Sequence[bytes]) -> bytes:
    """Sum blobs of identical shape, ciphertext + ciphertext (no secret key needed)."""
    if not blobs:
        raise ProtocolError("add_encrypted needs at least one blob")
    n0, first = _split(blobs[0], "blob 0")
    if len(first) != -(-n0 // slot_count(ctx)):
        raise ProtocolError(f"blob 0 header says n={n0} but carries {len(first)} chunks")
    tctx = _ts(ctx)
    acc = [_load_chunk(tctx, c, "blob 0", i) for i, c in enumerate(first)]
    for b, blob in enumerate(blobs[1:], start=1):
        what = f"blob {b}"
        n, chunks = _split(blob, what)
        if n != n0 or len(chunks) != len(first):
            raise ProtocolError(
                f"{what} has shape n={n}, chunks={len(chunks)} but blob 0 has n={n0}, chunks={len(first)}"
            )
        for i, c in enumerate(chunks):
            try:
                acc[i] += _load_chunk(tctx, c, what, i)
            except ProtocolError:
                raise
            except Exception as exc:  # e.g. scale mismatch after scale_encrypted on one side only
                raise ProtocolError(f"{what} chunk {i} cannot be added to blob 0: {exc}") from None
    return _join(n0, [v.serialize() for v in acc])


def scale_encrypted(ctx: Context, blob: bytes, factor: float) -> bytes:
    """Multiply every encrypted value by a plaintext scalar (consumes one CKKS level)."""
    factor = float(factor)
    if not math.isfinite(factor):
        raise DataError(f"scale factor must be finite, got {factor}")
    n, chunks = _split(blob, "blob")
    tctx = _ts(ctx)
    out = []
    for i, c in enumerate(chunks):
        v = _load_chunk(tctx, c, "blob", i)
        try:
            v *= factor
        except Exception as exc:  # out of levels
            raise ProtocolError(f"cannot scale blob chunk {i} by {factor}: {exc}") from None
        out.append(v.serialize())
    return _join(n, out)


def add_plain(ctx: Context, blob: bytes, values: np.ndarray) -> bytes:
    """Ciphertext + plaintext vector of the same length (public context suffices; no level used).

    Secure aggregation's coordinator removes reconstructed masks this way without decrypting."""
    arr = np.asarray(values, dtype=np.float64)
    n, chunks = _split(blob, "blob")
    if arr.shape != (n,):
        raise ProtocolError(f"add_plain: plaintext has shape {arr.shape}, the blob holds {n} values")
    slots = slot_count(ctx)
    tctx = _ts(ctx)
    out = []
    for i, c in enumerate(chunks):
        v = _load_chunk(tctx, c, "blob", i)
        out.append((v + arr[i * slots : (i + 1) * slots].tolist()).serialize())
    return _join(n, out)


class Workers(Protocol):
    """A compute session whose workers hold this context's :class:`PublicContext` (``fedcredit.compute``).

    Open one with ``pool.session(crypto.ckks.load_public, public_bytes)``; this layer cannot import
    the pool, so it only asks for what it uses.
    """

    workers: int

    def map(self, fn: Any, items: Iterable[Any], *, in_flight: int | None = None) -> Iterator[Any]: ...


def _parts(n: int, workers: Workers | None) -> list[tuple[int, int]]:
    """``[lo, hi)`` runs of ``n`` units, one per worker (one run without a session)."""
    k = max(1, min(n, workers.workers if workers is not None else 1))
    b = [i * n // k for i in range(k + 1)]
    return [(b[i], b[i + 1]) for i in range(k) if b[i + 1] > b[i]]


def _encrypt_part(ctx: Context, item: tuple[np.ndarray, int]) -> list[bytes]:
    arr, chunk = item
    tctx = _ts(ctx)
    return [ts.ckks_vector(tctx, arr[i : i + chunk].tolist()).serialize() for i in range(0, len(arr), chunk)]


def encrypt_chunks(ctx: Context, values: np.ndarray, chunk: int, *, workers: Workers | None = None) -> list[bytes]:
    """Encrypt ``values`` as consecutive serialized CKKS vectors of ``chunk`` values each (the last may be shorter).

    Unframed: the caller (vertical LR) frames the list and announces ``chunk`` itself.  With
    ``workers`` (a session booted on ``ctx``'s public bytes) the chunks are encrypted in parallel,
    each worker a run of whole chunks: the same ciphertext count and layout.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or chunk < 1 or chunk > slot_count(ctx):
        raise DataError(f"encrypt_chunks expects a 1-D vector and 1 <= chunk <= slots, got {arr.shape}, chunk={chunk}")
    runs = _parts(-(-len(arr) // chunk), workers)
    if workers is None or len(runs) < 2:
        return _encrypt_part(ctx, (arr, chunk))
    items = [(arr[lo * chunk : hi * chunk], chunk) for lo, hi in runs]
    return [ct for part in workers.map(_encrypt_part, items) for ct in part]


def _products_part(ctx: Context, item: tuple[Sequence[bytes], np.ndarray, np.ndarray, str]) -> list[bytes]:
    chunks, X, masks, what = item
    return masked_column_products(ctx, chunks, X, masks, what=what)


def masked_column_products(
    ctx: Context, chunks: Sequence[bytes], X: np.ndarray, masks: np.ndarray, *, what: str,
    workers: Workers | None = None,
) -> list[bytes]:
    """Per column ``c`` of ``X``: ``Σ_i Enc(r_i) ⊙ X[i*L:(i+1)*L, c] + masks[c]``, serialized.

    ``chunks`` are the :func:`encrypt_chunks` ciphertexts of a vector ``r`` (chunk length
    ``L``); ``X`` has ``len(chunks) * L`` rows (zero-padded) and ``masks`` is
    ``(X.shape[1], L)``.  Plaintext multiplications only (one per chunk and column) and
    no rotation: the key holder decrypts and sums the slots (:func:`decrypt_sums`), which
    gives ``(X^T r)_c + Σ masks[c]``, still hidden by the mask only the caller knows.
    With ``workers`` (a session booted on ``ctx``'s public bytes) the columns are split into one
    run per worker; the outputs are the same ciphertexts, in column order.
    """
    runs = _parts(X.shape[1] if X.ndim == 2 else 0, workers)
    if workers is not None and len(runs) > 1:
        if masks.shape[:1] != X.shape[1:2]:
            raise DataError(f"{what}: matrix {X.shape} / masks {masks.shape} do not fit")
        items = [(list(chunks), np.ascontiguousarray(X[:, lo:hi]), masks[lo:hi], what) for lo, hi in runs]
        return [ct for part in workers.map(_products_part, items) for ct in part]
    try:
        cts = [ts.ckks_vector_from(_ts(ctx), blob) for blob in chunks]
    except Exception as e:  # TenSEAL raises bare exceptions for foreign ciphertexts
        raise ProtocolError(f"{what} is invalid: {e}") from None
    if not cts:
        raise ProtocolError(f"{what} holds no ciphertext")
    L = len(X) // len(cts)
    if X.ndim != 2 or L * len(cts) != len(X) or masks.shape != (X.shape[1], L):
        raise DataError(f"{what}: matrix {X.shape} / masks {masks.shape} do not fit {len(cts)} chunks")
    out: list[bytes] = []
    for c in range(X.shape[1]):
        col = X[:, c]
        acc = cts[0] * col[:L].tolist()
        for i in range(1, len(cts)):
            acc += cts[i] * col[i * L : (i + 1) * L].tolist()
        acc += masks[c].tolist()
        out.append(acc.serialize())
    return out


def encrypt_replicated(ctx: Context, values: np.ndarray) -> list[bytes]:
    """One serialized CKKS vector per value, the value in every slot (vertical LR's shared weights).

    Why replicated: the receiver multiplies each by a plaintext column of any chunk of rows
    (:func:`encrypted_dot_chunks`) with no rotation; a constant encodes almost exactly, so a large
    share loses no precision.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or not np.all(np.isfinite(arr)):
        raise DataError(f"encrypt_replicated expects a finite 1-D vector, got shape {arr.shape}")
    tctx = _ts(ctx)
    slots = slot_count(ctx)
    return [ts.ckks_vector(tctx, [float(v)] * slots).serialize() for v in arr]


def _load_all(ctx: Context, cts: Sequence[bytes], what: str) -> list[ts.CKKSVector]:
    try:
        return [ts.ckks_vector_from(_ts(ctx), blob) for blob in cts]
    except Exception as e:  # TenSEAL raises bare exceptions for foreign ciphertexts
        raise ProtocolError(f"{what} is invalid: {e}") from None


def shift_replicated(ctx: Context, cts: Sequence[bytes], shift: np.ndarray, *, what: str) -> list[bytes]:
    """``Enc(b_j) + shift_j`` for :func:`encrypt_replicated` ciphertexts (no level used): ``Enc(w) = Enc(b) + a``."""
    vecs = _load_all(ctx, cts, what)
    sh = np.asarray(shift, dtype=np.float64)
    if sh.shape != (len(vecs),):
        raise DataError(f"{what}: {len(vecs)} ciphertexts but a shift of shape {sh.shape}")
    slots = slot_count(ctx)
    out = []
    for v, s in zip(vecs, sh, strict=True):
        if v.size() != slots:
            raise ProtocolError(f"{what}: a weight ciphertext holds {v.size()} values, expected {slots} (replicated)")
        out.append((v + [float(s)] * slots).serialize())
    return out


class ReplicatedWeights:
    """Replicated weight ciphertexts ``Enc(w_j)`` loaded once, for many :meth:`dot` calls (online scoring: the
    deserialisation of d ciphertexts per request cost more than the products).  Read-only after construction, so
    concurrent requests may share one."""

    def __init__(self, ctx: Context, weights: Sequence[bytes], *, what: str) -> None:
        self.ctx, self.what = ctx, what
        self.slots = slot_count(ctx)
        self._blobs = list(weights)
        self._vecs = _load_all(ctx, weights, what)
        if any(v.size() != self.slots for v in self._vecs):
            raise ProtocolError(f"{what}: a weight ciphertext is not replicated over {self.slots} slots")
        self._lock = threading.Lock()
        self._unscaled: list[ts.CKKSVector] | None = None

    def _one_row(self, x: np.ndarray, add: float, flood_std: float) -> bytes:
        """``Enc(x·w + add)`` for one row, in every slot, without a rescale: the products stay at scale², which
        the modulus holds (one level of the context) and decryption reads from the ciphertext's own scale.  A
        rescale is the costly part of a product (≈ 1 ms each at N = 8192); skipping the d rescales cut an online
        answer 7×.  The addend goes into the largest column's weight before its product (a plaintext at the
        fresh scale).

        Every slot holds ``x·(w_j + e_j[slot])``, and the key holder knows each ``e_j`` (the encryption error of
        the weights it encrypted), so unflooded slots would give it ``x`` by least squares (the attack in
        tests/test_crypto.py).  Slot 0 carries ``add``; every other slot gets fresh N(0, ``flood_std``) noise."""
        with self._lock:
            if self._unscaled is None:  # the weights again, on a private copy of the context that never rescales
                tctx = _ts(self.ctx).copy()
                tctx.auto_rescale = False
                self._unscaled = [ts.ckks_vector_from(tctx, b) for b in self._blobs]
        vecs = self._unscaled
        j0 = int(np.argmax(np.abs(x)))
        addend = gaussian(self.slots, flood_std)
        addend[0] = add
        acc = (vecs[j0] + (addend / float(x[j0])).tolist()) * float(x[j0])
        for j, v in enumerate(vecs):
            if j != j0:
                acc += v * float(x[j])
        return acc.serialize()

    def dot(self, X: np.ndarray, add: np.ndarray, *, flood_std: float = 0.0) -> list[bytes]:
        """``Enc(X w + add)``, as :func:`encrypted_dot_chunks`.  With ``flood_std`` > 0, one row (an online
        request) multiplies by scalars (:meth:`_one_row`): every slot then holds that row's value, flooded, and
        slot 0 is what :func:`decrypt_chunks` reads.  Otherwise a row's products stay in its own slot (the
        padding slots multiply zeros)."""
        X = np.asarray(X, dtype=np.float64)
        add = np.asarray(add, dtype=np.float64)
        vecs = self._vecs
        if X.ndim != 2 or add.shape != (X.shape[0],) or len(vecs) != X.shape[1]:
            raise DataError(f"{self.what}: matrix {X.shape}, addend {add.shape} and {len(vecs)} weight ciphertexts "
                            "do not fit")
        if flood_std > 0 and X.shape[0] == 1 and vecs and float(np.max(np.abs(X[0]))) > 1e-6:
            return [self._one_row(X[0], float(add[0]), flood_std)]
        slots, n = self.slots, X.shape[0]
        k = max(1, -(-n // slots))
        Xp = np.zeros((k * slots, X.shape[1]))
        Xp[:n] = X
        ap = np.zeros(k * slots)
        ap[:n] = add
        out: list[bytes] = []
        for i in range(k):
            rows = slice(i * slots, (i + 1) * slots)
            if not vecs:  # no column: the addend alone
                out.append(ts.ckks_vector(_ts(self.ctx), ap[rows].tolist()).serialize())
                continue
            acc = vecs[0] * Xp[rows, 0].tolist()
            for j in range(1, len(vecs)):
                acc += vecs[j] * Xp[rows, j].tolist()
            acc += ap[rows].tolist()
            out.append(acc.serialize())
        return out


def encrypted_dot_chunks(
    ctx: Context, weights: Sequence[bytes], X: np.ndarray, add: np.ndarray, *, what: str,
    shift: np.ndarray | None = None,
) -> list[bytes]:
    """``Enc(X w + add)`` in chunks of ``slot_count`` rows from replicated weight ciphertexts ``Enc(w_j)``.

    ``weights`` are :func:`encrypt_replicated` ciphertexts (one per column of ``X``); ``shift``
    (plaintext, optional) is added to each weight first -- ``Enc(b) + a`` -- so the product is
    taken on the small sum ``w`` and large shares cost no precision.  One plaintext
    multiplication per column and chunk, no rotation; ``X`` and ``add`` are zero-padded to
    whole chunks.  The key holder decrypts with :func:`decrypt_chunks`.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(weights) != X.shape[1]:
        raise DataError(f"{what}: matrix {X.shape} and {len(weights)} weight ciphertexts do not fit")
    cts = shift_replicated(ctx, weights, shift, what=what) if shift is not None else weights
    return ReplicatedWeights(ctx, cts, what=what).dot(X, add)


def decrypt_chunks(ctx: SecretContext, cts: Sequence[bytes], n: int, *, what: str) -> np.ndarray:
    """The first ``n`` values of the concatenated slots of :func:`encrypted_dot_chunks` ciphertexts (key holder only).

    Unflooded: the key holder keeps these values (vertical LR's partial logits, which it learns by design).
    """
    tctx = _require_secret(ctx, f"decrypt {what}")
    slots = slot_count(ctx)
    if len(cts) != max(1, -(-n // slots)):
        raise ProtocolError(f"{what}: {len(cts)} ciphertexts for {n} values ({slots} per ciphertext expected)")
    parts = []
    for c, blob in enumerate(cts):
        try:
            vals = np.asarray(ts.ckks_vector_from(tctx, blob).decrypt(), dtype=np.float64)
        except Exception as e:  # TenSEAL raises bare exceptions for foreign ciphertexts
            raise ProtocolError(f"{what}: ciphertext {c} is invalid: {e}") from None
        if len(vals) != slots:
            raise ProtocolError(f"{what}: ciphertext {c} holds {len(vals)} values, expected {slots}")
        parts.append(vals)
    return np.concatenate(parts)[:n]


# Bound on the CKKS error of one slot sum returned by decrypt_sums, for ciphertexts made by
# masked_column_products at N=8192, coeff_mod_bit_sizes (60, 40, 40, 60), scale 2^40, from a
# residual chunk |r| <= 2^12 and a column whose squares sum to <= 2^15 over the chunk (a
# standardized column over <= 32,768 rows).  Measured by simulations/ckks_decrypt_error.py and
# derived in docs/vertical_lr.md ("Decrypt-and-return"): observed std 3.4e-6, max 1.1e-5 over 200 sums.
MASKED_SUM_ERROR_BOUND = 2.0**-14
_MEASURED_PARAMS = (8192, (60, 40, 40, 60), 40)


@dataclass(frozen=True)
class Flooding:
    """Noise flooding of a decrypted value that goes back to another party (Li-Micciancio, eprint 2020/1533).

    A CKKS decryption carries an error that depends on the secret key; handing it to the
    party that built the ciphertext lets it collect linear equations in the key.  The key
    holder adds Gaussian noise of standard deviation ``2^(sigma_bits/2) * e_bound`` (the
    KL divergence between two keys' output distributions is then <= 2^-sigma_bits per value).
    """

    e_bound: float  # bound on the CKKS error of one returned value
    sigma_bits: int = 40  # statistical parameter

    def __post_init__(self) -> None:
        if not (math.isfinite(self.e_bound) and self.e_bound > 0):
            raise DataError(f"flooding needs a positive error bound, got e_bound={self.e_bound}")
        if not 1 <= self.sigma_bits <= 128:
            raise DataError(f"flooding sigma_bits must be in 1..128, got {self.sigma_bits}")

    @property
    def std(self) -> float:
        """Standard deviation of the added noise (in the returned value's units)."""
        return 2.0 ** (self.sigma_bits / 2) * self.e_bound


def masked_sum_flooding(ctx: Context, sigma_bits: int = 40) -> Flooding:
    """The :class:`Flooding` for :func:`decrypt_sums` of :func:`masked_column_products` ciphertexts under ``ctx``.

    Only the measured parameter set has a bound; anything else is refused rather than
    flooded with a guess.
    """
    tctx = _ts(ctx)
    parms = tctx.seal_context().data.key_context_data().parms()
    have = (
        parms.poly_modulus_degree(),
        tuple(m.bit_count() for m in parms.coeff_modulus()),
        round(math.log2(tctx.global_scale)),
    )
    if have != _MEASURED_PARAMS:
        raise ConfigError(
            f"no measured CKKS decryption-error bound for N={have[0]}, coeff_mod_bit_sizes={list(have[1])}, "
            f"scale 2^{have[2]} (measured: N={_MEASURED_PARAMS[0]}, {list(_MEASURED_PARAMS[1])}, 2^{_MEASURED_PARAMS[2]}); "
            "measure it with `python -m simulations.ckks_decrypt_error` before using other parameters"
        )
    return Flooding(MASKED_SUM_ERROR_BOUND, sigma_bits)


def gaussian(n: int, std: float) -> np.ndarray:
    """``n`` Gaussian samples from the OS CSPRNG (Box-Muller): the party that sees them must not predict them."""
    u = (np.frombuffer(os.urandom(16 * n), dtype="<u8") >> np.uint64(11)).astype(np.float64) / 2.0**53
    return std * np.sqrt(-2.0 * np.log1p(-u[:n])) * np.cos(2.0 * math.pi * u[n:])


def decrypt_sums(ctx: SecretContext, cts: Sequence[bytes], *, flood: Flooding, what: str) -> np.ndarray:
    """Sum over all slots of each serialized CKKS vector, flooded, for sending back to its maker (key holder only).

    The noise is added to the ciphertext's constant coefficient *before* decryption
    (``Σ_slots`` of a CKKS plaintext is ``N/2 · m_0 / scale``, so that coefficient is all the
    returned sum depends on): the floating-point decoding afterwards is a function of the
    flooded plaintext only.  ``what`` names the sender in errors.  This is the only way out
    of this module for a decrypted value that goes back to another party.
    """
    if not isinstance(flood, Flooding):
        raise TypeError("decrypt_sums needs a crypto.ckks.Flooding (decrypted values that are returned are flooded)")
    return _slot_sums(ctx, cts, flood.std, what)


def decrypt_counts(ctx: SecretContext, cts: Sequence[bytes], *, what: str, tolerance: float = 0.25) -> np.ndarray:
    """Slot sums of ciphertexts that must hold integer counts, rounded (key holder only; federated binning).

    Why unflooded: the key holder keeps these values; only integers leave this function,
    and an integer is independent of the decryption error (which is far below 0.5, see
    ``MASKED_SUM_ERROR_BOUND``), so nothing key-dependent is ever handed on.  A sum further
    than ``tolerance`` from an integer is refused: a tampered or overflowing ciphertext,
    never a silently wrong count.
    """
    sums = _slot_sums(ctx, cts, 0.0, what)
    out = np.rint(sums)
    off = np.abs(sums - out)
    if len(off) and float(off.max()) > tolerance:
        k = int(np.argmax(off))
        raise ProtocolError(f"{what}: decrypted sum {k} is {sums[k]!r}, not an integer count")
    return out.astype(np.int64)


def _slot_sums(ctx: SecretContext, cts: Sequence[bytes], noise_std: float, what: str) -> np.ndarray:
    """decrypt_sums with a given noise level; ``noise_std=0`` (unflooded) only for measuring the error."""
    tctx = _require_secret(ctx, f"decrypt {what}")
    sctx = tctx.seal_context().data
    encoder = sa.CKKSEncoder(sctx)
    evaluator = sa.Evaluator(sctx)
    decryptor = sa.Decryptor(sctx, tctx.secret_key().data)
    half = encoder.slot_count()
    deltas = gaussian(len(cts), noise_std / half) if noise_std > 0 else np.zeros(len(cts))
    sums = np.empty(len(cts))
    pt = sa.Plaintext()
    for c, blob in enumerate(cts):
        try:
            seal_cts = ts.ckks_vector_from(tctx, blob).ciphertext()
        except Exception as e:  # TenSEAL raises bare exceptions for foreign ciphertexts
            raise ProtocolError(f"{what}: ciphertext {c} is invalid: {e}") from None
        if len(seal_cts) != 1 or seal_cts[0].size() != 2:
            raise ProtocolError(f"{what}: ciphertext {c} is not one 2-component CKKS ciphertext")
        ct = seal_cts[0]
        if deltas[c]:
            encoder.encode(float(deltas[c]), ct.parms_id(), ct.scale, pt)  # constant polynomial: coefficient 0 only
            evaluator.add_plain_inplace(ct, pt)
        decryptor.decrypt(ct, pt)
        sums[c] = math.fsum(encoder.decode_double(pt))
    return sums


def mask_zero_sum(n: int, rng: np.random.Generator | None = None, scale: float = 1.0) -> np.ndarray:
    """Random vector of length ``n`` whose entries sum to 0 (up to float rounding).

    Lets a sender hide individual slots of an encrypted vector while the key holder
    still recovers the slot *sum* after decrypting — no rotations needed.  ``n < 2``
    is refused: a one-slot zero-sum mask is all zeros and would hide nothing.
    """
    if n < 2:
        raise DataError(f"a zero-sum mask needs at least 2 slots to hide anything, got n={n}")
    rng = rng if rng is not None else np.random.default_rng()
    mask = rng.normal(0.0, scale, size=n)
    mask -= mask.mean()
    mask[-1] = -mask[:-1].sum()
    return mask


if __name__ == "__main__":  # pragma: no cover - benchmark
    import time

    sk = new_context()
    pk = sk.public()
    x = np.random.default_rng(0).normal(size=100_000)
    t = time.perf_counter()
    blob = encrypt_vector(pk, x)
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    total = add_encrypted(pk, [blob] * 5)
    t_add = time.perf_counter() - t
    t = time.perf_counter()
    scaled = scale_encrypted(pk, total, 0.2)
    t_scale = time.perf_counter() - t
    t = time.perf_counter()
    out = decrypt_vector(sk, scaled)
    t_dec = time.perf_counter() - t
    print(
        f"n=100k ({len(blob) / 1e6:.1f} MB blob, {math.ceil(x.size / slot_count(pk))} chunks): "
        f"encrypt {t_enc * 1e3:.0f} ms, add 5 blobs {t_add * 1e3:.0f} ms, "
        f"scale {t_scale * 1e3:.0f} ms, decrypt {t_dec * 1e3:.0f} ms, max err {np.abs(out - x).max():.1e}; "
        f"public context {len(public_bytes(sk)) / 1e6:.2f} MB"
    )
