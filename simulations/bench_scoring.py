"""Benchmark: joint online scoring of vertical SecureBoost and LR models over mutual TLS on 127.0.0.1.

Setup (all real parts): a federation CA; the label party ``guest`` and the passive
party ``host`` each get a certificate, a party config with ``[scoring]``, and a
model store holding a signed artifact of their model part.  Each party's scoring
server runs in **its own process** (``party.scoring.start_from_config``, as the
party daemon starts it).  The load generator (grpc.aio, one mTLS channel) sends
single-application ``Score`` requests to the label party from 1, 16 and 128
concurrent clients; every request costs one label->passive ``PartialScore`` round
trip, the decision layer, and a line in the decision log.

Beside it, the **in-process floor**: the same online model parts scored in one process
with no network (passive answer + PD and reasons + decision), one application at a time.

Models are trained quickly in-process on the shared hetero data: by default with
the plaintext reference trainers (SecureBoost: ``train_plaintext_reference``, the
trees the federated protocol reproduces; LR: a pooled logistic fit split into the
two parties' weights) — a latency benchmark does not depend on how the weights
were found.  ``--federated`` trains with the real CKKS protocols instead (slower).

Usage::

    python simulations/bench_scoring.py [--clients 1,16,128] [--requests 2000] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
GUEST_CSV = DATA / "default_credit_hetero_guest.csv"
HOST_CSV = DATA / "default_credit_hetero_host.csv"


# --------------------------------------------------------------------------- setup


def _train(kind: str, g: pd.DataFrame, h: pd.DataFrame, n_fit: int, federated: bool) -> tuple[Any, Any]:
    from fedcredit.data import table_from_frame
    from fedcredit.protocols import secureboost as sb
    from fedcredit.protocols import vertical_lr as vlr
    from fedcredit.protocols.vertical_common import Standardizer
    from simulations.inprocess import run_secureboost_inprocess, run_vertical_lr_inprocess

    gf = [c for c in g.columns if c.startswith("x")]
    hf = [c for c in h.columns if c.startswith("x")]
    gt, ht = g.iloc[:n_fit], h.iloc[:n_fit]
    if kind.startswith("secureboost"):
        # "secureboost-hidden": the default passive_splits = "hidden" parts (candidate rules + encrypted
        # selectors at the passive party, the key at the label party) exist only from a federated run
        hidden = kind == "secureboost-hidden"
        cfg = sb.SecureBoostConfig(n_trees=10, max_depth=3, n_bins=16, passive_splits="hidden" if hidden else "revealed")
        if federated or hidden:
            res = run_secureboost_inprocess(gt, {"host": ht}, cfg, guest_name="guest")
            return res.label.model, res.passive_models["host"]
        lab, pas = sb.train_plaintext_reference(gt[gf].to_numpy(), gt["y"].to_numpy(), {"host": ht[hf].to_numpy()},
                                                cfg, label_party="guest", label_feature_names=gf,
                                                passive_feature_names={"host": hf})
        return lab, pas["host"]
    shared = kind == "vertical-lr-shared"
    if federated:
        guest = table_from_frame(gt, party="guest", source="guest", id_col="id", label_col="y")
        host = table_from_frame(ht, party="host", source="host", id_col="id")
        vres = run_vertical_lr_inprocess(guest, {"host": host}, vlr.VerticalLRConfig(
            max_epochs=2, passive_weights="shared" if shared else "plaintext"), psi=False)
        return vres.label.model, vres.passives["host"].model
    from sklearn.linear_model import LogisticRegression

    sg, sh = Standardizer.fit(gt[gf].to_numpy()), Standardizer.fit(ht[hf].to_numpy())
    clf = LogisticRegression(max_iter=500).fit(
        np.hstack([sg.transform(gt[gf].to_numpy()), sh.transform(ht[hf].to_numpy())]), gt["y"].to_numpy())
    w = clf.coef_.ravel()
    lm = vlr.LabelModel("guest", gf, sg, w[: len(gf)], float(clf.intercept_[0]), ["host"])
    pm = vlr.PassiveModel("host", hf, sh, w[len(gf):], "guest")
    return _as_shared(lm, pm) if shared else (lm, pm)


def _as_shared(lab: Any, pas: Any) -> tuple[Any, Any]:
    """The parts a shared-weights run installs (passive_weights = "shared", the default), from plaintext weights:
    the passive holds Enc(w_k) (one replicated ciphertext per feature) under a key only the label part holds, so
    every request costs the passive's ciphertext products and the label party's decryption.  The training basis
    is the identity here (a run's is its preconditioner: the same per-request cost)."""
    from crypto import ckks
    from fedcredit.protocols import vertical_lr as vlr

    sk = ckks.new_context()
    d = len(pas.feature_names)
    enc = ckks.shift_replicated(sk.public(), ckks.encrypt_replicated(sk, np.zeros(d)), pas.weights, what="bench")
    return (vlr.LabelModel(lab.party, lab.feature_names, lab.standardizer, lab.weights, lab.intercept,
                           lab.passive_parties, secret_context=ckks.secret_bytes(sk)),
            vlr.PassiveModel(pas.party, pas.feature_names, pas.standardizer, np.full(d, np.nan), lab.party,
                             encrypted_weights=enc, public_context=ckks.public_bytes(sk), basis=np.eye(d)))


def _parts(kind: str, lab: Any, pas: Any) -> dict[str, Any]:
    if kind.startswith("secureboost"):
        lb, pb_ = lab.to_bytes(), pas.to_bytes()
        kl, kp = "secureboost-label", "secureboost-passive"
    else:
        lb, pb_ = lab.to_json().encode(), pas.to_json().encode()
        kl, kp = "vertical-lr-label", "vertical-lr-passive"
    return {"guest": {"kind": kl, "files": {"model.json": lb}, "schema": {"feature_names": lab.feature_names, "id_column": "id"}},
            "host": {"kind": kp, "files": {"model.json": pb_}, "schema": {"feature_names": pas.feature_names, "id_column": "id"}}}


def _party_toml(work: Path, party: str, scoring: str) -> Path:
    p = work / f"{party}.toml"
    p.write_text(f"""[party]
name = "{party}"
identity_dir = "{work / 'pki' / party}"
state_dir = "{work / party}"
[coordinator]
flower_address = "127.0.0.1:1"
relay_address = "127.0.0.1:2"
[datasets.serve]
path = "{HOST_CSV if party == 'host' else GUEST_CSV}"
label_column = {'"y"' if party == 'guest' else '""'}
{scoring}
[decision.thresholds]
approve = 560
decline = 500
""".replace('label_column = ""\n', ""))
    return p


def _start_server(cfg: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, __file__, "_serve", str(cfg)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    line = proc.stdout.readline().strip() if proc.stdout else ""
    if not line.startswith("ADDR "):
        proc.kill()
        raise RuntimeError(f"scoring server for {cfg} did not start (got {line!r})")
    return proc, line.split()[1]


def _serve(cfg_path: str) -> int:
    """Child process: one party's scoring server, as the party daemon starts it."""
    import gc
    import signal
    import threading

    from fedcredit.config import load_party_config
    from party.scoring import start_from_config

    # every garbage collection of generation 2 (or longer than 1 ms) is a line in <config>.gc.jsonl: a
    # collection stops the whole server, so a latency benchmark shows how often and how long
    gc_log = Path(cfg_path).with_suffix(".gc.jsonl")
    started: list[float] = []

    def gc_timer(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
            return
        ms = (time.perf_counter() - (started or [time.perf_counter()])[0]) * 1e3
        if info["generation"] == 2 or ms > 1.0:
            with gc_log.open("a") as f:
                f.write(json.dumps({"time": time.time(), "generation": info["generation"], "ms": round(ms, 3)}) + "\n")

    gc.callbacks.append(gc_timer)
    server = start_from_config(load_party_config(cfg_path))
    print(f"ADDR {server.address}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(0)
    return 0


@dataclass
class Deployment:
    """A deployed joint model: both parties' scoring servers in their own processes, a client identity,
    and the applications to score (what this benchmark and ``bench_load.py`` measure against)."""

    guest_address: str
    client: Any  # crypto.certs.Identity of the caller "client"
    gc_logs: dict[str, Path]  # party -> its server's garbage-collection log (``_serve``)
    apps: list[tuple[str, dict[str, float]]]
    procs: dict[str, subprocess.Popen[str]]
    work: Path
    label: Any
    passive: Any


@contextmanager
def deployed(work: Path, model: str = "secureboost", *, n_fit: int = 20000, federated: bool = False,
             guest_scoring: str = "", raised_limits: bool = True) -> Iterator[Deployment]:
    """Train ``model`` on the shared hetero data, sign and install both parts, start both scoring servers
    (one process each, as the party daemon starts them); stop them on exit.  ``guest_scoring`` adds lines
    to the label party's ``[scoring]`` section; ``raised_limits=False`` keeps the passive party's default
    ``[scoring.partial_rate]``."""
    from crypto.certs import Identity, init_ca, issue
    from fedcredit.artifacts import build_run_artifacts, sign_artifact
    from party.models import ModelStore

    g, h = pd.read_csv(GUEST_CSV), pd.read_csv(HOST_CSV)
    assert (g["id"].to_numpy() == h["id"].to_numpy()).all()
    pki = work / "pki"
    if not (pki / "ca").exists():
        ca = init_ca(pki / "ca", "bench")
        for p in ("guest", "host", "client"):
            issue(ca, pki / p, p)
    ca = pki / "ca"
    gs = g.iloc[n_fit:]
    lab_f = [c for c in g.columns if c.startswith("x")]
    apps = [(str(i), dict(zip(lab_f, map(float, r)))) for i, r in zip(gs["id"], gs[lab_f].to_numpy())]
    t = time.perf_counter()
    lab, pas = _train(model, g, h, n_fit, federated)
    print(f"[{model}] trained in {time.perf_counter() - t:.1f} s", flush=True)
    arts = build_run_artifacts(work / f"build-{model}", run_id=f"bench-{model}", parts=_parts(model, lab, pas))
    for p, path in arts.items():
        sign_artifact(path, ca / "federation-signing.key")
        ModelStore(work / model / p / "models", party=p,
                   federation_public_key=ca / "federation-signing.pub").install(path, activate=True)
    mwork = work / model
    (mwork / "pki").symlink_to(pki)
    # a benchmark is not an attack: the passive party's per-caller limits are raised far above the load
    limits = ('[scoring.partial_rate]\nids_per_second = 1e7\nburst = 1000000\nids_per_day = 1000000000'
              if raised_limits else "")
    host_cfg = _party_toml(mwork, "host", '[scoring]\ndataset = "serve"\nworkers = 16\n' + limits)
    host_proc, host_addr = _start_server(host_cfg)
    procs = {"host": host_proc}
    try:
        guest_cfg = _party_toml(mwork, "guest", f'[scoring]\nworkers = 64\ndeadline_ms = 2000\ncallers = ["client"]\n'
                                                f'peers = {{ host = "{host_addr}" }}\n{guest_scoring}')
        guest_proc, guest_addr = _start_server(guest_cfg)
        procs["guest"] = guest_proc
        gc_logs = {p: c.with_suffix(".gc.jsonl") for p, c in (("host", host_cfg), ("guest", guest_cfg))}
        yield Deployment(guest_addr, Identity.load(pki / "client", "client"), gc_logs, apps, procs, mwork, lab, pas)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(10)


# --------------------------------------------------------------------------- load


async def _load(address: str, identity: Any, apps: list[tuple[str, dict[str, float]]], clients: int,
                n_requests: int, batch: int = 1) -> tuple[np.ndarray, float]:
    """``clients`` concurrent callers; ``batch`` > 1 sends ScoreBatch calls of that many applications
    (latency is then per call, throughput per decision)."""
    import grpc

    from crypto.tls import GRPC_OPTIONS, channel_credentials
    from protos import scoring_pb2 as pb
    from protos import scoring_pb2_grpc as pbg

    async with grpc.aio.secure_channel(address, channel_credentials(identity), options=GRPC_OPTIONS) as ch:
        stub = pbg.ScoringStub(ch)
        reqs = [pb.ScoreRequest(id=i, features=f) for i, f in apps]
        for r in reqs[:20]:  # warm-up: channel, model cache, TLS session
            await stub.Score(r, timeout=10)
        lat: list[float] = []
        counter = iter(range(0, n_requests, batch))

        async def worker() -> None:
            for k in counter:
                t = time.perf_counter()
                if batch == 1:
                    rep = await stub.Score(reqs[k % len(reqs)], timeout=10)
                    assert rep.decision
                else:
                    chunk = [reqs[(k + j) % len(reqs)] for j in range(batch)]
                    reps = await stub.ScoreBatch(pb.ScoreBatchRequest(requests=chunk), timeout=30)
                    assert len(reps.replies) == batch
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return np.asarray(lat), wall


def _floor(kind: str, lab: Any, pas: Any, g: pd.DataFrame, h: pd.DataFrame, n: int) -> tuple[np.ndarray, float]:
    """In-process: what the two scoring services compute for one application, with no network — the passive
    part's answer, the label part's PD **and reasons**, the decision (``fedcredit.kinds`` online parts)."""
    from fedcredit.decision import DecisionPolicy, decide
    from fedcredit.kinds import load_part

    parts = _parts(kind, lab, pas)
    label = load_part(parts["guest"]["kind"], parts["guest"]["files"]["model.json"], "bench label part")
    passive = load_part(parts["host"]["kind"], parts["host"]["files"]["model.json"], "bench passive part")
    policy = DecisionPolicy()
    Xg, Xh = g[lab.feature_names].to_numpy(), h[pas.feature_names].to_numpy()
    lat = []
    t0 = time.perf_counter()
    for k in range(n):
        t = time.perf_counter()
        i = k % len(Xg)
        pd_, contribs = label.score(Xg[i:i + 1], {"host": passive.answer(Xh[i:i + 1])})
        decide(float(pd_[0]), contribs[0], None, policy)
        lat.append(time.perf_counter() - t)
    return np.asarray(lat), time.perf_counter() - t0


def _cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of a process (Linux /proc), to separate our cost from machine load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _row(model: str, mode: str, clients: int, lat: np.ndarray, wall: float) -> dict[str, Any]:
    return {"model": model, "mode": mode, "clients": clients, "requests": int(len(lat)),
            "p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "decisions_per_s": float(len(lat) / wall)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_serve":
        return _serve(argv[1])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", default="1,16,128")
    ap.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    ap.add_argument("--models", default="secureboost,vertical-lr")
    ap.add_argument("--n-fit", type=int, default=20000, help="training rows (the rest are scored)")
    ap.add_argument("--federated", action="store_true", help="train with the CKKS protocols instead of plaintext")
    ap.add_argument("--batch", type=int, default=32,
                    help="also measure ScoreBatch calls of this many applications from 16 clients (1 = skip)")
    ap.add_argument("--out", help="write results JSON here")
    args = ap.parse_args(argv)

    g, h = pd.read_csv(GUEST_CSV), pd.read_csv(HOST_CSV)
    clients = [int(c) for c in args.clients.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        work = Path(tmp)
        for model in args.models.split(","):
            with deployed(work, model, n_fit=args.n_fit, federated=args.federated) as dep:
                lab, pas, apps, mwork = dep.label, dep.passive, dep.apps, dep.work
                gs, hs = g.iloc[args.n_fit:], h.iloc[args.n_fit:]
                lat, wall = _floor(model, lab, pas, gs, hs, args.requests)
                rows.append(_row(model, "in-process", 1, lat, wall))
                print(json.dumps(rows[-1]), flush=True)
                for c in clients:
                    lat, wall = asyncio.run(_load(dep.guest_address, dep.client, apps, c, max(args.requests, 4 * c)))
                    rows.append(_row(model, "grpc-mtls", c, lat, wall))
                    print(json.dumps(rows[-1]), flush=True)
                if args.batch > 1:
                    lat, wall = asyncio.run(_load(dep.guest_address, dep.client, apps, 16,
                                                  max(args.requests, 16 * args.batch), batch=args.batch))
                    rows.append(_row(model, f"batch-{args.batch}", 16, lat, wall))
                    rows[-1]["decisions_per_s"] *= args.batch  # each call carried `batch` decisions
                    print(json.dumps(rows[-1]), flush=True)
                time.sleep(0.2)  # the decision log is flushed every 50 ms
                n_log = (mwork / "guest" / "decisions.jsonl").read_text().count("\n")
                cpu = {p: _cpu_seconds(proc.pid) for p, proc in dep.procs.items()}
                print(f"[{model}] decisions logged at guest: {n_log}; server CPU per decision: "
                      + ", ".join(f"{p} {c / n_log * 1e3:.3f} ms" for p, c in cpu.items()), flush=True)
                rows.append({"model": model, "mode": "cpu-per-decision-ms", "decisions": n_log,
                             **{p: c / n_log * 1e3 for p, c in cpu.items()}})
    print()
    print(f"{'model':<12} {'mode':<11} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'decisions/s':>12}"
          "   (batch-N rows: latency per ScoreBatch call of N applications)")
    for r in rows:
        if r["mode"] == "cpu-per-decision-ms":
            print(f"{r['model']:<12} server CPU per decision: guest {r['guest']:.3f} ms, host {r['host']:.3f} ms "
                  f"(over {r['decisions']} decisions incl. warm-up)")
            continue
        print(f"{r['model']:<12} {r['mode']:<11} {r['clients']:>7} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['decisions_per_s']:>12.0f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
