"""``fedcredit party start``: the party daemon at an institution.

Runs a real ``flower-supernode`` that reaches the coordinator's Flower front door
through the party's fleet link (``party/fleet_link.py``: mutual TLS with the party's
certificate, which the SuperNode itself cannot present) and authenticates with the
party's registered SuperNode key.  Each job message starts our ClientApp
(``fedcredit.flowerapp``), which reads this party's config through the
``party-config`` node setting — data paths and keys never leave the
institution; only protocol messages (ciphertexts, sealed envelopes, public
metrics) do.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc

from crypto.certs import Identity
from crypto.files import private_dir, write_file
from crypto.tls import address_mismatch, secure_channel
from fedcredit import compute
from fedcredit.config import PartyConfig, check_port_free, load_party_config
from fedcredit.data import Table, load_dataset, table_summary
from fedcredit.errors import ConfigError
from fedcredit.processes import find_executable, flower_env, spawn_daemon, stop_process_group, supervise
from party import appguard
from party.fleet_link import FleetLink
from protos import liveness_pb2, liveness_pb2_grpc

#: What flwr 1.41's SuperNode logs when the SuperLink refuses its key (never registered, or unregistered).
_KEY_REFUSED_MARKERS = ("Failed to activate SuperNode", "401 Unauthorized")
_ACTIVATION_REFUSED = "Failed to activate SuperNode"
#: flwr 1.41's SuperNode heartbeats every 30 s and the SuperLink counts a node online for two intervals,
#: refusing to activate it again meanwhile; a party restarted right after a crash retries this long.
ACTIVATION_RETRY_S = 75.0
ACTIVATION_RETRY_EVERY_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_datasets(config: PartyConfig) -> dict[str, Table]:
    """Load every configured dataset once at start-up so bad files fail now, not mid-job; the validated tables.

    A real assurance because it is the jobs' own loader with the same arguments
    (``load_dataset`` of the dataset's section, as ``PartyRuntime.table`` calls it).
    """
    return {key: load_dataset(ds, party=config.party.name) for key, ds in config.datasets.items()}


def prepare_state_dir(config: PartyConfig) -> None:
    """State dir owner-only (tightened with a warning, or refused: crypto.files.private_dir); umask 077.

    The umask is inherited by the SuperNode and every ClientApp it starts, so anything the
    party's processes create (model parts, run dirs, logs) is owner-only even where a
    call site forgot to say so.
    """
    os.umask(0o077)
    warning = private_dir(config.party.state_dir, f"party '{config.party.name}' [party].state_dir")
    if warning:
        print(warning, file=sys.stderr, flush=True)


def spawn_supernode(cmd: list[str], config: PartyConfig, log: IO[bytes], app: appguard.InstalledApp) -> subprocess.Popen[bytes]:
    """Start the SuperNode so that (1) every task it runs goes through the app guard and (2) it dies with us.

    (1) party/appguard.py: a private bin dir first on its PATH resolves flwr's task commands
    to the guard, which accepts only ``app``.  (2) fedcredit.processes.spawn_daemon: own
    session + PR_SET_PDEATHSIG, so even a SIGKILLed daemon leaves no SuperNode behind.
    """
    p = config.party
    bindir = appguard.prepare_bin_dir(p.state_dir)
    env = flower_env()  # its PATH starts with the venv's real flwr binaries; the guard's bin dir goes before them
    env.update(appguard.guard_env(bindir, base_path=env["PATH"], party=p.name, audit_log=p.state_dir / "audit.jsonl",
                                  app=app))
    return spawn_daemon(cmd, log=log, env=env)


def key_refused_help(config: PartyConfig, log_text: str) -> str | None:
    """What the operator must do when the SuperLink refused this party's SuperNode key; None if it did not.

    Flower never re-admits a key once its node was unregistered (the key stays in its
    database, unique), so the only way back is a new key registered by the coordinator.
    """
    if not any(m in log_text for m in _KEY_REFUSED_MARKERS):
        return None
    p = config.party
    pub = Path(p.identity_dir) / f"{p.name}.flower.pub"
    return (
        f"party '{p.name}': the SuperLink at {config.coordinator.flower_address} refused this party's SuperNode key "
        f"({Path(p.identity_dir) / f'{p.name}.flower.key'}): its node was unregistered, or the key was never "
        "registered (this daemon retried for a while, in case Flower still counted its node online after a crash). "
        "Flower never accepts an unregistered key again. To rejoin:\n"
        f"  1. here: fedcredit certs rekey-flower {p.name} --out-dir {p.identity_dir}\n"
        f"  2. send the new public key {pub} to the coordinator operator, who puts it at this party's "
        f"[[parties]] flower_public_key and restarts the coordinator (it registers the new key)\n"
        f"  3. here: fedcredit party start again"
    )


def _check_ports(config: PartyConfig) -> None:
    """A configured port another process holds is an error now, before anything starts (never "ready")."""
    check_port_free(config, "party", "runtime_port", "127.0.0.1", config.party.runtime_port)
    if config.scoring is not None:
        check_port_free(config, "scoring", "port", config.scoring.host, config.scoring.port)


def _write_ready(config: PartyConfig, supernode: subprocess.Popen[bytes], app: appguard.InstalledApp) -> None:
    info = {"pid": os.getpid(), "supernode_pid": supernode.pid, "app_sha256": app.sha256}
    write_file(config.party.state_dir / "party.ready.json", json.dumps(info).encode(), 0o600)


def _start_fleet_link(config: PartyConfig, identity: Identity) -> FleetLink:
    """The SuperNode's only road to the coordinator: loopback in, mutual TLS out (see party/fleet_link.py)."""
    return FleetLink(identity, config.coordinator.flower_address, config.party.state_dir / "loopback-tls",
                     log=lambda m: print(m, flush=True)).start()


def _superlink_args(link: FleetLink) -> list[str]:
    """``flower-supernode`` flags naming the fleet link and its loopback CA (the link adds the mutual TLS)."""
    return ["--superlink", link.address, "--root-certificates", str(link.loopback_ca)]


#: While the coordinator has never been reached, repeat the "waiting for the coordinator" line this often.
WAITING_REPEAT_S = 10.0


@dataclass
class Heartbeat:
    """Tells the coordinator this daemon is alive (``Liveness.Heartbeat`` on the relay port), every ``interval_s``.

    Why a daemon thread of this process: it stops the moment the daemon dies (kill -9, crash,
    network cut), which is exactly what the coordinator must learn; the coordinator fails a
    running job of this party after its ``liveness_timeout_s`` without a heartbeat.  The
    party's name is the certificate's CN: nothing here names it.  ``reached`` is set at the
    first heartbeat the coordinator answered, which is when the daemon says "ready".
    """

    identity: Identity
    address: str  # [coordinator].relay_address
    interval_s: float
    log: Callable[[str], None] = print
    reached: threading.Event = field(default_factory=threading.Event)
    attempts: int = 0
    last_error: str = ""
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def start(self) -> Heartbeat:
        threading.Thread(target=self._run, daemon=True, name="heartbeat").start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        backoff_ms = int(self.interval_s * 1000)  # retry a lost connection at the heartbeat pace, not gRPC's minutes
        channel = secure_channel(self.address, self.identity, options=[
            ("grpc.initial_reconnect_backoff_ms", backoff_ms), ("grpc.min_reconnect_backoff_ms", backoff_ms),
            ("grpc.max_reconnect_backoff_ms", backoff_ms)])  # fmt: skip
        stub = liveness_pb2_grpc.LivenessStub(channel)
        name, lost, last_waiting = self.identity.name, False, -WAITING_REPEAT_S
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                self.attempts += 1
                try:
                    rep = stub.Heartbeat(liveness_pb2.HeartbeatRequest(interval_s=self.interval_s),
                                         timeout=max(self.interval_s, 2.0))
                except grpc.RpcError as e:
                    self.last_error = f"{e.code().name}: {e.details()}"
                    if not self.reached.is_set():
                        if t0 - last_waiting >= WAITING_REPEAT_S:
                            last_waiting = t0
                            mismatch = address_mismatch(self.address, self.identity)
                            self.log(f"party '{name}': waiting for the coordinator at {self.address} "
                                     f"(attempt {self.attempts}, last error: {self.last_error})"
                                     + (f"; [coordinator].relay_address: {mismatch}" if mismatch else ""))
                    elif not lost:
                        lost = True
                        self.log(f"party '{name}': lost the coordinator at {self.address} (last error: "
                                 f"{self.last_error}); heartbeats retried every {self.interval_s:g} s")
                else:
                    if lost:
                        self.log(f"party '{name}': coordinator at {self.address} reachable again")
                    lost = False
                    if not self.reached.is_set() and rep.liveness_timeout_s and rep.liveness_timeout_s < 2 * self.interval_s:
                        self.log(f"party '{name}': warning: heartbeat_interval_s = {self.interval_s:g} is more than half "
                                 f"the coordinator's liveness_timeout_s = {rep.liveness_timeout_s:g}; one late heartbeat "
                                 "would fail this party's jobs")
                    self.reached.set()
                self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - t0)))
        finally:
            channel.close()


