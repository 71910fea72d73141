"""A real federation on 127.0.0.1: CA, certificates, configs and daemon processes.

Exactly the code path of a real installation — ``fedcredit certs``,
``fedcredit coordinator start`` and ``fedcredit party start`` as separate
processes, real Flower SuperLink/SuperNodes with TLS and SuperNode key
authentication, the mutual-TLS relay — only on one machine.  Used by
``fedcredit simulate --deployment`` and by the end-to-end tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crypto.certs import init_ca, issue
from fedcredit.errors import FedCreditError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def to_toml(data: Mapping[str, Any]) -> str:
    """Minimal TOML writer for our flat config tables (tables and arrays of tables)."""
    lines: list[str] = []

    def table(prefix: str, d: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict))}
        if prefix:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    lines.append(f"[[{prefix + '.' if prefix else ''}{k}]]")
                    for kk, vv in item.items():
                        lines.append(f"{kk} = {_toml_value(vv)}")
                    lines.append("")

    table("", data)
    return "\n".join(lines)


@dataclass
class PartySpec:
    name: str
    datasets: dict[str, dict[str, Any]]  # dataset key -> {path, id_column, label_column, ...}
    role: str = "bank"
    #: keys over the generated [policy] (see :func:`local_policy`), e.g. {"approval": "manual"}
    policy: dict[str, Any] = field(default_factory=dict)
    #: the party's [compute] section (None: this machine's cores split between the parties), e.g.
    #: {"workers": 2, "engine": "processes"}
    compute: dict[str, Any] | None = None


JOB_TYPES = ("horizontal", "vertical-lr", "secureboost")


def local_policy(spec: PartySpec, partners: Sequence[str], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The [policy] a local federation writes for a party: its partners, every job type, each of its datasets
    with the columns its file has (read from the header), automatic approval, min_intersection 100.

    Explicit lists, never wildcards: the file a test or a demo runs with is a policy a bank could read.
    ``overrides`` (``PartySpec.policy``) replace any key, e.g. ``approval = "manual"`` or a narrower dataset list.
    """
    import pandas as pd

    datasets: dict[str, Any] = {}
    for key, ds in spec.datasets.items():
        path = Path(ds["path"])
        cols = (list(pd.read_csv(path, nrows=0).columns) if path.suffix.lower() == ".csv"
                else list(pd.read_parquet(path).columns))
        datasets[key] = {"columns": [str(c) for c in cols]}
    pol: dict[str, Any] = {"approval": "auto", "partners": [p for p in partners if p != spec.name],
                           "job_types": list(JOB_TYPES), "min_intersection": 100, "datasets": datasets}
    pol.update(overrides or {})
    return pol


@dataclass
class LocalFederation:
    """Builds and runs a federation folder under ``root``."""

    root: Path
    parties: Sequence[PartySpec]
    federation: str = "fedcredit-local"
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.certs = self.root / "certs"
        self.flower_port = free_port()
        self.relay_port = free_port()
        self.control = f"127.0.0.1:{self.relay_port}"

    # ------------------------------------------------------------------ set-up
    def setup(self) -> LocalFederation:
        self.root.mkdir(parents=True, exist_ok=True)
        ca = self.certs / "ca"
        if not (ca / "ca.crt").exists():
            init_ca(ca, self.federation)
            issue(ca, self.certs / "coordinator", "coordinator", role="coordinator")
            issue(ca, self.certs / "operator", "operator", role="operator")
            for p in self.parties:
                issue(ca, self.certs / p.name, p.name, role="party")
        coord = {
            "federation": {"name": self.federation, "ca_dir": str(ca)},
            "coordinator": {
                "name": "coordinator",
                "identity_dir": str(self.certs / "coordinator"),
                "state_dir": str(self.state_dir("coordinator")),
                "host": "127.0.0.1",
                "flower_port": self.flower_port,
                "relay_port": self.relay_port,
            },
            "parties": [
                {
                    "name": p.name,
                    "certificate": str(self.certs / p.name / f"{p.name}.crt"),
                    "flower_public_key": str(self.certs / p.name / f"{p.name}.flower.pub"),
                }
                for p in self.parties
            ],
        }
        (self.root / "coordinator.toml").write_text(to_toml(coord))
        for p in self.parties:
            cfg = {
                "party": {
                    "name": p.name,
                    "role": p.role,
                    "identity_dir": str(self.certs / p.name),
                    "state_dir": str(self.state_dir(p.name)),
                },
                "coordinator": {
                    "flower_address": f"127.0.0.1:{self.flower_port}",
                    "relay_address": f"127.0.0.1:{self.relay_port}",
                },
                "datasets": {k: {kk: str(vv) if isinstance(vv, Path) else vv for kk, vv in v.items()} for k, v in p.datasets.items()},
                # every party of a local federation shares this machine: its cores split between them
                "compute": p.compute if p.compute is not None
                else {"workers": max(1, (os.cpu_count() or 1) // len(self.parties))},
                "policy": local_policy(p, [q.name for q in self.parties], p.policy),
            }
            (self.root / f"{p.name}.toml").write_text(to_toml(cfg))
        return self

    def state_dir(self, name: str) -> Path:
        """The state dir of the coordinator or of a party daemon of this federation."""
        return self.root / "state" / name

    def write_job(self, name: str, job: Mapping[str, Any]) -> Path:
        data = dict(job)
        data["control"] = {"address": self.control, "identity_dir": str(self.certs / "operator"), "name": "operator"}
        path = self.root / f"{name}.toml"
        path.write_text(to_toml(data))
        return path

    # ------------------------------------------------------------------ processes
    def _spawn(self, key: str, args: Sequence[str], ready_text: str, timeout: float,
               env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        log_path = self.root / "logs" / f"{key}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "wb")
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        proc = subprocess.Popen([sys.executable, "-m", "fedcredit.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=full_env, start_new_session=True)
        self.procs[key] = proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            if ready_text in text:
                return proc
            if proc.poll() is not None:
                raise FedCreditError(f"{key} exited with code {proc.returncode} during start-up:\n{text[-3000:]}")
            time.sleep(0.1)  # waiting for the daemon's own "ready" line
        raise FedCreditError(f"{key} not ready after {timeout:.0f} s; log: {log_path}")

    def start_coordinator(self, timeout: float = 90, env: Mapping[str, str] | None = None) -> None:
        self._spawn("coordinator", ["coordinator", "start", "--config", str(self.root / "coordinator.toml")],
                    "coordinator ready", timeout, env)

    def start_party(self, name: str, timeout: float = 90) -> None:
        self._spawn(name, ["party", "start", "--config", str(self.root / f"{name}.toml")], "ready", timeout)

    def start(self, coordinator_env: Mapping[str, str] | None = None) -> LocalFederation:
        self.start_coordinator(env=coordinator_env)
        for p in self.parties:
            self.start_party(p.name)
        return self

    def stop_process(self, key: str) -> None:
        proc = self.procs.pop(key, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop(self) -> None:
        for key in [k for k in self.procs if k != "coordinator"] + ["coordinator"]:
            self.stop_process(key)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run_job(self, name: str, job: Mapping[str, Any]) -> Any:
        """Write, submit and follow a job to its end as the operator; returns the final ``RunInfo``."""
        path = self.write_job(name, job)
        client = self.client()
        try:
            run_id = client.submit(path)
            for _ in client.watch(run_id):
                pass
            return client.get(run_id)
        finally:
            client.close()

    def client(self):  # -> ControlClient
        from coordinator.client import ControlClient

        return ControlClient.connect(self.control, self.certs / "operator", "operator")
