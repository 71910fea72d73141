"""Benchmark: encrypted horizontal FedAvg/FedProx vs pooled, local-only and plaintext FedAvg.

Three banks = ``default_credit_homo_{guest,host_1,host_2}.csv`` (8,000 rows each),
test = ``default_credit_homo_test.csv`` (6,000 rows).  From ONE run it prints, side
by side, for logistic regression and the MLP:

* pooled plaintext model on all 24,000 rows (sklearn LogisticRegression, and the
  same model/optimizer as the federation trained centrally),
* each bank's local-only model (its own data and standardization),
* plaintext FedAvg: the same protocol shape (same hops, same threads, same local
  training and seeds) with raw float64 payloads instead of CKKS ciphertexts,
* encrypted FedAvg: the real protocol (``fedcredit.protocols.horizontal``) over an
  in-process channel,

with test AUC, KS, wall time, bytes per party per round and the encryption
overhead (time and bytes) as a ratio to plaintext FedAvg.  Then the same 24,000
rows re-split non-IID (by label rate, and by credit limit) with FedAvg vs FedProx.

    python -m simulations.bench_horizontal --out bench-out/horizontal

Results: ``<out>/results.json`` plus ROC/KS plots; figures are copied into
docs/horizontal.md by hand with the command and output.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from fedcredit import metrics
from fedcredit.channel import LocalChannel, MemoryState, StateStore
from fedcredit.data import Table, load_table
from fedcredit.models import load_model
from fedcredit.protocols.horizontal import (
    HorizontalJob,
    NewtonState,
    build_model,
    decode_message,
    encode_message,
    local_stats,
    local_update,
    newton_step,
    newton_sums,
    standardizer_from_sums,
)
from simulations.horizontal_sim import run_inprocess
from simulations.partition import partition

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BANKS = ["guest", "host_1", "host_2"]

# hyper-parameters: IID uses the protocol defaults; non-IID uses more local work per
# round (the realistic regime when every round trip costs seconds), where client
# drift appears and FedProx is meant to help.
IID = {"lr": {"rounds": 10}, "mlp": {"rounds": 10}}
NONIID = {
    "lr": {"rounds": 10, "lr": 0.3, "batch_size": 64, "local_epochs": 5, "prox_mu": 0.1},
    "mlp": {"rounds": 10, "lr": 0.2, "batch_size": 128, "local_epochs": 3, "prox_mu": 0.01},
}


# --------------------------------------------------------------------------- baselines


def _std(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return standardizer_from_sums(local_stats(X), X.shape[1])


def _score(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"auc": metrics.auc(y, p), "ks": metrics.ks(y, p)}


def _labels(t: Table) -> np.ndarray:
    assert t.y is not None, f"{t.source} has no label column"
    return t.y


def _logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def sklearn_pooled(tables: Mapping[str, Table], test: Table, l2: float = 1e-4) -> dict[str, Any]:
    """The pooled optimum of the federated objective: mean log-loss + l2/2·|w|² <=> C = 1/(l2·N), to tol 1e-12."""
    t, c = time.perf_counter(), time.process_time()
    X = np.vstack([tb.X for tb in tables.values()])
    y = np.concatenate([_labels(tb) for tb in tables.values()])
    mean, std = _std(X)
    m = LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-12, max_iter=100_000).fit((X - mean) / std, y)
    p = m.predict_proba((test.X - mean) / std)[:, 1]
    return {**_score(_labels(test), p), "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c,
            "rows": int(len(y)), "test_loss": _logloss(_labels(test), p),
            "train_loss": _logloss(y, m.predict_proba((X - mean) / std)[:, 1])}


def centralized(tables: Mapping[str, Table], test: Table, job: HorizontalJob) -> dict[str, Any]:
    """The federation's model and optimizer, trained on one table: pooled (all banks) or local-only."""
    t, c = time.perf_counter(), time.process_time()
    X = np.vstack([tb.X for tb in tables.values()])
    y = np.concatenate([_labels(tb) for tb in tables.values()])
    mean, std = _std(X)
    m = build_model(job, X.shape[1])
    assert job.local_epochs is not None and job.lr is not None and job.batch_size is not None
    m.fit_local((X - mean) / std, y, epochs=job.rounds * job.local_epochs, lr=job.lr,
                batch_size=job.batch_size, seed=job.seed)
    p = m.predict_proba((test.X - mean) / std)
    return {**_score(test.y, p), "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c,  # type: ignore[arg-type]
            "rows": int(len(y))}


