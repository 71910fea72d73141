"""Attacks on the Flower control plane, over real processes: who can make code run (issue 8, item 2).

A coordinator and two banks on 127.0.0.1 (real ``flower-superlink`` behind the front
door, real ``flower-supernode`` behind each bank's fleet link).  The attackers use the
tools an attacker would: the ``flwr`` CLI and Flower's own HTTP clients, with a Flower
app whose ServerApp and ClientApp write a marker file the moment they are imported.

* an outsider holding only the public ``ca.crt``: ``flwr run`` (its own app and a
  replay of fedcredit's), ``flwr list``, ``flwr stop``, ``flwr supernode register`` /
  ``unregister`` against the public Flower port — all fail;
* a bank holding a valid party certificate (and its own SuperNode key): Control
  (start-run, stop-run, list-runs, register-node, unregister-node), Runtime
  (acquire-task), the Fleet self-(un)registration routes and ``/docs`` — all 403,
  each a line in the coordinator's log;
* an operator's or the coordinator's own certificate: refused at the door.

Afterwards the coordinator's own loopback ``flwr`` shows no run added or stopped and
no node added or removed, no marker exists anywhere, and a legitimate job still runs
end to end through the front door.
"""

from __future__ import annotations

import json
import ssl
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flower_apps import write_app_descriptor

from coordinator import flower
from crypto.certs import Identity, init_ca, issue
from crypto.tls import ssl_client_context
from fedcredit.errors import FedCreditError
from simulations.deployment import LocalFederation, PartySpec

pytestmark = pytest.mark.e2e

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BANKS = {"bank1": "default_credit_homo_guest.csv", "bank2": "default_credit_homo_host_1.csv"}


def _evil_app(root: Path, markers: Path) -> Path:
    """A Flower app whose code leaves a file behind wherever it is imported (ServerApp or ClientApp)."""
    app = root / "evil-app"
    write_app_descriptor(app, name="evil", version="1.0.0", publisher="mallory", serverapp="evil:server_app",
                         clientapp="evil:client_app")
    (app / "evil.py").write_text(textwrap.dedent(f"""\
        import os, pathlib
        pathlib.Path({str(markers)!r}, f"ran-{{os.getpid()}}").write_text("attacker code ran here")
        from flwr.clientapp import ClientApp
        from flwr.serverapp import ServerApp
        client_app = ClientApp()
        server_app = ServerApp()
        """))
    return app


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("attacks")
    data = root / "data"
    data.mkdir()
    parties = []
    for bank, fname in BANKS.items():
        pd.read_csv(DATA / fname).iloc[:1500].to_csv(data / f"{bank}.csv", index=False)
        pd.read_csv(DATA / "default_credit_homo_test.csv").iloc[:500].to_csv(data / f"{bank}_test.csv", index=False)
        parties.append(PartySpec(bank, {"train": {"path": data / f"{bank}.csv", "label_column": "y"},
                                        "test": {"path": data / f"{bank}_test.csv", "label_column": "y"}}))
    federation = LocalFederation(root / "fed", parties).setup()
    federation.markers = root / "markers"  # type: ignore[attr-defined]
    federation.markers.mkdir()  # type: ignore[attr-defined]
    federation.evil = _evil_app(root, federation.markers)  # type: ignore[attr-defined]
    federation.start()
    yield federation
    federation.stop()


# ---------------------------------------------------------------------------- helpers


def _job(fed: LocalFederation, name: str) -> Any:
    return fed.run_job(name, {"job": {"name": name, "type": "horizontal", "parties": list(BANKS),
                                      "round_timeout_s": 120.0},
                              "model": {"family": "lr", "algorithm": "fedavg", "rounds": 1, "newton_rounds": 0}})  # fmt: skip


def _home(fed: LocalFederation) -> Path:
    """The coordinator's own ``flwr`` config (loopback SuperLink)."""
    return fed.root / "state" / "coordinator" / "flwr-home"


def _loopback(fed: LocalFederation) -> str:
    return json.loads((fed.root / "state" / "coordinator" / "coordinator.ready.json").read_text())["superlink"]


def _flower_state(fed: LocalFederation) -> tuple[dict[str, str], dict[str, str]]:
    """(run id -> status, node id -> status) as the coordinator's SuperLink holds them, once every run has ended.

    Our registry marks a job finished when the ServerApp records its result, a moment
    before Flower marks the run finished; a snapshot taken in between would differ for
    that reason alone.
    """
    deadline = time.monotonic() + 90
    while True:
        runs = flower.flwr_cli(_home(fed), "list", flower.FEDERATION_ALIAS)["runs"]
        if all(r["status"].startswith("finished") for r in runs) or time.monotonic() > deadline:
            break
        time.sleep(1.0)  # waiting for Flower's own run status to change
    nodes = flower.flwr_cli(_home(fed), "supernode", "ls", flower.FEDERATION_ALIAS)["nodes"]
    return {r["run-id"]: r["status"] for r in runs}, {n["node-id"]: n["status"] for n in nodes}


