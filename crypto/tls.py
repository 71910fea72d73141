"""Mutual-TLS credentials: gRPC (data plane, control, scoring) and stdlib ``ssl`` (the Flower front door).

Both directions authenticate with certificates from the federation CA:
the server requires a client certificate (``require_client_auth=True``) chaining to
the CA, the client checks the server certificate against the same CA and the
target host name against the server cert's SAN.

What gRPC Python (BoringSSL) lets us enforce, and what it does not:

* Protocol version: gRPC core's SSL credentials accept TLS 1.2 and 1.3 and the
  Python API exposes no minimum-version knob.  Measured with grpcio 1.85.1: two
  gRPC peers always negotiate TLS 1.3 (``TLS_AES_256_GCM_SHA384``, key exchange
  group ``X25519MLKEM768``), but the server still completes a TLS 1.2 handshake
  (``ECDHE-ECDSA-AES256-GCM-SHA384``) for a client that caps itself at 1.2.  So
  TLS 1.3 is enforced one layer up: :func:`peer_identity` reads
  ``ssl_tls_version`` from the auth context and refuses any call that did not
  arrive over TLS 1.3 (``require_tls13=True`` by default).  gRPC's default TLS 1.2
  suites are ECDHE + AEAD only; ``GRPC_SSL_CIPHER_SUITES`` can narrow them.
* Client authentication: enforced by the handshake — a client without a cert, or
  with a cert from a foreign CA, never reaches a handler.
* Authorization is ours: call :func:`peer_identity` in each handler to learn the
  caller's CN and role (and optionally re-check the validity window against the CA
  with ``verify_peer``).  gRPC does not check revocation; short-lived certs + reissue
  are the revocation story.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from crypto.certs import Identity, PeerInfo, certificate_names, name_covered, verify_peer
from fedcredit.errors import SecurityError

# Messages on the data plane can carry CKKS contexts (~2 MB) and batches of
# ciphertexts; gRPC's default 4 MB receive cap is too small.  256 MB of sealed
# payload plus 64 KB of frame headers.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024 + 64 * 1024
GRPC_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def server_credentials(identity: Identity) -> grpc.ServerCredentials:
    """Server credentials that present ``identity``'s cert and require a CA-issued client cert."""
    return grpc.ssl_server_credentials(
        [(identity.key_pem, identity.cert_pem)],
        root_certificates=identity.ca_pem,
        require_client_auth=True,
    )


def channel_credentials(identity: Identity) -> grpc.ChannelCredentials:
    """Client credentials: trust only the federation CA and present ``identity``'s cert."""
    return grpc.ssl_channel_credentials(
        root_certificates=identity.ca_pem,
        private_key=identity.key_pem,
        certificate_chain=identity.cert_pem,
    )


def secure_channel(
    target: str,
    identity: Identity,
    server_name: str | None = None,
    options: Sequence[tuple[str, object]] = (),
) -> grpc.Channel:
    """Open an mTLS channel to ``target``.

    ``server_name`` overrides the name checked against the server cert's SAN (use the
    peer's cert host name when dialing by an address not in its SAN).
    """
    opts: list[tuple[str, object]] = list(GRPC_OPTIONS) + list(options)
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(target, channel_credentials(identity), options=opts)


def _first(ctx: dict, key: str) -> bytes | None:
    values = ctx.get(key) or []
    return values[0] if values else None


