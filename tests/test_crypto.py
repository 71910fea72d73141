"""Tests for crypto/: CA + credentials, sealed envelopes, signing, gRPC mTLS, CKKS blobs, PSI."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import socket
import ssl
import stat
import struct
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crypto import ckks, ckks_hist, envelope, psi, signing, tls
from crypto.certs import ENVELOPE_KEY_OID, Identity, PeerInfo, init_ca, issue, verify_peer
from fedcredit.errors import ConfigError, DataError, ProtocolError, SecurityError

UTC = dt.UTC


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One federation CA with a coordinator and two parties, plus a foreign CA and its party."""
    root = tmp_path_factory.mktemp("pki")
    ca = init_ca(root / "ca", "demo-fed")
    foreign_ca = init_ca(root / "foreign-ca", "evil-fed")
    return {
        "root": root,
        "ca": ca,
        "coord": issue(ca, root / "coordinator", "coordinator", role="coordinator"),
        "bank": issue(ca, root / "bank", "bank-a"),
        "fintech": issue(ca, root / "fintech", "fintech"),
        "foreign": issue(foreign_ca, root / "foreign", "bank-a"),
        "foreign_ca": foreign_ca,
    }


@pytest.fixture(scope="module")
def secret_ctx():
    return ckks.new_context()


@pytest.fixture(scope="module")
def public_ctx(secret_ctx):
    return ckks.load_public(ckks.public_bytes(secret_ctx))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- certs


