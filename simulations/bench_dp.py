"""Benchmark: test AUC against ε for the three DP options on the benchmark split, beside the non-DP figures (one run).

    python -m simulations.bench_dp [--data ../shared/data] [--out /tmp/fedcredit_bench_dp] [--eps 1,4,16,64]
                                   [--figure docs/figures/dp_auc_vs_epsilon.png] [--only horizontal,vertical-lr,secureboost]
                                   [--repeats 3]

The split is the project's benchmark one (``/work/shared/data``): the same 6,000 test ids
(``default_credit_homo_test.csv``) everywhere.

* **horizontal, client-level DP**: the three homo banks (8,000 rows each) run the real
  encrypted protocol in-process (``simulations.horizontal_sim.run_inprocess``: CKKS, the
  party and coordinator roles), FedAvg rounds only (``newton_rounds = 0``, which DP needs),
  each bank clipping its update and adding its noise share; the global AUC is the one
  decrypted from the summed encrypted test histograms.
* **vertical LR, label DP**: label party = hetero guest (13 features + y), passive = hetero
  host (10 features), the real federated protocol in-process (PSI, CKKS residuals, masked
  gradients), a fixed schedule of ``max_epochs`` mini-batch epochs + ``full_batch_steps``
  full-batch steps (label DP runs no early stopping), noise on every residual.
* **SecureBoost, label DP**: 30 trees of depth 3.  The curve is the plaintext reference of
  the same algorithm (``boost`` over a ``PlainBackend`` of both parties' binned features,
  the same noise hook on the gradients) — the federated protocol computes the same trees up
  to CKKS noise, and one federated run at ``--sb-federated-eps`` is printed beside it to
  show that; each federated SecureBoost run takes about a minute here.

Beside each: the non-DP federated figure and the pooled-plaintext baseline (scikit-learn LR
on the pooled rows for the two LR options, HistGradientBoosting with the same trees for
SecureBoost).  ε is at δ = 1e-5, by the RDP accountant (fedcredit/dp.py), for the
releases each run made.  DP noise is fresh (OS-seeded) at every run: each point is the
mean (± std) of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedcredit import dp
from fedcredit.data import load_table
from fedcredit.metrics import auc_ks
from fedcredit.params import HorizontalDP, LabelDP
from fedcredit.protocols import secureboost as sb
from fedcredit.protocols.secureboost.trees import LabelModelPart, PlainBackend, boost, check_labels, source_of
from fedcredit.protocols.vertical_lr import VerticalLRConfig
from simulations.horizontal_sim import run_inprocess
from simulations.inprocess import run_secureboost_inprocess, run_vertical_lr_inprocess

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DELTA = 1e-5
BANKS = {"bank1": "default_credit_homo_guest.csv", "bank2": "default_credit_homo_host_1.csv",
         "bank3": "default_credit_homo_host_2.csv"}
H_CLIP = 0.25  # L2 bound of a bank's round update (standardized LR, 24 parameters)
VLR_SCHEDULE = {"max_epochs": 5, "full_batch_steps": 20, "validation_fraction": 0.0}  # 25 releases per label


def _pooled_lr(Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, yte: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression

    mean, std = Xtr.mean(axis=0), Xtr.std(axis=0)
    std[std == 0] = 1.0
    m = LogisticRegression(max_iter=5000).fit((Xtr - mean) / std, ytr)
    return float(auc_ks(yte, m.predict_proba((Xte - mean) / std)[:, 1])[0])


def _aucs(a: list[float]) -> dict[str, Any]:
    """Mean and spread of the repeated runs at one ε (fresh noise each)."""
    return {"auc": float(np.mean(a)), "auc_std": float(np.std(a)), "auc_runs": [round(x, 4) for x in a]}


# --------------------------------------------------------------------------- horizontal


def horizontal(data: Path, out: Path, eps: list[float], repeats: int) -> dict[str, Any]:
    files = {b: data / f for b, f in BANKS.items()}
    test_file = data / "default_credit_homo_test.csv"
    tables = [load_table(f, party=b, label_col="y") for b, f in files.items()]
    test = load_table(test_file, party="test", label_col="y")
    assert test.y is not None
    pooled = _pooled_lr(np.vstack([t.X for t in tables]), np.concatenate([t.y for t in tables]),
                        test.X, test.y)

    def run(name: str, job: dict[str, Any]) -> dict[str, Any]:
        t = time.perf_counter()
        rep = run_inprocess(files, test_file, job, out / "horizontal" / name, split_test=True)
        res = rep["result"]
        return {"auc": float(res["global_metrics"]["auc"]), "seconds": round(time.perf_counter() - t, 1),
                "privacy": res.get("privacy", {})}

    no_dp = run("no-dp", {})
    fedavg_only = run("no-dp-fedavg", {"newton_rounds": 0})
    points = []
    for e in eps:
        job = {"newton_rounds": 0, "dp": HorizontalDP(epsilon=e, delta=DELTA, clip=H_CLIP).to_dict()}
        runs = [run(f"eps-{e:g}-{i}", job) for i in range(repeats)]
        d = runs[0]["privacy"]["dp"]
        points.append({"target_epsilon": e, "epsilon": d["epsilon"], "noise_multiplier": d["noise_multiplier"],
                       "epsilon_if_update_seen": d["epsilon_if_update_seen"], **_aucs([r["auc"] for r in runs])})
    return {"pooled_plaintext_auc": pooled, "federated_no_dp_auc": no_dp["auc"],
            "federated_no_dp_fedavg_only_auc": fedavg_only["auc"], "points": points,
            "settings": {"clip": H_CLIP, "rounds": 10, "banks": 3, "delta": DELTA}}


# --------------------------------------------------------------------------- vertical LR


def vertical_lr(data: Path, out: Path, eps: list[float], repeats: int) -> dict[str, Any]:
    test_ids = set(load_table(data / "default_credit_homo_test.csv", party="guest", feature_cols=[]).ids)
    guest = load_table(data / "default_credit_hetero_guest.csv", party="guest", label_col="y")
    host = load_table(data / "default_credit_hetero_host.csv", party="host")
    tr = np.array([i not in test_ids for i in guest.ids])
    assert guest.y is not None
    Xall = np.hstack([guest.X, host.align(guest.ids).X])
    pooled = _pooled_lr(Xall[tr], guest.y[tr], Xall[~tr], guest.y[~tr])

    def run(cfg: VerticalLRConfig) -> dict[str, Any]:
        t = time.perf_counter()
        r = run_vertical_lr_inprocess(guest, {"host": host}, cfg, test_ids=test_ids)
        assert r.label.test_metrics is not None
        return {"auc": float(r.label.test_metrics["auc"]), "privacy": r.label.privacy,
                "steps": r.label.steps, "epochs": r.label.epochs_run, "seconds": round(time.perf_counter() - t, 1)}

    no_dp = run(VerticalLRConfig())
    same_schedule = run(VerticalLRConfig(**VLR_SCHEDULE))
    points = []
    for e in eps:
        runs = [run(VerticalLRConfig(**VLR_SCHEDULE, dp=LabelDP(epsilon=e, delta=DELTA))) for _ in range(repeats)]
        d = runs[0]["privacy"]["dp"]
        points.append({"target_epsilon": e, "epsilon": d["epsilon"], "noise_multiplier": d["noise_multiplier"],
                       "releases": d["releases"], **_aucs([r["auc"] for r in runs])})
    return {"pooled_plaintext_auc": pooled, "federated_no_dp_auc": no_dp["auc"],
            "federated_no_dp_same_schedule_auc": same_schedule["auc"], "points": points,
            "settings": {**VLR_SCHEDULE, "delta": DELTA}}


# --------------------------------------------------------------------------- SecureBoost


def _sb_reference(guest: pd.DataFrame, host: pd.DataFrame, test_ids: set[str], cfg: sb.SecureBoostConfig,
                  noise: dp.LabelNoise | None) -> float:
    """The plaintext reference of the same algorithm (train_plaintext_reference_tables) with the label-DP hook."""
    from fedcredit.data import split_by_ids, table_from_frame

    g = table_from_frame(guest, party="guest", source="guest", id_col="id", label_col="y")
    h = table_from_frame(host, party="host", source="host", id_col="id").align(g.ids)
    (gtr, gte), (htr, hte) = split_by_ids(g, test_ids), split_by_ids(h, test_ids)
    y = check_labels(gtr.y, "guest")
    sources = [source_of("guest", gtr, cfg, own=True, shuffle=False), source_of("host", htr, cfg, own=False,
                                                                                 shuffle=False)]
    base, trees, _ = boost(y, PlainBackend(sources), cfg, None, label_noise=noise.noisy if noise else None)
    label = LabelModelPart("guest", ["host"], list(gtr.feature_names), base, trees, cfg.to_dict(),
                           input_schema=sources[0].schema)
    passive = sources[1].model_part("guest")
    Xt, _ = label.encode(gte)
    dec = {"host": sb.passive_decisions(passive, hte.X)}
    assert gte.y is not None
    return float(auc_ks(gte.y, sb.label_predict(label, Xt, dec))[0])


def secureboost(data: Path, out: Path, eps: list[float], fed_eps: float | None, repeats: int) -> dict[str, Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier

    guest = pd.read_csv(data / "default_credit_hetero_guest.csv", dtype={"id": str})
    host = pd.read_csv(data / "default_credit_hetero_host.csv", dtype={"id": str})
    test_ids = set(pd.read_csv(data / "default_credit_homo_test.csv", dtype={"id": str}, usecols=["id"])["id"])
    cfg = sb.SecureBoostConfig()
    both = guest.merge(host, on="id")
    te = both["id"].isin(test_ids).to_numpy()
    X = both.drop(columns=["id", "y"]).to_numpy(dtype=np.float64)
    y = both["y"].to_numpy()
    hgb = HistGradientBoostingClassifier(max_iter=cfg.n_trees, max_depth=cfg.max_depth, learning_rate=cfg.learning_rate,
                                         max_bins=cfg.n_bins, l2_regularization=cfg.reg_lambda, max_leaf_nodes=None,
                                         early_stopping=False, random_state=0).fit(X[~te], y[~te])
    pooled = float(auc_ks(y[te], hgb.predict_proba(X[te])[:, 1])[0])

    def federated(c: sb.SecureBoostConfig) -> dict[str, Any]:
        t = time.perf_counter()
        r = run_secureboost_inprocess(guest, {"host": host}, c, test_ids=test_ids)
        return {"auc": float(r.label.test_auc or 0.0), "privacy": r.label.report.get("privacy", {}),
                "seconds": round(time.perf_counter() - t, 1)}

    no_dp_ref = _sb_reference(guest, host, test_ids, cfg, None)
    no_dp_fed = federated(cfg)
    points = []
    for e in eps:
        plan = dp.label_plan(LabelDP(epsilon=e, delta=DELTA), cfg.n_trees, "secureboost")
        a = [_sb_reference(guest, host, test_ids, cfg, dp.LabelNoise(plan)) for _ in range(repeats)]
        points.append({"target_epsilon": e, "epsilon": plan.report()["epsilon"],
                       "noise_multiplier": plan.noise_multiplier, "releases": cfg.n_trees, **_aucs(a)})
    fed_point = None
    if fed_eps is not None:
        r = federated(cfg.model_copy(update={"dp": LabelDP(epsilon=fed_eps, delta=DELTA)}))
        fed_point = {"target_epsilon": fed_eps, "epsilon": r["privacy"]["dp"]["epsilon"],
                     "noise_multiplier": r["privacy"]["dp"]["noise_multiplier"], "auc": r["auc"],
                     "seconds": r["seconds"]}
    return {"pooled_plaintext_auc": pooled, "federated_no_dp_auc": no_dp_fed["auc"],
            "reference_no_dp_auc": no_dp_ref, "points": points, "federated_dp_point": fed_point,
            "settings": {"n_trees": cfg.n_trees, "max_depth": cfg.max_depth, "delta": DELTA}}


# --------------------------------------------------------------------------- output


def plot(results: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"horizontal": "horizontal FedAvg LR, client-level DP (3 banks)",
              "vertical-lr": "vertical LR, label DP", "secureboost": "SecureBoost, label DP (reference of same algorithm)"}
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        pts = r["points"]
        ax.errorbar([p["epsilon"] for p in pts], [p["auc"] for p in pts], yerr=[p.get("auc_std", 0.0) for p in pts],
                    fmt="o-", color="tab:blue", capsize=3, label=f"with DP (mean ± std of {len(pts[0]['auc_runs'])} runs)")
        ax.axhline(r["federated_no_dp_auc"], color="tab:green", ls="--", label="federated, no DP")
        ax.axhline(r["pooled_plaintext_auc"], color="black", ls=":", label="pooled plaintext")
        if r.get("federated_dp_point"):
            fp = r["federated_dp_point"]
            ax.plot([fp["epsilon"]], [fp["auc"]], "s", color="tab:red", label="federated run with DP")
        ax.set_xscale("log")
        ax.set_xlabel(f"ε (δ = {DELTA:g}, RDP accountant)")
        ax.set_ylabel("test AUC (6,000 rows)")
        ax.set_title(titles.get(name, name), fontsize=10)
        ax.set_ylim(0.45, 0.82)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _print(name: str, r: dict[str, Any]) -> None:
    print(f"\n== {name}: pooled plaintext AUC {r['pooled_plaintext_auc']:.4f}, federated no-DP AUC "
          f"{r['federated_no_dp_auc']:.4f}" + "".join(f", {k.removesuffix('_auc').replace('_', ' ')} {v:.4f}"
                                                     for k, v in r.items() if k.endswith("_auc") and k not in
                                                     ("pooled_plaintext_auc", "federated_no_dp_auc")))
    print(f"   {'target ε':>9} {'ε spent':>9} {'noise mult.':>11} {'test AUC (mean ± std)':>22}  runs")
    for p in r["points"]:
        print(f"   {p['target_epsilon']:>9g} {p['epsilon']:>9.3f} {p['noise_multiplier']:>11.3f} "
              f"{p['auc']:>13.4f} ± {p['auc_std']:.4f}  {' '.join(f'{x:.4f}' for x in p['auc_runs'])}"
              + (f"   (ε if one update is decrypted: {p['epsilon_if_update_seen']:.1f})"
                 if "epsilon_if_update_seen" in p else ""))
    if r.get("federated_dp_point"):
        fp = r["federated_dp_point"]
        print(f"   federated SecureBoost with DP: ε {fp['epsilon']:.3f}, noise mult. {fp['noise_multiplier']:.3f}, "
              f"test AUC {fp['auc']:.4f} ({fp['seconds']} s)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=Path("/tmp/fedcredit_bench_dp"))
    ap.add_argument("--eps", default="1,4,16,64,256")
    ap.add_argument("--sb-federated-eps", type=float, default=16.0)
    ap.add_argument("--repeats", type=int, default=3, help="runs per ε (fresh noise each)")
    ap.add_argument("--only", default="horizontal,vertical-lr,secureboost")
    ap.add_argument("--figure", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "figures"
                    / "dp_auc_vs_epsilon.png")
    a = ap.parse_args(argv)
    eps = [float(x) for x in a.eps.split(",")]
    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for name in a.only.split(","):
        t = time.perf_counter()
        if name == "horizontal":
            results[name] = horizontal(a.data, a.out, eps, a.repeats)
        elif name == "vertical-lr":
            results[name] = vertical_lr(a.data, a.out, eps, a.repeats)
        elif name == "secureboost":
            results[name] = secureboost(a.data, a.out, eps, a.sb_federated_eps, a.repeats)
        else:
            raise SystemExit(f"--only: unknown option '{name}' (horizontal, vertical-lr, secureboost)")
        results[name]["seconds"] = round(time.perf_counter() - t, 1)
        _print(name, results[name])
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench_dp.json").write_text(json.dumps(results, indent=1))
    fig = plot(results, a.figure)
    print(f"\nwrote {a.out / 'bench_dp.json'} and {fig} in {time.perf_counter() - t0:.0f} s")
    return results


if __name__ == "__main__":
    main()