def peer_identity(
    context: grpc.ServicerContext,
    ca_pem: bytes | None = None,
    require_tls13: bool = True,
) -> tuple[str, str]:
    """Return ``(CN, role)`` of the mTLS-authenticated caller.

    Raises SecurityError when the call did not arrive over mutual TLS (e.g. a
    misconfigured insecure port) or, with ``require_tls13``, over an older TLS.
    With ``ca_pem`` the certificate is re-verified with
    :func:`crypto.certs.verify_peer` (signature, validity window, role).
    """
    auth = context.auth_context() or {}
    pem = _first(auth, "x509_pem_cert")
    if pem is None:
        raise SecurityError(
            f"caller {context.peer()} presented no client certificate (call did not arrive over mutual TLS)"
        )
    if require_tls13:
        version = _first(auth, "ssl_tls_version")
        if version != b"TLSv1.3":
            shown = version.decode("ascii", "replace") if version else "unknown"
            raise SecurityError(f"caller {context.peer()} connected with TLS version {shown}; TLS 1.3 is required")
    if ca_pem is not None:
        info = verify_peer(pem, ca_pem)
        return info.name, info.role
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise SecurityError(f"caller {context.peer()} certificate cannot be parsed: {exc}") from None
    cn_attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ou_attrs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    cn = str(cn_attrs[0].value) if cn_attrs else ""
    grpc_cn = _first(auth, "x509_common_name")
    if not cn or (grpc_cn is not None and grpc_cn.decode("utf-8", "replace") != cn):
        raise SecurityError(f"caller {context.peer()} certificate has no usable common name")
    return cn, (str(ou_attrs[0].value) if ou_attrs else "")


# --------------------------------------------------------------------------- stdlib ssl (asyncio streams)
# The Flower front door and the party's fleet link are plain asyncio streams, not gRPC.
# Here the TLS 1.3 floor is set on the context itself, so an older client never completes
# a handshake (unlike gRPC above, where it is checked per call).


def ssl_server_context(identity: Identity) -> ssl.SSLContext:
    """TLS 1.3 only, presents ``identity``'s cert, requires a client cert chaining to the federation CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(identity.cert_path), str(identity.key_path))
    ctx.load_verify_locations(cadata=identity.ca_pem.decode("ascii"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def ssl_client_context(identity: Identity) -> ssl.SSLContext:
    """TLS 1.3 only, trusts only the federation CA (host name checked), presents ``identity``'s cert."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=identity.ca_pem.decode("ascii"))
    ctx.load_cert_chain(str(identity.cert_path), str(identity.key_path))
    return ctx


def ssl_loopback_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.3 server context for a loopback-only hop (cert from ``crypto.certs.issue_loopback_tls``).

    Server authentication only: the hop exists because Flower refuses key authentication
    over plain HTTP, not to tell local callers apart.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def ssl_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, ca_pem: bytes) -> PeerInfo:
    """Who is on the other end of a mutual-TLS stream: its certificate re-verified with
    :func:`crypto.certs.verify_peer` (CA signature, validity window, role)."""
    if ssl_object is None:
        raise SecurityError("connection is not TLS")
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise SecurityError("peer presented no client certificate")
    if ssl_object.version() != "TLSv1.3":
        raise SecurityError(f"peer connected with {ssl_object.version()}; TLS 1.3 is required")
    return verify_peer(ssl.DER_cert_to_PEM_cert(der).encode("ascii"), ca_pem)


def address_mismatch(address: str, identity: Identity, timeout: float = 5.0) -> str | None:
    """:func:`hostname_mismatch` for a ``host:port`` (or ``[v6]:port``) address; None if it does not parse."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None
    return hostname_mismatch(host.strip("[]"), int(port), identity, timeout)


def hostname_mismatch(host: str, port: int, identity: Identity, timeout: float = 5.0) -> str | None:
    """Why ``host:port`` fails TLS host-name checking, or None if it does not (or cannot be reached).

    Called after a connection failed, to turn the TLS library's bare "hostname mismatch"
    (or gRPC's timeout, which hides it) into one line naming the dialled name and the
    names the server's certificate covers.  The probe still verifies the chain against
    the federation CA; only the name check is skipped, and nothing is sent.
    """
    ctx = ssl_client_context(identity)
    ctx.check_hostname = False
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError):
        return None
    if not der:
        return None
    names = certificate_names(der)
    if name_covered(host, names):
        return None
    return (f"TLS host name mismatch: dialled '{host}' (port {port}), but the server's certificate covers only "
            f"{names}; dial one of those names, or reissue that certificate to cover '{host}' "
            f"(fedcredit certs issue NAME --role coordinator --dns <name> / --ip <address>, repeatable, --force)")
