"""Point-to-point message transport between protocol roles.

Every protocol in ``fedcredit.protocols`` is written against :class:`Transport` only,
so the same role code runs over the in-memory hub (unit tests, in-process
simulation) and over the gRPC relay data plane (real deployment, mutual TLS,
payloads sealed end-to-end).  Messages are addressed by (sender, receiver, tag);
``recv`` blocks for the message from a named sender with a given tag, so roles
can be written as straight-line code with explicit sends naming the receiver.

A role that fails says so once, with :meth:`Transport.abort`: every peer blocked in (or
later calling) ``recv`` for a message from it gets :class:`~fedcredit.errors.PeerAborted`
naming it and the reason, instead of waiting for a timeout.  Messages it sent before
aborting are still delivered first.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fedcredit.errors import PeerAborted, ProtocolError

#: Reserved tag of the message :meth:`Transport.abort` sends (never a protocol tag).
ABORT_TAG = "fc.abort"
#: The longest abort reason that travels (characters).
MAX_ABORT_REASON = 1000


class Transport(Protocol):
    """What a protocol role may do with the network."""

    @property
    def me(self) -> str:
        """This endpoint's party name."""

    def send(self, to: str, tag: str, payload: bytes) -> None:
        """Send ``payload`` to party ``to`` under ``tag`` (non-blocking)."""

    def recv(self, frm: str, tag: str, timeout: float | None = None) -> bytes:
        """Block until the message from ``frm`` with ``tag`` arrives."""

    def abort(self, reason: str) -> None:
        """This role failed: tell every peer, so they stop waiting for it (idempotent)."""


@dataclass(frozen=True)
class WireRecord:
    """One message as observed on the wire (for audit logs and leakage tests)."""

    sender: str
    receiver: str
    tag: str
    size: int
    sha256: str
    payload: bytes = field(repr=False)


Observer = Callable[[WireRecord], None]


class InMemoryHub:
    """A set of mailboxes connecting named endpoints inside one process.

    ``observers`` see every message that crosses (tests use this to capture what a
    role receives and check it against the protocol's leakage table).
    """

    def __init__(self, default_timeout: float = 120.0) -> None:
        self._boxes: dict[tuple[str, str, str], deque[bytes]] = {}
        self._cond = threading.Condition()
        self._aborted: dict[str, str] = {}
        self.default_timeout = default_timeout
        self.observers: list[Observer] = []
        self.bytes_sent: dict[str, int] = {}

    def endpoint(self, name: str) -> InMemoryTransport:
        return InMemoryTransport(self, name)

    def deliver(self, frm: str, to: str, tag: str, payload: bytes) -> None:
        if not isinstance(payload, (bytes, bytearray)):
            raise TypeError(f"payload from {frm} to {to} ({tag}) must be bytes, got {type(payload).__name__}")
        payload = bytes(payload)
        rec = WireRecord(frm, to, tag, len(payload), hashlib.sha256(payload).hexdigest(), payload)
        for obs in list(self.observers):
            obs(rec)
        with self._cond:
            self.bytes_sent[frm] = self.bytes_sent.get(frm, 0) + len(payload)
            self._boxes.setdefault((frm, to, tag), deque()).append(payload)
            self._cond.notify_all()

    def abort_from(self, frm: str, reason: str) -> None:
        """``frm`` failed: every receive waiting for (or later asking for) a message from it raises PeerAborted."""
        with self._cond:
            self._aborted.setdefault(frm, str(reason)[:MAX_ABORT_REASON])
            self._cond.notify_all()

    def take(self, frm: str, to: str, tag: str, timeout: float | None) -> bytes:
        t = self.default_timeout if timeout is None else timeout
        deadline = time.monotonic() + t
        key = (frm, to, tag)
        with self._cond:
            while True:
                box = self._boxes.get(key)
                if box:
                    return box.popleft()
                if frm in self._aborted:
                    raise PeerAborted(to, frm, self._aborted[frm])
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProtocolError(f"{to}: no message '{tag}' from party '{frm}' within {t:.0f} s")
                self._cond.wait(left)


class InMemoryTransport:
    """One named endpoint on an :class:`InMemoryHub`."""

    def __init__(self, hub: InMemoryHub, name: str) -> None:
        self._hub = hub
        self._name = name

    @property
    def me(self) -> str:
        return self._name

    def send(self, to: str, tag: str, payload: bytes) -> None:
        self._hub.deliver(self._name, to, tag, payload)

    def recv(self, frm: str, tag: str, timeout: float | None = None) -> bytes:
        return self._hub.take(frm, self._name, tag, timeout)

    def abort(self, reason: str) -> None:
        self._hub.abort_from(self._name, reason)


class CountingTransport:
    """A Transport that counts payload bytes/messages per direction (the public traffic figures)."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages_sent = 0
        self.messages_received = 0
        self._by_tag: dict[tuple[str, str], list[int]] = {}  # (receiver, tag kind) -> [messages, bytes] sent

    @property
    def me(self) -> str:
        return str(self.inner.me)

    def send(self, to: str, tag: str, payload: bytes) -> None:
        self.inner.send(to, tag, payload)
        self.bytes_sent += len(payload)
        self.messages_sent += 1
        kind = "/".join(seg for seg in tag.split("/") if not seg.isdigit())  # "vlr/g/3/1" -> "vlr/g": bounded
        c = self._by_tag.setdefault((to, kind), [0, 0])
        c[0] += 1
        c[1] += len(payload)

    def recv(self, frm: str, tag: str, timeout: float | None = None) -> bytes:
        b = self.inner.recv(frm, tag, timeout)
        self.bytes_received += len(b)
        self.messages_received += 1
        return b

    def abort(self, reason: str) -> None:
        self.inner.abort(reason)

    def snapshot(self) -> dict[str, int]:
        return {
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "messages_sent": self.messages_sent,
            "messages_received": self.messages_received,
        }

    def sent_by_tag(self) -> list[dict[str, Any]]:
        """What this party sent per receiver and message kind (the tag without its round/step numbers), for
        its own report's "what it sent"."""
        return [{"to": to, "tag": tag, "messages": m, "bytes": b} for (to, tag), (m, b) in sorted(self._by_tag.items())]
