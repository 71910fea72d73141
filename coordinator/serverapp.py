"""The Flower ServerApp: the coordinator's side of every fedcredit job.

Flower is only the control plane here.  The ServerApp runs in the coordinator's
process space: it reads the job from the run registry, maps party names to
SuperNode ids (registered by name, never by id order), and drives the job's
coordinator role through :class:`FlowerChannel`.  The message envelope it shares
with the parties' ClientApp is :mod:`fedcredit.control_plane`; protocol logic lives
in :mod:`fedcredit.protocols` and is shared with the in-process simulation.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from coordinator.publish import default_signing_key, publish_run
from coordinator.registry import CHECKPOINTED_TYPES, Registry
from fedcredit.config import CoordinatorConfig, JobConfig, load_coordinator_config
from fedcredit.control_plane import JOB_ADMIT, REPLY_SUFFIX, VERTICAL_RUN, pack, unpack
from fedcredit.errors import ConfigError, FedCreditError, ProtocolError
from fedcredit.jobs import horizontal_job, horizontal_public_result, parse_job
from fedcredit.protocols import horizontal

__all__ = ["server_app", "FlowerChannel", "PartyFailure", "run_coordinator_role"]

server_app = ServerApp()

Progress = Callable[[dict[str, Any]], None]


class PartyFailure(ProtocolError):
    """One or more parties failed a call; ``replies`` holds the ones that answered.

    ``resumable``: party -> the checkpoints it kept (e.g. ``"psi 1, sb 3"``), for each party whose error
    reply said a resume can cure it (``party.clientapp`` sets it on ``vertical.run`` only).
    """

    def __init__(self, errors: Mapping[str, str], replies: Mapping[str, bytes],
                 resumable: Mapping[str, str] | None = None, unreachable: frozenset[str] = frozenset()) -> None:
        self.errors = dict(errors)
        self.replies = dict(replies)
        self.resumable = dict(resumable or {})
        self.unreachable = unreachable  # no answer from the party itself (no reply, or Flower's own error)
        super().__init__("; ".join(f"party '{p}': {e}" for p, e in self.errors.items()))


class FlowerChannel:
    """:class:`fedcredit.channel.PartyChannel` over Flower messages (one hop per call)."""

    def __init__(self, grid: Grid, nodes: Mapping[str, int], meta: Mapping[str, Any], timeout: float) -> None:
        self.grid = grid
        self.nodes = dict(nodes)
        self.meta = dict(meta)
        self.timeout = timeout
        self.bytes_received: dict[str, int] = {p: 0 for p in nodes}
        self.bytes_sent: dict[str, int] = {p: 0 for p in nodes}
        # Coordinator-side wire capture for privacy audits and tests: every payload the
        # coordinator receives is written as-is (it only ever holds ciphertexts and public data).
        cap = os.environ.get("FEDCREDIT_CAPTURE_DIR")
        self.capture_dir = Path(cap) if cap else None
        self._seq = 0

    def _capture(self, party: str, method: str, payload: bytes) -> None:
        if self.capture_dir is None:
            return
        self.capture_dir.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        (self.capture_dir / f"{self._seq:05d}-{party}-{method}.bin").write_bytes(payload)

    @property
    def parties(self) -> list[str]:
        return list(self.nodes)

    def call_all(self, requests: Mapping[str, tuple[str, bytes]]) -> dict[str, bytes]:
        msgs, by_node = [], {}
        for party, (method, payload) in requests.items():
            node = self.nodes[party]
            by_node[node] = party
            self.bytes_sent[party] += len(payload)
            msgs.append(Message(content=pack(method, payload, self.meta), message_type="query", dst_node_id=node))
        replies = list(self.grid.send_and_receive(msgs, timeout=self.timeout))
        out: dict[str, bytes] = {}
        errors: dict[str, str] = {}
        resumable: dict[str, str] = {}
        unreachable: set[str] = set()
        for rep in replies:
            party = by_node.get(rep.metadata.src_node_id, f"node {rep.metadata.src_node_id}")
            if rep.has_error():  # Flower's own error (e.g. the node stopped heartbeating), not the party's answer
                errors[party] = str(rep.error.reason)
                unreachable.add(party)
                continue
            _, payload, meta = unpack(rep.content)
            if meta.get("error"):
                errors[party] = str(meta["error"])
                if meta.get("resumable"):
                    resumable[party] = str(meta.get("checkpoint") or "")
                continue
            self.bytes_received[party] = self.bytes_received.get(party, 0) + len(payload)
            self._capture(party, requests[party][0] + REPLY_SUFFIX, payload)
            out[party] = payload
        for party in requests:
            if party not in out and party not in errors:
                errors[party] = f"no reply within {self.timeout:.0f} s (disconnected?)"
                unreachable.add(party)
        if errors:
            raise PartyFailure(errors, out, resumable, frozenset(unreachable))
        return out


def wait_for_nodes(grid: Grid, nodes: Mapping[str, int], timeout: float, progress: Progress) -> None:
    """Block until every job party's SuperNode is connected (or fail naming the missing ones)."""
    deadline = time.monotonic() + timeout
    while True:
        online = set(grid.get_node_ids())
        missing = [p for p, n in nodes.items() if n not in online]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise ProtocolError(f"parties not connected after {timeout:.0f} s: {', '.join(missing)}")
        progress({"event": "waiting", "message": f"waiting for parties: {', '.join(missing)}"})
        time.sleep(1.0)  # poll Flower's node list; there is no push notification for it


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    registry = Registry(Path(str(cfg["registry"])))
    run_id = str(cfg["run_id"])
    rec = registry.get(run_id)
    if rec is None:
        raise RuntimeError(f"run {run_id} not found in {cfg['registry']}")
    registry.mark_running(run_id)

    def progress(ev: dict[str, Any]) -> None:
        registry.add_event(run_id, ev)

    try:
        coord = load_coordinator_config(str(cfg["coordinator_config"]))
        result = run_coordinator_role(grid, coord, registry, run_id, rec.job_toml, progress, attempt=rec.attempt)
        registry.finish(run_id, result)
    except FedCreditError as e:
        why = interruption(rec.type, e, run_id)
        if why is None:
            registry.fail(run_id, str(e))
        else:
            progress({"event": "interrupted", "message": why})
            registry.interrupt(run_id, why)
    except Exception as e:  # noqa: BLE001 - any crash must end the run as failed, with the reason
        registry.fail(run_id, f"internal error: {type(e).__name__}: {e}")
        traceback.print_exc()


