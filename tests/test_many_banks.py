"""Many banks on Flower's simulation engine (Ray): the deployment's horizontal roles, banks in Ray actor processes.

One run of 5 banks (a small, fast version of simulations/bench_many_banks.py): the federated model
equals the in-process simulator's on the same partition, the banks really ran in Ray's actor
processes (at most one per CPU given), and what the coordinator received holds only
ciphertexts, sealed envelopes and public figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from crypto import ckks
from fedcredit.errors import SecurityError
from fedcredit.models import load_model
from fedcredit.protocols.horizontal import HorizontalJob, decode_message, run_coordinator
from simulations.bench_many_banks import bank_names, write_banks
from simulations.flower_sim import run_flower_simulation
from simulations.horizontal_sim import make_local_federation

ALLOWED_HEADER = {"ok", "features", "fingerprint", "has_test", "round", "metrics", "model_path", "auc", "ks", "n_test"}


def test_five_banks_on_ray_equal_inprocess_and_coordinator_sees_only_ciphertexts(
        shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = bank_names(5)
    train, tests = write_banks(shared_data, 5, tmp_path / "data", rows=3000)
    job = HorizontalJob(run_id="mb5", parties=names, rounds=3, newton_rounds=2)
    capture = tmp_path / "capture"
    monkeypatch.setenv("FEDCREDIT_CAPTURE_DIR", str(capture))  # FlowerChannel writes every payload it receives
    leaky = ("PYTHONPATH", "PYTHONBREAKPOINT", "GRPC_VERBOSITY")
    environ = {k: os.environ.get(k) for k in leaky}
    sim = run_flower_simulation(train, tests, job, tmp_path / "flower", cpus=2, object_store_mb=256, tap=True)
    # Flower/Ray set PYTHONPATH & co. in this process: left behind, later subprocesses imported the wrong code
    assert {k: os.environ.get(k) for k in leaky} == environ
    monkeypatch.delenv("FEDCREDIT_CAPTURE_DIR")
    res = sim.result
    assert res.parties == names and not res.dropped and len(res.history) == job.total_rounds

    # the same job over the in-process channel, same partition: the same model up to CKKS noise (fresh at each
    # encryption; two Newton steps from a 3-round FedAvg point amplify it: two in-process runs of this job differ
    # by 3e-4, by 2e-6 without the Newton rounds)
    fed = make_local_federation(train, tests, tmp_path / "inproc")
    ref = run_coordinator(fed.channel, job)
    want = load_model(fed.envs[names[0]].output_dir / job.run_id / "global_model.json").model.get_flat()
    for p in names:
        got = load_model(tmp_path / "flower" / "banks" / p / "models" / job.run_id / "global_model.json").model.get_flat()
        np.testing.assert_allclose(got, want, atol=2e-3)
    assert res.global_metrics is not None and ref.global_metrics is not None
    assert res.global_metrics["auc"] == pytest.approx(ref.global_metrics["auc"], abs=1e-3)
    assert res.global_metrics["n_test"] == 6000
    for p, d in ref.bytes_per_round().items():
        assert res.bytes_per_round()[p] == pytest.approx(d, rel=0.02)

    # every bank's party code ran in Ray's actor processes, never in this (the coordinator's) process
    taps = {p: sorted((tmp_path / "flower" / "banks" / p / "tap").glob("*.npy")) for p in names}
    pids = {int(f.name.split("-")[1]) for fs in taps.values() for f in fs}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    for p in names:
        assert [f.stem.split("-", 2)[2] for f in taps[p]] == ["stats", "update", "update", "update", "newton",
                                                               "newton", "histogram"]

    # what the coordinator received: headers of public fields only; blobs are CKKS ciphertexts that its
    # public context cannot decrypt, or sealed envelopes; never a plaintext vector a bank encrypted
    replies = sorted(f for f in capture.glob("*.bin") if "sim.hello" not in f.name)
    assert len(replies) == 5 + 5 + 5 * job.total_rounds + 5 + 1  # setup, install_key (secagg shares), fit, finalize, global_metrics
    decoded = [decode_message(f.read_bytes()) for f in replies]
    public = next(ckks.load_public(b["public_ctx"]) for _, b in decoded if "public_ctx" in b)  # refuses a secret key
    n_ckks = 0
    for h, blobs in decoded:
        assert set(h) <= ALLOWED_HEADER, set(h) - ALLOWED_HEADER
        for name, blob in blobs.items():
            if name == "public_ctx":
                continue
            if name.startswith(("envelope:", "sa:")):  # sealed key/share bundles; "sa:pub": X25519 public keys
                assert not ckks.is_ckks_blob(blob)
                continue
            assert ckks.is_ckks_blob(blob), name
            with pytest.raises(SecurityError):
                ckks.decrypt_vector(public, blob)  # type: ignore[arg-type]  # the attack: decrypt with what it has
            n_ckks += 1
    assert n_ckks == 5 * (1 + job.total_rounds + 1)  # stats, one update per round, a histogram, per bank
    wire = b"".join(f.read_bytes() for f in replies)
    probes = [w for fs in taps.values() for f in fs for w in _windows(np.load(f))]
    assert len(probes) >= 5 * 7
    assert not [w for w in probes if w in wire], "a plaintext vector a bank encrypted reached the coordinator"


def _windows(v: np.ndarray, k: int = 3, most: int = 4) -> list[bytes]:
    """Up to ``most`` runs of ``k`` consecutive non-zero values of ``v`` as float64 bytes (zero runs are on any wire)."""
    out = []
    for i in range(len(v) - k + 1):
        if np.all(v[i:i + k] != 0):
            out.append(v[i:i + k].astype("<f8").tobytes())
            if len(out) == most:
                break
    return out
