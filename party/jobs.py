"""A party's job ledger: every run id it was asked about, its digest, its approval state — and the gate.

Why a ledger: an approval means nothing if an old job can be played again, so each
run id is *accepted once*.  ``<state_dir>/jobs/<run_id>.json`` (owner-only, written
atomically, changed under a lock) records the job text, its digest
(:func:`party.policy.job_digest`), the datasets and columns it would use, the rules'
verdicts and the state:

``pending``   a person must decide (``approval = "manual"``); expires after ``approval_expiry_s``
``approved``  a person approved it; the run's next ``job.admit`` call makes it ``active``
``active``    accepted: the run's calls are served (for at most ``run_lifetime_s``)
``finished``  the run's last call (``artifact.install``) was served; nothing more for this run id
``rejected`` / ``expired`` / ``refused``  final; every call of this run id is refused

Which calls belong to one run (all carry the run id in their meta):
``job.admit`` first (the coordinator asks every party before any protocol call), then
the protocol's calls — horizontal ``setup``, ``install_key``, ``fit`` (per round),
``finalize``, ``global_metrics``; vertical ``vertical.run`` — then publishing,
``artifact.build`` and ``artifact.install`` (which finishes the run).  ``job.admit``
is the only call that can create or accept an entry; every other call needs an
``active`` entry with the same digest.  So a replayed job (same run id and text,
later) is refused at ``job.admit`` (already accepted) and at every other call once the
run finished; a changed job under the same run id is refused (another digest).

Every decision and every dataset use is a policy line in the audit log
(:meth:`party.audit.AuditLog.record_policy`).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crypto.files import exclusive_lock, write_file
from fedcredit.config import PartyConfig
from fedcredit.errors import ConfigError, PolicyRefused
from party.audit import AuditLog
from party.policy import Review

__all__ = ["JobEntry", "JobLedger", "ADMIT_WAIT_S", "AUTO_APPROVER", "STATES"]

#: How long one ``job.admit`` call waits for a person's decision before it answers "pending" (the coordinator
#: asks again): short enough that the coordinator's run shows "awaiting approval", long enough for a quick approval.
ADMIT_WAIT_S = 20.0
_POLL_S = 0.25  # how often a waiting call re-reads the ledger entry
AUTO_APPROVER = "policy (auto)"
STATES = ("pending", "approved", "active", "finished", "rejected", "expired", "refused")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,127}$")


def _now() -> float:
    return time.time()


@dataclass
class JobEntry:
    """One run id's ledger entry (what ``party jobs show`` prints)."""

    run_id: str
    digest: str
    status: str
    job_type: str
    parties: list[str]
    job_toml: str
    peers: dict[str, str]  # partner -> certificate SHA-256 fingerprint
    datasets: dict[str, list[str]]  # dataset key -> columns the job would use
    rules: list[dict[str, Any]]
    created: float
    expires_at: float | None = None  # pending only
    decided_by: str = ""
    decided_at: float | None = None
    reason: str = ""
    rule: str = ""  # the rule that refused it (refused/rejected/expired)
    accepted_at: float | None = None
    finished_at: float | None = None
    calls: dict[str, int] = field(default_factory=dict)  # method -> times served

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobEntry:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


