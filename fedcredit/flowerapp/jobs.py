"""Job dispatch behind the Flower apps: which protocol role runs for a job type.

Coordinator side (:func:`run_coordinator_role`) and party side
(:func:`run_party_role`) sit side by side so the contract between them — the
message ``meta`` (run id, job text, peer certificates) — is visible in one place.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Mapping

from coordinator.registry import Registry
from crypto.certs import Identity, verify_peer
from fedcredit.config import CoordinatorConfig, JobConfig, PartyConfig, load_party_config, parse_job_text
from fedcredit.errors import ConfigError, ProtocolError

Progress = Callable[[dict[str, Any]], None]


def parse_job(job_toml: str, source: str = "job.toml") -> JobConfig:
    return parse_job_text(job_toml, source)


# =========================================================================== coordinator side


def run_coordinator_role(
    grid: Any,
    coord: CoordinatorConfig,
    registry: Registry,
    run_id: str,
    job_toml: str,
    progress: Progress,
    wait_for_nodes: Callable[..., None],
) -> dict[str, Any]:
    """Drive one job from the ServerApp; returns the public result stored in the registry."""
    from fedcredit.flowerapp.apps import FlowerChannel

    job = parse_job(job_toml)
    nodes_by_party = registry.nodes()
    missing = [p for p in job.job.parties if p not in nodes_by_party]
    if missing:
        raise ConfigError(f"job parties not registered with the coordinator: {', '.join(missing)}")
    nodes = {p: int(nodes_by_party[p]) for p in job.job.parties}
    certs = {p.name: p.certificate.read_text() for p in coord.parties if p.name in nodes}
    progress({"event": "starting", "message": f"waiting for {len(nodes)} parties", "parties": {p: "waiting" for p in nodes}})
    wait_for_nodes(grid, nodes, timeout=job.job.round_timeout_s, progress=progress)
    meta = {"run_id": run_id, "job_toml": job_toml, "peer_certs": certs}
    channel = FlowerChannel(grid, nodes, meta, timeout=job.job.round_timeout_s)
    if job.job.type == "horizontal":
        out = _coordinate_horizontal(channel, job, progress)
    else:
        out = _coordinate_vertical(channel, job, progress)
    out["publish"] = _publish(channel, coord, job, run_id, out, progress)
    return out


def _publish(channel: Any, coord: CoordinatorConfig, job: JobConfig, run_id: str, out: Mapping[str, Any],
             progress: Progress) -> dict[str, Any]:
    """Signed artifacts for every party after training (fedcredit.flowerapp.publish); a failure is reported, the
    trained run stays finished."""
    from fedcredit.errors import FedCreditError
    from fedcredit.flowerapp.publish import default_signing_key, publish_run

    key = coord.federation.signing_key or default_signing_key(coord.federation.ca_dir)
    parties = [p for p in job.job.parties if p not in set(out.get("dropped") or [])]
    try:
        return publish_run(channel, run_id=run_id, parties=parties, signing_key=key,
                           metrics=out.get("global") or {}, progress=progress)
    except FedCreditError as e:
        progress({"event": "publish", "step": "failed", "message": f"publishing failed: {e}"})
        return {"published": False, "error": str(e)}


def horizontal_job(job: JobConfig, run_id: str) -> Any:
    """The protocol's job spec from a job file: [job] names the parties, [model] the rest."""
    from fedcredit.protocols import horizontal

    spec = dict(job.model)
    spec.update(run_id=run_id, parties=list(job.job.parties), min_parties=job.job.min_parties)
    return horizontal.HorizontalJob.from_dict(spec)


def horizontal_public_result(result: Any) -> dict[str, Any]:
    """The part of a horizontal result the coordinator's registry and reports keep."""
    return {
        "global": result.global_metrics or {},
        "parties": result.party_metrics,
        "dropped": result.dropped,
        "rounds": result.rounds,
        "features": result.feature_names,
        "history": result.history,
        "bytes_per_round": result.bytes_per_round(),
        "traffic": result.traffic,
        "protocol_wall_time_s": result.wall_time_s,
    }