def _outsider_home(fed: LocalFederation, tmp: Path) -> Path:
    """A ``flwr`` config an outsider writes: the public Flower port and the public CA certificate."""
    return flower.write_flwr_home(tmp / "outsider-flwr", f"127.0.0.1:{fed.flower_port}", fed.certs / "ca" / "ca.crt")


def _coordinator_log(fed: LocalFederation) -> str:
    return (fed.root / "logs" / "coordinator.log").read_text()


def _flower_clients(fed: LocalFederation, ident: Identity, url: str, verify: ssl.SSLContext) -> dict[str, Any]:
    """Flower's own Control, Runtime and Fleet HTTP clients, signing with the bank's SuperNode key."""
    from flwr.supercore.control.control_http_client import ControlHttpClient
    from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
    from flwr.supercore.runtime.runtime_http_client import RuntimeHttpClient
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    key = serialization.load_ssh_private_key(ident.flower_key_path.read_bytes(), None)
    interceptors = [RuntimeVersionHttpInterceptor(component_name="flwr CLI"),
                    NodeAuthHttpInterceptor(key, key.public_key())]  # type: ignore[arg-type]  # fmt: skip
    return {
        "control": ControlHttpClient(url, interceptors=interceptors, verify=verify, timeout=20),
        "runtime": RuntimeHttpClient(url, interceptors=interceptors, verify=verify, timeout=20),
        "fleet": FleetHttpClient(url, interceptors=interceptors, verify=verify, timeout=20),
    }


def _evil_fab(fed: LocalFederation) -> Any:
    import hashlib

    from flwr.cli.build import build_fab_from_disk
    from flwr.common.serde import fab_to_proto
    from flwr.supercore.fab import Fab

    fab = build_fab_from_disk(fed.evil)  # type: ignore[attr-defined]
    return fab_to_proto(Fab(hashlib.sha256(fab).hexdigest(), fab, {}))


# ---------------------------------------------------------------------------- the attacks


def test_outsider_with_only_the_ca_certificate_cannot_use_flower(fed: LocalFederation, tmp_path: Path) -> None:
    legit = _job(fed, "before-outsider")
    assert legit.status == "finished", legit.error
    runs, nodes = _flower_state(fed)
    assert runs and len(nodes) == len(BANKS)
    home = _outsider_home(fed, tmp_path)
    rogue = issue(init_ca(tmp_path / "rogue-ca", "rogue"), tmp_path / "mallory", "mallory")
    a_run, a_node = next(iter(runs)), next(iter(nodes))

    attempts = {
        "run its own app": ("run", str(fed.evil), flower.FEDERATION_ALIAS),  # type: ignore[attr-defined]
        "replay fedcredit's job": ("run", str(flower.APP_DIR), flower.FEDERATION_ALIAS, "--run-config",
                                   f"run_id={json.dumps(legit.run_id)}"),
        "list runs": ("list", flower.FEDERATION_ALIAS),
        "stop a run": ("stop", a_run, flower.FEDERATION_ALIAS),
        "register a SuperNode": ("supernode", "register", str(rogue.flower_pub_path), flower.FEDERATION_ALIAS),
        "unregister a bank": ("supernode", "unregister", a_node, flower.FEDERATION_ALIAS),
        "list SuperNodes": ("supernode", "ls", flower.FEDERATION_ALIAS),
    }  # fmt: skip

    def attempt(args: tuple[str, ...]) -> str | None:
        try:
            flower.flwr_cli(home, *args, timeout=180)
        except FedCreditError as exc:
            return str(exc)
        return None

    # side by side (each refusal is Flower's CLI giving up on the TLS handshake after its own retries); a CLI that
    # merely timed out proves nothing, so that is a failure too
    with ThreadPoolExecutor(len(attempts)) as ex:
        outcomes = dict(zip(attempts, ex.map(attempt, attempts.values())))
    assert not (done := [what for what, err in outcomes.items() if err is None]), f"the outsider could: {done}"
    assert not [err for err in outcomes.values() if err and "did not answer within" in err], outcomes

    assert _flower_state(fed) == (runs, nodes)
    assert "TLS handshake" in _coordinator_log(fed)
    # the door is not just closed: a job still runs through it, and nothing the attacker sent ran anywhere
    after = _job(fed, "after-outsider")
    assert after.status == "finished", after.error
    assert not list(fed.markers.iterdir())  # type: ignore[attr-defined]


