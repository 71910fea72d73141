"""Client side of the Control service, used by ``fedcredit train | runs | status``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc

from crypto.certs import Identity
from crypto.tls import hostname_mismatch, secure_channel
from fedcredit.errors import ConfigError, FedCreditError, SecurityError
from protos import control_pb2, control_pb2_grpc


class ControlClient:
    def __init__(self, channel: grpc.Channel, address: str) -> None:
        self._channel = channel
        self._stub = control_pb2_grpc.ControlStub(channel)
        self.address = address

    @classmethod
    def connect(cls, address: str | None, identity_dir: Path | str | None, name: str = "operator",
                timeout: float = 15.0) -> ControlClient:
        if not address:
            raise ConfigError("no coordinator control address: pass --control host:port, set [control].address in "
                              "the job file, or run fedcredit login")
        if not identity_dir:
            raise ConfigError("no operator credentials: pass --identity-dir, set [control].identity_dir in the job "
                              "file, or run fedcredit login")
        ident = Identity.load(Path(identity_dir), name)
        ch = secure_channel(address, ident)
        try:
            grpc.channel_ready_future(ch).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            ch.close()
            host, _, port = address.rpartition(":")
            mismatch = hostname_mismatch(host.strip("[]"), int(port), ident) if port.isdigit() else None
            if mismatch:
                raise SecurityError(f"coordinator control service {address}: {mismatch}") from None
            raise FedCreditError(f"cannot reach the coordinator control service at {address} within {timeout:.0f} s "
                                 "(is it running? is the certificate from this federation's CA?)") from None
        return cls(ch, address)

    def _call(self, fn, req, **kw):
        try:
            return fn(req, **kw)
        except grpc.RpcError as e:
            raise FedCreditError(f"coordinator {self.address}: {e.details() or e.code().name}") from None

    def submit(self, job_path: Path) -> str:
        if not job_path.exists():
            raise ConfigError(f"{job_path}: job file not found")
        req = control_pb2.SubmitJobRequest(job_toml=job_path.read_text(), source_name=str(job_path))
        return self._call(self._stub.SubmitJob, req, timeout=120).run_id

    def resume(self, run_id: str) -> control_pb2.RunInfo:
        """Start the next attempt of an interrupted run (the coordinator says why it cannot)."""
        return self._call(self._stub.ResumeRun, control_pb2.RunRequest(run_id=run_id), timeout=120)

    def get(self, run_id: str) -> control_pb2.RunInfo:
        return self._call(self._stub.GetRun, control_pb2.RunRequest(run_id=run_id), timeout=30)

    def list(self, limit: int = 50) -> list[control_pb2.RunInfo]:
        return list(self._call(self._stub.ListRuns, control_pb2.ListRunsRequest(limit=limit), timeout=30).runs)

    def parties(self) -> control_pb2.ListPartiesReply:
        """Every configured party with its liveness (heartbeats)."""
        return self._call(self._stub.ListParties, control_pb2.ListPartiesRequest(), timeout=30)

    def watch(self, run_id: str, after_seq: int = 0) -> Iterator[control_pb2.RunEvent]:
        try:
            yield from self._stub.WatchRun(control_pb2.WatchRequest(run_id=run_id, after_seq=after_seq))
        except grpc.RpcError as e:
            raise FedCreditError(f"coordinator {self.address}: lost the run's progress stream: {e.details()}") from None

    def close(self) -> None:
        self._channel.close()
