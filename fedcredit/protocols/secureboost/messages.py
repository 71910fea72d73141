"""The SecureBoost wire vocabulary both roles use, declared once: tags, command names, framing.

Every label -> passive message goes under tag ``<prefix>.cmd`` and every reply under
``<prefix>.reply`` (prefix ``sb`` by default); the payload is
:func:`~fedcredit.codec.pack_blobs` framing with a JSON header
``{"op": <Op>, "seq": n, ...}``.  A reply echoes its command's op and seq, or is
``op = "error"`` with a ``message``.  The per-op fields are the leakage table of
docs/secureboost.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from fedcredit.checkpoint import ResumeTags
from fedcredit.codec import pack_blobs, unpack_blobs
from fedcredit.transport import Transport

__all__ = ["PROTOCOL_VERSION", "STAGE", "Op", "Tags", "tags", "send", "recv"]

PROTOCOL_VERSION: Final = 2  # 2: passive_splits in setup, the select command
#: checkpoint stage of SecureBoost training at both roles (step = trees done; fedcredit.checkpoint)
STAGE: Final = "sb"


class Op:
    """Command names (``op`` of the JSON header)."""

    SETUP: Final = "setup"  # label -> passive: public CKKS context, row digest, pack, n_bins, min_category_count
    HIST: Final = "hist"  # encrypted node gradients -> encrypted masked candidate sums
    SPLIT: Final = "split"  # chosen candidates -> opaque split ids + left-row bits (passive_splits = "revealed")
    SELECT: Final = "select"  # hidden splits: new split ids + Enc(one-hot winner) x2 -> Enc(left-row bits)
    PREDICT: Final = "predict"  # scoring ids -> decision bits
    FINISH: Final = "finish"  # end of the job -> model digest, timings
    CHECKPOINT: Final = "checkpoint"  # {"tree": t} after tree t: the passive saves its own state, then the label
    # a role that fails says so with Transport.abort (fedcredit.transport), not with a command


class Tags(NamedTuple):
    cmd: str
    reply: str

    @property
    def resume(self) -> ResumeTags:
        """``<prefix>/resume/held`` and ``<prefix>/resume/at``: where a resumed run restarts (fedcredit.checkpoint)."""
        return ResumeTags(self.cmd.removesuffix(".cmd"))


def tags(prefix: str) -> Tags:
    """The command and reply tags of a SecureBoost session with tag prefix ``prefix``."""
    return Tags(f"{prefix}.cmd", f"{prefix}.reply")


def send(transport: Transport, to: str, tag: str, op: str, seq: int, blobs: Sequence[bytes] = (), **meta: Any) -> None:
    transport.send(to, tag, pack_blobs(list(blobs), {"op": op, "seq": seq, **meta}))


def recv(transport: Transport, frm: str, tag: str, timeout: float, what: str) -> tuple[list[bytes], dict[str, Any]]:
    return unpack_blobs(transport.recv(frm, tag, timeout=timeout), what=what)
