"""Primitives for ECDH private set intersection over X25519 (the protocol lives in fedcredit.protocols).

Each party hashes its ids to curve points, blinds them with a secret scalar, and
the peer blinds them again; because scalar multiplication commutes,
``a·(b·H(x)) == b·(a·H(x))``, so doubly-blinded values match exactly when the ids
match, and nothing else about the other side's ids is revealed (DDH on Curve25519).

Id normalization — a documented decision, because a silent mismatch here shrinks
the intersection without any error:

* ids are compared as **strings**; the result is UTF-8 bytes;
* ``str``/``bytes`` are stripped of surrounding whitespace and otherwise kept as
  written: ``"00123"`` and ``"123"`` are DIFFERENT ids, and ``"123.0"`` stays
  ``"123.0"`` (read id columns as strings to avoid surprises);
* ``int`` (incl. numpy integers) → its decimal text;
* integral ``float`` (``123.0``) → ``"123"`` — what pandas does to an int column
  with missing values; non-integral floats, floats beyond 2**53 (already rounded),
  NaN/inf, empty strings, ``None`` and ``bool`` → DataError.

Hash to point: ``u = SHA-256(DOMAIN || id || counter_be32)`` used directly as an
X25519 u-coordinate (RFC 7748 ignores the top bit).  About half of all u values lie
on the quadratic twist rather than the curve; X25519's Montgomery ladder is correct
on both and Curve25519 is twist-secure, so blinding stays sound and commutative.
The only inputs X25519 cannot take are the ≤ 8-torsion u-coordinates (output all
zero; ``cryptography`` raises ValueError).  Since the scalar is clamped to a
multiple of 8 this depends on u alone, so :func:`hash_to_point` checks the
candidate against that list (mod p, top bit cleared) and re-hashes with the next
counter — it never happens in practice (probability ~2**-252) but the loop makes
blinding provably total.  A peer *sending* such a point on purpose gets
SecurityError from :meth:`PsiKey.blind`.

Measured (this machine, ``python -m crypto.psi``): ~29–30k blinds/s on one core
and hashing ~0.4–0.6M ids/s.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import struct
from collections.abc import Iterable, Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedcredit.errors import DataError, ProtocolError, SecurityError

DOMAIN = b"fedcredit/psi/x25519/v1\x00"
POINT_LEN = 32

_P = 2**255 - 19
# u-coordinates of points of order dividing 8 on Curve25519 and its twist (mod p).
_LOW_ORDER_U = frozenset(
    {
        0,
        1,
        _P - 1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
    }
)
_TOP_BIT_CLEAR = (1 << 255) - 1


def normalize_id(value: object) -> bytes:
    """Canonical UTF-8 bytes of a customer id (rules in the module docstring)."""
    if value is None or isinstance(value, bool):
        raise DataError(f"invalid id {value!r}: ids must be strings or integers")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"invalid id {value!r}: bytes ids must be UTF-8") from None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise DataError(f"invalid id {value!r}: empty after stripping whitespace")
        return text.encode("utf-8")
    if isinstance(value, numbers.Integral):
        return str(int(value)).encode("ascii")
    if isinstance(value, numbers.Real):
        f = float(value)
        if math.isnan(f) or math.isinf(f):
            raise DataError(f"invalid id {value!r}: missing/non-finite id")
        if not f.is_integer():
            raise DataError(f"invalid id {value!r}: fractional number cannot be a customer id")
        if abs(f) >= 2**53:
            raise DataError(f"invalid id {value!r}: too large to be exact as a float; read the id column as strings")
        return str(int(f)).encode("ascii")
    # pandas.NA / NaT and other missing markers end up here
    raise DataError(f"invalid id {value!r} of type {type(value).__name__}: ids must be strings or integers")


def _is_low_order(u: bytes) -> bool:
    return (int.from_bytes(u, "little") & _TOP_BIT_CLEAR) % _P in _LOW_ORDER_U


def hash_to_point(id_bytes: bytes) -> bytes:
    """Map normalized id bytes to a 32-byte X25519 u-coordinate that is never low-order."""
    for counter in range(256):
        u = hashlib.sha256(DOMAIN + bytes(id_bytes) + counter.to_bytes(4, "big")).digest()
        if not _is_low_order(u):
            return u
    raise AssertionError("unreachable: 256 consecutive SHA-256 outputs were low-order points")  # pragma: no cover


def hash_ids(values: Iterable[object]) -> list[bytes]:
    """``hash_to_point(normalize_id(v))`` for each value."""
    return [hash_to_point(normalize_id(v)) for v in values]


#: prefix of :meth:`PsiKey.serialize` (a version, so a future format is never misread as this one)
KEY_MAGIC = b"fedcredit/psi-key/v1\x00"
_FP_DOMAIN = b"fedcredit/psi-key-fingerprint/v1\x00"


class PsiKey:
    """A party's secret blinding scalar for one PSI run (never reused across runs, never sent to a peer).

    It is serialized only for the party's own checkpoint of a run in progress (owner-only,
    in its own state directory, deleted with the run's checkpoints): see docs/resume.md.
    """

    __slots__ = ("_key",)

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> PsiKey:
        return cls(X25519PrivateKey.generate())

    def export_for_local_helper(self) -> bytes:
        """The raw scalar, only for this party's own compute workers (over the pool's pipe: :func:`worker_key`).

        It must never be written to disk or sent across the party's boundary.
        """
        from cryptography.hazmat.primitives import serialization

        return self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    @classmethod
    def import_from_parent(cls, raw: bytes) -> PsiKey:
        """Inverse of :meth:`export_for_local_helper`, in the party's own compute worker."""
        if len(raw) != 32:
            raise SecurityError(f"PSI helper received a {len(raw)}-byte scalar, expected 32")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def serialize(self) -> bytes:
        """The scalar for this party's own PSI checkpoint: :data:`KEY_MAGIC` + 32 raw bytes.

        Only the owner may hold it: a peer that learned it could test guessed ids against the
        singly-blinded values this party sent it (a dictionary attack on this party's set).
        """
        return KEY_MAGIC + self.export_for_local_helper()

    @classmethod
    def load(cls, raw: bytes, *, what: str = "PSI key") -> PsiKey:
        """Inverse of :meth:`serialize`; SecurityError naming ``what`` if it is not one."""
        raw = bytes(raw)
        if not raw.startswith(KEY_MAGIC) or len(raw) != len(KEY_MAGIC) + 32:
            raise SecurityError(f"{what} is not a serialized PSI key ({len(raw)} bytes; expected the "
                                f"{KEY_MAGIC[:-1].decode()} format, {len(KEY_MAGIC) + 32} bytes)")
        return cls(X25519PrivateKey.from_private_bytes(raw[len(KEY_MAGIC):]))

    def fingerprint(self) -> str:
        """A public name of this key (SHA-256 of its X25519 public value): tells checkpoints of two keys apart."""
        from cryptography.hazmat.primitives import serialization

        pub = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return hashlib.sha256(_FP_DOMAIN + pub).hexdigest()[:32]

    def blind(self, points: Sequence[bytes]) -> list[bytes]:
        """X25519(k, u) for each 32-byte u; SecurityError on a malicious low-order input."""
        exchange = self._key.exchange
        from_bytes = X25519PublicKey.from_public_bytes
        out: list[bytes] = []
        for i, u in enumerate(points):
            if len(u) != POINT_LEN:
                raise ProtocolError(f"PSI point at index {i} has {len(u)} bytes, expected {POINT_LEN}")
            try:
                out.append(exchange(from_bytes(u)))
            except ValueError:
                raise SecurityError(f"PSI point at index {i} is a low-order point (malformed or malicious peer input)") from None
        return out

    def __repr__(self) -> str:
        return "PsiKey(<secret>)"


