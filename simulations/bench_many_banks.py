"""Benchmark: encrypted horizontal LR with 3 / 50 / 100 banks on Flower's simulation engine (Ray backend).

The UCI benchmark rows (the three ``default_credit_homo_*`` training files, 24,000 rows) are
pooled and re-split IID across n banks (``simulations.partition``); each bank holds its slice
of the 6,000-row test file, so the global AUC covers it once.  Per n, from ONE run each, in a
fresh process (so memory figures do not carry over between n):

* encrypted FedAvg + Newton rounds (the deployment's ``fedcredit.protocols.horizontal`` roles:
  ServerApp + one ClientApp per bank, :mod:`simulations.flower_sim`): round time, coordinator
  (driver process: ServerApp + Flower's in-memory SuperLink) peak RSS, the Ray ClientApp
  actors' RSS, bytes per bank per round, the key holder's setup reply, test AUC;
* plaintext FedAvg of the same model on the same partition (``bench_horizontal.plaintext_fedavg``);
* the pooled-plaintext baseline (sklearn LR at the federation's objective, all 24,000 rows).

    python -m simulations.bench_many_banks --banks 3,50,100 --out bench-out/many-banks
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedcredit import metrics
from fedcredit.data import load_table
from fedcredit.models import load_model
from fedcredit.protocols.horizontal import HorizontalJob, Method
from simulations.bench_horizontal import plaintext_fedavg, sklearn_pooled
from simulations.flower_sim import run_flower_simulation
from simulations.horizontal_sim import _split_test
from simulations.partition import partition
from simulations.wan import wan_seconds

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FILES = [f"default_credit_homo_{p}.csv" for p in ("guest", "host_1", "host_2")]
TEST = "default_credit_homo_test.csv"


def bank_names(n: int) -> list[str]:
    return [f"bank{i:03d}" for i in range(1, n + 1)]


def write_banks(data_dir: Path, n: int, out: Path, seed: int = 0, rows: int | None = None
                ) -> tuple[dict[str, Path], dict[str, Path]]:
    """The pooled training rows (the first ``rows`` of them, default all) split IID over n banks, and the test
    file split the way horizontal_sim splits it (each bank its own test customers)."""
    out.mkdir(parents=True, exist_ok=True)
    pooled = pd.concat([pd.read_csv(data_dir / f, dtype={"id": str}) for f in FILES], ignore_index=True)
    if rows is not None:
        pooled = pooled.iloc[:rows]
    names = bank_names(n)
    train = {}
    for name, part in zip(names, partition(pooled, n, mode="iid", seed=seed)):
        train[name] = out / f"train_{name}.csv"
        part.to_csv(train[name], index=False)
    return train, _split_test(data_dir / TEST, names, out, seed)


def one(n: int, data_dir: Path, out: Path, cpus: int, object_store_mb: int) -> dict[str, Any]:
    """All figures for n banks (run in its own process by :func:`main`)."""
    run = out / f"banks-{n}"
    train, tests = write_banks(data_dir, n, run / "data")
    job = HorizontalJob(run_id=f"many-{n}", parties=bank_names(n))
    load0 = os.getloadavg()
    sim = run_flower_simulation(train, tests, job, run, cpus=cpus, object_store_mb=object_store_mb)
    res = sim.result
    test = load_table(data_dir / TEST, party="test", label_col="y")
    flats = {p: load_model(run / "banks" / p / "models" / job.run_id / "global_model.json") for p in res.parties}
    ref = next(iter(flats.values()))
    identical = all(np.allclose(m.model.get_flat(), ref.model.get_flat(), atol=1e-9) for m in flats.values())
    p_hat = ref.predict_proba(test.X)
    assert test.y is not None
    plain = plaintext_fedavg(train, test, job)
    bpr = res.bytes_per_round()
    fit_s = [h["seconds"] for h in res.history]
    setup = res.traffic[Method.SETUP]
    return {
        "banks": n,
        "rows_per_bank": int(np.mean([len(pd.read_csv(f)) for f in train.values()])),
        "load_avg_before": load0,
        "load_avg_after": os.getloadavg(),
        "dropped": res.dropped,
        "models_identical": identical,
        "encrypted": {
            "auc": metrics.auc(test.y, p_hat), "ks": metrics.ks(test.y, p_hat),
            "global_from_encrypted_histograms": res.global_metrics,
            "wall_s": sim.wall_s, "coordinator_cpu_s": sim.coordinator_cpu_s, "timings": res.timings,
            "fedavg_round_s": float(np.mean(fit_s[: job.rounds])),
            "newton_round_s": float(np.mean(fit_s[job.rounds:])) if job.newton else None,
            "round_s": fit_s,
            "bytes_per_bank_per_round": {k: float(np.mean([v[k] for v in bpr.values()])) for k in ("to_party", "from_party")},
            "holder_setup_reply_bytes": setup[job.holder]["from_party"],
            "other_setup_reply_bytes": float(np.mean([v["from_party"] for p, v in setup.items() if p != job.holder]))
            if n > 1 else None,
            "public_context_bytes": res.public_context_bytes,
            "memory": sim.memory,
            "flat": ref.model.get_flat().tolist(),
        },
        "plaintext_fedavg": {"auc": plain["auc"], "ks": plain["ks"], "flat": plain["flat"],
                             "bytes_per_bank_per_round": {k: float(np.mean([v[k] for v in plain["bytes_per_round"].values()]))
                                                          for k in ("to_party", "from_party")}},
        "hops": len(res.traffic) + job.total_rounds - 1,
        "total_rounds": job.total_rounds,
    }


def _mb(b: float) -> str:
    return f"{b / 2**20:.0f} MiB"


def _kb(b: float) -> str:
    return f"{b / 1024:.1f} KB"


def print_table(runs: list[dict[str, Any]], pooled: dict[str, Any]) -> None:
    print(f"pooled plaintext, sklearn LR at the federation's objective ({pooled['rows']} rows): "
          f"AUC {pooled['auc']:.4f}  KS {pooled['ks']:.4f}")
    hdr = (f"{'banks':>5} {'rows/bank':>9} {'FedAvg round s':>14} {'Newton round s':>14} {'run s':>7} "
           f"{'coord RSS peak':>14} {'(+ over start)':>14} {'ray:: RSS':>10} {'up/bank/round':>13} "
           f"{'down/bank/round':>15} {'holder setup':>12} {'AUC enc':>8} {'AUC plain FedAvg':>16} {'max|dw|':>8}  load")
    print(hdr)
    print("-" * len(hdr))
    for r in runs:
        e, m = r["encrypted"], r["encrypted"]["memory"]
        dw = float(np.max(np.abs(np.asarray(e["flat"]) - np.asarray(r["plaintext_fedavg"]["flat"]))))
        print(f"{r['banks']:>5} {r['rows_per_bank']:>9} {e['fedavg_round_s']:>14.2f} {e['newton_round_s']:>14.2f} "
              f"{e['wall_s']:>7.1f} {_mb(m['driver_peak_rss']):>14} {_mb(m['driver_peak_rss'] - m['driver_base_rss']):>14} "
              f"{_mb(m['workers_peak_rss']):>10} {_kb(e['bytes_per_bank_per_round']['from_party']):>13} "
              f"{_kb(e['bytes_per_bank_per_round']['to_party']):>15} {_mb(e['holder_setup_reply_bytes']):>12} "
              f"{e['auc']:>8.4f} {r['plaintext_fedavg']['auc']:>16.4f} {dw:>8.1e}  "
              f"{r['load_avg_before'][0]:.1f}->{r['load_avg_after'][0]:.1f}")
    for r in runs:
        e = r["encrypted"]
        per_round = r["banks"] * (e["bytes_per_bank_per_round"]["from_party"] + e["bytes_per_bank_per_round"]["to_party"])
        print(f"  {r['banks']:>3} banks: coordinator link carries {per_round / 1e6:.1f} MB per round; modelled over "
              f"100 Mbit/s + 20 ms RTT: +{wan_seconds(per_round, 1):.2f} s per round at the coordinator, "
              f"+{wan_seconds(per_round / r['banks'], 1):.2f} s at a bank; models identical at every bank: "
              f"{r['models_identical']}; dropped: {r['dropped'] or 'none'}; global AUC from encrypted histograms "
              f"{e['global_from_encrypted_histograms']['auc']:.4f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--banks", default="3,50,100", help="comma-separated bank counts")
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("bench-out/many-banks"))
    ap.add_argument("--cpus", type=int, default=2, help="Ray CPUs = ClientApp actors (one CPU each)")
    ap.add_argument("--object-store-mb", type=int, default=1024, help="Ray object store bound")
    ap.add_argument("--table-only", action="store_true",
                    help="print the table from the banks-N.json files already in --out (runs nothing federated)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one n in this process
    a = ap.parse_args(argv)
    for f in [*FILES, TEST]:
        if not (a.data_dir / f).exists():
            raise SystemExit(f"missing data file {a.data_dir / f} (expected the shared credit data beside the project)")
    a.out.mkdir(parents=True, exist_ok=True)
    if a.one is not None:
        r = one(a.one, a.data_dir, a.out, a.cpus, a.object_store_mb)
        (a.out / f"banks-{a.one}.json").write_text(json.dumps(r, indent=1, default=float))
        return 0
    t0 = time.perf_counter()
    test = load_table(a.data_dir / TEST, party="test", label_col="y")
    tables = {f: load_table(a.data_dir / f, party=f, label_col="y") for f in FILES}
    pooled = sklearn_pooled(tables, test, l2=HorizontalJob(run_id="x", parties=["a"]).l2)
    runs = []
    for n in [int(x) for x in a.banks.split(",") if x]:
        if a.table_only:
            runs.append(json.loads((a.out / f"banks-{n}.json").read_text()))
            continue
        cmd = [sys.executable, "-m", "simulations.bench_many_banks", "--one", str(n), "--data-dir", str(a.data_dir),
               "--out", str(a.out), "--cpus", str(a.cpus), "--object-store-mb", str(a.object_store_mb)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
            raise SystemExit(f"{n} banks: the simulation failed (exit {proc.returncode})")
        runs.append(json.loads((a.out / f"banks-{n}.json").read_text()))
        print(f"{n} banks done ({time.perf_counter() - t0:.0f} s so far)", file=sys.stderr)
    print_table(runs, pooled)
    (a.out / "results.json").write_text(json.dumps({"pooled": pooled, "runs": runs,
                                                    "total_s": time.perf_counter() - t0}, indent=1, default=float))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; results in {a.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
