"""In-process vertical jobs: every party's real party code in one process, one thread per party.

Why: ``fedcredit simulate vertical-*`` without ``--deployment`` should take seconds to set
up, like the horizontal simulation, yet exercise exactly the code a deployed party runs.
Each thread calls :func:`fedcredit.protocols.vertical_jobs.run_vertical_party_core` — the
same PSI, split, vertical LR / SecureBoost and evaluation as a SuperNode — over an
endpoint of one :class:`fedcredit.transport.InMemoryHub` instead of the TLS relay.  There
is no coordinator in the conversation (there is none in the deployment either: it only
launches the job and collects each party's public reply).

A failure in one party must not leave the others waiting for messages that will never
come: every endpoint is wrapped in :class:`_AbortableEndpoint`, which stops a blocked
``recv`` as soon as any party has failed, and the first failure is re-raised to the caller.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from fedcredit.config import DatasetSection, JobConfig
from fedcredit.data import Table, load_dataset
from fedcredit.errors import ConfigError, FedCreditError, ProtocolError
from fedcredit.transport import InMemoryHub, InMemoryTransport

__all__ = ["run_vertical_inprocess"]

#: how often a blocked ``recv`` checks whether another party has failed (not a readiness wait)
_ABORT_POLL_S = 0.2


class _Aborted(ProtocolError):
    """Raised in a party thread whose peer failed; never the reported cause."""


class _AbortableEndpoint:
    """An InMemoryHub endpoint whose ``recv`` gives up once ``abort`` is set (a peer failed).

    The deployment gets the same effect from the relay: a failing party closes its
    session and its peers' receives fail at once.
    """

    def __init__(self, inner: InMemoryTransport, hub: InMemoryHub, abort: threading.Event) -> None:
        self._inner, self._hub, self._abort = inner, hub, abort

    @property
    def me(self) -> str:
        return self._inner.me

    def send(self, to: str, tag: str, payload: bytes) -> None:
        if self._abort.is_set():
            raise _Aborted(f"party '{self.me}': stopped, another party failed")
        self._inner.send(to, tag, payload)

    def recv(self, frm: str, tag: str, timeout: float | None = None) -> bytes:
        total = self._hub.default_timeout if timeout is None else timeout
        deadline = time.monotonic() + total
        while True:
            if self._abort.is_set():
                raise _Aborted(f"party '{self.me}': stopped waiting for '{tag}' from '{frm}', another party failed")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProtocolError(f"{self.me}: no message '{tag}' from party '{frm}' within {total:.0f} s")
            try:
                return self._inner.recv(frm, tag, min(left, _ABORT_POLL_S))
            except ProtocolError:
                continue  # this slice timed out; check abort and the real deadline


def _datasets(party: str, tables: Mapping[str, Mapping[str, Any]]) -> dict[str, DatasetSection]:
    try:
        return {k: DatasetSection.model_validate(dict(v)) for k, v in tables.items()}
    except ValueError as e:
        raise ConfigError(f"party '{party}': bad dataset table for the in-process simulation: {e}") from None


def _load(sections: Mapping[str, DatasetSection], party: str, key: str) -> Table:
    """A party thread's table, loaded as a deployed party loads it (the keys were checked up front)."""
    return load_dataset(sections[key], party=party)


def run_vertical_inprocess(job: JobConfig, parties: Mapping[str, Mapping[str, Mapping[str, Any]]], out: Path,
                           console: Console, *, run_id: str | None = None,
                           timeout_s: float | None = None) -> dict[str, Any]:
    """Run a vertical job with every party as a thread of this process; returns a deployment-shaped report.

    ``parties`` = ``{party: {dataset key: {path, label_column, ...}}}`` (what
    ``prepare_vertical_data`` returns); each party's state (intersection, model part,
    the label party's evaluation report) goes to ``out/parties/<party>/``.  The report
    is ``{"global": label metrics, "parties": {party: public reply without metrics},
    "label_party", "intersection_size", "bytes_from_parties", "run_id", "status", "models"}``
    — the same keys the coordinator records for a deployed vertical job.

    ``timeout_s`` bounds the whole run (default: no bound beyond every receive's own
    timeout, ``[job].round_timeout_s``).  The first party failure is re-raised.
    """
    spec = job.job
    missing = [p for p in spec.parties if spec.train_dataset not in parties.get(p, {})]
    if missing:
        raise ConfigError(f"{spec.type} job: no '{spec.train_dataset}' data for part{'ies' if len(missing) > 1 else 'y'} "
                          f"{missing}")
    run_id = run_id or f"sim-{time.strftime('%Y%m%d-%H%M%S')}"
    from fedcredit.protocols.vertical_jobs import VerticalParty, run_vertical_party_core

    sections = {p: _datasets(p, parties[p]) for p in spec.parties}
    views = {
        p: VerticalParty(p, run_id, job, frozenset(sections[p]), partial(_load, sections[p], p),
                         (out / "parties" / p).resolve())
        for p in spec.parties
    }
    # same receive timeout as the deployment's RelayTransport (recv_timeout = round_timeout_s)
    hub = InMemoryHub(default_timeout=spec.round_timeout_s)
    abort = threading.Event()
    done = threading.Condition()
    replies: dict[str, dict[str, Any]] = {}
    errors: list[tuple[str, BaseException]] = []  # in order of failure: the first is the cause
    finished: set[str] = set()

    def party_thread(p: str) -> None:
        try:
            reply = run_vertical_party_core(_AbortableEndpoint(hub.endpoint(p), hub, abort), views[p])
            # what the coordinator would get: the JSON reply, nothing else
            replies[p] = json.loads(json.dumps(reply))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            with done:
                errors.append((p, e))
            abort.set()
        finally:
            with done:
                finished.add(p)
                done.notify_all()

    console.print(f"{spec.type}: {len(spec.parties)} parties as threads over an in-memory hub "
                  f"(label party '{spec.label_party}'); party logs on stderr")
    threads = {p: threading.Thread(target=party_thread, args=(p,), name=f"party-{p}", daemon=True)
               for p in spec.parties}
    for t in threads.values():
        t.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with done:
        while len(finished) < len(threads) and not errors:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                abort.set()
                break
            done.wait(timeout=left)
    for t in threads.values():
        t.join(timeout=60.0)  # after a failure: a party busy computing notices the abort at its next receive
    stuck = [p for p, t in threads.items() if t.is_alive()]
    causes = [(p, e) for p, e in errors if not isinstance(e, _Aborted)] or errors
    if causes:
        p, e = causes[0]
        if isinstance(e, FedCreditError) and f"'{p}'" not in str(e):
            raise type(e)(f"party '{p}': {e}") from e  # our error classes take one message
        raise e
    if stuck or len(replies) != len(threads):
        raise ProtocolError(
            f"in-process {spec.type} run {run_id}: part{'ies' if len(stuck) > 1 else 'y'} {stuck or sorted(set(threads) - set(replies))} "
            f"did not finish within {timeout_s} s"
        )

    label = spec.label_party
    assert label is not None  # JobConfig validation
    report: dict[str, Any] = {
        "global": replies[label].get("metrics", {}),
        "parties": {p: {k: v for k, v in r.items() if k != "metrics"} for p, r in replies.items()},
        "label_party": label,
        "intersection_size": replies[label].get("intersection_size"),
        "bytes_from_parties": {p: len(json.dumps(r).encode()) for p, r in replies.items()},
        "run_id": run_id,
        "status": "finished",
        "models": {p: str(v.state_dir / "models" / run_id) for p, v in views.items()},
    }
    return report

