"""Federation certificate authority and party credentials.

One federation has one CA (``init_ca``).  Every party, the coordinator and every
operator gets a credential directory from ``issue``:

============================  ==============================================  =====
file                          what                                            mode
============================  ==============================================  =====
``{name}.crt``                X.509 leaf signed by the federation CA          0644
``{name}.key``                TLS private key, ECDSA P-256, PKCS#8 PEM         0600
``{name}.envelope.key``       X25519 private key (sealed envelopes), PEM      0600
``{name}.flower.key``         Flower SuperNode auth key, ECDSA P-384, OpenSSH 0600
``{name}.flower.pub``         its public half, one-line OpenSSH format        0644
``ca.crt``                    copy of the federation CA certificate           0644
============================  ==============================================  =====

The leaf certificate carries everything a peer needs to talk to the holder:

* ``CN=name``, ``OU=role`` (party / coordinator / operator), ``O=federation``;
* SAN with the DNS names / IP addresses the holder serves on (gRPC checks these);
* ExtendedKeyUsage serverAuth + clientAuth (one cert for both mTLS directions);
* non-critical extension ``1.3.6.1.4.1.55555.1.1`` whose value is a DER OCTET
  STRING holding the raw 32-byte X25519 envelope public key.  Binding it into the
  CA-signed cert is what lets a party seal a payload to a peer it has never met
  without trusting the relay to hand over the right key.

Flower 1.41 SuperNode authentication (read from the installed ``flwr``):

* ``flower-supernode --auth-supernode-private-key PATH`` loads the file with
  ``cryptography``'s ``load_ssh_private_key(bytes, None)`` and requires an
  ``ec.EllipticCurvePrivateKey`` (flwr/supernode/cli/flower_supernode.py) — so the
  private key must be **OpenSSH format, unencrypted, EC**.  The public key is
  derived from it (``--auth-supernode-public-key`` is deprecated).
* The SuperLink no longer accepts ``--auth-list-public-keys`` CSVs (it exits with
  "no longer supported").  Instead the SuperLink runs with
  ``--enable-supernode-auth`` and each node key is registered with
  ``flwr supernode register PUBLIC_KEY_FILE [SUPERLINK]``, which reads the file
  with ``load_ssh_public_key`` and requires an EC key on a NIST curve
  (flwr/cli/supernode/register.py).  So the public key is the **one-line OpenSSH
  format** ``ecdsa-sha2-nistp384 AAAA... name``.  We use P-384 because Flower's own
  key generator (flwr/supercore/primitives/asymmetric.py) and docs use it.

The CA directory also holds the federation's Ed25519 artifact-signing key pair
(``federation-signing.key`` / ``.pub``), used by :mod:`crypto.signing`.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from crypto.files import (
    PUBLIC_MODE,
    SECRET_MODE,
    check_secret_mode,
    read_file,
    read_secret,
    refuse_existing,
    write_file,
)
from fedcredit.errors import ConfigError, SecurityError

#: Private enterprise arc for fedcredit; ``.1`` = the envelope-key extension.
FEDCREDIT_OID_ARC = "1.3.6.1.4.1.55555.1"
ENVELOPE_KEY_OID = ObjectIdentifier(FEDCREDIT_OID_ARC + ".1")

ROLES = ("party", "coordinator", "operator")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SIGNING_KEY = "federation-signing.key"
SIGNING_PUB = "federation-signing.pub"

# Tolerate modest clock skew between institutions when a cert is brand new.
_BACKDATE = _dt.timedelta(minutes=5)


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _pem_private(key: ec.EllipticCurvePrivateKey | x25519.X25519PrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_public(key: ed25519.Ed25519PublicKey | x25519.X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _der_octet_string(raw: bytes) -> bytes:
    if len(raw) >= 128:  # only short-form lengths are needed for 32-byte keys
        raise ValueError("octet string too long for short-form DER length")
    return b"\x04" + bytes([len(raw)]) + raw


def _parse_der_octet_string(der: bytes) -> bytes:
    if len(der) < 2 or der[0] != 0x04 or der[1] != len(der) - 2:
        raise ValueError("not a short-form DER OCTET STRING")
    return der[2:]


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(
            f"invalid identity name {name!r}: expected lowercase letters, digits, '_' or '-', "
            "starting with a letter or digit, at most 63 characters (regex ^[a-z0-9][a-z0-9_-]{0,62}$)"
        )


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ConfigError(f"invalid role {role!r} for certificate: expected one of {', '.join(ROLES)}")


def _load_cert(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise SecurityError(f"{what} is not a valid PEM X.509 certificate: {exc}") from None


def _cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _role(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(attrs[0].value) if attrs else ""


def _envelope_key(cert: x509.Certificate, who: str) -> x25519.X25519PublicKey:
    try:
        ext = cert.extensions.get_extension_for_oid(ENVELOPE_KEY_OID)
    except x509.ExtensionNotFound:
        raise SecurityError(
            f"certificate for {who} has no envelope-key extension {ENVELOPE_KEY_OID.dotted_string}"
        ) from None
    value = ext.value
    try:
        raw = _parse_der_octet_string(value.value)  # type: ignore[attr-defined]
        return x25519.X25519PublicKey.from_public_bytes(raw)
    except (ValueError, AttributeError) as exc:
        raise SecurityError(f"certificate for {who} has a malformed envelope-key extension: {exc}") from None


def init_ca(ca_dir: Path, federation: str, days: int = 3650, force: bool = False) -> Path:
    """Create the federation CA (ECDSA P-256) and the Ed25519 artifact-signing key.

    Refuses to replace any existing CA file unless ``force``: replacing the CA key
    silently would invalidate every credential already handed to the parties.
    """
    if not isinstance(federation, str) or not federation.strip():
        raise ConfigError("federation name for the CA must be a non-empty string")
    if days <= 0:
        raise ConfigError(f"CA validity days must be positive, got {days}")
    ca_dir = Path(ca_dir)
    outputs = [ca_dir / CA_CERT, ca_dir / CA_KEY, ca_dir / SIGNING_KEY, ca_dir / SIGNING_PUB]
    refuse_existing(outputs, force, "CA")

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"fedcredit CA {federation}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
        ]
    )
    now = _utcnow()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    signing = ed25519.Ed25519PrivateKey.generate()

    # Secrets first: if a write fails midway no public half exists without its key.
    write_file(ca_dir / CA_KEY, _pem_private(key), SECRET_MODE)
    write_file(ca_dir / SIGNING_KEY, _pem_private(signing), SECRET_MODE)
    write_file(ca_dir / SIGNING_PUB, _pem_public(signing.public_key()), PUBLIC_MODE)
    write_file(ca_dir / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    return ca_dir


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bytes]:
    ca_pem = read_file(ca_dir / CA_CERT, "federation CA certificate")
    key_pem = read_secret(ca_dir / CA_KEY, "federation CA private key")
    try:
        cert = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise ConfigError(f"CA certificate {ca_dir / CA_CERT} is not valid PEM: {exc}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"CA private key {ca_dir / CA_KEY} cannot be loaded: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ConfigError(f"CA private key {ca_dir / CA_KEY} does not match CA certificate {ca_dir / CA_CERT}")
    return cert, key, ca_pem


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = str(host).strip()
        if not host:
            raise ConfigError("empty host name in certificate hosts list")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if not names:
        raise ConfigError("certificate hosts list is empty: at least one DNS name or IP is needed for TLS")
    return x509.SubjectAlternativeName(names)


#: Always in a coordinator certificate: its own daemon and anyone on its host dial it by these.
LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def certificate_names(cert: bytes | x509.Certificate) -> list[str]:
    """The DNS names and IP addresses (subjectAltName) a server certificate (PEM, DER or parsed) covers."""
    if isinstance(cert, bytes):
        cert = x509.load_pem_x509_certificate(cert) if cert.lstrip().startswith(b"-----") else x509.load_der_x509_certificate(cert)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(a) for a in san.get_values_for_type(x509.IPAddress))]


def name_covered(host: str, names: Sequence[str]) -> bool:
    """Whether a client dialling ``host`` accepts a certificate for ``names`` (RFC 6125: exact, or ``*.`` one label)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        ip = None
    h = host.lower().rstrip(".")
    for n in names:
        try:
            if ipaddress.ip_address(n) == ip:
                return True
            continue  # an IP name never matches a DNS name
        except ValueError:
            pass
        n = n.lower().rstrip(".")
        if ip is None and (n == h or (n.startswith("*.") and "." in h and h.split(".", 1)[1] == n[2:])):
            return True
    return False


