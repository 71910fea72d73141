"""Driving Flower 1.41's SuperLink and its ``flwr`` CLI from the coordinator.

Flower is the control plane: party identity (SuperNode key authentication), job
launch and the horizontal round loop.  We run the real ``flower-superlink`` binary
with ``--enable-supernode-auth`` and register each party's SuperNode public key by
name.  Node ids are random and assigned at registration, so the party -> node id map
is kept in our registry.

The SuperLink listens on **127.0.0.1 only** (:data:`LOOPBACK`): its one HTTP server also
carries the unauthenticated Control and Runtime APIs, so parties reach its Fleet routes
only through the front door (``coordinator/frontdoor.py``).  The loopback hop is TLS
because Flower refuses SuperNode authentication without it; the certificate is a
throw-away one for 127.0.0.1 under a loopback CA minted at each start
(``crypto.certs.issue_loopback_tls``), never the federation's.

All ``flwr`` CLI calls use a private ``FLWR_HOME`` under the coordinator's state
directory, so they never touch the operator's own Flower configuration.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

from fedcredit.control_plane import APP_DIR
from fedcredit.errors import ConfigError, FedCreditError
from fedcredit.processes import find_executable, flower_env

FEDERATION_ALIAS = "fedcredit"






def write_flwr_home(home: Path, address: str, ca_cert: Path) -> Path:
    """Write the ``flwr`` CLI config naming our (loopback) SuperLink and the CA its certificate chains to."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        "[superlink]\n"
        f'default = "{FEDERATION_ALIAS}"\n\n'
        f"[superlink.{FEDERATION_ALIAS}]\n"
        f'address = "{address}"\n'
        f'root-certificates = "{ca_cert}"\n'
    )
    return home


def wait_tls_port(host: str, port: int, ca_cert: Path, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until a TLS handshake (verified against the CA) succeeds on host:port."""
    ctx = ssl.create_default_context(cafile=str(ca_cert))
    ctx.check_hostname = False
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise FedCreditError(f"process exited with code {proc.returncode} before {host}:{port} was ready")
        try:
            with socket.create_connection((host, port), timeout=2) as s, ctx.wrap_socket(s) as t:
                t.do_handshake()
                return
        except OSError as e:  # refused while starting; retry on a short back-off
            last = e
            time.sleep(0.2)
    raise FedCreditError(f"{host}:{port} not ready after {timeout:.0f} s: {last}")


#: Where the SuperLink listens: never a public interface (see the module docstring).
LOOPBACK = "127.0.0.1"


def free_loopback_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now (for ``superlink_port = 0``)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def start_superlink(
    *, state_dir: Path, port: int, cert: Path, key: Path, ca_cert: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    """Start ``flower-superlink`` on 127.0.0.1:``port`` with TLS (loopback cert) and SuperNode authentication.

    No host parameter on purpose: binding it anywhere else would put Flower's
    unauthenticated Control API on the network.
    """
    log = open(log_path, "ab")
    cmd = [
        find_executable("flower-superlink"),
        "--ssl-certfile", str(cert),
        "--ssl-keyfile", str(key),
        "--ssl-ca-certfile", str(ca_cert),
        "--enable-supernode-auth",
        "--database", str(state_dir / "superlink.db"),
        "--host", LOOPBACK,
        "--port", str(port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=flower_env())


def flwr_cli(home: Path, *args: str, timeout: float = 120.0) -> dict[str, Any]:
    """Run a ``flwr`` subcommand with ``--format json`` and return the parsed answer."""
    env = flower_env(FLWR_HOME=str(home))
    try:
        proc = subprocess.run(
            [find_executable("flwr"), *args, "--format", "json"], capture_output=True, text=True, env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise FedCreditError(f"flwr {' '.join(args[:2])} did not answer within {timeout:g} s "
                             f"(is the SuperLink up and reachable?)") from None
    out = proc.stdout.strip()
    start = out.find("{")
    try:
        data = json.loads(out[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        data = {}
    if not data.get("success"):
        msg = data.get("error-message") or proc.stderr.strip() or out or f"exit code {proc.returncode}"
        raise FedCreditError(f"flwr {' '.join(args[:2])} failed: {msg.strip()}")
    return data


def register_supernode(home: Path, party: str, public_key: Path) -> str:
    """Register a party's SuperNode public key; returns the node id Flower assigned.

    A key Flower already holds (its node was unregistered, or another node uses it) can
    never be registered again: that is reported as what the operators must do, not as
    Flower's raw error.
    """
    if not public_key.exists():
        raise ConfigError(f"party '{party}': SuperNode public key {public_key} not found")
    try:
        data = flwr_cli(home, "supernode", "register", str(public_key), FEDERATION_ALIAS, "--name", party)
    except FedCreditError as exc:
        if "already in use" not in str(exc).lower():
            raise
        raise ConfigError(
            f"[[parties]] '{party}': the SuperLink already holds SuperNode key {public_key} (its node was "
            "unregistered, or another node uses it) and Flower never registers a key twice. The party must make a "
            f"new key (`fedcredit certs rekey-flower {party} --out-dir <its identity dir>`) and send its "
            f"{party}.flower.pub; put it at {public_key} and restart the coordinator"
        ) from None
    return str(data["node-id"])


def registered_nodes(home: Path) -> dict[str, str]:
    """node id -> status (online / offline / registered / unregistered) of the SuperLink's nodes."""
    data = flwr_cli(home, "supernode", "list", FEDERATION_ALIAS, timeout=60)
    return {str(n["node-id"]): str(n["status"]) for n in data.get("nodes") or []}


def needs_registration(known: dict[str, str], statuses: dict[str, str], party: str) -> bool:
    """A party needs (re-)registering when we have no node for it or the SuperLink unregistered/forgot it."""
    node = known.get(party)
    return node is None or statuses.get(node, "unregistered") == "unregistered"


def run_app(home: Path, run_config: dict[str, str]) -> str:
    """Submit our Flower app (ServerApp + ClientApp) as a run; returns Flower's run id."""
    cfg = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
    data = flwr_cli(home, "run", str(APP_DIR), FEDERATION_ALIAS, "--run-config", cfg)
    return str(data["run-id"])






def run_status(home: Path, flower_run_id: str) -> str:
    data = flwr_cli(home, "list", FEDERATION_ALIAS, "--run-id", flower_run_id, timeout=60)
    runs = data.get("runs") or []
    return str(runs[0].get("status", "unknown")) if runs else "unknown"
