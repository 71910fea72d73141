"""Certificate host names: what ``certs issue`` covers, and a mismatch reported as one, naming both sides.

A multi-host install dials the coordinator by a DNS name; if its certificate does not cover
that name, TLS fails with a bare "hostname mismatch" (or, under gRPC, a timeout).  These
tests dial a real TLS server whose certificate is for ``fintech.example.net`` only, on
127.0.0.1, as the CLI and the party's fleet link would.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from coordinator.relay import start_relay
from crypto.certs import Identity, certificate_names, init_ca, issue, name_covered
from crypto.tls import ssl_server_context
from party.fleet_link import FleetLink


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDCREDIT_")}
    env["XDG_CONFIG_HOME"] = str(cwd / "xdg")
    return subprocess.run([sys.executable, "-m", "fedcredit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_certs_issue_covers_every_dns_and_ip_given_and_loopback_for_the_coordinator(tmp_path: Path) -> None:
    assert _cli(["certs", "init", "--ca-dir", "certs/ca"], tmp_path).returncode == 0
    proc = _cli(["certs", "issue", "coordinator", "--role", "coordinator", "--dns", "coordinator.example.net",
                 "--dns", "fl.example.net", "--ip", "10.0.0.5"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = certificate_names((tmp_path / "certs/coordinator/coordinator.crt").read_bytes())
    assert sorted(names) == sorted(["coordinator.example.net", "fl.example.net", "10.0.0.5", "127.0.0.1", "localhost"])
    proc = _cli(["certs", "issue", "fintech", "--dns", "fintech.example.net"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert certificate_names((tmp_path / "certs/fintech/fintech.crt").read_bytes()) == ["fintech.example.net"]


def test_name_matching_rules() -> None:
    names = ["coordinator.example.net", "*.corp.example", "10.0.0.5", "::1"]
    assert name_covered("coordinator.example.net", names) and name_covered("COORDINATOR.example.net.", names)
    assert name_covered("a.corp.example", names) and not name_covered("a.b.corp.example", names)
    assert name_covered("10.0.0.5", names) and name_covered("[::1]", names)
    assert not name_covered("127.0.0.1", names) and not name_covered("example.net", names)


@pytest.fixture
def wrong_name_server(tmp_path: Path) -> tuple[Identity, Identity, Path]:
    """(server identity for fintech.example.net only, operator identity, credential root)."""
    ca = init_ca(tmp_path / "certs" / "ca", "names-test")
    server = issue(ca, tmp_path / "certs" / "fintech", "fintech", hosts=("fintech.example.net",))
    op = issue(ca, tmp_path / "certs" / "operator", "operator", role="operator")
    return server, op, tmp_path


def test_cli_names_the_dialled_name_and_the_certificates_names(wrong_name_server: tuple[Identity, Identity, Path]) -> None:
    server, _op, root = wrong_name_server
    relay = start_relay(server, "127.0.0.1:0", membership=lambda session: None)
    try:
        proc = _cli(["runs", "--control", f"127.0.0.1:{relay.port}", "--identity-dir", "certs/operator"], root)
    finally:
        relay.stop()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "TLS host name mismatch: dialled '127.0.0.1'" in proc.stderr, proc.stderr
    assert "['fintech.example.net']" in proc.stderr and "--dns" in proc.stderr


def test_fleet_link_names_the_dialled_name_and_the_certificates_names(
        wrong_name_server: tuple[Identity, Identity, Path]) -> None:
    server, _op, root = wrong_name_server
    bank = issue(root / "certs" / "ca", root / "certs" / "bank1", "bank1")
    ctx = ssl_server_context(server)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:  # one TLS accept: the fleet link's connection
        conn, _ = listener.accept()
        try:
            ctx.wrap_socket(conn, server_side=True).close()
        except (OSError, ssl.SSLError):
            conn.close()

    threads = [threading.Thread(target=serve, daemon=True) for _ in range(2)]  # the link's dial + the probe
    for t in threads:
        t.start()
    logs: list[str] = []
    link = FleetLink(bank, f"127.0.0.1:{port}", root / "link-tls", log=logs.append).start()
    try:
        client = ssl.create_default_context(cafile=str(link.loopback_ca))
        host, lport = link.address.split(":")
        with socket.create_connection((host, int(lport)), timeout=10) as raw, \
                client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.settimeout(20)
            try:
                tls.recv(1)  # the link closes us once its dial to the "front door" failed
            except (OSError, ssl.SSLError):
                pass
    finally:
        link.stop()
        listener.close()
    assert any("TLS host name mismatch: dialled '127.0.0.1'" in m and "['fintech.example.net']" in m
               and "[coordinator].flower_address" in m for m in logs), logs


def test_relay_transport_and_heartbeat_name_the_dialled_name_and_the_certificates_names(
        wrong_name_server: tuple[Identity, Identity, Path]) -> None:
    """The party's two dials of [coordinator].relay_address (data plane, heartbeats) say why TLS failed."""
    from fedcredit.errors import SecurityError
    from party.daemon import Heartbeat
    from party.dataplane import RelayTransport

    server, _op, root = wrong_name_server
    bank = issue(root / "certs" / "ca", root / "certs" / "bank1", "bank1")
    relay = start_relay(server, "127.0.0.1:0", membership=lambda session: None)
    logs: list[str] = []
    beat = Heartbeat(bank, f"127.0.0.1:{relay.port}", 0.5, log=logs.append).start()
    try:
        with pytest.raises(SecurityError) as err:
            RelayTransport(bank, f"127.0.0.1:{relay.port}", "job-1", connect_timeout=10, reconnect_window_s=0)
        deadline = time.monotonic() + 20
        while not logs and time.monotonic() < deadline:
            beat._stop.wait(0.1)  # the heartbeat thread logs its first "waiting" line after one failed attempt
    finally:
        beat.stop()
        relay.stop()
    msg = str(err.value)
    assert "[coordinator].relay_address" in msg and "TLS host name mismatch: dialled '127.0.0.1'" in msg, msg
    assert "['fintech.example.net']" in msg
    assert logs and "waiting for the coordinator" in logs[0] and "TLS host name mismatch" in logs[0], logs
    assert not beat.reached.is_set()
