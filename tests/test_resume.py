"""Checkpoints and resume, in process: every role of the real vertical job core over an InMemoryHub.

A crash is a party whose checkpoint write of step k succeeds and which then dies (a
ProtocolError, what a lost peer or stream looks like): the roles are then one step apart
(the passive checkpoints a tree/epoch before the label party does).  The resumed run must
agree on the step both hold and end with the same model as an uninterrupted run.
"""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedcredit.checkpoint import CheckpointStore, NoCheckpoint, ResumeTags, agree_step
from fedcredit.config import DatasetSection, parse_job_text
from fedcredit.data import Table, load_dataset
from fedcredit.errors import ProtocolError
from fedcredit.protocols.vertical_jobs import VerticalParty, run_vertical_party_core
from fedcredit.transport import InMemoryHub, Transport, WireRecord
from simulations.inprocess import run_roles

pytestmark = pytest.mark.usefixtures("shared_data")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RUN = "20260101-000000-abcdef"


class Crash(ProtocolError):
    """A simulated process death right after a checkpoint was written."""


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    d = tmp_path_factory.mktemp("data")
    g = pd.read_csv(DATA / "default_credit_hetero_guest.csv").iloc[:1500]
    h = pd.read_csv(DATA / "default_credit_hetero_host.csv").set_index("id").loc[g["id"].iloc[200:]].reset_index()
    g.to_csv(d / "bank.csv", index=False)
    h.iloc[::-1].to_csv(d / "fintech.csv", index=False)
    return {"bank": {"train": {"path": str(d / "bank.csv"), "label_column": "y"}},
            "fintech": {"train": {"path": str(d / "fintech.csv")}}}


def _job(jtype: str, model: str):
    return parse_job_text(f"[job]\nname = 'r'\ntype = '{jtype}'\nparties = ['bank', 'fintech']\nlabel_party = 'bank'\n"
                          f"round_timeout_s = 60\n[model]\ntest_fraction = 0.2\npsi_min_size = 10\n{model}\n")


def _load(sections: dict[str, DatasetSection], party: str, key: str) -> Table:
    return load_dataset(sections[key], party=party)


def _crashes() -> Any:
    """The run fails because of the simulated crash: raised by the crashing party itself, or by its peer
    reporting it (whichever thread records its failure first; both name the crash)."""
    return pytest.raises(ProtocolError, match="simulated crash (after|before) checkpoint")


def _run(tables: dict[str, Any], job, root: Path, *, resume: bool = False,
         records: list[WireRecord] | None = None) -> dict[str, dict[str, Any]]:
    views = {}
    for p in ("bank", "fintech"):
        sec = {k: DatasetSection.model_validate(v) for k, v in tables[p].items()}
        views[p] = VerticalParty(p, RUN, job, frozenset(sec), partial(_load, sec, p), root / p, resume=resume)
    hub = InMemoryHub(default_timeout=60)
    if records is not None:
        hub.observers.append(records.append)
    return run_roles(hub, {p: partial(_core, v) for p, v in views.items()}, timeout_s=300)


def _core(view: VerticalParty, transport: Transport) -> dict[str, Any]:
    return run_vertical_party_core(transport, view)


