"""The data-plane contract both ends share: gRPC options, frame AAD, size limits.

Why a module of its own: the relay (``coordinator/relay.py``, the server) and the
party's ``RelayTransport`` (``party/dataplane.py``, the client) must agree on these
to the byte, and a party must not import coordinator code to learn them.
"""

from __future__ import annotations

import struct

from crypto.tls import GRPC_OPTIONS as TLS_GRPC_OPTIONS
from crypto.tls import MAX_MESSAGE_BYTES

__all__ = ["DEFAULT_RECONNECT_WINDOW_S", "GRPC_OPTIONS", "KEEPALIVE_S", "MAX_SEALED_BYTES", "frame_aad"]

#: How long the relay holds a dropped party's place in a session, and how long the party
#: keeps trying to get it back, before the job fails (``reconnect_window_s`` in both configs).
DEFAULT_RECONNECT_WINDOW_S = 30.0

#: HTTP/2 keepalive: a ping every ``KEEPALIVE_S[0]`` s, declared dead after ``KEEPALIVE_S[1]`` s
#: without its answer.  So a stream that stalls silently (a black-holed network, a paused
#: proxy) is noticed within about 4 s at both ends, well inside the reconnect window.
#: Pings are answered by gRPC's core threads, not Python, so a busy party is not mistaken for a
#: dead one.
KEEPALIVE_S = (2.0, 2.0)

#: The project-wide message limits plus keepalive (both ends use this tuple).  The last two
#: are the server's side: it must accept a ping every 2 s on a stream that carries no data
#: (default: one per 5 min, else it closes the connection with "too_many_pings").
GRPC_OPTIONS: tuple[tuple[str, int], ...] = (
    *TLS_GRPC_OPTIONS,
    ("grpc.keepalive_time_ms", int(KEEPALIVE_S[0] * 1000)),
    ("grpc.keepalive_timeout_ms", int(KEEPALIVE_S[1] * 1000)),
    # Any ping (keepalive or gRPC's own flow-control probes) unanswered this long closes the
    # connection: a probe already in flight when the link stalls would otherwise stand in for
    # the keepalive ping and wait forever (seen with a paused proxy).
    ("grpc.http2.ping_timeout_ms", int(KEEPALIVE_S[1] * 1000)),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", int(KEEPALIVE_S[0] * 1000)),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", int(KEEPALIVE_S[0] * 1000) // 2),
    ("grpc.http2.max_ping_strikes", 0),
)

_AAD_LABEL = b"fedcredit.dataplane.v1"
#: Largest sealed payload one frame carries (room left for the frame's other fields).
MAX_SEALED_BYTES = MAX_MESSAGE_BYTES - 64 * 1024


def frame_aad(session: str, sender: str, receiver: str, tag: str, seq: int) -> bytes:
    """Associated data binding a sealed payload to its place in the conversation.

    Length-prefixed fields, so no two different tuples encode to the same bytes.
    """
    parts = [_AAD_LABEL]
    for s in (session, sender, receiver, tag):
        b = s.encode("utf-8")
        parts.append(struct.pack(">I", len(b)) + b)
    parts.append(struct.pack(">Q", seq))
    return b"".join(parts)