class JobLedger:
    """The ledger in ``<state_dir>/jobs/`` of one party, plus the audit lines for each transition."""

    def __init__(self, config: PartyConfig) -> None:
        self.config = config
        self.party = config.party.name
        self.root = Path(config.party.state_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.audit_path = Path(config.party.state_dir) / "audit.jsonl"

    # ------------------------------------------------------------------ storage
    def _path(self, run_id: str) -> Path:
        if not _RUN_ID.match(run_id):
            raise ConfigError(f"party '{self.party}': malformed run id {run_id!r}")
        return self.root / f"{run_id}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (concurrent ClientApp processes and the officer's CLI)."""
        with exclusive_lock(self.root / ".lock"):
            yield

    def get(self, run_id: str) -> JobEntry | None:
        p = self._path(run_id)
        if not p.exists():
            return None
        try:
            return JobEntry.from_dict(json.loads(p.read_text()))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"party '{self.party}': job ledger entry {p} is malformed ({e})") from None

    def _put(self, e: JobEntry) -> None:
        write_file(self._path(e.run_id), json.dumps(asdict(e), indent=1, sort_keys=True).encode(), what="job ledger")

    def list(self, status: str | None = None) -> list[JobEntry]:
        """Every entry (or those in ``status``), oldest first; pending ones past their expiry are expired first."""
        self.expire_overdue()
        out = [e for p in sorted(self.root.glob("*.json")) if (e := self.get(p.stem)) is not None]
        return sorted((e for e in out if status is None or e.status == status), key=lambda e: e.created)

    def _audit(self, event: str, e: JobEntry | Review, *, method: str = "", rule: str = "", by: str = "",
               detail: str = "") -> None:
        log = AuditLog(self.audit_path)
        try:
            if isinstance(e, Review):
                log.record_policy(event=event, session=e.run_id, party=self.party, digest=e.digest,
                                  job_type=e.job_type, method=method, datasets=e.datasets(), rule=rule, by=by,
                                  detail=detail)
            else:
                log.record_policy(event=event, session=e.run_id, party=self.party, digest=e.digest,
                                  job_type=e.job_type, method=method, datasets=e.datasets, rule=rule, by=by,
                                  detail=detail)
        finally:
            log.close()

    def _refuse(self, review: Review, method: str, rule: str, detail: str) -> PolicyRefused:
        self._audit("refused", review, method=method, rule=rule, by=self.party, detail=detail)
        return PolicyRefused(self.party, rule, detail)

    # ------------------------------------------------------------------ transitions
    def _expire(self, e: JobEntry) -> bool:
        if e.status == "pending" and e.expires_at is not None and _now() >= e.expires_at:
            e.status, e.rule, e.decided_at = "expired", "approval_expiry", _now()
            e.reason = f"no decision within [policy].approval_expiry_s = {self.config.policy.approval_expiry_s:g} s"
            e.decided_by = self.party
            self._put(e)
            self._audit("expired", e, rule=e.rule, by=self.party, detail=e.reason)
            return True
        return False

    def expire_overdue(self) -> None:
        with self._locked():
            for p in sorted(self.root.glob("*.json")):
                e = self.get(p.stem)
                if e is not None:
                    self._expire(e)

    def _new_entry(self, review: Review, job_toml: str, status: str) -> JobEntry:
        return JobEntry(run_id=review.run_id, digest=review.digest, status=status, job_type=review.job_type,
                        parties=list(review.canonical["job"]["job"]["parties"]), job_toml=job_toml,
                        peers=dict(review.canonical["peers"]), datasets=review.datasets(),
                        rules=[r.to_dict() for r in review.results], created=_now())

    def _final_refusal(self, e: JobEntry, review: Review, method: str) -> PolicyRefused | None:
        """The refusal for an entry that can take no (more) work, or None if it is pending/approved/active."""
        if e.digest != review.digest:
            return self._refuse(review, method, "replay",
                                f"run id '{e.run_id}' was already submitted to this party with another job spec "
                                f"(digest {e.digest[:16]}…, now {review.digest[:16]}…); a changed job needs a new run")
        if e.status == "finished":
            return self._refuse(review, method, "replay",
                                f"run '{e.run_id}' finished at {_fmt(e.finished_at)}; its id is not accepted for new work")
        if e.status in ("rejected", "expired", "refused"):
            return self._refuse(review, method, e.rule or e.status, f"this job was {e.status}: {e.reason}")
        return None

    def admit(self, review: Review, job_toml: str, wait_s: float = ADMIT_WAIT_S) -> dict[str, Any]:
        """``job.admit``: accept, refuse, or wait (at most ``wait_s``) for a person's decision.

        Returns ``{"status": "accepted"|"pending", "digest", ...}``; raises :class:`PolicyRefused`.
        """
        method = "job.admit"
        with self._locked():
            e = self.get(review.run_id)
            if e is None:
                if not review.ok:
                    f = review.failure
                    assert f is not None
                    e = self._new_entry(review, job_toml, "refused")
                    e.rule, e.reason, e.decided_by, e.decided_at = f.rule, f.detail, self.party, _now()
                    self._put(e)
                    raise self._refuse(review, method, f.rule, f.detail)
                if self.config.policy.approval == "auto":
                    e = self._new_entry(review, job_toml, "active")
                    e.decided_by, e.decided_at, e.accepted_at = AUTO_APPROVER, _now(), _now()
                    self._put(e)
                    self._audit("accepted", review, method=method, rule="approval=auto", by=AUTO_APPROVER,
                                detail="every rule passed")
                    return self._accepted(e)
                e = self._new_entry(review, job_toml, "pending")
                e.expires_at = _now() + self.config.policy.approval_expiry_s
                self._put(e)
                self._audit("pending", review, method=method, rule="approval=manual",
                            detail=f"awaiting an officer's approval until {_fmt(e.expires_at)}")
            else:
                refusal = self._final_refusal(e, review, method)
                if refusal is not None:
                    raise refusal
                if e.status == "active":
                    raise self._refuse(review, method, "replay",
                                       f"run '{e.run_id}' was already accepted at {_fmt(e.accepted_at)}; "
                                       "a run id is accepted once")
        deadline = _now() + max(0.0, wait_s)
        while True:  # bounded: until the decision, the expiry or ``wait_s``
            with self._locked():
                e = self.get(review.run_id)
                assert e is not None
                if self._expire(e):
                    raise PolicyRefused(self.party, "approval_expiry", e.reason)
                if e.status == "approved":
                    if not review.ok:  # the policy changed since the officer approved it
                        f = review.failure
                        assert f is not None
                        raise self._refuse(review, method, f.rule, f.detail)
                    e.status, e.accepted_at = "active", _now()
                    self._put(e)
                    self._audit("accepted", review, method=method, rule="approval=manual", by=e.decided_by,
                                detail=f"approved by {e.decided_by}")
                    return self._accepted(e)
                if e.status == "rejected":
                    raise self._refuse(review, method, "approval", f"rejected by this party's officer: {e.reason}")
                if e.status != "pending":
                    refusal = self._final_refusal(e, review, method)
                    raise refusal or self._refuse(review, method, "replay", f"run '{e.run_id}' is {e.status}")
                if _now() >= deadline:
                    return {"status": "pending", "digest": e.digest, "party": self.party,
                            "expires_in_s": max(0.0, (e.expires_at or _now()) - _now()),
                            "message": f"awaiting approval at party '{self.party}' "
                                       f"(fedcredit party jobs approve {e.run_id})"}
            time.sleep(_POLL_S)  # an officer's decision arrives as a file change; poll the ledger entry

    def _accepted(self, e: JobEntry) -> dict[str, Any]:
        # who approved stays in this party's ledger and audit log; the coordinator learns only how
        return {"status": "accepted", "digest": e.digest, "party": self.party,
                "approval": "auto" if e.decided_by == AUTO_APPROVER else "manual"}

    def authorize(self, review: Review, method: str) -> None:
        """Any call of a run but ``job.admit``: the run must be active, with this digest, within its lifetime,
        and the job must still pass the policy as it is now."""
        with self._locked():
            e = self.get(review.run_id)
            if e is None:
                raise self._refuse(review, method, "admission",
                                   f"run '{review.run_id}' was never admitted at this party (no job.admit)")
            refusal = self._final_refusal(e, review, method)
            if refusal is not None:
                raise refusal
            if e.status != "active":
                raise self._refuse(review, method, "admission",
                                   f"run '{e.run_id}' is {e.status}, not accepted yet")
            lifetime = self.config.policy.run_lifetime_s
            if e.accepted_at is not None and _now() > e.accepted_at + lifetime:
                raise self._refuse(review, method, "run_lifetime",
                                   f"run '{e.run_id}' was accepted at {_fmt(e.accepted_at)}, more than "
                                   f"[policy].run_lifetime_s = {lifetime:g} s ago")
            if not review.ok:
                f = review.failure
                assert f is not None
                raise self._refuse(review, method, f.rule, f.detail)
            e.calls[method] = e.calls.get(method, 0) + 1
            self._put(e)

    def finish(self, review: Review, method: str) -> None:
        """The run's last call was served: its id takes no more work."""
        with self._locked():
            e = self.get(review.run_id)
            if e is None or e.status != "active":
                return
            e.status, e.finished_at = "finished", _now()
            self._put(e)
        self._audit("finished", review, method=method, by=self.party, detail="the run's last call was served")

    def record_use(self, review: Review, method: str, key: str, columns: builtins.list[str], rows: int) -> None:
        """A dataset was handed to the job (one line per table per call)."""
        log = AuditLog(self.audit_path)
        try:
            log.record_policy(event="dataset_used", session=review.run_id, party=self.party, digest=review.digest,
                              job_type=review.job_type, method=method, datasets={key: columns}, rule="columns",
                              by=self.party, detail=f"{rows} rows")
        finally:
            log.close()

    # ------------------------------------------------------------------ the officer
    def decide(self, run_id: str, *, approve: bool, by: str, reason: str = "",
               review: Review | None = None) -> JobEntry:
        """``party jobs approve|reject``: only a pending, unexpired entry; approving needs every rule to pass."""
        with self._locked():
            e = self.get(run_id)
            if e is None:
                raise ConfigError(f"party '{self.party}': no job with run id '{run_id}' in {self.root}")
            if self._expire(e):
                raise ConfigError(f"party '{self.party}': run '{run_id}' expired at {_fmt(e.expires_at)}; "
                                  "the coordinator must submit it again (a new run)")
            if e.status != "pending":
                raise ConfigError(f"party '{self.party}': run '{run_id}' is {e.status}, not pending")
            if approve and review is not None:
                if review.digest != e.digest:
                    raise ConfigError(f"party '{self.party}': run '{run_id}': the job no longer matches its digest")
                if not review.ok:
                    f = review.failure
                    assert f is not None
                    raise ConfigError(f"party '{self.party}': cannot approve run '{run_id}': rule {f.rule} fails "
                                      f"under the current [policy]: {f.detail}")
            e.status = "approved" if approve else "rejected"
            e.decided_by, e.decided_at = by, _now()
            e.reason = reason or ("approved" if approve else "rejected by the party's officer")
            e.rule = "" if approve else "approval"
            self._put(e)
            self._audit("approved" if approve else "rejected", e, rule="approval=manual", by=by, detail=e.reason)
            return e


def _fmt(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"