def plaintext_fedavg(files: Mapping[str, Path], test: Table, job: HorizontalJob) -> dict[str, Any]:
    """FedAvg with the protocol's hop structure and math but raw float64 payloads (no encryption).

    Hops: one for standardization sums, one per round.  The coordinator sums the
    plaintext vectors (it would see every bank's update: this is the insecure
    baseline the encrypted protocol is measured against).
    """
    tables = {p: load_table(f, party=p, label_col="y") for p, f in files.items()}
    states: dict[str, NewtonState] = {}

    def handler(name: str):
        def handle(method: str, payload: bytes, state: StateStore) -> bytes:
            h, b = decode_message(payload)
            t = tables[name]
            if method == "stats":
                return encode_message({}, {"v": local_stats(t.X).astype("<f8").tobytes()})
            if "stats" in b:
                sums = np.frombuffer(b["stats"], "<f8")
                state.put("std", np.concatenate(standardizer_from_sums(sums, t.n_features)).astype("<f8").tobytes())
            ms = np.frombuffer(state.get("std") or b"", "<f8")
            mean, std = ms[: t.n_features], ms[t.n_features :]
            r = int(h["round"])
            if r > job.rounds:  # Newton rounds: the same state machine as the protocol's parties
                agg = np.frombuffer(b["model"], "<f8")
                prev = state.get("newton")
                nst = (NewtonState(trial=agg[:-1] / agg[-1]) if r == job.rounds + 1
                       else newton_step(NewtonState.from_bytes(prev or b""), agg, job.l2))
                state.put("newton", nst.to_bytes())
                states[name] = nst
                return encode_message({}, {"update": newton_sums(nst.trial, (t.X - mean) / std, t.y).astype("<f8").tobytes()})  # type: ignore[arg-type]
            if "model" in b:
                agg = np.frombuffer(b["model"], "<f8")
                g = agg[:-1] / agg[-1]
            else:
                g = build_model(job, t.n_features).get_flat()
            new = local_update(job, g, (t.X - mean) / std, t.y, r, name)  # type: ignore[arg-type]
            return encode_message({}, {"update": np.concatenate([new * len(t), [len(t)]]).astype("<f8").tobytes()})

        return handle

    ch = LocalChannel({p: handler(p) for p in files}, {p: MemoryState() for p in files})
    traffic: dict[str, dict[str, int]] = {p: {"to_party": 0, "from_party": 0} for p in files}
    rounds_bytes = {p: {"to_party": 0, "from_party": 0} for p in files}

    def call(method: str, payload: bytes, count_round: bool) -> dict[str, dict[str, bytes]]:
        reps = ch.call_all({p: (method, payload) for p in files})
        for p, r in reps.items():
            for d in ([traffic[p], rounds_bytes[p]] if count_round else [traffic[p]]):
                d["to_party"] += len(payload)
                d["from_party"] += len(r)
        return {p: decode_message(r)[1] for p, r in reps.items()}

    t0, c0 = time.perf_counter(), time.process_time()
    reps = call("stats", encode_message({}), False)
    sums = functools.reduce(np.add, (np.frombuffer(b["v"], "<f8") for b in reps.values()))
    agg: np.ndarray | None = None
    t_rounds, c_rounds = time.perf_counter(), time.process_time()
    d = next(iter(tables.values())).n_features
    Xall = np.vstack([t.X for t in tables.values()])
    yall = np.concatenate([t.y for t in tables.values()])
    curve: list[dict[str, Any]] = []  # harness-side: the pooled training log-loss of the global model per round
    for r in range(1, job.total_rounds + 1):
        blobs = {"stats": sums.astype("<f8").tobytes()} if r == 1 else {"model": agg.astype("<f8").tobytes()}  # type: ignore[union-attr]
        reps = call("fit", encode_message({"round": r}, blobs), True)
        agg = functools.reduce(np.add, (np.frombuffer(b["update"], "<f8") for b in reps.values()))
        if job.family == "lr":
            mean, std = standardizer_from_sums(sums, d)
            point = states[next(iter(states))].trial if r > job.rounds else None
            if point is None:
                mm = build_model(job, d)
                mm.set_flat(agg[:-1] / agg[-1])
                pr = mm.predict_proba((Xall - mean) / std)
            else:
                pr = 1.0 / (1.0 + np.exp(-(((Xall - mean) / std) @ point[:-1] + point[-1])))
            # after round r: FedAvg's global model from its sum; in a Newton round the point that round evaluated
            curve.append({"epoch": r, "train_loss": _logloss(yall, pr), "val_loss": None})
    rounds_s, rounds_cpu = time.perf_counter() - t_rounds, time.process_time() - c_rounds
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    mean, std = standardizer_from_sums(sums, d)
    m = build_model(job, d)
    assert agg is not None
    if job.newton:
        final = newton_step(states[next(iter(states))], agg, job.l2)
        assert final.best is not None
        m.set_flat(final.best)
    else:
        m.set_flat(agg[:-1] / agg[-1])
    p = m.predict_proba((test.X - mean) / std)
    return {
        **_score(test.y, p),  # type: ignore[arg-type]
        "seconds": wall,
        "rounds_seconds": rounds_s,
        "cpu_seconds": cpu,
        "rounds_cpu_seconds": rounds_cpu,
        "bytes_per_round": {q: {k: v / job.total_rounds for k, v in rb.items()} for q, rb in rounds_bytes.items()},
        "flat": m.get_flat().tolist(),
        "test_loss": _logloss(test.y, p),  # type: ignore[arg-type]
        "convergence": curve,
    }