def _new_flower_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _flower_key_files(key: ec.EllipticCurvePrivateKey, name: str) -> tuple[bytes, bytes]:
    """(OpenSSH private key, one-line OpenSSH public key) as Flower loads them (see the module docstring)."""
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + f" {name}\n".encode()


def rekey_flower(out_dir: Path, name: str) -> Path:
    """Replace ``name``'s Flower SuperNode key pair in its credential directory; returns the new public key file.

    Why: once a node is unregistered at the SuperLink, Flower never accepts its key again
    (the key stays in its database, unique), so rejoining needs a new key that the
    coordinator registers.  The TLS certificate and envelope key are unchanged.
    """
    _check_name(name)
    out_dir = Path(out_dir)
    if not (out_dir / f"{name}.crt").exists():
        raise ConfigError(f"{out_dir} holds no credential for {name!r} ({name}.crt missing): issue it first")
    private, public = _flower_key_files(_new_flower_key(), name)
    write_file(out_dir / f"{name}.flower.key", private, SECRET_MODE)
    return write_file(out_dir / f"{name}.flower.pub", public, PUBLIC_MODE)


def issue(
    ca_dir: Path,
    out_dir: Path,
    name: str,
    role: str = "party",
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    days: int = 825,
    force: bool = False,
) -> Identity:
    """Issue a credential directory for ``name`` (see the module docstring for files).

    All outputs are checked before anything is written, so a refusal changes nothing.
    ``ca.crt`` already present with identical content is not an overwrite (several
    identities may share one directory).
    """
    _check_name(name)
    _check_role(role)
    if days <= 0:
        raise ConfigError(f"certificate validity days must be positive, got {days}")
    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    ca_cert, ca_key, ca_pem = _load_ca(ca_dir)
    if role == "coordinator":  # its own host dials it by loopback; parties dial the names given
        hosts = [*hosts, *(h for h in LOOPBACK_NAMES if h not in hosts)]
    san = _san(hosts)

    cert_path = out_dir / f"{name}.crt"
    key_path = out_dir / f"{name}.key"
    env_path = out_dir / f"{name}.envelope.key"
    fl_key_path = out_dir / f"{name}.flower.key"
    fl_pub_path = out_dir / f"{name}.flower.pub"
    ca_copy = out_dir / CA_CERT
    refuse_existing([cert_path, key_path, env_path, fl_key_path, fl_pub_path], force, f"credential for {name!r}")
    copy_ca = True
    if ca_copy.exists():
        if ca_copy.resolve() == (ca_dir / CA_CERT).resolve() or ca_copy.read_bytes() == ca_pem:
            copy_ca = False
        elif not force:
            raise ConfigError(
                f"refusing to overwrite existing CA certificate {ca_copy}: it differs from "
                f"{ca_dir / CA_CERT} (pass force=True / --force to replace it)"
            )

    # the federation's artifact-signing public key goes beside ca.crt, so the party can verify model artifacts
    sig_pub, sig_copy = ca_dir / SIGNING_PUB, out_dir / SIGNING_PUB
    copy_sig = sig_pub.exists() and sig_copy.resolve() != sig_pub.resolve()
    if copy_sig and sig_copy.exists():
        if sig_copy.read_bytes() == sig_pub.read_bytes():
            copy_sig = False
        elif not force:
            raise ConfigError(
                f"refusing to overwrite existing {sig_copy}: it differs from {sig_pub} (pass force=True / --force)"
            )

    tls_key = ec.generate_private_key(ec.SECP256R1())
    env_key = x25519.X25519PrivateKey.generate()
    fl_key = _new_flower_key()
    env_raw = env_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    federation_attrs = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    subject_attrs = [x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role)]
    if federation_attrs:
        subject_attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(federation_attrs[0].value)))

    now = _utcnow()
    not_after = min(now + _dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject_attrs))
        .issuer_name(ca_cert.subject)
        .public_key(tls_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(tls_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .add_extension(x509.UnrecognizedExtension(ENVELOPE_KEY_OID, _der_octet_string(env_raw)), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = _pem_private(tls_key)
    fl_key_ssh, fl_pub_ssh = _flower_key_files(fl_key, name)

    write_file(key_path, key_pem, SECRET_MODE)
    write_file(env_path, _pem_private(env_key), SECRET_MODE)
    write_file(fl_key_path, fl_key_ssh, SECRET_MODE)
    write_file(fl_pub_path, fl_pub_ssh, PUBLIC_MODE)
    write_file(cert_path, cert_pem, PUBLIC_MODE)
    if copy_ca:
        write_file(ca_copy, ca_pem, PUBLIC_MODE)
    if copy_sig:
        write_file(sig_copy, sig_pub.read_bytes(), PUBLIC_MODE)
    return Identity(
        name=name, role=role, cert_pem=cert_pem, key_pem=key_pem, ca_pem=ca_pem, envelope_private=env_key, dir=out_dir
    )


@dataclass
class Identity:
    """A party's own credentials, loaded from its credential directory."""

    name: str
    role: str
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    envelope_private: x25519.X25519PrivateKey
    dir: Path

    @classmethod
    def load(cls, dir: Path, name: str) -> Identity:
        """Load ``name``'s credentials from ``dir``; ConfigError names any missing/mismatched file.

        Checks that the TLS key and the envelope key belong to the certificate, so a
        mixed-up directory fails here rather than as an opaque TLS handshake error.
        """
        _check_name(name)
        dir = Path(dir)
        cert_pem = read_file(dir / f"{name}.crt", f"certificate for {name!r}")
        key_pem = read_secret(dir / f"{name}.key", f"TLS private key for {name!r}")
        env_pem = read_secret(dir / f"{name}.envelope.key", f"envelope private key for {name!r}")
        check_secret_mode(dir / f"{name}.flower.key", f"SuperNode private key for {name!r}")
        ca_pem = read_file(dir / CA_CERT, "federation CA certificate")
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise ConfigError(f"certificate {dir / f'{name}.crt'} is not valid PEM: {exc}") from None
        try:
            tls_key = serialization.load_pem_private_key(key_pem, password=None)
            env_key = serialization.load_pem_private_key(env_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"cannot load private key for {name!r} in {dir}: {exc}") from None
        if not isinstance(env_key, x25519.X25519PrivateKey):
            raise ConfigError(f"{dir / f'{name}.envelope.key'} is not an X25519 private key")
        if not isinstance(tls_key, ec.EllipticCurvePrivateKey) or tls_key.public_key() != cert.public_key():
            raise ConfigError(f"TLS key {dir / f'{name}.key'} does not match certificate {dir / f'{name}.crt'}")
        if _cn(cert) != name:
            raise ConfigError(f"certificate {dir / f'{name}.crt'} is for CN={_cn(cert)!r}, expected {name!r}")
        try:  # from this directory's federation CA and in its validity window: else every handshake fails later
            verify_peer(cert_pem, ca_pem, expected_name=name)
        except SecurityError as exc:
            raise ConfigError(f"certificate {dir / f'{name}.crt'}: {exc} (checked against {dir / CA_CERT})") from None
        try:
            cert_env = _envelope_key(cert, name)
        except SecurityError as exc:
            raise ConfigError(str(exc)) from None
        if cert_env != env_key.public_key():
            raise ConfigError(
                f"envelope key {dir / f'{name}.envelope.key'} does not match the key in {dir / f'{name}.crt'}"
            )
        return cls(
            name=name,
            role=_role(cert),
            cert_pem=cert_pem,
            key_pem=key_pem,
            ca_pem=ca_pem,
            envelope_private=env_key,
            dir=dir,
        )

    @property
    def envelope_public(self) -> x25519.X25519PublicKey:
        return self.envelope_private.public_key()

    @property
    def cert_path(self) -> Path:
        return self.dir / f"{self.name}.crt"

    @property
    def key_path(self) -> Path:
        return self.dir / f"{self.name}.key"

    @property
    def envelope_key_path(self) -> Path:
        return self.dir / f"{self.name}.envelope.key"

    @property
    def ca_path(self) -> Path:
        return self.dir / CA_CERT

    @property
    def flower_key_path(self) -> Path:
        return self.dir / f"{self.name}.flower.key"

    @property
    def flower_pub_path(self) -> Path:
        return self.dir / f"{self.name}.flower.pub"

    def __repr__(self) -> str:  # never print key material
        return f"Identity(name={self.name!r}, role={self.role!r}, dir={str(self.dir)!r})"


@dataclass
class PeerInfo:
    """What a verified peer certificate tells us: who, which role, how to seal to it."""

    name: str
    role: str
    envelope_public: x25519.X25519PublicKey
    not_after: _dt.datetime


def verify_peer(
    cert_pem: bytes,
    ca_pem: bytes,
    expected_name: str | None = None,
    now: _dt.datetime | None = None,
) -> PeerInfo:
    """Verify a peer's certificate against the federation CA and extract its envelope key.

    Checks: signed by the CA (issuer name + signature), CA and leaf inside their
    validity windows at ``now``, leaf is not a CA, role is known, CN matches
    ``expected_name`` when given.  Raises SecurityError saying which check failed.
    """
    now = now or _utcnow()
    if now.tzinfo is None:
        now = now.replace(tzinfo=_dt.UTC)
    cert = _load_cert(cert_pem, "peer certificate")
    ca = _load_cert(ca_pem, "federation CA certificate")
    who = _cn(cert) or "<no CN>"
    ca_name = ca.subject.rfc4514_string()
    if cert.issuer != ca.subject:
        raise SecurityError(
            f"certificate for {who} was not issued by federation CA {ca_name} "
            f"(issuer is {cert.issuer.rfc4514_string()})"
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise SecurityError(
            f"certificate for {who} was not issued by federation CA {ca_name} (signature check failed: {exc or 'bad signature'})"
        ) from None
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            raise SecurityError(f"certificate for {who} is a CA certificate, not a party credential")
    except x509.ExtensionNotFound:
        pass
    for label, c in (("federation CA", ca), (f"certificate for {who}", cert)):
        if now < c.not_valid_before_utc:
            raise SecurityError(f"{label} is not valid yet (valid from {c.not_valid_before_utc.isoformat()})")
        if now > c.not_valid_after_utc:
            raise SecurityError(f"{label} expired on {c.not_valid_after_utc.isoformat()}")
    if expected_name is not None and who != expected_name:
        raise SecurityError(f"certificate is for {who!r} but peer {expected_name!r} was expected")
    role = _role(cert)
    if role not in ROLES:
        raise SecurityError(f"certificate for {who} has unknown role {role!r} (expected one of {', '.join(ROLES)})")
    return PeerInfo(name=who, role=role, envelope_public=_envelope_key(cert, who), not_after=cert.not_valid_after_utc)



def cert_fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of a certificate's DER encoding (hex): what a party's job approval binds each peer to."""
    return _load_cert(cert_pem, "certificate").fingerprint(hashes.SHA256()).hex()


# --------------------------------------------------------------------------- loopback TLS

LOOPBACK_CA = "loopback-ca.crt"
LOOPBACK_CERT = "loopback.crt"
LOOPBACK_KEY = "loopback.key"


def issue_loopback_tls(out_dir: Path, days: int = 30) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server cert for 127.0.0.1 / localhost; returns ``(ca, cert, key)`` paths.

    Why: Flower's SuperLink refuses SuperNode authentication without TLS, and its own
    helpers (flower-superexec, flwr-serverapp, our ``flwr`` CLI calls) dial it on
    127.0.0.1 and check that name.  The coordinator's federation certificate need not
    name 127.0.0.1, and nothing on the loopback hop should chain to the federation CA
    (a party must never be able to present it).  So the coordinator mints its own
    private loopback CA at every start; no key but the leaf's is kept (the CA key is
    discarded once the leaf is signed, so nothing else can ever be issued under it).
    Files are replaced on each call (owner-only keys, atomic writes).
    """
    out_dir = Path(out_dir)
    now = _utcnow()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedcredit loopback CA (this host only)")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(("127.0.0.1", "localhost")), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (out_dir / LOOPBACK_CA, out_dir / LOOPBACK_CERT, out_dir / LOOPBACK_KEY)
    write_file(paths[2], _pem_private(key), SECRET_MODE)
    write_file(paths[1], leaf.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    write_file(paths[0], ca.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    return paths


def flower_public_key_pem(path: Path, who: str) -> bytes:
    """A registered SuperNode public key (one-line OpenSSH file) as the PEM SubjectPublicKeyInfo bytes
    Flower's SuperNode sends in its ``flwr-public-key`` header, so the two can be compared byte for byte."""
    raw = read_file(Path(path), f"SuperNode public key of {who!r}")
    try:
        key = serialization.load_ssh_public_key(raw.strip())
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: SuperNode public key of {who!r} is not an OpenSSH public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"{path}: SuperNode public key of {who!r} is not an EC key (Flower needs ECDSA)")
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
