"""Benchmark: vertical SecureBoost vs pooled plaintext and label-party-only models, from one run.

Data (issue 3): guest = default_credit_hetero_guest.csv (label party: id, y, 13 features),
host = default_credit_hetero_host.csv (id, 10 features); test = the 6,000 ids of
default_credit_homo_test.csv, train = the other 24,000.  Rows are aligned by id here
(PSI is benchmarked separately).  Same hyper-parameters everywhere: 30 trees, depth 3,
32 bins, learning rate 0.3, L2 lambda 1.

    python -m simulations.bench_secureboost [--out /tmp/bench-secureboost]

Prints AUC, KS, training wall time and bytes exchanged for: scikit-learn's
HistGradientBoostingClassifier on pooled data and on the label party's features alone,
this project's plaintext reference of the same algorithm (same bins and grower) pooled
and label-only, and federated SecureBoost over the in-memory transport.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from fedcredit import compute
from fedcredit.metrics import auc_ks
from fedcredit.protocols import secureboost as sb
from simulations.inprocess import run_secureboost_inprocess
from simulations.wan import wan_line

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _load(data: Path) -> tuple[pd.DataFrame, pd.DataFrame, set[str]]:
    guest = pd.read_csv(data / "default_credit_hetero_guest.csv", dtype={"id": str})
    host = pd.read_csv(data / "default_credit_hetero_host.csv", dtype={"id": str})
    test_ids = set(pd.read_csv(data / "default_credit_homo_test.csv", dtype={"id": str}, usecols=["id"])["id"])
    return guest, host, test_ids


def traffic_lines(report: dict, n_bytes: int, n_passive: int) -> list[str]:
    """Bytes per tree per 1,000 training rows, and the modelled WAN time beside the measured LAN time.

    Round trips (sequential request/response exchanges, every passive party in parallel): setup,
    one ``hist`` per level that computed histograms, one ``split`` per level with a split, one
    ``predict`` per scoring batch, ``finish``.
    """
    t = report["label_timings"]
    trees = max(1, int(report["config"]["n_trees"]))
    n = max(1, int(report["n_train"]))
    n_test = int(report.get("n_test", 0))
    batches = -(-n_test // int(report["config"]["predict_batch"])) if n_test else 0
    trips = 2 + int(t.get("dense_levels", 0) + t.get("lane_levels", 0) + t.get("split_rounds", 0)) + batches
    per_tree = n_bytes / trees
    lan = float(report["train_seconds"]) + float(report.get("eval_seconds", 0.0))
    return [
        f"bytes per tree: {per_tree / 1e6:.2f} MB = {per_tree / 1e3 / (n / 1000):.1f} kB per 1,000 training rows "
        f"({n_passive} passive part{'y' if n_passive == 1 else 'ies'}; includes the one-off setup)",
        f"levels: {int(t.get('dense_levels', 0))} dense (fixed layout), {int(t.get('lane_levels', 0))} per-level lanes",
        f"federated (training + joint scoring): {wan_line(lan, n_bytes, trips)}",
    ]


def _hgb(X: np.ndarray, y: np.ndarray, Xt: np.ndarray, yt: np.ndarray, cfg: sb.SecureBoostConfig) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier

    m = HistGradientBoostingClassifier(
        max_iter=cfg.n_trees,
        max_depth=cfg.max_depth,
        learning_rate=cfg.learning_rate,
        max_bins=cfg.n_bins,
        l2_regularization=cfg.reg_lambda,
        max_leaf_nodes=None,
        early_stopping=False,
        random_state=0,
    )
    t, c = time.perf_counter(), time.process_time()
    m.fit(X, y)
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    auc, ks = auc_ks(yt, m.predict_proba(Xt)[:, 1])
    return {"auc": auc, "ks": ks, "train_s": secs, "cpu_s": cpu, "bytes": 0}


def _reference(X, y, Xh, Xt, yt, Xht, cfg: sb.SecureBoostConfig) -> tuple[dict, sb.LabelModelPart, dict]:
    t, c = time.perf_counter(), time.process_time()
    label, passive = sb.train_plaintext_reference(
        X, y, {"host": Xh} if Xh is not None else {}, cfg,
        label_party="guest",
        label_feature_names=[f"x{i}" for i in range(X.shape[1])],
        passive_feature_names={"host": [f"x{i}" for i in range(Xh.shape[1])]} if Xh is not None else None,
    )
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    dec = {"host": sb.passive_decisions(passive["host"], Xht)} if Xh is not None else {}
    auc, ks = auc_ks(yt, sb.label_predict(label, Xt, dec))
    return {"auc": auc, "ks": ks, "train_s": secs, "cpu_s": cpu, "bytes": 0}, label, passive


def _agreement(fed: sb.LabelModelPart, fed_host: sb.PassiveModelPart, ref: sb.LabelModelPart,
               ref_host: sb.PassiveModelPart, Xg: np.ndarray, Xh: np.ndarray) -> dict:
    """Node-by-node comparison; a passive threshold may differ only between thresholds that split the
    node's training rows identically (an exact tie), which the per-tree partition check confirms."""
    out = {"splits": 0, "same_split": 0, "same_threshold": 0, "leaves": 0, "leaves_close": 0, "trees_same_partition": 0}
    for ft, rt in zip(fed.trees, ref.trees):
        for a, b in zip(ft, rt):
            if a.get("leaf") or b.get("leaf"):
                out["leaves"] += 1
                out["leaves_close"] += bool(a.get("leaf") and b.get("leaf") and abs(a["value"] - b["value"]) < 1e-3)
                continue
            out["splits"] += 1
            if a["owner"] != b["owner"]:
                continue
            if "split_id" in a and fed_host.hidden:  # hidden splits: no rule at the passive party to compare
                out["same_split"] += 1
                continue
            if "split_id" in a:
                fa, fb = fed_host.splits[a["split_id"]], ref_host.splits[b["split_id"]]
            else:
                fa, fb = sb.SplitRule.parse(a["feature"], a), sb.SplitRule.parse(b["feature"], b)
            out["same_split"] += fa[0] == fb[0]
            out["same_threshold"] += fa == fb
        if fed_host.hidden:  # compared through the test scores only (max_test_score_diff)
            continue
        one = [
            sb.label_margin(replace(m, trees=[t], base_score=0.0), Xg, {"host": sb.passive_decisions(h, Xh)})
            for m, t, h in ((fed, ft, fed_host), (ref, rt, ref_host))
        ]
        out["trees_same_partition"] += bool(len(ft) == len(rt) and np.max(np.abs(one[0] - one[1])) < 1e-3)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-secureboost"))
    ap.add_argument("--trees", type=int, default=30)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--bins", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--pack", type=int, default=sb.SecureBoostConfig().pack)
    ap.add_argument("--mode", choices=["hide_membership", "per_level"], default="hide_membership",
                    help="histogram_mode (docs/secureboost.md: leakage table)")
    ap.add_argument("--splits", choices=["hidden", "revealed"], default=None,
                    help="passive_splits (default: the config's for the mode: hidden with hide_membership)")
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes for the passive party's histogram passes (as [compute] workers)")
    args = ap.parse_args(argv)
    if args.workers > 1:  # what a party daemon does from its [compute] section
        compute.configure(compute.WorkerPool(args.workers, "processes"))
    cfg = sb.SecureBoostConfig(
        n_trees=args.trees, max_depth=args.depth, n_bins=args.bins, learning_rate=args.lr, pack=args.pack,
        histogram_mode=args.mode, **({"passive_splits": args.splits} if args.splits else {}),
    )
    load0 = os.getloadavg()
    guest, host, test_ids = _load(args.data)
    gcols = [c for c in guest.columns if c not in ("id", "y")]
    hcols = [c for c in host.columns if c != "id"]
    pooled = guest.merge(host, on="id", suffixes=("", "_h"))
    hcols_p = [c + "_h" if c in gcols else c for c in hcols]
    is_test = pooled["id"].isin(test_ids).to_numpy()
    tr, te = pooled[~is_test], pooled[is_test]
    y, yt = tr["y"].to_numpy(), te["y"].to_numpy()
    Xg, Xgt = tr[gcols].to_numpy(), te[gcols].to_numpy()
    Xh, Xht = tr[hcols_p].to_numpy(), te[hcols_p].to_numpy()
    print(f"train {len(tr)} rows, test {len(te)} rows; guest {len(gcols)} features, host {len(hcols)} features")
    print(f"config: {cfg.to_dict()}")

    rows: dict[str, dict] = {}
    rows["pooled HistGradientBoosting (sklearn)"] = _hgb(np.hstack([Xg, Xh]), y, np.hstack([Xgt, Xht]), yt, cfg)
    ref, ref_label, ref_passive = _reference(Xg, y, Xh, Xgt, yt, Xht, cfg)
    rows["pooled plaintext reference (same algorithm)"] = ref
    rows["label party only, HistGradientBoosting"] = _hgb(Xg, y, Xgt, yt, cfg)
    rows["label party only, plaintext reference"] = _reference(Xg, y, None, Xgt, yt, None, cfg)[0]

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "tree" and (done % 10 == 0 or done == 1):
            print(f"  federated: tree {done}/{total}  ({time.perf_counter() - t0:.1f} s)", flush=True)

    t0, c0 = time.perf_counter(), time.process_time()
    res = run_secureboost_inprocess(
        guest, {"host": host}, cfg, test_ids=test_ids, out_dir=args.out, progress=progress
    )
    fed_cpu = time.process_time() - c0  # training + joint scoring, every party (one GIL)
    lab = res.label
    total_bytes = sum(res.bytes_sent.values())
    rows["federated SecureBoost (CKKS)"] = {
        "auc": lab.test_auc,
        "ks": lab.test_ks,
        "train_s": lab.train_seconds,
        "cpu_s": fed_cpu,
        "bytes": total_bytes,
    }

    # agreement with the pooled reference (same bins, same algorithm)
    agree = _agreement(lab.model, res.passive_models["host"], ref_label, ref_passive["host"], Xg, Xh)
    ref_scores = sb.label_predict(ref_label, Xgt, {"host": sb.passive_decisions(ref_passive["host"], Xht)})
    agree["max_test_score_diff"] = float(np.max(np.abs(ref_scores - lab.test_scores)))

    print()
    print(f"{'model':46s} {'test AUC':>9s} {'test KS':>8s} {'train s':>8s} {'CPU s':>7s} {'bytes exchanged':>16s}")
    for name, r in rows.items():
        print(f"{name:46s} {r['auc']:9.4f} {r['ks']:8.4f} {r['train_s']:8.2f} {r['cpu_s']:7.2f} {r['bytes']:16,d}")
    print("(train s = wall time of training; CPU s = process CPU time, all threads; federated CPU s includes setup")
    print(" and joint scoring of the test set; in-process parties share one interpreter lock, so this is ~one core)")
    print()
    g2h = res.bytes_sent.get("guest", 0)
    h2g = res.bytes_sent.get("host", 0)
    print(f"federated: guest->host {g2h / 1e6:.1f} MB (incl. public CKKS context with Galois keys), host->guest {h2g / 1e6:.1f} MB")
    print(
        f"federated vs pooled reference: {agree['same_split']}/{agree['splits']} splits with the same owner and feature "
        f"({agree['same_threshold']} with the identical threshold; hidden splits: owner only), "
        f"{agree['leaves_close']}/{agree['leaves']} leaves "
        f"within 1e-3, {agree['trees_same_partition']}/{len(lab.model.trees)} trees partition the training rows "
        f"identically; max |score diff| on test = {agree['max_test_score_diff']:.2e}"
    )
    for line in traffic_lines(lab.report, total_bytes, 1):
        print(line)
    print(f"federated timings (label): {lab.report['label_timings']}")
    print(f"federated timings (host):  {lab.report['passive']['host']['timings']}")
    print(f"setup {lab.report['setup_seconds']} s, joint scoring of {len(te)} rows {lab.report['eval_seconds']} s")
    load1 = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, passive histogram workers {args.workers}; load average at start "
          f"{load0[0]:.2f}, at end {load1[0]:.2f}")

    out = {
        "config": cfg.to_dict(),
        "rows": rows,
        "federated_report": lab.report,
        "bytes_sent": res.bytes_sent,
        "agreement": agree,
        "loadavg": {"start": load0, "end": load1},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_secureboost.json").write_text(json.dumps(out, indent=2, default=float))
    print(f"report: {args.out / 'bench_secureboost.json'}, plot: {args.out / 'secureboost_test_roc_ks.png'}")
    return out


if __name__ == "__main__":
    main()
