"""The coordinator's public Flower port: a mutual-TLS front door that forwards only Fleet traffic.

Why it exists: Flower 1.41's SuperLink serves Fleet (what SuperNodes need), Control
(start/stop/list runs, register/unregister SuperNodes) and Runtime (ServerApp tasks and
their tokens) on one HTTP server, asks for no client certificate, and the open-source
Control API has no authentication at all.  Left on the network, anyone holding the
public ``ca.crt`` could run code at every bank.  So the SuperLink listens on 127.0.0.1
only (``coordinator/flower.py``) and this door is what parties dial:

* TLS 1.3, the coordinator's federation certificate, and a client certificate from the
  federation CA required by the handshake (an outsider never sends an HTTP byte);
* the certificate must be role ``party`` and name one of the configured ``[[parties]]``
  (an operator or the coordinator's own certificate is refused);
* only ``POST /v1/fleet/<route>`` for the routes a SuperNode with a registered key uses
  (exact target match, no query, no path tricks), and only with the Flower key that is
  registered for *that* certificate's party in its ``flwr-public-key`` header — so a
  bank cannot speak for another bank's node even if it obtained that node's key;
* every refusal is one line in the coordinator's log: which certificate, which path, why.
  A refused *identity* (certificate or node key) is answered 401, a refused *route* 403:
  Flower's SuperNode exits cleanly on 401, so a misconfigured party fails fast.

Bounds: request bodies up to :data:`MAX_BODY_BYTES` (the data plane's message cap, so a
model payload that fits our relay fits here) with a declared ``Content-Length``, streamed
through in chunks (memory per connection stays at one chunk); at most
:data:`MAX_CONNECTIONS` connections, :data:`MAX_CONNECTIONS_PER_PARTY` per party; idle and
handshake timeouts.  HTTP/1.1 is parsed by ``h11`` (the parser httpx and uvicorn use),
the upstream hop is ``httpx`` over TLS with the coordinator's loopback CA.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import http
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import h11
import httpx

from crypto.certs import Identity, PeerInfo
from crypto.tls import MAX_MESSAGE_BYTES, ssl_peer, ssl_server_context
from fedcredit.aio import BackgroundLoop
from fedcredit.errors import SecurityError

#: The Fleet routes a SuperNode started with ``--auth-supernode-private-key`` calls
#: (flwr 1.41 supernode/fleet_http_connection.py).  ``register-node`` / ``unregister-node``
#: are left out on purpose: nodes are registered by the coordinator itself over loopback,
#: and with ``--enable-supernode-auth`` the SuperLink refuses self-registration anyway —
#: not forwarding them keeps that a property of this door, not of a Flower flag.
FLEET_ROUTES = frozenset({
    "activate-node", "deactivate-node", "send-node-heartbeat", "pull-messages", "push-messages",
    "get-run", "get-fab", "push-object", "pull-object", "confirm-message-received",
})  # fmt: skip
FLEET_PREFIX = "/v1/fleet/"
#: The routes whose success means the SuperLink now counts the node online (it sets ``online_until``).
HEARD_ROUTES = frozenset({"activate-node", "send-node-heartbeat"})
PUBLIC_KEY_HEADER = b"flwr-public-key"  # flwr.supercore.constant.FLEET_HTTP_PUBLIC_KEY_HEADER

MAX_BODY_BYTES = MAX_MESSAGE_BYTES
MAX_CONNECTIONS = 64
MAX_CONNECTIONS_PER_PARTY = 8
MAX_HEADER_BYTES = 64 * 1024
HANDSHAKE_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 120.0
UPSTREAM_TIMEOUT_S = 300.0
CHUNK = 64 * 1024

_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade",
    b"host", b"expect", b"proxy-authorization", b"proxy-authenticate",
})  # fmt: skip


def route_refusal(method: str, target: str) -> str | None:
    """Why ``method target`` is not forwarded, or None when it is a Fleet route we forward."""
    if method != "POST":
        return f"method {method} is not forwarded (only POST {FLEET_PREFIX}<route>)"
    if not target.startswith(FLEET_PREFIX):
        return "only Fleet routes are forwarded; Control, Runtime and the SuperLink's other pages are loopback-only"
    route = target[len(FLEET_PREFIX) :]
    if route not in FLEET_ROUTES:
        return f"Fleet route {route!r} is not forwarded"
    return None


def admission_refusal(peer: PeerInfo, parties: Mapping[str, bytes]) -> str | None:
    """Why a verified certificate may not use the Fleet port, or None when it belongs to a configured party."""
    if peer.role != "party":
        return f"role {peer.role!r} is not admitted (only role 'party')"
    if peer.name not in parties:
        return f"party {peer.name!r} is not in this coordinator's [[parties]]"
    return None


def _headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop headers (and any the ``Connection`` header names): they describe one hop only."""
    named = {t.strip().lower() for k, v in raw if k.lower() == b"connection" for t in v.split(b",")}
    return [(k, v) for k, v in raw if k.lower() not in _HOP_BY_HOP and k.lower() not in named]