def encrypted_fedavg(files: Mapping[str, Path], test_file: Path, test: Table, job: HorizontalJob,
                     out: Path) -> dict[str, Any]:
    rep = run_inprocess(dict(files), test_file, job, out, split_test=True)
    res = rep["result"]
    saved = load_model(next(iter(rep["harness_check"]["models_saved"].values())))
    p = saved.predict_proba(test.X)
    return {
        **_score(test.y, p),  # type: ignore[arg-type]
        "test_loss": _logloss(test.y, p),  # type: ignore[arg-type]
        "global_from_encrypted_histograms": res["global_metrics"],
        "seconds": res["wall_time_s"],
        "rounds_seconds": res["timings"]["rounds_s"],
        "cpu_seconds": rep["cpu_time_s"],
        "rounds_cpu_seconds": rep["rounds_cpu_s"],
        "timings": res["timings"],
        "bytes_per_round": rep["bytes_per_round"],
        "public_context_bytes": res["public_context_bytes"],
        "total_bytes": rep["messages"]["total_bytes"],
        "flat": saved.model.get_flat().tolist(),
        "report": str(out / "report.json"),
        "plot": rep.get("plots", {}).get("roc_ks"),
    }


# --------------------------------------------------------------------------- scenario


def _job(run_id: str, family: str, hp: Mapping[str, Any], algorithm: str = "fedavg") -> HorizontalJob:
    return HorizontalJob(run_id=run_id, parties=list(BANKS), family=family, algorithm=algorithm, **dict(hp))


def _mean_bpr(bpr: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([v[k] for v in bpr.values()])) for k in ("from_party", "to_party")}


