"""``fedcredit coordinator start``: the SuperLink (loopback) behind the Flower front door, the relay and Control.

The coordinator is honest-but-curious by design: it holds a TLS certificate, the
parties' public certificates and SuperNode public keys — never a CKKS secret key
or a party's envelope key.  The public Flower port is the front door
(``coordinator/frontdoor.py``); Flower's own SuperLink, with its unauthenticated
Control and Runtime APIs, listens on 127.0.0.1 and is driven only by this daemon.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from coordinator import flower
from coordinator.control import ControlServicer, add_control_service
from coordinator.frontdoor import FrontDoor
from coordinator.liveness import LivenessServicer, add_liveness_service
from coordinator.registry import Registry
from coordinator.relay import RelayHandle, start_relay
from crypto.certs import Identity, certificate_names, flower_public_key_pem, issue_loopback_tls, verify_peer
from fedcredit.config import CoordinatorConfig, check_port_free, load_coordinator_config
from fedcredit.errors import ConfigError, FedCreditError, SecurityError
from fedcredit.processes import stop_process_group, supervise


@dataclass
class CoordinatorHandle:
    config: CoordinatorConfig
    config_path: Path
    registry: Registry
    superlink: subprocess.Popen[bytes]
    relay: RelayHandle
    flwr_home: Path
    _stop: threading.Event
    frontdoor: FrontDoor | None = None
    superlink_address: str = ""  # 127.0.0.1:<port>, reachable only on this host

    def stop(self) -> None:
        self._stop.set()
        if self.frontdoor is not None:
            self.frontdoor.stop()
        self.relay.stop()
        stop_process_group(self.superlink)


def _check_party_certs(config: CoordinatorConfig, ca_pem: bytes) -> list[bytes]:
    """Every listed party must hold a valid certificate from this federation's CA."""
    certs = []
    for p in config.parties:
        if not p.certificate.exists():
            raise ConfigError(f"{config.source}: [[parties]] '{p.name}': certificate {p.certificate} not found")
        pem = p.certificate.read_bytes()
        try:
            verify_peer(pem, ca_pem, expected_name=p.name)
        except SecurityError as e:
            raise ConfigError(f"{config.source}: [[parties]] '{p.name}': certificate {p.certificate}: {e}") from None
        certs.append(pem)
    return certs


def _monitor(handle: CoordinatorHandle, interval: float = 5.0) -> None:
    """Fail runs whose Flower run ended without the ServerApp recording a result."""
    while not handle._stop.wait(interval):
        for rec in handle.registry.list(limit=20):
            if rec.status not in ("queued", "running") or not rec.flower_run_id:
                continue
            try:
                st = flower.run_status(handle.flwr_home, rec.flower_run_id)
            except FedCreditError:
                continue
            if st.startswith("finished"):
                # the ServerApp writes its result before Flower marks the run finished; re-check
                time.sleep(1.0)
                again = handle.registry.get(rec.run_id)
                if again is not None and again.status in ("queued", "running"):
                    handle.registry.fail(rec.run_id, f"Flower run {rec.flower_run_id} ended ({st}) without a result")


def _print(msg: str) -> None:
    print(msg, flush=True)