@dataclass
class FrontDoor:
    """The public Flower port.  ``parties``: name -> registered SuperNode key (PEM, as Flower sends it)."""

    identity: Identity
    host: str
    port: int
    upstream: str  # https://127.0.0.1:<superlink port>
    upstream_ca: Path  # the coordinator's loopback CA
    parties: Mapping[str, bytes]
    log: Callable[[str], None] = print
    #: called with the party's name when the SuperLink accepted its node's activation or heartbeat
    #: (``Registry.supernode_heard``: a job waits for it after a coordinator restart)
    heard: Callable[[str], None] | None = None
    _bg: BackgroundLoop | None = field(default=None, init=False, repr=False)
    _server: asyncio.Server | None = field(default=None, init=False, repr=False)
    _client: httpx.AsyncClient | None = field(default=None, init=False, repr=False)
    _tls: ssl.SSLContext | None = field(default=None, init=False, repr=False)
    _open: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _total: int = field(default=0, init=False, repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> FrontDoor:
        """Bind and listen; returns once the TLS listener accepts connections (a bind error raises here)."""
        self._bg = BackgroundLoop("flower-front-door")
        try:
            self._bg.run(self._start())
        except BaseException:
            self._bg.stop()
            raise
        return self

    async def _start(self) -> None:
        upstream_tls = ssl.create_default_context(cafile=str(self.upstream_ca))
        self._client = httpx.AsyncClient(
            verify=upstream_tls,
            timeout=httpx.Timeout(UPSTREAM_TIMEOUT_S),
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=16),
        )
        self._tls = ssl_server_context(self.identity)
        # TLS is started per connection (not by the server) so a failed handshake is ours to log
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=CHUNK)

    def stop(self) -> None:
        if self._bg is None:
            return

        async def _close() -> None:
            if self._server is not None:
                self._server.close()
            if self._client is not None:
                await self._client.aclose()

        self._bg.stop(_close())
        self._bg = None

    # ------------------------------------------------------------------ one connection
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        if self._total >= MAX_CONNECTIONS:
            self.log(f"front door: {addr}: {MAX_CONNECTIONS} connections open, connection closed")
            writer.close()
            return
        self._total += 1
        name = ""
        try:
            assert self._tls is not None
            try:
                await writer.start_tls(self._tls, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S)
            except (ssl.SSLError, OSError, TimeoutError) as exc:
                self.log(f"front door: TLS handshake from {addr} failed (no federation client certificate?): {exc}")
                return
            peer: PeerInfo | None = None
            try:
                peer = ssl_peer(writer.get_extra_info("ssl_object"), self.identity.ca_pem)
                refusal = admission_refusal(peer, self.parties)
            except SecurityError as exc:
                refusal = str(exc)
            who = f"certificate CN={peer.name} role={peer.role} from {addr}" if peer is not None else f"peer {addr}"
            if peer is not None and refusal is None:
                if self._open.get(peer.name, 0) >= MAX_CONNECTIONS_PER_PARTY:
                    self.log(f"front door: {who}: {MAX_CONNECTIONS_PER_PARTY} connections open, connection closed")
                    return
                name = peer.name
                self._open[name] = self._open.get(name, 0) + 1
            await self._serve(reader, writer, who, refusal, name)
        except (TimeoutError, ConnectionError, ssl.SSLError, h11.ProtocolError, httpx.HTTPError):
            pass  # the peer went away, idled out or broke HTTP; the connection is closed below
        finally:
            self._total -= 1
            if name:
                self._open[name] -= 1
            writer.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, who: str, refusal: str | None, name: str
    ) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        while True:
            event = await self._next(conn, reader)
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed (or a stray event): done with this connection
            method, target = event.method.decode("ascii", "replace"), event.target.decode("ascii", "replace")
            headers = list(event.headers)
            # 401 for who is asking (Flower's SuperNode stops on 401; on 403 it would hang waiting for a run),
            # 403 for what is asked
            route = route_refusal(method, target)
            status, reason = (401, refusal) if refusal else (403, route) if route else self._request_refusal(name, headers)
            if reason is not None:
                self.log(f"front door: refused {who}: {method} {target}: {reason}")
                await self._reply(conn, writer, status, reason)
                return
            if not await self._forward(conn, reader, writer, target, headers, name):
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    def _request_refusal(self, name: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, str | None]:
        """(HTTP status, why not) for a Fleet request's framing and Flower identity; (200, None) to forward.

        Declared size within bounds, and the party's *own* registered node key in the header
        the SuperLink verifies (the SuperLink then checks the signature made with it).
        """
        values = {k.lower(): v for k, v in headers}
        if b"transfer-encoding" in values or b"content-length" not in values:
            return 411, "a Content-Length is required (chunked request bodies are not forwarded)"
        size = int(values[b"content-length"])  # h11 already checked it is a non-negative integer
        if size > MAX_BODY_BYTES:
            return 413, f"body of {size} bytes exceeds the {MAX_BODY_BYTES}-byte limit"
        try:
            key = base64.b64decode(values.get(PUBLIC_KEY_HEADER, b""), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if key != self.parties[name]:
            return 401, f"the request does not carry the SuperNode key registered for party {name!r}"
        return 200, None

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            conn.receive_data(await asyncio.wait_for(reader.read(CHUNK), IDLE_TIMEOUT_S))

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, event: h11.Event) -> None:
        data = conn.send(event)
        if data:
            writer.write(data)
            await writer.drain()

    async def _reply(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, text: str) -> None:
        """A short plain-text answer, then the connection closes (the unread request body is discarded)."""
        body = f"fedcredit front door: {text}\n".encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]  # fmt: skip
        if conn.our_state is h11.SEND_RESPONSE:
            phrase = http.HTTPStatus(status).phrase.encode()
            await self._send(conn, writer, h11.Response(status_code=status, headers=headers, reason=phrase))
            await self._send(conn, writer, h11.Data(data=body))
            await self._send(conn, writer, h11.EndOfMessage())

    async def _forward(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        target: str,
        headers: list[tuple[bytes, bytes]],
        name: str,
    ) -> bool:
        """Stream one request to the SuperLink and its answer back; False when the connection must close."""
        assert self._client is not None

        async def body() -> AsyncIterator[bytes]:
            while True:
                ev = await self._next(conn, reader)
                if isinstance(ev, h11.Data):
                    yield bytes(ev.data)
                elif isinstance(ev, h11.EndOfMessage):
                    return
                else:
                    raise ConnectionError("client closed the connection inside a request body")

        request = self._client.build_request("POST", self.upstream + target, headers=_headers(headers), content=body())
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            self.log(f"front door: SuperLink did not answer {target}: {exc!r}")
            await self._reply(conn, writer, 502, "the SuperLink did not answer")
            return False
        if self.heard is not None and response.status_code == 200 and target[len(FLEET_PREFIX):] in HEARD_ROUTES:
            try:  # recorded before the SuperNode sees the answer: once it has it, a job may count on it
                await asyncio.to_thread(self.heard, name)
            except Exception as exc:  # noqa: BLE001 - bookkeeping must not break the party's Fleet traffic
                self.log(f"front door: could not record that party {name!r}'s SuperNode was heard: {exc!r}")
        try:
            await self._send(conn, writer, h11.Response(
                status_code=response.status_code, headers=_headers(list(response.headers.raw)),
                reason=response.reason_phrase.encode("ascii", "replace"),
            ))  # fmt: skip
            async for chunk in response.aiter_raw(CHUNK):
                await self._send(conn, writer, h11.Data(data=chunk))
            await self._send(conn, writer, h11.EndOfMessage())
        finally:
            await response.aclose()
        return True
