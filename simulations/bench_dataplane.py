"""Micro-benchmark of the data plane: party -> relay -> party over mutual TLS on loopback.

Why: vertical protocols make hundreds of exchanges per job, so per-message
latency decides whether they are usable.  This runs the relay, an echo party and
the measuring party as three separate processes (as in a deployment: no shared
GIL), with real certificates, real TLS and real sealed envelopes, and prints:

* round-trip latency (p50 / p99 / mean) of a 1 KB message alice -> bob -> alice
  (4 relay hops: 2 messages, each party -> relay -> party, each sealed + opened);
* one-way throughput of 1 MB messages (alice streams N, bob acks the last);
* round trip of a 2 MB payload (median of 10);
* baselines from the same run: the same 1 KB ping-pong over the in-process
  ``InMemoryHub`` (no network, no crypto) and the cost of seal + open alone.

``--flood N`` instead measures the relay process's memory (VmRSS, VmHWM) under the
issue-8 attack: a party certificate holder sends N 64 KB frames to made-up receivers,
then N more to a member of the session that never connects.  ``--relay-tree DIR``
runs the relay from another checkout (e.g. ``git archive`` of an older commit) for
the before/after figure.

Usage::

    python -m simulations.bench_dataplane [--rounds 2000] [--bulk 100]
    python -m simulations.bench_dataplane --flood 8000 [--relay-tree /tmp/old]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
_BIG_REPS = 10


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


_MEMBERS = frozenset({"alice", "bob", "carol"})


def _serve_relay(creds: Path) -> None:
    from coordinator.relay import start_relay
    from crypto.certs import Identity

    ident = Identity.load(creds / "coord", "coord")
    try:
        h = start_relay(ident, "127.0.0.1:0", membership=lambda s: _MEMBERS if s == "bench" else None)
    except TypeError:  # --relay-tree: a relay from before sessions had members
        h = start_relay(ident, "127.0.0.1:0")  # type: ignore[call-arg]
    print(h.port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    h.stop(grace=0)


def _serve_echo(creds: Path, address: str, rounds: int, bulk: int) -> None:
    from crypto.certs import Identity
    from party.dataplane import RelayTransport

    with RelayTransport(Identity.load(creds / "bob", "bob"), address, "bench") as t:
        print("ready", flush=True)
        for _ in range(rounds):
            t.send("alice", "pong", t.recv("alice", "ping"))
        for _ in range(bulk):
            t.recv("alice", "bulk")
        t.send("alice", "bulk-done", b"ok")
        for _ in range(_BIG_REPS):
            t.send("alice", "big-back", t.recv("alice", "big"))
        t.recv("alice", "stop")


def _spawn(*args: str, tree: Path | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(tree or _ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from simulations.bench_dataplane import main; sys.exit(main(sys.argv[1:]))",
         *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=tree or _ROOT, env=env,
    )


def _mem_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def flood(n: int, tree: Path | None = None) -> dict[str, Any]:
    """The issue-8 attack against a relay in its own process; returns its memory before/after and the replies."""
    import grpc

    from crypto.certs import init_ca, issue
    from crypto.tls import channel_credentials
    from fedcredit.dataplane import GRPC_OPTIONS
    from protos import dataplane_pb2 as pb
    from protos import dataplane_pb2_grpc as pb_grpc

    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        creds = Path(tmp)
        init_ca(creds / "ca", "bench")
        issue(creds / "ca", creds / "coord", "coord", role="coordinator")
        alice = issue(creds / "ca", creds / "alice", "alice")
        relay = _spawn("--serve-relay", str(creds), tree=tree)
        try:
            assert relay.stdout is not None
            address = f"127.0.0.1:{int(relay.stdout.readline())}"
            channel = grpc.secure_channel(address, channel_credentials(alice), options=list(GRPC_OPTIONS))
            import queue as _queue

            outq: _queue.Queue[pb.Frame | None] = _queue.Queue(maxsize=64)
            outq.put(pb.Frame(kind=pb.Frame.HELLO, session="bench"))
            call = pb_grpc.RelayStub(channel).Connect(iter(outq.get, None))
            replies: dict[str, int] = {}

            def read() -> None:
                try:
                    for f in call:
                        key = (re.sub(r"\d+", "N", f.error)[:90] if f.kind == pb.Frame.ERROR
                               else pb.Frame.Kind.Name(f.kind))
                        replies[key] = replies.get(key, 0) + 1
                except grpc.RpcError as exc:
                    replies[f"rpc ended: {exc.code().name}"] = 1

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            time.sleep(0.5)  # the relay settles after the first stream (thread pool, TLS)
            before = _mem_mb(relay.pid)
            payload = os.urandom(64 * 1024)
            t0 = time.perf_counter()
            for i in range(n):
                outq.put(pb.Frame(kind=pb.Frame.DATA, receiver=f"ghost-{i}", tag="t", seq=1, payload=payload))
            after_ghosts = _mem_mb(relay.pid)
            for i in range(n):
                outq.put(pb.Frame(kind=pb.Frame.DATA, receiver="carol", tag="t", seq=i + 1, payload=payload))
            time.sleep(1.0)  # let the relay drain the last frames off the wire before measuring
            after = _mem_mb(relay.pid)
            secs = time.perf_counter() - t0
            outq.put(None)
            call.cancel()
            reader.join(timeout=10)
            channel.close()
        finally:
            if relay.stdin:
                relay.stdin.close()
            try:
                relay.wait(timeout=10)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait()
    return {"frames": 2 * n, "sent_mb": 2 * n * 64 / 1024, "seconds": secs, "before": before,
            "after_ghosts": after_ghosts, "after": after, "replies": replies}


def _inmemory_baseline(rounds: int, payload: bytes) -> list[float]:
    from fedcredit.transport import InMemoryHub

    hub = InMemoryHub()
    a, b = hub.endpoint("alice"), hub.endpoint("bob")

    def echo() -> None:
        for _ in range(rounds):
            b.send("alice", "pong", b.recv("alice", "ping"))

    th = threading.Thread(target=echo)
    th.start()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a.send("bob", "ping", payload)
        a.recv("bob", "pong")
        out.append(time.perf_counter() - t0)
    th.join()
    return out


def _crypto_baseline(payload: bytes, reps: int = 500) -> float:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from crypto.envelope import open_sealed, seal

    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    t0 = time.perf_counter()
    for _ in range(reps):
        open_sealed(seal(payload, b.public_key(), a, b"aad"), b, a.public_key(), b"aad")
    return (time.perf_counter() - t0) / reps


def run(rounds: int, bulk: int) -> dict[str, float]:
    from crypto.certs import Identity, init_ca, issue
    from party.dataplane import RelayTransport

    with tempfile.TemporaryDirectory(prefix="bench-dataplane-") as tmp:
        creds = Path(tmp)
        init_ca(creds / "ca", "bench")
        issue(creds / "ca", creds / "coord", "coord", role="coordinator")
        for name in ("alice", "bob"):
            issue(creds / "ca", creds / name, name)
        relay = _spawn("--serve-relay", str(creds))
        echo: subprocess.Popen[bytes] | None = None
        try:
            assert relay.stdout is not None
            address = f"127.0.0.1:{int(relay.stdout.readline())}"
            echo = _spawn("--serve-echo", str(creds), address, str(rounds), str(bulk))
            assert echo.stdout is not None and echo.stdout.readline().strip() == b"ready"
            with RelayTransport(Identity.load(creds / "alice", "alice"), address, "bench") as t:
                small = os.urandom(1024)
                lat = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    t.send("bob", "ping", small)
                    if t.recv("bob", "pong") != small:
                        raise AssertionError("echo corrupted the 1 KB payload")
                    lat.append(time.perf_counter() - t0)
                lat = lat[min(50, rounds // 10):]  # drop warm-up (first directory lookups, TCP slow start)

                mb = os.urandom(1024 * 1024)
                t0 = time.perf_counter()
                for _ in range(bulk):
                    t.send("bob", "bulk", mb)
                t.recv("bob", "bulk-done")
                bulk_s = time.perf_counter() - t0

                big = os.urandom(2 * 1024 * 1024)
                big_rt = []
                for _ in range(_BIG_REPS):
                    t0 = time.perf_counter()
                    t.send("bob", "big", big)
                    if t.recv("bob", "big-back") != big:
                        raise AssertionError("echo corrupted the 2 MB payload")
                    big_rt.append(time.perf_counter() - t0)
                t.send("bob", "stop", b"")
            echo.wait(timeout=30)
        finally:
            for p in (echo, relay):
                if p is not None:
                    if p.stdin:
                        p.stdin.close()
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
    mem = _inmemory_baseline(rounds, small)
    return {
        "rt_1kb_p50_ms": _percentile(lat, 0.50) * 1e3,
        "rt_1kb_p99_ms": _percentile(lat, 0.99) * 1e3,
        "rt_1kb_mean_ms": statistics.fmean(lat) * 1e3,
        "bulk_1mb_mb_per_s": bulk / bulk_s,
        "rt_2mb_ms": statistics.median(big_rt) * 1e3,
        "rt_2mb_max_ms": max(big_rt) * 1e3,
        "inmemory_rt_1kb_p50_ms": _percentile(mem, 0.50) * 1e3,
        "inmemory_rt_1kb_p99_ms": _percentile(mem, 0.99) * 1e3,
        "seal_open_1kb_ms": _crypto_baseline(small) * 1e3,
        "seal_open_1mb_ms": _crypto_baseline(mb, reps=30) * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2000, help="1 KB round trips to time (default 2000)")
    ap.add_argument("--bulk", type=int, default=100, help="1 MB messages for the throughput figure (default 100)")
    ap.add_argument("--flood", type=int, metavar="N", help="measure relay memory under N + N frames of 64 KB (issue 8)")
    ap.add_argument("--relay-tree", type=Path, help="with --flood: run the relay from this source tree")
    ap.add_argument("--serve-relay", metavar="CREDS", help=argparse.SUPPRESS)
    ap.add_argument("--serve-echo", nargs=4, metavar="X", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_relay:
        _serve_relay(Path(args.serve_relay))
        return 0
    if args.serve_echo:
        creds, address, rounds, bulk = args.serve_echo
        _serve_echo(Path(creds), address, int(rounds), int(bulk))
        return 0
    if args.flood:
        f = flood(args.flood, args.relay_tree)
        b, g, a = f["before"], f["after_ghosts"], f["after"]
        print(f"relay under flood ({args.relay_tree or 'this tree'}): {f['frames']} frames of 64 KB "
              f"({f['sent_mb']:.0f} MB) in {f['seconds']:.1f} s")
        print(f"  relay RSS: {b['VmRSS']:.0f} MB before, {g['VmRSS']:.0f} MB after {args.flood} frames to made-up "
              f"receivers, {a['VmRSS']:.0f} MB after {args.flood} more to an absent member; peak {a['VmHWM']:.0f} MB")
        print(f"  replies: {f['replies']}")
        return 0
    r = run(args.rounds, args.bulk)
    print(f"data plane, loopback, 3 processes (relay, alice, bob), mutual TLS 1.3, sealed payloads; "
          f"{args.rounds} round trips, {args.bulk} x 1 MB")
    print(f"  1 KB round trip alice->relay->bob->relay->alice: p50 {r['rt_1kb_p50_ms']:.2f} ms  "
          f"p99 {r['rt_1kb_p99_ms']:.2f} ms  mean {r['rt_1kb_mean_ms']:.2f} ms")
    print(f"  1 MB one-way throughput: {r['bulk_1mb_mb_per_s']:.0f} MB/s")
    print(f"  2 MB payload round trip ({_BIG_REPS} reps): median {r['rt_2mb_ms']:.1f} ms  max {r['rt_2mb_max_ms']:.1f} ms")
    print("baselines (same run):")
    print(f"  in-process InMemoryHub 1 KB round trip (no network, no crypto): p50 {r['inmemory_rt_1kb_p50_ms']:.3f} ms  "
          f"p99 {r['inmemory_rt_1kb_p99_ms']:.3f} ms")
    print(f"  seal+open only: 1 KB {r['seal_open_1kb_ms']:.3f} ms, 1 MB {r['seal_open_1mb_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