def interruption(job_type: str, e: FedCreditError, run_id: str) -> str | None:
    """Why a failed vertical attempt can be resumed (the registry's ``interrupted`` reason), or None: it failed.

    Resumable: every party that answered with an error said its checkpoints can cure it, and any other
    failing party gave no answer at all (it died or is unreachable).  Anything a party calls final — bad
    data or config, a refusal, a missing checkpoint — and any non-vertical job fails for good.
    """
    if job_type not in CHECKPOINTED_TYPES or not isinstance(e, PartyFailure):
        return None
    if any(p not in e.resumable for p in e.errors if p not in e.unreachable):
        return None
    kept = "; ".join(f"{p} holds {e.resumable[p] or 'no checkpoint yet'}" for p in e.resumable)
    return f"{e} — resumable ({kept or 'no party answered'}): fedcredit runs resume {run_id}"


def run_coordinator_role(
    grid: Grid,
    coord: CoordinatorConfig,
    registry: Registry,
    run_id: str,
    job_toml: str,
    progress: Progress,
    *,
    attempt: int = 1,
) -> dict[str, Any]:
    """Drive one job from the ServerApp; returns the public result stored in the registry.

    ``attempt`` >= 2 is a resumed vertical run (``fedcredit runs resume``): the parties accepted it at
    attempt 1 (each re-checks the digest of the job it approved), so there is no ``job.admit``; the
    ``vertical.run`` message says ``resume`` and names the attempt's data-plane session.
    """
    job = parse_job(job_toml)
    nodes_by_party = registry.nodes()
    missing = [p for p in job.job.parties if p not in nodes_by_party]
    if missing:
        raise ConfigError(f"job parties not registered with the coordinator: {', '.join(missing)}")
    nodes = {p: int(nodes_by_party[p]) for p in job.job.parties}
    certs = {p.name: p.certificate.read_text() for p in coord.parties if p.name in nodes}
    progress({"event": "starting", "message": f"waiting for {len(nodes)} parties", "parties": {p: "waiting" for p in nodes}})
    wait_for_nodes(grid, nodes, timeout=job.job.round_timeout_s, progress=progress)
    meta: dict[str, Any] = {"run_id": run_id, "job_toml": job_toml, "peer_certs": certs}
    if attempt > 1:
        meta.update({"resume": True, "attempt": attempt})
    channel = FlowerChannel(grid, nodes, meta, timeout=job.job.round_timeout_s)
    if attempt > 1:
        progress({"event": "resuming", "message": f"attempt {attempt}: every party continues from its checkpoints",
                  "parties": {p: "resuming" for p in nodes}})
        out_admit: dict[str, Any] = {"resumed": attempt}
    else:
        out_admit = admit_job(channel, job, progress)
    if job.job.type == "horizontal":
        out = _coordinate_horizontal(channel, job, progress)
    else:
        out = _coordinate_vertical(channel, job, progress)
    out["publish"] = _publish(channel, coord, job, run_id, out, progress)
    out["admission"] = out_admit
    return out


