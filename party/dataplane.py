"""A party's endpoint on the data plane: :class:`fedcredit.transport.Transport` over the relay.

Why this shape: protocol roles (PSI, vertical LR, SecureBoost...) are written
against ``Transport`` only; this class makes them run across institutions.  The
party dials *out* to the coordinator's relay (mutual TLS), keeps one
bidirectional stream per session, and seals every payload end-to-end to the
receiver (crypto.envelope), so the relay forwards ciphertext it cannot open.

Trust: the relay is not trusted for keys.  A peer's envelope public key comes
from its certificate, fetched from the relay's directory but verified here
against the federation CA with the expected name.  The associated data of each
envelope binds (session, sender, receiver, tag, seq), so a relay that replays,
reorders, drops, redirects or relabels a frame is detected (SecurityError).

Peer certificates may also be handed in up front (``peer_certs``, e.g. from the
job metadata); they are verified the same way and the directory is then skipped.

Threads: ``send`` seals in the caller's thread and queues the frame (it only
blocks to fetch a peer's certificate the first time, up to ``peer_timeout``);
one background thread reads the stream, opens frames, and files plaintexts
into per-(sender, tag) queues that ``recv`` waits on.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from crypto.certs import Identity, verify_peer
from crypto.envelope import open_sealed, seal
from crypto.tls import channel_credentials
from fedcredit.dataplane import GRPC_OPTIONS, MAX_SEALED_BYTES, frame_aad
from fedcredit.errors import FedCreditError, PeerAborted, ProtocolError, SecurityError
from fedcredit.transport import ABORT_TAG, MAX_ABORT_REASON
from party.audit import AuditLog
from protos import dataplane_pb2 as pb
from protos import dataplane_pb2_grpc as pb_grpc

Frame = pb.Frame


def _describe_rpc_error(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code.name if code else 'UNKNOWN'}: {details}"


def _fresh(err: FedCreditError) -> FedCreditError:
    """A new instance of a stored error, so repeated raises don't pile up tracebacks."""
    return copy.copy(err).with_traceback(None)


