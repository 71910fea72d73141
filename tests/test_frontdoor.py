"""The Flower front door on its own: real TLS with federation certificates, a real HTTPS upstream.

The upstream stands in for the loopback SuperLink and records every request that
reaches it, so each refusal is checked where it matters: nothing arrived upstream.
The whole Flower path (real SuperLink, SuperNodes, ``flwr`` CLI) is
``tests/test_e2e_attacks.py``.
"""

from __future__ import annotations

import base64
import http.server
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coordinator.frontdoor import FLEET_ROUTES, MAX_BODY_BYTES, MAX_CONNECTIONS_PER_PARTY, FrontDoor
from crypto.certs import Identity, flower_public_key_pem, init_ca, issue, issue_loopback_tls
from crypto.tls import ssl_client_context, ssl_loopback_server_context
from simulations.deployment import free_port


class _Upstream(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.server.seen.append((self.command, self.path, dict(self.headers), body))  # type: ignore[attr-defined]
        reply = b"upstream:" + body[::-1]
        self.send_response(200)
        self.send_header("content-type", "application/protobuf")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_POST = do_GET = _answer


class _World:
    def __init__(self, root: Path) -> None:
        ca = root / "ca"
        init_ca(ca, "test-fed")
        self.ca = ca
        self.ids = {
            name: issue(ca, root / name, name, role=role)
            for name, role in [("coordinator", "coordinator"), ("operator", "operator"), ("bank1", "party"),
                               ("bank2", "party"), ("bank9", "party")]
        }  # fmt: skip
        rogue = root / "rogue-ca"
        init_ca(rogue, "rogue")
        self.rogue = issue(rogue, root / "rogue-bank1", "bank1")  # same name as a real bank, foreign CA
        self.keys = {n: flower_public_key_pem(self.ids[n].flower_pub_path, n) for n in ("bank1", "bank2")}
        loop_ca, cert, key = issue_loopback_tls(root / "loopback")
        self.upstream = _Upstream(ssl_loopback_server_context(cert, key))
        threading.Thread(target=self.upstream.serve_forever, daemon=True).start()
        self.log: list[str] = []
        self.heard: list[str] = []
        self.door = FrontDoor(self.ids["coordinator"], "127.0.0.1", free_port(),
                              f"https://127.0.0.1:{self.upstream.server_address[1]}", loop_ca,
                              self.keys, self.log.append, heard=self.heard.append).start()  # fmt: skip
        self.url = f"https://{self.door.address}"

    def client(self, who: str | Identity) -> httpx.Client:
        ident = self.ids[who] if isinstance(who, str) else who
        return httpx.Client(verify=ssl_client_context(ident), timeout=10)

    def fleet(self, client: httpx.Client, route: str, body: bytes = b"\x08\x01", key: str = "bank1") -> httpx.Response:
        headers = {"content-type": "application/protobuf", "flwr-public-key": base64.b64encode(self.keys[key]).decode()}
        return client.post(f"{self.url}/v1/fleet/{route}", content=body, headers=headers)

    def raw(self, who: str, request: str) -> bytes:
        """Send ``request`` byte for byte over mutual TLS as ``who``; everything the door answers until it closes."""
        host, port = self.door.address.split(":")
        ctx = ssl_client_context(self.ids[who])
        answer = b""
        with socket.create_connection((host, int(port)), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
            s.sendall(request.encode())
            while chunk := s.recv(65536):
                answer += chunk
        return answer

    def close(self) -> None:
        self.door.stop()
        self.upstream.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_World]:
    w = _World(tmp_path_factory.mktemp("frontdoor"))
    yield w
    w.close()


def test_a_party_reaches_every_fleet_route_with_its_own_key(world: _World) -> None:
    before = len(world.upstream.seen)
    with world.client("bank1") as c:
        for route in sorted(FLEET_ROUTES):
            r = world.fleet(c, route, b"payload-" + route.encode())
            assert r.status_code == 200 and r.content == b"upstream:" + (b"payload-" + route.encode())[::-1]
        big = bytes(range(256)) * (3 * 4096)  # 3 MB, streamed through in chunks
        r = world.fleet(c, "push-object", big)
        assert r.status_code == 200 and r.content == b"upstream:" + big[::-1]
    seen = world.upstream.seen[before:]
    assert [p for _, p, _, _ in seen] == [f"/v1/fleet/{r}" for r in sorted(FLEET_ROUTES)] + ["/v1/fleet/push-object"]
    # Flower's node-auth header reaches the SuperLink unchanged; hop-by-hop headers do not
    assert seen[0][2]["flwr-public-key"] == base64.b64encode(world.keys["bank1"]).decode()
    assert seen[-1][3] == big


@pytest.mark.parametrize("method,path", [
    ("POST", "/v1/control/start-run"), ("POST", "/v1/control/stop-run"), ("POST", "/v1/control/list-runs"),
    ("POST", "/v1/control/register-node"), ("POST", "/v1/control/unregister-node"),
    ("POST", "/v1/runtime/acquire-task"), ("POST", "/v1/runtime/pull-task-input"),
    ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/health"),
    ("POST", "/v1/fleet/register-node"), ("POST", "/v1/fleet/unregister-node"), ("GET", "/v1/fleet/pull-messages"),
    ("POST", "/v1/fleet/../control/start-run"), ("POST", "/v1/fleet/pull-messages?x=1"),
    ("POST", "/v1/fleet/pull-messages/"), ("POST", "//v1/fleet/pull-messages"), ("POST", "/V1/fleet/pull-messages"),
])  # fmt: skip
def test_a_party_gets_403_for_everything_but_fleet_and_nothing_reaches_the_superlink(
    world: _World, method: str, path: str
) -> None:
    before = len(world.upstream.seen)
    # raw bytes on the wire, target exactly as typed (an HTTP client would normalise '..' and '//')
    key = base64.b64encode(world.keys["bank1"]).decode()
    answer = world.raw("bank1", f"{method} {path} HTTP/1.1\r\nhost: x\r\nflwr-public-key: {key}\r\n"
                                "content-length: 1\r\n\r\nx")  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 403 "), (path, answer[:200])
    assert len(world.upstream.seen) == before
    assert any("CN=bank1 role=party" in line and path in line for line in world.log)


@pytest.mark.parametrize("who", ["operator", "coordinator", "bank9"])
def test_a_certificate_that_is_not_a_configured_party_is_refused(world: _World, who: str) -> None:
    before = len(world.upstream.seen)
    with world.client(who) as c:
        r = world.fleet(c, "pull-messages")
    assert r.status_code == 401
    assert len(world.upstream.seen) == before
    assert any(f"CN={who} " in line and "/v1/fleet/pull-messages" in line for line in world.log)


def test_a_bank_cannot_speak_for_another_banks_node(world: _World) -> None:
    before = len(world.upstream.seen)
    with world.client("bank1") as c:
        r = world.fleet(c, "pull-messages", key="bank2")
        assert r.status_code == 401 and "bank1" in r.text
        no_key = c.post(f"{world.url}/v1/fleet/pull-messages", content=b"x")
        assert no_key.status_code == 401
    assert len(world.upstream.seen) == before


def test_outsiders_never_complete_a_request(world: _World, tmp_path: Path) -> None:
    before = len(world.upstream.seen)
    only_ca = ssl.create_default_context(cafile=str(world.ca / "ca.crt"))  # the public CA, no client certificate
    with httpx.Client(verify=only_ca, timeout=10) as c, pytest.raises(httpx.TransportError):
        c.post(f"{world.url}/v1/control/list-runs", content=b"")
    with world.client(world.rogue) as c, pytest.raises(httpx.TransportError):
        c.post(f"{world.url}/v1/fleet/pull-messages", content=b"")  # a look-alike bank1 from a foreign CA
    tls12 = ssl_client_context(world.ids["bank1"])
    tls12.minimum_version = tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with httpx.Client(verify=tls12, timeout=10) as c, pytest.raises(httpx.TransportError):
        world.fleet(c, "pull-messages")
    with httpx.Client(timeout=10) as c, pytest.raises(httpx.TransportError):
        c.post(f"http://{world.door.address}/v1/control/list-runs", content=b"")  # plain HTTP
    assert len(world.upstream.seen) == before
    assert sum("TLS handshake" in line for line in world.log) >= 3


def test_a_node_heard_by_the_superlink_is_recorded_under_its_certificate_name(world: _World) -> None:
    """What a job waits for after a coordinator restart (Registry.forget_supernodes): only an activation or
    heartbeat the SuperLink accepted, from the certificate's own party, counts as hearing it."""
    before = len(world.heard)
    with world.client("bank1") as c:
        assert world.fleet(c, "pull-messages").status_code == 200  # traffic, but not a heartbeat
        assert world.fleet(c, "send-node-heartbeat", key="bank2").status_code == 401  # bank2's key: refused
        assert world.heard[before:] == []
        assert world.fleet(c, "send-node-heartbeat").status_code == 200
        assert world.heard[before:] == ["bank1"]  # already recorded when the answer arrives
    with world.client("bank2") as c:
        assert world.fleet(c, "activate-node", key="bank2").status_code == 200
    assert world.heard[before:] == ["bank1", "bank2"]


def test_oversized_and_unframed_bodies_are_refused_before_they_are_read(world: _World) -> None:
    before = len(world.upstream.seen)
    key = base64.b64encode(world.keys["bank1"]).decode()
    head = f"POST /v1/fleet/push-object HTTP/1.1\r\nhost: x\r\nflwr-public-key: {key}\r\n"
    # a claimed size over the limit: refused from the headers, the body is never sent
    assert world.raw("bank1", head + f"content-length: {MAX_BODY_BYTES + 1}\r\n\r\n").startswith(b"HTTP/1.1 413 ")
    chunked = head + "transfer-encoding: chunked\r\n\r\n7\r\nchunked\r\n0\r\n\r\n"
    assert world.raw("bank1", chunked).startswith(b"HTTP/1.1 411 ")
    assert len(world.upstream.seen) == before


def test_connections_per_party_are_capped(world: _World) -> None:
    socks = []
    ctx = ssl_client_context(world.ids["bank2"])
    host, port = world.door.address.split(":")
    try:
        for _ in range(MAX_CONNECTIONS_PER_PARTY + 1):
            s = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10), server_hostname=host)
            socks.append(s)
        with world.client("bank2") as c:
            # bank2's slots are full: a further connection is closed; bank1 is not affected
            with pytest.raises(httpx.TransportError):
                world.fleet(c, "pull-messages", key="bank2")
        with world.client("bank1") as c:
            assert world.fleet(c, "pull-messages").status_code == 200
    finally:
        for s in socks:
            s.close()
