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

import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crypto.certs import Identity
from fedcredit.config import PartyConfig, load_party_config
from fedcredit.data import Table, load_dataset
from fedcredit.errors import ConfigError
from fedcredit.processes import find_executable, flower_env, stop_process_group, supervise
from party.fleet_link import FleetLink


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


def _start_fleet_link(config: PartyConfig, identity: Identity) -> FleetLink:
    """The SuperNode's only road to the coordinator: loopback in, mutual TLS out (see party/fleet_link.py)."""
    return FleetLink(identity, config.coordinator.flower_address, config.party.state_dir / "loopback-tls",
                     log=lambda m: print(m, flush=True)).start()


def _superlink_args(link: FleetLink) -> list[str]:
    """``flower-supernode`` flags naming the fleet link and its loopback CA (the link adds the mutual TLS)."""
    return ["--superlink", link.address, "--root-certificates", str(link.loopback_ca)]


@dataclass
class PartyHandle:
    config: PartyConfig
    supernode: subprocess.Popen[bytes]
    scoring: Any = None  # party.scoring.ScoringServer when [scoring] is configured
    fleet_link: FleetLink | None = None

    def stop(self) -> None:
        if self.scoring is not None:
            self.scoring.stop()
        stop_process_group(self.supernode)
        if self.fleet_link is not None:
            self.fleet_link.stop()


def start(config_path: Path) -> PartyHandle:
    config_path = Path(config_path).resolve()
    config = load_party_config(config_path)
    p = config.party
    identity = Identity.load(p.identity_dir, p.name)
    if identity.role != "party":
        raise ConfigError(f"{config_path}: [party].identity_dir holds a '{identity.role}' certificate, expected 'party'")
    check_datasets(config)
    p.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    port = p.runtime_port or _free_port()
    log = open(p.state_dir / "supernode.log", "ab")
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
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=flower_env())
    return PartyHandle(config, proc, scoring, link)


def serve_forever(config_path: Path) -> int:
    handle = start(config_path)
    p = handle.config.party
    print(
        f"party '{p.name}' ({p.role}) ready: SuperNode dialing {handle.config.coordinator.flower_address} over mutual TLS; "
        f"datasets: {', '.join(sorted(handle.config.datasets)) or 'none'}; state in {p.state_dir}"
        + (f"; scoring on {handle.scoring.address} (mutual TLS)" if handle.scoring is not None else ""),
        flush=True,
    )
    rc = supervise(handle.supernode, "flower-supernode", p.state_dir / "supernode.log")
    handle.stop()
    return rc
