"""Benchmark: a party's HE work on 1 vs N worker processes (fedcredit.compute), back to back (docs/scale.md "Cores").

    python -m simulations.bench_cores [--workers 1,2] [--data ../shared/data] [--skip-job]

Measured for each worker count, one after the other so the machine's load is the same:

* ``encrypt`` — vertical LR's residual encryption (``crypto.ckks.encrypt_chunks``): 60 chunks of 4,096 values;
* ``products`` — vertical LR's passive gradient (``crypto.ckks.masked_column_products``): 6 residual chunks
  (24,000 rows) x 10 columns, 3 times;
* ``histogram`` — one SecureBoost histogram pass (``crypto.ckks_hist_pool.PooledHistogramEvaluator``): 24,000
  rows x 10 features, 32 bins, pack 8 (310 candidates, 39 output ciphertexts), 2 nodes;
* ``job`` — the whole vertical LR job on the benchmark split (PSI, training, scoring; label and passive party
  both on the pool), training time.

Session start-up (booting workers, loading the context, pre-encoding masks) is reported apart from the
steady-state time: a party boots once per job.  Kernel figures are repeated ``--repeat`` times, the worker
counts interleaved, and the fastest run of each is compared (the least disturbed by other load on a shared
machine); the range of the 1-minute load average is printed beside each figure.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from crypto import ckks, ckks_hist
from crypto.ckks_hist_pool import PooledHistogramEvaluator
from fedcredit.compute import Session, WorkerPool

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _load() -> str:
    a, b, c = os.getloadavg()
    return f"load {a:.2f} {b:.2f} {c:.2f}"


def bench_encrypt(pool: WorkerPool) -> tuple[float, float]:
    ctx = ckks.new_context(8192, (60, 40, 40, 60), 40)
    vals = np.random.default_rng(0).normal(size=60 * 4096)
    t0 = time.perf_counter()
    with _session(pool, ctx) as s:
        boot = time.perf_counter() - t0
        t1 = time.perf_counter()
        cts = ckks.encrypt_chunks(ctx, vals, 4096, workers=s)
        run = time.perf_counter() - t1
    assert len(cts) == 60
    return boot, run


def bench_products(pool: WorkerPool) -> tuple[float, float]:
    ctx = ckks.new_context(8192, (60, 40, 40, 60), 40)
    rng = np.random.default_rng(1)
    L = 4000
    chunks = ckks.encrypt_chunks(ctx, rng.normal(size=6 * L), L)
    X = rng.normal(size=(6 * L, 10))
    masks = rng.normal(size=(10, L))
    t0 = time.perf_counter()
    with _session(pool, ctx) as s:
        boot = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(3):
            out = ckks.masked_column_products(ctx, chunks, X, masks, what="bench", workers=s)
        run = time.perf_counter() - t1
    assert len(out) == 10
    return boot, run


def bench_histogram(pool: WorkerPool) -> tuple[float, float]:
    rng = np.random.default_rng(2)
    n, f, bins, pack = 24_000, 10, 32, 8
    Xb = rng.integers(0, bins, (n, f)).astype(np.uint8)
    cand_f, cand_b = np.repeat(np.arange(f), bins - 1), np.tile(np.arange(bins - 1), f)
    keeper = ckks_hist.HistogramKeeper()
    pub = ckks.load_public(keeper.public_bytes)
    g, h = rng.uniform(-1, 1, n), rng.uniform(0, 0.25, n)
    nodes = [keeper.encrypt_rows(np.where(rng.random(n) < p, g + 1j * h, 0)) for p in (0.5, 0.3)]
    t0 = time.perf_counter()
    ev: Any = PooledHistogramEvaluator(pub, Xb, cand_f, cand_b, pack, 1024, pool=pool) if pool.parallel else \
        ckks_hist.HistogramEvaluator(pub, Xb, cand_f, cand_b, pack, 1024)
    boot = time.perf_counter() - t0
    t1 = time.perf_counter()
    outs = ev.histograms(nodes) if pool.parallel else [ev.histogram(b) for b in nodes]
    run = time.perf_counter() - t1
    G, _ = keeper.decrypt_candidates(outs[0], len(cand_f), pack, "bench")
    assert np.isfinite(G).all()
    ev.close()
    keeper.close()
    return boot, run


def bench_job(pool: WorkerPool, data: Path) -> tuple[float, float, dict[str, float]]:
    from fedcredit.data import load_table
    from fedcredit.protocols.vertical_lr import VerticalLRConfig
    from simulations.inprocess import run_vertical_lr_inprocess

    test_ids = set(load_table(data / "default_credit_homo_test.csv", party="guest", feature_cols=[]).ids)
    guest = load_table(data / "default_credit_hetero_guest.csv", party="guest", label_col="y")
    host = load_table(data / "default_credit_hetero_host.csv", party="host")
    res = run_vertical_lr_inprocess(guest, {"host": host}, VerticalLRConfig(), test_ids=test_ids, pool=pool)
    parts = {f"label {k}": v for k, v in res.label.timings.items()}
    parts.update({f"passive {k}": v for k, v in res.passives["host"].timings.items()})
    return res.psi_seconds, res.train_seconds, parts


def critical_path(k: int) -> dict[str, tuple[float, float]]:
    """Load-robust view of a k-way split: each kernel in this process whole, then each worker's share of it
    run one after the other, plus pickling its item and result (what a pipe carries).  The ratio whole /
    (largest share + its pickling) is the speed-up k idle cores would give; both sides see the same load."""
    import pickle

    from crypto.ckks import _encrypt_part, _parts, _products_part

    def _roundtrip(item: Any, res: Any) -> None:  # what the pipe to and from a worker costs in CPU
        pickle.loads(pickle.dumps(item))
        pickle.loads(pickle.dumps(res))

    def timed(fn: Any, *a: Any) -> tuple[float, Any]:
        t = time.perf_counter()
        r = fn(*a)
        return time.perf_counter() - t, r

    class _K:
        workers = k

    out: dict[str, tuple[float, float]] = {}
    ctx = ckks.new_context(8192, (60, 40, 40, 60), 40)
    pub = ckks.load_public(ckks.public_bytes(ctx))
    rng = np.random.default_rng(3)
    vals = rng.normal(size=60 * 4096)
    whole, _ = timed(_encrypt_part, pub, (vals, 4096))
    shares = []
    for lo, hi in _parts(60, _K()):  # type: ignore[arg-type]
        item = (vals[lo * 4096 : hi * 4096], 4096)
        dt, res = timed(_encrypt_part, pub, item)
        pk, _ = timed(_roundtrip, item, res)
        shares.append(dt + pk)
    out["encrypt"] = (whole, max(shares))
    L = 4000
    chunks = ckks.encrypt_chunks(ctx, rng.normal(size=6 * L), L)
    X, masks = rng.normal(size=(6 * L, 10)), rng.normal(size=(10, L))
    whole, _ = timed(_products_part, pub, (chunks, X, masks, "bench"))
    shares = []
    for lo, hi in _parts(10, _K()):  # type: ignore[arg-type]
        pitem = (chunks, np.ascontiguousarray(X[:, lo:hi]), masks[lo:hi], "bench")
        dt, res = timed(_products_part, pub, pitem)
        pk, _ = timed(_roundtrip, pitem, res)
        shares.append(dt + pk)
    out["products"] = (whole, max(shares))
    n, f, bins, pack = 24_000, 10, 32, 8
    Xb = rng.integers(0, bins, (n, f)).astype(np.uint8)
    cand_f, cand_b = np.repeat(np.arange(f), bins - 1), np.tile(np.arange(bins - 1), f)
    keeper = ckks_hist.HistogramKeeper()
    hpub = ckks.load_public(keeper.public_bytes)
    blobs = keeper.encrypt_rows(rng.uniform(-1, 1, n) + 0j)
    from crypto.ckks_hist_pool import shard_groups

    def one_pass(lo: int, hi: int) -> float:
        feats = np.unique(cand_f[lo:hi])
        ev = ckks_hist.HistogramEvaluator(hpub, Xb[:, feats], np.searchsorted(feats, cand_f[lo:hi]), cand_b[lo:hi],
                                          pack, 1024)
        ev.histogram(blobs)  # warm
        dt, res = timed(ev.histogram, blobs)
        pk, _ = timed(_roundtrip, blobs, res)
        ev.close()
        return dt + (pk if hi - lo < len(cand_f) else 0.0)

    whole = one_pass(0, len(cand_f))
    out["histogram"] = (whole, max(one_pass(lo, hi) for lo, hi in shard_groups(len(cand_f), pack, k)))
    keeper.close()
    return out


def _noop(_state: object, x: int) -> int:
    return x


@contextmanager
def _session(pool: WorkerPool, ctx: ckks.SecretContext) -> Iterator[Session[ckks.PublicContext] | None]:
    """Workers holding the public context, booted and warm (None: inline) -- start-up is timed apart."""
    if not pool.parallel:
        yield None
        return
    with pool.session(ckks.load_public, ckks.public_bytes(ctx), what="bench") as s:
        list(s.map(_noop, range(2 * pool.workers)))  # every worker up before the clock starts
        yield s


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--engine", default="processes", choices=["processes", "ray"])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--skip-job", action="store_true")
    ap.add_argument("--critical-path", type=lambda v: [int(x) for x in v.split(",") if x], default=[2, 16],
                    help="also split each kernel k ways in this process (load-robust): e.g. 2,16")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repetitions of each kernel figure (fastest kept)")
    args = ap.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]
    out: dict[str, Any] = {}
    print(f"cores on this machine: {os.cpu_count()}; engine {args.engine}")
    for name, fn in (("encrypt", bench_encrypt), ("products", bench_products), ("histogram", bench_histogram)):
        runs: dict[int, list[float]] = {w: [] for w in counts}
        boots: dict[int, list[float]] = {w: [] for w in counts}
        loads = []
        for _ in range(args.repeat):  # interleaved 1, 2, 1, 2 ...: both see the same load; the fastest run of each
            for w in counts:
                pool = WorkerPool(w, args.engine if w > 1 else "inline")
                boot, run = fn(pool)
                pool.close()
                runs[w].append(run)
                boots[w].append(boot)
                loads.append(os.getloadavg()[0])
        base = min(runs[counts[0]])
        for w in counts:
            run = min(runs[w])
            out[f"{name}/{w}"] = {"boot_s": min(boots[w]), "run_s": run, "runs": runs[w]}
            print(f"{name:10s} workers={w}: {run:7.3f} s (x{base / run:.2f}), start-up {min(boots[w]):6.3f} s; "
                  f"runs {', '.join(f'{r:.2f}' for r in runs[w])}  [load {min(loads):.1f}-{max(loads):.1f}]",
                  flush=True)
    for k in args.critical_path:
        for name, (whole, share) in critical_path(k).items():
            out[f"critical_path/{name}/{k}"] = {"whole_s": whole, "largest_share_s": share}
            print(f"{name:10s} split {k:2d} ways, in this process: whole {whole:6.3f} s, largest share + pickling "
                  f"{share:6.3f} s -> x{whole / share:.2f} on {k} idle cores  [{_load()}]", flush=True)
    if not args.skip_job:
        job_base: float | None = None
        for w in counts:
            pool = WorkerPool(w, args.engine if w > 1 else "inline")
            psi, train, parts = bench_job(pool, args.data)
            job_base = job_base or train
            out[f"job/{w}"] = {"psi_s": psi, "train_s": train, **parts}
            print(f"{'vlr job':10s} workers={w}: training {train:7.2f} s (x{job_base / train:.2f}), PSI {psi:.2f} s  "
                  f"[{_load()}]", flush=True)
            print(" " * 11 + "of the training: " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()), flush=True)
            pool.close()
    return out


if __name__ == "__main__":
    main()
