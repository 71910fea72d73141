"""Driving Flower 1.41's SuperLink and its ``flwr`` CLI from the coordinator.

Flower is the control plane: party identity (SuperNode key authentication), job
launch and the horizontal round loop.  We run the real ``flower-superlink`` binary
with TLS (the coordinator's federation certificate) and ``--enable-supernode-auth``,
and register each party's SuperNode public key by name.  Node ids are random and
assigned at registration, so the party -> node id map is kept in our registry.

All ``flwr`` CLI calls use a private ``FLWR_HOME`` under the coordinator's state
directory, so they never touch the operator's own Flower configuration.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedcredit.errors import ConfigError, FedCreditError

FEDERATION_ALIAS = "fedcredit"
APP_DIR = Path(__file__).resolve().parents[1] / "fedcredit" / "flowerapp" / "app"


def _bin(name: str) -> str:
    """Flower's executables live next to the running interpreter (venv/bin)."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise FedCreditError(f"'{name}' not found: is flwr installed in this environment?")
    return found


def flower_env(**extra: str) -> dict[str, str]:
    """Environment for Flower processes: its helper executables (flower-superexec,
    flwr-serverapp, flwr-clientapp) are spawned by name, so our venv's bin dir
    must be on PATH even when fedcredit was started by absolute path."""
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def write_flwr_home(home: Path, address: str, ca_cert: Path) -> Path:
    """Write the ``flwr`` CLI config naming our SuperLink and the federation CA."""
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


def start_superlink(
    *, state_dir: Path, host: str, port: int, cert: Path, key: Path, ca_cert: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    """Start ``flower-superlink`` with TLS and SuperNode authentication."""
    log = open(log_path, "ab")
    cmd = [
        _bin("flower-superlink"),
        "--ssl-certfile", str(cert),
        "--ssl-keyfile", str(key),
        "--ssl-ca-certfile", str(ca_cert),
        "--enable-supernode-auth",
        "--database", str(state_dir / "superlink.db"),
        "--host", host,
        "--port", str(port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=flower_env())


def flwr_cli(home: Path, *args: str, timeout: float = 120.0) -> dict[str, Any]:
    """Run a ``flwr`` subcommand with ``--format json`` and return the parsed answer."""
    env = flower_env(FLWR_HOME=str(home))
    proc = subprocess.run(
        [_bin("flwr"), *args, "--format", "json"], capture_output=True, text=True, env=env, timeout=timeout
    )
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
    """Register a party's SuperNode public key; returns the node id Flower assigned."""
    if not public_key.exists():
        raise ConfigError(f"party '{party}': SuperNode public key {public_key} not found")
    data = flwr_cli(home, "supernode", "register", str(public_key), FEDERATION_ALIAS, "--name", party)
    return str(data["node-id"])


def run_app(home: Path, run_config: dict[str, str]) -> str:
    """Submit our Flower app (ServerApp + ClientApp) as a run; returns Flower's run id."""
    cfg = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
    data = flwr_cli(home, "run", str(APP_DIR), FEDERATION_ALIAS, "--run-config", cfg)
    return str(data["run-id"])


def stop_process_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """Terminate a daemon we started in its own session (and everything it spawned)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def supervise(proc: subprocess.Popen[bytes], what: str, log_path: Path) -> int:
    """Foreground loop of a daemon: 0 after SIGINT/SIGTERM, 1 if the Flower process it runs dies."""
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        if proc.poll() is not None:
            print(f"{what} exited with code {proc.returncode}; see {log_path}", file=sys.stderr, flush=True)
            return 1
    return 0


def run_status(home: Path, flower_run_id: str) -> str:
    data = flwr_cli(home, "list", FEDERATION_ALIAS, "--run-id", flower_run_id, timeout=60)
    runs = data.get("runs") or []
    return str(runs[0].get("status", "unknown")) if runs else "unknown"
