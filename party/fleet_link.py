"""The party's way to the coordinator's Flower front door: a loopback forwarder that adds mutual TLS.

Why: the front door admits only holders of a federation party certificate, and Flower
1.41's SuperNode cannot present a client certificate (its HTTP client has no option
for one).  So the SuperNode dials this forwarder on ``127.0.0.1:<ephemeral>``, and every
connection it opens is carried to the front door over TLS 1.3 with the party's own
certificate, the server checked against the federation CA and the coordinator's host
name from ``[coordinator].flower_address``.  The loopback hop is TLS too, only because
the SuperNode refuses key authentication over plain HTTP: a throw-away certificate for
127.0.0.1 under a loopback CA minted at each start (``crypto.certs.issue_loopback_tls``,
in ``<state_dir>/loopback-tls``), which is what the SuperNode's ``--root-certificates``
names.  Decrypted bytes are piped unchanged: the SuperNode's node-key signatures still
reach the SuperLink, and this module understands no HTTP.

What the loopback port lends: any process on the party's host can reach the front door
as this party through it — the same trust the host already has (it can read the
party's key files).  It still gets only the Fleet routes, and only with the party's
registered SuperNode key.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from crypto.certs import Identity, issue_loopback_tls
from crypto.tls import hostname_mismatch, ssl_client_context, ssl_loopback_server_context
from fedcredit.aio import BackgroundLoop
from fedcredit.errors import ConfigError

MAX_CONNECTIONS = 16  # a SuperNode uses two or three (main loop, heartbeat)
CONNECT_TIMEOUT_S = 20.0
CHUNK = 64 * 1024
_NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH

__all__ = ["FleetLink", "split_address"]


def split_address(address: str, what: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ConfigError naming ``what`` otherwise."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: expected host:port, got {address!r}")
    return host, int(port)


@dataclass
class FleetLink:
    """Forward ``127.0.0.1:<port>`` to the front door at ``target`` over mutual TLS as ``identity``."""

    identity: Identity
    target: str  # [coordinator].flower_address
    tls_dir: Path  # where the loopback certificate is written (owner-only key)
    log: Callable[[str], None] = print
    loopback_ca: Path = field(default=Path(), init=False)
    _bg: BackgroundLoop | None = field(default=None, init=False, repr=False)
    _server: asyncio.Server | None = field(default=None, init=False, repr=False)
    _port: int = field(default=0, init=False, repr=False)
    _open: int = field(default=0, init=False, repr=False)
    _failing: bool = field(default=False, init=False, repr=False)

    @property
    def address(self) -> str:
        """Where the SuperNode dials (loopback; TLS with :attr:`loopback_ca`)."""
        return f"127.0.0.1:{self._port}"

    def start(self) -> FleetLink:
        self._host, self._target_port = split_address(self.target, "[coordinator].flower_address")
        self._tls: ssl.SSLContext = ssl_client_context(self.identity)
        self.loopback_ca, cert, key = issue_loopback_tls(self.tls_dir)
        self._local_tls = ssl_loopback_server_context(cert, key)
        self._bg = BackgroundLoop("fleet-link")
        try:
            self._bg.run(self._start())
        except BaseException:
            self._bg.stop()
            raise
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self._local_tls, limit=CHUNK)
        self._port = int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        if self._bg is None:
            return

        async def _close() -> None:
            if self._server is not None:
                self._server.close()

        self._bg.stop(_close())
        self._bg = None

    async def _handle(self, local_r: asyncio.StreamReader, local_w: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            local_w.close()
            return
        self._open += 1
        try:
            try:
                remote_r, remote_w = await asyncio.wait_for(
                    asyncio.open_connection(self._host, self._target_port, ssl=self._tls,
                                            server_hostname=self._host, limit=CHUNK),
                    CONNECT_TIMEOUT_S,
                )  # fmt: skip
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                if not self._failing:  # one line per outage, not one per SuperNode retry
                    why = str(exc)
                    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_code in _NAME_MISMATCH:
                        found: str | None = await asyncio.to_thread(hostname_mismatch, self._host,
                                                                    self._target_port, self.identity)
                        why = found or why
                    self.log(f"fleet link: cannot reach the front door {self.target} ([coordinator].flower_address) "
                             f"over mutual TLS: {why}")
                self._failing = True
                return
            if self._failing:
                self.log(f"fleet link: front door {self.target} reachable again")
                self._failing = False
            pipes = [asyncio.ensure_future(self._pipe(local_r, remote_w)),
                     asyncio.ensure_future(self._pipe(remote_r, local_w))]  # fmt: skip
            try:
                # either side closing ends the exchange (HTTP/1.1 needs no half-close)
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for p in pipes:
                    p.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
                remote_w.close()
        finally:
            self._open -= 1
            local_w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            return