@dataclass
class PartyHandle:
    config: PartyConfig
    supernode: subprocess.Popen[bytes]
    scoring: Any = None  # party.scoring.ScoringServer when [scoring] is configured
    app: appguard.InstalledApp | None = None
    log_offset: int = 0  # where this start's lines begin in supernode.log
    fleet_link: FleetLink | None = None
    heartbeat: Heartbeat | None = None
    respawn: Any = None  # () -> a new SuperNode process, same command and log (activation retries)

    def stop(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.scoring is not None:
            self.scoring.stop()
        stop_process_group(self.supernode)
        if self.fleet_link is not None:
            self.fleet_link.stop()
        compute.default_pool().close()  # a local Ray instance this daemon started stops with it


def start(config_path: Path) -> PartyHandle:
    config_path = Path(config_path).resolve()
    config = load_party_config(config_path)
    p = config.party
    identity = Identity.load(p.identity_dir, p.name)
    if identity.role != "party":
        raise ConfigError(f"{config_path}: [party].identity_dir holds a '{identity.role}' certificate, expected 'party'")
    for key, table in check_datasets(config).items():
        print(f"party '{p.name}': {table_summary(table, config.datasets[key], dataset=key)}", flush=True)
    _check_ports(config)
    prepare_state_dir(config)
    pool = config.compute.pool(p.name)
    compute.configure(pool)  # this process's HE work; the ClientApp process configures its own (party/clientapp.py)
    print(f"party '{p.name}': compute: {pool.workers} worker(s), engine {pool.engine}"
          + (f" at {pool.ray_address}" if pool.ray_address else ""), flush=True)
    app = appguard.installed_app()
    port = p.runtime_port or _free_port()
    log = open(p.state_dir / "supernode.log", "ab")
    log_offset = log.tell()
    link = _start_fleet_link(config, identity)
    cmd = [
        find_executable("flower-supernode"),
        *_superlink_args(link),
        "--auth-supernode-private-key", str(identity.flower_key_path),
        "--node-config", f'party-config="{config_path}"',
        "--port", str(port),
    ]  # fmt: skip
    scoring = None
    if config.scoring is not None:  # started first: a bad [scoring] section fails before the SuperNode runs
        from party.scoring import start_from_config

        scoring = start_from_config(config)
    proc = spawn_supernode(cmd, config, log, app)
    heartbeat = Heartbeat(identity, config.coordinator.relay_address, config.coordinator.heartbeat_interval_s,
                          log=lambda m: print(m, flush=True)).start()
    _write_ready(config, proc, app)

    def respawn() -> subprocess.Popen[bytes]:
        new = spawn_supernode(cmd, config, log, app)
        _write_ready(config, new, app)
        return new

    return PartyHandle(config, proc, scoring, app, log_offset, link, heartbeat, respawn)


def _pause(seconds: float) -> bool:
    """Sleep ``seconds`` unless SIGINT/SIGTERM arrives (False then): the daemon stays stoppable while it waits."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return not stop.wait(seconds)


#: What flwr 1.41's SuperNode logs once the SuperLink activated its node (after a successful connect).
_ACTIVATED = "SuperNode ID:"


def wait_for_coordinator(handle: PartyHandle) -> bool:
    """Block until the coordinator answered a heartbeat *and* the SuperLink activated this party's
    SuperNode (True), or until the SuperNode died (False).

    "ready" must mean jobs can reach this party: after a crash the SuperLink may still count
    the old node online and refuse the new one for up to a minute, and a job sent meanwhile
    would be lost.  Bounded by the SuperNode's life and by SIGINT/SIGTERM (``KeyboardInterrupt``
    / the caller's stop); a party may be started long before its coordinator, and says so.
    """
    assert handle.heartbeat is not None
    log_path = handle.config.party.state_dir / "supernode.log"
    while True:
        if handle.heartbeat.reached.wait(0.5) and _ACTIVATED in _log_since(log_path, handle.log_offset):
            return True
        if handle.supernode.poll() is not None:
            return False
        if handle.heartbeat.reached.is_set():
            time.sleep(0.5)  # reading the SuperNode's log: Flower has no callback for its activation


def _ready_line(handle: PartyHandle) -> str:
    p, c = handle.config.party, handle.config.coordinator
    return (
        f"party '{p.name}' ({p.role}) ready: reached the coordinator at {c.relay_address} "
        f"(heartbeat every {c.heartbeat_interval_s:g} s); "
        f"SuperNode connected to {c.flower_address} over mutual TLS (fleet link); "
        f"datasets: {', '.join(sorted(handle.config.datasets)) or 'none'}; state in {p.state_dir}"
        + (f"; scoring on {handle.scoring.address} (mutual TLS)" if handle.scoring is not None else "")
        + (f"; runs only app {handle.app.sha256[:16]}…" if handle.app is not None else "")
    )


def serve_forever(config_path: Path) -> int:
    handle = start(config_path)
    p = handle.config.party
    log_path = p.state_dir / "supernode.log"
    retry_until = time.monotonic() + ACTIVATION_RETRY_S
    ready = False
    try:
        while True:
            if not ready and wait_for_coordinator(handle):  # else the SuperNode died: supervise() reports it below
                print(_ready_line(handle), flush=True)
                ready = True
            rc = supervise(handle.supernode, "flower-supernode", log_path)
            if rc == 0 or handle.respawn is None or time.monotonic() > retry_until:
                break
            if _ACTIVATION_REFUSED not in _log_since(log_path, handle.log_offset):
                break
            print(f"party '{p.name}': the SuperLink refused to activate this party's node. After a crash or kill "
                  "less than a minute ago Flower still counts the node online (two 30 s heartbeats); "
                  f"retrying in {ACTIVATION_RETRY_EVERY_S:g} s (until {ACTIVATION_RETRY_S:g} s after start)",
                  file=sys.stderr, flush=True)
            if not _pause(ACTIVATION_RETRY_EVERY_S):
                rc = 0
                break
            handle.log_offset = log_path.stat().st_size
            handle.supernode = handle.respawn()
        if rc != 0:
            help_text = key_refused_help(handle.config, _log_since(log_path, handle.log_offset))
            if help_text:
                print(help_text, file=sys.stderr, flush=True)
                rc = 3
    finally:
        handle.stop()
    return rc


def _log_since(path: Path, offset: int, limit: int = 1 << 20) -> str:
    """This start's part of the SuperNode log (at most its last ``limit`` bytes)."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(offset, size - limit))
        return fh.read().decode(errors="replace")
