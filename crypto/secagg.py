"""Secure aggregation (SecAgg-style masking) of integer vectors that travel inside CKKS ciphertexts.

Why: in a horizontal run every bank holds the same CKKS secret key and the coordinator
holds every bank's own ciphertext, so the coordinator plus any one bank could decrypt
every other bank's update.  Masking inside the ciphertexts removes that: a bank encrypts
``(x + self_mask + Σ_v ±pairwise_mask_uv) mod M``; the pairwise masks cancel in the sum,
the self-masks are removed by the coordinator from reconstructed seeds, so a decryption of
one bank's ciphertext (by a colluding bank) shows uniform noise mod ``M``.

Construction (Bonawitz et al., CCS 2017, semi-honest server; one instance per *tag*, i.e.
per aggregated vector of a run):

* each bank draws, per tag, an X25519 mask key ``s_u`` and a 32-byte self-mask seed ``b_u``,
  and Shamir-shares both ``t``-of-``n`` among the banks (:func:`share`, pycryptodome's
  GF(2^128) Shamir over two 16-byte halves);
* pairwise seed ``HKDF(X25519(s_u, s_v), info=context)``; masks are ChaCha20 keystreams
  reduced mod ``M = 2**modulus_bits`` (a power of two, so the reduction is exactly uniform);
* a bank that sent its masked vector and survives has ``b_u`` reconstructed; a bank that
  dropped before sending has ``s_u`` reconstructed (its pairwise masks with the survivors
  are then known).  Never both for one (bank, tag): the caller keeps that rule
  (:class:`RevealLog` in the protocol's state).

Every key is per tag, so revealing a dropped bank's mask key of one tag says nothing about
its ciphertexts of other tags.  Values are centred mod ``M`` (``[-M/2, M/2)``) so a CKKS sum
of ``n`` of them stays within ``n·M/2`` (:func:`plan` checks that fits the CKKS slot).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedcredit.errors import ConfigError, ProtocolError, SecurityError

SECRET_BYTES = 32
SHARE_BYTES = 1 + SECRET_BYTES  # index byte + two 16-byte GF(2^128) shares
_LABEL = b"fedcredit-secagg/1"
_MAX_PARTIES = 255  # share indices are one byte


@dataclass(frozen=True)
class Plan:
    """How values are cut and masked: limbs of ``limb_bits`` summed mod ``2**modulus_bits``.

    ``modulus_bits`` leaves room for the sum of ``n_parties`` limbs (no wrap-around, so the
    sum mod M is the true sum) and ``(n_parties + 1)·M/2`` fits the CKKS slot's exact range."""

    n_parties: int
    limb_bits: int
    modulus_bits: int

    @property
    def modulus(self) -> int:
        return 1 << self.modulus_bits


def plan(n_parties: int, slot_bits: int, max_limb_bits: int = 24) -> Plan:
    """The widest limbs (≤ ``max_limb_bits``) whose masked sums over ``n_parties`` fit ``slot_bits``.

    ``slot_bits``: the CKKS slot holds integers of magnitude < 2**slot_bits exactly (after
    rounding).  A ConfigError names the numbers when no limb width of at least 8 bits fits."""
    if not 1 <= n_parties <= _MAX_PARTIES:
        raise ConfigError(f"secure aggregation supports 1..{_MAX_PARTIES} parties, got {n_parties}")
    grow = max(1, math.ceil(math.log2(n_parties))) if n_parties > 1 else 1
    for b in range(max_limb_bits, 7, -1):
        m = b + 1 + grow  # |Σ limbs| < n·2^b <= M/2
        if (n_parties + 1) * 2 ** (m - 1) < 2**slot_bits:  # masked values + the coordinator's correction
            return Plan(n_parties, b, m)
    raise ConfigError(
        f"secure aggregation of {n_parties} parties needs CKKS slots of more than {slot_bits} exact bits: "
        "raise ckks_coeff_mod_bit_sizes (data primes) or lower ckks_scale_bits")


# --------------------------------------------------------------------------- keys and shares


@dataclass(frozen=True)
class TagSecrets:
    """One bank's secrets for one aggregation: its X25519 mask key and its self-mask seed."""

    mask_key: bytes  # raw X25519 private key
    self_seed: bytes

    @property
    def public(self) -> bytes:
        return public_key(self.mask_key)


