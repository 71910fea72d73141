"""Load: the scoring service under 128 concurrent clients, the relay under 20 parties' streams, latency curves.

(a) **Scoring** — the deployment of ``simulations/bench_scoring.py`` (``deployed``: a joint
SecureBoost model signed and installed at both parties, each party's scoring server in its
own process, real mutual-TLS gRPC with the project's certificates).  ``--clients`` callers,
each on its own mTLS channel, send single-application ``Score`` requests back to back for
``--seconds``; every request costs a label -> passive ``PartialScore`` round trip.  Reported:
decisions/s, latency p50/p99/p99.9, errors by kind, and the RSS of both serving processes
sampled every 0.5 s (start / peak / end).

(b) **Relay** — a real relay (``coordinator.relay.start_relay``, its own process) and
``--parties`` real ``RelayTransport`` clients (spread over ``--client-procs`` processes, so
the clients' GIL is not what is measured), paired across processes; each initiator keeps a
window of sealed frames in flight to its partner, who echoes them, for ``--seconds``.
Reported: frames/s and bytes through the relay, the relay's RSS (start / peak / end),
errors (echo mismatches and exceptions).

(c) **Latency** (``--part latency``; docs/deployment.md, "Latency") — the same deployment, per model
(SecureBoost, vertical LR): closed-loop clients (``--closed 1,16``: each sends its next request when
the last is answered) and an **open loop** at fixed arrival rates (``--rates 200,500,1000``: Poisson
arrivals scheduled in advance, latency counted from each request's *scheduled* send time, so
queueing is never hidden by a generator that waits — coordinated omission).  Reported per phase:
p50/p99/p99.9, decisions/s, errors, CPU ms per decision of each serving process and of the
generator, the servers' generation-2 garbage collections, the load average; ``--handshakes N``
times a call on a reused channel, a new one (full mutual-TLS 1.3 handshake) and a new one that
resumes a cached TLS session; ``--profile DIR`` samples both servers with py-spy during the
16-client phase (the ``profile`` extra).

All loops are bounded in time, target only 127.0.0.1, and stop by themselves.

Usage::

    python -m simulations.bench_load [--part scoring|relay|both] [--clients 128] [--parties 20] [--seconds 60]
    python -m simulations.bench_load --part latency [--rates 200,500,1000] [--closed 1,16] [--seconds 20]
        [--handshakes 50] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- memory sampling


def rss_mb(pid: int) -> float:
    """Resident set size of a process (Linux /proc), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    """Samples the RSS of some processes every ``every`` seconds on a thread: start / peak / end per process."""

    def __init__(self, pids: dict[str, int], every: float = 0.5) -> None:
        self.pids, self.every = pids, every
        self.samples: dict[str, list[float]] = {n: [rss_mb(p)] for n, p in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            for n, p in self.pids.items():
                try:
                    self.samples[n].append(rss_mb(p))
                except OSError:
                    pass

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for n, p in self.pids.items():
            try:
                self.samples[n].append(rss_mb(p))
            except OSError:
                pass

    def summary(self) -> dict[str, dict[str, float]]:
        return {n: {"start_mb": s[0], "peak_mb": max(s), "end_mb": s[-1], "samples": len(s)}
                for n, s in self.samples.items()}


def _pct(lat: np.ndarray, q: float) -> float:
    return float(np.percentile(lat, q) * 1e3) if len(lat) else float("nan")


# --------------------------------------------------------------------------- (a) scoring


async def _score_load(address: str, identity: Any, apps: list[tuple[str, dict[str, float]]], clients: int,
                      seconds: float) -> dict[str, Any]:
    """``clients`` callers, one mTLS channel each, Score back to back until ``seconds`` have passed."""
    import grpc

    from crypto.tls import GRPC_OPTIONS, channel_credentials
    from protos import scoring_pb2 as pb
    from protos import scoring_pb2_grpc as pbg

    creds = channel_credentials(identity)
    reqs = [pb.ScoreRequest(id=i, features=f) for i, f in apps]
    channels = [grpc.aio.secure_channel(address, creds, options=GRPC_OPTIONS) for _ in range(clients)]
    lat: list[float] = []
    errors: Counter[str] = Counter()
    try:
        stubs = [pbg.ScoringStub(ch) for ch in channels]
        await asyncio.gather(*(s.Score(reqs[k % len(reqs)], timeout=30) for k, s in enumerate(stubs)))  # warm: TLS
        deadline = time.perf_counter() + seconds

        async def client(c: int, stub: Any) -> None:
            k = c
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    rep = await stub.Score(reqs[k % len(reqs)], timeout=10)
                    if not rep.decision:
                        errors["empty decision"] += 1
                    lat.append(time.perf_counter() - t)
                except grpc.aio.AioRpcError as e:
                    errors[f"{e.code().name}: {re.sub(r'[0-9.]+', 'N', (e.details() or '')[:160])}"] += 1
                k += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, s) for c, s in enumerate(stubs)))
        wall = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    a = np.asarray(lat)
    return {"clients": clients, "seconds": round(wall, 2), "decisions": int(len(a)),
            "decisions_per_s": round(len(a) / wall, 1), "p50_ms": round(_pct(a, 50), 2), "p99_ms": round(_pct(a, 99), 2),
            "p999_ms": round(_pct(a, 99.9), 2), "errors": sum(errors.values()), "error_kinds": dict(errors)}


