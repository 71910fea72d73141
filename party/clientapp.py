"""The Flower ClientApp: a party's side of every fedcredit job.

Each job message starts this ClientApp inside the party's SuperNode.  It loads the
party's own config (``party-config`` node setting), verifies the peers' certificates
against its own copy of the federation CA, and dispatches to the party role of the
job's protocol: horizontal rounds answer one coordinator call each; a vertical job
(one ``vertical.run`` call) joins the run's data-plane session and runs the whole
protocol party-to-party; publishing builds and installs this party's artifact.

Before any of that, :func:`run_party_role` — the one entry point of every call —
checks the job against this party's ``[policy]`` (:mod:`party.policy`) and its job
ledger (:mod:`party.jobs`): ``job.admit`` accepts the run, refuses it or waits for
an officer; every other call needs an accepted run with the same digest.  The job's
tables come only through :meth:`PartyRuntime.table`, which hands over the approved
datasets and columns only and records each use in the audit log.
Every reply that leaves towards the coordinator is recorded in the audit log.
The envelope it shares with the ServerApp is :mod:`fedcredit.control_plane`.

Resume (docs/resume.md): a ``vertical.run`` whose meta says ``resume`` (attempt n >= 2 of the
same run id, sent by ``fedcredit runs resume``) passes the same gate — the ledger must hold
the run as accepted with the same digest, so only the job this party approved can resume —
then joins the attempt's own data-plane session and continues from this party's
checkpoints.  A failed ``vertical.run`` that the checkpoints can cure answers with
``resumable`` and the step numbers it kept, so the coordinator marks the run interrupted.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from crypto.certs import Identity, cert_fingerprint, verify_peer
from fedcredit import compute
from fedcredit.channel import DirState
from fedcredit.checkpoint import attempt_session
from fedcredit.config import PartyConfig, load_party_config
from fedcredit.control_plane import ARTIFACT_INSTALL, JOB_ADMIT, REPLY_SUFFIX, VERTICAL_RUN, pack, unpack
from fedcredit.data import Table, load_dataset
from fedcredit.errors import FedCreditError, PolicyRefused, ProtocolError
from fedcredit.jobs import horizontal_job, parse_job
from fedcredit.params import HorizontalJob
from fedcredit.protocols import horizontal
from fedcredit.protocols.vertical_jobs import VerticalParty, is_final_failure, resumable_state, run_vertical_party_core
from party.audit import AuditLog
from party.dataplane import RelayTransport
from party.jobs import ADMIT_WAIT_S, JobLedger
from party.policy import DatasetUse, Review, effective_min_intersection, review_job
from party.publish import party_handler as publish_handler

__all__ = ["client_app", "PartyRuntime", "run_party_role", "run_vertical_party"]

client_app = ClientApp()


class PartyRuntime:
    """What a party's ClientApp knows for one message: its config, identity, verified peers."""

    def __init__(self, config_path: str | Path, meta: Mapping[str, Any]) -> None:
        self.config: PartyConfig = load_party_config(config_path)
        p = self.config.party
        self.identity = Identity.load(p.identity_dir, p.name)
        self.run_id = str(meta["run_id"])
        if not self.run_id.replace("-", "").isalnum():
            raise ProtocolError(f"party '{p.name}': malformed run id {self.run_id!r}")
        self.job_toml = str(meta["job_toml"])
        self.job = parse_job(self.job_toml)
        # every peer certificate is checked against OUR copy of the federation CA
        self.peers = {
            name: verify_peer(pem.encode(), self.identity.ca_pem, expected_name=name).envelope_public
            for name, pem in dict(meta.get("peer_certs", {})).items()
            if name != p.name
        }
        # the verified PEMs, for the data plane (RelayTransport re-verifies them and skips the relay directory)
        self.peer_certs: dict[str, bytes] = {
            name: str(pem).encode() for name, pem in dict(meta.get("peer_certs", {})).items() if name in self.peers
        }
        self.run_dir = p.state_dir / "runs" / self.run_id
        #: attempt n >= 2 of the run (``fedcredit runs resume``): continue from this party's checkpoints
        self.resume = bool(meta.get("resume", False))
        self.attempt = int(meta.get("attempt", 1))
        if self.resume != (self.attempt > 1):
            raise ProtocolError(f"party '{p.name}': inconsistent resume request (resume={self.resume}, "
                                f"attempt {self.attempt})")
        self.ledger = JobLedger(self.config)
        #: this job checked against [policy]: digest, datasets/columns it may use, the rules' verdicts
        self.review: Review = review_job(self.config, self.job, self.run_id, self.peer_fingerprints)
        self.method = ""  # the call being served (set by run_party_role; named in dataset-use audit lines)
        self.admitted = False  # set once the ledger accepted this call; tables are handed out only then

    @property
    def name(self) -> str:
        return self.config.party.name

    @property
    def peer_fingerprints(self) -> dict[str, str]:
        """partner -> SHA-256 of its verified certificate (what an approval binds to)."""
        return {name: cert_fingerprint(pem) for name, pem in self.peer_certs.items()}

    def authorize(self, method: str) -> None:
        """The policy gate for one call that is not ``job.admit``: the ledger must hold this run as accepted, with
        this digest, and the job must pass the policy as it is now; only then are tables handed out."""
        self.method = method
        self.ledger.authorize(self.review, method)  # raises PolicyRefused naming this party and the rule
        self.admitted = True

    def _use(self, key: str) -> DatasetUse:
        if not self.admitted:
            raise PolicyRefused(self.name, "admission", f"dataset '{key}' asked for outside an authorised call")
        use = next((u for u in self.review.uses if u.key == key), None)
        if use is None:
            raise PolicyRefused(self.name, "datasets", f"the job asked for dataset '{key}', which is not part of "
                                f"what run '{self.run_id}' was approved to use ({sorted(self.review.datasets())})")
        return use

    def table(self, key: str) -> Table:
        """Dataset ``key`` for this run: loaded exactly as the daemon's start-up check loads it, then narrowed to
        the approved columns (features, and the label only where the job may use it); each use is audited."""
        use = self._use(key)
        t = load_dataset(self.config.dataset(key), party=self.name).select(list(use.features))
        if use.label_column is None:
            t = replace(t, y=None)
        self.ledger.record_use(self.review, self.method, key, use.columns, len(t))
        return t

    def vertical_party(self) -> VerticalParty:
        """This party's view for the transport-agnostic vertical job core (tables loaded when the job needs them)."""
        min_size, rule = effective_min_intersection(self.config, self.job)
        return VerticalParty(self.name, self.run_id, self.job, frozenset(self.config.datasets), self.table,
                             self.config.party.state_dir, min_intersection=min_size,
                             min_intersection_rule=f"party '{self.name}': {rule}", resume=self.resume)


