"""Benchmark: two-party X25519 PSI, half overlapping — wall time, peak memory, bytes, modelled WAN time.

    python -m simulations.bench_psi [--n 1000000] [--workers N] [--batch-size 50000]
    python -m simulations.bench_psi --n 10000000 --parquet DIR   # ids streamed from Parquet files in DIR
    python -m simulations.bench_psi --n 10000000 --parquet DIR --local-phases   # one party's local phases only

Both parties run in this one process (threads over the in-memory hub), each with
its own compute pool (``fedcredit.compute``, processes engine), so the machine's cores
are shared by both sides (in a deployment each party has its own machine).  Without
``--parquet`` the ids are Python lists in memory (as a Table holds them); with it each
party's ids are a Parquet file (``simulations.generator.write_id_table``, written once,
1M-row row groups) read as a stream (``fedcredit.data.read_ids_stream``).  Memory is
sampled from /proc every 0.2 s: peak RSS of this process (both parties), of the largest
worker, and of this process and ALL its descendants together (the pools' forkserver and
workers included).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from fedcredit.data import read_ids_stream
from fedcredit.protocols.psi import DEFAULT_BATCH, PsiResult, run_psi
from fedcredit.transport import InMemoryHub
from simulations.generator import write_id_table
from simulations.wan import wan_line


def _rss_kb(pid: int | str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (children, grandchildren: a pool's forkserver starts the workers)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


class MemorySampler(threading.Thread):
    """Peak RSS of this process, of its largest descendant, and of all of them together (sampled)."""

    def __init__(self, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.stop = threading.Event()
        self.peak_main = self.peak_child = self.peak_total = 0

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.is_set():
            main = _rss_kb(me)
            kids = [_rss_kb(c) for c in _children(me)]
            self.peak_main = max(self.peak_main, main)
            self.peak_child = max([self.peak_child, *kids])
            self.peak_total = max(self.peak_total, main + sum(kids))
            self.stop.wait(self.period)


def local_phases(path: Path, n_peer: int, batch_size: int) -> dict[str, Any]:
    """Memory of one party's local phases at full size, without the X25519 exchange between them.

    Runs the real code of run_psi's check pass (``_scan`` over the Parquet stream), its
    pairwise intersection (``_Lookup`` on the flat 16-byte arrays; doubly-blinded values are
    pseudorandom, so uniformly random 16-byte values stand in for them, half of them shared)
    and its id pass (``IdColumn.gather``).  Why: at 10M × 10M the exchange takes an hour on a
    loaded 2-core machine; these phases decide the peak beyond the flat arrays.
    """
    import numpy as np

    from fedcredit.data import IdColumn
    from fedcredit.protocols.psi import MATCH_LEN, _Lookup, _scan

    sampler = MemorySampler(period=0.05)
    sampler.start()
    out: dict[str, Any] = {"rss_mb_start": round(_rss_kb(os.getpid()) / 1024)}
    src = read_ids_stream(path, party="bank")
    n = len(src)
    t = time.perf_counter()
    _scan(src, batch_size, "bank", src.source, digest=True)
    out["scan_s"] = round(time.perf_counter() - t, 1)
    out["peak_rss_mb_after_scan"] = round(sampler.peak_main / 1024)
    rng = np.random.default_rng(0)
    od = np.frombuffer(rng.bytes(n * MATCH_LEN), dtype=f"S{MATCH_LEN}")  # own ids, doubly blinded
    pd_ = np.frombuffer(rng.bytes(n_peer * MATCH_LEN), dtype=f"S{MATCH_LEN}").copy()  # the peer's
    common = min(n, n_peer) // 2
    pd_[:common] = od[rng.choice(n, common, replace=False)]
    out["rss_mb_with_flat_arrays"] = round(_rss_kb(os.getpid()) / 1024)
    t = time.perf_counter()
    own = _Lookup(od, "bank", "own")
    mask = _Lookup(pd_, "bank", "peer").find(od) >= 0
    del pd_
    ordered = own.order[mask[own.order]]
    ids = IdColumn.gather(src.batches(), ordered)
    out["intersect_and_gather_s"] = round(time.perf_counter() - t, 1)
    assert len(ids) == common
    sampler.stop.set()
    sampler.join()
    out["peak_rss_mb"] = round(sampler.peak_main / 1024)
    out["ids"] = n
    out["intersection"] = common
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="ids per party")
    ap.add_argument("--workers", type=int, default=None, help="compute worker processes per party (default: compute.default_pool())")
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    ap.add_argument("--parquet", type=Path, default=None,
                    help="stream each party's ids from a Parquet file in this directory (generated if absent)")
    ap.add_argument("--local-phases", action="store_true",
                    help="with --parquet: only one party's local phases at full size (see local_phases)")
    args = ap.parse_args(argv)
    n = args.n
    a: Any
    b: Any
    if args.parquet is None:
        rng = random.Random(0)
        a = [f"C{i:09d}" for i in range(n)]
        b = [f"C{i:09d}" for i in range(n // 2, n + n // 2)]
        rng.shuffle(a)
        rng.shuffle(b)
    else:
        args.parquet.mkdir(parents=True, exist_ok=True)
        files = {p: args.parquet / f"{p}-{n}.parquet" for p in ("bank", "fintech")}
        for f, (start, seed) in zip(files.values(), ((0, 1), (n // 2, 2))):
            if not f.exists():
                tw = time.perf_counter()
                write_id_table(f, n, start=start, seed=seed)
                print(f"wrote {f} ({n:,} ids, {f.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - tw:.0f} s",
                      flush=True)
        if args.local_phases:
            res = local_phases(files["bank"], n, args.batch_size)
            print(json.dumps(res))
            return res
        a = read_ids_stream(files["bank"], party="bank")
        b = read_ids_stream(files["fintech"], party="fintech")
    rss_before = _rss_kb(os.getpid()) / 1024
    sampler = MemorySampler()
    sampler.start()

    hub = InMemoryHub(default_timeout=600)
    out: dict[str, PsiResult] = {}
    errors: dict[str, BaseException] = {}
    last = {"t": 0.0}

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last["t"] > 5 or done == total:
            last["t"] = now
            print(f"  [bank] {stage}: {done:,}/{total:,}  ({now - t0:.1f} s)", flush=True)

    def party(name: str, ids: Any, cb: Any) -> None:
        try:
            out[name] = run_psi(hub.endpoint(name), ids, ["bank", "fintech"], leader="bank",
                                batch_size=args.batch_size, workers=args.workers, progress=cb)
        except BaseException as e:  # reported below
            errors[name] = e

    mode = "streamed from Parquet" if args.parquet is not None else "Python lists in memory"
    print(f"PSI: 2 parties x {n:,} ids ({n // 2:,} in common; {mode}), batch {args.batch_size:,}", flush=True)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=party, args=("bank", a, progress)),
               threading.Thread(target=party, args=("fintech", b, None))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    if errors:
        raise next(iter(errors.values()))
    assert out["bank"].intersection_ids == out["fintech"].intersection_ids, "parties disagree on the order"
    rounds = -(-n // args.batch_size)
    round_trips = 1 + rounds + 1  # hello, one exchange per batch round, the leader's final set
    assert out["bank"].size == n // 2, out["bank"].size
    peak_main, peak_child, peak_total = (x / 1024 for x in (sampler.peak_main, sampler.peak_child, sampler.peak_total))
    sent = sum(hub.bytes_sent.values())
    summary = {
        "ids_per_party": n,
        "intersection": out["bank"].size,
        "wall_seconds": round(wall, 2),
        "blinds_per_second": round(4 * n / wall),
        "peak_rss_mb_process_both_parties": round(peak_main),
        "rss_mb_before_psi_ids_only": round(rss_before),
        "peak_rss_mb_largest_worker": round(peak_child),
        "peak_rss_mb_total": round(peak_total),
        "bytes_exchanged": sent,
        "round_trips": round_trips,
        "ids": mode,
        "load_average_1min_at_end": os.getloadavg()[0],
    }
    print(f"intersection {out['bank'].size:,} ids, same order at both parties")
    print(f"wall time {wall:.1f} s ({4 * n / wall:,.0f} X25519 blinds/s over both parties)")
    print(f"peak RSS: this process (both parties + their id lists) {peak_main:.0f} MB "
          f"(of which {rss_before:.0f} MB before PSI started: the two id lists, or the libraries and file "
          f"metadata when streamed), "
          f"largest worker process {peak_child:.0f} MB, everything together {peak_total:.0f} MB")
    print(f"bytes exchanged: {sent / 1e6:.1f} MB")
    print(wan_line(wall, sent, round_trips))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
