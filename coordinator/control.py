"""The coordinator's Control service: submit jobs, list and follow runs.

Served next to the relay on the data-plane port with mutual TLS; only certificates
with role ``operator`` may call it (every RPC, reads included: run names, parties and
public metrics are the federation's business, not every party's).  A party or the
coordinator's own certificate is refused with PERMISSION_DENIED naming its role — the
coordinator's key sits on the machine that serves this port, so accepting it would let
anything that reads that key submit jobs.  A submitted job is
validated here (config errors come back to the CLI naming the file and field),
recorded in the registry, then launched as a Flower run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator

import grpc

from coordinator.liveness import PartyLiveness, liveness
from coordinator.registry import ENDED, Registry, RunRecord
from crypto.tls import peer_identity
from fedcredit.config import CoordinatorConfig, JobConfig, parse_job_text
from fedcredit.errors import ConfigError, FedCreditError, SecurityError
from protos import control_pb2, control_pb2_grpc

Launcher = Callable[[str], str]  # run_id -> flower run id

#: Certificate roles that may call the Control service (crypto.certs binds the role as the subject's OU).
CONTROL_ROLES: tuple[str, ...] = ("operator",)


def run_info(rec: RunRecord, parties: Iterable[PartyLiveness] = ()) -> control_pb2.RunInfo:
    return control_pb2.RunInfo(
        parties=[p.to_proto() for p in parties],
        run_id=rec.run_id,
        name=rec.name,
        type=rec.type,
        status=rec.status,
        created=rec.created,
        started=rec.started or 0.0,
        ended=rec.ended or 0.0,
        error=rec.error or "",
        result_json=json.dumps(rec.result) if rec.result is not None else "",
        flower_run_id=rec.flower_run_id or "",
        attempt=rec.attempt,
    )


def validate_job(text: str, source: str, config: CoordinatorConfig) -> JobConfig:
    """Parse a job file's text and check it against the federation's registered parties."""
    job = parse_job_text(text, source)
    known = {p.name for p in config.parties}
    for p in job.job.parties:
        if p not in known:
            raise ConfigError(
                f"{source}: [job].parties: party '{p}' is not registered with this coordinator "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )
    return job


class ControlServicer(control_pb2_grpc.ControlServicer):
    def __init__(self, config: CoordinatorConfig, registry: Registry, launcher: Launcher, poll_s: float = 0.25,
                 *, ca_pem: bytes | None = None) -> None:
        self.config = config
        self.ca_pem = ca_pem  # re-verify the caller's certificate (validity window, role) when given
        self.registry = registry
        self.launcher = launcher
        self.poll_s = poll_s

    def _authorize(self, context: grpc.ServicerContext, what: str) -> str:
        """The caller's certificate name if it holds an operator certificate; aborts otherwise."""
        try:
            name, role = peer_identity(context, ca_pem=self.ca_pem)
        except SecurityError as e:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        if role not in CONTROL_ROLES:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"coordinator Control service: '{name}' holds a certificate with role '{role}'; only "
                f"{' or '.join(CONTROL_ROLES)} certificates may {what}",
            )
        return name

    def SubmitJob(self, request: control_pb2.SubmitJobRequest, context: grpc.ServicerContext) -> control_pb2.SubmitJobReply:
        self._authorize(context, "submit jobs")
        source = request.source_name or "job.toml"
        try:
            job = validate_job(request.job_toml, source, self.config)
        except ConfigError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        run_id = self.registry.create_run(job.job.name, job.job.type, request.job_toml)
        try:
            flower_run = self.launcher(run_id)
        except FedCreditError as e:
            self.registry.fail(run_id, f"could not launch the Flower run: {e}")
            context.abort(grpc.StatusCode.UNAVAILABLE, f"run {run_id} failed to launch: {e}")
        self.registry.set_flower_run(run_id, flower_run)
        return control_pb2.SubmitJobReply(run_id=run_id)

    def ResumeRun(self, request: control_pb2.RunRequest, context: grpc.ServicerContext) -> control_pb2.RunInfo:
        """The next attempt of an interrupted vertical run, launched as a new Flower run (docs/resume.md).

        Refused: an unknown id (NOT_FOUND), a finished, running, failed-for-good or horizontal run
        (FAILED_PRECONDITION, saying which).  A party missing its checkpoints fails the new attempt,
        naming itself.
        """
        self._authorize(context, "resume runs")
        if self.registry.get(request.run_id) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no run '{request.run_id}'")
        try:
            rec = self.registry.resume(request.run_id)
        except ConfigError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
            raise AssertionError("unreachable: abort() raises") from None
        self.registry.add_event(rec.run_id, {"event": "resume", "message": f"attempt {rec.attempt} requested"})
        try:
            flower_run = self.launcher(rec.run_id)
        except FedCreditError as e:
            self.registry.interrupt(rec.run_id, f"could not launch attempt {rec.attempt}: {e}")
            context.abort(grpc.StatusCode.UNAVAILABLE, f"run {rec.run_id}: attempt {rec.attempt} failed to launch: {e}")
        self.registry.set_flower_run(rec.run_id, flower_run)
        got = self.registry.get(rec.run_id)
        assert got is not None
        return run_info(got)

    def GetRun(self, request: control_pb2.RunRequest, context: grpc.ServicerContext) -> control_pb2.RunInfo:
        self._authorize(context, "read runs")
        rec = self.registry.get(request.run_id)
        if rec is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no run '{request.run_id}'")
            raise AssertionError("unreachable: abort() raises")
        return run_info(rec, self._liveness(self._job_parties(rec)))

    def _job_parties(self, rec: RunRecord) -> list[str]:
        try:
            return list(parse_job_text(rec.job_toml, f"run {rec.run_id}").job.parties)
        except ConfigError:
            return []  # stored before a schema change: show the run without liveness

    def _liveness(self, parties: Iterable[str]) -> list[PartyLiveness]:
        return liveness(self.registry, parties, self.config.coordinator.liveness_timeout_s)

    def ListParties(self, request: control_pb2.ListPartiesRequest, context: grpc.ServicerContext) -> control_pb2.ListPartiesReply:
        """Every configured party with its liveness (heartbeats; coordinator/liveness.py)."""
        self._authorize(context, "list parties")
        return control_pb2.ListPartiesReply(
            parties=[p.to_proto() for p in self._liveness(p.name for p in self.config.parties)],
            liveness_timeout_s=self.config.coordinator.liveness_timeout_s,
        )

    def ListRuns(self, request: control_pb2.ListRunsRequest, context: grpc.ServicerContext) -> control_pb2.ListRunsReply:
        self._authorize(context, "list runs")
        return control_pb2.ListRunsReply(runs=[run_info(r) for r in self.registry.list(request.limit or 50)])

    def WatchRun(self, request: control_pb2.WatchRequest, context: grpc.ServicerContext) -> Iterator[control_pb2.RunEvent]:
        """Stream progress events until the run reaches a terminal status."""
        self._authorize(context, "watch runs")
        if self.registry.get(request.run_id) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no run '{request.run_id}'")
        seq = request.after_seq
        while context.is_active():
            rec = self.registry.get(request.run_id)
            for s, t, data in self.registry.events(request.run_id, seq):
                seq = s
                yield control_pb2.RunEvent(seq=s, time=t, data_json=json.dumps(data))
            if rec is not None and rec.status in ENDED:
                # events written before the terminal status are all flushed above
                for s, t, data in self.registry.events(request.run_id, seq):
                    seq = s
                    yield control_pb2.RunEvent(seq=s, time=t, data_json=json.dumps(data))
                yield control_pb2.RunEvent(seq=seq, time=time.time(), run=run_info(rec))
                return
            time.sleep(self.poll_s)  # polling the registry; ServerApp writes from another process


def add_control_service(servicer: ControlServicer) -> Callable[[grpc.Server], None]:
    return lambda server: control_pb2_grpc.add_ControlServicer_to_server(servicer, server)