def test_bank_certificate_reaches_no_control_or_runtime_route(fed: LocalFederation) -> None:
    from flwr.proto.control_pb2 import (
        ListRunsRequest,
        RegisterNodeRequest,
        StartRunRequest,
        StopRunRequest,
        UnregisterNodeRequest,
    )
    from flwr.proto.fleet_pb2 import RegisterNodeFleetRequest, UnregisterNodeFleetRequest
    from flwr.proto.runtime_pb2 import AcquireTaskRequest

    runs, nodes = _flower_state(fed)
    if not runs:
        assert _job(fed, "before-bank").status == "finished"
        runs, nodes = _flower_state(fed)
    bank1 = Identity.load(fed.certs / "bank1", "bank1")
    door = _flower_clients(fed, bank1, f"https://127.0.0.1:{fed.flower_port}", ssl_client_context(bank1))
    a_run, bank2_node = int(next(iter(runs))), int(next(iter(nodes)))
    fresh_key = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    # positive control: the same well-formed request, from the coordinator's host, is answered by the SuperLink
    loop_ca = fed.root / "state" / "coordinator" / "loopback-tls" / "loopback-ca.crt"
    local = _flower_clients(fed, bank1, f"https://{_loopback(fed)}", ssl.create_default_context(cafile=str(loop_ca)))
    assert {str(r.run_id) for r in local["control"].ListRuns(ListRunsRequest()).run_dict.values()} >= set(runs)

    attempts = {
        "/v1/control/start-run": lambda: door["control"].StartRun(StartRunRequest(fab=_evil_fab(fed))),
        "/v1/control/stop-run": lambda: door["control"].StopRun(StopRunRequest(run_id=a_run)),
        "/v1/control/list-runs": lambda: door["control"].ListRuns(ListRunsRequest()),
        "/v1/control/register-node": lambda: door["control"].RegisterNode(
            RegisterNodeRequest(public_key=fresh_key, name="bank1-spare")),
        "/v1/control/unregister-node": lambda: door["control"].UnregisterNode(
            UnregisterNodeRequest(node_id=bank2_node)),
        "/v1/runtime/acquire-task": lambda: door["runtime"].AcquireTask(
            AcquireTaskRequest(supported_task_types=["flwr-serverapp"])),
        "/v1/fleet/register-node": lambda: door["fleet"].RegisterNode(RegisterNodeFleetRequest(public_key=fresh_key)),
        "/v1/fleet/unregister-node": lambda: door["fleet"].UnregisterNode(
            UnregisterNodeFleetRequest(node_id=bank2_node)),
    }  # fmt: skip
    for path, call in attempts.items():
        with pytest.raises(httpx.HTTPStatusError) as err:
            call()
        assert err.value.response.status_code == 403, path
        assert any("refused certificate CN=bank1 role=party" in line and path in line
                   for line in _coordinator_log(fed).splitlines()), path  # fmt: skip
    with httpx.Client(verify=ssl_client_context(bank1), timeout=20) as c:
        for path in ("/docs", "/openapi.json", "/health"):
            assert c.get(f"https://127.0.0.1:{fed.flower_port}{path}").status_code == 403, path
    for client in [*door.values(), *local.values()]:
        client.close()

    assert _flower_state(fed) == (runs, nodes), "a bank's certificate changed the SuperLink's runs or nodes"
    info = _job(fed, "after-bank")
    assert info.status == "finished", info.error
    assert not list(fed.markers.iterdir())  # type: ignore[attr-defined]


@pytest.mark.parametrize("who", ["operator", "coordinator"])
def test_operator_and_coordinator_certificates_are_refused_at_the_front_door(fed: LocalFederation, who: str) -> None:
    from flwr.proto.control_pb2 import ListRunsRequest
    from flwr.proto.fleet_pb2 import PullMessagesRequest

    ident = Identity.load(fed.certs / who, who)
    bank1 = Identity.load(fed.certs / "bank1", "bank1")  # a Flower key that is registered: only the role is wrong
    clients = _flower_clients(fed, bank1, f"https://127.0.0.1:{fed.flower_port}", ssl_client_context(ident))
    for call in (lambda: clients["fleet"].PullMessages(PullMessagesRequest()),
                 lambda: clients["control"].ListRuns(ListRunsRequest())):  # fmt: skip
        with pytest.raises(httpx.HTTPStatusError) as err:
            call()
        assert err.value.response.status_code == 401
        assert "is not admitted (only role 'party')" in err.value.response.text
    for client in clients.values():
        client.close()
    assert f"refused certificate CN={who} role={who}" in _coordinator_log(fed)
