"""Party liveness: heartbeats from each party daemon, and what a run does when one stops.

Why our own heartbeat and not Flower's: a SuperNode's Flower heartbeat says only that
the SuperNode process reaches the SuperLink, at an interval Flower picks, and the
ServerApp is never told when a node goes quiet (a round simply waits ``round_timeout_s``).
A vertical job's parties talk over the relay, not Flower.  So each party daemon calls
``Liveness.Heartbeat`` every ``[coordinator].heartbeat_interval_s`` on the relay/Control
port (the port it already uses for the data plane), and the coordinator records the time
in the run registry, which the ServerApp process reads while it waits for replies.

Who may heartbeat: the caller's mutual-TLS certificate is re-verified against the
federation CA, must have role ``party`` and name one of the coordinator's ``[[parties]]``.
The party name is the certificate's CN; the request carries no name, so a party cannot
keep another party "alive", and an operator or foreign-CA certificate is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import grpc

from coordinator.registry import Registry
from crypto.tls import peer_identity
from fedcredit.errors import SecurityError
from protos import control_pb2, liveness_pb2, liveness_pb2_grpc

__all__ = ["LivenessServicer", "PartyLiveness", "add_liveness_service", "liveness", "not_live_reason"]

LIVE, NOT_LIVE, NEVER = "live", "not live", "never"


@dataclass(frozen=True)
class PartyLiveness:
    """One party's liveness as the coordinator sees it at ``now``."""

    name: str
    last_seen: float | None
    age_s: float | None
    interval_s: float
    timeout_s: float

    @property
    def state(self) -> str:
        if self.age_s is None:
            return NEVER
        return LIVE if self.age_s <= self.timeout_s else NOT_LIVE

    @property
    def live(self) -> bool:
        return self.state == LIVE

    def to_proto(self) -> control_pb2.PartyLiveness:
        return control_pb2.PartyLiveness(name=self.name, state=self.state, last_seen=self.last_seen or 0.0,
                                         age_s=self.age_s if self.age_s is not None else 0.0,
                                         interval_s=self.interval_s)


def liveness(registry: Registry, parties: Iterable[str], timeout_s: float, now: float | None = None) -> list[PartyLiveness]:
    """Each of ``parties``'s liveness from the registry's last-seen times."""
    now = time.time() if now is None else now
    seen = registry.last_seen()
    out = []
    for p in parties:
        t, interval = seen.get(p, (None, 0.0))
        out.append(PartyLiveness(p, t, None if t is None else max(0.0, now - t), interval, timeout_s))
    return out


def not_live_reason(p: PartyLiveness) -> str:
    """Why a run cannot count on ``p`` (what the run's error says after ``party 'p':``)."""
    if p.age_s is None:
        return (f"has never sent a heartbeat to this coordinator (liveness_timeout_s = {p.timeout_s:g}); "
                "is its daemon running and can it reach the coordinator's relay port?")
    return f"stopped sending heartbeats {p.age_s:.0f} s ago (liveness_timeout_s = {p.timeout_s:g})"


class LivenessServicer(liveness_pb2_grpc.LivenessServicer):
    """``Heartbeat``: record the caller (by certificate) as seen now."""

    def __init__(self, registry: Registry, parties: Collection[str], timeout_s: float, *, ca_pem: bytes,
                 log: Callable[[str], None] = print) -> None:
        self.registry = registry
        self.parties = frozenset(parties)
        self.timeout_s = timeout_s
        self.ca_pem = ca_pem
        self.log = log
        self._refused: set[str] = set()  # one log line per refused identity, not one per heartbeat

    def Heartbeat(self, request: liveness_pb2.HeartbeatRequest, context: grpc.ServicerContext) -> liveness_pb2.HeartbeatReply:
        try:
            name, role = peer_identity(context, ca_pem=self.ca_pem)
        except SecurityError as e:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        why = None
        if role != "party":
            why = f"'{name}' holds a certificate with role '{role}'; only party certificates send heartbeats"
        elif name not in self.parties:
            why = f"party '{name}' is not in this coordinator's [[parties]]"
        if why is not None:
            if name not in self._refused:
                self._refused.add(name)
                self.log(f"liveness: refused a heartbeat: {why}")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"coordinator liveness service: {why}")
        interval = request.interval_s if 0 < request.interval_s < 3600 else 0.0
        self.registry.touch(name, interval)
        return liveness_pb2.HeartbeatReply(liveness_timeout_s=self.timeout_s)


def add_liveness_service(servicer: LivenessServicer) -> Callable[[grpc.Server], None]:
    return lambda server: liveness_pb2_grpc.add_LivenessServicer_to_server(servicer, server)