# --------------------------------------------------------------------------- work items for a party's compute workers

#: first byte of a work item: hash each packed id to a point and blind it / blind 32-byte points
OP_HASH_BLIND, OP_BLIND = 1, 2


def pack_ids(ids: Sequence[bytes]) -> bytes:
    """``count`` (u32) + each id's length (u32) + the ids: a batch of ids as one buffer for a worker."""
    return struct.pack(f"<I{len(ids)}I", len(ids), *map(len, ids)) + b"".join(ids)


def unpack_ids(buf: bytes) -> list[bytes]:
    """Inverse of :func:`pack_ids`; ProtocolError if the buffer does not hold what its header says."""
    (n,) = struct.unpack_from("<I", buf, 0)
    if 4 + 4 * n > len(buf):
        raise ProtocolError(f"PSI id batch header announces {n} ids in {len(buf)} bytes")
    lens = struct.unpack_from(f"<{n}I", buf, 4)
    out, at = [], 4 + 4 * n
    for ln in lens:
        out.append(buf[at : at + ln])
        at += ln
    if at != len(buf):
        raise ProtocolError(f"PSI id batch holds {len(buf)} bytes, its header accounts for {at}")
    return out


def worker_key(raw: bytes) -> PsiKey:
    """A compute worker's copy of the party's scalar (the session's ``init``; it arrives over the pool's pipe)."""
    return PsiKey.import_from_parent(raw)


def blind_task(key: PsiKey, item: bytes) -> bytes:
    """One work item: ``OP_HASH_BLIND`` + packed ids -> their blinded points (32 bytes each), or
    ``OP_BLIND`` + ``keep`` byte + 32-byte points -> each blinded again, cut to its first ``keep`` bytes.

    Here, in ``crypto``, so a worker process imports only this module (no pandas, no protocol code).
    """
    if item[0] == OP_HASH_BLIND:
        return b"".join(key.blind([hash_to_point(i) for i in unpack_ids(item[1:])]))
    if item[0] != OP_BLIND or len(item) < 2:
        raise ProtocolError(f"unknown PSI work item {item[:1]!r}")
    keep, buf = item[1], item[2:]
    out = key.blind([buf[o : o + POINT_LEN] for o in range(0, len(buf), POINT_LEN)])
    return b"".join(out) if keep == POINT_LEN else b"".join(p[:keep] for p in out)


if __name__ == "__main__":  # pragma: no cover - benchmark
    import time

    ids = [f"cust-{i}" for i in range(20000)]
    t = time.perf_counter()
    pts = hash_ids(ids)
    t_hash = time.perf_counter() - t
    k = PsiKey.generate()
    t = time.perf_counter()
    k.blind(pts)
    t_blind = time.perf_counter() - t
    print(f"hash {len(ids) / t_hash:,.0f} ids/s; blind {len(ids) / t_blind:,.0f} points/s (one core)")
