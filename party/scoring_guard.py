"""What keeps a passive party's scoring answers from becoming an oracle: decoys, keyed id digests, rate limits.

Why each piece (docs/security.md, "Services: authorisation and the scoring oracle"):

* **Decoys.** An id the passive party does not hold is answered like one it holds:
  with the answer of one of its real rows, chosen by a keyed hash of the id
  (``HMAC(secret, model hash) -> HMAC(·, id) mod rows``).  The label party sees the
  same type, shape and value distribution either way; the choice is deterministic,
  so asking again (or after a restart) gives the same answer and averaging learns
  nothing.  Only the passive party knows which answers were decoys (its audit log).
* **Keyed id digests.** The audit log lists every id answered as ``HMAC(secret, id)``
  (16 bytes, hex): the party can prove whether it answered a given id (compute the
  digest, search the log) without its log becoming a list of another bank's customers.
* **Rate limits.** A token bucket (ids per second, burst) and a daily quota per caller
  bound how fast and how much a caller can pull.

The secret is 32 random bytes in ``<state_dir>/scoring.secret`` (owner-only), created
on first use and never sent anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from crypto.files import write_file
from fedcredit.errors import ConfigError, RateLimited

SECRET_BYTES = 32


class ScoringSecret:
    """The passive party's scoring secret: decoy rows and audit digests are keyed with it."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ConfigError("scoring secret must be at least 16 bytes")
        self._audit = hmac.new(key, b"fedcredit.scoring.audit-id.v1", hashlib.sha256).digest()
        self._key = key
        self._decoy_keys: dict[str, bytes] = {}

    @classmethod
    def load_or_create(cls, path: Path) -> ScoringSecret:
        """Read ``path``, or create it (0600) with fresh random bytes; the same file gives the same decoys."""
        path = Path(path)
        if not path.exists():
            try:
                write_file(path, secrets.token_bytes(SECRET_BYTES), exclusive=True, what="scoring secret")
            except ConfigError:
                if not path.exists():  # not a lost race with another process: a real write failure
                    raise
        try:
            key = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read the scoring secret {path}: {e.strerror}") from None
        if len(key) != SECRET_BYTES:
            raise ConfigError(f"scoring secret {path} holds {len(key)} bytes, expected {SECRET_BYTES}; "
                              "restore it from backup (a new one changes every decoy answer)")
        return cls(key)

    @classmethod
    def ephemeral(cls) -> ScoringSecret:
        """A secret for one process only (tests, in-process use): decoys change when it restarts."""
        return cls(secrets.token_bytes(SECRET_BYTES))

    def id_digest(self, id_: str) -> str:
        """The audit log's name for ``id_``: HMAC-SHA256 under the audit key, first 16 bytes, hex."""
        return hmac.new(self._audit, id_.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    def decoy_row(self, model_hash: str, id_: str, n_rows: int) -> int:
        """The real row whose answer stands in for ``id_`` under model ``model_hash`` (deterministic)."""
        k = self._decoy_keys.get(model_hash)
        if k is None:
            k = self._decoy_keys[model_hash] = hmac.new(
                self._key, b"fedcredit.scoring.decoy.v1\0" + model_hash.encode("ascii", "replace"), hashlib.sha256
            ).digest()
        h = hmac.new(k, id_.encode("utf-8"), hashlib.sha256).digest()
        return int.from_bytes(h[:8], "big") % n_rows


@dataclass
class _Bucket:
    tokens: float
    last: float
    day: int
    used_today: int = 0


@dataclass
class RateLimiter:
    """Per-caller token bucket (``ids_per_second``, ``burst``) plus a per-UTC-day quota, all-or-nothing per request."""

    party: str
    ids_per_second: float
    burst: int
    ids_per_day: int
    clock: Callable[[], float] = time.monotonic  # seconds, for the bucket
    wall: Callable[[], float] = time.time  # seconds since the epoch, for the UTC day
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, caller: str, n: int) -> None:
        """Spend ``n`` ids of ``caller``'s allowance, or raise RateLimited (nothing spent)."""
        now = self.clock()
        day = int(self.wall() // 86400)
        with self._lock:
            b = self._buckets.get(caller)
            if b is None:
                b = self._buckets[caller] = _Bucket(tokens=float(self.burst), last=now, day=day)
            b.tokens = min(float(self.burst), b.tokens + (now - b.last) * self.ids_per_second)
            b.last = now
            if b.day != day:
                b.day, b.used_today = day, 0
            if n > self.burst:
                raise RateLimited(f"party '{self.party}': a request for {n} ids is larger than the {self.burst} "
                                  f"ids one request may ask for ([scoring.partial_rate].burst); refused")
            if b.used_today + n > self.ids_per_day:
                raise RateLimited(f"party '{self.party}': '{caller}' has used {b.used_today} of its {self.ids_per_day} "
                                  f"ids for today (UTC); {n} more refused")
            if n > b.tokens:
                wait = (n - b.tokens) / self.ids_per_second
                raise RateLimited(f"party '{self.party}': '{caller}' is over its rate of {self.ids_per_second:g} ids/s "
                                  f"(burst {self.burst}); {n} ids refused, retry in {wait:.1f} s")
            b.tokens -= n
            b.used_today += n
