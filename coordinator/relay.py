"""The data-plane relay: parties dial out to it, it forwards sealed frames between them.

Why a relay: banks rarely accept inbound connections, and Flower's control plane
costs seconds per hop — far too slow for vertical protocols with hundreds of
exchanges.  Every party keeps one outbound mutual-TLS bidirectional stream per
session (job/run) to this relay, hosted by the coordinator.

What the relay can and cannot do (see docs/dataplane.md):

* It authenticates each party by its client certificate (federation CA, mutual
  TLS) and stamps ``Frame.sender`` from the certificate CN: a client cannot spoof
  its sender name.
* It sees session, sender, receiver, tag, seq, sizes and timing.  Payloads are
  sealed end-to-end (crypto.envelope) with keys it does not have: it never
  decrypts anything.
* Frames for a party that has not connected yet are queued (bounded).  If the
  queue overflows, or the party does not show up within ``pending_timeout``, the
  sender gets an ERROR frame naming the party.  When a party leaves a session its
  peers get a PEER_GONE frame, so a peer blocked in ``recv`` fails at once
  instead of hanging.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from crypto.certs import Identity, verify_peer
from crypto.tls import peer_identity, server_credentials
from fedcredit.dataplane import GRPC_OPTIONS
from fedcredit.errors import ConfigError, SecurityError
from protos import dataplane_pb2 as pb
from protos import dataplane_pb2_grpc as pb_grpc

Frame = pb.Frame


_MAX_DIRECTORY_WAIT = 600.0
MAX_SESSION_CHARS = 256


def _frame_size(frame: Frame) -> int:
    return len(frame.payload) + 256


class _Outbox:
    """Frames waiting to be written to one connected party's response stream.

    Bounded in bytes: a sender that outpaces a slow receiver blocks in ``put``,
    which stops the relay reading that sender's stream, so HTTP/2 flow control
    pushes back on the sender instead of the relay buffering without limit.
    """

    def __init__(self, max_bytes: int) -> None:
        self._dq: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._bytes = 0
        self._max = max_bytes
        self.closed = False

    def put(self, frame: Frame, *, force: bool = False) -> bool:
        """Queue ``frame``; False if the outbox is closed (the party left)."""
        size = _frame_size(frame)
        with self._cond:
            while not force and not self.closed and self._dq and self._bytes + size > self._max:
                self._cond.wait()
            if self.closed:
                return False
            self._dq.append(frame)
            self._bytes += size
            self._cond.notify_all()
            return True

    def get(self) -> Frame | None:
        """Next frame to write, or None once closed."""
        with self._cond:
            while not self._dq and not self.closed:
                self._cond.wait()
            if self.closed:
                return None
            frame = self._dq.popleft()
            self._bytes -= _frame_size(frame)
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._dq.clear()
            self._cond.notify_all()


@dataclass
class _Conn:
    name: str
    role: str
    session: str
    outbox: _Outbox
    orderly: bool = False


@dataclass
class _Pending:
    """Frames for a party that has not joined the session yet."""

    frames: deque[tuple[Frame, _Conn]] = field(default_factory=deque)
    bytes: int = 0
    timer: threading.Timer | None = None


def _error_frame(session: str, receiver: str, tag: str, seq: int, message: str) -> Frame:
    return Frame(kind=Frame.ERROR, session=session, receiver=receiver, tag=tag, seq=seq, error=message)


class RelayServicer(pb_grpc.RelayServicer):
    """Routes sealed frames between authenticated parties, per session.

    ``capture`` (tests, leakage audits) is called with every frame the relay
    receives from a party, after the relay has stamped ``sender``: exactly what a
    curious relay operator could record.
    """

    def __init__(
        self,
        ca_pem: bytes,
        *,
        capture: Callable[[Frame], None] | None = None,
        directory_certs: Iterable[bytes] = (),
        allowed_roles: Sequence[str] = ("party",),
        pending_timeout: float = 120.0,
        max_pending_frames: int = 10_000,
        max_pending_bytes: int = 512 * 1024 * 1024,
        outbox_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._ca_pem = ca_pem
        self._capture = capture
        self._allowed_roles = tuple(allowed_roles)
        self.pending_timeout = pending_timeout
        self.max_pending_frames = max_pending_frames
        self.max_pending_bytes = max_pending_bytes
        self._outbox_bytes = outbox_bytes
        self._cond = threading.Condition()
        self._conns: dict[tuple[str, str], _Conn] = {}
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._gone: dict[tuple[str, str], str] = {}
        self._directory: dict[str, tuple[str, bytes]] = {}
        self._traffic: dict[tuple[str, str, str], list[int]] = {}
        self._stopped = False
        for pem in directory_certs:
            self.register_certificate(pem)

    # ---------------------------------------------------------------- directory
    def register_certificate(self, cert_pem: bytes) -> str:
        """Pre-register a party's public certificate (e.g. from the job config).

        Lets a sender seal to a party that has not connected yet; its frames are
        then queued.  Verified against the CA so the directory never serves junk.
        """
        info = verify_peer(cert_pem, self._ca_pem)
        with self._cond:
            self._directory[info.name] = (info.role, bytes(cert_pem))
            self._cond.notify_all()
        return info.name

    def Directory(self, request: pb.DirectoryRequest, context: grpc.ServicerContext) -> pb.DirectoryReply:
        try:
            peer_identity(context, ca_pem=self._ca_pem)
        except SecurityError as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        names = list(dict.fromkeys(request.names))
        wait = min(max(request.wait_seconds, 0.0), _MAX_DIRECTORY_WAIT)
        remaining = context.time_remaining()
        if remaining is not None:
            wait = min(wait, max(remaining - 0.5, 0.0))
        with self._cond:
            if names and wait > 0:
                self._cond.wait_for(
                    lambda: self._stopped or all(n in self._directory for n in names), timeout=wait
                )
            wanted = names or sorted(self._directory)
            reply = pb.DirectoryReply()
            for n in wanted:
                entry = self._directory.get(n)
                if entry is None:
                    reply.missing.append(n)
                else:
                    reply.parties.add(name=n, role=entry[0], cert_pem=entry[1])
        return reply

    # ------------------------------------------------------------------ streams
    def Connect(self, request_iterator: Iterator[Frame], context: grpc.ServicerContext) -> Iterator[Frame]:
        try:
            name, role = peer_identity(context, ca_pem=self._ca_pem)
        except SecurityError as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        if role not in self._allowed_roles:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate for {name!r} has role {role!r}; the data plane admits only {', '.join(self._allowed_roles)}",
            )
        pems = context.auth_context().get("x509_pem_cert") or []
        try:
            hello = next(request_iterator)
        except (StopIteration, grpc.RpcError):
            return
        if hello.kind != Frame.HELLO or not hello.session or len(hello.session) > MAX_SESSION_CHARS:
            yield _error_frame(
                hello.session[:MAX_SESSION_CHARS], "", "", 0,
                f"first frame on a relay stream must be HELLO with a session id of 1..{MAX_SESSION_CHARS} characters",
            )
            return
        session = hello.session
        conn = _Conn(name=name, role=role, session=session, outbox=_Outbox(self._outbox_bytes))
        with self._cond:
            if self._stopped:
                context.abort(grpc.StatusCode.UNAVAILABLE, "relay is shutting down")
            if (session, name) in self._conns:
                refused = f"party {name!r} is already connected to session {session!r}; a second stream is refused"
            else:
                refused = ""
                self._conns[(session, name)] = conn
                self._gone.pop((session, name), None)
                if pems:
                    self._directory[name] = (role, bytes(pems[0]))
                pending = self._pending.pop((session, name), None)
                if pending is not None:
                    if pending.timer is not None:
                        pending.timer.cancel()
                    for frame, _sender in pending.frames:
                        conn.outbox.put(frame, force=True)
                # Peers that already left (possibly after queueing frames for us): say so
                # after their frames, or a recv waiting on them would hang.
                for (s, other), why in self._gone.items():
                    if s == session:
                        conn.outbox.put(
                            Frame(kind=Frame.PEER_GONE, session=session, sender=other, error=f"party {other!r} {why}"),
                            force=True,
                        )
                self._cond.notify_all()
        if refused:
            yield _error_frame(session, name, "", 0, refused)
            return
        context.add_callback(conn.outbox.close)  # RPC ended (client gone, relay stopping)
        reader = threading.Thread(
            target=self._read_loop, args=(conn, request_iterator), name=f"relay-read-{session}-{name}", daemon=True
        )
        reader.start()
        yield Frame(kind=Frame.HELLO_ACK, session=session, receiver=name)
        while True:
            out = conn.outbox.get()
            if out is None:
                return
            yield out

    def _read_loop(self, conn: _Conn, request_iterator: Iterator[Frame]) -> None:
        reason = "lost its connection to the relay"
        try:
            for frame in request_iterator:
                if frame.kind == Frame.BYE:
                    conn.orderly = True
                    continue
                self._route(conn, frame)
            # Without BYE, an ended stream is a vanished party too (a killed process can
            # look like a half-close to the server as often as like a cancellation).
            if conn.orderly:
                reason = "closed its connection"
        except grpc.RpcError:
            pass  # cancelled: process killed, network cut, or relay stopping
        except Exception as exc:  # keep the relay up; tell the peers why
            reason = f"relay error while reading its stream: {type(exc).__name__}: {exc}"
        finally:
            self._disconnect(conn, reason)

    def _route(self, conn: _Conn, frame: Frame) -> None:
        session, sender = conn.session, conn.name
        if frame.kind != Frame.DATA:
            conn.outbox.put(
                _error_frame(session, frame.receiver, frame.tag, frame.seq, f"unexpected frame kind {frame.kind}"),
                force=True,
            )
            return
        if frame.session and frame.session != session:
            conn.outbox.put(
                _error_frame(
                    session, frame.receiver, frame.tag, frame.seq,
                    f"frame for session {frame.session!r} sent on the stream for session {session!r}; dropped",
                ),
                force=True,
            )
            return
        # The one field that matters most: who sent it comes from the certificate.
        frame.sender = sender
        frame.session = session
        receiver = frame.receiver
        if self._capture is not None:
            self._capture(frame)
        if not receiver or receiver == sender:
            conn.outbox.put(
                _error_frame(session, receiver, frame.tag, frame.seq, f"invalid receiver {receiver!r} for sender {sender!r}"),
                force=True,
            )
            return
        key = (session, receiver)
        error = ""
        with self._cond:
            stats = self._traffic.setdefault((session, sender, receiver), [0, 0])
            stats[0] += 1
            stats[1] += len(frame.payload)
            target = self._conns.get(key)
            if target is None:
                if key in self._gone:
                    error = f"party {receiver!r} left session {session!r} ({self._gone[key]}); frame dropped"
                else:
                    error = self._queue_pending(key, frame, conn)
        if target is not None and not target.outbox.put(frame):
            error = f"party {receiver!r} disconnected from session {session!r} before the frame was delivered"
        if error:
            conn.outbox.put(_error_frame(session, receiver, frame.tag, frame.seq, error), force=True)

    def _queue_pending(self, key: tuple[str, str], frame: Frame, sender: _Conn) -> str:
        """Queue for a party not connected yet (lock held); returns an error or ''."""
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending()
            pending.timer = threading.Timer(self.pending_timeout, self._pending_expired, args=(key, pending))
            pending.timer.daemon = True
            pending.timer.start()
        size = len(frame.payload)
        if len(pending.frames) >= self.max_pending_frames or pending.bytes + size > self.max_pending_bytes:
            return (
                f"relay queue for party {key[1]!r} (not connected to session {key[0]!r}) is full: "
                f"{len(pending.frames)} frames / {pending.bytes} bytes queued, limits "
                f"{self.max_pending_frames} frames / {self.max_pending_bytes} bytes; frame dropped"
            )
        pending.frames.append((frame, sender))
        pending.bytes += size
        return ""

    def _forget_if_idle(self, session: str) -> None:
        """Drop who-left records of a session nobody is in and nothing is queued for (lock held)."""
        if any(k[0] == session for k in self._conns) or any(k[0] == session for k in self._pending):
            return
        for k in [k for k in self._gone if k[0] == session]:
            del self._gone[k]

    def _pending_expired(self, key: tuple[str, str], pending: _Pending) -> None:
        with self._cond:
            if self._pending.get(key) is not pending:
                return  # the party connected (or the queue was replaced) in the meantime
            del self._pending[key]
            self._forget_if_idle(key[0])
        session, receiver = key
        dropped: dict[int, tuple[_Conn, int, Frame]] = {}
        for frame, sender in pending.frames:
            n = dropped.get(id(sender), (sender, 0, frame))[1]
            dropped[id(sender)] = (sender, n + 1, frame)
        for sender, n, frame in dropped.values():
            sender.outbox.put(
                _error_frame(
                    session, receiver, frame.tag, frame.seq,
                    f"party {receiver!r} did not connect to session {session!r} within "
                    f"{self.pending_timeout:g} s; {n} queued frame(s) dropped",
                ),
                force=True,
            )

    def _disconnect(self, conn: _Conn, reason: str) -> None:
        session, name = conn.session, conn.name
        with self._cond:
            if self._conns.get((session, name)) is conn:
                del self._conns[(session, name)]
                self._gone[(session, name)] = reason
            peers = [c for (s, _n), c in self._conns.items() if s == session]
            self._forget_if_idle(session)
        for peer in peers:
            peer.outbox.put(
                Frame(kind=Frame.PEER_GONE, session=session, sender=name, error=f"party {name!r} {reason}"),
                force=True,
            )
        conn.outbox.close()

    # ---------------------------------------------------------------- reporting
    def connected(self, session: str | None = None) -> list[tuple[str, str]]:
        """(session, party) pairs currently connected."""
        with self._cond:
            return sorted(k for k in self._conns if session is None or k[0] == session)

    def traffic(self, session: str) -> dict[tuple[str, str], tuple[int, int]]:
        """{(sender, receiver): (frames, sealed bytes)} the relay forwarded in ``session``."""
        with self._cond:
            return {(s, r): (v[0], v[1]) for (sess, s, r), v in self._traffic.items() if sess == session}

    def shutdown(self) -> None:
        """Close every stream (their peers see the RPC end) and wake directory waiters."""
        with self._cond:
            self._stopped = True
            conns = list(self._conns.values())
            pendings = list(self._pending.values())
            self._pending.clear()
            self._cond.notify_all()
        for p in pendings:
            if p.timer is not None:
                p.timer.cancel()
        for c in conns:
            c.outbox.close()


@dataclass
class RelayHandle:
    """A running relay: ``port``, ``address``, the ``server`` (shared with extra services)."""

    server: grpc.Server
    servicer: RelayServicer
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, grace: float | None = 1.0) -> None:
        self.servicer.shutdown()
        self.server.stop(grace).wait()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server terminates (daemon mode)."""
        return self.server.wait_for_termination(timeout)

    def __enter__(self) -> RelayHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_relay(
    identity: Identity,
    address: str = "127.0.0.1:0",
    *,
    capture: Callable[[Frame], None] | None = None,
    extra_servicers: Sequence[Callable[[grpc.Server], None]] = (),
    directory_certs: Iterable[bytes] = (),
    pending_timeout: float = 120.0,
    max_pending_frames: int = 10_000,
    max_pending_bytes: int = 512 * 1024 * 1024,
    max_workers: int = 256,
) -> RelayHandle:
    """Start the relay on ``address`` with mutual TLS from ``identity`` (the coordinator's).

    ``extra_servicers`` are called with the ``grpc.Server`` before it starts, so
    other services (the coordinator's Control service) share the port and the
    mutual-TLS credentials.  Each connected party stream holds one worker thread:
    ``max_workers`` bounds concurrent streams plus unary calls.
    """
    servicer = RelayServicer(
        identity.ca_pem,
        capture=capture,
        directory_certs=directory_certs,
        pending_timeout=pending_timeout,
        max_pending_frames=max_pending_frames,
        max_pending_bytes=max_pending_bytes,
    )
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="relay"),
        options=list(GRPC_OPTIONS),
    )
    pb_grpc.add_RelayServicer_to_server(servicer, server)
    for register in extra_servicers:
        register(server)
    host = address.rsplit(":", 1)[0] if ":" in address else address
    try:
        port = server.add_secure_port(address, server_credentials(identity))
    except RuntimeError as exc:
        raise ConfigError(f"relay cannot listen on {address!r}: {exc}") from None
    if not port:
        raise ConfigError(f"relay cannot listen on {address!r} (address in use or invalid)")
    server.start()
    return RelayHandle(server=server, servicer=servicer, host=host or "127.0.0.1", port=port)
