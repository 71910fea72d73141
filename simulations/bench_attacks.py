"""Attacks on the vertical protocols, on real transcripts of the benchmark split (issue 12 item 3).

    python -m simulations.bench_attacks                 # --data ../shared/data --figures fedcredit/attack_figures.json
    python -m simulations.bench_attacks --no-vlr --sb-dp-only   # SecureBoost with label DP only

Vertical LR (label party = guest, 13 features + labels; passive = host, 10 features; test = the
6,000 homo test ids, train = the other 24,000), each configuration run once for real (CKKS,
in-process roles, every message observed):

* passive party's **label inference** (AUC on its training rows; best of gradient inversion and
  gradient direction over all steps it saw), beside the no-information AUC (random score) and
  the AUC of its own model part ``X_k w_k`` (what the trained model tells it by design);
* label party's **feature reconstruction** from the summed partial logits: median R² over the
  passive's 10 features, a linear map fitted on 1 % known rows, beside the same fit from its own
  features (no protocol) and the column-space bound (every row known).

Small-batch configurations (below ``min_batch`` = 512, which the label party refuses by default)
run on the first 2,000 / 600 aligned rows with ``min_batch`` lowered: they show the attack works.

SecureBoost in three configurations: ``hidden-splits`` (the default: membership hiding and
``passive_splits = "hidden"``, the passive party never learns which candidate won), ``hide_membership``
(the same with ``passive_splits = "revealed"``) and ``per_level`` (which also reveals the rows of each
computed node when the label party picks the lane layout): passive label inference from the
partitions it can read (and the revealed node rows); label party's reconstruction of passive
features from the left/right bits.

Defences: ``min_batch`` (the label party refuses batches below 512) and label DP (``[model.dp]``,
fedcredit/dp.py, ε by the RDP accountant): for vertical LR Gaussian noise on every residual at
ε = 8 and 1; for SecureBoost noise on every gradient at ε = 8, 16 and 64 (``--sb-eps``), both modes.
The figures the privacy report shows are written to ``--figures``: the entries a run measured
replace the same protocol / mode / defence, every other entry is kept with the command that
measured it (so ``--no-vlr --sb-dp-only`` adds the SecureBoost label-DP rows alone).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from fedcredit.data import Table, load_table
from fedcredit.params import SecureBoostConfig, VerticalLRConfig
from simulations.attacks import secureboost as sba
from simulations.attacks import vertical_lr as vla

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "fedcredit" / "attack_figures.json"
BAR = 0.55  # issue 12: passive-party label inference AUC <= 0.55 in the default configuration


def _tables(data: Path) -> tuple[Table, Table, set[str]]:
    test_ids = set(load_table(data / "default_credit_homo_test.csv", party="guest", feature_cols=[]).ids)
    guest = load_table(data / "default_credit_hetero_guest.csv", party="guest", label_col="y")
    host = load_table(data / "default_credit_hetero_host.csv", party="host")
    return guest, host, test_ids


def _head(guest: Table, host: Table, n: int) -> tuple[Table, Table]:
    ids = [i for i in guest.ids if i in set(host.ids)][:n]
    return guest.align(ids), host.align(ids)


#: (mode key, defence key, description, rows (None = benchmark split), config overrides)
VLR_RUNS: list[tuple[str, str, str, int | None, dict[str, Any]]] = [
    ("default", "none", "passive_weights = \"plaintext\", otherwise defaults: batch_size 4096 (3,600 rows/step here), "
     "10 mini-batch epochs, then full-batch steps", None, {}),
    ("default", "shared-weights", "defaults: passive_weights = \"shared\" (the passive's weights are additive shares, "
     "its final part Enc(w_k); attacks on its gradient shares and weight share)", None, {"passive_weights": "shared"}),
    ("default", "label-dp eps=8", "defaults + [model.dp] epsilon = 8 (label DP on every residual; DP needs validation_fraction 0)", None,
     {"validation_fraction": 0.0, "dp": {"epsilon": 8.0}}),
    ("default", "label-dp eps=1", "defaults + [model.dp] epsilon = 1", None, {"validation_fraction": 0.0, "dp": {"epsilon": 1.0}}),
    ("batch_size=512", "none", "batch_size 512 (= min_batch, the smallest allowed), then full-batch steps", None,
     {"batch_size": 512}),
    ("batch_size=0", "none", "full batch only (batch_size 0)", None, {"batch_size": 0}),
    ("batch_size=64", "none", "batch_size 64, min_batch lowered to 1 (refused by default), 1 epoch, 2,000 rows", 2000,
     {"batch_size": 64, "min_batch": 1, "max_epochs": 1, "full_batch_steps": 0}),
    ("batch_size=10", "none", "batch_size 10 = the passive's feature count, min_batch 1 (refused by default), "
     "1 epoch, 2,000 rows", 2000, {"batch_size": 10, "min_batch": 1, "max_epochs": 1, "full_batch_steps": 0}),
    ("batch_size=10", "label-dp eps=1", "as batch_size=10, + [model.dp] epsilon = 1", 2000,
     {"batch_size": 10, "min_batch": 1, "max_epochs": 1, "full_batch_steps": 0, "validation_fraction": 0.0,
      "dp": {"epsilon": 1.0}}),
    ("batch_size=1", "none", "batch_size 1, min_batch 1 (refused by default), 1 epoch, 600 rows", 600,
     {"batch_size": 1, "min_batch": 1, "max_epochs": 1, "full_batch_steps": 0}),
]


def run_vlr(data: Path, only: set[str] | None) -> list[dict[str, Any]]:
    guest, host, test_ids = _tables(data)
    out = []
    for mode, defence, desc, rows, over in VLR_RUNS:
        if only and mode not in only and f"{mode}/{defence}" not in only:
            continue
        g, h = (guest, host) if rows is None else _head(guest, host, rows)
        # every row but "shared-weights" is the plaintext-weights mode (the default before issue 12's switch; its
        # defence key "none" is what fedcredit/privacy.py looks up for a plaintext-weights run)
        cfg = VerticalLRConfig(**{"passive_weights": "plaintext", **over})
        t0 = time.perf_counter()
        tr = vla.record(g, h, cfg, test_ids=test_ids if rows is None else None)
        secs = time.perf_counter() - t0
        li, fr = vla.label_inference(tr), vla.reconstruct_features(tr)
        out.append({"mode": mode, "defence": defence, "description": desc, "seconds": round(secs, 1), "test_auc": tr.test_auc,
                    "bytes_sent": tr.bytes_sent, "label_inference": li, "feature_reconstruction": fr})
        print(f"  vertical LR {mode} / {defence}: {secs:.1f} s, test AUC {tr.test_auc}, {li['n_steps']} steps of {li['batch_size']} rows; passive "
              f"attack AUC {li['best_transcript_attack_auc']:.4f} (own model part {li['own_model_part_auc']:.4f}); "
              f"label R² {fr['r2_median_from_partials']:.3f}; random-direction band ±"
              f"{li['random_direction_auc_p95_deviation']:.3f}; bytes sent {tr.bytes_sent}", flush=True)
    return out


#: SecureBoost label DP at these target ε (docs/privacy.md's AUC-vs-ε figures: 16 costs 0.04 AUC, 64 0.009)
SB_EPS = (8.0, 16.0, 64.0)


def sb_defence(eps: float | None) -> str:
    """The figures' defence key of a SecureBoost run: ``none`` or ``label-dp eps=16`` (fedcredit/privacy.py reads it)."""
    return "none" if eps is None else f"label-dp eps={eps:g}"