class Resumable(ProtocolError):
    """A vertical job failed in a way its checkpoints can cure; ``checkpoint`` names the steps kept."""

    def __init__(self, message: str, checkpoint: str) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


@client_app.query()
def client_query(msg: Message, context: Context) -> Message:
    method, payload, meta = unpack(msg.content)
    try:
        reply = run_party_role(str(context.node_config["party-config"]), method, payload, meta)
        return Message(content=pack(method + REPLY_SUFFIX, reply, {}), reply_to=msg)
    except Resumable as e:
        return Message(content=pack(method + REPLY_SUFFIX, b"", {"error": str(e), "resumable": True,
                                                                 "checkpoint": e.checkpoint}), reply_to=msg)
    except FedCreditError as e:
        return Message(content=pack(method + REPLY_SUFFIX, b"", {"error": str(e)}), reply_to=msg)
    except Exception as e:  # noqa: BLE001 - report, never leak a traceback with data across
        traceback.print_exc()
        return Message(content=pack(method + REPLY_SUFFIX, b"", {"error": f"internal error: {type(e).__name__}: {e}"}),
                       reply_to=msg)


def _audit_reply(rt: PartyRuntime, method: str, reply: bytes) -> None:
    """Record what leaves the party towards the coordinator (what, to whom, size, hash)."""
    log = AuditLog(rt.config.party.state_dir / "audit.jsonl")
    try:
        log.record_sent(session=rt.run_id, sender=rt.name, receiver="coordinator", tag=method + REPLY_SUFFIX, seq=0,
                        sealed=reply)
    finally:
        log.close()


def run_party_role(config_path: str | Path, method: str, payload: bytes, meta: Mapping[str, Any]) -> bytes:
    """Answer one coordinator call for this party: the policy gate first, then dispatch by method and job type."""
    rt = PartyRuntime(config_path, meta)
    rt.method = method
    if method == JOB_ADMIT:
        wait = min(ADMIT_WAIT_S, rt.job.job.round_timeout_s / 3)
        reply = json.dumps(rt.ledger.admit(rt.review, rt.job_toml, wait_s=wait)).encode()
        _audit_reply(rt, method, reply)
        return reply
    rt.authorize(method)
    if method.startswith("artifact."):
        _same_run(rt, method, payload)
        train = rt.config.datasets.get(rt.job.job.train_dataset)
        reply = publish_handler(rt.config, id_column=train.id_column if train else "id")(method, payload)
    elif rt.job.job.type == "horizontal":
        reply = _party_horizontal(rt, method, payload)
    elif method == VERTICAL_RUN:
        reply = json.dumps(run_vertical_party(rt)).encode()
    else:
        raise ProtocolError(f"party '{rt.name}': unexpected method '{method}' for a {rt.job.job.type} job")
    if method == ARTIFACT_INSTALL:
        rt.ledger.finish(rt.review, method)
    _audit_reply(rt, method, reply)
    return reply


