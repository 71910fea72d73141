"""End-to-end: every job is approved by each party it touches (real processes on 127.0.0.1).

A coordinator and two banks as real daemons (Flower SuperLink/SuperNodes, TLS, the relay).
bank1 approves each job by hand (``approval = "manual"``); bank2's rules decide and its
policy leaves out one column (x22) and one configured dataset (``holdout``).  The
officer's commands are the real CLI (``fedcredit party jobs ...``) run as subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from party.audit import read_policy_events
from simulations.deployment import LocalFederation, PartySpec

pytestmark = pytest.mark.e2e

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BANKS = {"bank1": "default_credit_homo_guest.csv", "bank2": "default_credit_homo_host_1.csv"}
FEATURES = [f"x{i}" for i in range(6)]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("policy-federation")
    data = root / "data"
    data.mkdir()
    test = pd.read_csv(DATA / "default_credit_homo_test.csv")
    parties = []
    for i, (bank, fname) in enumerate(BANKS.items()):
        pd.read_csv(DATA / fname).iloc[:400].to_csv(data / f"{bank}.csv", index=False)
        test.iloc[i::2].iloc[:200].to_csv(data / f"{bank}_test.csv", index=False)
    cols = list(pd.read_csv(data / "bank1.csv", nrows=0).columns)
    parties.append(PartySpec("bank1", {"train": {"path": data / "bank1.csv", "label_column": "y"},
                                       "test": {"path": data / "bank1_test.csv", "label_column": "y"}},
                             policy={"approval": "manual", "job_types": ["horizontal"]}))
    parties.append(PartySpec("bank2", {"train": {"path": data / "bank2.csv", "label_column": "y"},
                                       "test": {"path": data / "bank2_test.csv", "label_column": "y"},
                                       "holdout": {"path": data / "bank2_test.csv", "label_column": "y"}},
                             policy={"job_types": ["horizontal"],
                                     "datasets": {"train": {"columns": [c for c in cols if c != "x22"]},
                                                  "test": {"columns": cols}}}))
    federation = LocalFederation(root / "fed", parties).setup()
    federation.start()
    yield federation
    federation.stop()


def _jobs_cli(fed: LocalFederation, party: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedcredit.cli", "party", "jobs", *args,
                           "--config", str(fed.root / f"{party}.toml")],
                          capture_output=True, text=True, timeout=60)


def _job(fed: LocalFederation, name: str, **job: Any) -> Path:
    model = {"family": "lr", "rounds": 1, "newton_rounds": 0, "local_epochs": 1, "feature_columns": job.pop("features", FEATURES)}
    return fed.write_job(name, {"job": {"name": name, "type": "horizontal", "parties": list(BANKS),
                                        "round_timeout_s": 60.0, **job}, "model": model})


def _events(fed: LocalFederation, party: str, run_id: str) -> list[Any]:
    return [e for e in read_policy_events(fed.root / "state" / party / "audit.jsonl") if e.session == run_id]


def test_manual_party_waits_until_its_officer_approves_then_the_run_finishes(fed: LocalFederation) -> None:
    client = fed.client()
    run_id = client.submit(_job(fed, "e2e-approved"))
    seen_waiting, approved = False, False
    final = None
    for ev in client.watch(run_id):
        if ev.HasField("run"):
            final = ev.run
            break
        data = json.loads(ev.data_json)
        if data.get("event") == "approval" and (data.get("parties") or {}).get("bank1") == "awaiting approval":
            seen_waiting = True
            if not approved:
                # the officer at bank1: list, inspect, approve (the real CLI, as a separate process)
                pending = _jobs_cli(fed, "bank1", "pending", "--json")
                assert pending.returncode == 0, pending.stderr
                (entry,) = [e for e in json.loads(pending.stdout) if e["run_id"] == run_id]
                show = _jobs_cli(fed, "bank1", "show", run_id)
                assert show.returncode == 0, show.stderr
                assert entry["digest"] in show.stdout and "[pass] columns" in show.stdout
                assert "train (train): id 'id', label 'y', 6 features: x0, x1, x2, x3, x4, x5" in show.stdout
                ok = _jobs_cli(fed, "bank1", "approve", run_id, "--by", "e2e-officer")
                assert ok.returncode == 0 and "approved run" in ok.stdout, ok.stderr
                approved = True
    client.close()
    assert final is not None and final.status == "finished", final and final.error
    assert seen_waiting and approved  # the coordinator's run showed bank1 as awaiting approval
    result = json.loads(final.result_json)
    assert result["admission"]["bank1"]["approval"] == "manual" and result["admission"]["bank2"]["approval"] == "auto"
    assert result["publish"]["published"] is True
    # bank1's audit log: waiting, who approved, acceptance, every dataset use, the end of the run
    ev1 = _events(fed, "bank1", run_id)
    kinds = [e.event for e in ev1]
    assert kinds[:3] == ["pending", "approved", "accepted"] and kinds[-1] == "finished", kinds
    assert next(e for e in ev1 if e.event == "approved").by == "e2e-officer"
    uses = [e for e in ev1 if e.event == "dataset_used"]
    assert {k for e in uses for k in e.datasets} == {"train", "test"}
    assert all(cols == ["id", "y", *FEATURES] for e in uses for cols in e.datasets.values())
    assert len({e.digest for e in ev1}) == 1
    ev2 = _events(fed, "bank2", run_id)
    assert ev2[0].event == "accepted" and ev2[0].by == "policy (auto)" and ev2[-1].event == "finished"
    listed = _jobs_cli(fed, "bank1", "pending", "--all", "--json")
    assert {e["run_id"]: e["status"] for e in json.loads(listed.stdout)}[run_id] == "finished"

    # a replay: the same run id and job text sent to each party's ClientApp again, call by call
    job_toml = (fed.root / "e2e-approved.toml").read_text()
    certs = {b: (fed.certs / b / f"{b}.crt").read_text() for b in BANKS}
    script = (
        "import json, sys\n"
        "from party.clientapp import run_party_role\n"
        "from fedcredit.errors import PolicyRefused\n"
        "cfg, meta = sys.argv[1], json.loads(sys.stdin.read())\n"
        "out = {}\n"
        "for m in ('job.admit', 'setup', 'fit', 'finalize', 'artifact.build', 'artifact.install'):\n"
        "    try:\n"
        "        run_party_role(cfg, m, json.dumps({'run_id': meta['run_id']}).encode(), meta)\n"
        "        out[m] = 'served'\n"
        "    except PolicyRefused as e:\n"
        "        out[m] = [e.rule, str(e)]\n"
        "print(json.dumps(out))\n"
    )
    for bank in BANKS:
        meta = {"run_id": run_id, "job_toml": job_toml, "peer_certs": certs}
        rep = subprocess.run([sys.executable, "-c", script, str(fed.root / f"{bank}.toml")], input=json.dumps(meta),
                             capture_output=True, text=True, timeout=120)
        assert rep.returncode == 0, rep.stderr
        for method, verdict in json.loads(rep.stdout).items():
            assert verdict != "served", f"{bank} served a replayed {method}"
            rule, msg = verdict
            assert rule == "replay" and f"party '{bank}'" in msg, (method, msg)
        assert sum(e.event == "refused" and e.rule == "replay" for e in _events(fed, bank, run_id)) == 6


@pytest.mark.parametrize("name, job, party, rule, needle", [
    ("e2e-column", {"features": ["x0", "x22"]}, "bank2", "columns", "column(s) ['x22'] not in [policy.datasets.train]"),
    ("e2e-dataset", {"test_dataset": "holdout"}, "bank2", "datasets",
     "dataset(s) ['holdout'], not listed in [policy.datasets]"),
])
def test_a_job_using_an_unlisted_column_or_dataset_fails_naming_the_party_and_rule(
        fed: LocalFederation, name: str, job: dict[str, Any], party: str, rule: str, needle: str) -> None:
    client = fed.client()
    run_id = client.submit(_job(fed, name, round_timeout_s=30.0, **job))
    final = next(ev.run for ev in client.watch(run_id) if ev.HasField("run"))
    client.close()
    assert final.status == "failed"
    assert f"party '{party}' refused the job (rule {rule})" in final.error and needle in final.error, final.error
    refused = [e for e in _events(fed, party, run_id) if e.event == "refused"]
    assert refused and refused[0].rule == rule
    assert not [e for e in _events(fed, party, run_id) if e.event == "dataset_used"]
    assert not (fed.root / "state" / party / "models" / run_id).exists()