def scoring_load(clients: int = 128, seconds: float = 60.0, *, model: str = "secureboost", n_fit: int = 20000,
                 work: Path | None = None, raised_limits: bool = True) -> dict[str, Any]:
    """(a): the deployed joint model of bench_scoring under ``clients`` concurrent callers for ``seconds``."""
    from simulations.bench_scoring import deployed

    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        with deployed(Path(work or tmp), model, n_fit=n_fit, raised_limits=raised_limits) as dep:
            pids = {p: proc.pid for p, proc in dep.procs.items()}
            with RssSampler(pids) as rss:
                res = asyncio.run(_score_load(dep.guest_address, dep.client, dep.apps, clients, seconds))
            res["rss"] = rss.summary()
            res["model"] = model
    return res


# --------------------------------------------------------------------------- (c) latency: open and closed loop


def poisson_schedule(rate: float, seconds: float, seed: int = 0) -> np.ndarray:
    """Send times (seconds from the start) of a Poisson arrival process of ``rate`` per second.

    Fixed in advance, so a slow server cannot slow the arrivals down (an open loop: the
    next request is due whether or not the last one was answered).
    """
    if rate <= 0 or seconds <= 0:
        raise ValueError("rate and seconds must be positive")
    rng = np.random.default_rng(seed)
    n = int(rate * seconds * 1.2) + 16
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    while t[-1] < seconds:  # bounded: each pass adds ~20 % more than needed
        t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(1.0 / rate, n))])
    return t[t < seconds]


def _summary(lat: np.ndarray) -> dict[str, float]:
    return {"p50_ms": round(_pct(lat, 50), 2), "p99_ms": round(_pct(lat, 99), 2), "p999_ms": round(_pct(lat, 99.9), 2),
            "max_ms": round(float(lat.max() * 1e3), 2) if len(lat) else float("nan")}


async def _open_loop(address: str, identity: Any, apps: list[tuple[str, dict[str, float]]], rate: float,
                     seconds: float, *, channels: int = 4, seed: int = 0, max_in_flight: int = 20_000,
                     timeout: float = 10.0) -> dict[str, Any]:
    """Single-application ``Score`` calls at Poisson arrival times of ``rate``/s for ``seconds``.

    Latency is counted from each request's **scheduled** send time, so time a request spends
    waiting because the server (or this generator) was busy is counted, not hidden
    (coordinated omission).  ``lag`` is how late the generator actually sent (its own
    timer and CPU); ``service`` is latency from the actual send.
    """
    import grpc

    from crypto.tls import GRPC_OPTIONS, channel_credentials
    from protos import scoring_pb2 as pb
    from protos import scoring_pb2_grpc as pbg

    creds = channel_credentials(identity)
    reqs = [pb.ScoreRequest(id=i, features=f) for i, f in apps]
    chans = [grpc.aio.secure_channel(address, creds, options=GRPC_OPTIONS) for _ in range(channels)]
    sched = poisson_schedule(rate, seconds, seed)
    lat = np.full(len(sched), np.nan)
    lag = np.full(len(sched), np.nan)
    service = np.full(len(sched), np.nan)
    errors: Counter[str] = Counter()
    try:
        stubs = [pbg.ScoringStub(ch) for ch in chans]
        await asyncio.gather(*(s.Score(reqs[k], timeout=30) for k, s in enumerate(stubs)))  # TLS handshakes
        in_flight: set[asyncio.Task[None]] = set()

        async def one(k: int, due: float) -> None:
            sent = time.perf_counter()
            lag[k] = sent - due
            try:
                rep = await stubs[k % channels].Score(reqs[k % len(reqs)], timeout=timeout)
                done = time.perf_counter()
                if not rep.decision:
                    errors["empty decision"] += 1
                    return
                lat[k], service[k] = done - due, done - sent
            except grpc.aio.AioRpcError as e:
                errors[f"{e.code().name}: {re.sub(r'[0-9.]+', 'N', (e.details() or '')[:160])}"] += 1

        t0 = time.perf_counter() + 0.01
        for k, s in enumerate(sched.tolist()):
            due = t0 + s
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # the loop's timer is ~1 ms coarse: visible in `lag`
            if len(in_flight) >= max_in_flight:
                errors["generator: in-flight cap reached (server far behind)"] += 1
                continue
            task = asyncio.get_running_loop().create_task(one(k, due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*list(in_flight))
        wall = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(ch.close() for ch in chans))
    ok = ~np.isnan(lat)
    return {"offered_per_s": rate, "requests": int(len(sched)), "seconds": round(wall, 2), "decisions": int(ok.sum()),
            "decisions_per_s": round(float(ok.sum()) / wall, 1), **_summary(lat[ok]),
            "service_p99_ms": round(_pct(service[ok], 99), 2), "lag_p99_ms": round(_pct(lag[~np.isnan(lag)], 99), 2),
            "errors": sum(errors.values()), "error_kinds": dict(errors)}