#: Slack on top of the longest approval expiry a party announced before the coordinator stops asking.
_ADMIT_GRACE_S = 120.0


def admit_job(channel: FlowerChannel, job: JobConfig, progress: Progress) -> dict[str, Any]:
    """Ask every party to admit the run (``job.admit``) before any protocol call; returns who accepted it.

    A party with ``approval = "manual"`` answers "pending" after a short wait; it is asked again (and shown
    "awaiting approval") until it accepts, refuses or its approval expires — each party enforces its own expiry,
    the coordinator stops asking after the longest announced expiry plus a grace period.  A refusal fails the
    run with the party's error (it names the party and the rule).
    """
    parties = list(job.job.parties)
    state: dict[str, str] = {p: "asked" for p in parties}
    accepted: dict[str, dict[str, Any]] = {}
    deadline: float | None = None
    while True:
        pending = [p for p in parties if p not in accepted]
        replies = channel.call_all({p: (JOB_ADMIT, b"") for p in pending})  # PartyFailure on a refusal
        waiting: list[str] = []
        for p, raw in replies.items():
            try:
                rep = json.loads(raw.decode())
                status = str(rep["status"])
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                raise ProtocolError(f"party '{p}': malformed {JOB_ADMIT} reply") from None
            if status == "accepted":
                accepted[p] = {"approval": rep.get("approval"), "digest": rep.get("digest")}
                state[p] = "approved"
            elif status == "pending":
                waiting.append(p)
                state[p] = "awaiting approval"
                expiry = time.monotonic() + float(rep.get("expires_in_s", 0.0)) + _ADMIT_GRACE_S
                deadline = expiry if deadline is None else max(deadline, expiry)
            else:
                raise ProtocolError(f"party '{p}': unexpected {JOB_ADMIT} status {status!r}")
        if not waiting:
            progress({"event": "admitted", "message": "every party accepted the job", "parties": dict(state)})
            return accepted
        progress({"event": "approval", "message": f"awaiting approval at {', '.join(waiting)}",
                  "parties": dict(state)})
        if deadline is not None and time.monotonic() > deadline:
            raise ProtocolError("; ".join(f"party '{p}': approval still pending after its announced expiry"
                                          for p in waiting))


def _publish(channel: FlowerChannel, coord: CoordinatorConfig, job: JobConfig, run_id: str, out: Mapping[str, Any],
             progress: Progress) -> dict[str, Any]:
    """Signed artifacts for every party after training (coordinator.publish); a failure is reported, the
    trained run stays finished."""
    key = coord.federation.signing_key or default_signing_key(coord.federation.ca_dir)
    parties = [p for p in job.job.parties if p not in set(out.get("dropped") or [])]
    try:
        return publish_run(channel, run_id=run_id, parties=parties, signing_key=key,
                           metrics=out.get("global") or {}, progress=progress)
    except FedCreditError as e:
        progress({"event": "publish", "step": "failed", "message": f"publishing failed: {e}"})
        return {"published": False, "error": str(e)}


def _coordinate_horizontal(channel: FlowerChannel, job: JobConfig, progress: Progress) -> dict[str, Any]:
    hjob = horizontal_job(job, channel.meta["run_id"])
    result = horizontal.run_coordinator(channel, hjob, progress=progress)
    out = horizontal_public_result(result)
    out["bytes_from_parties"] = dict(channel.bytes_received)
    out["bytes_to_parties"] = dict(channel.bytes_sent)
    return out


def _coordinate_vertical(channel: FlowerChannel, job: JobConfig, progress: Progress) -> dict[str, Any]:
    """One Flower message per party launches the whole protocol over the data plane."""
    progress({"event": "vertical", "message": f"{job.job.type}: PSI then training over the data plane",
              "parties": {p: "running" for p in job.job.parties}})
    replies = channel.call_all({p: (VERTICAL_RUN, b"") for p in job.job.parties})
    parties = {p: json.loads(r.decode()) for p, r in replies.items()}
    label = job.job.label_party
    assert label is not None  # JobConfig validation guarantees it for vertical jobs
    out: dict[str, Any] = {"global": parties[label].get("metrics", {}), "parties": {}}
    for p, rep in parties.items():
        out["parties"][p] = {k: v for k, v in rep.items() if k != "metrics"}
    out["label_party"] = label
    out["intersection_size"] = parties[label].get("intersection_size")
    out["bytes_from_parties"] = dict(channel.bytes_received)
    return out
