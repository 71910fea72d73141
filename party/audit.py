"""A party's append-only, owner-only JSON Lines logs: the audit log and the decision log.

:class:`JsonlLog` is the one log type: created 0600 from the first byte (a looser
existing file is tightened, not trusted), only ever opened with ``O_APPEND`` so earlier
lines are never rewritten, one ``write`` per batch of lines so concurrent writers never
interleave.  With ``flush_interval`` it buffers and a background thread flushes (the
decision log: a write syscall per decision was ~10 % of a decision's CPU time; a crash
loses at most that interval); without it every line is on disk before ``append`` returns
(the audit log: a message is never sent unaudited).

The audit log records every message the party sends across its boundary.

Why: a bank must be able to show its auditors what left the institution, to whom,
when and how much — without the log itself becoming a leak.  So each line holds
metadata and the SHA-256 of the *sealed* bytes that went on the wire (which the
relay also saw and can be matched against), never the plaintext or any key.

Format: JSON Lines, one object per message, keys ``time`` (UTC ISO-8601),
``session``, ``sender``, ``receiver``, ``tag``, ``seq``, ``size`` (sealed bytes)
and ``sha256`` (hex of the sealed bytes).  The file is created with mode 0600
and only ever opened with ``O_APPEND``: earlier lines are never rewritten.

The same file holds the party's job-policy events (:class:`PolicyEvent`, lines with
``"kind": "policy"``): every job accepted, waiting, approved, rejected, refused or
expired, every run finished, and every use of a dataset — with the run id
(``session``), the job digest, the job type, the datasets and columns, the rule that
decided and who decided.  One file, so an auditor reads what was allowed and what
left the institution side by side.

Other things a party must be able to show (an app it refused to run, which ids its
scoring service answered, whom it refused) are *event* lines in the same file: ``time``,
``event`` (a name such as ``partial_answer``) and the event's own fields
(:meth:`AuditLog.record_event`).  :func:`read_audit_log` returns the message lines,
:func:`read_policy_events` the policy lines, :func:`read_audit_events` the events.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import stat
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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


POLICY_KIND = "policy"
#: What a policy line records (``event``).
POLICY_EVENTS = ("pending", "accepted", "approved", "rejected", "refused", "expired", "dataset_used", "finished")


@dataclass(frozen=True)
class PolicyEvent:
    """One job-policy decision or data use, as written to the audit log."""

    time: str
    kind: str
    event: str
    session: str  # the run id
    party: str
    digest: str
    job_type: str
    method: str
    datasets: dict[str, list[str]]  # dataset key -> columns
    rule: str
    by: str  # who decided: an officer's name, or "policy (auto)"
    detail: str


class JsonlLog:
    """Append-only, owner-only JSON Lines file (thread-safe); see the module docstring."""

    def __init__(self, path: Path | str, *, what: str = "log", flush_interval: float | None = None) -> None:
        self.path = Path(path)
        self.what = what
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, AUDIT_MODE)
        except OSError as exc:
            raise ConfigError(f"cannot open {what} {self.path} for appending: {exc.strerror}") from None
        mode = stat.S_IMODE(os.fstat(self._fd).st_mode)
        if mode & 0o077:
            os.fchmod(self._fd, AUDIT_MODE)
        self._buf: list[bytes] = []
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None
        if flush_interval is not None:
            self._flusher = threading.Thread(target=self._run, args=(flush_interval,), name=f"{what}-flush", daemon=True)
            self._flusher.start()

    def _run(self, interval: float) -> None:
        while not self._closed.wait(interval):
            self.flush()

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append one line per record (buffered when the log has a flush interval)."""
        data = "".join(json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n" for r in records).encode()
        with self._lock:
            if self._fd < 0:
                raise ConfigError(f"{self.what} {self.path} is closed; refusing to go on without it")
            if self._flusher is not None:
                self._buf.append(data)
            else:
                os.write(self._fd, data)  # one write() on an O_APPEND fd: lines never interleave

    def flush(self) -> None:
        with self._lock:
            if self._buf and self._fd >= 0:
                os.write(self._fd, b"".join(self._buf))
                self._buf.clear()

    def close(self) -> None:
        self._closed.set()
        self.flush()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> JsonlLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; explicit close() is preferred
        try:
            self.close()
        except Exception:
            pass


class AuditLog(JsonlLog):
    """The party's audit log of sent messages: metadata and the hash of the sealed bytes, never content."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(path, what="audit log")

    def record_sent(
        self, *, session: str, sender: str, receiver: str, tag: str, seq: int, sealed: bytes
    ) -> AuditRecord:
        """Append the line for one sealed message that is about to leave this party."""
        rec = AuditRecord(
            time=_dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds"),
            session=session,
            sender=sender,
            receiver=receiver,
            tag=tag,
            seq=int(seq),
            size=len(sealed),
            sha256=hashlib.sha256(sealed).hexdigest(),
        )
        self.append([asdict(rec)])
        return rec

    def record_event(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one event line (``time``, ``event``, then ``fields``; JSON values, never secret content)."""
        line = {"time": _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds"), "event": event, **fields}
        self.append([line])
        return line

    def record_policy(self, *, event: str, session: str, party: str, digest: str = "", job_type: str = "",
                      method: str = "", datasets: Mapping[str, Sequence[str]] | None = None, rule: str = "",
                      by: str = "", detail: str = "") -> PolicyEvent:
        """Append the line for one job-policy event (see :data:`POLICY_EVENTS`)."""
        if event not in POLICY_EVENTS:
            raise ValueError(f"unknown policy event {event!r}; expected one of {POLICY_EVENTS}")
        rec = PolicyEvent(
            time=_dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds"), kind=POLICY_KIND, event=event,
            session=session, party=party, digest=digest, job_type=job_type, method=method,
            datasets={k: list(v) for k, v in (datasets or {}).items()}, rule=rule, by=by, detail=detail,
        )
        self.append([asdict(rec)])
        return rec

    def records(self) -> list[AuditRecord]:
        """Read every sent-message line back (for audits and tests); ConfigError names a malformed line."""
        return read_audit_log(self.path)


class DecisionLog(JsonlLog):
    """The deciding party's log of decisions, flushed in the background.

    A line holds the decision and, under ``features``, the deciding party's own model inputs as
    given (never a passive party's): ``fedcredit party monitor`` needs them for PSI per feature.
    """

    def __init__(self, path: Path | str, flush_interval: float = 0.05) -> None:
        super().__init__(path, what="decision log", flush_interval=flush_interval)

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        self.append(records)


def _lines(path: Path, what: str = "audit log") -> list[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{what} {path} line {lineno} is not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"{what} {path} line {lineno} is not a JSON object")
        out.append((lineno, obj))
    return out


def read_audit_log(path: Path | str) -> list[AuditRecord]:
    """Parse an audit log file into its sent-message records (policy lines are read by :func:`read_policy_events`)."""
    path = Path(path)
    out: list[AuditRecord] = []
    for lineno, obj in _lines(path):
        if obj.get("kind") == POLICY_KIND or "event" in obj:
            continue  # a policy line (read_policy_events) or an event line (read_audit_events)
        try:
            out.append(AuditRecord(**{k: obj[k] for k in _FIELDS}))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"audit log {path} line {lineno} is malformed ({exc}); expected keys {_FIELDS}") from None
    return out


def read_policy_events(path: Path | str) -> list[PolicyEvent]:
    """Parse the job-policy lines of an audit log file."""
    path = Path(path)
    names = tuple(PolicyEvent.__dataclass_fields__)
    out: list[PolicyEvent] = []
    for lineno, obj in _lines(path):
        if obj.get("kind") != POLICY_KIND:
            continue
        try:
            out.append(PolicyEvent(**{k: obj[k] for k in names}))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"audit log {path} line {lineno} is malformed ({exc}); expected keys {names}") from None
    return out


def read_decisions(path: Path | str, run_id: str | None = None) -> list[dict[str, Any]]:
    """The decision log's lines (only those of ``run_id`` when given); ConfigError names a malformed line."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"decision log {path} does not exist (the scoring service writes it; see [scoring].decision_log)")
    return [obj for _, obj in _lines(path, "decision log") if run_id is None or obj.get("run_id") == run_id]


def read_audit_events(path: Path | str, event: str | None = None) -> list[dict[str, Any]]:
    """The event lines of an audit log (only those named ``event`` when given)."""
    return [obj for _, obj in _lines(Path(path)) if "event" in obj and (event is None or obj["event"] == event)]
