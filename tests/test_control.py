"""The coordinator's Control service over real gRPC and mutual TLS: who may submit, list and watch runs.

The service is served the way the coordinator daemon serves it (beside the relay, one mTLS
port); the Flower launch is replaced by a recorder, since what is under test is who gets
that far.  Every RPC is tried with a party certificate, the coordinator's own certificate
and an operator certificate.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from coordinator.control import ControlServicer, add_control_service
from coordinator.registry import Registry
from coordinator.relay import RelayHandle, start_relay
from crypto.certs import Identity, init_ca, issue
from crypto.tls import secure_channel
from fedcredit.config import CoordinatorConfig
from protos import control_pb2 as pb
from protos import control_pb2_grpc as pbg

pytestmark = pytest.mark.timeout(60)

JOB = """
[job]
name = "h"
type = "horizontal"
parties = ["bank1", "bank2"]
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    d = tmp_path_factory.mktemp("pki")
    init_ca(d / "ca", "ctl")
    return {
        "coordinator": issue(d / "ca", d / "coordinator", "coordinator", role="coordinator"),
        "operator": issue(d / "ca", d / "operator", "operator", role="operator"),
        "bank1": issue(d / "ca", d / "bank1", "bank1"),
    }


@pytest.fixture()
def control(tmp_path: Path, pki: dict[str, Identity]) -> Iterator[tuple[RelayHandle, Registry, list[str]]]:
    config = CoordinatorConfig.model_validate({
        "federation": {"ca_dir": str(tmp_path / "ca")},
        "coordinator": {"identity_dir": str(pki["coordinator"].dir), "state_dir": str(tmp_path / "state")},
        "parties": [{"name": n, "certificate": str(tmp_path / f"{n}.crt"), "flower_public_key": str(tmp_path / f"{n}.pub")}
                    for n in ("bank1", "bank2")],
    })
    registry = Registry(tmp_path / "registry.db")
    launched: list[str] = []

    def launch(run_id: str) -> str:
        launched.append(run_id)
        registry.finish(run_id, {"ok": True})  # so WatchRun ends
        return f"flower-{len(launched)}"

    servicer = ControlServicer(config, registry, launch, poll_s=0.01, ca_pem=pki["coordinator"].ca_pem)
    h = start_relay(pki["coordinator"], membership=registry.job_parties, extra_servicers=[add_control_service(servicer)])
    yield h, registry, launched
    h.stop(grace=0)


def _calls(stub: pbg.ControlStub, run_id: str) -> dict[str, object]:
    return {
        "SubmitJob": lambda: stub.SubmitJob(pb.SubmitJobRequest(job_toml=JOB, source_name="job.toml"), timeout=10),
        "GetRun": lambda: stub.GetRun(pb.RunRequest(run_id=run_id), timeout=10),
        "ListRuns": lambda: stub.ListRuns(pb.ListRunsRequest(limit=10), timeout=10),
        "WatchRun": lambda: list(stub.WatchRun(pb.WatchRequest(run_id=run_id), timeout=10)),
        "ListParties": lambda: stub.ListParties(pb.ListPartiesRequest(), timeout=10),
    }


@pytest.mark.parametrize("who,role", [("bank1", "party"), ("coordinator", "coordinator")])
def test_party_and_coordinator_certificates_are_refused_every_rpc(control, pki, who: str, role: str) -> None:
    h, registry, launched = control
    run_id = registry.create_run("existing", "horizontal", JOB)
    ch = secure_channel(h.address, pki[who])
    try:
        for rpc, call in _calls(pbg.ControlStub(ch), run_id).items():
            with pytest.raises(grpc.RpcError) as exc:
                call()  # type: ignore[operator]
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED, rpc
            assert f"'{who}'" in exc.value.details() and f"role '{role}'" in exc.value.details(), rpc
            assert "only operator certificates" in exc.value.details(), rpc
    finally:
        ch.close()
    assert launched == [] and [r.run_id for r in registry.list()] == [run_id]  # nothing submitted


def test_operator_certificate_may_call_every_rpc(control, pki) -> None:
    h, registry, launched = control
    ch = secure_channel(h.address, pki["operator"])
    try:
        stub = pbg.ControlStub(ch)
        run_id = stub.SubmitJob(pb.SubmitJobRequest(job_toml=JOB, source_name="job.toml"), timeout=10).run_id
        assert launched == [run_id]
        assert stub.GetRun(pb.RunRequest(run_id=run_id), timeout=10).status == "finished"
        assert [r.run_id for r in stub.ListRuns(pb.ListRunsRequest(limit=10), timeout=10).runs] == [run_id]
        events = list(stub.WatchRun(pb.WatchRequest(run_id=run_id), timeout=10))
        assert events[-1].HasField("run") and events[-1].run.run_id == run_id
        assert [(p.name, p.state) for p in stub.ListParties(pb.ListPartiesRequest(), timeout=10).parties] == [
            ("bank1", "never"), ("bank2", "never")]
    finally:
        ch.close()
