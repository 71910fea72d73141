"""The data-plane contract both ends share: gRPC options, frame AAD, size limits.

Why a module of its own: the relay (``coordinator/relay.py``, the server) and the
party's ``RelayTransport`` (``party/dataplane.py``, the client) must agree on these
to the byte, and a party must not import coordinator code to learn them.
"""

from __future__ import annotations

import struct

from crypto.tls import GRPC_OPTIONS as TLS_GRPC_OPTIONS
from crypto.tls import MAX_MESSAGE_BYTES

__all__ = ["GRPC_OPTIONS", "MAX_SEALED_BYTES", "frame_aad"]

#: The project-wide message limits plus keepalive, so a party whose network silently
#: drops is noticed within ~1 min.
GRPC_OPTIONS: tuple[tuple[str, int], ...] = (
    *TLS_GRPC_OPTIONS,
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
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
