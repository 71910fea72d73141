"""Many banks on Flower's simulation engine (Ray backend), running the deployment's horizontal code.

Why: the in-process simulator (:mod:`simulations.horizontal_sim`) runs every bank as a thread
of one process, which says nothing about a 50- or 100-bank consortium.  Here every bank is a
virtual Flower SuperNode whose ClientApp runs in a Ray actor (a separate process), and the
coordinator is a Flower ServerApp, exactly the shape of a deployment:

* the coordinator role is :func:`fedcredit.protocols.horizontal.run_coordinator` over
  :class:`coordinator.serverapp.FlowerChannel` (the deployment's channel: the same
  :mod:`fedcredit.control_plane` envelope, the same push/poll of Flower messages);
* each bank's role is :func:`fedcredit.protocols.horizontal.party_handler` with a
  :class:`fedcredit.channel.DirState` of its own on disk, as in the party daemon, because a
  Ray actor serves whichever bank's message comes next (state must not live in the actor).

What the deployment has and this does not (it is a scale model, not a security test of the
daemons): TLS, the party's policy gate and job ledger, certificates (each bank's X25519
envelope key is generated here and the public halves handed to every bank in
``federation.json``, where a deployment takes them from CA-verified certificates), liveness,
publishing.  One extra hop, ``sim.hello``, maps Flower's random node ids to bank names (a
deployment's registry knows them by name).

    python -m simulations.bench_many_banks      # the 3 / 50 / 100-bank figures
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from coordinator.serverapp import FlowerChannel
from crypto.files import write_file
from fedcredit.channel import DirState
from fedcredit.control_plane import REPLY_SUFFIX, pack, unpack
from fedcredit.data import load_table
from fedcredit.errors import ProtocolError
from fedcredit.protocols import horizontal
from fedcredit.protocols.horizontal import HorizontalJob, HorizontalResult

__all__ = ["HELLO", "SimResult", "write_federation", "make_client_app", "make_server_app", "run_flower_simulation"]

#: The simulation-only discovery call: a bank answers its name (Flower gives virtual nodes random ids).
HELLO = "sim.hello"
FEDERATION_FILE = "federation.json"


# --------------------------------------------------------------------------- the banks' side


@contextmanager
def _environ_restored() -> Iterator[None]:
    """Undo what Flower's ``run_simulation`` and Ray write into this process's environment.

    Why: they set ``PYTHONPATH`` (the app directory, Ray's vendored packages), ``PYTHONBREAKPOINT`` and
    ``GRPC_VERBOSITY=error``; left in place, every later subprocess of the caller (a CLI, a pip, a party
    daemon) would import from the wrong place and hide gRPC errors.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def write_federation(out_dir: Path, train: Mapping[str, Path], test: Mapping[str, Path | None], *,
                     tap: bool = False) -> Path:
    """Lay out one directory per bank (envelope key, state, models) and ``federation.json``; returns its path.

    ``tap``: every bank also writes each plaintext vector right before it is encrypted to
    ``<bank>/tap/`` (harness-side record for privacy tests; never read by any role).
    """
    out = Path(out_dir).resolve()
    banks = []
    for name, path in train.items():
        d = out / "banks" / name
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = X25519PrivateKey.generate()
        write_file(d / "envelope.key", key.private_bytes_raw())  # owner-only: the bank's own secret
        t = test.get(name)
        banks.append({"name": name, "train": str(Path(path).resolve()), "test": str(Path(t).resolve()) if t else None,
                      "dir": str(d), "public_key": key.public_key().public_bytes_raw().hex()})
    fed = out / FEDERATION_FILE
    fed.write_text(json.dumps({"banks": banks, "tap": tap}, indent=1))
    return fed


@lru_cache(maxsize=4)
def _federation(path: str) -> dict[str, Any]:
    """The federation file, read once per Ray actor process (every call of every bank needs it)."""
    fed = json.loads(Path(path).read_text())
    fed["peers"] = {b["name"]: X25519PublicKey.from_public_bytes(bytes.fromhex(b["public_key"])) for b in fed["banks"]}
    return fed


def _tap(bank_dir: Path, what: str, vec: np.ndarray) -> None:
    d = bank_dir / "tap"
    d.mkdir(exist_ok=True)
    np.save(d / f"{time.time_ns()}-{os.getpid()}-{what}.npy", vec)  # the pid shows which process ran the bank


def bank_reply(fed_file: str, partition_id: int, method: str, payload: bytes) -> bytes:
    """One bank's answer to one coordinator call: the deployment's party handler over the bank's DirState."""
    fed = _federation(fed_file)
    if not 0 <= partition_id < len(fed["banks"]):
        raise ProtocolError(f"simulated node with partition-id {partition_id}: the federation has "
                            f"{len(fed['banks'])} banks ({fed_file})")
    bank = fed["banks"][partition_id]
    name, d = bank["name"], Path(bank["dir"])
    if method == HELLO:
        return name.encode()
    env = horizontal.PartyEnv(
        name=name,
        envelope_private=X25519PrivateKey.from_private_bytes((d / "envelope.key").read_bytes()),
        peers={p: k for p, k in fed["peers"].items() if p != name},
        train=partial(load_table, Path(bank["train"]), party=name, label_col="y"),
        test=partial(load_table, Path(bank["test"]), party=name, label_col="y") if bank["test"] else None,
        output_dir=d / "models",
        tap=partial(_tap, d) if fed["tap"] else None,
    )
    return horizontal.party_handler(env)(method, payload, DirState(d / "state"))


def make_client_app(fed_file: Path) -> ClientApp:
    """The banks' ClientApp (one Flower virtual node per bank; node ``partition-id`` i is bank i of the file)."""
    app = ClientApp()
    path = str(Path(fed_file).resolve())

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        method, payload, _meta = unpack(msg.content)
        reply = bank_reply(path, int(context.node_config["partition-id"]), method, payload)
        return Message(content=pack(method + REPLY_SUFFIX, reply, {}), reply_to=msg)

    return app


# --------------------------------------------------------------------------- the coordinator's side


@dataclass
class SimResult:
    """What one simulated run returns: the protocol's public result plus what the harness measured."""

    result: HorizontalResult
    wall_s: float  # ServerApp main, from discovery to the end of run_coordinator
    coordinator_cpu_s: float  # CPU of the driver process (ServerApp thread + Flower's in-memory SuperLink)
    flower_bytes_to_banks: dict[str, int]  # FlowerChannel's count of protocol payload bytes, per bank
    flower_bytes_from_banks: dict[str, int]
    memory: dict[str, Any] = field(default_factory=dict)  # RSS samples (see _MemorySampler.summary)


def _discover(grid: Grid, n: int, timeout: float) -> dict[str, int]:
    """bank name -> Flower node id: wait (bounded) for the n virtual nodes, then ask each its name."""
    deadline = time.monotonic() + timeout
    ids = list(grid.get_node_ids())
    while len(ids) < n:
        if time.monotonic() > deadline:
            raise ProtocolError(f"only {len(ids)} of {n} simulated banks registered within {timeout:.0f} s")
        time.sleep(0.2)  # the engine registers nodes after the ServerApp thread starts; no event for it
        ids = list(grid.get_node_ids())
    probe = FlowerChannel(grid, {f"node-{i}": i for i in ids}, {}, timeout=timeout)
    names = probe.call_all({f"node-{i}": (HELLO, b"") for i in ids})
    nodes = {raw.decode(): int(key.removeprefix("node-")) for key, raw in names.items()}
    if len(nodes) != n:
        raise ProtocolError(f"simulated banks answered {len(nodes)} distinct names for {n} nodes")
    return nodes


def make_server_app(fed_file: Path, job: HorizontalJob, box: dict[str, Any], *, timeout: float = 900.0,
                    progress: Callable[[dict[str, Any]], None] | None = None) -> ServerApp:
    """The coordinator's ServerApp: the deployment's run_coordinator over FlowerChannel; result into ``box``."""
    app = ServerApp()
    n = len(json.loads(Path(fed_file).read_text())["banks"])

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        nodes = _discover(grid, n, timeout)
        channel = FlowerChannel(grid, {p: nodes[p] for p in job.parties}, {"run_id": job.run_id}, timeout=timeout)
        t, c = time.perf_counter(), time.process_time()
        box["result"] = horizontal.run_coordinator(channel, job, progress)
        box["wall_s"], box["cpu_s"] = time.perf_counter() - t, time.process_time() - c
        box["sent"], box["received"] = dict(channel.bytes_sent), dict(channel.bytes_received)

    return app


# --------------------------------------------------------------------------- memory


def _rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        out.extend(int(k) for k in kids)
        todo.extend(int(k) for k in kids)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


class _MemorySampler:
    """Samples the driver's RSS (ServerApp + Flower's in-memory SuperLink) and the Ray processes' RSS."""

    def __init__(self, period_s: float = 0.25) -> None:
        self.period = period_s
        self.base = _rss(os.getpid())
        self.driver_peak = self.base
        self.workers_peak = 0  # sum over Ray's worker processes ("ray::...": the ClientApp actors and Ray's agents)
        self.ray_peak = 0  # every other Ray process (raylet, GCS, object store, ...)
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            self.sample(me)
            self._stop.wait(self.period)

    def sample(self, me: int) -> None:
        self.driver_peak = max(self.driver_peak, _rss(me))
        workers = ray = 0
        for p in _descendants(me):
            r = _rss(p)
            if "ClientAppActor" in _cmdline(p) or "ray::" in _cmdline(p):
                workers += r
            else:
                ray += r
        self.workers_peak, self.ray_peak = max(self.workers_peak, workers), max(self.ray_peak, ray)

    def __enter__(self) -> _MemorySampler:
        self._th.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._th.join()

    def summary(self) -> dict[str, Any]:
        return {"driver_base_rss": self.base, "driver_peak_rss": self.driver_peak,
                "workers_peak_rss": self.workers_peak, "ray_other_peak_rss": self.ray_peak}


# --------------------------------------------------------------------------- entry point


def run_flower_simulation(train: Mapping[str, Path], test: Mapping[str, Path | None], job: HorizontalJob,
                          out_dir: Path, *, cpus: int = 2, object_store_mb: int = 1024, tap: bool = False,
                          timeout: float = 900.0, progress: Callable[[dict[str, Any]], None] | None = None,
                          verbose: bool = False) -> SimResult:
    """Run ``job`` with one Flower virtual SuperNode per bank on the Ray backend; blocks until the run ends.

    Ray is bounded so a shared machine survives 100 banks: ``cpus`` CPUs, one per ClientApp actor
    (so ``cpus`` actors serve all banks in turn), and an object store of ``object_store_mb``.
    Each run starts its own local Ray instance (its own temp dir) and shuts it down.
    """
    if sorted(job.parties) != sorted(train):
        raise ValueError(f"job parties {job.parties} do not match the banks {sorted(train)}")
    fed_file = write_federation(out_dir, train, test, tap=tap)
    box: dict[str, Any] = {}
    backend: dict[str, dict[str, Any]] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"address": "local", "num_cpus": cpus, "object_store_memory": object_store_mb * 1024 * 1024,
                      "_temp_dir": f"/tmp/ray-fcsim-{os.getpid()}", "include_dashboard": False},
    }
    with _MemorySampler() as mem, _environ_restored():
        from flwr.simulation import run_simulation  # the [simulation] extra (Ray): only this module needs it

        run_simulation(server_app=make_server_app(fed_file, job, box, timeout=timeout, progress=progress),
                       client_app=make_client_app(fed_file), num_supernodes=len(train),
                       backend_config=backend, verbose_logging=verbose)
    if "result" not in box:
        raise ProtocolError(f"the simulated run '{job.run_id}' ended without a result (see Flower's log above)")
    return SimResult(result=box["result"], wall_s=box["wall_s"], coordinator_cpu_s=box["cpu_s"],
                     flower_bytes_to_banks=box["sent"], flower_bytes_from_banks=box["received"],
                     memory=mem.summary())
