"""Benchmark: two-party X25519 PSI, 1,000,000 ids each, half overlapping — wall time and peak memory.

    python -m simulations.bench_psi [--n 1000000] [--workers N] [--batch-size 50000]

Both parties run in this one process (threads over the in-memory hub), each with
its own blinding helper processes, so the machine's cores are shared by both sides
(in a deployment each party has its own machine).  Peak memory is reported for
this process (both parties together) and for the largest helper process.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import threading
import time
from typing import Any

from fedcredit.protocols.psi import DEFAULT_BATCH, PsiResult, run_psi
from fedcredit.transport import InMemoryHub


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="ids per party")
    ap.add_argument("--workers", type=int, default=None, help="blinding helper processes per party (default: cores)")
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    args = ap.parse_args(argv)
    n = args.n
    rng = random.Random(0)
    a = [f"C{i:09d}" for i in range(n)]
    b = [f"C{i:09d}" for i in range(n // 2, n + n // 2)]
    rng.shuffle(a)
    rng.shuffle(b)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    hub = InMemoryHub(default_timeout=600)
    out: dict[str, PsiResult] = {}
    errors: dict[str, BaseException] = {}
    last = {"t": 0.0}

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last["t"] > 5 or done == total:
            last["t"] = now
            print(f"  [bank] {stage}: {done:,}/{total:,}  ({now - t0:.1f} s)", flush=True)

    def party(name: str, ids: list[str], cb: Any) -> None:
        try:
            out[name] = run_psi(hub.endpoint(name), ids, ["bank", "fintech"], leader="bank",
                                batch_size=args.batch_size, workers=args.workers, progress=cb)
        except BaseException as e:  # reported below
            errors[name] = e

    print(f"PSI: 2 parties x {n:,} ids ({n // 2:,} in common), batch {args.batch_size:,}", flush=True)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=party, args=("bank", a, progress)),
               threading.Thread(target=party, args=("fintech", b, None))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise next(iter(errors.values()))
    assert out["bank"].intersection_ids == out["fintech"].intersection_ids, "parties disagree on the order"
    assert out["bank"].size == n // 2, out["bank"].size
    peak_main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    sent = sum(hub.bytes_sent.values())
    summary = {
        "ids_per_party": n,
        "intersection": out["bank"].size,
        "wall_seconds": round(wall, 2),
        "blinds_per_second": round(4 * n / wall),
        "peak_rss_mb_process_both_parties": round(peak_main),
        "rss_mb_before_psi_ids_only": round(rss_before),
        "peak_rss_mb_largest_helper": round(peak_child),
        "bytes_exchanged": sent,
    }
    print(f"intersection {out['bank'].size:,} ids, same order at both parties")
    print(f"wall time {wall:.1f} s ({4 * n / wall:,.0f} X25519 blinds/s over both parties)")
    print(f"peak RSS: this process (both parties + their id lists) {peak_main:.0f} MB "
          f"(of which {rss_before:.0f} MB before PSI started), largest helper process {peak_child:.0f} MB")
    print(f"bytes exchanged: {sent / 1e6:.1f} MB")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
