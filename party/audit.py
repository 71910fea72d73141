"""A party's own append-only record of every message it sends across its boundary.

Why: a bank must be able to show its auditors what left the institution, to whom,
when and how much — without the log itself becoming a leak.  So each line holds
metadata and the SHA-256 of the *sealed* bytes that went on the wire (which the
relay also saw and can be matched against), never the plaintext or any key.

Format: JSON Lines, one object per message, keys ``time`` (UTC ISO-8601),
``session``, ``sender``, ``receiver``, ``tag``, ``seq``, ``size`` (sealed bytes)
and ``sha256`` (hex of the sealed bytes).  The file is created with mode 0600
and only ever opened with ``O_APPEND``: earlier lines are never rewritten.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import stat
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from fedcredit.errors import ConfigError

AUDIT_MODE = 0o600
_FIELDS = ("time", "session", "sender", "receiver", "tag", "seq", "size", "sha256")


@dataclass(frozen=True)
class AuditRecord:
    """One sent message, as written to the audit log."""

    time: str
    session: str
    sender: str
    receiver: str
    tag: str
    seq: int
    size: int
    sha256: str


class AuditLog:
    """Append-only JSONL audit log (thread-safe; one ``write`` per line).

    The file is created 0600 from the first byte.  If it already exists with
    group/other permissions it is tightened to 0600 rather than trusted as-is.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, AUDIT_MODE)
        except OSError as exc:
            raise ConfigError(f"cannot open audit log {self.path} for appending: {exc.strerror}") from None
        mode = stat.S_IMODE(os.fstat(self._fd).st_mode)
        if mode & 0o077:
            os.fchmod(self._fd, AUDIT_MODE)

    def record_sent(
        self, *, session: str, sender: str, receiver: str, tag: str, seq: int, sealed: bytes
    ) -> AuditRecord:
        """Append the line for one sealed message that is about to leave this party."""
        rec = AuditRecord(
            time=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds"),
            session=session,
            sender=sender,
            receiver=receiver,
            tag=tag,
            seq=int(seq),
            size=len(sealed),
            sha256=hashlib.sha256(sealed).hexdigest(),
        )
        line = (json.dumps(asdict(rec), separators=(",", ":"), sort_keys=False) + "\n").encode()
        with self._lock:
            if self._fd < 0:
                raise ConfigError(f"audit log {self.path} is closed; refusing to send unaudited message")
            # One write() on an O_APPEND fd: concurrent writers never interleave a line.
            os.write(self._fd, line)
        return rec

    def records(self) -> list[AuditRecord]:
        """Read every line back (for audits and tests); ConfigError names a malformed line."""
        return read_audit_log(self.path)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; explicit close() is preferred
        try:
            self.close()
        except Exception:
            pass


def read_audit_log(path: Path | str) -> list[AuditRecord]:
    """Parse an audit log file into records."""
    path = Path(path)
    out: list[AuditRecord] = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"audit log {path} does not exist") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            out.append(AuditRecord(**{k: obj[k] for k in _FIELDS}))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"audit log {path} line {lineno} is malformed ({exc}); expected keys {_FIELDS}") from None
    return out