class RelayTransport:
    """Transport for party ``identity.name`` in ``session``, through the relay at ``relay_address``.

    Raises SecurityError if mutual TLS with the relay fails (e.g. a certificate not
    issued by the federation CA), ProtocolError if the relay is unreachable or
    refuses the stream.  ``recv`` raises ProtocolError naming the party when it
    left the session, when the relay could not deliver to it, or on timeout.
    """

    def __init__(
        self,
        identity: Identity,
        relay_address: str,
        session: str,
        *,
        audit: AuditLog | None = None,
        peer_timeout: float = 120.0,
        recv_timeout: float = 600.0,
        connect_timeout: float = 30.0,
        server_name: str | None = None,
        peer_certs: Mapping[str, bytes] | None = None,
    ) -> None:
        if not session:
            raise ProtocolError(f"{identity.name}: a data-plane session id must be non-empty")
        self._id = identity
        self.relay_address = relay_address
        self.session = session
        self.audit = audit
        self.peer_timeout = peer_timeout
        self.recv_timeout = recv_timeout

        self._cond = threading.Condition()
        self._inbox: dict[tuple[str, str], deque[bytes]] = {}
        self._in_seq: dict[str, int] = {}
        self._gone: dict[str, str] = {}
        self._peer_errors: dict[str, FedCreditError] = {}
        self._broken: FedCreditError | None = None
        self._closed = False
        self._acked = False
        self._aborted = False

        self._send_lock = threading.Lock()
        self._out_seq: dict[str, int] = {}
        self._keys: dict[str, X25519PublicKey] = {}
        self._keys_lock = threading.Lock()
        self._outq: queue.Queue[Frame | None] = queue.Queue()
        for peer, pem in (peer_certs or {}).items():
            if peer != identity.name:
                self._keys[peer] = self._verified_key(peer, pem)

        opts: list[tuple[str, object]] = list(GRPC_OPTIONS)
        if server_name:
            opts.append(("grpc.ssl_target_name_override", server_name))
        self._channel = grpc.secure_channel(relay_address, channel_credentials(identity), options=opts)
        self._stub = pb_grpc.RelayStub(self._channel)
        self._outq.put(Frame(kind=Frame.HELLO, session=session))
        # No wait_for_ready: a refused TLS handshake must fail now with its reason,
        # not be retried silently until a timeout.
        self._call = self._stub.Connect(self._requests())
        self._reader = threading.Thread(target=self._read_loop, name=f"dataplane-{identity.name}-{session}", daemon=True)
        self._reader.start()
        try:
            self._wait_ready(connect_timeout)
        except BaseException:
            self._teardown()
            raise

    # ------------------------------------------------------------------ public
    @property
    def me(self) -> str:
        return self._id.name

    def send(self, to: str, tag: str, payload: bytes) -> None:
        """Seal ``payload`` to ``to`` and queue it (returns before delivery)."""
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload from {self.me} to {to} ({tag}) must be bytes, got {type(payload).__name__}")
        self._check_usable(to, f"send '{tag}' to")
        key = self._peer_key(to)
        with self._send_lock:
            seq = self._out_seq.get(to, 0) + 1
            sealed = seal(bytes(payload), key, self._id.envelope_private, frame_aad(self.session, self.me, to, tag, seq))
            if len(sealed) > MAX_SEALED_BYTES:
                raise ProtocolError(
                    f"{self.me}: message '{tag}' to {to} is {len(sealed)} bytes sealed; "
                    f"the data plane carries at most {MAX_SEALED_BYTES} bytes per message (split it)"
                )
            self._check_usable(to, f"send '{tag}' to")
            if self.audit is not None:
                self.audit.record_sent(
                    session=self.session, sender=self.me, receiver=to, tag=tag, seq=seq, sealed=sealed
                )
            self._out_seq[to] = seq
            self._outq.put(Frame(kind=Frame.DATA, session=self.session, receiver=to, tag=tag, seq=seq, payload=sealed))

    def recv(self, frm: str, tag: str, timeout: float | None = None) -> bytes:
        """Block until the message from ``frm`` with ``tag`` arrives (in send order per tag)."""
        t = self.recv_timeout if timeout is None else timeout
        deadline = time.monotonic() + t
        key = (frm, tag)
        with self._cond:
            while True:
                box = self._inbox.get(key)
                if box:
                    return box.popleft()
                if frm in self._peer_errors:
                    raise _fresh(self._peer_errors[frm])
                if frm in self._gone:
                    raise ProtocolError(
                        f"{self.me}: {self._gone[frm]} (session {self.session!r}) before sending '{tag}'"
                    )
                if self._broken is not None:
                    raise _fresh(self._broken)
                if self._closed:
                    raise ProtocolError(f"{self.me}: data-plane transport for session {self.session!r} is closed")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProtocolError(
                        f"{self.me}: no message '{tag}' from party '{frm}' within {t:g} s "
                        f"(session {self.session!r}, relay {self.relay_address})"
                    )
                self._cond.wait(remaining)

    def abort(self, reason: str) -> None:
        """This role failed: send every peer of the session a sealed, audited abort naming ``reason``.

        Peers are the ones this transport knows keys for (the job's peers when ``peer_certs``
        were handed in; otherwise those it has talked to).  Best effort: a peer already gone is skipped.
        """
        with self._cond:
            if self._aborted or self._closed or self._broken is not None:
                return
            self._aborted = True
        with self._keys_lock:
            peers = sorted(self._keys)
        note = str(reason)[:MAX_ABORT_REASON].encode("utf-8", "replace")
        for peer in peers:
            try:
                self.send(peer, ABORT_TAG, note)
            except FedCreditError:
                continue

    def close(self) -> None:
        """Say goodbye, let the relay forward everything already sent, then hang up."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._outq.put(Frame(kind=Frame.BYE, session=self.session))
        self._outq.put(None)  # half-close: the relay routes what we sent, then ends its side
        self._reader.join(timeout=10.0)
        self._teardown()

    def __enter__(self) -> RelayTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RelayTransport(me={self.me!r}, session={self.session!r}, relay={self.relay_address!r})"

    # ---------------------------------------------------------------- internals
    def _teardown(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._outq.put(None)
        self._call.cancel()
        self._channel.close()

    def _wait_ready(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._acked or self._broken is not None, timeout=timeout)
            if self._broken is not None:
                raise self._broken
            if not self._acked:
                raise ProtocolError(
                    f"{self.me}: relay at {self.relay_address} did not acknowledge joining session "
                    f"{self.session!r} within {timeout:g} s"
                )

    def _requests(self) -> Iterator[Frame]:
        while True:
            frame = self._outq.get()
            if frame is None:
                return
            yield frame

    def _check_usable(self, peer: str, what: str) -> None:
        with self._cond:
            if self._closed:
                raise ProtocolError(f"{self.me}: cannot {what} {peer}: transport for session {self.session!r} is closed")
            if self._broken is not None:
                raise _fresh(self._broken)
            if peer in self._peer_errors:
                raise _fresh(self._peer_errors[peer])
            if peer in self._gone:
                raise ProtocolError(f"{self.me}: cannot {what} {peer}: {self._gone[peer]} (session {self.session!r})")

    def _peer_key(self, name: str) -> X25519PublicKey:
        """The peer's envelope key, from its certificate verified against OUR CA copy."""
        with self._keys_lock:
            key = self._keys.get(name)
        if key is not None:
            return key
        if name == self.me:
            raise ProtocolError(f"{self.me}: cannot send to itself over the data plane")
        try:
            reply = self._stub.Directory(
                pb.DirectoryRequest(names=[name], wait_seconds=self.peer_timeout), timeout=self.peer_timeout + 30.0
            )
        except grpc.RpcError as exc:
            raise ProtocolError(
                f"{self.me}: relay at {self.relay_address} directory lookup for party '{name}' failed: "
                f"{_describe_rpc_error(exc)}"
            ) from None
        entry = next((p for p in reply.parties if p.name == name), None)
        if entry is None:
            raise ProtocolError(
                f"{self.me}: party '{name}' has not registered with the relay at {self.relay_address} "
                f"within {self.peer_timeout:g} s (is it running and configured for session {self.session!r}?)"
            )
        key = self._verified_key(name, entry.cert_pem, "relay directory entry")
        with self._keys_lock:
            self._keys[name] = key
        return key

    def _verified_key(self, name: str, cert_pem: bytes, source: str = "certificate") -> X25519PublicKey:
        try:
            info = verify_peer(cert_pem, self._id.ca_pem, expected_name=name)
        except SecurityError as exc:
            raise SecurityError(f"{self._id.name}: {source} for party '{name}' rejected: {exc}") from None
        if info.role != "party":
            raise SecurityError(f"{self._id.name}: certificate for '{name}' has role {info.role!r}, expected 'party'")
        return info.envelope_public

    def _fail(self, error: FedCreditError) -> None:
        with self._cond:
            if self._broken is None and not self._closed:
                self._broken = error
            self._cond.notify_all()

    def _read_loop(self) -> None:
        try:
            for frame in self._call:
                self._dispatch(frame)
            with self._cond:
                closing = self._closed
            if not closing:
                self._fail(
                    ProtocolError(f"{self.me}: relay at {self.relay_address} ended the stream for session {self.session!r}")
                )
        except grpc.RpcError as exc:
            with self._cond:
                closing = self._closed
            if closing:
                return
            self._fail(self._connect_error(exc))
        except FedCreditError as exc:
            self._fail(exc)
        except Exception as exc:  # never die silently: waiters must learn why
            self._fail(ProtocolError(f"{self.me}: data-plane reader failed: {type(exc).__name__}: {exc}"))

    def _connect_error(self, exc: grpc.RpcError) -> FedCreditError:
        """Turn a stream failure into an error saying what to check."""
        text = _describe_rpc_error(exc)
        code = exc.code() if hasattr(exc, "code") else None
        where = f"the relay at {self.relay_address}"
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return SecurityError(f"{self.me}: {where} refused this party: {text}")
        if self._acked:
            return ProtocolError(f"{self.me}: lost the connection to {where} (session {self.session!r}): {text}")
        low = text.lower()
        if "certificate_verify_failed" in low or "handshake" in low:
            return SecurityError(
                f"{self.me}: TLS handshake with {where} failed: the relay's certificate does not verify against "
                f"this party's federation CA ({self._id.dir}/ca.crt) or the relay rejected this party's "
                f"certificate; both must be issued by the same federation CA and be within their validity ({text})"
            )
        if any(k in low for k in ("socket closed", "connection reset", "alert")):
            return SecurityError(
                f"{self.me}: {where} closed the connection during the TLS handshake: it most likely rejected this "
                f"party's certificate (not issued by the federation CA, or expired) ({text})"
            )
        return ProtocolError(f"{self.me}: cannot connect to {where}: {text}")

    def _dispatch(self, frame: Frame) -> None:
        kind = frame.kind
        if kind == Frame.DATA:
            self._on_data(frame)
        elif kind == Frame.HELLO_ACK:
            if frame.receiver != self.me:
                raise SecurityError(
                    f"{self.me}: relay authenticated this connection as {frame.receiver!r}, not {self.me!r}"
                )
            with self._cond:
                self._acked = True
                self._cond.notify_all()
        elif kind == Frame.PEER_GONE:
            with self._cond:
                self._gone[frame.sender] = frame.error or f"party {frame.sender!r} left"
                self._cond.notify_all()
        elif kind == Frame.ERROR:
            if not self._acked or not frame.receiver:
                raise ProtocolError(f"{self.me}: relay at {self.relay_address} refused: {frame.error}")
            err = ProtocolError(f"{self.me}: relay could not deliver '{frame.tag}' to party '{frame.receiver}': {frame.error}")
            with self._cond:
                self._peer_errors.setdefault(frame.receiver, err)
                self._cond.notify_all()
        # other kinds are ignored (forward compatibility)

    def _on_data(self, frame: Frame) -> None:
        sender = frame.sender
        try:
            if frame.session != self.session or frame.receiver != self.me:
                raise SecurityError(
                    f"{self.me}: relay delivered a frame for ({frame.session!r}, {frame.receiver!r}) "
                    f"on the stream for ({self.session!r}, {self.me!r})"
                )
            key = self._peer_key(sender)
            plaintext = open_sealed(
                frame.payload,
                self._id.envelope_private,
                key,
                frame_aad(self.session, sender, self.me, frame.tag, frame.seq),
            )
            expected = self._in_seq.get(sender, 0) + 1
            if frame.seq != expected:
                raise SecurityError(
                    f"{self.me}: message {frame.seq} from party '{sender}' arrived when {expected} was expected "
                    "(dropped, replayed or reordered in transit)"
                )
        except FedCreditError as exc:
            err = exc if isinstance(exc, SecurityError) else SecurityError(str(exc))
            if not str(err).startswith(self.me):
                err = SecurityError(f"{self.me}: message '{frame.tag}' from party '{sender}' rejected: {err}")
            with self._cond:
                self._peer_errors.setdefault(sender, err)
                self._cond.notify_all()
            return
        with self._cond:
            self._in_seq[sender] = frame.seq
            if frame.tag == ABORT_TAG:
                self._peer_errors.setdefault(sender, PeerAborted(self.me, sender, plaintext.decode("utf-8", "replace")))
            else:
                self._inbox.setdefault((sender, frame.tag), deque()).append(plaintext)
            self._cond.notify_all()
