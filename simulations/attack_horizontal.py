"""Update reconstruction in horizontal FedAvg by the coordinator colluding with one bank (issue 12, item 3).

The attacker holds everything the coordinator saw (every message of a real in-process run) and
everything the colluding bank holds (the shared CKKS secret key, its own mask keys, self-mask seeds
and the Shamir shares it received).  It tries to recover a target bank's round update:

* old scheme (main @ d103525): the bank sent ``Enc(update)`` under the shared key, so the colluding
  bank's key decrypts the coordinator's copy: exact recovery (we replay exactly that);
* secure aggregation: the colluder decrypts the target's ciphertext, removes the one pairwise mask it
  shares with the target, and decodes what is left; it also interpolates the one share it holds of
  the target's self-mask seed.

Reported beside two no-information baselines: the colluder's own update (what it knows anyway) and
the sum minus its own divided by n-1 (what the allowed leakage, the sum, gives).

    python -m simulations.attack_horizontal [--rows 1500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from crypto import ckks, secagg
from fedcredit.protocols.horizontal import (
    HorizontalJob,
    decode_exact,
    decode_message,
    run_coordinator,
    secagg_context,
    secagg_plan,
    secagg_tags,
    value_spec,
)
from fedcredit.transport import WireRecord
from simulations.horizontal_sim import make_local_federation


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def rel_error(est: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(est - truth)) / max(float(np.linalg.norm(truth)), 1e-300)


def _stored(kept: Mapping[str, bytes], run_id: str, what: str) -> bytes:
    return kept[f"hz-{run_id}-{what}"]


def old_scheme_recovery(kept: Mapping[str, bytes], run_id: str, target_update: np.ndarray,
                        public_ctx: bytes) -> np.ndarray:
    """What main's scheme let the pair do: the target's ``Enc(update)`` (the coordinator's copy) decrypted by
    the colluder's copy of the shared key.  Replayed: the ciphertext is built exactly as main built it."""
    pub = ckks.load_public(public_ctx)
    blob = ckks.encrypt_vector(pub, target_update)  # main: _encrypt(ctx, "update", vec) = ckks.encrypt_vector
    return ckks.decrypt_vector(ckks.load_secret(_stored(kept, run_id, "ckks")), blob)


def secagg_recovery(job: HorizontalJob, kept: Mapping[str, bytes], colluder: str, target: str,
                    target_blob: bytes, tag: str, n_values: int) -> dict[str, Any]:
    """The colluder's best decoding of the target's masked ciphertext (its own pairwise mask removed)."""
    plan = secagg_plan(job)
    ctx = ckks.load_secret(_stored(kept, job.run_id, "ckks"))
    y = np.rint(ckks.decrypt_vector(ctx, target_blob)).astype(np.int64)
    i = secagg_tags(job).index(tag)
    _, own = decode_message(_stored(kept, job.run_id, "sa-own"))
    _, bundle = decode_message(_stored(kept, job.run_id, f"sa-from-{target}"))
    target_pub = bundle["pub"][32 * i : 32 * (i + 1)]
    lo, hi = sorted((colluder, target))
    m = secagg.expand(secagg.pair_seed(own[f"s:{tag}"], target_pub,
                                       secagg_context(job, tag) + b"/" + f"{lo}|{hi}".encode()), y.shape[0], plan)
    sign = 1 if target < colluder else -1  # the target added sign(target, colluder)·m
    rest = np.mod(y - sign * m, plan.modulus)
    rest = np.where(rest >= plan.modulus // 2, rest - plan.modulus, rest)
    est = decode_exact(rest.astype(np.float64), n_values, value_spec(plan))
    w = secagg.SHARE_BYTES
    one_share = bundle["b"][w * i : w * (i + 1)]
    return {"estimate": est, "self_seed_guess": secagg.combine_unchecked([one_share])}


def run_attack(train: Mapping[str, Path], out: Path, *, rounds: int = 3, min_parties: int | None = 2,
               colluder: str | None = None, target: str | None = None) -> dict[str, Any]:
    banks = sorted(train)
    colluder, target = colluder or banks[1], target or banks[0]
    plain: dict[str, list[tuple[str, np.ndarray]]] = {p: [] for p in banks}
    fed = make_local_federation(train, {p: None for p in banks}, out,
                                tap=lambda party, what, v: plain[party].append((what, v)))
    records: list[WireRecord] = []
    fed.channel.observers.append(records.append)
    kept: dict[str, bytes] = {}  # the colluder's state as written (its keys are deleted when its part ends)
    st = fed.states[colluder]
    put = st.put

    def recording_put(key: str, value: bytes) -> None:
        kept[key] = value
        put(key, value)

    st.put = recording_put  # type: ignore[method-assign]
    job = HorizontalJob(run_id="attack", parties=banks, rounds=rounds, newton_rounds=0, min_parties=min_parties)
    res = run_coordinator(fed.channel, job)
    pub_ctx = next(b["public_ctx"] for r in records if r.receiver == "coordinator"
                   for b in [decode_message(r.payload)[1]] if "public_ctx" in b)
    fits = {(r.sender, decode_message(r.payload)[0].get("round")): decode_message(r.payload)[1]["update"]
            for r in records if r.receiver == "coordinator" and r.tag.startswith("fit")
            and "update" in decode_message(r.payload)[1]}
    rows: list[dict[str, Any]] = []
    for rnd in range(1, rounds + 1):
        truth = {p: [v for w, v in plain[p] if w == "update"][rnd - 1] for p in banks}
        x = truth[target]
        old = old_scheme_recovery(kept, job.run_id, x, pub_ctx)
        new = secagg_recovery(job, kept, colluder, target, fits[(target, rnd)], f"fit-{rnd}", x.shape[0])
        own = truth[colluder]
        from_sum = (sum(truth.values()) - own) / (len(banks) - 1)
        rows.append({
            "round": rnd,
            "old_rel_error": rel_error(old, x), "old_cosine": cosine(old, x),
            "secagg_rel_error": rel_error(new["estimate"], x), "secagg_cosine": cosine(new["estimate"], x),
            "baseline_own_rel_error": rel_error(own, x), "baseline_own_cosine": cosine(own, x),
            "baseline_sum_rel_error": rel_error(from_sum, x), "baseline_sum_cosine": cosine(from_sum, x),
            "self_seed_guess": new["self_seed_guess"],
        })
    return {"banks": banks, "colluder": colluder, "target": target, "threshold": job.threshold,
            "max_dropouts": job.max_dropouts, "n_values": len(plain[target][1][1]), "rounds": rows,
            "dropped": res.dropped}


def main(argv: list[str] | None = None) -> None:
    import tempfile

    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--rows", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        train = {}
        for p in ("guest", "host_1", "host_2"):
            f = Path(d) / f"{p}.csv"
            pd.read_csv(a.data / f"default_credit_homo_{p}.csv").iloc[: a.rows].to_csv(f, index=False)
            train[p] = f
        for mp in (None, 2):
            r = run_attack(train, Path(d) / f"out-{mp}", rounds=a.rounds, min_parties=mp)
            print(f"colluder={r['colluder']} target={r['target']} n=3 t={r['threshold']} "
                  f"max_dropouts={r['max_dropouts']} ({r['n_values']} values per update)")
            print(f"{'round':>5} | {'old: err':>9} {'cos':>6} | {'secagg: err':>12} {'cos':>7} | "
                  f"{'own upd: err':>12} {'cos':>6} | {'(sum-own)/2: err':>16} {'cos':>6}")
            for x in r["rounds"]:
                print(f"{x['round']:>5} | {x['old_rel_error']:>9.2e} {x['old_cosine']:>6.3f} | "
                      f"{x['secagg_rel_error']:>12.3e} {x['secagg_cosine']:>7.3f} | "
                      f"{x['baseline_own_rel_error']:>12.3f} {x['baseline_own_cosine']:>6.3f} | "
                      f"{x['baseline_sum_rel_error']:>16.3f} {x['baseline_sum_cosine']:>6.3f}")
    print(json.dumps({"note": "err = |est - truth| / |truth| of the target's n_k-weighted update"}))


if __name__ == "__main__":
    main()
