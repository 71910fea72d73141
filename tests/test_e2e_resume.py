"""Resume after a crash, over real processes: kill -9 the passive party mid-SecureBoost, kill -9 the coordinator.

A coordinator and two parties on 127.0.0.1 (LocalFederation: real Flower SuperLink/SuperNodes,
mutual-TLS relay and Control service).  The crash is SIGKILL of the whole process tree (the
daemon, its SuperNode or SuperLink and everything they spawned), right after the passive
party's checkpoint of tree 1 appears on disk; the operator then runs the real
``fedcredit runs resume <id>`` and the run must finish with the model an uninterrupted run
of the same job builds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from simulations.deployment import LocalFederation, PartySpec

pytestmark = pytest.mark.e2e

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
N_BANK, N_COMMON = 3000, 2500
MODEL = {"n_trees": 8, "max_depth": 3, "n_bins": 16, "learning_rate": 0.3, "test_fraction": 0.2, "split_seed": 7}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("rfed")
    data = root / "data"
    data.mkdir()
    guest = pd.read_csv(DATA / "default_credit_hetero_guest.csv")
    host = pd.read_csv(DATA / "default_credit_hetero_host.csv")
    ids = np.random.default_rng(5).permutation(guest["id"].to_numpy())
    guest.set_index("id").loc[ids[:N_BANK]].reset_index().to_csv(data / "bank.csv", index=False)
    host.set_index("id").loc[ids[:N_COMMON][::-1]].reset_index().to_csv(data / "fintech.csv", index=False)
    parties = [PartySpec("bank", {"train": {"path": data / "bank.csv", "label_column": "y"}}),
               PartySpec("fintech", {"train": {"path": data / "fintech.csv"}}, role="fintech")]
    federation = LocalFederation(root / "fed", parties).setup().start()
    yield federation
    federation.stop()


JOB: dict[str, Any] = {"job": {"name": "sb-resume", "type": "secureboost", "parties": ["bank", "fintech"],
                               "label_party": "bank", "round_timeout_s": 120.0}, "model": MODEL}


@pytest.fixture(scope="module")
def reference(fed: LocalFederation) -> dict[str, Any]:
    """The same job, uninterrupted."""
    info = fed.run_job("sb-ref", JOB)
    assert info.status == "finished", info.error
    return _models(fed, info.run_id) | {"info": info}


# --------------------------------------------------------------------------- helpers


def _state(fed: LocalFederation, party: str) -> Path:
    return fed.root / "state" / party


def _models(fed: LocalFederation, run_id: str) -> dict[str, Any]:
    out = {}
    for p in ("bank", "fintech"):
        out[p] = json.loads((_state(fed, p) / "models" / run_id / f"secureboost_{p}_model.json").read_text())
    out["result"] = json.loads((_state(fed, "bank") / "models" / run_id / "vertical_job.json").read_text())
    return out


def _same_model(got: dict[str, Any], ref: dict[str, Any]) -> None:
    gt, rt = got["bank"]["trees"], ref["bank"]["trees"]
    assert len(gt) == len(rt) == MODEL["n_trees"]
    for t, (a_tree, b_tree) in enumerate(zip(gt, rt)):
        assert len(a_tree) == len(b_tree), f"tree {t}: {len(a_tree)} nodes, uninterrupted {len(b_tree)}"
        for a, b in zip(a_tree, b_tree):
            if b.get("leaf"):
                assert a.get("leaf") and a["value"] == pytest.approx(b["value"], abs=1e-6), (t, a, b)
            else:  # same owner, same label-party feature/threshold or same opaque passive split id, same children
                assert {k: v for k, v in a.items()} == {k: v for k, v in b.items()}, (t, a, b)
    # the passive party's split table names the same feature for each split id
    feats = {s["id"]: s["feature"] for s in got["fintech"]["splits"]}
    assert feats == {s["id"]: s["feature"] for s in ref["fintech"]["splits"]}
    # same predictions on the held-out rows, so the same test metrics
    assert got["result"]["metrics"]["auc"] == pytest.approx(ref["result"]["metrics"]["auc"], abs=1e-4)
    assert got["result"]["metrics"]["ks"] == pytest.approx(ref["result"]["metrics"]["ks"], abs=1e-3)


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _kill_tree(*roots: int) -> None:
    """SIGKILL every process under ``roots`` (collected first, so nothing re-parents away), like a host crash."""
    seen: list[int] = []
    todo = list(roots)
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.append(p)
            todo += _children(p)
    for p in seen:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _kill9(fed: LocalFederation, key: str, ready: Path) -> None:
    info = json.loads(ready.read_text())
    proc = fed.procs.pop(key)
    _kill_tree(proc.pid, *(int(info[k]) for k in ("supernode_pid",) if k in info))
    proc.wait(10)


def _wait(what: str, cond, timeout: float, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every)  # polling a file or the registry: there is no notification to wait on
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _checkpoint(fed: LocalFederation, party: str, run_id: str, step: int) -> Path:
    return _state(fed, party) / "checkpoints" / run_id / f"sb-{step:08d}.ckpt"


def _cli(fed: LocalFederation, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedcredit.cli", *args, "--control", fed.control,
                           "--identity-dir", str(fed.certs / "operator")],
                          capture_output=True, text=True, timeout=600)


def _status(fed: LocalFederation, run_id: str) -> Any:
    client = fed.client()
    try:
        return client.get(run_id)
    finally:
        client.close()


def _submit(fed: LocalFederation, name: str) -> str:
    client = fed.client()
    try:
        return client.submit(fed.write_job(name, JOB))
    finally:
        client.close()


# --------------------------------------------------------------------------- tests


def test_kill9_passive_party_mid_secureboost_then_resume(fed: LocalFederation, reference: dict[str, Any]) -> None:
    run_id = _submit(fed, "sb-kill-passive")
    _wait("the passive party's checkpoint of tree 1", lambda: _checkpoint(fed, "fintech", run_id, 1).exists(), 300)
    _kill9(fed, "fintech", _state(fed, "fintech") / "party.ready.json")
    # the label party hears the passive is gone (relay PEER_GONE); the coordinator gets no reply from it
    info = _wait("the run to be interrupted", lambda: (i := _status(fed, run_id)).status != "running" and i, 200, 1.0)
    assert info.status == "interrupted", (info.status, info.error)
    assert "resumable" in info.error and "bank holds psi 1, sb " in info.error, info.error
    held = sorted(p.name for p in (_state(fed, "fintech") / "checkpoints" / run_id).iterdir())
    assert held[0] == "psi-00000001.ckpt" and 1 <= len([h for h in held if h.startswith("sb-")]) <= 2, held
    assert not (_state(fed, "fintech") / "models" / run_id / "secureboost_fintech_model.json").exists()

    fed.start_party("fintech", timeout=180)  # "ready" waits until Flower lets the restarted node in again
    done = _cli(fed, "runs", "resume", run_id)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming run {run_id} (attempt 2)" in done.stdout
    info = _status(fed, run_id)
    assert (info.status, info.attempt) == ("finished", 2), info.error
    _same_model(_models(fed, run_id), reference)
    # each party's log says where it resumed; the checkpoints are gone once the run finished
    log = (_state(fed, "bank") / "supernode.log").read_text(errors="replace")
    assert f"run {run_id} party bank] resuming: PSI intersection" in log
    assert f"run {run_id} party bank] resuming after tree" in log
    for p in ("bank", "fintech"):
        assert not (_state(fed, p) / "checkpoints" / run_id).exists(), p

    again = _cli(fed, "runs", "resume", run_id)
    assert again.returncode == 2 and f"run '{run_id}' finished; there is nothing to resume" in again.stderr
    unknown = _cli(fed, "runs", "resume", "20260101-000000-000000")
    assert unknown.returncode == 2 and "no run '20260101-000000-000000'" in unknown.stderr


def test_kill9_coordinator_mid_job_then_resume(fed: LocalFederation, reference: dict[str, Any]) -> None:
    run_id = _submit(fed, "sb-kill-coordinator")
    _wait("the passive party's checkpoint of tree 1", lambda: _checkpoint(fed, "fintech", run_id, 1).exists(), 300)
    ready = fed.root / "state" / "coordinator" / "coordinator.ready.json"
    pid = json.loads(ready.read_text())["pid"]
    proc = fed.procs.pop("coordinator")
    assert proc.pid == pid
    _kill_tree(pid)
    proc.wait(10)
    # both parties lose the relay and stop, keeping their checkpoints
    for p in ("bank", "fintech"):
        log = _state(fed, p) / "supernode.log"
        _wait(f"{p} to stop the job, keeping its checkpoints",
              lambda log=log, p=p: f"run {run_id} party {p}] stopped:" in (t := log.read_text(errors="replace"))
              and "checkpoints kept" in t.split(f"run {run_id} party {p}] stopped:")[-1], 120, 0.2)

    fed.start_coordinator()
    info = _status(fed, run_id)
    assert info.status == "interrupted" and f"fedcredit runs resume {run_id}" in info.error, (info.status, info.error)
    listed = _cli(fed, "runs", "--json")
    assert {r["run_id"]: r["status"] for r in json.loads(listed.stdout)}[run_id] == "interrupted"

    done = _cli(fed, "runs", "resume", run_id)
    assert done.returncode == 0, done.stdout + done.stderr
    info = _status(fed, run_id)
    assert (info.status, info.attempt) == ("finished", 2), info.error
    _same_model(_models(fed, run_id), reference)
    for p in ("bank", "fintech"):
        assert not (_state(fed, p) / "checkpoints" / run_id).exists(), p