def _cpu_s(pid: int) -> float:
    """user+system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gc_pauses(log: Path, since: float) -> list[float]:
    """Durations (ms) of the server's logged garbage collections after ``since`` (``bench_scoring._serve``)."""
    if not log.exists():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [float(r["ms"]) for r in rows if r["time"] >= since]


def _measured(run: Any, pids: dict[str, int], gc_logs: dict[str, Path] | None = None) -> dict[str, Any]:
    """Run one load phase; add each serving process's CPU per decision, the generator's, the servers'
    stop-the-world garbage collections (count, longest), and the machine load."""
    before = {n: _cpu_s(p) for n, p in pids.items()}
    own = time.process_time()
    load0 = os.getloadavg()[0]
    since = time.time()
    res: dict[str, Any] = asyncio.run(run)
    n = max(1, int(res["decisions"]))
    res["cpu_ms_per_decision"] = {**{k: round((_cpu_s(p) - before[k]) / n * 1e3, 3) for k, p in pids.items()},
                                  "generator": round((time.process_time() - own) / n * 1e3, 3)}
    pauses = {p: _gc_pauses(log, since) for p, log in (gc_logs or {}).items()}
    res["gc_pauses"] = {p: {"n": len(v), "max_ms": round(max(v, default=0.0), 2)} for p, v in pauses.items()}
    res["load_avg"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    return res


async def _handshakes(address: str, identity: Any, apps: list[tuple[str, dict[str, float]]], n: int) -> dict[str, Any]:
    """One Score call on a reused channel vs on a new channel (full mutual-TLS 1.3 handshake) vs on a new
    channel that resumes a cached TLS session; p50/p99 of each over ``n`` calls."""
    import grpc
    from grpc.experimental.session_cache import ssl_session_cache_lru

    from crypto.tls import GRPC_OPTIONS, channel_credentials
    from protos import scoring_pb2 as pb
    from protos import scoring_pb2_grpc as pbg

    creds = channel_credentials(identity)
    req = pb.ScoreRequest(id=apps[0][0], features=apps[0][1])
    cache = ssl_session_cache_lru(16)
    out: dict[str, Any] = {}
    async with grpc.aio.secure_channel(address, creds, options=GRPC_OPTIONS) as ch:
        stub = pbg.ScoringStub(ch)
        await stub.Score(req, timeout=30)
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            await stub.Score(req, timeout=30)
            lat.append(time.perf_counter() - t)
        out["reused_channel"] = _summary(np.asarray(lat))
    for name, opts in (("new_channel_full_handshake", GRPC_OPTIONS),
                       ("new_channel_resumed_session", [*GRPC_OPTIONS, ("grpc.ssl_session_cache", cache)])):
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            async with grpc.aio.secure_channel(address, creds, options=opts) as ch:
                await pbg.ScoringStub(ch).Score(req, timeout=30)
            lat.append(time.perf_counter() - t)
        out[name] = _summary(np.asarray(lat))
    return out


def _pyspy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy (the optional ``profile`` extra) sampling ``pid`` for ``seconds``, raw collapsed stacks to ``out``."""
    import shutil

    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        print("py-spy is not installed (pip install -e '.[profile]'): no profile taken", flush=True)
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
                             "--format", "raw", "--output", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


#: leaf frames of a thread that waits (a lock, the event loop's epoll): py-spy does not always see such a
#: thread as idle, so these samples are counted apart and left out of the shares
_WAITING = {"Condition.wait (threading.py)", "Event.wait (threading.py)", "EpollSelector.select (selectors.py)"}


def profile_summary(raw: Path, top: int = 25) -> dict[str, Any]:
    """Share of busy py-spy samples per function (``name (file)``): inclusive and self, the largest ``top`` of
    each.  ``Thread.run (threading.py)`` as a *self* entry is native code of a thread with no Python frame
    above it: in a scoring server, gRPC's completion-queue poller (TLS, HTTP/2, socket calls; no GIL)."""
    incl: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = waiting = 0

    def key(frame: str) -> str:
        name, _, where = frame.partition(" (")
        return f"{name} ({where.split(':')[0].rsplit('/', 1)[-1]})" if where else name

    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [key(f) for f in stack.split(";")]
        if frames[-1] in _WAITING:
            waiting += n
            continue
        total += n
        for f in set(frames):
            incl[f] += n
        own[frames[-1]] += n
    pct = {"inclusive": incl, "self": own}
    return {"samples": total, "waiting_samples": waiting, **{k: [(f, round(100 * c / max(total, 1), 1)) for f, c in v.most_common(top)]
                                 for k, v in pct.items()}}


def latency_curves(models: list[str], *, rates: list[float], clients: list[int], seconds: float = 20.0,
                   n_fit: int = 20000, channels: int = 4, handshakes: int = 0, profile: Path | None = None,
                   work: Path | None = None) -> list[dict[str, Any]]:
    """(c): per model, closed-loop clients (each back to back on its own channel) and open-loop Poisson arrivals
    at each rate, on the deployment of ``bench_scoring.deployed``; with ``profile``, py-spy samples both
    serving processes during the 16-client (else the last) closed-loop phase."""
    from simulations.bench_scoring import deployed

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        for model in models:
            with deployed(Path(work or tmp), model, n_fit=n_fit) as dep:
                pids = {p: proc.pid for p, proc in dep.procs.items()}
                args = (dep.guest_address, dep.client, dep.apps)
                asyncio.run(_score_load(*args, 16, 2.0))  # warm-up: caches, channels, the passive party's table
                spy_phase = 16 if 16 in clients else (clients[-1] if clients else None)
                for c in clients:
                    spies = []
                    if profile is not None and c == spy_phase:
                        profile.mkdir(parents=True, exist_ok=True)
                        spies = [s for s in (_pyspy(pid, seconds, profile / f"{model}-{p}.txt")
                                             for p, pid in pids.items()) if s is not None]
                        time.sleep(0.5)  # py-spy attaches
                    r = _measured(_score_load(*args, c, seconds), pids, dep.gc_logs)
                    for s in spies:
                        s.wait(60)
                    rows.append({"model": model, "load": f"closed {c}", **r})
                    print(json.dumps(rows[-1]), flush=True)
                for rate in rates:
                    r = _measured(_open_loop(*args, rate, seconds, channels=channels), pids, dep.gc_logs)
                    rows.append({"model": model, "load": f"open {rate:g}/s", **r})
                    print(json.dumps(rows[-1]), flush=True)
                if handshakes:
                    rows.append({"model": model, "load": "handshakes",
                                 **asyncio.run(_handshakes(*args, handshakes))})
                    print(json.dumps(rows[-1]), flush=True)
    if profile is not None:
        for raw in sorted(profile.glob("*.txt")):
            summ = profile_summary(raw)
            (raw.with_suffix(".json")).write_text(json.dumps(summ, indent=1))
            print(f"profile {raw.name}: {summ['samples']} samples; self: "
                  + ", ".join(f"{f} {p}%" for f, p in summ["self"][:8]), flush=True)
    return rows


def latency_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`latency_curves` as the table docs/deployment.md shows."""
    out = [f"{'model':<12} {'load':<13} {'p50 ms':>7} {'p99 ms':>7} {'p999 ms':>8} {'decisions/s':>11} "
           f"{'errors':>6}  {'CPU ms/decision guest/host/gen':<30} {'gc2 pauses, max ms':<18} load avg"]
    for r in rows:
        if r["load"] == "handshakes":
            out.append(f"{r['model']:<12} one Score call, p50/p99 ms: " + "; ".join(
                f"{k.replace('_', ' ')} {v['p50_ms']}/{v['p99_ms']}" for k, v in r.items() if isinstance(v, dict)))
            continue
        cpu = r["cpu_ms_per_decision"]
        gcp = r.get("gc_pauses", {})
        pauses = sum(v["n"] for v in gcp.values())
        longest = max((v["max_ms"] for v in gcp.values()), default=0.0)
        out.append(f"{r['model']:<12} {r['load']:<13} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['p999_ms']:>8.2f} "
                   f"{r['decisions_per_s']:>11.0f} {r['errors']:>6}  "
                   f"{cpu['guest']:.3f}/{cpu['host']:.3f}/{cpu['generator']:.3f}{'':<12} {pauses:>4}, {longest:>6.1f}"
                   f"{'':<7} {r['load_avg'][0]:.1f}-{r['load_avg'][1]:.1f}")
    return "\n".join(out)


# --------------------------------------------------------------------------- (b) relay


def _party_names(n: int) -> list[str]:
    return [f"p{i:02d}" for i in range(n)]


def _serve_relay(creds: str, parties: str) -> int:
    """Child: the relay with one session ``load`` of the given members; prints its port, runs until stdin closes."""
    from coordinator.relay import start_relay
    from crypto.certs import Identity

    members = frozenset(parties.split(","))
    h = start_relay(Identity.load(Path(creds) / "coord", "coord"), "127.0.0.1:0",
                    membership=lambda s: members if s == "load" else None)
    print(h.port, flush=True)
    sys.stdin.read()
    h.stop(grace=0)
    return 0


def _run_parties(creds: str, address: str, names: str, all_names: str, seconds: float, payload: int,
                 window: int) -> int:
    """Child: this process's share of the parties, one thread each; prints one JSON line of counts."""
    from crypto.certs import Identity
    from party.dataplane import RelayTransport

    everyone = all_names.split(",")
    half = len(everyone) // 2
    partner = {n: everyone[(i + half) % len(everyone)] for i, n in enumerate(everyone)}
    stats: Counter[str] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    body = os.urandom(payload)

    def party(name: str) -> None:
        initiator = everyone.index(name) < half
        peer = partner[name]
        sent = received = nbytes = 0
        try:
            with RelayTransport(Identity.load(Path(creds) / name, name), address, "load") as t:
                if initiator:
                    deadline = time.monotonic() + seconds
                    k = 0
                    while time.monotonic() < deadline:
                        for j in range(window):
                            t.send(peer, "ping", body[:-8] + (k + j).to_bytes(8, "little"))
                        for j in range(window):
                            back = t.recv(peer, "pong", timeout=60)
                            if back[-8:] != (k + j).to_bytes(8, "little") or len(back) != payload:
                                raise AssertionError(f"{name}: echo {k + j} from {peer} came back wrong")
                        sent += window
                        received += window
                        nbytes += 2 * window * payload
                        k += window
                    t.send(peer, "ping", b"")  # an empty ping: stop
                else:
                    while True:
                        ping = t.recv(peer, "ping", timeout=seconds + 120)
                        if not ping:
                            break
                        t.send(peer, "pong", ping)
                        sent += 1
                        received += 1  # bytes are counted once, at the initiator (both directions)
        except Exception as e:  # noqa: BLE001 - counted and reported: must be zero
            with lock:
                errors.append(f"{name}: {type(e).__name__}: {e}")
        with lock:
            stats["frames_sent"] += sent
            stats["frames_received"] += received
            stats["bytes"] += nbytes

    threads = [threading.Thread(target=party, args=(n,)) for n in names.split(",")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print(json.dumps({**stats, "errors": errors}), flush=True)
    return 0


def _child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "simulations.bench_load", *args], cwd=_ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(_ROOT)})