#: the SecureBoost configurations attacked (figure mode -> config overrides); the first is the default
SB_MODES: dict[str, dict[str, Any]] = {
    "hidden-splits": {"passive_splits": "hidden"},
    "hide_membership": {"passive_splits": "revealed"},
    "per_level": {"histogram_mode": "per_level"},
}


def run_sb(data: Path, trees: int, eps_list: tuple[float, ...] = SB_EPS, with_none: bool = True,
           modes: tuple[str, ...] = tuple(SB_MODES)) -> list[dict[str, Any]]:
    g = pd.read_csv(data / "default_credit_hetero_guest.csv", dtype={"id": str})
    h = pd.read_csv(data / "default_credit_hetero_host.csv", dtype={"id": str})
    test_ids = set(pd.read_csv(data / "default_credit_homo_test.csv", dtype={"id": str}, usecols=["id"])["id"])
    out = []
    runs: list[float | None] = ([None] if with_none else []) + list(eps_list)
    for mode in modes:
        for eps in runs:
            dp_over: dict[str, Any] = {} if eps is None else {"dp": {"epsilon": eps}}
            cfg = SecureBoostConfig(n_trees=trees, **SB_MODES[mode], **dp_over)
            t0 = time.perf_counter()
            tr = sba.record(g, h, cfg, test_ids=test_ids)
            secs = time.perf_counter() - t0
            li, fr = sba.label_inference(tr), sba.reconstruct_features(tr)
            defence = sb_defence(eps)
            print(f"  SecureBoost {mode} / {defence}: {secs:.1f} s, test AUC {tr.test_auc}, {li['passive_splits']} "
                  f"passive splits ({li['partitions_readable_by_passive']} partitions readable by the passive), "
                  f"{li['revealed_nodes']} nodes' rows revealed; passive attack AUC {li['best_auc']:.4f} "
                  f"{li['attacks']} (its best own feature with the labels' sign: {li['own_best_feature_auc']:.4f}); "
                  f"label R² {fr['r2_median_from_bits']:.3f}", flush=True)
            desc = f"{trees} trees, depth {cfg.max_depth}, {cfg.histogram_mode}, {cfg.passive_splits} splits" + ("" if eps is None else
                                                                        f" + [model.dp] epsilon = {eps:g} (noise on every gradient)")
            out.append({"mode": mode, "defence": defence, "description": desc, "seconds": round(secs, 1),
                        "test_auc": tr.test_auc, "label_inference": li, "feature_reconstruction": fr})
    return out