N8192 = {"ckks_poly_modulus_degree": 8192, "ckks_coeff_mod_bit_sizes": [60, 40, 40, 60], "ckks_scale_bits": 40}


def scenario(name: str, files: Mapping[str, Path], test_file: Path, out: Path, hp: Mapping[str, Mapping[str, Any]],
             families: list[str], algorithms: list[str], mu_sweep: list[float],
             big_context: bool = False) -> dict[str, Any]:
    test = load_table(test_file, party="test", label_col="y")
    tables = {p: load_table(f, party=p, label_col="y") for p, f in files.items()}
    res: dict[str, Any] = {
        "banks": {p: {"rows": len(t), "default_rate": float(t.y.mean())} for p, t in tables.items()},  # type: ignore[union-attr]
        "sklearn_pooled_lr": sklearn_pooled(tables, test),
        "families": {},
    }
    for fam in families:
        f: dict[str, Any] = {"hyperparameters": _job("x", fam, hp[fam]).to_dict()}
        base = _job(f"{name}-{fam}", fam, hp[fam])
        f["pooled"] = centralized(tables, test, base)
        f["local_only"] = {p: centralized({p: t}, test, base) for p, t in tables.items()}
        for alg in algorithms:
            job = _job(f"{name}-{fam}-{alg}", fam, hp[fam], alg)
            plain = plaintext_fedavg(files, test, job)
            enc = encrypted_fedavg(files, test_file, test, job, out / f"{name}-{fam}-{alg}")
            diff = float(np.max(np.abs(np.asarray(enc.pop("flat")) - np.asarray(plain.pop("flat")))))
            pb, eb = _mean_bpr(plain["bytes_per_round"]), _mean_bpr(enc["bytes_per_round"])
            if fam == "lr":
                before = plaintext_fedavg(files, test, job.model_copy(update={"newton_rounds": 0}))
                res_plot = _plot({"FedAvg + Newton rounds": plain["convergence"],
                                  "before: FedAvg only": before["convergence"]},
                                 res["sklearn_pooled_lr"]["train_loss"],
                                 out / f"{name}-{fam}-{alg}-convergence.png", f"horizontal LR ({name}, {alg})")
            f[alg] = {
                **({"convergence_plot": str(res_plot), "before_fedavg_only_test_loss": before["test_loss"]}
                   if fam == "lr" else {}),
                "plaintext": plain,
                "encrypted": enc,
                "max_abs_param_diff_encrypted_vs_plaintext": diff,
                "overhead": {
                    "wall_time_ratio": enc["seconds"] / plain["seconds"],
                    "rounds_time_ratio": enc["rounds_seconds"] / plain["rounds_seconds"],
                    "cpu_time_ratio": enc["cpu_seconds"] / plain["cpu_seconds"],
                    "rounds_cpu_time_ratio": enc["rounds_cpu_seconds"] / plain["rounds_cpu_seconds"],
                    "bytes_per_round_ratio_up": eb["from_party"] / pb["from_party"],
                    "bytes_per_round_ratio_down": eb["to_party"] / pb["to_party"],
                },
            }
            if big_context:  # the same run with the N=8192 context (DESIGN.md's measured default)
                big = encrypted_fedavg(files, test_file, test, _job(f"{name}-{fam}-{alg}-n8192", fam,
                                                                    {**hp[fam], **N8192}, alg),
                                       out / f"{name}-{fam}-{alg}-n8192")
                big.pop("flat")
                f[alg]["encrypted_n8192"] = big
        if mu_sweep:
            f["fedprox_mu_sweep_plaintext"] = {
                str(mu): {k: v for k, v in plaintext_fedavg(files, test, _job("sweep", fam, {**hp[fam], "prox_mu": mu},
                                                                               "fedprox")).items()
                          if k in ("auc", "ks")}
                for mu in mu_sweep
            }
        res["families"][fam] = f
    return res