def relay_load(parties: int = 20, seconds: float = 60.0, *, client_procs: int = 4, payload: int = 16 * 1024,
               window: int = 8) -> dict[str, Any]:
    """(b): ``parties`` RelayTransport clients through one real relay for ``seconds``."""
    from crypto.certs import init_ca, issue

    if parties < 2 or parties % 2:
        raise ValueError("--parties must be an even number >= 2 (parties are paired)")
    names = _party_names(parties)
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        creds = Path(tmp)
        init_ca(creds / "ca", "bench")
        issue(creds / "ca", creds / "coord", "coord", role="coordinator")
        for n in names:
            issue(creds / "ca", creds / n, n)
        relay = _child("_relay", str(creds), ",".join(names))
        kids: list[subprocess.Popen[str]] = []
        try:
            assert relay.stdout is not None
            address = f"127.0.0.1:{int(relay.stdout.readline())}"
            shares = [names[i::client_procs] for i in range(client_procs)]
            with RssSampler({"relay": relay.pid}) as rss:
                t0 = time.perf_counter()
                kids = [_child("_parties", str(creds), address, ",".join(s), ",".join(names), str(seconds),
                               str(payload), str(window)) for s in shares if s]
                outs = [json.loads(k.communicate(timeout=seconds + 300)[0].strip().splitlines()[-1]) for k in kids]
                wall = time.perf_counter() - t0
        finally:
            for k in kids:
                if k.poll() is None:
                    k.kill()
            if relay.stdin:
                relay.stdin.close()
            relay.wait(30)
    frames = sum(o["frames_sent"] for o in outs)
    total_bytes = sum(o["bytes"] for o in outs)
    errors = [e for o in outs for e in o["errors"]]
    return {"parties": parties, "client_procs": client_procs, "payload_bytes": payload, "window": window,
            "seconds": round(wall, 2), "frames": frames, "frames_per_s": round(frames / wall, 1),
            "mb": round(total_bytes / 2**20, 1), "mb_per_s": round(total_bytes / 2**20 / wall, 2),
            "errors": len(errors), "error_list": errors[:10], "rss": rss.summary()}


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_relay":
        return _serve_relay(*argv[1:3])
    if argv and argv[0] == "_parties":
        c, a, n, alln, s, p, w = argv[1:8]
        return _run_parties(c, a, n, alln, float(s), int(p), int(w))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["scoring", "relay", "both", "latency"], default="both",
                    help="latency: (c), not part of 'both'")
    ap.add_argument("--clients", type=int, default=128)
    ap.add_argument("--parties", type=int, default=20)
    ap.add_argument("--client-procs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--model", default="secureboost", choices=["secureboost", "secureboost-hidden", "vertical-lr", "vertical-lr-shared"])
    ap.add_argument("--default-rate-limits", action="store_true",
                    help="keep the passive party's default [scoring.partial_rate] (the benchmark raises it)")
    ap.add_argument("--models", default="secureboost,vertical-lr,vertical-lr-shared",
                    help="(c): models to measure (vertical-lr: plaintext weights; vertical-lr-shared: the default's "
                         "shared weights, the passive answering ciphertexts)")
    ap.add_argument("--rates", default="200,500,1000", help="(c): open-loop arrival rates, decisions/s")
    ap.add_argument("--closed", default="1,16", help="(c): closed-loop client counts")
    ap.add_argument("--channels", type=int, default=4, help="(c): open-loop generator's mTLS channels")
    ap.add_argument("--handshakes", type=int, default=0, help="(c): also time N calls on new channels (TLS)")
    ap.add_argument("--profile", help="(c): py-spy both servers during the 16-client phase, raw stacks here")
    ap.add_argument("--out", help="write the results JSON here")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {}
    if args.part == "latency":
        print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
        rows = latency_curves(args.models.split(","), rates=[float(r) for r in args.rates.split(",") if r],
                              clients=[int(c) for c in args.closed.split(",") if c], seconds=args.seconds,
                              channels=args.channels, handshakes=args.handshakes,
                              profile=Path(args.profile) if args.profile else None)
        print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
        print(latency_table(rows), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=1))
        return 1 if sum(r.get("errors", 0) for r in rows) else 0
    if args.part in ("scoring", "both"):
        results["scoring"] = scoring_load(args.clients, args.seconds, model=args.model,
                                          raised_limits=not args.default_rate_limits)
        print(json.dumps({"scoring": results["scoring"]}, indent=1), flush=True)
    if args.part in ("relay", "both"):
        results["relay"] = relay_load(args.parties, args.seconds, client_procs=args.client_procs)
        print(json.dumps({"relay": results["relay"]}, indent=1), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    bad = sum(r["errors"] for r in results.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
