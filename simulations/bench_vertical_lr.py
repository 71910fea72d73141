"""Benchmark: vertical logistic regression on the real credit data, beside its plaintext baselines (one run).

    python -m simulations.bench_vertical_lr [--data ../shared/data] [--out /tmp/fedcredit_bench_vlr] [--tables benchmark,raw]
        [--workers N] [--engine processes|ray]

Two tables, the same 6,000 test ids (default_credit_homo_test.csv), train = the other 24,000:

* ``benchmark``: guest = default_credit_hetero_guest.csv (label party: id, y, 13 features),
  host = default_credit_hetero_host.csv (passive party: id, 10 features), already standardized;
* ``raw``: UCI_Credit_Card.csv with its raw, heavy-tailed amounts split between the parties:
  label party LIMIT_BAL, AGE, PAY_0..PAY_6, BILL_AMT1..6; passive SEX, EDUCATION, MARRIAGE, PAY_AMT1..6;
* ``heavy``: ``simulations.generator.generate_heavy_tailed()`` (5,000 generated rows, log-normal amounts up to
  ~70 standard deviations, its own 25 % test rows), the table tests/test_lr_convergence.py uses.

PSI runs first (over the in-memory hub, X25519), then training, then joint scoring.
Printed side by side: pooled plaintext LR (scikit-learn, same L2), label-party-only LR,
federated vertical LR (and, with ``--before``, the old optimiser: mini-batch epochs with
validation early stopping only) — test AUC, KS, test log-loss and its gap to the pooled
optimum, wall time, bytes exchanged.  The pooled optimum is sklearn on exactly the rows the
federation fits (the training rows minus the validation rows), the same per-party
standardization, ``C = 1/(l2·n_fit)``, ``tol=1e-12``.  A PNG per table shows the federated
training and validation log-loss per epoch beside the pooled optimum's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from fedcredit.compute import WorkerPool
from fedcredit.data import Table, load_table, split_by_ids, table_from_frame
from fedcredit.metrics import auc_ks
from fedcredit.protocols.vertical_common import Standardizer, validation_split
from fedcredit.protocols.vertical_lr import VerticalLRConfig, convergence
from fedcredit.transport import WireRecord
from simulations.generator import HEAVY_LABEL_COLUMNS as LABEL_COLUMNS
from simulations.generator import HEAVY_PASSIVE_COLUMNS as PASSIVE_COLUMNS
from simulations.generator import generate_heavy_tailed as heavy_tailed
from simulations.inprocess import run_vertical_lr_inprocess
from simulations.wan import wan_line

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


RAW_LABEL = ["LIMIT_BAL", "AGE", "PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6"] + [f"BILL_AMT{i}" for i in range(1, 7)]
RAW_PASSIVE = ["SEX", "EDUCATION", "MARRIAGE"] + [f"PAY_AMT{i}" for i in range(1, 7)]


def _logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _sklearn_lr(Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, yte: np.ndarray, l2: float) -> tuple[float, float, float]:
    """Same objective as the federated model: mean log-loss + l2/2 |w|^2  <=>  C = 1 / (l2 · n)."""
    t = time.perf_counter()
    m = LogisticRegression(C=1.0 / (l2 * len(ytr)), max_iter=5000).fit(Xtr, ytr)
    secs = time.perf_counter() - t
    auc, ks = auc_ks(yte, m.decision_function(Xte))
    return auc, ks, secs


def pooled_optimum(Xtr: np.ndarray, ytr: np.ndarray, ids: list[str], Xte: np.ndarray, yte: np.ndarray,
                   cfg: VerticalLRConfig) -> dict[str, float]:
    """The federated objective's optimum: sklearn on the federation's fit rows, C = 1/(l2·n_fit), solved to 1e-12."""
    fit, val = validation_split(len(ytr), cfg.validation_fraction, cfg.seed, ids)
    t = time.perf_counter()
    m = LogisticRegression(C=1.0 / (cfg.l2 * len(fit)), tol=1e-12, max_iter=100_000).fit(Xtr[fit], ytr[fit])
    p = m.predict_proba(Xte)[:, 1]
    return {"train_loss": _logloss(ytr[fit], m.predict_proba(Xtr[fit])[:, 1]),
            "val_loss": _logloss(ytr[val], m.predict_proba(Xtr[val])[:, 1]) if len(val) else float("nan"),
            "test_loss": _logloss(yte, p), "auc": auc_ks(yte, p)[0], "ks": auc_ks(yte, p)[1],
            "seconds": time.perf_counter() - t, "n_fit": len(fit)}


def load_tables(name: str, data: Path) -> tuple[Table, Table, set[str]]:
    test_ids = set(load_table(data / "default_credit_homo_test.csv", party="guest", feature_cols=[]).ids)
    if name == "benchmark":
        guest = load_table(data / "default_credit_hetero_guest.csv", party="guest", label_col="y")
        host = load_table(data / "default_credit_hetero_host.csv", party="host")
        return guest, host, test_ids
    if name == "heavy":  # generated: 5,000 rows, its own 25 % test flag
        df = heavy_tailed()
        guest = table_from_frame(df[["id", "y", *LABEL_COLUMNS]], party="guest", source="heavy_tailed()", id_col="id",
                                 label_col="y")
        host = table_from_frame(df[["id", *PASSIVE_COLUMNS]], party="host", source="heavy_tailed()", id_col="id")
        return guest, host, set(df.loc[df["test"], "id"])
    df = pd.read_csv(data / "UCI_Credit_Card.csv")
    src = str(data / "UCI_Credit_Card.csv")
    guest = table_from_frame(df[["ID", "default.payment.next.month", *RAW_LABEL]], party="guest", source=src,
                             id_col="ID", label_col="default.payment.next.month")
    host = table_from_frame(df[["ID", *RAW_PASSIVE]], party="host", source=src, id_col="ID")
    return guest, host, test_ids


def plot(curves: dict[str, list[dict]], opt: dict[str, float], path: Path, title: str) -> Path:
    """Federated training/validation log-loss per epoch, the pooled optimum's as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, gap) = plt.subplots(1, 2, figsize=(12, 4.2))
    for (label, curve), color in zip(curves.items(), ("tab:blue", "tab:orange")):
        ep = [c["epoch"] for c in curve]
        ax.plot(ep, [c["train_loss"] for c in curve], color=color, label=f"{label}: train (fit rows)")
        ax.plot(ep, [c["val_loss"] for c in curve], color=color, ls=":", label=f"{label}: validation")
    ax.axhline(opt["train_loss"], color="k", ls="--", lw=1, label=f"pooled optimum, train {opt['train_loss']:.5f}")
    ax.axhline(opt["val_loss"], color="gray", ls="--", lw=1, label=f"pooled optimum, validation {opt['val_loss']:.5f}")
    lo = min(opt["train_loss"], opt["val_loss"])
    ax.set_ylim(lo - 0.01, lo + 0.06)
    ax.set_xlabel("epoch (mini-batch epochs, then one full-batch step each)")
    ax.set_ylabel("log-loss")
    ax.set_title(title)
    ax.legend(fontsize=7)
    for (label, curve), color in zip(curves.items(), ("tab:blue", "tab:orange")):
        gap.semilogy([c["epoch"] for c in curve], [max(abs(c["train_loss"] - opt["train_loss"]), 1e-9) for c in curve],
                     color=color, label=label)
    gap.set_xlabel("epoch")
    gap.set_ylabel("|train log-loss - pooled optimum's|")
    gap.set_title("distance to the pooled optimum (log scale)")
    gap.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bench_table(name: str, args: argparse.Namespace, cfg: VerticalLRConfig) -> dict:
    guest, host, test_ids = load_tables(name, args.data)
    out = args.out / name
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
    opt = pooled_optimum(Xtr, gtr.y, list(gtr.ids), Xte, gte.y, cfg)

    runs = {"federated": cfg, **({"before (old optimiser)": cfg.model_copy(update={"full_batch_steps": 0})}
                                 if args.before else {})}
    fed: dict[str, dict] = {}
    for label, c in runs.items():
        by_phase = {"psi": 0, "train": 0, "score": 0}

        def observe(r: WireRecord, by_phase: dict = by_phase) -> None:
            phase = "psi" if r.tag.startswith("psi/") else "score" if "/score/" in r.tag else "train"
            by_phase[phase] += r.size

        print(f"[{name}] {label}: PSI + vertical LR over the in-memory hub: guest {len(guest):,} rows x "
              f"{guest.n_features}, host {len(host):,} rows x {host.n_features}, test ids {len(test_ids):,}", flush=True)
        res = run_vertical_lr_inprocess(guest, {"host": host}, c, test_ids=test_ids, out_dir=out / label.split()[0],
                                        progress=None, observers=[observe], pool=args.pool)
        lab, pas = res.label, res.passives["host"]
        m = lab.test_metrics or {}
        assert lab.test_scores is not None
        y_of = dict(zip(gte.ids, gte.y))  # joint scores come in the label party's (PSI-aligned) test order
        test_loss = _logloss(np.array([y_of[i] for i in lab.test_ids]), lab.test_scores)
        fed[label] = {
            "auc": m.get("auc"), "ks": m.get("ks"), "test_loss": test_loss,
            "test_loss_gap": test_loss / opt["test_loss"] - 1,
            "train_seconds": res.train_seconds, "psi_seconds": res.psi_seconds, "wall_seconds": res.wall_seconds,
            "bytes": by_phase, "epochs": lab.epochs_run, "steps": lab.steps, "best_epoch": lab.best_epoch,
            "counters": {**lab.counters, **pas.counters}, "timings": {"label": lab.timings, "passive": pas.timings},
            "convergence": convergence(lab.history), "intersection": res.intersection_size,
            "full_batch_epochs": sum(1 for h in lab.history if h.get("phase") == "full_batch"),
            # sequential exchanges: PSI 2, setup/hello 1, per step z -> r -> g -> gs 2, per epoch validation/ctl 1,
            # joint scoring 1
            "round_trips": 2 + 1 + 2 * lab.steps + lab.epochs_run + 1,
        }
    print()
    print(f"[{name}] {'model':34s} {'test AUC':>9s} {'KS':>7s} {'logloss':>8s} {'gap':>8s} {'train s':>8s}  bytes exchanged")
    rows = [("pooled optimum (sklearn, fit rows)", opt["auc"], opt["ks"], opt["test_loss"], 0.0, opt["seconds"], ""),
            ("pooled plaintext LR (sklearn)", pooled[0], pooled[1], float("nan"), float("nan"), pooled[2], "(raw rows pooled)"),
            ("label party only LR (sklearn)", label_only[0], label_only[1], float("nan"), float("nan"), label_only[2], "0")]
    for label, f in fed.items():
        rows.append((f"{label} vertical LR (CKKS)" if label == "federated" else label, f["auc"], f["ks"], f["test_loss"],
                     f["test_loss_gap"], f["train_seconds"],
                     f"{(f['bytes']['train'] + f['bytes']['score']) / 1e6:.1f} MB (+ PSI {f['bytes']['psi'] / 1e6:.1f} MB)"))
    for lbl, auc, ks, loss, gap, secs, b in rows:
        print(f"[{name}] {lbl:34s} {auc:9.4f} {ks:7.4f} {loss:8.5f} {100 * gap:+7.3f}% {secs:8.2f}  {b}")
    for label, f in fed.items():
        print(f"[{name}] {label}: " + wan_line(f["wall_seconds"], sum(f["bytes"].values()), f["round_trips"])
              + " (PSI + training + scoring)")
    for label, f in fed.items():
        print(f"[{name}] {label}: {f['epochs']} epochs ({f['steps']} steps), of them {f['full_batch_epochs']} full-batch; "
              f"best epoch {f['best_epoch']}; encryptions {f['counters']['encryptions']}, decryptions "
              f"{f['counters']['decryptions']}, ct x pt multiplications {f['counters']['plain_multiplications']}, "
              f"rotations {f['counters']['rotations']}; final train loss {f['convergence'][-1]['train_loss']:.6f} "
              f"(pooled optimum {opt['train_loss']:.6f})")
    out.mkdir(parents=True, exist_ok=True)
    png = plot({k: v["convergence"] for k, v in fed.items()}, opt, out / f"convergence_{name}.png",
               f"vertical LR, {name} table: log-loss per epoch vs the pooled optimum")
    print(f"[{name}] convergence plot: {png}")
    return {"pooled_optimum": opt,
            "pooled_sklearn": {"auc": pooled[0], "ks": pooled[1], "train_seconds": pooled[2]},
            "label_only_sklearn": {"auc": label_only[0], "ks": label_only[1], "train_seconds": label_only[2]},
            **fed, "convergence_plot": str(png)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=Path("/tmp/fedcredit_bench_vlr"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tables", default="benchmark,raw,heavy", help="comma-separated: benchmark, raw, heavy")
    ap.add_argument("--before", action="store_true", help="also run the old optimiser (full_batch_steps=0)")
    ap.add_argument("--workers", type=int, default=1, help="HE workers per party ([compute].workers; 1 = inline)")
    ap.add_argument("--engine", default="processes", choices=["inline", "processes", "ray"])
    args = ap.parse_args(argv)
    args.pool = WorkerPool(args.workers, args.engine)
    cfg = VerticalLRConfig(seed=args.seed)
    summary: dict = {"config": cfg.public()}
    for name in [t for t in args.tables.split(",") if t]:
        if name not in ("benchmark", "raw", "heavy"):
            raise SystemExit(f"--tables: unknown table {name!r} (benchmark, raw, heavy)")
        summary[name] = bench_table(name, args, cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_vertical_lr.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
