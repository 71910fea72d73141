"""Party heartbeats over real gRPC and mutual TLS: who may heartbeat, what the coordinator records, what it reports.

Served the way the coordinator daemon serves it (beside the relay and Control on one mTLS
port).  Written as the attacker would try it: an operator's, the coordinator's, an
unlisted party's and a foreign CA's certificate, and a heartbeat that smuggles another
party's name onto the wire.  The party's side (``party.daemon.Heartbeat``) is run against
a port where no coordinator listens yet, then one starts there.  Also: the progress
display piped to a file prints each state as it happens (it printed nothing until the end).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from rich.console import Console

from coordinator.control import ControlServicer, add_control_service
from coordinator.liveness import LivenessServicer, add_liveness_service, liveness, not_live_reason
from coordinator.registry import Registry
from coordinator.relay import RelayHandle, start_relay
from crypto.certs import Identity, init_ca, issue
from crypto.tls import secure_channel
from fedcredit.config import CoordinatorConfig
from fedcredit.progress import LiveProgress
from party.daemon import Heartbeat
from protos import control_pb2, control_pb2_grpc, liveness_pb2, liveness_pb2_grpc
from simulations.deployment import free_port

pytestmark = pytest.mark.timeout(60)

PARTIES = ("bank1", "bank2")
TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    d = tmp_path_factory.mktemp("pki")
    init_ca(d / "ca", "live")
    init_ca(d / "other-ca", "someone-else")
    return {
        "coordinator": issue(d / "ca", d / "coordinator", "coordinator", role="coordinator"),
        "operator": issue(d / "ca", d / "operator", "operator", role="operator"),
        "bank1": issue(d / "ca", d / "bank1", "bank1"),
        "bank2": issue(d / "ca", d / "bank2", "bank2"),
        "bank9": issue(d / "ca", d / "bank9", "bank9"),  # the federation's CA, but not in [[parties]]
        "foreign-bank1": issue(d / "other-ca", d / "foreign", "bank1"),  # a party's name under another CA
    }


def _config(tmp_path: Path, pki: dict[str, Identity]) -> CoordinatorConfig:
    return CoordinatorConfig.model_validate({
        "federation": {"ca_dir": str(tmp_path / "ca")},
        "coordinator": {"identity_dir": str(pki["coordinator"].dir), "state_dir": str(tmp_path / "state"),
                        "liveness_timeout_s": TIMEOUT_S},
        "parties": [{"name": n, "certificate": str(tmp_path / f"{n}.crt"), "flower_public_key": str(tmp_path / f"{n}.pub")}
                    for n in PARTIES],
    })


def _serve(tmp_path: Path, pki: dict[str, Identity], registry: Registry, address: str = "127.0.0.1:0",
           log: list[str] | None = None) -> RelayHandle:
    config = _config(tmp_path, pki)
    control = ControlServicer(config, registry, lambda run_id: "flower-1", ca_pem=pki["coordinator"].ca_pem)
    beats = LivenessServicer(registry, PARTIES, TIMEOUT_S, ca_pem=pki["coordinator"].ca_pem,
                             log=(log.append if log is not None else print))
    return start_relay(pki["coordinator"], address, membership=registry.job_parties,
                       extra_servicers=[add_control_service(control), add_liveness_service(beats)])


@pytest.fixture()
def coordinator(tmp_path: Path, pki: dict[str, Identity]) -> Iterator[tuple[RelayHandle, Registry, list[str]]]:
    registry = Registry(tmp_path / "registry.db")
    log: list[str] = []
    h = _serve(tmp_path, pki, registry, log=log)
    yield h, registry, log
    h.stop(grace=0)


def _beat(address: str, who: Identity) -> liveness_pb2.HeartbeatReply:
    ch = secure_channel(address, who)
    try:
        return liveness_pb2_grpc.LivenessStub(ch).Heartbeat(liveness_pb2.HeartbeatRequest(interval_s=2.0), timeout=10)
    finally:
        ch.close()


def test_a_party_heartbeat_is_recorded_under_its_certificate_name(coordinator, pki) -> None:
    h, registry, _ = coordinator
    before = time.time()
    rep = _beat(h.address, pki["bank1"])
    assert rep.liveness_timeout_s == TIMEOUT_S  # the party learns the threshold it must beat
    seen = registry.last_seen()
    assert set(seen) == {"bank1"} and seen["bank1"][0] >= before and seen["bank1"][1] == 2.0
    states = {p.name: p.state for p in liveness(registry, PARTIES, TIMEOUT_S)}
    assert states == {"bank1": "live", "bank2": "never"}


@pytest.mark.parametrize("who,why", [
    ("operator", "role 'operator'"),
    ("coordinator", "role 'coordinator'"),
    ("bank9", "party 'bank9' is not in this coordinator's [[parties]]"),
])  # fmt: skip
def test_only_listed_party_certificates_may_heartbeat(coordinator, pki, who: str, why: str) -> None:
    h, registry, log = coordinator
    with pytest.raises(grpc.RpcError) as exc:
        _beat(h.address, pki[who])
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert why in exc.value.details()
    assert registry.last_seen() == {}  # nobody became live
    assert any(why in line for line in log)  # the coordinator's log says who was refused


def test_a_foreign_ca_certificate_cannot_heartbeat_even_with_a_party_name(coordinator, pki) -> None:
    h, registry, _ = coordinator
    with pytest.raises(grpc.RpcError) as exc:
        _beat(h.address, pki["foreign-bank1"])  # CN=bank1, but signed by another CA: the handshake fails
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert registry.last_seen() == {}


def test_a_heartbeat_cannot_name_another_party(coordinator, pki) -> None:
    """bank2 keeping bank1 'alive': there is no name field, and bytes smuggling one are ignored."""
    h, registry, _ = coordinator
    assert [f.name for f in liveness_pb2.HeartbeatRequest.DESCRIPTOR.fields] == ["interval_s"]
    # what an attacker would hand-craft: interval_s plus an unknown field 2 = "bank1" (tag 0x12, length 5)
    raw = liveness_pb2.HeartbeatRequest(interval_s=1.0).SerializeToString() + b"\x12\x05bank1"
    ch = secure_channel(h.address, pki["bank2"])
    try:
        call = ch.unary_unary("/fedcredit.liveness.Liveness/Heartbeat", request_serializer=lambda b: b,
                              response_deserializer=liveness_pb2.HeartbeatReply.FromString)
        call(raw, timeout=10)
    finally:
        ch.close()
    assert set(registry.last_seen()) == {"bank2"}


def test_status_and_parties_show_liveness_from_the_last_heartbeat(coordinator, pki) -> None:
    h, registry, _ = coordinator
    registry.touch("bank2", 2.0, when=time.time() - 42)  # silent for 42 s
    _beat(h.address, pki["bank1"])
    run_id = registry.create_run("h", "horizontal", '[job]\nname = "h"\ntype = "horizontal"\nparties = ["bank1", "bank2"]\n')
    ch = secure_channel(h.address, pki["operator"])
    try:
        stub = control_pb2_grpc.ControlStub(ch)
        info = stub.GetRun(control_pb2.RunRequest(run_id=run_id), timeout=10)
        listed = stub.ListParties(control_pb2.ListPartiesRequest(), timeout=10)
    finally:
        ch.close()
    for parties in (info.parties, listed.parties):
        by = {p.name: p for p in parties}
        assert by["bank1"].state == "live" and by["bank1"].age_s < 5
        assert by["bank2"].state == "not live" and 41 <= by["bank2"].age_s < 50
    assert listed.liveness_timeout_s == TIMEOUT_S
    stale = next(p for p in liveness(registry, ["bank2"], TIMEOUT_S))
    assert not_live_reason(stale).startswith("stopped sending heartbeats 42 s ago (liveness_timeout_s = 10)")


def test_a_party_started_before_its_coordinator_says_it_waits_then_reaches_it(tmp_path: Path, pki) -> None:
    port = free_port()
    lines: list[str] = []
    beat = Heartbeat(pki["bank1"], f"127.0.0.1:{port}", 0.2, log=lines.append).start()
    registry = Registry(tmp_path / "registry.db")
    h = None
    try:
        deadline = time.monotonic() + 20
        while not lines and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lines and lines[0].startswith(f"party 'bank1': waiting for the coordinator at 127.0.0.1:{port} (attempt 1, "
                                             "last error: UNAVAILABLE"), lines
        assert not beat.reached.is_set()
        h = _serve(tmp_path, pki, registry, f"127.0.0.1:{port}")
        t0 = time.monotonic()
        assert beat.reached.wait(10), lines
        assert time.monotonic() - t0 < 5  # reconnects at the heartbeat pace, not after gRPC's long backoff
        assert "bank1" in registry.last_seen()
    finally:
        beat.stop()
        if h is not None:
            h.stop(grace=0)


def test_progress_piped_to_a_file_prints_each_state_when_it_happens() -> None:
    out = io.StringIO()
    con = Console(file=out, width=200)  # not a terminal, like `fedcredit simulate ... > log`
    with LiveProgress(con) as show:
        show({"event": "round", "round": 1, "rounds": 3})
        assert "round 1/3" in out.getvalue()  # already written while the run goes on, not at its end
        show({"event": "round", "round": 1, "rounds": 3})
        show({"event": "round", "round": 2, "rounds": 3})
    lines = [line for line in out.getvalue().splitlines() if "round" in line]
    assert [line.split("] ", 1)[1] for line in lines] == ["round 1/3", "round 2/3"]  # one line per change


def test_a_vertical_job_waits_the_reconnect_window_before_abandoning_a_silent_party(tmp_path: Path) -> None:
    """A network cut stops heartbeats and the data-plane stream alike: within reconnect_window_s past
    the liveness timeout a vertical job still waits (the relay holds the party's place); after it, not."""
    from coordinator.serverapp import liveness_check

    registry = Registry(tmp_path / "registry.db")
    now = time.time()
    registry.touch("bank1", 2.0, when=now)
    registry.touch("fintech", 2.0, when=now - 25)  # silent 25 s: past liveness_timeout_s = 10, inside 10 + 30
    registry.touch("bank2", 2.0, when=now - 45)  # silent 45 s: past 10 + 30
    horizontal = liveness_check(registry, 10.0)
    vertical = liveness_check(registry, 10.0, grace_s=30.0)
    assert set(horizontal(["bank1", "fintech", "bank2"])) == {"fintech", "bank2"}
    silent = vertical(["bank1", "fintech", "bank2"])
    assert set(silent) == {"bank2"}
    assert "stopped sending heartbeats 45 s ago" in silent["bank2"] and "reconnect_window_s = 30" in silent["bank2"]


class _Grid:
    """Flower's node list as a restarted SuperLink reports it: both nodes online (from its database)."""

    def get_node_ids(self) -> list[int]:
        return [1, 2]


def test_after_a_coordinator_restart_a_job_waits_until_the_superlink_has_heard_each_supernode(tmp_path: Path) -> None:
    """A restarted SuperLink lists a node online on a heartbeat its predecessor received; a job sent then
    came back "Node Unavailable" once that expired (a SuperNode backs off up to 20 s before its next try)."""
    from coordinator.serverapp import wait_for_nodes
    from fedcredit.errors import ProtocolError

    registry = Registry(tmp_path / "registry.db")
    registry.supernode_heard("bank")
    registry.supernode_heard("fintech")
    registry.forget_supernodes()  # the coordinator daemon's start-up
    registry.supernode_heard("bank")
    nodes = {"bank": 1, "fintech": 2}
    with pytest.raises(ProtocolError, match="not connected after 0 s: fintech$"):
        wait_for_nodes(_Grid(), nodes, 0.0, lambda ev: None, heard=registry.supernodes_heard)

    polls: list[set[str]] = []

    def heard() -> set[str]:
        polls.append(registry.supernodes_heard())
        if len(polls) == 2:
            registry.supernode_heard("fintech")  # its heartbeat gets through
        return polls[-1]

    events: list[str] = []
    wait_for_nodes(_Grid(), nodes, 30.0, lambda ev: events.append(ev["message"]), heard=heard)
    assert polls == [{"bank"}, {"bank"}, {"bank", "fintech"}]
    assert events == ["waiting for parties: fintech (its SuperNode has not reached this coordinator's SuperLink yet)"] * 2