def new_tag_secrets() -> TagSecrets:
    k = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return TagSecrets(mask_key=k, self_seed=secrets.token_bytes(SECRET_BYTES))


def public_key(mask_key: bytes) -> bytes:
    priv = X25519PrivateKey.from_private_bytes(mask_key)
    return priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def share(secret: bytes, threshold: int, n: int) -> list[bytes]:
    """``n`` Shamir shares of a 32-byte secret, any ``threshold`` of which rebuild it (index ``i+1`` first byte)."""
    if len(secret) != SECRET_BYTES:
        raise ConfigError(f"secure aggregation shares {SECRET_BYTES}-byte secrets, got {len(secret)} bytes")
    if not 1 <= threshold <= n <= _MAX_PARTIES:
        raise ConfigError(f"Shamir threshold must be 1..n (n={n} <= {_MAX_PARTIES}), got {threshold}")
    if threshold == 1:  # a degree-0 polynomial: every share is the secret (pycryptodome wants k >= 2)
        return [bytes([i + 1]) + secret for i in range(n)]
    lo, hi = Shamir.split(threshold, n, secret[:16], False), Shamir.split(threshold, n, secret[16:], False)
    return [bytes([i]) + a + b for (i, a), (j, b) in zip(lo, hi) if i == j]


def combine(shares: Sequence[bytes], threshold: int, what: str) -> bytes:
    """The secret from at least ``threshold`` distinct shares; fewer is a SecurityError naming ``what``.

    (With fewer than ``threshold`` shares Shamir gives a value independent of the secret, so
    refusing is about clear errors, not secrecy.)"""
    by_idx: dict[int, bytes] = {}
    for s in shares:
        if len(s) != SHARE_BYTES or s[0] == 0:
            raise ProtocolError(f"{what}: a share has {len(s)} bytes / index {s[:1].hex()}; expected {SHARE_BYTES}")
        if by_idx.setdefault(s[0], s) != s:
            raise SecurityError(f"{what}: two different shares claim index {s[0]}")
    if len(by_idx) < threshold:
        raise SecurityError(f"{what}: {len(by_idx)} share(s), {threshold} needed")
    use = [by_idx[i] for i in sorted(by_idx)[:threshold]]
    if threshold == 1:
        return use[0][1:]
    lo = Shamir.combine([(s[0], s[1:17]) for s in use], False)
    hi = Shamir.combine([(s[0], s[17:]) for s in use], False)
    return lo + hi


def combine_unchecked(shares: Sequence[bytes]) -> bytes:
    """Shamir interpolation of whatever shares are given (an attacker's view: below the threshold it is noise)."""
    lo = Shamir.combine([(s[0], s[1:17]) for s in shares], False)
    hi = Shamir.combine([(s[0], s[17:]) for s in shares], False)
    return lo + hi


# --------------------------------------------------------------------------- masks


def _hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL + info).derive(key)


def pair_seed(my_mask_key: bytes, peer_public: bytes, context: bytes) -> bytes:
    """The seed both ends of a pair derive (X25519 + HKDF over ``context``, e.g. run/tag/pair names)."""
    try:
        shared = X25519PrivateKey.from_private_bytes(my_mask_key).exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as e:  # low-order point or malformed key
        raise SecurityError(f"secure aggregation: bad peer mask key ({e})") from None
    return _hkdf(shared, b"pair/" + context)


def expand(seed: bytes, n: int, p: Plan) -> np.ndarray:
    """``n`` uniform integers in ``[0, M)`` from a seed (ChaCha20 keystream, 8 bytes per value)."""
    key = _hkdf(seed, b"expand")
    enc = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor()
    raw = np.frombuffer(enc.update(b"\x00" * (8 * n)), dtype="<u8")
    return (raw & np.uint64(p.modulus - 1)).astype(np.int64)


