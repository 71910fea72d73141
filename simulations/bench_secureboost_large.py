"""Benchmark: SecureBoost on a generated portfolio-sized table (issue 11: 1,000,000 rows x 30 features per party).

    python -m simulations.bench_secureboost_large --rows 1000000 --trees 10 --depth 5

Generates ``simulations.generator.generate_vertical_portfolio`` (label party: id, y, 30
features; passive party: id, 30 features), keeps 10 % of the rows as the test set, and trains
federated SecureBoost (per-level histogram mode by default) over the in-memory transport, next to
the pooled plaintext reference of the same algorithm.  Prints training time, bytes, the modelled
WAN time, and the peak resident memory of the process (both parties run in it, so this bounds
each party's peak from above).
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time

from fedcredit import compute
from fedcredit.metrics import auc_ks
from fedcredit.protocols import secureboost as sb
from simulations.bench_secureboost import traffic_lines
from simulations.generator import generate_vertical_portfolio
from simulations.inprocess import run_secureboost_inprocess


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _WorkerRss:
    """Peak resident memory of any one descendant process (the pool's workers: children of its forkserver, so
    ``RUSAGE_CHILDREN`` never sees them), sampled every second from /proc."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(1.0):
            parent: dict[int, int] = {}
            rss: dict[int, float] = {}
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    status = open(f"/proc/{d}/status").read()
                except OSError:
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                parent[int(d)] = int(fields.get("PPid", "0").strip() or 0)
                rss[int(d)] = float(fields.get("VmRSS", "0 kB").split()[0]) / 1024.0
            for pid, mb in rss.items():
                q, seen = parent.get(pid, 0), 0
                while q and q != me and seen < 20:
                    q, seen = parent.get(q, 0), seen + 1
                if q == me and pid != me:
                    self.peak_mb = max(self.peak_mb, mb)

    def stop(self) -> float:
        self._stop.set()
        self._t.join(5)
        return self.peak_mb


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=30)
    ap.add_argument("--trees", type=int, default=10)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--mode", choices=["hide_membership", "per_level"], default="per_level")
    ap.add_argument("--cache-mb", type=float, default=1024.0)
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes for the passive party's histogram passes (as [compute] workers)")
    ap.add_argument("--engine", choices=["processes", "ray"], default="processes")
    args = ap.parse_args(argv)
    if args.workers > 1:  # what a party daemon does from its [compute] section
        compute.configure(compute.WorkerPool(args.workers, args.engine))
    cfg = sb.SecureBoostConfig(n_trees=args.trees, max_depth=args.depth, histogram_mode=args.mode,
                               mask_cache_mb=args.cache_mb, timeout_s=7200)
    load0 = os.getloadavg()
    t = time.perf_counter()
    guest, host = generate_vertical_portfolio(args.rows, args.features, seed=0)
    print(f"generated {args.rows:,} rows x {args.features} features per party in {time.perf_counter() - t:.1f} s; "
          f"peak RSS so far {_rss_mb():.0f} MB")
    test_ids = set(guest["id"].iloc[-max(1, args.rows // 10):])
    is_test = guest["id"].isin(test_ids).to_numpy()
    gcols = [c for c in guest.columns if c not in ("id", "y")]
    hcols = [c for c in host.columns if c != "id"]
    t = time.perf_counter()
    ref, ref_p = sb.train_plaintext_reference(
        guest.loc[~is_test, gcols].to_numpy(), guest.loc[~is_test, "y"].to_numpy(),
        {"host": host.loc[~is_test, hcols].to_numpy()}, cfg)
    ref_s = time.perf_counter() - t
    Xt, Xht = guest.loc[is_test, gcols].to_numpy(), host.loc[is_test, hcols].to_numpy()
    ref_auc = auc_ks(guest.loc[is_test, "y"].to_numpy(),
                     sb.label_predict(ref, Xt, {"host": sb.passive_decisions(ref_p["host"], Xht)}))[0]
    print(f"pooled plaintext reference (same algorithm): test AUC {ref_auc:.4f}, {ref_s:.1f} s")

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "tree":
            print(f"  federated: tree {done}/{total}  ({time.perf_counter() - t0:.1f} s, peak RSS {_rss_mb():.0f} MB)",
                  flush=True)

    workers_rss = _WorkerRss()
    t0 = time.perf_counter()
    res = run_secureboost_inprocess(guest, {"host": host}, cfg, test_ids=test_ids, progress=progress)
    lab = res.label
    n_bytes = sum(res.bytes_sent.values())
    print(f"federated SecureBoost ({args.mode}): test AUC {lab.test_auc:.4f} (reference {ref_auc:.4f}), "
          f"training {lab.train_seconds:.1f} s, {n_bytes / 1e6:.1f} MB exchanged")
    for line in traffic_lines(lab.report, n_bytes, 1):
        print(line)
    print(f"federated timings (label): {lab.report['label_timings']}")
    print(f"federated timings (host):  {lab.report['passive']['host']['timings']}")
    print(f"peak RSS of the process (both parties + the reference): {_rss_mb():.0f} MB; largest worker process: "
          f"{workers_rss.stop():.0f} MB")
    load1 = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, passive histogram workers {args.workers}; load average at start "
          f"{load0[0]:.2f}, at end {load1[0]:.2f}")
    return {"ref_auc": ref_auc, "auc": lab.test_auc, "train_s": lab.train_seconds, "bytes": n_bytes,
            "rss_mb": _rss_mb(), "report": lab.report, "rows": args.rows}


if __name__ == "__main__":
    main()
