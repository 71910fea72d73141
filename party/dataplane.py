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
blocks to fetch a peer's certificate the first time, up to ``peer_timeout``, or
when the peer has not acknowledged ``retain_bytes`` of earlier frames);
one background thread reads the stream, opens frames, and files plaintexts
into per-(sender, tag) queues that ``recv`` waits on; one more sends ACKs.

Surviving a dropped stream (``reconnect_window_s``, default 30 s, 0 = off): every
frame sent is retained until the receiver acknowledges it (ACK, at most every
``ACK_DELAY_S``).  When the stream fails after joining, the reader reconnects with
backoff and a HELLO{resume, acks = last seq received from each peer}; the relay hands
the place back only to the same certificate.  Peers retransmit what this party has
not received, and answer RESUME with what they hold of its frames, so it retransmits
the rest.  Frames with a seq already received are dropped (idempotent receive); a gap
is still a SecurityError, except that right after its own reconnect a party drops
frames *ahead* of the expected seq from a peer until that peer's retransmission
reaches the expected one (they are retransmitted).  See docs/dataplane.md.
"""

from __future__ import annotations

import copy
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from crypto.certs import Identity, verify_peer
from crypto.envelope import open_sealed, seal
from crypto.tls import address_mismatch, channel_credentials
from fedcredit.dataplane import DEFAULT_RECONNECT_WINDOW_S, GRPC_OPTIONS, MAX_SEALED_BYTES, frame_aad
from fedcredit.errors import FedCreditError, PeerAborted, ProtocolError, SecurityError
from fedcredit.transport import ABORT_TAG, MAX_ABORT_REASON
from party.audit import AuditLog
from protos import dataplane_pb2 as pb
from protos import dataplane_pb2_grpc as pb_grpc

Frame = pb.Frame

#: A receiver acknowledges what it got from a peer at most this long after it arrived.
ACK_DELAY_S = 0.05
#: Bound on what a party retains for retransmission to ONE peer (sent, not yet acknowledged).
#: ``send`` waits (up to ``recv_timeout``) for acknowledgements past it; a single frame larger
#: than the bound is still sent when nothing else is retained.
RETAIN_FRAMES = 10_000
RETAIN_BYTES = 256 * 1024 * 1024
#: How long one reconnect attempt may take (TLS handshake + HELLO_ACK) before it is retried.
_ATTEMPT_S = 5.0
#: Backoff between reconnect attempts: first, cap (s).
_BACKOFF_S = (0.2, 2.0)
#: close() waits this long for peers to acknowledge the last frames (longer while one is away).
_LINGER_S = 5.0
#: gRPC codes on which a joined stream is worth resuming (the network, not a refusal).
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


def _stderr_event(message: str) -> None:
    print(f"fedcredit data plane: {message}", file=sys.stderr, flush=True)


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
    A stream that drops after joining is resumed within ``reconnect_window_s``
    (see the module docstring); past it every pending call fails naming the relay.
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
        reconnect_window_s: float = DEFAULT_RECONNECT_WINDOW_S,
        retain_frames: int = RETAIN_FRAMES,
        retain_bytes: int = RETAIN_BYTES,
        on_event: Callable[[str], None] | None = _stderr_event,
    ) -> None:
        if not session:
            raise ProtocolError(f"{identity.name}: a data-plane session id must be non-empty")
        if reconnect_window_s < 0:
            raise ProtocolError(f"{identity.name}: reconnect_window_s must be >= 0, got {reconnect_window_s}")
        self._id = identity
        self.relay_address = relay_address
        self.session = session
        self.audit = audit
        self.peer_timeout = peer_timeout
        self.recv_timeout = recv_timeout
        self.reconnect_window_s = reconnect_window_s
        self._retain = (retain_frames, retain_bytes)
        self._on_event = on_event
        self._server_name = server_name

        # receive side (guarded by _cond)
        self._cond = threading.Condition()
        self._inbox: dict[tuple[str, str], deque[bytes]] = {}
        self._in_seq: dict[str, int] = {}
        self._gone: dict[str, str] = {}
        self._away: dict[str, str] = {}  # peers the relay reported suspended (not fatal)
        self._heard: set[str] = set()  # peers that answered on the data plane (close() waits for their ACKs)
        self._peer_errors: dict[str, FedCreditError] = {}
        self._broken: FedCreditError | None = None
        self._closed = False
        self._acked = False
        self._aborted = False
        self._unacked: set[str] = set()  # senders whose latest frames this party has not acknowledged yet
        self._resyncing = False  # since this party's own reconnect: peers' retransmissions may be preceded by gaps
        self._synced: set[str] = set()
        self._stats = {"reconnects": 0, "retransmitted": 0, "duplicates_dropped": 0, "ahead_dropped": 0,
                       "acks_sent": 0}

        # send side (guarded by _send_cond; lock order: _send_cond before _cond, never the reverse)
        self._send_cond = threading.Condition()
        self._out_seq: dict[str, int] = {}
        self._retained: dict[str, deque[Frame]] = {}  # sent, not yet acknowledged (for retransmission)
        self._retained_bytes: dict[str, int] = {}
        self._sent_upto: dict[str, int] = {}  # highest seq put on a stream
        self._peer_has: dict[str, int] = {}  # highest seq the peer acknowledged
        self._hold: set[str] = set()  # peers not to transmit to until they say what they hold
        self._down = False  # between a drop and the resumed stream's HELLO_ACK
        self._keys: dict[str, X25519PublicKey] = {}
        self._keys_lock = threading.Lock()
        for peer, pem in (peer_certs or {}).items():
            if peer != identity.name:
                self._keys[peer] = self._verified_key(peer, pem)

        self._outq: queue.Queue[Frame | None] = queue.Queue()
        self._channel, self._stub = self._dial()
        self._outq.put(Frame(kind=Frame.HELLO, session=session))
        # No wait_for_ready: a refused TLS handshake must fail now with its reason,
        # not be retried silently until a timeout.
        self._call = self._stub.Connect(self._requests(self._outq))
        self._reader = threading.Thread(target=self._read_loop, name=f"dataplane-{identity.name}-{session}", daemon=True)
        self._reader.start()
        self._acker = threading.Thread(target=self._ack_loop, name=f"dataplane-ack-{identity.name}", daemon=True)
        self._acker.start()
        try:
            self._wait_ready(connect_timeout)
        except BaseException:
            self._teardown()
            raise

    # ------------------------------------------------------------------ public
    @property
    def me(self) -> str:
        return self._id.name

    def stats(self) -> dict[str, int]:
        """Counters: reconnects, retransmitted frames, duplicates/ahead frames dropped, ACKs sent, retained now."""
        with self._send_cond:
            retained = sum(len(d) for d in self._retained.values())
            retained_bytes = sum(self._retained_bytes.values())
        with self._cond:
            return {**self._stats, "retained_frames": retained, "retained_bytes": retained_bytes}

    def send(self, to: str, tag: str, payload: bytes) -> None:
        """Seal ``payload`` to ``to`` and queue it (returns before delivery)."""
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload from {self.me} to {to} ({tag}) must be bytes, got {type(payload).__name__}")
        self._check_usable(to, f"send '{tag}' to")
        key = self._peer_key(to)
        with self._send_cond:
            self._wait_for_room(to, tag, len(payload))
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
            frame = Frame(kind=Frame.DATA, session=self.session, receiver=to, tag=tag, seq=seq, payload=sealed)
            self._retained.setdefault(to, deque()).append(frame)
            self._retained_bytes[to] = self._retained_bytes.get(to, 0) + len(sealed)
            if not self._down and to not in self._hold:
                self._outq.put(frame)
                self._sent_upto[to] = seq

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
        """Wait (bounded) until peers acknowledged what was sent, say goodbye, let the relay forward
        everything already sent, then hang up.

        Why wait: a peer whose stream drops just now would otherwise resume to find this party gone
        and its last messages lost with the dropped stream.
        """
        with self._cond:
            if self._closed:
                return
        self._linger()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        with self._send_cond:
            self._outq.put(Frame(kind=Frame.BYE, session=self.session))
            self._outq.put(None)  # half-close: the relay routes what we sent, then ends its side
            self._send_cond.notify_all()
        self._reader.join(timeout=10.0)
        self._teardown()

    def __enter__(self) -> RelayTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RelayTransport(me={self.me!r}, session={self.session!r}, relay={self.relay_address!r})"

    # ---------------------------------------------------------------- internals
    def _event(self, message: str) -> None:
        if self._on_event is not None:
            try:
                self._on_event(f"{self.me}: {message}")
            except Exception:  # noqa: BLE001 - a logging hook must not break the data plane
                pass

    def _dial(self) -> tuple[grpc.Channel, pb_grpc.RelayStub]:
        opts: list[tuple[str, object]] = list(GRPC_OPTIONS)
        if self._server_name:
            opts.append(("grpc.ssl_target_name_override", self._server_name))
        channel = grpc.secure_channel(self.relay_address, channel_credentials(self._id), options=opts)
        return channel, pb_grpc.RelayStub(channel)

    def _teardown(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        with self._send_cond:
            self._outq.put(None)
            self._send_cond.notify_all()
            call, channel = self._call, self._channel
        call.cancel()
        channel.close()

    def _linger(self) -> None:
        start = time.monotonic()
        with self._send_cond:
            while True:
                with self._cond:
                    if self._broken is not None or not self._acked:
                        return
                    gone, away, heard = set(self._gone), bool(self._away), set(self._heard)
                waiting = [p for p, frames in self._retained.items()
                           if frames and p not in gone and (p in heard or p in self._hold)]
                if not waiting:
                    return
                limit = self.reconnect_window_s + _LINGER_S if (self._down or away or self._hold) else _LINGER_S
                left = start + limit - time.monotonic()
                if left <= 0:
                    self._event(f"closing with frames to {', '.join(sorted(waiting))} not acknowledged")
                    return
                self._send_cond.wait(min(left, 0.2))

    def _wait_for_room(self, to: str, tag: str, size: int) -> None:
        """Block (send lock held) while ``to`` has not acknowledged ``retain_*`` of earlier frames."""
        frames, limit = self._retain
        deadline = time.monotonic() + self.recv_timeout
        while True:
            held = self._retained.get(to)
            if not held or (len(held) < frames and self._retained_bytes.get(to, 0) + size <= limit):
                return
            self._check_usable(to, f"send '{tag}' to")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProtocolError(
                    f"{self.me}: party '{to}' has not acknowledged {len(held)} frame(s) / "
                    f"{self._retained_bytes.get(to, 0)} bytes within {self.recv_timeout:g} s (retained for "
                    f"retransmission, limits {frames} frames / {limit} bytes per peer; session {self.session!r})"
                )
            self._send_cond.wait(min(left, 1.0))

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

    @staticmethod
    def _requests(outq: queue.Queue[Frame | None]) -> Iterator[Frame]:
        while True:
            frame = outq.get()
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
        deadline = time.monotonic() + self.reconnect_window_s
        while True:
            with self._send_cond:
                stub = self._stub
            try:
                reply = stub.Directory(
                    pb.DirectoryRequest(names=[name], wait_seconds=self.peer_timeout), timeout=self.peer_timeout + 30.0
                )
                break
            except (grpc.RpcError, ValueError) as exc:  # ValueError: the channel was closed by a reconnect
                code = exc.code() if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") else None
                if (code in _RETRYABLE or isinstance(exc, ValueError)) and time.monotonic() < deadline:
                    self._check_usable(name, "look up")
                    with self._send_cond:  # the stream is being resumed on a new channel: ask again there
                        self._send_cond.wait_for(lambda: not self._down, timeout=1.0)
                    continue
                why = _describe_rpc_error(exc) if isinstance(exc, grpc.RpcError) else str(exc)
                raise ProtocolError(
                    f"{self.me}: relay at {self.relay_address} directory lookup for party '{name}' failed: {why}"
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
        with self._send_cond:
            self._send_cond.notify_all()

    # ------------------------------------------------------------- the stream
    def _read_loop(self) -> None:
        call = self._call
        while call is not None:
            error, retryable = self._pump(call)
            if error is None:
                return  # closing
            with self._cond:
                joined = self._acked
            if not (retryable and joined and self.reconnect_window_s > 0):
                self._fail(error)
                return
            call = self._reconnect(error)

    def _pump(self, call: object) -> tuple[FedCreditError | None, bool]:
        """Read one stream to its end: (None, _) when closing, else (why it ended, worth resuming)."""
        try:
            for frame in call:  # type: ignore[attr-defined]
                self._dispatch(frame)
        except grpc.RpcError as exc:
            with self._cond:
                if self._closed:
                    return None, False
            code = exc.code() if hasattr(exc, "code") else None
            return self._connect_error(exc), code in _RETRYABLE
        except FedCreditError as exc:
            return exc, False
        except Exception as exc:  # never die silently: waiters must learn why
            return ProtocolError(f"{self.me}: data-plane reader failed: {type(exc).__name__}: {exc}"), False
        with self._cond:
            if self._closed:
                return None, False
        return ProtocolError(f"{self.me}: relay at {self.relay_address} ended the stream for session {self.session!r}"), True

    def _reconnect(self, first: FedCreditError) -> object | None:
        """Resume the session on a new stream within the window; the new call, or None (failed/closing)."""
        window = self.reconnect_window_s
        deadline = time.monotonic() + window
        with self._send_cond:
            self._down = True
            self._outq.put(None)
            old_call, old_channel = self._call, self._channel
        old_call.cancel()
        old_channel.close()
        self._event(f"lost its stream to the relay at {self.relay_address} (session {self.session!r}): {first}; "
                    f"reconnecting for up to {window:g} s")
        delay, last, attempts = _BACKOFF_S[0], str(first), 0
        while True:
            with self._cond:
                if self._closed:
                    return None
                acks = dict(self._in_seq)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            attempts += 1
            channel, stub = self._dial()
            outq: queue.Queue[Frame | None] = queue.Queue()
            outq.put(Frame(kind=Frame.HELLO, session=self.session, resume=True, acks=acks))
            call = stub.Connect(self._requests(outq))
            with self._send_cond:
                self._outq, self._call, self._channel, self._stub = outq, call, channel, stub
            budget = min(_ATTEMPT_S, left)
            timed_out = threading.Event()

            def give_up(call: object = call, flag: threading.Event = timed_out) -> None:
                flag.set()
                call.cancel()  # type: ignore[attr-defined]

            timer = threading.Timer(budget, give_up)
            timer.daemon = True
            timer.start()
            try:
                first_frame = next(call)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                last = (f"no answer from the relay within {budget:.1f} s" if timed_out.is_set()
                        else _describe_rpc_error(exc))
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    self._fail(SecurityError(f"{self.me}: the relay at {self.relay_address} refused to resume "
                                             f"session {self.session!r}: {last}"))
                    return None
            except StopIteration:
                last = "the relay ended the stream before HELLO_ACK"
            else:
                timer.cancel()
                if first_frame.kind == Frame.HELLO_ACK and first_frame.receiver == self.me:
                    self._resumed(time.monotonic() - (deadline - window), attempts)
                    return call
                if first_frame.kind == Frame.HELLO_ACK:
                    self._fail(SecurityError(f"{self.me}: relay authenticated the resumed connection as "
                                             f"{first_frame.receiver!r}, not {self.me!r}"))
                else:
                    self._fail(ProtocolError(f"{self.me}: the relay at {self.relay_address} refused to resume "
                                             f"session {self.session!r}: {first_frame.error}"))
                outq.put(None)
                return None
            finally:
                timer.cancel()
            outq.put(None)
            channel.close()
            with self._cond:
                self._cond.wait(min(delay, max(deadline - time.monotonic(), 0.0)))  # woken early by close()
            delay = min(delay * 2, _BACKOFF_S[1])
        self._fail(ProtocolError(
            f"{self.me}: lost the connection to the relay at {self.relay_address} (session {self.session!r}) and "
            f"could not reconnect within {window:g} s ({attempts} attempt(s); last: {last})"
        ))
        return None

    def _resumed(self, after: float, attempts: int) -> None:
        """The relay handed the place back: decide per peer what may be transmitted now."""
        with self._cond:
            self._stats["reconnects"] += 1
            self._resyncing, self._synced = True, set()
            self._unacked.clear()  # the HELLO carried them
        with self._send_cond:
            for peer, frames in self._retained.items():
                if self._sent_upto.get(peer, 0) > self._peer_has.get(peer, 0):
                    self._hold.add(peer)  # some may have died with the old stream: wait for what it holds
                elif peer not in self._hold:
                    for f in frames:  # only never-transmitted frames are left: in order, at once
                        self._outq.put(f)
                        self._sent_upto[peer] = f.seq
            self._down = False
            self._send_cond.notify_all()
        self._event(f"resumed session {self.session!r} after {after:.1f} s ({attempts} attempt(s))")

    def _retransmit(self, peer: str, has: int, *, reply: bool) -> None:
        """``peer`` holds our frames up to ``has``: forget those, send it the rest, stop holding."""
        with self._send_cond:
            self._trim(peer, has)
            if self._down:
                return  # our own resume will ask again
            n = 0
            for f in self._retained.get(peer, ()):
                self._outq.put(f)
                self._sent_upto[peer] = f.seq
                n += 1
            self._hold.discard(peer)
            if reply:
                with self._cond:
                    mine = self._in_seq.get(peer, 0)
                self._outq.put(Frame(kind=Frame.RESUME, session=self.session, receiver=peer, seq=mine))
            self._send_cond.notify_all()
        if n:
            with self._cond:
                self._stats["retransmitted"] += n

    def _trim(self, peer: str, has: int) -> None:
        """Forget retained frames ``peer`` acknowledged (send lock held)."""
        has = min(has, self._out_seq.get(peer, 0))  # a claim beyond what was sent is a lying relay: ignore the rest
        if has <= self._peer_has.get(peer, 0):
            return
        self._peer_has[peer] = has
        frames = self._retained.get(peer)
        while frames and frames[0].seq <= has:
            self._retained_bytes[peer] -= len(frames.popleft().payload)
        self._send_cond.notify_all()

    def _ack_loop(self) -> None:
        """Acknowledge received frames to their senders, coalesced over ``ACK_DELAY_S``."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._unacked) or self._closed or self._broken is not None)
                if self._closed or self._broken is not None:
                    return
            time.sleep(ACK_DELAY_S)
            with self._cond:
                due = {p: self._in_seq.get(p, 0) for p in self._unacked}
                self._unacked.clear()
            with self._send_cond:
                if self._down:
                    continue
                for peer, seq in due.items():
                    self._outq.put(Frame(kind=Frame.ACK, session=self.session, receiver=peer, seq=seq))
            with self._cond:
                self._stats["acks_sent"] += len(due)

    def _connect_error(self, exc: grpc.RpcError) -> FedCreditError:
        """Turn a stream failure into an error saying what to check."""
        text = _describe_rpc_error(exc)
        code = exc.code() if hasattr(exc, "code") else None
        where = f"the relay at {self.relay_address}"
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return SecurityError(f"{self.me}: {where} refused this party: {text}")
        if self._acked:
            return ProtocolError(f"{self.me}: lost the connection to {where} (session {self.session!r}): {text}")
        mismatch = None if self._server_name else address_mismatch(self.relay_address, self._id)
        if mismatch:  # gRPC says only "peer name not in certificate" (or times out); say which names it has
            return SecurityError(f"{self.me}: {where} ([coordinator].relay_address): {mismatch}")
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
        elif kind == Frame.ACK:
            self._heard_from(frame.sender)
            with self._send_cond:
                self._trim(frame.sender, frame.seq)
        elif kind == Frame.RESUME:
            with self._cond:
                self._heard.add(frame.sender)
                # It answers our PEER_RESUMED after retransmitting: every frame of its that could
                # follow a gap came before this, so from here a gap is an error again.
                self._synced.add(frame.sender)
            self._retransmit(frame.sender, frame.seq, reply=False)
        elif kind == Frame.PEER_RESUMED:
            with self._cond:
                self._away.pop(frame.sender, None)
            self._heard_from(frame.sender)
            self._retransmit(frame.sender, frame.seq, reply=True)
        elif kind == Frame.PEER_JOINED:
            with self._send_cond:
                held = frame.sender in self._hold
            if held:  # we resumed while it had not joined yet: what we sent before may be lost
                self._retransmit(frame.sender, 0, reply=False)
        elif kind == Frame.PEER_SUSPENDED:
            with self._send_cond:
                self._hold.add(frame.sender)  # keep retaining, stop transmitting until it is back
            with self._cond:
                self._away[frame.sender] = frame.error
                self._cond.notify_all()
            self._event(frame.error or f"party {frame.sender!r} lost its connection to the relay")
        elif kind == Frame.PEER_GONE:
            with self._send_cond:
                self._retained.pop(frame.sender, None)
                self._retained_bytes.pop(frame.sender, None)
                self._hold.discard(frame.sender)
                self._send_cond.notify_all()
            with self._cond:
                self._away.pop(frame.sender, None)
                self._gone[frame.sender] = frame.error or f"party {frame.sender!r} left"
                self._cond.notify_all()
        elif kind == Frame.ERROR:
            if not self._acked or not frame.receiver:
                if self._acked:
                    raise ProtocolError(f"{self.me}: relay at {self.relay_address}: {frame.error}")
                raise ProtocolError(f"{self.me}: relay at {self.relay_address} refused: {frame.error}")
            err = ProtocolError(f"{self.me}: relay could not deliver '{frame.tag}' to party '{frame.receiver}': {frame.error}")
            with self._cond:
                self._peer_errors.setdefault(frame.receiver, err)
                self._cond.notify_all()
        # other kinds are ignored (forward compatibility)

    def _heard_from(self, peer: str) -> None:
        with self._cond:
            self._heard.add(peer)

    def _on_data(self, frame: Frame) -> None:
        sender = frame.sender
        with self._cond:
            expected = self._in_seq.get(sender, 0) + 1
            if frame.seq < expected and frame.session == self.session and frame.receiver == self.me:
                # Already received: a retransmission after a reconnect (or a relay replaying it).  Its
                # content was delivered once; dropping it changes nothing, so it need not even be opened.
                self._stats["duplicates_dropped"] += 1
                self._unacked.add(sender)  # tell the sender again what we hold
                self._cond.notify_all()
                return
            if frame.seq > expected and self._resyncing and sender not in self._synced:
                # Right after our own reconnect: frames queued or in flight before the peer learned of it
                # may follow a gap; the peer retransmits everything after our HELLO's ack, gap included.
                self._stats["ahead_dropped"] += 1
                return
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
            if frame.seq != expected:
                raise SecurityError(
                    f"{self.me}: message {frame.seq} from party '{sender}' arrived when {expected} was expected "
                    "(dropped or reordered in transit)"
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
            self._heard.add(sender)
            self._synced.add(sender)
            self._unacked.add(sender)
            if frame.tag == ABORT_TAG:
                self._peer_errors.setdefault(sender, PeerAborted(self.me, sender, plaintext.decode("utf-8", "replace")))
            else:
                self._inbox.setdefault((sender, frame.tag), deque()).append(plaintext)
            self._cond.notify_all()