def _coordinate_horizontal(channel: Any, job: JobConfig, progress: Progress) -> dict[str, Any]:
    from fedcredit.protocols import horizontal

    hjob = horizontal_job(job, channel.meta["run_id"])
    result = horizontal.run_coordinator(channel, hjob, progress=progress)
    out = horizontal_public_result(result)
    out["bytes_from_parties"] = dict(channel.bytes_received)
    out["bytes_to_parties"] = dict(channel.bytes_sent)
    return out


def _coordinate_vertical(channel: Any, job: JobConfig, progress: Progress) -> dict[str, Any]:
    """One Flower message per party launches the whole protocol over the data plane."""
    progress({"event": "vertical", "message": f"{job.job.type}: PSI then training over the data plane",
              "parties": {p: "running" for p in job.job.parties}})
    replies = channel.call_all({p: ("vertical.run", b"") for p in job.job.parties})
    parties = {p: json.loads(r.decode()) for p, r in replies.items()}
    label = job.job.label_party
    out: dict[str, Any] = {"global": parties[label].get("metrics", {}), "parties": {}}
    for p, rep in parties.items():
        out["parties"][p] = {k: v for k, v in rep.items() if k != "metrics"}
    out["label_party"] = label
    out["intersection_size"] = parties[label].get("intersection_size")
    out["bytes_from_parties"] = dict(channel.bytes_received)
    return out


# =========================================================================== party side


class PartyRuntime:
    """What a party's ClientApp knows for one message: its config, identity, verified peers."""

    def __init__(self, config_path: str, meta: Mapping[str, Any]) -> None:
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


def _audit_reply(rt: PartyRuntime, method: str, reply: bytes) -> None:
    """Record what leaves the party towards the coordinator (what, to whom, size, hash)."""
    from party.audit import AuditLog

    log = AuditLog(rt.config.party.state_dir / "audit.jsonl")
    try:
        log.record_sent(session=rt.run_id, sender=rt.name, receiver="coordinator", tag=method + ".reply", seq=0,
                        sealed=reply)
    finally:
        log.close()


def run_party_role(config_path: str, method: str, payload: bytes, meta: Mapping[str, Any]) -> bytes:
    rt = PartyRuntime(config_path, meta)
    if method.startswith("artifact."):
        from fedcredit.flowerapp.publish import party_handler

        train = rt.config.datasets.get(rt.job.job.train_dataset)
        reply = party_handler(rt.config, id_column=train.id_column if train else "id")(method, payload)
    elif rt.job.job.type == "horizontal":
        reply = _party_horizontal(rt, method, payload)
    elif method == "vertical.run":
        reply = json.dumps(_party_vertical(rt)).encode()
    else:
        raise ProtocolError(f"party '{rt.name}': unexpected method '{method}' for a {rt.job.job.type} job")
    _audit_reply(rt, method, reply)
    return reply


def _party_horizontal(rt: PartyRuntime, method: str, payload: bytes) -> bytes:
    from fedcredit.channel import DirState
    from fedcredit.protocols import horizontal

    train = rt.config.dataset(rt.job.job.train_dataset)
    test = rt.config.dataset(rt.job.job.test_dataset) if rt.job.job.test_dataset else None
    env = horizontal.PartyEnv(
        name=rt.name,
        envelope_private=rt.identity.envelope_private,
        peers=rt.peers,
        train=train.path,
        test=test.path if test else None,
        output_dir=rt.config.party.state_dir / "models",
        id_column=train.id_column,
        label_column=train.label_column or "y",
        feature_columns=train.feature_columns,
    )
    handler = horizontal.party_handler(env)
    return handler(method, payload, DirState(rt.run_dir / "state"))


def _party_vertical(rt: PartyRuntime) -> dict[str, Any]:
    from fedcredit.protocols.vertical_jobs import run_vertical_party

    return run_vertical_party(rt)


def digest(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()
