"""The data-plane relay: parties dial out to it, it forwards sealed frames between them.

Why a relay: banks rarely accept inbound connections, and Flower's control plane
costs seconds per hop — far too slow for vertical protocols with hundreds of
exchanges.  Every party keeps one outbound mutual-TLS bidirectional stream per
session (job/run) to this relay, hosted by the coordinator.

What the relay can and cannot do (see docs/dataplane.md):

* It authenticates each party by its client certificate (federation CA, mutual
  TLS) and stamps ``Frame.sender`` from the certificate CN: a client cannot spoof
  its sender name.
* It authorises by membership, not only by certificate: a session id is a run id,
  and ``membership(session)`` (the coordinator's run registry) names the parties of
  that run's job.  A party not among them cannot join the session (PERMISSION_DENIED),
  a session that is not an active run has no members, and a frame for a receiver
  outside the job is refused, never queued.
* It bounds what a sender may cost it: frames for a member that has not connected
  yet are queued under per-receiver, per-sender and global caps (frames and bytes);
  notices to a party that does not read its own stream are capped too, and past the
  cap its stream is closed.  Past a cap the sender gets an ERROR frame naming the
  cap; memory does not grow.
* It sees session, sender, receiver, tag, seq, sizes and timing.  Payloads are
  sealed end-to-end (crypto.envelope) with keys it does not have: it never
  decrypts anything.
* Queued frames whose receiver does not show up within ``pending_timeout`` are
  dropped and the sender gets an ERROR frame naming the party.  When a party leaves
  a session its peers get a PEER_GONE frame, so a peer blocked in ``recv`` fails at
  once instead of hanging.
* A party whose stream drops without BYE is *suspended*, not gone: its place is held for
  ``reconnect_window_s`` (frames for it are queued under the same caps, peers get a
  non-fatal PEER_SUSPENDED) and only the same certificate may resume it (HELLO with
  ``resume``).  On resume its peers get PEER_RESUMED carrying what it holds of their
  frames, and retransmit the rest themselves; the relay never interprets seq numbers.
  When the window ends, peers get PEER_GONE "… did not reconnect within N s".
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from crypto.certs import Identity, verify_peer
from crypto.tls import peer_identity, server_credentials
from fedcredit.dataplane import DEFAULT_RECONNECT_WINDOW_S, GRPC_OPTIONS
from fedcredit.errors import ConfigError, SecurityError
from protos import dataplane_pb2 as pb
from protos import dataplane_pb2_grpc as pb_grpc

Frame = pb.Frame


_MAX_DIRECTORY_WAIT = 600.0
MAX_SESSION_CHARS = 256
#: Frames the relay itself writes into a party's outbox (capped by ``notice_bytes``).
_NOTICES = (Frame.ERROR, Frame.PEER_GONE, Frame.PEER_SUSPENDED, Frame.PEER_RESUMED, Frame.PEER_JOINED)
#: Party-to-party frames the relay routes: sealed DATA, and the two unsealed resumption controls.
_ROUTED = (Frame.DATA, Frame.ACK, Frame.RESUME)
#: How long ``RelayHandle.stop`` lets streams flush their "relay is shutting down" notice.
_DRAIN_S = 1.0

#: session id -> the names of the parties that may use it (a run's job parties), or None when the
#: session is not an active run.  The coordinator passes ``Registry.job_parties``.
Membership = Callable[[str], Collection[str] | None]


def _frame_size(frame: Frame) -> int:
    """Bytes a queued frame is charged: payload and error text plus a fixed allowance for the other fields."""
    return len(frame.payload) + len(frame.error) + 256


@dataclass(frozen=True)
class QueueCaps:
    """Bounds on frames the relay holds for parties that have not connected yet (frames, bytes).

    Why three: per receiver, so one slow party cannot take every slot; per sender
    (over all its sessions), so one party cannot fill the relay for everyone; global,
    so the sum of all of it is a number the coordinator's memory can hold.
    """

    receiver_frames: int = 10_000
    receiver_bytes: int = 256 * 1024 * 1024
    sender_frames: int = 10_000
    sender_bytes: int = 256 * 1024 * 1024
    total_frames: int = 50_000
    total_bytes: int = 1024 * 1024 * 1024


class _Outbox:
    """Frames waiting to be written to one connected party's response stream.

    Bounded in bytes: a sender that outpaces a slow receiver blocks in ``put``,
    which stops the relay reading that sender's stream, so HTTP/2 flow control
    pushes back on the sender instead of the relay buffering without limit.
    """

    def __init__(self, max_bytes: int, max_notice_bytes: int = 1024 * 1024) -> None:
        self._dq: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._bytes = 0
        self._max = max_bytes
        self._notice_bytes = 0
        self._max_notices = max_notice_bytes
        self.closed = False
        self.finishing = False  # a last frame is queued; nothing more is accepted
        self.overflowed = False
        self.on_overflow: Callable[[], object] | None = None  # the relay cancels the RPC (set per stream)

    @property
    def bytes(self) -> int:
        with self._cond:
            return self._bytes

    def notify(self, frame: Frame) -> bool:
        """Queue a relay notice (ERROR / PEER_GONE) without blocking the caller.

        Notices are capped separately (``max_notice_bytes`` undelivered): a party that
        keeps provoking errors without reading its stream would otherwise grow this
        queue without bound.  Past the cap the outbox is closed (``overflowed``) and
        False returned; the RPC is cancelled (or, if the writer is idle, ends with
        RESOURCE_EXHAUSTED).
        """
        size = _frame_size(frame)
        with self._cond:
            if self.closed or self.finishing:
                return False
            overflow = self._notice_bytes + size > self._max_notices
            if overflow:
                self.overflowed = True
                self.closed = True
                self._dq.clear()
                self._bytes = self._notice_bytes = 0
            else:
                self._dq.append(frame)
                self._bytes += size
                self._notice_bytes += size
            self._cond.notify_all()
        if overflow and self.on_overflow is not None:
            self.on_overflow()  # the writer may be blocked on a client that does not read: end the RPC
        return not overflow

    def put(self, frame: Frame, *, force: bool = False) -> bool:
        """Queue ``frame``; False if the outbox is closed (the party left)."""
        size = _frame_size(frame)
        with self._cond:
            while not force and not self.closed and self._dq and self._bytes + size > self._max:
                self._cond.wait()
            if self.closed or self.finishing:
                return False
            self._dq.append(frame)
            self._bytes += size
            self._cond.notify_all()
            return True

    def get(self) -> Frame | None:
        """Next frame to write, or None once closed."""
        with self._cond:
            while not self._dq and not self.closed and not self.finishing:
                self._cond.wait()
            if self.closed or not self._dq:
                return None
            frame = self._dq.popleft()
            size = _frame_size(frame)
            self._bytes -= size
            if frame.kind in _NOTICES:
                self._notice_bytes -= size
            self._cond.notify_all()
            return frame

    def finish(self, frame: Frame) -> None:
        """Deliver what is queued, then ``frame``, then end the stream (relay shutdown)."""
        with self._cond:
            if self.closed or self.finishing:
                return
            self._dq.append(frame)
            self._bytes += _frame_size(frame)
            self.finishing = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._dq.clear()
            self._bytes = self._notice_bytes = 0
            self._cond.notify_all()


@dataclass
class _Conn:
    name: str
    role: str
    session: str
    outbox: _Outbox
    members: frozenset[str] = frozenset()
    orderly: bool = False
    #: the client certificate (PEM) the stream was opened with: a suspended slot resumes only with it
    cert: bytes = b""
    #: replaced by a resuming stream of the same party: stop routing what this old one still reads
    retired: bool = False
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Slot:
    """A member whose stream dropped: its place is held until ``timer`` (the reconnect window) fires."""

    conn: _Conn
    since: float
    timer: threading.Timer | None = None


@dataclass
class _Pending:
    """Frames for a party that has not joined the session yet."""

    frames: deque[tuple[Frame, _Conn]] = field(default_factory=deque)
    bytes: int = 0
    timer: threading.Timer | None = None


def _error_frame(session: str, receiver: str, tag: str, seq: int, message: str) -> Frame:
    return Frame(kind=Frame.ERROR, session=session, receiver=receiver, tag=tag, seq=seq, error=message)


class RelayServicer(pb_grpc.RelayServicer):
    """Routes sealed frames between authenticated members of a session's job.

    ``membership`` names who may use a session (see :data:`Membership`); there is no
    default, so a relay cannot be started open by forgetting it.  ``capture``
    (tests, leakage audits) is called with every frame the relay accepts from a
    member, after the relay has stamped ``sender``: exactly what a curious relay
    operator could record.
    """

    def __init__(
        self,
        ca_pem: bytes,
        *,
        membership: Membership,
        capture: Callable[[Frame], None] | None = None,
        directory_certs: Iterable[bytes] = (),
        allowed_roles: Sequence[str] = ("party",),
        pending_timeout: float = 120.0,
        caps: QueueCaps = QueueCaps(),
        outbox_bytes: int = 64 * 1024 * 1024,
        notice_bytes: int = 1024 * 1024,
        reconnect_window_s: float = DEFAULT_RECONNECT_WINDOW_S,
    ) -> None:
        if reconnect_window_s < 0:
            raise ConfigError(f"relay: reconnect_window_s must be >= 0, got {reconnect_window_s}")
        self.reconnect_window_s = reconnect_window_s
        self._ca_pem = ca_pem
        self._membership = membership
        self._capture = capture
        self._allowed_roles = tuple(allowed_roles)
        self.pending_timeout = pending_timeout
        self.caps = caps
        self._outbox_bytes = outbox_bytes
        self._notice_bytes = notice_bytes
        self._cond = threading.Condition()
        self._conns: dict[tuple[str, str], _Conn] = {}
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._by_sender: dict[str, list[int]] = {}  # sender -> [frames, bytes] it has queued, all sessions
        self._total = [0, 0]  # [frames, bytes] queued for absent receivers
        self._gone: dict[tuple[str, str], str] = {}
        self._suspended: dict[tuple[str, str], _Slot] = {}
        self._resumed = 0  # streams that resumed a held place (reporting, tests)
        self._directory: dict[str, tuple[str, bytes]] = {}
        self._traffic: dict[tuple[str, str, str], list[int]] = {}
        self._refused: dict[str, int] = {}  # reason -> count (reporting, tests)
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
    def _members(self, session: str) -> frozenset[str] | None:
        try:
            members = self._membership(session)
        except Exception:  # noqa: BLE001 - a registry failure refuses the join, it never opens the session
            return None
        return None if members is None else frozenset(members)

    def _count_refusal(self, reason: str) -> None:
        with self._cond:
            self._refused[reason] = self._refused.get(reason, 0) + 1

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
        members = self._members(session)
        if members is None or name not in members:
            self._count_refusal("join")
            why = (f"session {session!r} is not an active run at this coordinator" if members is None
                   else f"party {name!r} is not one of the parties of run {session!r}")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"relay: {why}; joining refused")
            return  # abort() raises; never reached
        cert = bytes(pems[0]) if pems else b""
        conn = _Conn(name=name, role=role, session=session, members=members, cert=cert,
                     outbox=_Outbox(self._outbox_bytes, self._notice_bytes))
        key = (session, name)
        retire: _Conn | None = None
        with self._cond:
            if self._stopped:
                context.abort(grpc.StatusCode.UNAVAILABLE, "relay is shutting down")
            live = self._conns.get(key)
            slot = self._suspended.get(key)
            refused, hijack = "", ""
            if hello.resume:
                held = live if live is not None else (slot.conn if slot is not None else None)
                if held is None:
                    gone = self._gone.get(key)
                    refused = (f"party {name!r} cannot resume session {session!r}: "
                               + (f"it {gone}; its peers were told it is gone" if gone
                                  else "it holds no place there (never connected, or already forgotten)"))
                elif held.cert != cert:
                    hijack = (f"relay: party {name!r} tried to resume its place in session {session!r} with a "
                              "different certificate than the stream it replaces; refused")
            elif live is not None:
                refused = f"party {name!r} is already connected to session {session!r}; a second stream is refused"
            elif slot is not None:
                refused = (f"party {name!r} lost its stream to session {session!r} "
                           f"{time.monotonic() - slot.since:.1f} s ago and its place is held for it: only a "
                           "resuming stream (HELLO resume) may take it")
            if not refused and not hijack:
                if hello.resume:
                    self._resumed += 1
                    if live is not None:  # the party noticed the drop before the relay did
                        live.retired = True
                        retire = live
                    if slot is not None:
                        if slot.timer is not None:
                            slot.timer.cancel()
                        del self._suspended[key]
                self._attach(conn, hello)
        if hijack:
            self._count_refusal("resume")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, hijack)
        if refused:
            yield _error_frame(session, name, "", 0, refused)
            return
        if retire is not None:
            retire.outbox.close()
        context.add_callback(conn.outbox.close)  # RPC ended (client gone, relay stopping)
        conn.outbox.on_overflow = context.cancel
        reader = threading.Thread(
            target=self._read_loop, args=(conn, request_iterator), name=f"relay-read-{session}-{name}", daemon=True
        )
        reader.start()
        try:
            yield Frame(kind=Frame.HELLO_ACK, session=session, receiver=name)
            while True:
                out = conn.outbox.get()
                if out is None:
                    if conn.outbox.overflowed:
                        context.abort(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"relay: party {name!r} left more than {self._notice_bytes} bytes of relay notices "
                            f"unread in session {session!r}; stream closed",
                        )
                    return
                yield out
        finally:
            conn.done.set()

    def _attach(self, conn: _Conn, hello: Frame) -> None:
        """Make ``conn`` the party's stream in its session and tell everyone what they need (lock held).

        The joiner first gets what was queued for it, then who left or is suspended.  Its peers get
        PEER_JOINED, or on a resume PEER_RESUMED with the seq the party says it holds of *their*
        frames (from its HELLO), so they retransmit the rest: the relay keeps no record of seqs.
        """
        session, name = conn.session, conn.name
        key = (session, name)
        self._conns[key] = conn
        self._gone.pop(key, None)
        if conn.cert:
            self._directory[name] = (conn.role, conn.cert)
        pending = self._pending.pop(key, None)
        if pending is not None:
            if pending.timer is not None:
                pending.timer.cancel()
            self._release(pending)
            for frame, _sender in pending.frames:
                conn.outbox.put(frame, force=True)
        # Peers that already left (possibly after queueing frames for us): say so
        # after their frames, or a recv waiting on them would hang.
        for (s, other), why in self._gone.items():
            if s == session:
                conn.outbox.notify(
                    Frame(kind=Frame.PEER_GONE, session=session, sender=other, error=f"party {other!r} {why}")
                )
        for (s, other), slot in self._suspended.items():
            if s == session:
                conn.outbox.notify(self._suspended_notice(session, other, slot))
        for (s, other), peer in self._conns.items():
            if s != session or other == name:
                continue
            if hello.resume:
                peer.outbox.notify(Frame(kind=Frame.PEER_RESUMED, session=session, sender=name,
                                         seq=hello.acks.get(other, 0)))
            else:
                peer.outbox.notify(Frame(kind=Frame.PEER_JOINED, session=session, sender=name))
        self._cond.notify_all()

    def _suspended_notice(self, session: str, name: str, slot: _Slot) -> Frame:
        left = max(self.reconnect_window_s - (time.monotonic() - slot.since), 0.0)
        return Frame(kind=Frame.PEER_SUSPENDED, session=session, sender=name,
                     error=f"party {name!r} lost its connection to the relay; its place in session {session!r} is "
                           f"held for {left:.0f} more s (reconnect window {self.reconnect_window_s:g} s)")

    def _read_loop(self, conn: _Conn, request_iterator: Iterator[Frame]) -> None:
        reason = "lost its connection to the relay"
        try:
            for frame in request_iterator:
                if conn.outbox.closed or conn.retired:
                    break  # notice cap exceeded, the RPC ended, or a resumed stream replaced this one
                if frame.kind == Frame.BYE:
                    conn.orderly = True
                    continue
                self._route(conn, frame)
            # Without BYE, an ended stream is a vanished party too (a killed process can
            # look like a half-close to the server as often as like a cancellation).
            if conn.orderly:
                reason = "closed its connection"
            elif conn.outbox.overflowed:
                reason = "was disconnected by the relay (it did not read its stream)"
        except grpc.RpcError:
            pass  # cancelled: process killed, network cut, or relay stopping
        except Exception as exc:  # keep the relay up; tell the peers why
            reason = f"relay error while reading its stream: {type(exc).__name__}: {exc}"
        finally:
            self._disconnect(conn, reason, lost=not conn.orderly and not conn.outbox.overflowed
                             and reason == "lost its connection to the relay")

    def _route(self, conn: _Conn, frame: Frame) -> None:
        session, sender = conn.session, conn.name
        if frame.kind not in _ROUTED or (frame.kind != Frame.DATA and (frame.payload or frame.tag)):
            conn.outbox.notify(
                _error_frame(session, frame.receiver[:MAX_SESSION_CHARS], frame.tag[:MAX_SESSION_CHARS], frame.seq,
                             f"unexpected frame kind {frame.kind} (ACK and RESUME carry only receiver and seq)")
            )
            return
        if frame.session and frame.session != session:
            conn.outbox.notify(
                _error_frame(
                    session, frame.receiver, frame.tag, frame.seq,
                    f"frame for session {frame.session!r} sent on the stream for session {session!r}; dropped",
                )
            )
            return
        receiver = frame.receiver
        if not receiver or receiver == sender or receiver not in conn.members:
            # Refused before capture, stats or queueing: a frame for a made-up receiver costs the relay nothing.
            self._count_refusal("receiver")
            conn.outbox.notify(
                _error_frame(
                    session, receiver[:MAX_SESSION_CHARS], frame.tag[:MAX_SESSION_CHARS], frame.seq,
                    f"invalid receiver {receiver[:MAX_SESSION_CHARS]!r} for sender {sender!r}: not another party of "
                    f"run {session!r}; frame dropped",
                )
            )
            return
        # The one field that matters most: who sent it comes from the certificate.
        frame.sender = sender
        frame.session = session
        if self._capture is not None:
            self._capture(frame)
        key = (session, receiver)
        error = ""
        with self._cond:
            target = self._conns.get(key)
            if frame.kind != Frame.DATA:
                # Resumption controls are never queued: a receiver that is away gets the same
                # information again from the handshake when it is back (PEER_RESUMED / RESUME).
                if target is None:
                    return
            else:
                stats = self._traffic.setdefault((session, sender, receiver), [0, 0])
                stats[0] += 1
                stats[1] += len(frame.payload)
            if target is None:
                if key in self._gone:
                    error = f"party {receiver!r} left session {session!r} ({self._gone[key]}); frame dropped"
                else:
                    error = self._queue_pending(key, frame, conn)
        if target is not None and not target.outbox.put(frame):
            with self._cond:
                left = self._gone.get(key)
            if left is not None or self.reconnect_window_s == 0:
                error = f"party {receiver!r} disconnected from session {session!r} before the frame was delivered"
            # else its stream dropped just now: the sender still retains the frame and retransmits it
            # when the receiver resumes (PEER_RESUMED), or learns it is gone when the window ends.
        if error:
            conn.outbox.notify(_error_frame(session, receiver, frame.tag, frame.seq, error))

    def _queue_pending(self, key: tuple[str, str], frame: Frame, sender: _Conn) -> str:
        """Queue for a member not connected yet (lock held); returns an error naming the cap, or ''."""
        size = _frame_size(frame)
        pending = self._pending.get(key)
        queued = (len(pending.frames), pending.bytes) if pending is not None else (0, 0)
        mine = self._by_sender.get(sender.name, [0, 0])
        c = self.caps
        full = ""
        if queued[0] + 1 > c.receiver_frames or queued[1] + size > c.receiver_bytes:
            full = (f"queue for party {key[1]!r} (not connected to session {key[0]!r}) is full: {queued[0]} frames / "
                    f"{queued[1]} bytes queued, limits {c.receiver_frames} frames / {c.receiver_bytes} bytes")
        elif mine[0] + 1 > c.sender_frames or mine[1] + size > c.sender_bytes:
            full = (f"party {sender.name!r} already has {mine[0]} frames / {mine[1]} bytes queued for parties that "
                    f"have not connected, limits {c.sender_frames} frames / {c.sender_bytes} bytes per sender")
        elif self._total[0] + 1 > c.total_frames or self._total[1] + size > c.total_bytes:
            full = (f"it holds {self._total[0]} frames / {self._total[1]} bytes for parties that have not "
                    f"connected, limits {c.total_frames} frames / {c.total_bytes} bytes in all")
        if full:
            self._refused["queue-full"] = self._refused.get("queue-full", 0) + 1
            return f"relay: {full}; frame dropped"
        if pending is None:
            pending = self._pending[key] = _Pending()
            if key not in self._suspended:  # a suspended member's queue ends with its reconnect window
                pending.timer = threading.Timer(self.pending_timeout, self._pending_expired, args=(key, pending))
                pending.timer.daemon = True
                pending.timer.start()
        pending.frames.append((frame, sender))
        pending.bytes += size
        mine = self._by_sender.setdefault(sender.name, [0, 0])
        mine[0] += 1
        mine[1] += size
        self._total[0] += 1
        self._total[1] += size
        return ""

    def _release(self, pending: _Pending) -> None:
        """Take a queue's frames off the per-sender and global counts (lock held)."""
        for frame, sender in pending.frames:
            size = _frame_size(frame)
            mine = self._by_sender[sender.name]
            mine[0] -= 1
            mine[1] -= size
            if mine[0] == 0:
                del self._by_sender[sender.name]
            self._total[0] -= 1
            self._total[1] -= size

    def _forget_if_idle(self, session: str) -> None:
        """Drop who-left records of a session nobody is in and nothing is queued for (lock held)."""
        if any(k[0] == session for k in (*self._conns, *self._pending, *self._suspended)):
            return
        for k in [k for k in self._gone if k[0] == session]:
            del self._gone[k]

    def _pending_expired(self, key: tuple[str, str], pending: _Pending) -> None:
        with self._cond:
            if self._pending.get(key) is not pending:
                return  # the party connected (or the queue was replaced) in the meantime
            del self._pending[key]
            self._release(pending)
            self._forget_if_idle(key[0])
        session, receiver = key
        dropped: dict[int, tuple[_Conn, int, Frame]] = {}
        for frame, sender in pending.frames:
            n = dropped.get(id(sender), (sender, 0, frame))[1]
            dropped[id(sender)] = (sender, n + 1, frame)
        for sender, n, frame in dropped.values():
            sender.outbox.notify(
                _error_frame(
                    session, receiver, frame.tag, frame.seq,
                    f"party {receiver!r} did not connect to session {session!r} within "
                    f"{self.pending_timeout:g} s; {n} queued frame(s) dropped",
                )
            )

    def _disconnect(self, conn: _Conn, reason: str, *, lost: bool = False) -> None:
        """The party's stream ended: hold its place for the reconnect window if it was lost, else it is gone."""
        session, name = conn.session, conn.name
        key = (session, name)
        notice: Frame | None = None
        with self._cond:
            if self._conns.get(key) is conn:
                del self._conns[key]
                if lost and self.reconnect_window_s > 0 and not self._stopped:
                    slot = _Slot(conn, time.monotonic())
                    slot.timer = threading.Timer(self.reconnect_window_s, self._suspension_expired, args=(key, slot))
                    slot.timer.daemon = True
                    self._suspended[key] = slot
                    slot.timer.start()
                    notice = self._suspended_notice(session, name, slot)
                else:
                    self._gone[key] = reason
                    notice = Frame(kind=Frame.PEER_GONE, session=session, sender=name, error=f"party {name!r} {reason}")
            peers = [c for (s, _n), c in self._conns.items() if s == session]
            self._forget_if_idle(session)
        if notice is not None:  # None: a resumed stream replaced this one, or the relay is stopping
            for peer in peers:
                peer.outbox.notify(notice)
        conn.outbox.close()

    def _suspension_expired(self, key: tuple[str, str], slot: _Slot) -> None:
        session, name = key
        why = f"lost its connection to the relay and did not reconnect within {self.reconnect_window_s:g} s"
        with self._cond:
            if self._suspended.get(key) is not slot:
                return  # it resumed in the meantime
            del self._suspended[key]
            self._gone[key] = why
            pending = self._pending.pop(key, None)
            if pending is not None:
                self._release(pending)  # peers learn it is gone below; their frames for it are dropped
            peers = [c for (s, _n), c in self._conns.items() if s == session]
            self._forget_if_idle(session)
        for peer in peers:
            peer.outbox.notify(Frame(kind=Frame.PEER_GONE, session=session, sender=name, error=f"party {name!r} {why}"))

    # ---------------------------------------------------------------- reporting
    def connected(self, session: str | None = None) -> list[tuple[str, str]]:
        """(session, party) pairs currently connected."""
        with self._cond:
            return sorted(k for k in self._conns if session is None or k[0] == session)

    def suspended(self, session: str | None = None) -> list[tuple[str, str]]:
        """(session, party) pairs whose stream dropped and whose place is held for the reconnect window."""
        with self._cond:
            return sorted(k for k in self._suspended if session is None or k[0] == session)

    @property
    def resumed(self) -> int:
        """How many streams resumed a held place since the relay started."""
        with self._cond:
            return self._resumed

    def traffic(self, session: str) -> dict[tuple[str, str], tuple[int, int]]:
        """{(sender, receiver): (frames, sealed bytes)} the relay forwarded in ``session``."""
        with self._cond:
            return {(s, r): (v[0], v[1]) for (sess, s, r), v in self._traffic.items() if sess == session}

    def queued(self) -> dict[str, int]:
        """What the relay holds right now: frames/bytes queued for absent members, and bytes in outboxes."""
        with self._cond:
            conns = list(self._conns.values())
            out = {"pending_frames": self._total[0], "pending_bytes": self._total[1]}
        out["outbox_bytes"] = sum(c.outbox.bytes for c in conns)
        return out

    def refused(self) -> dict[str, int]:
        """How many joins / frames were refused, by reason ('join', 'resume', 'receiver', 'queue-full')."""
        with self._cond:
            return dict(self._refused)

    def shutdown(self) -> None:
        """End every stream with a "relay is shutting down" ERROR (so parties fail now instead of
        trying to reconnect for their window), drop held places, and wake directory waiters."""
        with self._cond:
            self._stopped = True
            conns = list(self._conns.values())
            pendings = list(self._pending.values())
            slots = list(self._suspended.values())
            self._suspended.clear()
            for p in pendings:
                self._release(p)
            self._pending.clear()
            self._cond.notify_all()
        for p in pendings:
            if p.timer is not None:
                p.timer.cancel()
        for slot in slots:
            if slot.timer is not None:
                slot.timer.cancel()
        for c in conns:
            c.outbox.finish(_error_frame(c.session, "", "", 0, "the relay is shutting down"))

    def drained(self, timeout: float) -> bool:
        """Wait (bounded) until every stream wrote its last frame; True if all did."""
        with self._cond:
            conns = list(self._conns.values())
        deadline = time.monotonic() + timeout
        return all(c.done.wait(max(deadline - time.monotonic(), 0.0)) for c in conns)


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
        self.servicer.drained(_DRAIN_S)
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
    membership: Membership,
    capture: Callable[[Frame], None] | None = None,
    extra_servicers: Sequence[Callable[[grpc.Server], None]] = (),
    directory_certs: Iterable[bytes] = (),
    pending_timeout: float = 120.0,
    caps: QueueCaps = QueueCaps(),
    notice_bytes: int = 1024 * 1024,
    max_workers: int = 256,
    reconnect_window_s: float = DEFAULT_RECONNECT_WINDOW_S,
) -> RelayHandle:
    """Start the relay on ``address`` with mutual TLS from ``identity`` (the coordinator's).

    ``membership`` says who may use each session (the coordinator passes
    ``Registry.job_parties``: a run's job parties while the run is active).
    ``extra_servicers`` are called with the ``grpc.Server`` before it starts, so
    other services (the coordinator's Control service) share the port and the
    mutual-TLS credentials.  Each connected party stream holds one worker thread:
    ``max_workers`` bounds concurrent streams plus unary calls.  ``reconnect_window_s``
    (0 = off) is how long a party whose stream dropped keeps its place.
    """
    servicer = RelayServicer(
        identity.ca_pem,
        membership=membership,
        capture=capture,
        directory_certs=directory_certs,
        pending_timeout=pending_timeout,
        caps=caps,
        notice_bytes=notice_bytes,
        reconnect_window_s=reconnect_window_s,
    )
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="relay"),
        options=[*GRPC_OPTIONS, ("grpc.so_reuseport", 0)],  # a port another process holds fails, never is shared
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