def _plot(curves: Mapping[str, list[dict[str, Any]]], opt: float, path: Path, title: str) -> Path:
    """Pooled training log-loss per round (plaintext FedAvg + Newton, = the encrypted run's) vs the pooled optimum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, gap) = plt.subplots(1, 2, figsize=(12, 4.2))
    for label, curve in curves.items():
        r = [c["epoch"] for c in curve]
        ax.plot(r, [c["train_loss"] for c in curve], marker="o", ms=3, label=f"{label} (pooled training log-loss)")
        gap.semilogy(r, [max(abs(c["train_loss"] - opt), 1e-10) for c in curve], marker="o", ms=3, label=label)
    ax.axhline(opt, color="k", ls="--", lw=1, label=f"pooled optimum (sklearn) {opt:.5f}")
    ax.set_ylim(opt - 0.005, opt + 0.03)
    ax.set_xlabel("round (FedAvg rounds, then Newton rounds)")
    ax.set_ylabel("log-loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    gap.legend(fontsize=8)
    gap.set_xlabel("round")
    gap.set_ylabel("|train log-loss - pooled optimum's|")
    gap.set_title("distance to the pooled optimum (log scale)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- printing


def _kb(b: float) -> str:
    return f"{b / 1024:,.1f} KB" if b < 1024 * 1024 else f"{b / 1024 / 1024:,.2f} MB"


def print_scenario(title: str, r: Mapping[str, Any]) -> None:
    print(f"\n=== {title} ===")
    print("banks: " + ", ".join(f"{p} {v['rows']} rows, default rate {v['default_rate']:.3f}" for p, v in r["banks"].items()))
    hdr = f"{'model':<44} {'AUC':>7} {'KS':>7} {'wall s':>7} {'CPU s':>7} {'up/party/round':>15} {'down/party/round':>17}"
    s = r["sklearn_pooled_lr"]
    for fam, f in r["families"].items():
        print(f"\n[{fam}]  hyper-parameters: " + ", ".join(
            f"{k}={f['hyperparameters'][k]}" for k in ("rounds", "newton_rounds", "local_epochs", "lr", "batch_size",
                                                        "prox_mu")))
        print(hdr)
        print("-" * len(hdr))
        if fam == "lr":
            print(f"{'pooled plaintext, sklearn LR (' + str(s['rows']) + ' rows)':<44} {s['auc']:7.4f} {s['ks']:7.4f} {s['seconds']:7.2f} {s['cpu_seconds']:7.2f}")
        pl = f["pooled"]
        print(f"{'pooled plaintext, same model+optimizer':<44} {pl['auc']:7.4f} {pl['ks']:7.4f} {pl['seconds']:7.2f} {pl['cpu_seconds']:7.2f}")
        for p, v in f["local_only"].items():
            print(f"{'local only: ' + p:<44} {v['auc']:7.4f} {v['ks']:7.4f} {v['seconds']:7.2f} {v['cpu_seconds']:7.2f}")
        for alg in ("fedavg", "fedprox"):
            if alg not in f:
                continue
            a = f[alg]
            for kind in ("plaintext", "encrypted"):
                v = a[kind]
                b = _mean_bpr(v["bytes_per_round"])
                label = f"{kind} {'FedAvg' if alg == 'fedavg' else 'FedProx'}" + (", CKKS N=4096" if kind == "encrypted" else "")
                print(f"{label:<44} {v['auc']:7.4f} {v['ks']:7.4f} {v['seconds']:7.2f} {v['cpu_seconds']:7.2f} {_kb(b['from_party']):>15} {_kb(b['to_party']):>17}")
            if "encrypted_n8192" in a:
                v = a["encrypted_n8192"]
                b = _mean_bpr(v["bytes_per_round"])
                label = f"encrypted {'FedAvg' if alg == 'fedavg' else 'FedProx'}, CKKS N=8192"
                print(f"{label:<44} {v['auc']:7.4f} {v['ks']:7.4f} {v['seconds']:7.2f} {v['cpu_seconds']:7.2f} {_kb(b['from_party']):>15} {_kb(b['to_party']):>17}")
            if fam == "lr":
                print(f"  test log-loss vs the pooled optimum (sklearn, C = 1/(l2·N)) {s['test_loss']:.5f}: "
                      f"encrypted {a['encrypted']['test_loss']:.5f} ({100 * (a['encrypted']['test_loss'] / s['test_loss'] - 1):+.3f} %), "
                      f"before (plaintext FedAvg only) {a['before_fedavg_only_test_loss']:.5f} "
                      f"({100 * (a['before_fedavg_only_test_loss'] / s['test_loss'] - 1):+.3f} %), "
                      f"plaintext {a['plaintext']['test_loss']:.5f}; rounds {f['hyperparameters']['rounds']} FedAvg + "
                      f"{f['hyperparameters']['newton_rounds']} Newton")
                if "convergence_plot" in a:
                    print(f"  convergence plot: {a['convergence_plot']}")
            g = a["encrypted"]["global_from_encrypted_histograms"]
            o = a["overhead"]
            print(f"{'  global AUC/KS from encrypted histograms':<44} {g['auc']:7.4f} {g['ks']:7.4f}")
            print(f"  encryption overhead vs plaintext {alg}: CPU x{o['cpu_time_ratio']:.1f} (rounds only "
                  f"x{o['rounds_cpu_time_ratio']:.1f}), wall x{o['wall_time_ratio']:.1f}, bytes/round up "
                  f"x{o['bytes_per_round_ratio_up']:.0f}, down x{o['bytes_per_round_ratio_down']:.0f}; "
                  f"max |param diff| {a['max_abs_param_diff_encrypted_vs_plaintext']:.1e}")
        if "fedprox_mu_sweep_plaintext" in f:
            print("  FedProx mu sweep (plaintext, AUC): " + ", ".join(
                f"mu={mu}: {v['auc']:.4f}" for mu, v in f["fedprox_mu_sweep_plaintext"].items()))


# --------------------------------------------------------------------------- main


def _heavy_files(out: Path) -> dict[str, Path]:
    from simulations.generator import generate_heavy_tailed as heavy_tailed

    df = heavy_tailed(6000, seed=1)
    out.mkdir(parents=True, exist_ok=True)
    train, test = df[~df["test"]].drop(columns="test"), df[df["test"]].drop(columns="test")
    test.to_csv(out / "test.csv", index=False)
    paths = {}
    for i, p in enumerate(BANKS):
        paths[p] = out / f"{p}.csv"
        train.iloc[i::len(BANKS)].to_csv(paths[p], index=False)
    return paths


def _noniid_files(files: Mapping[str, Path], out: Path, **kw: Any) -> dict[str, Path]:
    df = pd.concat([pd.read_csv(f, dtype={"id": str}) for f in files.values()], ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for p, part in zip(BANKS, partition(df, len(BANKS), seed=0, **kw)):
        paths[p] = out / f"{p}.csv"
        part.to_csv(paths[p], index=False)
    return paths


def secagg_cost(files: Mapping[str, Path], test_file: Path, out: Path, family: str = "lr") -> None:
    """Round time, hops and bytes of the encrypted protocol with no dropout allowed and with one (self-masks and
    an unmask hop per aggregation).  Uses only APIs main @ d103525 also has, so the same function measures the
    scheme before secure aggregation (run this file from an export of that commit)."""
    for mp in (None, 2):
        job = {"family": family, "min_parties": mp}
        t = time.perf_counter()
        rep = run_inprocess(files, test_file, job, out / f"secagg-{family}-{mp}")
        wall = time.perf_counter() - t
        res = rep["result"]
        unmask_hops = len(res.get("secagg", {}).get("unmasked", []))
        per_round = [h["seconds"] for h in res["history"]]
        to_p = sum(d["to_party"] for m in res["traffic"].values() for d in m.values())
        from_p = sum(d["from_party"] for m in res["traffic"].values() for d in m.values())
        unmask = res["traffic"].get("unmask", {})
        print(f"{family} min_parties={mp}: wall {wall:.1f} s, {len(per_round)} rounds, mean round "
              f"{np.mean(per_round):.2f} s, unmask hops {unmask_hops}, bytes to banks {to_p / 1e6:.2f} MB, "
              f"from banks {from_p / 1e6:.2f} MB, of which unmask {sum(d['from_party'] + d['to_party'] for d in unmask.values()) / 1e3:.1f} kB, "
              f"global AUC {res['global_metrics']['auc']:.4f}, load {os.getloadavg()[0]:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("bench-out/horizontal"))
    ap.add_argument("--families", default="lr,mlp")
    ap.add_argument("--skip-noniid", action="store_true")
    ap.add_argument("--skip-heavy", action="store_true")
    ap.add_argument("--secagg-cost", action="store_true", help="only the secure-aggregation cost runs")
    a = ap.parse_args(argv)
    fams = [f for f in a.families.split(",") if f]
    files = {p: a.data_dir / f"default_credit_homo_{p}.csv" for p in BANKS}
    test_file = a.data_dir / "default_credit_homo_test.csv"
    for f in [*files.values(), test_file]:
        if not f.exists():
            raise SystemExit(f"missing data file {f} (expected the shared credit data beside the project)")
    if a.secagg_cost:
        for fam in fams:
            secagg_cost(files, test_file, a.out, fam)
        return 0
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "command": "python -m simulations.bench_horizontal " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_at_start": os.getloadavg()},
    }
    results["iid"] = scenario("iid", files, test_file, a.out, IID, fams, ["fedavg"], [], big_context=True)
    print_scenario("IID: the three given banks (8,000 rows each), test 6,000 rows", results["iid"])
    if not a.skip_heavy:  # raw heavy-tailed amounts, where FedAvg alone stops short of the pooled optimum
        heavy = _heavy_files(a.out / "data-heavy")
        results["heavy"] = scenario("heavy", heavy, a.out / "data-heavy" / "test.csv", a.out, IID, ["lr"],
                                    ["fedavg"], [])
        print_scenario("heavy-tailed raw amounts: simulations.generator.generate_heavy_tailed(6000, seed=1), 3 banks x 1,500 rows",
                       results["heavy"])
    if not a.skip_noniid:
        lab = _noniid_files(files, a.out / "data-noniid-label", mode="label", skew=0.9)
        results["noniid_label"] = scenario("noniid-label", lab, test_file, a.out, NONIID, fams,
                                           ["fedavg", "fedprox"], [0.01, 0.1, 0.3])
        print_scenario("non-IID by label rate (same 24,000 rows; skew 0.9)", results["noniid_label"])
        lim = _noniid_files(files, a.out / "data-noniid-limit", mode="feature", feature="x13", skew=0.9)
        results["noniid_limit"] = scenario("noniid-limit", lim, test_file, a.out, NONIID, fams,
                                           ["fedavg", "fedprox"], [0.01, 0.1, 0.3])
        print_scenario("non-IID by credit limit (x13 = LIMIT_BAL; same 24,000 rows; skew 0.9)", results["noniid_limit"])
    results["total_seconds"] = time.perf_counter() - t0
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    (a.out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    lr = results["iid"]["families"].get("lr")
    print(f"\ntotal {results['total_seconds']:.0f} s; results in {a.out / 'results.json'}")
    if lr:
        auc = lr["fedavg"]["encrypted"]["auc"]
        print(f"target: encrypted FedAvg LR test AUC >= 0.727 -> {auc:.4f} {'PASS' if auc >= 0.727 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