def merge(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """``new`` figures plus every ``old`` entry this run did not measure (same protocol / mode / defence).

    Why: a partial run (one protocol, the DP rows only) must not drop the others' figures; an
    entry kept from an earlier run keeps the command that measured it."""
    def key(e: dict[str, Any]) -> tuple[Any, ...]:
        return e.get("protocol"), e.get("mode"), e.get("defence")

    measured = {key(e) for e in new["entries"]}
    kept = [{"command": old.get("command", "unknown"), **e} for e in old.get("entries", []) if key(e) not in measured]
    done = {(e["protocol"], e["defence"] != "none") for e in new["entries"] + kept}
    not_measured = [w for w in old.get("not_measured", []) if not (w == "SecureBoost with label DP"
                                                                      and ("secureboost", True) in done)]
    return {**new, "not_measured": not_measured, "entries": new["entries"] + kept}


def figures(vlr: list[dict[str, Any]], sb: list[dict[str, Any]], command: str) -> dict[str, Any]:
    """The shipped figures (fedcredit/attack_figures.json): one entry per protocol / mode / defence / attack."""
    entries = []
    for proto, runs in (("vertical-lr", vlr), ("secureboost", sb)):
        for r in runs:
            li, fr = r["label_inference"], r["feature_reconstruction"]
            base = {"protocol": proto, "mode": r["mode"], "defence": r.get("defence", "none"),
                    "configuration": r["description"], "joint_test_auc": r.get("test_auc"), "command": command}
            if proto == "vertical-lr":
                entries.append({**base, "attacker": "passive party", "attack": "label inference (gradient inversion "
                                "/ direction, best)", "metric": "AUC", "value": round(li["best_transcript_attack_auc"], 4),
                                "baseline": round(li["no_information_auc"], 4), "baseline_name": "no information",
                                "reference": round(li["own_model_part_auc"], 4),
                                "reference_name": "its weight share X_k·C·a_k (shared weights: its part is Enc(w_k))"
                                if r.get("defence") == "shared-weights" else "its own model part X_k·w_k (by design)",
                                "random_direction_band": round(li.get("random_direction_auc_p95_deviation", 0.0), 4)})
                entries.append({**base, "attacker": "label party", "attack": "feature reconstruction from summed "
                                "partial logits (1 % known rows)", "metric": "median R²",
                                "value": round(fr["r2_median_from_partials"], 4),
                                "baseline": round(fr["r2_median_from_own_features"], 4),
                                "baseline_name": "from its own features", "reference": round(fr["r2_median_column_space"], 4),
                                "reference_name": "column-space bound (every row known)"})
            else:
                hidden = r["mode"] == "hidden-splits"
                entries.append({**base, "attacker": "passive party", "attack": "label inference (minority side of "
                                + ("the partitions it can read: none, its splits are hidden" if hidden else
                                   "its winning splits") + (", revealed node membership" if r["mode"] == "per_level"
                                                            else "") + "; best sign)", "metric": "AUC",
                                "value": round(li["best_auc"], 4),
                                "baseline": round(li["no_information_auc"], 4), "baseline_name": "no information",
                                "reference": li.get("own_best_feature_auc"),
                                "reference_name": "its best own feature with the labels' sign (needs the labels)"})
                entries.append({**base, "attacker": "label party", "attack": "feature reconstruction from passive "
                                "split bits (1 % known rows)", "metric": "median R²",
                                "value": round(fr["r2_median_from_bits"], 4),
                                "baseline": round(fr["r2_median_from_own_features"], 4),
                                "baseline_name": "from its own features"})
    return {"format": "fedcredit-attack-figures/1", "command": command,
            "data": "benchmark split: default_credit_hetero_{guest,host}.csv, test = homo test ids",
            "not_measured": [],
            "entries": entries}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--figures", type=Path, default=FIGURES, help="where to write the figures the report ships")
    ap.add_argument("--out", type=Path, default=Path("/tmp/fedcredit_bench_attacks"))
    ap.add_argument("--vlr", default="", help="comma-separated vertical LR modes to run (default: all)")
    ap.add_argument("--sb-trees", type=int, default=30)
    ap.add_argument("--sb-eps", default=",".join(f"{e:g}" for e in SB_EPS),
                    help="SecureBoost label-DP target ε to attack (comma-separated; empty: none)")
    ap.add_argument("--sb-dp-only", action="store_true", help="SecureBoost: only the label-DP runs")
    ap.add_argument("--sb-modes", default=",".join(SB_MODES), help=f"SecureBoost configurations ({', '.join(SB_MODES)})")
    ap.add_argument("--no-sb", action="store_true")
    ap.add_argument("--no-vlr", action="store_true", help="skip vertical LR (its figures are kept)")
    ap.add_argument("--reuse-vlr", action="store_true", help="take the vertical LR results from --out/bench_attacks.json")
    a = ap.parse_args()
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    print(f"attacks on real transcripts of the benchmark split (load average {' '.join(load)})", flush=True)
    if a.no_vlr:
        vlr: list[dict[str, Any]] = []
    elif a.reuse_vlr:
        vlr = json.loads((a.out / "bench_attacks.json").read_text())["vertical_lr"]
        print(f"  vertical LR: {len(vlr)} runs from {a.out / 'bench_attacks.json'}")
    else:
        vlr = run_vlr(a.data, set(a.vlr.split(",")) if a.vlr else None)
    eps = tuple(float(x) for x in a.sb_eps.split(",") if x.strip())
    modes = tuple(m for m in a.sb_modes.split(",") if m)
    unknown = [m for m in modes if m not in SB_MODES]
    if unknown:
        ap.error(f"--sb-modes: unknown {unknown}; known: {list(SB_MODES)}")
    sb = [] if a.no_sb else run_sb(a.data, a.sb_trees, eps, with_none=not a.sb_dp_only, modes=modes)
    print()
    print(f"{'protocol / configuration':44s} {'attacker: attack':46s} {'value':>7s} {'baseline':>9s} {'reference':>9s}")
    for r in vlr:
        li, fr = r["label_inference"], r["feature_reconstruction"]
        print(f"{'vertical LR ' + r['mode'] + ' / ' + r['defence']:44s} {'passive: label inference AUC':46s} "
              f"{li['best_transcript_attack_auc']:7.4f} {li['no_information_auc']:9.4f} {li['own_model_part_auc']:9.4f}")
        print(f"{'':44s} {'label: feature reconstruction median R²':46s} {fr['r2_median_from_partials']:7.3f} "
              f"{fr['r2_median_from_own_features']:9.3f} {fr['r2_median_column_space']:9.3f}")
    for r in sb:
        li, fr = r["label_inference"], r["feature_reconstruction"]
        print(f"{'SecureBoost ' + r['mode'] + ' / ' + r['defence']:44s} {'passive: label inference AUC (best sign)':46s} "
              f"{li['best_auc']:7.4f} {li['no_information_auc']:9.4f} {'':>9s}   joint test AUC {r['test_auc']:.4f}")
        print(f"{'':44s} {'label: feature reconstruction median R²':46s} {fr['r2_median_from_bits']:7.3f} "
              f"{fr['r2_median_from_own_features']:9.3f} {'':>9s}")
    print("baseline: no-information AUC (random score) / R² from the label party's own features; reference: the "
          "passive's own model part (AUC) / the column-space bound (R²)")
    # the default configuration: vertical LR with shared weights, SecureBoost with hidden splits (since issue 12)
    default = next((r for r in vlr if r["mode"] == "default" and r["defence"] == "shared-weights"), None)
    if default is not None:
        v = default["label_inference"]["best_transcript_attack_auc"]
        print(f"goal: passive label inference AUC <= {BAR} in the default configuration (vertical LR): {v:.4f} -> "
              f"{'met' if v <= BAR else 'NOT met'}")
    sb_default = next((r for r in sb if r["mode"] == "hidden-splits" and r["defence"] == "none"), None)
    if sb_default is not None:
        v = sb_default["label_inference"]["best_auc"]
        print(f"goal: passive label inference AUC <= {BAR} in the default configuration (SecureBoost): {v:.4f} -> "
              f"{'met' if v <= BAR else 'NOT met'}")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench_attacks.json").write_text(json.dumps({"vertical_lr": vlr, "secureboost": sb}, indent=2))
    if vlr or sb:  # the entries measured here replace theirs; every other entry is kept (merge)
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        args = " ".join(sys.argv[1:])
        cmd = f"python -m simulations.bench_attacks{' ' + args if args else ''} (at {rev.strip() or 'unknown'})"
        old = json.loads(a.figures.read_text()) if a.figures.exists() else {}
        a.figures.write_text(json.dumps(merge(figures(vlr, sb, cmd), old), indent=2) + "\n")
        print(f"figures written to {a.figures}")


if __name__ == "__main__":
    main()