def start(config_path: Path, *, log=_print) -> CoordinatorHandle:
    """Start everything and return once the SuperLink, the front door and the relay accept connections."""
    config_path = Path(config_path).resolve()
    config = load_coordinator_config(config_path)
    c = config.coordinator
    identity = Identity.load(c.identity_dir, c.name)
    if identity.role != "coordinator":
        raise ConfigError(f"{config_path}: [coordinator].identity_dir holds a '{identity.role}' certificate, expected role 'coordinator'")
    for section, field, host, port in (("coordinator", "flower_port", c.host, c.flower_port),
                                       ("coordinator", "relay_port", c.host, c.relay_port),
                                       ("coordinator", "superlink_port", flower.LOOPBACK, c.superlink_port)):
        check_port_free(config, section, field, host, port)  # a taken port fails now, never after "ready"
    party_certs = _check_party_certs(config, identity.ca_pem)
    party_keys = {p.name: flower_public_key_pem(p.flower_public_key, p.name) for p in config.parties}

    state = c.state_dir
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    registry = Registry(state / "registry.db")
    stale = registry.fail_interrupted("the coordinator stopped while this run was active")
    if stale:
        log(f"{len(stale)} run(s) were active when the coordinator stopped: {', '.join(stale)} (vertical runs are "
            "now 'interrupted', resumable with 'fedcredit runs resume <id>'; horizontal runs failed)")

    loop_ca, loop_cert, loop_key = issue_loopback_tls(state / "loopback-tls")
    link_port = c.superlink_port or flower.free_loopback_port()
    home = flower.write_flwr_home(state / "flwr-home", f"{flower.LOOPBACK}:{link_port}", loop_ca)
    superlink = flower.start_superlink(
        state_dir=state,
        port=link_port,
        cert=loop_cert,
        key=loop_key,
        ca_cert=loop_ca,
        log_path=state / "superlink.log",
    )
    door: FrontDoor | None = None
    try:
        flower.wait_tls_port(flower.LOOPBACK, link_port, loop_ca, timeout=60, proc=superlink)
        known = registry.nodes()
        statuses = flower.registered_nodes(home) if known else {}
        for p in config.parties:
            if flower.needs_registration(known, statuses, p.name):
                node_id = flower.register_supernode(home, p.name, p.flower_public_key)
                registry.set_node(p.name, node_id)
                log(f"registered party '{p.name}' as SuperNode {node_id}")
        # the door opens only once every key is registered: a SuperNode already waiting (its party was started
        # before this coordinator) that got through earlier would be refused (401) and stop for good
        registry.forget_supernodes()  # only this SuperLink's own heartbeats count (Registry.forget_supernodes)
        door = FrontDoor(identity, c.host, c.flower_port, f"https://{flower.LOOPBACK}:{link_port}", loop_ca,
                         party_keys, log, heard=registry.supernode_heard).start()

        def launch(run_id: str) -> str:
            return flower.run_app(
                home,
                {"run_id": run_id, "registry": str(registry.path), "coordinator_config": str(config_path)},
            )

        servicer = ControlServicer(config, registry, launch, ca_pem=identity.ca_pem)
        heartbeats = LivenessServicer(registry, [p.name for p in config.parties], c.liveness_timeout_s,
                                      ca_pem=identity.ca_pem, log=log)
        relay = start_relay(
            identity,
            config.relay_address,
            membership=registry.job_parties,  # a session is a run: only its job's parties may use it
            extra_servicers=[add_control_service(servicer), add_liveness_service(heartbeats)],
            directory_certs=party_certs,
            reconnect_window_s=c.reconnect_window_s,
        )
    except BaseException:
        if door is not None:
            door.stop()
        stop_process_group(superlink)
        raise
    handle = CoordinatorHandle(config, config_path, registry, superlink, relay, home, threading.Event(), door,
                               f"{flower.LOOPBACK}:{link_port}")
    threading.Thread(target=_monitor, args=(handle,), daemon=True, name="run-monitor").start()
    (state / "coordinator.ready.json").write_text(
        json.dumps({"flower": config.flower_address, "superlink": f"{flower.LOOPBACK}:{link_port}",
                    "relay": relay.address, "pid": os.getpid()})
    )
    return handle


def serve_forever(config_path: Path) -> int:
    """Foreground daemon: runs until SIGINT/SIGTERM or until the SuperLink dies."""
    handle = start(config_path)
    cfg = handle.config
    print(
        f"coordinator ready: flower front door {cfg.flower_address} (mutual TLS, parties' Fleet routes only) -> "
        f"SuperLink {handle.superlink_address} (SuperNode auth), "
        f"relay+control {handle.relay.address} (mutual TLS); state in {cfg.coordinator.state_dir}",
        flush=True,
    )
    names = certificate_names(Identity.load(cfg.coordinator.identity_dir, cfg.coordinator.name).cert_pem)
    print(f"coordinator certificate covers {', '.join(names)}: parties' flower_address/relay_address and operators' "
          "--control must use one of these names", flush=True)
    rc = supervise(handle.superlink, "flower-superlink", cfg.coordinator.state_dir / "superlink.log")
    handle.stop()
    return rc