def _same_run(rt: PartyRuntime, method: str, payload: bytes) -> None:
    """A publishing payload names its run: it must be the run this call was authorised for."""
    try:
        run_id = str(json.loads(payload.decode())["run_id"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ProtocolError(f"party '{rt.name}': malformed {method} request") from None
    if run_id != rt.run_id:
        raise PolicyRefused(rt.name, "digest", f"{method} names run '{run_id}' inside a call for run '{rt.run_id}'")


def _check_horizontal_payload(rt: PartyRuntime, method: str, payload: bytes) -> None:
    """The horizontal messages carry the run id and (setup) the protocol's job: both must be the approved ones."""
    try:
        header, _ = horizontal.decode_message(payload, f"'{method}' request to party '{rt.name}'")
    except FedCreditError:
        return  # the protocol handler reports a malformed message itself
    if method == "setup":
        approved = horizontal_job(rt.job, rt.run_id)
        try:
            sent = HorizontalJob.from_dict(header.get("job"))
        except FedCreditError as e:
            raise PolicyRefused(rt.name, "digest", f"setup carries an invalid job: {e}") from None
        if sent != approved:
            diff = sorted(k for k in approved.to_dict() if approved.to_dict()[k] != sent.to_dict().get(k))
            raise PolicyRefused(rt.name, "digest", f"setup carries a job that differs from the approved one in {diff}")
    elif str(header.get("run_id", "")) != rt.run_id:
        raise PolicyRefused(rt.name, "digest",
                            f"'{method}' names run {header.get('run_id')!r} inside a call for run '{rt.run_id}'")


def _party_horizontal(rt: PartyRuntime, method: str, payload: bytes) -> bytes:
    # this process answers one call: a table is loaded only if that method needs it
    _check_horizontal_payload(rt, method, payload)
    train, test = rt.job.job.train_dataset, rt.job.job.test_dataset
    env = horizontal.PartyEnv(
        name=rt.name,
        envelope_private=rt.identity.envelope_private,
        peers=rt.peers,
        train=lambda: rt.table(train),
        test=(lambda: rt.table(test)) if test else None,
        output_dir=rt.config.party.state_dir / "models",
    )
    handler = horizontal.party_handler(env)
    return handler(method, payload, DirState(rt.run_dir / "state"))


def _say_compute(rt: PartyRuntime, pool: compute.WorkerPool) -> None:
    """The party's log line on where this run's HE work ran (its run report's ``compute`` section has the same)."""
    u = pool.usage()
    where = (f"{u['items']} items in {u['sessions']} sessions on worker processes {u['worker_pids']}"
             if u["sessions"] else "in this process")
    print(f"party '{rt.name}': run {rt.run_id} HE work ({u['engine']} engine, {u['workers']} workers): {where}",
          file=sys.stderr, flush=True)


def run_vertical_party(rt: PartyRuntime) -> dict[str, Any]:
    """The deployment wrapper: joins the run's data-plane session, then ``run_vertical_party_core``.

    The RelayTransport is built first: if this party's data is bad, closing it tells the peers at once.
    """
    peer_certs = {p: pem for p, pem in rt.peer_certs.items() if p != rt.name}
    audit = AuditLog(rt.config.party.state_dir / "audit.jsonl")
    try:
        raw = RelayTransport(
            rt.identity,
            rt.config.coordinator.relay_address,
            session=attempt_session(rt.run_id, rt.attempt),
            audit=audit,
            peer_certs=peer_certs or None,
            recv_timeout=rt.job.job.round_timeout_s,
            reconnect_window_s=rt.config.coordinator.reconnect_window_s,
        )
    except BaseException:
        audit.close()
        raise
    view = rt.vertical_party()
    pool = rt.config.compute.pool(rt.name)
    compute.configure(pool)  # this run's HE work runs on [compute] of the party config (worker processes by default)
    try:
        out = run_vertical_party_core(raw, view)
        _say_compute(rt, pool)
        return out
    except FedCreditError as e:
        if is_final_failure(e):
            raise
        raise Resumable(str(e), resumable_state(view.checkpoints)) from e
    finally:
        raw.close()
        audit.close()
        pool.close()
