"""The Flower ClientApp: a party's side of every fedcredit job.

Each job message starts this ClientApp inside the party's SuperNode.  It loads the
party's own config (``party-config`` node setting), verifies the peers' certificates
against its own copy of the federation CA, and dispatches to the party role of the
job's protocol: horizontal rounds answer one coordinator call each; a vertical job
(one ``vertical.run`` call) joins the run's data-plane session and runs the whole
protocol party-to-party; publishing builds and installs this party's artifact.
Every reply that leaves towards the coordinator is recorded in the audit log.
The envelope it shares with the ServerApp is :mod:`fedcredit.control_plane`.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from crypto.certs import Identity, verify_peer
from fedcredit.channel import DirState
from fedcredit.config import PartyConfig, load_party_config
from fedcredit.control_plane import REPLY_SUFFIX, VERTICAL_RUN, pack, unpack
from fedcredit.data import Table, load_dataset
from fedcredit.errors import ConfigError, FedCreditError, ProtocolError
from fedcredit.jobs import parse_job
from fedcredit.protocols import horizontal
from fedcredit.protocols.vertical_jobs import VerticalParty, run_vertical_party_core
from party.audit import AuditLog
from party.dataplane import RelayTransport
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
        self.job = parse_job(str(meta["job_toml"]))
        if p.name not in self.job.job.parties:
            raise ConfigError(f"party '{p.name}' is not listed in this job's [job].parties")
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
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def name(self) -> str:
        return self.config.party.name

    def table(self, key: str) -> Table:
        """This party's dataset ``key``, loaded exactly as the daemon's start-up check loads it."""
        return load_dataset(self.config.dataset(key), party=self.name)

    def vertical_party(self) -> VerticalParty:
        """This party's view for the transport-agnostic vertical job core (tables loaded when the job needs them)."""
        return VerticalParty(self.name, self.run_id, self.job, frozenset(self.config.datasets), self.table,
                             self.config.party.state_dir)


@client_app.query()
def client_query(msg: Message, context: Context) -> Message:
    method, payload, meta = unpack(msg.content)
    try:
        reply = run_party_role(str(context.node_config["party-config"]), method, payload, meta)
        return Message(content=pack(method + REPLY_SUFFIX, reply, {}), reply_to=msg)
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
    """Answer one coordinator call for this party (dispatch by method and job type)."""
    rt = PartyRuntime(config_path, meta)
    if method.startswith("artifact."):
        train = rt.config.datasets.get(rt.job.job.train_dataset)
        reply = publish_handler(rt.config, id_column=train.id_column if train else "id")(method, payload)
    elif rt.job.job.type == "horizontal":
        reply = _party_horizontal(rt, method, payload)
    elif method == VERTICAL_RUN:
        reply = json.dumps(run_vertical_party(rt)).encode()
    else:
        raise ProtocolError(f"party '{rt.name}': unexpected method '{method}' for a {rt.job.job.type} job")
    _audit_reply(rt, method, reply)
    return reply


def _party_horizontal(rt: PartyRuntime, method: str, payload: bytes) -> bytes:
    # this process answers one call: a table is loaded only if that method needs it
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
            session=rt.run_id,
            audit=audit,
            peer_certs=peer_certs or None,
            recv_timeout=rt.job.job.round_timeout_s,
        )
    except BaseException:
        audit.close()
        raise
    try:
        return run_vertical_party_core(raw, rt.vertical_party())
    finally:
        raw.close()
        audit.close()
