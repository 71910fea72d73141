"""Coordinator-driven request/response between the coordinator and parties.

Horizontal training is a round loop driven by the coordinator (Flower's native
shape).  Each party role is a *handler*: ``handle(method, payload, state) -> reply``,
with its own persistent :class:`StateStore` (a party's secret key and local model
live there, never in a message).  The coordinator role only ever calls
:meth:`PartyChannel.call_all`.  The same handler runs behind
:class:`LocalChannel` (in-process simulation, tests) and behind Flower messages
(``coordinator.serverapp.FlowerChannel``), so protocol logic is never forked per transport.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from crypto.files import write_file
from fedcredit.transport import Observer, WireRecord


class StateStore(Protocol):
    """A party's private key-value storage that survives between calls."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None:
        """Remove ``key`` if present (e.g. a job's secret key once the job ends)."""


class MemoryState:
    """StateStore in a dict (in-process simulation)."""

    def __init__(self) -> None:
        self._d: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self._d.get(key)

    def put(self, key: str, value: bytes) -> None:
        self._d[key] = bytes(value)

    def delete(self, key: str) -> None:
        self._d.pop(key, None)


class DirState:
    """StateStore as owner-only files in a directory (party daemon, one dir per run)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"invalid state key {key!r}")
        return self.root / key

    def get(self, key: str) -> bytes | None:
        p = self._path(key)
        return p.read_bytes() if p.exists() else None

    def put(self, key: str, value: bytes) -> None:
        write_file(self._path(key), value)  # owner-only, atomic: keys live here

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


Handler = Callable[[str, bytes, StateStore], bytes]


class PartyChannel(Protocol):
    """How the coordinator role reaches parties: one request and one reply per party."""

    @property
    def parties(self) -> list[str]: ...

    def call_all(self, requests: Mapping[str, tuple[str, bytes]]) -> dict[str, bytes]:
        """Send ``(method, payload)`` to each named party concurrently; return replies."""


class LocalChannel:
    """PartyChannel to in-process handlers; every request/reply is observable bytes."""

    def __init__(self, handlers: Mapping[str, Handler], states: Mapping[str, StateStore] | None = None) -> None:
        self._handlers = dict(handlers)
        self._states: dict[str, StateStore] = dict(states or {p: MemoryState() for p in handlers})
        self.observers: list[Observer] = []
        self.bytes_sent: dict[str, int] = {p: 0 for p in handlers}
        self._lock = threading.Lock()

    @property
    def parties(self) -> list[str]:
        return list(self._handlers)

    def _observe(self, frm: str, to: str, tag: str, payload: bytes) -> None:
        rec = WireRecord(frm, to, tag, len(payload), hashlib.sha256(payload).hexdigest(), payload)
        for obs in list(self.observers):
            obs(rec)

    def _one(self, party: str, method: str, payload: bytes) -> bytes:
        self._observe("coordinator", party, method, payload)
        reply = self._handlers[party](method, bytes(payload), self._states[party])
        with self._lock:
            self.bytes_sent[party] += len(reply)
        self._observe(party, "coordinator", method + ".reply", reply)
        return reply

    def call_all(self, requests: Mapping[str, tuple[str, bytes]]) -> dict[str, bytes]:
        unknown = set(requests) - set(self._handlers)
        if unknown:
            raise KeyError(f"unknown parties: {sorted(unknown)}")
        with ThreadPoolExecutor(max_workers=max(1, len(requests))) as pool:
            futs = {p: pool.submit(self._one, p, m, pl) for p, (m, pl) in requests.items()}
            return {p: f.result() for p, f in futs.items()}
