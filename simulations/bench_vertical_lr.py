"""Benchmark: vertical logistic regression on the real credit data, beside its plaintext baselines (one run).

    python -m simulations.bench_vertical_lr [--data ../shared/data] [--out /tmp/fedcredit_bench_vlr]

guest = default_credit_hetero_guest.csv (label party: id, y, 13 features),
host  = default_credit_hetero_host.csv  (passive party: id, 10 features);
test set = the ids of default_credit_homo_test.csv (6,000), train = the other 24,000.
PSI runs first (over the in-memory hub, X25519), then training, then joint scoring.
Printed side by side: pooled plaintext LR (scikit-learn, same L2), label-party-only LR,
federated vertical LR — test AUC, KS, wall time, bytes exchanged.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from fedcredit.data import load_table, split_by_ids
from fedcredit.metrics import auc_ks
from fedcredit.protocols.vertical_common import Standardizer
from fedcredit.protocols.vertical_lr import VerticalLRConfig
from fedcredit.transport import WireRecord
from simulations.inprocess import run_vertical_lr_inprocess

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _sklearn_lr(Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, yte: np.ndarray, l2: float) -> tuple[float, float, float]:
    """Same objective as the federated model: mean log-loss + l2/2 |w|^2  <=>  C = 1 / (l2 · n)."""
    t = time.perf_counter()
    m = LogisticRegression(C=1.0 / (l2 * len(ytr)), max_iter=5000).fit(Xtr, ytr)
    secs = time.perf_counter() - t
    auc, ks = auc_ks(yte, m.decision_function(Xte))
    return auc, ks, secs


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=Path("/tmp/fedcredit_bench_vlr"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = VerticalLRConfig(seed=args.seed)

    guest = load_table(args.data / "default_credit_hetero_guest.csv", party="guest", label_col="y")
    host = load_table(args.data / "default_credit_hetero_host.csv", party="host")
    test_ids = set(load_table(args.data / "default_credit_homo_test.csv", party="guest", feature_cols=[]).ids)

    # ---- plaintext baselines (what pooling the raw data would give; the label party alone)
    h_al = host.align(guest.ids)
    gtr, gte = split_by_ids(guest, test_ids)
    htr, hte = split_by_ids(h_al, test_ids)
    sg, sh = Standardizer.fit(gtr.X), Standardizer.fit(htr.X)
    Xtr = np.hstack([sg.transform(gtr.X), sh.transform(htr.X)])
    Xte = np.hstack([sg.transform(gte.X), sh.transform(hte.X)])
    assert gtr.y is not None and gte.y is not None  # the guest file has the label column
    pooled = _sklearn_lr(Xtr, gtr.y, Xte, gte.y, cfg.l2)
    label_only = _sklearn_lr(Xtr[:, : guest.n_features], gtr.y, Xte[:, : guest.n_features], gte.y, cfg.l2)
    host_raw_bytes = (args.data / "default_credit_hetero_host.csv").stat().st_size

    # ---- federated: PSI, then training, then joint scoring of the test ids
    by_phase = {"psi": 0, "train": 0, "score": 0}

    def observe(r: WireRecord) -> None:
        phase = "psi" if r.tag.startswith("psi/") else "score" if "/score/" in r.tag else "train"
        by_phase[phase] += r.size

    def progress(msg: str, done: int, total: int) -> None:
        print(f"  [label party] {msg}", flush=True)

    print(f"PSI + vertical LR over the in-memory hub: guest {len(guest):,} rows x {guest.n_features}, "
          f"host {len(host):,} rows x {host.n_features}, test ids {len(test_ids):,}", flush=True)
    res = run_vertical_lr_inprocess(
        guest, {"host": host}, cfg, test_ids=test_ids, out_dir=args.out, progress=progress, observers=[observe]
    )
    fed = res.label.test_metrics or {}
    rows = [
        ("pooled plaintext LR (sklearn)", pooled[0], pooled[1], pooled[2], f"({host_raw_bytes / 1e6:.1f} MB raw rows pooled)"),
        ("label party only LR (sklearn)", label_only[0], label_only[1], label_only[2], "0"),
        ("federated vertical LR (CKKS)", fed.get("auc", float("nan")), fed.get("ks", float("nan")), res.train_seconds,
         f"{(by_phase['train'] + by_phase['score']) / 1e6:.1f} MB (+ PSI {by_phase['psi'] / 1e6:.1f} MB)"),
    ]
    print()
    print(f"{'model':34s} {'test AUC':>9s} {'KS':>7s} {'train s':>8s}  bytes exchanged")
    for name, auc, ks, secs, b in rows:
        print(f"{name:34s} {auc:9.4f} {ks:7.4f} {secs:8.2f}  {b}")
    lab, pas = res.label, res.passives["host"]
    print()
    print(f"PSI: {res.intersection_size:,} common ids in {res.psi_seconds:.2f} s")
    print(f"training: {lab.epochs_run} epochs ({lab.steps} steps), best epoch {lab.best_epoch}; "
          f"label party: {lab.counters['encryptions']} encryptions, {lab.counters['decryptions']} decryptions; "
          f"passive: {pas.counters['plain_multiplications']} ct x plaintext multiplications, "
          f"{lab.counters['rotations'] + pas.counters['rotations']} rotations")
    print("time at label party: " + ", ".join(f"{k} {v:.2f} s" for k, v in lab.timings.items())
          + " | passive: " + ", ".join(f"{k} {v:.2f} s" for k, v in pas.timings.items()))
    print(f"whole run (PSI + training + scoring): {res.wall_seconds:.2f} s; report and ROC/KS plot in {args.out}")
    summary = {
        "pooled_sklearn": {"auc": pooled[0], "ks": pooled[1], "train_seconds": pooled[2]},
        "label_only_sklearn": {"auc": label_only[0], "ks": label_only[1], "train_seconds": label_only[2]},
        "federated": {
            "auc": fed.get("auc"),
            "ks": fed.get("ks"),
            "train_seconds": res.train_seconds,
            "psi_seconds": res.psi_seconds,
            "wall_seconds": res.wall_seconds,
            "bytes": by_phase,
            "epochs": lab.epochs_run,
            "steps": lab.steps,
            "best_epoch": lab.best_epoch,
            "counters": {**lab.counters, **pas.counters},
            "timings": {"label": lab.timings, "passive": pas.timings},
        },
        "intersection": res.intersection_size,
        "config": cfg.public(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_vertical_lr.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