def test_init_ca_writes_keys_private_and_refuses_overwrite(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca", "fed")
    assert ca == tmp_path / "ca"
    assert _mode(ca / "ca.key") == 0o600
    assert _mode(ca / "federation-signing.key") == 0o600
    cert = x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(signing.load_public(ca / "federation-signing.pub"), ed25519.Ed25519PublicKey)

    before = {p.name: p.read_bytes() for p in ca.iterdir()}
    with pytest.raises(ConfigError, match=r"ca\.crt|ca\.key|federation-signing"):
        init_ca(ca, "fed")
    assert {p.name: p.read_bytes() for p in ca.iterdir()} == before  # nothing touched

    # a single pre-existing file is enough to refuse, and the error names it
    (tmp_path / "ca2").mkdir()
    (tmp_path / "ca2" / "federation-signing.pub").write_bytes(b"keep me")
    with pytest.raises(ConfigError, match="federation-signing.pub"):
        init_ca(tmp_path / "ca2", "fed")
    assert not (tmp_path / "ca2" / "ca.key").exists()

    init_ca(ca, "fed", force=True)
    assert (ca / "ca.key").read_bytes() != before["ca.key"]


def test_issue_writes_credentials_with_expected_contents(pki: dict) -> None:
    ident: Identity = pki["bank"]
    d = ident.dir
    for path in (ident.key_path, d / "bank-a.envelope.key", ident.flower_key_path):
        assert _mode(path) == 0o600, path
    assert ident.cert_path.read_bytes() == ident.cert_pem
    assert ident.ca_path.read_bytes() == (pki["ca"] / "ca.crt").read_bytes()
    assert not (d / "ca.key").exists()

    cert = x509.load_pem_x509_certificate(ident.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bank-a"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "party"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ext = cert.extensions.get_extension_for_oid(ENVELOPE_KEY_OID)
    assert not ext.critical
    raw = ident.envelope_public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert ext.value.value == b"\x04\x20" + raw
    key = serialization.load_pem_private_key(ident.key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == cert.public_key()
    assert "PRIVATE" not in repr(ident)


def test_issue_custom_hosts_and_role(pki: dict, tmp_path: Path) -> None:
    ident = issue(pki["ca"], tmp_path, "op1", role="operator", hosts=["10.0.0.5", "bank.example", "::1"])
    san = x509.load_pem_x509_certificate(ident.cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert san.get_values_for_type(x509.DNSName) == ["bank.example"]
    assert sorted(str(ip) for ip in san.get_values_for_type(x509.IPAddress)) == ["10.0.0.5", "::1"]
    assert verify_peer(ident.cert_pem, ident.ca_pem).role == "operator"


def test_flower_keys_load_with_flowers_own_loaders(pki: dict) -> None:
    """The SuperNode key files are parsed by the exact flwr 1.41 code paths that consume them."""
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    ident: Identity = pki["bank"]
    pair = _try_setup_client_authentication(
        argparse.Namespace(auth_supernode_private_key=str(ident.flower_key_path), auth_supernode_public_key=None)
    )
    assert pair is not None
    private, public = pair
    registered_pem = try_load_public_key(ident.flower_pub_path)  # what `flwr supernode register` sends
    assert serialization.load_pem_public_key(registered_pem) == public
    assert isinstance(private.curve, ec.SECP384R1)


def test_issue_validates_name_role_and_refuses_overwrite(pki: dict, tmp_path: Path) -> None:
    for bad in ("Bank", "-bank", "bank a", "", "a" * 64, "../x"):
        with pytest.raises(ConfigError, match="invalid identity name"):
            issue(pki["ca"], tmp_path, bad)
    with pytest.raises(ConfigError, match="invalid role 'admin'"):
        issue(pki["ca"], tmp_path, "bank-b", role="admin")
    with pytest.raises(ConfigError, match=r"missing federation CA certificate file .*nowhere/ca\.crt"):
        issue(tmp_path / "nowhere", tmp_path, "bank-b")

    first = issue(pki["ca"], tmp_path, "bank-b")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError, match=r"bank-b\.(crt|key|envelope\.key|flower\.key|flower\.pub)"):
        issue(pki["ca"], tmp_path, "bank-b")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    # a second identity may share the directory (identical ca.crt is not an overwrite)
    issue(pki["ca"], tmp_path, "bank-c")
    # ... but a different ca.crt there is refused
    with pytest.raises(ConfigError, match=r"ca\.crt"):
        issue(pki["foreign_ca"], tmp_path, "bank-d")
    assert not (tmp_path / "bank-d.key").exists()

    second = issue(pki["ca"], tmp_path, "bank-b", force=True)
    assert second.key_pem != first.key_pem
    assert Identity.load(tmp_path, "bank-b").cert_pem == second.cert_pem


def test_identity_load_roundtrip_and_missing_files(pki: dict, tmp_path: Path) -> None:
    ident: Identity = pki["fintech"]
    loaded = Identity.load(ident.dir, "fintech")
    assert (loaded.name, loaded.role, loaded.cert_pem, loaded.key_pem, loaded.ca_pem) == (
        "fintech",
        "party",
        ident.cert_pem,
        ident.key_pem,
        ident.ca_pem,
    )
    assert loaded.envelope_public == ident.envelope_public

    issue(pki["ca"], tmp_path, "p1")
    (tmp_path / "p1.envelope.key").unlink()
    with pytest.raises(ConfigError, match=r"missing envelope private key .*p1\.envelope\.key"):
        Identity.load(tmp_path, "p1")
    with pytest.raises(ConfigError, match=r"p2\.crt"):
        Identity.load(tmp_path, "p2")

    # a key from another identity in place of ours is caught at load time, not in a TLS handshake
    issue(pki["ca"], tmp_path, "p3")
    issue(pki["ca"], tmp_path, "p4")
    (tmp_path / "p3.key").write_bytes((tmp_path / "p4.key").read_bytes())
    with pytest.raises(ConfigError, match=r"p3\.key does not match"):
        Identity.load(tmp_path, "p3")


def test_verify_peer_accepts_federation_cert(pki: dict) -> None:
    info = verify_peer(pki["bank"].cert_pem, pki["coord"].ca_pem, expected_name="bank-a")
    assert isinstance(info, PeerInfo)
    assert (info.name, info.role) == ("bank-a", "party")
    assert info.envelope_public == pki["bank"].envelope_public
    assert info.not_after > dt.datetime.now(UTC) + dt.timedelta(days=800)
    assert verify_peer(pki["coord"].cert_pem, pki["bank"].ca_pem).role == "coordinator"


def test_verify_peer_rejects_foreign_ca(pki: dict) -> None:
    with pytest.raises(SecurityError, match="certificate for bank-a was not issued by federation CA"):
        verify_peer(pki["foreign"].cert_pem, pki["bank"].ca_pem)


def test_verify_peer_rejects_forged_issuer_name(pki: dict) -> None:
    """A cert claiming our CA's name but signed by another key fails the signature check."""
    ca = x509.load_pem_x509_certificate(pki["bank"].ca_pem)
    leaf = x509.load_pem_x509_certificate(pki["bank"].cert_pem)
    evil = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(ca.subject)
        .public_key(leaf.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(leaf.not_valid_after_utc)
    )
    for ext in leaf.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    forged = builder.sign(evil, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(SecurityError, match="not issued by federation CA .*signature"):
        verify_peer(forged, pki["bank"].ca_pem)


def test_verify_peer_rejects_expired_and_not_yet_valid(pki: dict, tmp_path: Path) -> None:
    short = issue(pki["ca"], tmp_path, "short-lived", days=1)
    now = dt.datetime.now(UTC)
    verify_peer(short.cert_pem, short.ca_pem, now=now)
    with pytest.raises(SecurityError, match="certificate for short-lived expired on"):
        verify_peer(short.cert_pem, short.ca_pem, now=now + dt.timedelta(days=2))
    with pytest.raises(SecurityError, match="not valid yet"):
        verify_peer(short.cert_pem, short.ca_pem, now=now - dt.timedelta(days=1))
    # the CA's own expiry also counts (default CA lifetime 3650 days)
    with pytest.raises(SecurityError, match="federation CA expired"):
        verify_peer(pki["bank"].cert_pem, pki["bank"].ca_pem, now=now + dt.timedelta(days=4000))


def test_verify_peer_rejects_wrong_name_and_garbage(pki: dict) -> None:
    with pytest.raises(SecurityError, match="certificate is for 'bank-a' but peer 'fintech' was expected"):
        verify_peer(pki["bank"].cert_pem, pki["bank"].ca_pem, expected_name="fintech")
    with pytest.raises(SecurityError, match="not a valid PEM"):
        verify_peer(b"not a cert", pki["bank"].ca_pem)
    with pytest.raises(SecurityError, match="is a CA certificate"):
        verify_peer(pki["bank"].ca_pem, pki["bank"].ca_pem)


# ---------------------------------------------------------------- envelope


def test_envelope_roundtrip_between_certified_parties(pki: dict) -> None:
    bank, fintech = pki["bank"], pki["fintech"]
    fintech_pub = verify_peer(fintech.cert_pem, bank.ca_pem, "fintech").envelope_public
    bank_pub = verify_peer(bank.cert_pem, fintech.ca_pem, "bank-a").envelope_public
    msg = b"residuals for round 3"
    blob = envelope.seal(msg, fintech_pub, bank.envelope_private, aad=b"job1/r3")
    assert msg not in blob
    assert blob[0] == envelope.VERSION
    assert len(blob) == len(msg) + envelope.OVERHEAD
    assert envelope.open_sealed(blob, fintech.envelope_private, bank_pub, aad=b"job1/r3") == msg
    # fresh ephemeral key per message: same plaintext, different ciphertext
    assert envelope.seal(msg, fintech_pub, bank.envelope_private, aad=b"job1/r3") != blob
    assert envelope.open_sealed(envelope.seal(b"", fintech_pub, bank.envelope_private), fintech.envelope_private, bank_pub) == b""


def test_envelope_rejects_wrong_keys_tamper_and_aad() -> None:
    alice, bob, eve = (X25519PrivateKey.generate() for _ in range(3))
    blob = envelope.seal(b"secret gradient", bob.public_key(), alice, aad=b"tag")
    opener = lambda b=blob, r=bob, s=alice.public_key(), a=b"tag": envelope.open_sealed(b, r, s, a)  # noqa: E731
    assert opener() == b"secret gradient"
    with pytest.raises(SecurityError):
        opener(r=eve)  # wrong recipient key
    with pytest.raises(SecurityError):
        opener(s=eve.public_key())  # wrong claimed sender
    with pytest.raises(SecurityError):
        opener(a=b"other-tag")  # wrong aad
    for i in range(len(blob)):  # every single byte is authenticated
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(SecurityError):
            opener(b=bytes(tampered))
    with pytest.raises(SecurityError, match="truncated"):
        opener(b=blob[:20])
    # the relay (knowing both public keys but no private key) cannot forge a message from alice
    forged = envelope.seal(b"evil", bob.public_key(), eve, aad=b"tag")
    with pytest.raises(SecurityError):
        opener(b=forged)
    # low-order ephemeral key in a crafted blob
    with pytest.raises(SecurityError):
        opener(b=bytes([envelope.VERSION]) + bytes(32) + blob[33:])


def test_envelope_seal_2mb_is_fast() -> None:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    payload = os.urandom(2 * 1024 * 1024)
    t = time.perf_counter()
    for _ in range(10):
        blob = envelope.seal(payload, b.public_key(), a)
    per_seal = (time.perf_counter() - t) / 10
    assert envelope.open_sealed(blob, b, a.public_key()) == payload
    assert per_seal < 0.05, f"sealing 2 MiB took {per_seal * 1e3:.1f} ms"


# ---------------------------------------------------------------- signing


def test_sign_verify_bytes(pki: dict) -> None:
    key = signing.load_private(pki["ca"] / "federation-signing.key")
    pub = signing.load_public(pki["ca"] / "federation-signing.pub")
    sig = signing.sign(b"model bytes", key)
    assert len(sig) == 64
    signing.verify(b"model bytes", sig, pub)
    with pytest.raises(SecurityError, match="does not verify"):
        signing.verify(b"model bytez", sig, pub)
    with pytest.raises(SecurityError):
        signing.verify(b"model bytes", sig, ed25519.Ed25519PrivateKey.generate().public_key())


def test_manifest_signature_and_tamper(pki: dict) -> None:
    key = signing.load_private(pki["ca"] / "federation-signing.key")
    pub = key.public_key()
    manifest = {"model": "vertical-lr", "version": 3, "files": {"weights.npz": "ab" * 32}, "auc": 0.73}
    signed = signing.sign_manifest(manifest, key)
    assert "signature" not in manifest  # input not mutated
    assert signing.verify_manifest(signed, pub) == manifest
    # key order / whitespace do not matter: canonical JSON
    reordered = dict(reversed(list(signed.items())))
    assert signing.verify_manifest(reordered, pub) == manifest
    assert signing.canonical_json({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'

    tampered = dict(signed, auc=0.99)
    with pytest.raises(SecurityError, match="does not verify"):
        signing.verify_manifest(tampered, pub)
    tampered_files = dict(signed, files={"weights.npz": "cd" * 32})
    with pytest.raises(SecurityError):
        signing.verify_manifest(tampered_files, pub)
    other = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(SecurityError, match="signed by key"):
        signing.verify_manifest(signing.sign_manifest(manifest, other), pub)
    with pytest.raises(SecurityError, match="not signed"):
        signing.verify_manifest(manifest, pub)
    with pytest.raises(ConfigError, match="canonical-JSON"):
        signing.sign_manifest({"auc": float("nan")}, key)


def test_signing_key_loading_errors(pki: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing Ed25519 signing private key file .*nope\.key"):
        signing.load_private(tmp_path / "nope.key")
    with pytest.raises(ConfigError, match="expected an Ed25519 private key"):
        signing.load_private(pki["bank"].key_path)  # an ECDSA TLS key
    (tmp_path / "garbage.pub").write_bytes(b"-----BEGIN PUBLIC KEY-----\nxx\n")
    with pytest.raises(ConfigError, match="garbage.pub"):
        signing.load_public(tmp_path / "garbage.pub")
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    assert signing.file_sha256(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# ---------------------------------------------------------------- TLS


class _EchoServer:
    """A real gRPC server on 127.0.0.1:0 with mTLS and one raw-bytes method."""

    def __init__(self, identity: Identity) -> None:
        self.callers: list[tuple[str, str]] = []
        self.tls_versions: list[bytes] = []

        def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.tls_versions.append(context.auth_context()["ssl_tls_version"][0])
            self.callers.append(tls.peer_identity(context, ca_pem=identity.ca_pem))
            return b"echo:" + request

        handler = grpc.method_handlers_generic_handler(
            "fedcredit.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=tls.GRPC_OPTIONS)
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_secure_port("127.0.0.1:0", tls.server_credentials(identity))
        self.server.start()

    def call(self, creds: grpc.ChannelCredentials, payload: bytes = b"hi") -> bytes:
        with grpc.secure_channel(f"127.0.0.1:{self.port}", creds, options=tls.GRPC_OPTIONS) as ch:
            return ch.unary_unary("/fedcredit.test.Echo/Echo")(payload, timeout=10)


@pytest.fixture(scope="module")
def echo_server(pki: dict):
    srv = _EchoServer(pki["coord"])
    yield srv
    srv.server.stop(None)


def test_mtls_federation_client_succeeds_and_server_learns_cn(pki: dict, echo_server: _EchoServer) -> None:
    assert echo_server.call(tls.channel_credentials(pki["bank"]), b"x" * 5_000_000) == b"echo:" + b"x" * 5_000_000
    assert echo_server.callers[-1] == ("bank-a", "party")
    assert echo_server.tls_versions[-1] == b"TLSv1.3"
    with tls.secure_channel(f"localhost:{echo_server.port}", pki["fintech"]) as ch:
        assert ch.unary_unary("/fedcredit.test.Echo/Echo")(b"y", timeout=10) == b"echo:y"
    assert echo_server.callers[-1] == ("fintech", "party")


def test_mtls_refuses_foreign_ca_client(pki: dict, echo_server: _EchoServer) -> None:
    n = len(echo_server.callers)
    # foreign cert, even when the client trusts our CA for the server side
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki["bank"].ca_pem, private_key=pki["foreign"].key_pem, certificate_chain=pki["foreign"].cert_pem
    )
    with pytest.raises(grpc.RpcError) as err:
        echo_server.call(creds)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(echo_server.callers) == n  # the handler never ran


def test_mtls_refuses_client_without_cert(pki: dict, echo_server: _EchoServer) -> None:
    n = len(echo_server.callers)
    with pytest.raises(grpc.RpcError) as err:
        echo_server.call(grpc.ssl_channel_credentials(root_certificates=pki["bank"].ca_pem))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(echo_server.callers) == n


def test_mtls_client_refuses_foreign_server(pki: dict) -> None:
    rogue = _EchoServer(pki["foreign"])  # a server posing with a foreign-CA cert
    try:
        with pytest.raises(grpc.RpcError) as err:
            rogue.call(tls.channel_credentials(pki["bank"]))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert rogue.callers == []
    finally:
        rogue.server.stop(None)


def test_grpc_server_negotiates_tls13(pki: dict, echo_server: _EchoServer, tmp_path: Path) -> None:
    """A standard TLS client sees TLS 1.3 and a federation-issued server certificate."""
    bank = pki["bank"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=bank.ca_pem.decode())
    ctx.load_cert_chain(bank.cert_path, bank.key_path)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as conn:
            assert conn.version() == "TLSv1.3"
            peer = x509.load_der_x509_certificate(conn.getpeercert(binary_form=True))
            assert peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "coordinator"


class _FakeAuthContext:
    """Stands in for a ServicerContext only where a real one cannot be produced from Python:
    gRPC Python clients always negotiate TLS 1.3, so the TLS 1.2 branch needs a synthetic context."""

    def __init__(self, auth: dict) -> None:
        self._auth = auth

    def auth_context(self) -> dict:
        return self._auth

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def test_peer_identity_refuses_missing_cert_and_old_tls(pki: dict) -> None:
    with pytest.raises(SecurityError, match="presented no client certificate"):
        tls.peer_identity(_FakeAuthContext({}))
    auth = {"x509_pem_cert": [pki["bank"].cert_pem], "x509_common_name": [b"bank-a"], "ssl_tls_version": [b"TLSv1.2"]}
    with pytest.raises(SecurityError, match="TLS version TLSv1.2; TLS 1.3 is required"):
        tls.peer_identity(_FakeAuthContext(auth))
    assert tls.peer_identity(_FakeAuthContext(auth), require_tls13=False) == ("bank-a", "party")


# ---------------------------------------------------------------- CKKS


@pytest.mark.parametrize("n", [1, 4096, 4097, 10_000])
def test_ckks_roundtrip_any_length(secret_ctx, public_ctx, n: int) -> None:
    x = np.random.default_rng(n).normal(size=n)
    blob = ckks.encrypt_vector(public_ctx, x)  # encrypting needs only the public context
    assert ckks.is_ckks_blob(blob)
    assert ckks.blob_length(blob) == n
    assert struct.unpack_from("<I", blob, 13)[0] == -(-n // ckks.slot_count(public_ctx))
    out = ckks.decrypt_vector(secret_ctx, blob)
    assert out.shape == (n,)
    assert np.max(np.abs(out - x)) < 1e-3


def test_ckks_public_context_has_no_secret_and_cannot_decrypt(secret_ctx, public_ctx) -> None:
    assert isinstance(secret_ctx, ckks.SecretContext) and isinstance(public_ctx, ckks.PublicContext)
    assert secret_ctx.tenseal_context.has_secret_key()
    assert not public_ctx.tenseal_context.has_secret_key()
    assert ckks.slot_count(public_ctx) == 4096
    blob = ckks.encrypt_vector(public_ctx, np.arange(5.0))
    with pytest.raises(SecurityError, match="public"):
        ckks.decrypt_vector(public_ctx, blob)  # type: ignore[arg-type]
    with pytest.raises(SecurityError):
        ckks.secret_bytes(public_ctx)  # type: ignore[arg-type]
    # public_bytes of a secret context still strips the secret key
    assert not ckks.load_public(ckks.public_bytes(secret_ctx)).tenseal_context.has_secret_key()
    assert secret_ctx.public_bytes() == ckks.public_bytes(secret_ctx) == secret_ctx.public().to_bytes()
    # the secret context, shipped (inside an envelope) to another party, decrypts
    clone = ckks.load_secret(ckks.secret_bytes(secret_ctx))
    assert np.allclose(ckks.decrypt_vector(clone, blob), np.arange(5.0), atol=1e-3)
    # a secret context encrypts too; both kinds of context produce the same blob format
    assert ckks.blob_length(ckks.encrypt_vector(secret_ctx, np.arange(7.0))) == 7


def test_ckks_lr_kernel_gives_masked_column_sums_and_only_the_key_holder_decrypts(secret_ctx, public_ctx) -> None:
    rng = np.random.default_rng(4)
    n, L, d = 5000, 2500, 3
    r = rng.normal(size=n)
    X = rng.normal(size=(n, d))
    cts = ckks.encrypt_chunks(secret_ctx, r, L)
    assert len(cts) == 2
    masks = rng.uniform(-1e6, 1e6, (d, L))
    out = ckks.masked_column_products(public_ctx, cts, X, masks, what="residual")  # public context suffices
    sums = ckks.decrypt_sums(secret_ctx, out, flood=ckks.Flooding(1e-9, sigma_bits=20), what="gradient")
    np.testing.assert_allclose(sums - masks.sum(axis=1), X.T @ r, atol=1e-2)
    with pytest.raises(SecurityError, match="public"):
        ckks.decrypt_sums(public_ctx, out, flood=ckks.Flooding(1e-9), what="gradient")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="residual is invalid"):
        ckks.masked_column_products(public_ctx, [b"junk"], X[:L], masks, what="residual")


def test_ckks_hist_evaluator_handles_masks_that_select_no_row() -> None:
    """One row in the last chunk, and a candidate no row satisfies: SEAL refuses an all-zero product
    ("result ciphertext is transparent"), which once failed a SecureBoost job depending on the PSI order."""
    rng = np.random.default_rng(12)
    n, pack = ckks_hist.SLOTS + 1, 4
    Xb = rng.integers(0, 4, (n, 3)).astype(np.uint8)
    Xb[:, 2] = 3  # candidate 8 = (feature 2, bin <= 2) selects nothing: output 2 has only zero masks
    cand_f, cand_b = np.repeat(np.arange(3), 3), np.tile(np.arange(3), 3)
    keeper = ckks_hist.HistogramKeeper()
    ev = ckks_hist.HistogramEvaluator(ckks.load_public(keeper.public_bytes), Xb, cand_f, cand_b, pack, 16)
    g, h = rng.uniform(-1, 1, n), rng.uniform(0, 0.25, n)
    out = ev.histogram(keeper.encrypt_rows(g + 1j * h), "label party 'guest'")
    GL, HL = keeper.decrypt_candidates(out, 9, pack, "bank")
    left = Xb[:, cand_f] <= cand_b
    np.testing.assert_allclose(GL, g @ left, atol=1e-4)
    np.testing.assert_allclose(HL, h @ left, atol=1e-4)
    assert abs(GL[8]) < 1e-4 and abs(HL[8]) < 1e-4
    ev.close()
    keeper.close()


def test_ckks_hist_evaluator_output_decrypts_to_the_plaintext_histogram() -> None:
    rng = np.random.default_rng(11)
    n, pack = 6000, 4  # two gradient chunks; 3 features of 4 bins -> 9 cumulative candidates, 3 outputs
    Xb = rng.integers(0, 4, (n, 3)).astype(np.uint8)
    cand_f = np.repeat(np.arange(3), 3)
    cand_b = np.tile(np.arange(3), 3)
    perm = rng.permutation(len(cand_f))  # any candidate order works (passive parties shuffle theirs)
    cand_f, cand_b = cand_f[perm], cand_b[perm]
    keeper = ckks_hist.HistogramKeeper()
    ev = ckks_hist.HistogramEvaluator(ckks.load_public(keeper.public_bytes), Xb, cand_f, cand_b, pack, 16)
    assert ev.n_chunks == 2 and ev.n_outputs == ckks_hist.n_outputs(9, pack) == 3
    g, h = rng.uniform(-1, 1, n), rng.uniform(0, 0.25, n)
    node = rng.random(n) < 0.5
    z = np.where(node, g + 1j * h, 0)
    out = ev.histogram(keeper.encrypt_rows(z), "label party 'guest'")
    assert len(out) == 3
    assert all(ckks_hist.describe_ciphertext(keeper.ctx, b).chain_index == 0 for b in out)
    GL, HL = keeper.decrypt_candidates(out, 9, pack, "bank")
    left = (Xb[:, cand_f] <= cand_b) & node[:, None]  # rows x candidates
    np.testing.assert_allclose(GL, g @ left, atol=1e-4)
    np.testing.assert_allclose(HL, h @ left, atol=1e-4)
    with pytest.raises(ProtocolError, match="2 gradient ciphertexts"):
        ev.histogram(keeper.encrypt_rows(z)[:1])
    ev.close()
    keeper.close()


def test_ckks_hist_evaluator_refuses_other_parameters(public_ctx) -> None:
    with pytest.raises(ProtocolError, match=r"moduli \[60, 40, 40, 60\]"):
        ckks_hist.HistogramEvaluator(public_ctx, np.zeros((4, 1), np.uint8), np.zeros(1, np.int64), np.zeros(1, np.int64), 8, 1)


def test_ckks_load_public_refuses_a_secret_context_and_load_secret_a_public_one(secret_ctx) -> None:
    with pytest.raises(SecurityError, match="party 'bank': the context from 'guest' contains a secret key"):
        ckks.load_public(secret_ctx.secret_bytes(), what="party 'bank': the context from 'guest'")
    with pytest.raises(SecurityError, match="holds no secret key"):
        ckks.load_secret(secret_ctx.public_bytes())
    with pytest.raises(ProtocolError, match="cannot load CKKS context"):
        ckks.load_public(b"not a context")
    with pytest.raises(SecurityError):  # the wrapper types keep their promise
        ckks.PublicContext(secret_ctx.tenseal_context)
    with pytest.raises(TypeError):  # a bare TenSEAL context is not accepted by the API
        ckks.encrypt_vector(secret_ctx.tenseal_context, np.ones(3))  # type: ignore[arg-type]


def test_ckks_add_encrypted_matches_plaintext_sum(secret_ctx, public_ctx) -> None:
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=9000) * 10 for _ in range(4)]
    blobs = [ckks.encrypt_vector(public_ctx, x) for x in xs]
    total = ckks.add_encrypted(public_ctx, blobs)  # the coordinator side: public context only
    assert ckks.blob_length(total) == 9000
    assert np.max(np.abs(ckks.decrypt_vector(secret_ctx, total) - sum(xs))) < 1e-3
    # weighted average: scale the sum by 1/4
    avg = ckks.scale_encrypted(public_ctx, total, 0.25)
    assert np.max(np.abs(ckks.decrypt_vector(secret_ctx, avg) - sum(xs) / 4)) < 1e-3
    # a scaled blob can still be added to an unscaled one
    mixed = ckks.add_encrypted(public_ctx, [avg, blobs[0]])
    assert np.max(np.abs(ckks.decrypt_vector(secret_ctx, mixed) - (sum(xs) / 4 + xs[0]))) < 1e-3


def test_ckks_add_encrypted_rejects_shape_mismatch_and_garbage(public_ctx) -> None:
    a = ckks.encrypt_vector(public_ctx, np.ones(100))
    b = ckks.encrypt_vector(public_ctx, np.ones(100))
    c = ckks.encrypt_vector(public_ctx, np.ones(101))
    d = ckks.encrypt_vector(public_ctx, np.ones(5000))
    with pytest.raises(ProtocolError, match="blob 2 has shape n=101"):
        ckks.add_encrypted(public_ctx, [a, b, c])
    with pytest.raises(ProtocolError, match="blob 1 has shape n=5000, chunks=2"):
        ckks.add_encrypted(public_ctx, [a, d])
    with pytest.raises(ProtocolError, match="blob 1 is not a CKKS blob"):
        ckks.add_encrypted(public_ctx, [a, b"hello world, not a ciphertext"])
    with pytest.raises(ProtocolError, match="blob 1 is truncated"):
        ckks.add_encrypted(public_ctx, [a, b[:-10]])
    with pytest.raises(ProtocolError, match="trailing bytes"):
        ckks.add_encrypted(public_ctx, [a, b + b"x"])
    with pytest.raises(ProtocolError, match="at least one"):
        ckks.add_encrypted(public_ctx, [])
    assert not ckks.is_ckks_blob(b"FCK")
    with pytest.raises(ProtocolError):
        ckks.blob_length(b"nope")


def test_ckks_rejects_bad_input(public_ctx) -> None:
    with pytest.raises(DataError, match="1-D"):
        ckks.encrypt_vector(public_ctx, np.ones((2, 2)))
    with pytest.raises(DataError, match="index 1"):
        ckks.encrypt_vector(public_ctx, np.array([1.0, np.nan]))
    with pytest.raises(DataError):
        ckks.scale_encrypted(public_ctx, ckks.encrypt_vector(public_ctx, np.ones(3)), float("inf"))


def test_mask_zero_sum_lets_key_holder_recover_only_the_sum(secret_ctx, public_ctx) -> None:
    rng = np.random.default_rng(7)
    mask = ckks.mask_zero_sum(4096, rng, scale=100.0)
    assert abs(mask.sum()) < 1e-9
    assert np.std(mask) > 10  # actually random, not zeros
    x = rng.normal(size=4096)
    blob = ckks.add_encrypted(public_ctx, [ckks.encrypt_vector(public_ctx, x), ckks.encrypt_vector(public_ctx, mask)])
    seen = ckks.decrypt_vector(secret_ctx, blob)
    assert abs(seen.sum() - x.sum()) < 1e-3
    assert np.max(np.abs(seen - x)) > 1  # individual slots are hidden
    with pytest.raises(DataError, match="at least 2 slots"):
        ckks.mask_zero_sum(1, rng)


# ---------------------------------------------------------------- PSI


def test_normalize_id_rules() -> None:
    assert psi.normalize_id("  00123 ") == b"00123"
    assert psi.normalize_id("123") == b"123"
    assert psi.normalize_id("00123") != psi.normalize_id("123")
    assert psi.normalize_id(123) == b"123"
    assert psi.normalize_id(np.int64(123)) == b"123"
    assert psi.normalize_id(123.0) == b"123"
    assert psi.normalize_id(np.float64(123.0)) == b"123"
    assert psi.normalize_id("123.0") == b"123.0"
    assert psi.normalize_id(b"abc") == b"abc"
    assert psi.normalize_id("müller-7") == "müller-7".encode()
    for bad in (float("nan"), np.nan, "", "   ", None, True, 1.5, float("inf"), 2.0**60, [1]):
        with pytest.raises(DataError, match="invalid id"):
            psi.normalize_id(bad)


def test_hash_to_point_is_deterministic_and_domain_separated() -> None:
    p = psi.hash_to_point(b"123")
    assert len(p) == 32 and p == psi.hash_to_point(b"123")
    assert p != psi.hash_to_point(b"00123")
    assert p == hashlib.sha256(psi.DOMAIN + b"123" + (0).to_bytes(4, "big")).digest()
    assert p != hashlib.sha256(b"123").digest()


def test_low_order_list_matches_x25519_and_is_avoided() -> None:
    k = X25519PrivateKey.generate()
    P = 2**255 - 19
    encodings = [u.to_bytes(32, "little") for u in psi._LOW_ORDER_U] + [P.to_bytes(32, "little"), (P + 1).to_bytes(32, "little")]
    # top bit is ignored by X25519, so these are low-order too
    encodings += [(int.from_bytes(e, "little") | (1 << 255)).to_bytes(32, "little") for e in encodings[:5]]
    for u in encodings:
        assert psi._is_low_order(u)
        with pytest.raises(ValueError):
            k.exchange(X25519PublicKey.from_public_bytes(u))
        with pytest.raises(SecurityError, match="index 1 is a low-order point"):
            psi.PsiKey.generate().blind([psi.hash_to_point(b"x"), u])
    with pytest.raises(ProtocolError, match="index 0 has 31 bytes"):
        psi.PsiKey.generate().blind([b"\x01" * 31])


def test_blinding_commutes_and_yields_intersection() -> None:
    a, b = psi.PsiKey.generate(), psi.PsiKey.generate()
    h = psi.hash_to_point(psi.normalize_id("cust-42"))
    assert a.blind(b.blind([h])) == b.blind(a.blind([h]))
    assert a.blind([h]) != b.blind([h]) != [h]

    bank_ids = [f"c{i}" for i in range(0, 300)]
    fintech_ids = [f"c{i}" for i in range(200, 500)] + [" c7 "]
    bank_once = a.blind(psi.hash_ids(bank_ids))
    fintech_once = b.blind(psi.hash_ids(fintech_ids))
    bank_twice = b.blind(bank_once)  # fintech blinds the bank's values
    fintech_twice = set(a.blind(fintech_once))  # bank blinds the fintech's values
    common = {i for i, v in zip(bank_ids, bank_twice) if v in fintech_twice}
    assert common == {f"c{i}" for i in range(200, 300)} | {"c7"}
    assert repr(a) == "PsiKey(<secret>)"  # the scalar never ends up in logs


def test_psi_blind_rate() -> None:
    pts = psi.hash_ids(range(3000))
    k = psi.PsiKey.generate()
    t = time.perf_counter()
    k.blind(pts)
    rate = len(pts) / (time.perf_counter() - t)
    assert rate > 5_000, f"{rate:.0f} blinds/s"


def test_psi_key_survives_handoff_to_local_helper_only_as_32_bytes() -> None:
    from crypto.psi import PsiKey, hash_to_point

    key = PsiKey.generate()
    helper = PsiKey.import_from_parent(key.export_for_local_helper())
    pts = [hash_to_point(f"id{i}".encode()) for i in range(5)]
    assert helper.blind(pts) == key.blind(pts)
    with pytest.raises(SecurityError):
        PsiKey.import_from_parent(b"short")


def test_replicated_weights_answer_one_row_without_rescaling_and_many_rows_in_chunks() -> None:
    """Online scoring's fast path (one row, no rescale) and the batch path give Enc(X w + add); the public side
    cannot open either, the key holder reads exactly the row's value."""
    sk = ckks.new_context()
    pub = sk.public()
    rng = np.random.default_rng(5)
    w = rng.normal(size=7)
    enc = ckks.shift_replicated(pub, ckks.encrypt_replicated(sk, np.zeros(7)), w, what="w")
    rw = ckks.ReplicatedWeights(pub, enc, what="w")
    x, add = rng.normal(size=(1, 7)), np.array([0.37])
    one = rw.dot(x, add, flood_std=2.0**-10)
    assert len(one) == 1
    np.testing.assert_allclose(ckks.decrypt_chunks(sk, one, 1, what="one"), x @ w + add, atol=1e-2)  # flooded
    np.testing.assert_allclose(ckks.decrypt_chunks(sk, rw.dot(x, add), 1, what="one"), x @ w + add, atol=1e-6)
    zero = rw.dot(np.zeros((1, 7)), add, flood_std=2.0**-10)  # no column to carry the addend: the rescaling path
    np.testing.assert_allclose(ckks.decrypt_chunks(sk, zero, 1, what="zero"), add, atol=1e-6)
    X, A = rng.normal(size=(5000, 7)), rng.normal(size=5000)
    many = rw.dot(X, A)
    assert len(many) == 2  # 4096 slots per chunk
    np.testing.assert_allclose(ckks.decrypt_chunks(sk, many, 5000, what="many"), X @ w + A, atol=1e-5)
    with pytest.raises(SecurityError):
        ckks.decrypt_chunks(pub, one, 1, what="the public side")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="do not fit"):
        rw.dot(np.zeros((1, 6)), add)


def test_the_key_holder_cannot_solve_a_one_row_answer_for_the_passive_row() -> None:
    """As the label party: it encrypted the weights, so it knows each weight ciphertext's error in every slot;
    a one-row answer puts x·(w + e[slot]) in every slot, and least squares over the slots would give x -- unless
    every slot is flooded (the control, with the flooding turned down, shows the attack works)."""
    sk = ckks.new_context()
    pub = sk.public()
    slots, d = ckks.slot_count(pub), 10
    enc_b = ckks.encrypt_replicated(sk, np.zeros(d))  # the label party's ciphertexts (its share b = 0 here)
    err = np.stack([ckks.decrypt_chunks(sk, [c], slots, what="b") for c in enc_b], 1)  # what it can compute
    rng = np.random.default_rng(9)
    rw = ckks.ReplicatedWeights(pub, ckks.shift_replicated(pub, enc_b, rng.normal(size=d), what="w"), what="w")
    x = rng.normal(size=(1, d))

    def solve(blobs: list[bytes]) -> np.ndarray:
        y = ckks.decrypt_chunks(sk, blobs, slots, what="answer")[1:]  # slot 0 is the answer itself
        e = err[1:]
        return np.linalg.lstsq(e - e.mean(0), y - y.mean(), rcond=None)[0]

    control = solve(rw.dot(x, ckks.gaussian(1, 2.0**-10), flood_std=1e-12))
    np.testing.assert_allclose(control, x[0], atol=1e-2)  # unflooded slots: the row comes out
    attacked = solve(rw.dot(x, ckks.gaussian(1, 2.0**-10), flood_std=2.0**-10))
    assert np.median(np.abs(attacked - x[0])) > 10 * np.abs(x).max()  # flooded: nothing near the row