@pytest.fixture
def crash_after(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """crash_after(party, stage, step): that party dies right after writing that checkpoint."""
    real = CheckpointStore.save
    plan: dict[str, tuple[str, int]] = {}

    def save(self: CheckpointStore, stage: str, step: int, meta: Any, arrays: Any = None, **kw: Any) -> Path:
        path = real(self, stage, step, meta, arrays, **kw)
        if plan.get(self.party) == (stage, step):
            raise Crash(f"party '{self.party}': simulated crash after checkpoint {stage} #{step}")
        return path

    monkeypatch.setattr(CheckpointStore, "save", save)

    def arm(party: str, stage: str, step: int) -> None:
        plan.clear()
        plan[party] = (stage, step)

    yield arm
    plan.clear()


def _models(root: Path, kind: str) -> dict[str, dict[str, Any]]:
    return {p: json.loads((root / p / "models" / RUN / f"{kind}_{p}_model.json").read_text()) for p in ("bank", "fintech")}


def _structure(tree: list[dict[str, Any]]) -> list[Any]:
    return [("leaf",) if n.get("leaf") else (n["owner"], n.get("feature"), n.get("threshold"), n.get("split_id"),
                                             n["left"], n["right"]) for n in tree]


def test_secureboost_resumes_from_the_tree_both_roles_hold(tables, tmp_path: Path, crash_after) -> None:
    job = _job("secureboost", "n_trees = 4\nmax_depth = 3\nn_bins = 16\nlearning_rate = 0.3")
    ref = _run(tables, job, tmp_path / "ref")
    ref_models = _models(tmp_path / "ref", "secureboost")

    root = tmp_path / "crash"
    crash_after("fintech", "sb", 2)  # the passive saved tree 2, the label party only tree 1: one step apart
    with _crashes():
        _run(tables, job, root)
    held = {p: CheckpointStore(root / p, RUN, p).steps("sb") for p in ("bank", "fintech")}
    assert held == {"bank": [1], "fintech": [1, 2]}
    assert CheckpointStore(root / "fintech", RUN, "fintech").steps("psi") == [1]
    # owner-only files, at most two per stage
    for p in ("bank", "fintech"):
        for f in (root / p / "checkpoints" / RUN).iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f

    crash_after("nobody", "", 0)
    records: list[WireRecord] = []
    out = _run(tables, job, root, resume=True, records=records)
    # the agreement: the passive offered its steps, the label party chose the one both hold
    offers = [json.loads(r.payload) for r in records if r.tag == "sb/resume/held"]
    chosen = [json.loads(r.payload) for r in records if r.tag == "sb/resume/at"]
    assert offers == [{"held": [1, 2]}] and chosen == [{"step": 1}]
    assert [json.loads(r.payload) for r in records if r.tag == "psi/resume/at"] == [{"step": 1}]
    assert not any(r.tag.startswith("psi/s/") for r in records)  # PSI was not run again

    got = _models(root, "secureboost")
    ref_trees, got_trees = ref_models["bank"]["trees"], got["bank"]["trees"]
    assert len(got_trees) == len(ref_trees) == 4
    assert [_structure(t) for t in got_trees] == [_structure(t) for t in ref_trees]
    for rt, gt in zip(ref_trees, got_trees):
        for a, b in zip(rt, gt):
            if a.get("leaf"):
                assert b["value"] == pytest.approx(a["value"], abs=1e-6)
    assert got["fintech"]["splits"] == ref_models["fintech"]["splits"] or \
        {s["id"] for s in got["fintech"]["splits"]} == {s["id"] for s in ref_models["fintech"]["splits"]}
    assert out["bank"]["metrics"]["auc"] == pytest.approx(ref["bank"]["metrics"]["auc"], abs=1e-6)
    # finished: no checkpoint left
    assert not (root / "bank" / "checkpoints" / RUN).exists()
    assert not (root / "fintech" / "checkpoints" / RUN).exists()


def test_vertical_lr_resumes_from_the_epoch_both_roles_hold(tables, tmp_path: Path, crash_after) -> None:
    # two mini-batch epochs, then two full-batch steps: the crash after epoch 3 falls in the full-batch phase;
    # plaintext weights, so both parts' weights can be compared (the default, shared, is the test below)
    job = _job("vertical-lr", "max_epochs = 2\nfull_batch_steps = 2\nbatch_size = 512\npatience = 10\n"
                              "passive_weights = \"plaintext\"")
    ref = _run(tables, job, tmp_path / "ref")
    ref_models = _models(tmp_path / "ref", "vertical_lr")

    root = tmp_path / "crash"
    crash_after("fintech", "vlr", 3)  # the passive saved epoch 3; the label party had saved 3 too (it saves first)
    with _crashes():
        _run(tables, job, root)
    held = {p: CheckpointStore(root / p, RUN, p).steps("vlr") for p in ("bank", "fintech")}
    assert held == {"bank": [2, 3], "fintech": [2, 3]}
    crash_after("nobody", "", 0)
    # now the label party one step ahead: drop the passive's epoch 3
    (root / "fintech" / "checkpoints" / RUN / "vlr-00000003.ckpt").unlink()
    records: list[WireRecord] = []
    out = _run(tables, job, root, resume=True, records=records)
    assert [json.loads(r.payload) for r in records if r.tag == "vlr/resume/at"] == [{"step": 2}]
    assert not any(r.tag.startswith("vlr/z/0/") for r in records)  # epochs 1-2 were not trained again
    got = _models(root, "vertical_lr")
    # any two runs differ by the CKKS error and the flooding noise on each decrypted gradient sum (~1e-4 here);
    # the full-batch steps (step 1.0, momentum 0.9) carry that noise along the loss's flat directions on these
    # 1,041 rows: seen once in a full-suite run, weights 0.02 apart at the same training loss (0.45807).
    # Where training resumed is checked exactly by the wire records above; this checks it reached the same model.
    for p in ("bank", "fintech"):
        np.testing.assert_allclose(got[p]["weights"], ref_models[p]["weights"], atol=5e-2)
    np.testing.assert_allclose(got["bank"]["intercept"], ref_models["bank"]["intercept"], atol=5e-2)
    assert out["bank"]["metrics"]["auc"] == pytest.approx(ref["bank"]["metrics"]["auc"], abs=2e-3)
    assert out["bank"]["epochs_run"] == ref["bank"]["epochs_run"] == 4


def test_psi_agreement_reruns_psi_and_restarts_the_model_when_a_party_lost_its_intersection(
        tables, tmp_path: Path, crash_after) -> None:
    job = _job("secureboost", "n_trees = 2\nmax_depth = 2\nn_bins = 8")
    root = tmp_path / "crash"
    crash_after("bank", "sb", 1)  # both hold PSI and tree 1
    with _crashes():
        _run(tables, job, root)
    # the passive lost its intersection: PSI runs again (a new common order), so no tree checkpoint can be used
    (root / "fintech" / "checkpoints" / RUN / "psi-00000001.ckpt").unlink()
    crash_after("nobody", "", 0)
    records: list[WireRecord] = []
    out = _run(tables, job, root, resume=True, records=records)
    assert [json.loads(r.payload) for r in records if r.tag == "psi/resume/held"] == [{"held": []}]
    assert [json.loads(r.payload) for r in records if r.tag == "psi/resume/at"] == [{"step": None}]
    assert any(r.tag.startswith("psi/s/") for r in records)
    assert [json.loads(r.payload) for r in records if r.tag == "sb/resume/at"] == [{"step": None}]
    assert out["bank"]["intersection_size"] == 1300 and out["bank"]["n_trees"] == 2


def test_a_crash_mid_psi_resumes_at_the_batch_both_hold_in_a_vertical_job(tables, tmp_path: Path, crash_after) -> None:
    """The deployed path: the job core checkpoints PSI per batch, resumes inside PSI, and leaves nothing behind."""
    job = _job("secureboost", "n_trees = 1\nmax_depth = 2\nn_bins = 8\npsi_batch_size = 200")
    root = tmp_path / "crash"
    crash_after("fintech", "psi_batch", 3)  # both parties did rounds 0-2 (bank 8 batches, fintech 7)
    with _crashes():
        _run(tables, job, root)
    for p in ("bank", "fintech"):
        st = CheckpointStore(root / p, RUN, p)
        assert (st.steps("psi_key"), st.steps("psi_batch"), st.steps("psi")) == ([1], [1, 2, 3], [])
        for f in st.dir.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    crash_after("nobody", "", 0)
    records: list[WireRecord] = []
    out = _run(tables, job, root, resume=True, records=records)
    assert [json.loads(r.payload) for r in records if r.tag == "psi/resume/at"] == [{"step": None}]
    assert [json.loads(r.payload) for r in records if r.tag == "psi/batch/resume/at"] == [{"step": 3}]
    sent = sorted(int(r.tag.rsplit("/", 1)[1]) for r in records if r.tag.startswith("psi/s/") and r.sender == "bank")
    assert sent == [3, 4, 5, 6, 7]  # rounds 0-2 were not blinded again
    assert out["bank"]["intersection_size"] == out["fintech"]["intersection_size"] == 1300
    assert not (root / "bank" / "checkpoints" / RUN).exists() and not (root / "fintech" / "checkpoints" / RUN).exists()


def test_resume_without_a_checkpoint_is_refused_naming_the_party(tables, tmp_path: Path) -> None:
    job = _job("secureboost", "n_trees = 2")
    (tmp_path / "bank" / "checkpoints" / RUN).mkdir(parents=True)
    CheckpointStore(tmp_path / "bank", RUN, "bank").save("psi", 1, {}, {})
    with pytest.raises(NoCheckpoint, match=r"party 'fintech': no checkpoint of run"):
        _run(tables, job, tmp_path, resume=True)


def test_agreement_takes_the_latest_step_every_role_holds() -> None:
    hub = InMemoryHub(default_timeout=10)
    tags = ResumeTags("t")
    held = {"L": [4, 5], "A": [5, 6], "B": [3, 4]}

    def role(p: str, tr: Transport) -> int | None:
        return agree_step(tr, leader="L", parties=list(held), held=held[p], tags=tags)

    assert run_roles(hub, {p: partial(role, p) for p in held}) == {"L": None, "A": None, "B": None}
    held["B"] = [4, 5]
    assert run_roles(InMemoryHub(10), {p: partial(role, p) for p in held}) == {"L": 5, "A": 5, "B": 5}


def test_a_leader_naming_a_step_the_party_does_not_hold_is_refused() -> None:
    hub = InMemoryHub(default_timeout=10)
    tags = ResumeTags("t")
    a = hub.endpoint("A")
    hub.endpoint("L").send("A", tags.at, json.dumps({"step": 9}).encode())
    with pytest.raises(ProtocolError, match=r"step 9, which this party does not hold"):
        agree_step(a, leader="L", parties=["L", "A"], held=[1, 2], tags=tags)


def test_store_keeps_the_last_two_and_clears(tmp_path: Path) -> None:
    st = CheckpointStore(tmp_path, RUN, "bank")
    for k in range(1, 5):
        st.save("sb", k, {"k": k}, {"a": np.arange(k)})
    assert st.steps("sb") == [3, 4]
    ck = st.load("sb", 4)
    assert ck.meta == {"k": 4} and list(ck.arrays["a"]) == [0, 1, 2, 3]
    with pytest.raises(NoCheckpoint, match="party 'bank'"):
        st.load("sb", 1)
    st.clear()
    assert not st.exists() and not st.dir.exists()


# --------------------------------------------------------------------------- registry, ServerApp rule, Control RPC

VJOB = """
[job]
name = "v"
type = "secureboost"
parties = ["bank1", "bank2"]
label_party = "bank1"
"""
HJOB = """
[job]
name = "h"
type = "horizontal"
parties = ["bank1", "bank2"]
"""


def test_registry_interrupt_resume_and_attempt_sessions(tmp_path: Path) -> None:
    from coordinator.registry import Registry
    from fedcredit.checkpoint import attempt_session
    from fedcredit.errors import ConfigError

    reg = Registry(tmp_path / "r.db")
    v, h = reg.create_run("v", "secureboost", VJOB), reg.create_run("h", "horizontal", HJOB)
    reg.mark_running(v)
    assert reg.job_parties(v) == {"bank1", "bank2"}
    # a coordinator restart: the vertical run waits for a resume, the horizontal one failed for good
    assert sorted(reg.fail_interrupted("the coordinator stopped")) == sorted([v, h])
    rv, rh = reg.get(v), reg.get(h)
    assert rv is not None and rh is not None
    assert (rv.status, rh.status) == ("interrupted", "failed") and f"runs resume {v}" in (rv.error or "")
    assert reg.job_parties(v) is None  # no relay session while nobody runs it
    with pytest.raises(ConfigError, match="horizontal job: its parties keep no checkpoints"):
        reg.resume(h)
    with pytest.raises(ConfigError, match="no run 'nope'"):
        reg.resume("nope")
    reg.set_flower_run(v, "flower-1")
    rec = reg.resume(v)
    assert (rec.status, rec.attempt, rec.error, rec.flower_run_id) == ("queued", 2, None, None)
    with pytest.raises(ConfigError, match=r"is queued \(attempt 2\); only an interrupted run"):
        reg.resume(v)
    # attempt 2 has its own session; attempt 1's (and a made-up attempt's) has no members any more
    assert attempt_session(v, 1) == v and attempt_session(v, 2) == f"{v}.a2"
    assert reg.job_parties(f"{v}.a2") == {"bank1", "bank2"}
    assert reg.job_parties(v) is None and reg.job_parties(f"{v}.a3") is None and reg.job_parties(f"{v}.a02") is None
    reg.finish(v, {"ok": True})
    with pytest.raises(ConfigError, match="finished; there is nothing to resume"):
        reg.resume(v)


def test_a_failed_attempt_is_interrupted_only_if_every_answering_party_kept_checkpoints() -> None:
    from coordinator.serverapp import PartyFailure, interruption
    from fedcredit.errors import DataError

    died = PartyFailure({"bank2": "no reply within 60 s (disconnected?)", "bank1": "peer gone",
                         "node 1": "Node Unavailable"}, {}, {"bank1": "psi 1, sb 2"}, frozenset({"bank2", "node 1"}))
    why = interruption("secureboost", died, "r1")
    assert why is not None and "bank1 holds psi 1, sb 2" in why and "fedcredit runs resume r1" in why
    assert interruption("horizontal", died, "r1") is None
    final = PartyFailure({"bank2": "party 'bank2': no checkpoint of run", "bank1": "aborted"}, {},
                         {"bank1": "psi 1"})
    assert interruption("secureboost", final, "r1") is None  # bank2 answered without 'resumable': failed for good
    assert interruption("vertical-lr", DataError("bad table"), "r1") is None


def test_resume_rpc_over_mtls(tmp_path: Path) -> None:
    import grpc

    from coordinator.control import ControlServicer, add_control_service
    from coordinator.registry import Registry
    from coordinator.relay import start_relay
    from crypto.certs import init_ca, issue
    from crypto.tls import secure_channel
    from fedcredit.config import CoordinatorConfig
    from protos import control_pb2 as pb
    from protos import control_pb2_grpc as pbg

    init_ca(tmp_path / "ca", "ctl")
    ids = {n: issue(tmp_path / "ca", tmp_path / n, n, role=r)
           for n, r in (("coordinator", "coordinator"), ("operator", "operator"), ("bank1", "party"))}
    config = CoordinatorConfig.model_validate({
        "federation": {"ca_dir": str(tmp_path / "ca")},
        "coordinator": {"identity_dir": str(ids["coordinator"].dir), "state_dir": str(tmp_path / "state")},
        "parties": [{"name": n, "certificate": str(tmp_path / f"{n}.crt"), "flower_public_key": str(tmp_path / f"{n}.p")}
                    for n in ("bank1", "bank2")],
    })
    reg = Registry(tmp_path / "registry.db")
    launched: list[str] = []

    def launch(run_id: str) -> str:
        launched.append(run_id)
        return f"flower-{len(launched)}"

    servicer = ControlServicer(config, reg, launch, poll_s=0.01, ca_pem=ids["coordinator"].ca_pem)
    h = start_relay(ids["coordinator"], membership=reg.job_parties, extra_servicers=[add_control_service(servicer)])
    run = reg.create_run("v", "secureboost", VJOB)
    reg.mark_running(run)
    reg.interrupt(run, "party bank2 died")
    try:
        ch = secure_channel(h.address, ids["bank1"])
        with pytest.raises(grpc.RpcError) as exc:  # a party cannot restart a run
            pbg.ControlStub(ch).ResumeRun(pb.RunRequest(run_id=run), timeout=10)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        ch.close()
        assert launched == []
        ch = secure_channel(h.address, ids["operator"])
        stub = pbg.ControlStub(ch)
        with pytest.raises(grpc.RpcError) as exc:
            stub.ResumeRun(pb.RunRequest(run_id="20260101-000000-ffffff"), timeout=10)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
        info = stub.ResumeRun(pb.RunRequest(run_id=run), timeout=10)
        assert (info.status, info.attempt, info.flower_run_id) == ("queued", 2, "flower-1") and launched == [run]
        with pytest.raises(grpc.RpcError) as exc:
            stub.ResumeRun(pb.RunRequest(run_id=run), timeout=10)
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "only an interrupted run" in exc.value.details()
        reg.finish(run, {})
        with pytest.raises(grpc.RpcError) as exc:
            stub.ResumeRun(pb.RunRequest(run_id=run), timeout=10)
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "finished" in exc.value.details()
        assert launched == [run]
        ch.close()
    finally:
        h.stop(grace=0)


def test_a_resumed_run_must_be_the_job_this_party_approved(tmp_path: Path) -> None:
    """The resume flag opens nothing: the ledger gate checks the approved digest before any table or checkpoint."""
    from test_policy import ALLOW, VJOB, Party  # the policy tests' party (config, certificates, data)

    from fedcredit.control_plane import VERTICAL_RUN
    from fedcredit.errors import PolicyRefused
    from party.clientapp import run_party_role

    party = Party(tmp_path, ALLOW.replace('columns = ["id", "y", "a", "b"]', 'columns = ["id", "y", "a", "b", "secret"]'))
    assert party.admit(VJOB, "run-7")["status"] == "accepted"
    ck = CheckpointStore(party.state, "run-7", "bank1")
    ck.save("psi", 1, {"ids_digest": "x"}, {"indices": np.arange(3)})
    before = ck.load("psi", 1).meta

    def resume(job: str, run_id: str = "run-7", **meta: Any) -> bytes:
        return run_party_role(party.cfg, VERTICAL_RUN, b"", {**party.meta(job, run_id), "resume": True,
                                                             "attempt": 2, **meta})

    with pytest.raises(PolicyRefused, match=r"party 'bank1' refused the job \(rule replay\).*another job spec"):
        resume(VJOB.replace("test_fraction = 0.2", "test_fraction = 0.5"))
    with pytest.raises(PolicyRefused, match=r"rule admission\).*never admitted"):
        resume(VJOB, "run-8")
    with pytest.raises(ProtocolError, match="inconsistent resume request"):
        resume(VJOB, attempt=1)
    assert not [e for e in party.events() if e.event == "dataset_used"]
    assert ck.steps("psi") == [1] and ck.load("psi", 1).meta == before  # the checkpoint untouched


def test_resume_vocabulary_is_declared_by_each_protocol() -> None:
    from fedcredit.protocols import psi
    from fedcredit.protocols import vertical_lr as vlr
    from fedcredit.protocols.secureboost.messages import Op, tags

    assert (psi.Tags("psi").resume.held, psi.Tags("psi").resume.at) == ("psi/resume/held", "psi/resume/at")
    assert (vlr.Tags("vlr").resume.held, vlr.Tags("vlr").resume.at) == ("vlr/resume/held", "vlr/resume/at")
    assert (tags("sb").resume.held, tags("sb").resume.at, Op.CHECKPOINT) == ("sb/resume/held", "sb/resume/at",
                                                                             "checkpoint")
    cmd, reply = tags("sb")  # still the two tags the wire has always carried
    assert (cmd, reply) == ("sb.cmd", "sb.reply")


def test_a_registry_from_before_resumable_runs_opens_with_attempt_1(tmp_path: Path) -> None:
    import sqlite3

    from coordinator.registry import SCHEMA, Registry

    db = tmp_path / "old.db"
    c = sqlite3.connect(db)
    c.executescript(SCHEMA)  # the runs table of before (no attempt column)
    c.execute("INSERT INTO runs (run_id, name, type, status, created, job_toml) VALUES ('r1','v','secureboost',"
              "'running', 0, ?)", (VJOB,))
    c.commit()
    c.close()
    reg = Registry(db)
    rec = reg.get("r1")
    assert rec is not None and (rec.attempt, rec.status) == (1, "running") and reg.job_parties("r1") == {"bank1", "bank2"}


# --------------------------------------------------------------------------- PSI per batch (run_psi itself)

_who = threading.local()


def _psi_sets() -> dict[str, list[str]]:
    import random

    rng = random.Random(7)
    a, b = [f"c{i:05d}" for i in range(0, 1000)], [f"c{i:05d}" for i in range(400, 1300)]
    rng.shuffle(a)
    rng.shuffle(b)
    return {"bank": a, "fintech": b}


def _psi(root: Path, *, resume: bool = False, run: str = RUN, keys: dict[str, Any] | None = None,
         records: list[WireRecord] | None = None, sets: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """bank (leader) and fintech, batches of 100 ids: bank 10 batches, fintech 9 (10 rounds)."""
    from fedcredit.protocols.psi import run_psi

    sets = sets or _psi_sets()
    hub = InMemoryHub(default_timeout=30)
    if records is not None:
        hub.observers.append(records.append)

    def role(p: str, tr: Transport) -> Any:
        _who.party, _who.keys = p, keys
        return run_psi(tr, sets[p], list(sets), leader="bank", batch_size=100,
                       checkpoint=CheckpointStore(root / p, run, p), resume=resume)

    return run_roles(hub, {p: partial(role, p) for p in sets}, timeout_s=60)


@pytest.fixture
def psi_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``keys`` passed to _psi, each party draws the given scalar (a reference run with the same keys)."""
    from crypto.psi import PsiKey

    real = PsiKey.generate

    def generate() -> PsiKey:
        keys = getattr(_who, "keys", None)
        return keys[_who.party] if keys else real()

    monkeypatch.setattr(PsiKey, "generate", staticmethod(generate))


def _crash_psi(monkeypatch: pytest.MonkeyPatch, root: Path, k: int) -> None:
    """bank dies while writing round k+1's checkpoint (it holds k); fintech saves k+1, then loses bank."""
    real = CheckpointStore.save

    def save(self: CheckpointStore, stage: str, step: int, meta: Any, arrays: Any = None, **kw: Any) -> Path:
        if (self.party, stage, step) == ("bank", "psi_batch", k + 1):
            raise Crash(f"party 'bank': simulated crash before checkpoint {stage} #{step}")
        return real(self, stage, step, meta, arrays, **kw)

    monkeypatch.setattr(CheckpointStore, "save", save)
    with _crashes():
        _psi(root)
    monkeypatch.setattr(CheckpointStore, "save", real)


def test_psi_resumes_after_the_last_batch_every_party_holds(tmp_path: Path, monkeypatch, psi_keys) -> None:
    from crypto.psi import PsiKey
    from fedcredit.protocols.psi import drop_progress

    root = tmp_path / "crash"
    _crash_psi(monkeypatch, root, 3)
    stores = {p: CheckpointStore(root / p, RUN, p) for p in ("bank", "fintech")}
    assert {p: st.steps("psi_batch") for p, st in stores.items()} == {"bank": [1, 2, 3], "fintech": [1, 2, 3, 4]}
    for st in stores.values():  # owner-only, the scalar included
        assert st.steps("psi_key") == [1]
        for f in st.dir.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    keys = {p: PsiKey.load(st.load("psi_key", 1).arrays["key"].tobytes()) for p, st in stores.items()}

    records: list[WireRecord] = []
    got = _psi(root, resume=True, records=records)
    assert [json.loads(r.payload) for r in records if r.tag == "psi/batch/resume/held"] == [{"held": [1, 2, 3, 4]}]
    assert [json.loads(r.payload) for r in records if r.tag == "psi/batch/resume/at"] == [{"step": 3}]
    rounds = {p: sorted(int(r.tag.rsplit("/", 1)[1]) for r in records if r.tag.startswith("psi/s/") and r.sender == p)
              for p in ("bank", "fintech")}
    # recomputed: rounds 3.. only (fintech redoes round 3, which it had saved as step 4; bank had not saved it)
    assert rounds == {"bank": [3, 4, 5, 6, 7, 8, 9], "fintech": [3, 4, 5, 6, 7, 8]}
    assert sum(1 for r in records if r.tag.startswith("psi/d/")) == 7 + 6

    ref = _psi(tmp_path / "ref", keys=keys)  # uninterrupted, with the same scalars
    for p in ("bank", "fintech"):
        assert got[p].intersection_ids == ref[p].intersection_ids  # same ids, same order
        assert list(got[p].indices) == list(ref[p].indices)
    assert got["bank"].intersection_ids == got["fintech"].intersection_ids and got["bank"].size == 600
    # the progress (scalar included) stays until the caller has stored the result, then goes
    for st in stores.values():
        drop_progress(st)
        assert st.steps("psi_key") == st.steps("psi_batch") == []


def test_psi_checkpoint_of_another_run_another_key_or_altered_is_refused(tmp_path: Path, monkeypatch) -> None:
    import shutil

    from crypto.psi import PsiKey
    from fedcredit.errors import DataError

    root = tmp_path / "crash"
    _crash_psi(monkeypatch, root, 2)
    src = root / "bank" / "checkpoints" / RUN

    def case(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(root, d)
        return d

    # the checkpoints of run RUN copied under another run id
    other = "20260101-000000-bbbbbb"
    d = case("other-run")
    (d / "bank" / "checkpoints" / RUN).rename(d / "bank" / "checkpoints" / other)
    with pytest.raises(DataError, match=rf"party 'bank': .*psi_key-00000001.ckpt is not checkpoint psi_key #1 of "
                                        rf"run '{other}'"):
        _psi(d, resume=True, run=other)

    # another key in place of this run's (its batches were made with the old one)
    d = case("other-key")
    st = CheckpointStore(d / "bank", RUN, "bank")
    old = st.load("psi_key", 1)
    k = PsiKey.generate()
    st.save("psi_key", 1, {**old.meta, "key_fp": k.fingerprint()}, {"key": np.frombuffer(k.serialize(), np.uint8)})
    with pytest.raises(DataError, match=r"party 'bank'.*psi_batch-00000001.ckpt of run .* was made with another PSI "
                                        r"key"):
        _psi(d, resume=True)

    # one doubly-blinded value altered in a batch file
    d = case("altered")
    f = d / "bank" / "checkpoints" / RUN / "psi_batch-00000002.ckpt"
    raw = bytearray(f.read_bytes())
    raw[-5] ^= 0x01
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"psi_batch-00000002.ckpt of run .*values do not match its digest"):
        _psi(d, resume=True)

    # the key file itself altered
    d = case("altered-key")
    f = d / "bank" / "checkpoints" / RUN / "psi_key-00000001.ckpt"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0x01
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"psi_key-00000001.ckpt .*does not match its recorded fingerprint"):
        _psi(d, resume=True)
    assert src.is_dir()  # the original is untouched


def test_psi_resume_with_three_parties_around_the_leader(tmp_path: Path, monkeypatch, psi_keys) -> None:
    from crypto.psi import PsiKey

    sets = _psi_sets()
    sets["shop"] = [f"c{i:05d}" for i in range(700, 950)]  # 3 batches; common with both: 700..949
    root = tmp_path / "crash"
    real = CheckpointStore.save

    def save(self: CheckpointStore, stage: str, step: int, meta: Any, arrays: Any = None, **kw: Any) -> Path:
        if (self.party, stage, step) == ("bank", "psi_batch", 3):
            raise Crash("party 'bank': simulated crash before checkpoint psi_batch #3")
        return real(self, stage, step, meta, arrays, **kw)

    monkeypatch.setattr(CheckpointStore, "save", save)
    with _crashes():
        _psi(root, sets=sets)
    monkeypatch.setattr(CheckpointStore, "save", real)
    stores = {p: CheckpointStore(root / p, RUN, p) for p in sets}
    # rounds run in lockstep (only one batch per peer in flight: bounded memory), so every non-leader holds the
    # rounds up to the one bank finished sending (its doubly-blinded batch 2), whatever its own batch count
    assert {p: st.steps("psi_batch") for p, st in stores.items()} == {"bank": [1, 2], "fintech": [1, 2, 3],
                                                                       "shop": [1, 2, 3]}
    keys = {p: PsiKey.load(st.load("psi_key", 1).arrays["key"].tobytes()) for p, st in stores.items()}
    records: list[WireRecord] = []
    got = _psi(root, resume=True, records=records, sets=sets)
    assert [json.loads(r.payload) for r in records if r.tag == "psi/batch/resume/at"] == [{"step": 2}, {"step": 2}]
    assert sorted(r.tag for r in records if r.sender == "shop" and r.tag.startswith("psi/s/")) == ["psi/s/2"]
    ref = _psi(tmp_path / "ref", keys=keys, sets=sets)
    for p in sets:
        assert got[p].intersection_ids == ref[p].intersection_ids and got[p].size == 250


def test_vertical_lr_shared_weights_resume_from_each_sides_own_share(tables, tmp_path: Path, crash_after) -> None:
    """passive_weights = "shared": each side checkpoints only its own share (the passive its a_k, the label party its
    b_k); a resumed run continues from them and ends with the passive holding Enc(w_k) only."""
    job = _job("vertical-lr", "max_epochs = 2\nfull_batch_steps = 2\nbatch_size = 512\npatience = 10\n"
                              "passive_weights = \"shared\"")
    ref = _run(tables, job, tmp_path / "ref")
    root = tmp_path / "crash"
    crash_after("fintech", "vlr", 3)
    with _crashes():
        _run(tables, job, root)
    ck = CheckpointStore(root / "bank", RUN, "bank").load("vlr", 3)
    assert {"b0", "vb0", "bb0"} <= set(ck.arrays) and ck.meta["passive_weights"] == "shared"
    crash_after("nobody", "", 0)
    (root / "fintech" / "checkpoints" / RUN / "vlr-00000003.ckpt").unlink()
    records: list[WireRecord] = []
    out = _run(tables, job, root, resume=True, records=records)
    assert [json.loads(r.payload) for r in records if r.tag == "vlr/resume/at"] == [{"step": 2}]
    got = _models(root, "vertical_lr")
    assert got["fintech"]["weights"] is None and got["fintech"]["passive_weights"] == "shared"
    assert out["bank"]["metrics"]["auc"] == pytest.approx(ref["bank"]["metrics"]["auc"], abs=2e-3)
    assert out["bank"]["epochs_run"] == ref["bank"]["epochs_run"] == 4
