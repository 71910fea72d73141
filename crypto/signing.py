"""Ed25519 signatures for model artifacts and manifests.

A party installs a model only if its manifest verifies against the federation's
signing key (``federation-signing.pub`` from :func:`crypto.certs.init_ca`).

Manifests are signed over *canonical JSON*: ``json.dumps(obj, sort_keys=True,
separators=(",", ":"), ensure_ascii=False, allow_nan=False)`` encoded as UTF-8.
Key order and whitespace therefore do not matter, NaN/Infinity are rejected (they
have no portable JSON form), and floats round-trip through Python's repr.

Signed-manifest layout (the signature travels *inside* the manifest file)::

    {...manifest fields...,
     "signature": {"alg": "ed25519", "key_id": "<16 hex>", "value": "<base64>"}}

``verify_manifest`` strips ``signature``, re-canonicalizes the rest and verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from crypto.files import read_file, read_secret
from fedcredit.errors import ConfigError, SecurityError

SIGNATURE_FIELD = "signature"
ALG = "ed25519"


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes of ``obj`` (sorted keys, no spaces, UTF-8, no NaN)."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
            "utf-8"
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"manifest is not canonical-JSON serializable: {exc}") from None


def key_id(public: Ed25519PublicKey) -> str:
    """Short fingerprint of a signing key (first 8 bytes of SHA-256 of the raw key, hex)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(data: bytes, key: Ed25519PrivateKey) -> bytes:
    """64-byte Ed25519 signature over ``data``."""
    return key.sign(bytes(data))


def verify(data: bytes, signature: bytes, public: Ed25519PublicKey) -> None:
    """Raise SecurityError unless ``signature`` is ``public``'s signature over ``data``."""
    try:
        public.verify(bytes(signature), bytes(data))
    except InvalidSignature:
        raise SecurityError(
            f"Ed25519 signature does not verify under signing key {key_id(public)} (data or signature altered, or wrong key)"
        ) from None


def load_private(path: Path) -> Ed25519PrivateKey:
    """Load a PEM Ed25519 private key; ConfigError names the file if missing or of another type."""
    path = Path(path)
    pem = read_secret(path, "Ed25519 signing private key")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load Ed25519 private key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, expected an Ed25519 private key")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    """Load a PEM (SubjectPublicKeyInfo) Ed25519 public key."""
    path = Path(path)
    pem = read_file(path, "Ed25519 signing public key")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load Ed25519 public key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, expected an Ed25519 public key")
    return key


def sign_manifest(manifest: dict, key: Ed25519PrivateKey) -> dict:
    """Return a copy of ``manifest`` with a ``signature`` field over its canonical JSON."""
    if not isinstance(manifest, dict):
        raise ConfigError(f"manifest must be a JSON object (dict), got {type(manifest).__name__}")
    if SIGNATURE_FIELD in manifest:
        raise ConfigError(f"manifest already has a {SIGNATURE_FIELD!r} field; sign the unsigned manifest")
    sig = sign(canonical_json(manifest), key)
    signed = dict(manifest)
    signed[SIGNATURE_FIELD] = {
        "alg": ALG,
        "key_id": key_id(key.public_key()),
        "value": base64.b64encode(sig).decode("ascii"),
    }
    return signed


def verify_manifest(signed: dict, public: Ed25519PublicKey) -> dict:
    """Verify a manifest from :func:`sign_manifest`; return it without the signature field."""
    if not isinstance(signed, dict) or not isinstance(signed.get(SIGNATURE_FIELD), dict):
        raise SecurityError(f"manifest is not signed: no {SIGNATURE_FIELD!r} object")
    sig_obj = signed[SIGNATURE_FIELD]
    if sig_obj.get("alg") != ALG:
        raise SecurityError(f"manifest signature algorithm {sig_obj.get('alg')!r} is not {ALG!r}")
    if sig_obj.get("key_id") != key_id(public):
        raise SecurityError(
            f"manifest was signed by key {sig_obj.get('key_id')!r}, not the federation key {key_id(public)}"
        )
    try:
        sig = base64.b64decode(str(sig_obj.get("value", "")), validate=True)
    except (binascii.Error, ValueError):
        raise SecurityError("manifest signature value is not valid base64") from None
    manifest = {k: v for k, v in signed.items() if k != SIGNATURE_FIELD}
    verify(canonical_json(manifest), sig, public)
    return manifest


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, streamed (for listing artifact files in a manifest)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
