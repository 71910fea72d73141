"""In-process vertical jobs: every party's real party code in one process, one thread per party.

Why: ``fedcredit simulate vertical-*`` without ``--deployment`` should take seconds to set
up, like the horizontal simulation, yet exercise exactly the code a deployed party runs.
Each thread calls :func:`fedcredit.protocols.vertical_jobs.run_vertical_party_core` — the
same PSI, split, vertical LR / SecureBoost and evaluation as a SuperNode — over an
endpoint of one :class:`fedcredit.transport.InMemoryHub` instead of the TLS relay.  There
is no coordinator in the conversation (there is none in the deployment either: it only
launches the job and collects each party's public reply).

A failure in one party must not leave the others waiting for messages that will never
come: :func:`simulations.inprocess.run_roles` aborts a failed party on the hub (the same
``Transport.abort`` a deployed party sends over the relay) and re-raises the first failure.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console

from fedcredit.config import DatasetSection, JobConfig
from fedcredit.data import Table, load_dataset
from fedcredit.errors import ConfigError
from fedcredit.params import format_errors
from fedcredit.transport import InMemoryHub, Transport
from simulations.inprocess import run_roles

__all__ = ["run_vertical_inprocess"]

def _datasets(party: str, tables: Mapping[str, Mapping[str, Any]]) -> dict[str, DatasetSection]:
    out = {}
    for k, v in tables.items():
        try:
            out[k] = DatasetSection.model_validate(dict(v))
        except ValidationError as e:
            raise ConfigError(format_errors(e, f"party '{party}' (in-process simulation)", f"datasets.{k}")) from None
    return out


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
    console.print(f"{spec.type}: {len(spec.parties)} parties as threads over an in-memory hub "
                  f"(label party '{spec.label_party}'); party logs on stderr")

    def role(p: str, transport: Transport) -> dict[str, Any]:
        # what the coordinator would get: the JSON reply, nothing else
        return dict(json.loads(json.dumps(run_vertical_party_core(transport, views[p]))))

    replies = run_roles(hub, {p: partial(role, p) for p in spec.parties}, timeout_s=timeout_s)

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