def _centre(v: np.ndarray, p: Plan) -> np.ndarray:
    M = p.modulus
    v = np.mod(v, M)
    return np.where(v >= M // 2, v - M, v)


def _pair_sign(me: str, other: str) -> int:
    return 1 if me < other else -1


def mask(
    limbs: np.ndarray, me: str, keys: TagSecrets, peers: Mapping[str, bytes], p: Plan, context: bytes,
    *, self_mask: bool,
) -> np.ndarray:
    """``limbs`` (integers, |limb| < 2**limb_bits) masked and centred mod M, as float64 ready for CKKS.

    ``peers``: the other banks of this aggregation -> their mask public keys for this tag."""
    x = np.asarray(limbs)
    if not np.all(np.abs(x) < 2**p.limb_bits) or not np.all(x == np.rint(x)):
        raise ProtocolError(f"party '{me}': secure aggregation got values that are not {p.limb_bits}-bit limbs")
    acc = x.astype(np.int64)
    n = acc.shape[0]
    if self_mask:
        acc = acc + expand(_hkdf(keys.self_seed, b"self/" + context), n, p)
    for v, pub in sorted(peers.items()):
        if v == me:
            continue
        m = expand(pair_seed(keys.mask_key, pub, context + b"/" + _pair_name(me, v)), n, p)
        acc = np.mod(acc + _pair_sign(me, v) * m, p.modulus)
    return _centre(acc, p).astype(np.float64)


def _pair_name(a: str, b: str) -> bytes:
    lo, hi = sorted((a, b))
    return f"{lo}|{hi}".encode()


def correction(
    n: int, p: Plan, context: bytes, *, self_seeds: Mapping[str, bytes], dropped_keys: Mapping[str, bytes],
    publics: Mapping[str, bytes],
) -> np.ndarray:
    """What the coordinator adds (in plaintext, homomorphically) to the sum of the survivors' ciphertexts.

    ``self_seeds``: survivor -> its reconstructed self-mask seed (a survivor without
    self-mask is absent); ``dropped_keys``: dropped bank -> its reconstructed mask key;
    ``publics``: survivor -> its mask public key.  Removes the survivors' self-masks and
    their pairwise masks with the dropped banks; centred mod M."""
    acc = np.zeros(n, dtype=np.int64)
    for seed in self_seeds.values():
        acc = np.mod(acc - expand(_hkdf(seed, b"self/" + context), n, p), p.modulus)
    for d, key in dropped_keys.items():
        for u, pub in publics.items():
            if u == d:
                continue
            m = expand(pair_seed(key, pub, context + b"/" + _pair_name(u, d)), n, p)
            acc = np.mod(acc - _pair_sign(u, d) * m, p.modulus)  # u added sign(u,d)·m; nobody cancels it
    return _centre(acc, p).astype(np.float64)


def unmask(values: np.ndarray, p: Plan, what: str, tolerance: float = 0.25) -> np.ndarray:
    """Decrypted (summed, corrected) slots -> the integer sums, reduced mod M into ``[-M/2, M/2)``.

    A slot farther than ``tolerance`` from an integer is no honest masked sum (CKKS noise is
    ~1e-2 here): a ProtocolError naming ``what``."""
    r = np.rint(np.asarray(values, dtype=np.float64))
    if np.any(np.abs(values - r) > tolerance):
        i = int(np.argmax(np.abs(values - r)))
        raise ProtocolError(f"{what}: slot {i} ({values[i]:.4f}) is not an integer; the sum is corrupt")
    return _centre(r.astype(np.int64), p)


def _bench() -> None:
    """``python -m crypto.secagg``: time masking, corrections and sharing (docs/horizontal.md, section 4a)."""
    import time

    for n_banks, n in [(3, 150), (3, 2502), (100, 2502)]:
        p = plan(n_banks, 38)
        ks = {f"b{i:03d}": new_tag_secrets() for i in range(n_banks)}
        pubs = {u: k.public for u, k in ks.items()}
        x = np.zeros(n, dtype=np.int64)
        t = time.perf_counter()
        mask(x, "b000", ks["b000"], pubs, p, b"c", self_mask=True)
        tm = time.perf_counter() - t
        t = time.perf_counter()
        correction(n, p, b"c", self_seeds={u: k.self_seed for u, k in ks.items()}, dropped_keys={}, publics=pubs)
        tc = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(20):
            share(ks["b000"].self_seed, (n_banks + 1) // 2, n_banks)
        ts = time.perf_counter() - t
        print(f"{n_banks} banks, {n} slots: mask {tm * 1e3:.1f} ms/bank, coordinator correction (all self-masks) "
              f"{tc * 1e3:.1f} ms, Shamir-sharing 20 seeds {ts * 1e3:.1f} ms")


if __name__ == "__main__":
    _bench()
