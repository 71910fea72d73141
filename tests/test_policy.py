"""A party's [policy], its job ledger and the gate in front of every ClientApp call.

Written as the coordinator-turned-attacker would try it: jobs naming strangers, other
job types, unlisted datasets and columns, calls without admission, a setup message
smuggling another job, a publishing call naming another run, and replays of old jobs.
The gate under test is the deployed one (``party.clientapp.run_party_role``), called
in-process with real certificates; the e2e over real processes is tests/test_e2e_policy.py.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from crypto.certs import cert_fingerprint, init_ca, issue
from fedcredit.config import load_party_config
from fedcredit.control_plane import ARTIFACT_BUILD, ARTIFACT_INSTALL, JOB_ADMIT, VERTICAL_RUN
from fedcredit.errors import ConfigError, DataError, PolicyRefused
from fedcredit.jobs import horizontal_job, parse_job
from fedcredit.protocols.horizontal import encode_message
from fedcredit.protocols.psi import run_psi
from fedcredit.transport import InMemoryHub
from party.audit import read_audit_log, read_policy_events
from party.clientapp import PartyRuntime, run_party_role
from party.jobs import JobLedger
from party.policy import job_digest, review_job

HJOB = ('[job]\nname = "pd"\ntype = "horizontal"\nparties = ["bank1", "bank2"]\n'
        '[model]\nrounds = 2\nfeature_columns = ["a", "b"]\n')
VJOB = ('[job]\ntype = "vertical-lr"\nparties = ["bank1", "bank2"]\nlabel_party = "bank2"\n'
        '[model]\ntest_fraction = 0.2\n')


class Party:
    """bank1's config, certificates and data in ``tmp``; ``call`` is one ClientApp call through the real gate."""

    def __init__(self, tmp: Path, policy: str, *, datasets: str | None = None) -> None:
        ca = init_ca(tmp / "ca", "policy-test")
        issue(ca, tmp / "certs", "bank1")
        self.peer = issue(ca, tmp / "bank2", "bank2")
        self.stranger = issue(ca, tmp / "mallory", "mallory")
        pd.DataFrame({"id": ["1", "2", "3"], "y": [0, 1, 0], "a": [1.0, 2.0, 3.0], "b": [0.0, 1.0, 0.0],
                      "secret": [9.0, 9.0, 9.0]}).to_csv(tmp / "train.csv", index=False)
        pd.DataFrame({"id": ["4", "5"], "y": [1, 0], "a": [1.0, 2.0], "b": [0.0, 1.0],
                      "secret": [9.0, 9.0]}).to_csv(tmp / "test.csv", index=False)
        datasets = datasets or ('[datasets.train]\npath = "train.csv"\nlabel_column = "y"\n'
                                '[datasets.test]\npath = "test.csv"\nlabel_column = "y"\n')
        self.cfg = tmp / "bank1.toml"
        self.cfg.write_text('[party]\nname = "bank1"\nidentity_dir = "certs"\nstate_dir = "state"\n'
                            '[coordinator]\nflower_address = "127.0.0.1:1"\nrelay_address = "127.0.0.1:2"\n'
                            f'{datasets}{policy}')
        self.state = tmp / "state"

    def meta(self, job: str, run_id: str = "run-1", peers: dict[str, Any] | None = None) -> dict[str, Any]:
        certs = peers if peers is not None else {"bank2": self.peer.cert_pem.decode()}
        return {"run_id": run_id, "job_toml": job, "peer_certs": certs}

    def call(self, method: str, job: str = HJOB, run_id: str = "run-1", payload: bytes = b"", **kw: Any) -> bytes:
        return run_party_role(self.cfg, method, payload, self.meta(job, run_id, **kw))

    def admit(self, job: str = HJOB, run_id: str = "run-1", **kw: Any) -> dict[str, Any]:
        return dict(json.loads(self.call(JOB_ADMIT, job, run_id, **kw)))

    def events(self) -> list[Any]:
        return read_policy_events(self.state / "audit.jsonl")


ALLOW = ('[policy]\napproval = "auto"\npartners = ["bank2"]\njob_types = ["horizontal", "vertical-lr"]\n'
         'min_intersection = 2\n'
         '[policy.datasets.train]\ncolumns = ["id", "y", "a", "b"]\n'
         '[policy.datasets.test]\ncolumns = ["id", "y", "a", "b"]\n')


def _refused(exc: pytest.ExceptionInfo[PolicyRefused], rule: str) -> str:
    msg = str(exc.value)
    assert exc.value.party == "bank1" and exc.value.rule == rule, msg
    assert f"party 'bank1' refused the job (rule {rule})" in msg, msg
    return msg


# --------------------------------------------------------------------------- every rule refuses, naming party and rule


@pytest.mark.parametrize("job, policy, rule, needle", [
    (HJOB.replace('"bank1", "bank2"', '"bank2", "bank3"'), ALLOW, "member", "not listed in [job].parties"),
    (HJOB, ALLOW.replace('"horizontal", ', ""), "job_types", "job type 'horizontal' is not listed"),
    (HJOB.replace('"bank2"]', '"mallory"]'), ALLOW, "partners", "['mallory'] are not listed in [policy].partners"),
    (HJOB.replace('name = "pd"', 'name = "pd"\ntest_dataset = "holdout"'), ALLOW, "datasets", "dataset 'holdout'"),
    (HJOB, ALLOW.replace('[policy.datasets.test]\ncolumns = ["id", "y", "a", "b"]\n', ""), "datasets",
     "dataset(s) ['test'], not listed in [policy.datasets]"),
    (HJOB.replace('["a", "b"]', '["a", "secret"]'), ALLOW, "columns", "column(s) ['secret'] not in [policy.datasets.train]"),
    (HJOB.replace('feature_columns = ["a", "b"]\n', ""), ALLOW, "columns", "['secret']"),  # the file's other columns
    (VJOB, ALLOW.replace('"id", "y", "a", "b"]\n[policy.datasets.test]', '"id", "a", "b"]\n[policy.datasets.test]'),
     "columns", "['secret']"),
])
def test_every_rule_refuses_naming_the_party_and_the_rule(tmp_path: Path, job: str, policy: str, rule: str,
                                                          needle: str) -> None:
    party = Party(tmp_path, policy)
    with pytest.raises(PolicyRefused) as exc:
        party.admit(job)
    assert needle in _refused(exc, rule)
    (ev,) = party.events()
    assert (ev.event, ev.rule, ev.session, ev.party) == ("refused", rule, "run-1", "bank1")
    entry = JobLedger(load_party_config(party.cfg)).get("run-1")
    assert entry is not None and entry.status == "refused" and entry.rule == rule
    with pytest.raises(PolicyRefused) as again:  # the id is burnt: asking again is refused with the same rule
        party.admit(job)
    _refused(again, rule)


def test_a_partner_without_a_verified_certificate_is_refused(tmp_path: Path) -> None:
    party = Party(tmp_path, ALLOW)
    with pytest.raises(PolicyRefused) as exc:
        party.admit(peers={})
    assert "no verified certificate for part(ies) ['bank2']" in _refused(exc, "peers")


def test_no_policy_allows_nothing(tmp_path: Path) -> None:
    """Deny by default: a party config without [policy] runs no job."""
    party = Party(tmp_path, "")
    with pytest.raises(PolicyRefused) as exc:
        party.admit()
    _refused(exc, "job_types")
    review = review_job(load_party_config(party.cfg), parse_job(HJOB), "r", {"bank2": "f"})
    assert {r.rule for r in review.results if not r.ok} == {"job_types", "partners", "datasets", "columns"}


def test_policy_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[policy\]\.approval"):
        load_party_config(Party(tmp_path / "a", ALLOW.replace('"auto"', '"sometimes"')).cfg)
    with pytest.raises(ConfigError, match=r"names dataset\(s\) \['nope'\]"):
        load_party_config(Party(tmp_path / "b", ALLOW + '[policy.datasets.nope]\ncolumns = ["id"]\n').cfg)
    with pytest.raises(ConfigError, match=r"\[policy\]\.colour: unknown field"):
        load_party_config(Party(tmp_path / "c", ALLOW.replace("[policy]\n", '[policy]\ncolour = "red"\n')).cfg)


# --------------------------------------------------------------------------- the digest


def _mutations(value: Any) -> list[Any]:
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value * 2 + 3]
    if isinstance(value, float):
        return [value * 0.5, value + 0.25]
    if isinstance(value, str):
        return [value + "x"]
    if isinstance(value, list) and value:
        return [value[:-1], list(reversed(value))]
    return []


@pytest.mark.parametrize("text", [HJOB, VJOB, VJOB.replace("vertical-lr", "secureboost")])
def test_digest_changes_when_any_job_field_or_peer_changes(text: str) -> None:
    job = parse_job(text)
    peers = {"bank2": "aa" * 32}
    base = job_digest(job, "run-1", peers)
    assert job_digest(parse_job(text + "\n"), "run-1", peers) == base  # same job, other spelling: same digest
    assert job_digest(job, "run-2", peers) != base
    assert job_digest(job, "run-1", {"bank2": "bb" * 32}) != base
    assert job_digest(job, "run-1", {**peers, "bank3": "cc" * 32}) != base
    data = job.model_dump(mode="json", exclude={"control"})
    changed = 0
    for section in ("job", "model"):
        for key, value in data[section].items():
            for new in _mutations(value):
                d = json.loads(json.dumps(data))
                d[section][key] = new
                try:
                    other = type(job).model_validate(d)
                except Exception:  # noqa: BLE001 - a mutation the schema refuses is not a job
                    continue
                if other.model_dump(mode="json") == job.model_dump(mode="json"):
                    continue
                assert job_digest(other, "run-1", peers) != base, f"[{section}].{key} = {new!r} kept the digest"
                changed += 1
    assert changed >= len(data["job"]) + len(data["model"]) - 4  # (nearly) every field was varied
    # [control] only says how the operator's CLI reaches the coordinator: not part of the job
    ctl = parse_job(text + '[control]\naddress = "127.0.0.1:1"\nname = "op2"\n')
    assert job_digest(ctl, "run-1", peers) == base


# --------------------------------------------------------------------------- the ledger: accepted once, no replay


def test_a_run_id_is_accepted_once_and_a_finished_run_takes_no_more_work(tmp_path: Path) -> None:
    party = Party(tmp_path, ALLOW)
    rep = party.admit()
    assert rep["status"] == "accepted" and rep["approval"] == "auto"
    with pytest.raises(PolicyRefused) as exc:  # the same job again under the same run id: a replay
        party.admit()
    assert "a run id is accepted once" in _refused(exc, "replay")
    with pytest.raises(PolicyRefused) as exc:  # the same run id with another job: another digest
        party.call("setup", HJOB.replace("rounds = 2", "rounds = 3"))
    assert "with another job spec" in _refused(exc, "replay")
    # the run's publishing calls are served; artifact.install finishes the run
    with pytest.raises(DataError, match="no saved model"):  # passed the gate, reached the publishing code
        party.call(ARTIFACT_BUILD, payload=json.dumps({"run_id": "run-1"}).encode())
    with pytest.raises(PolicyRefused) as exc:
        party.call(ARTIFACT_BUILD, payload=json.dumps({"run_id": "other-run"}).encode())
    assert "names run 'other-run'" in _refused(exc, "digest")
    ledger = JobLedger(load_party_config(party.cfg))
    review = PartyRuntime(party.cfg, party.meta(HJOB)).review
    ledger.finish(review, ARTIFACT_INSTALL)
    for method in (JOB_ADMIT, "setup", "fit", ARTIFACT_INSTALL):  # a replay of the old job, call by call
        with pytest.raises(PolicyRefused) as exc:
            party.call(method)
        assert "rule replay" in str(exc.value) and "party 'bank1'" in str(exc.value)
    events = [(e.event, e.rule) for e in party.events()]
    assert events[0] == ("accepted", "approval=auto") and ("finished", "") in events
    assert events.count(("refused", "replay")) >= 6


def test_calls_without_admission_are_refused_before_any_data_is_read(tmp_path: Path) -> None:
    party = Party(tmp_path, ALLOW)
    for method in ("setup", "fit", VERTICAL_RUN, ARTIFACT_BUILD):
        with pytest.raises(PolicyRefused) as exc:
            party.call(method, run_id="never-admitted")
        assert "never admitted" in _refused(exc, "admission")
    assert not [e for e in party.events() if e.event == "dataset_used"]
    assert not (party.state / "runs" / "never-admitted").exists()


def test_setup_carrying_another_job_than_the_approved_one_is_refused(tmp_path: Path) -> None:
    party = Party(tmp_path, ALLOW)
    party.admit()
    approved = horizontal_job(parse_job(HJOB), "run-1")
    for change in ({"feature_columns": ["a", "secret"]}, {"parties": ["bank1", "mallory"]}, {"rounds": 50}):
        smuggled = approved.model_copy(update=change).to_dict()
        with pytest.raises(PolicyRefused) as exc:
            party.call("setup", payload=encode_message({"run_id": "run-1", "job": smuggled}))
        assert f"differs from the approved one in ['{next(iter(change))}']" in _refused(exc, "digest")
    with pytest.raises(PolicyRefused) as exc:
        party.call("fit", payload=encode_message({"run_id": "another-run", "round": 1}))
    assert "names run 'another-run'" in _refused(exc, "digest")


def test_a_policy_tightened_after_acceptance_stops_the_run(tmp_path: Path) -> None:
    party = Party(tmp_path, ALLOW)
    party.admit()
    party.cfg.write_text(party.cfg.read_text().replace('partners = ["bank2"]', 'partners = []'))
    with pytest.raises(PolicyRefused) as exc:
        party.call("fit")
    _refused(exc, "partners")


def test_run_lifetime_bounds_an_accepted_run(tmp_path: Path) -> None:
    party = Party(tmp_path, ALLOW.replace('min_intersection = 2', 'min_intersection = 2\nrun_lifetime_s = 0.2'))
    party.admit()
    ledger = JobLedger(load_party_config(party.cfg))
    entry = ledger.get("run-1")
    assert entry is not None
    entry.accepted_at = (entry.accepted_at or 0) - 1.0  # accepted a second ago, lifetime 0.2 s
    ledger._put(entry)
    with pytest.raises(PolicyRefused) as exc:
        party.call("fit")
    assert "run_lifetime_s = 0.2" in _refused(exc, "run_lifetime")


# --------------------------------------------------------------------------- manual approval


MANUAL = ALLOW.replace('approval = "auto"', 'approval = "manual"')
#: a job whose job.admit call waits only 0.1 s for the officer (a third of its round timeout) before "pending"
QUICK = HJOB.replace('name = "pd"', 'name = "pd"\nround_timeout_s = 0.3')


def test_manual_job_waits_and_the_officers_approval_lets_it_proceed(tmp_path: Path) -> None:
    party = Party(tmp_path, MANUAL)
    rep = party.admit(QUICK)
    assert rep["status"] == "pending" and "fedcredit party jobs approve run-1" in rep["message"]
    with pytest.raises(PolicyRefused) as exc:  # no protocol call before the approval
        party.call("setup", QUICK)
    assert "pending, not accepted yet" in _refused(exc, "admission")
    ledger = JobLedger(load_party_config(party.cfg))
    (pending,) = ledger.list("pending")
    assert pending.run_id == "run-1" and pending.datasets == {"train": ["id", "y", "a", "b"],
                                                             "test": ["id", "y", "a", "b"]}
    # a blocked admit call sees the approval as soon as it is recorded
    review = PartyRuntime(party.cfg, party.meta(QUICK)).review
    result: dict[str, Any] = {}
    waiting = threading.Thread(target=lambda: result.update(ledger.admit(review, QUICK, wait_s=30)))
    waiting.start()
    ledger.decide("run-1", approve=True, by="officer-kim", review=review)
    waiting.join(30)
    assert result["status"] == "accepted" and result["approval"] == "manual"
    assert "officer-kim" not in json.dumps(result)  # who approved stays at the party
    events = [(e.event, e.by) for e in party.events()]
    assert events == [("pending", ""), ("refused", "bank1"), ("approved", "officer-kim"), ("accepted", "officer-kim")]
    approved = party.events()[2]
    assert approved.digest == review.digest and approved.job_type == "horizontal" and approved.session == "run-1"
    assert approved.datasets == {"train": ["id", "y", "a", "b"], "test": ["id", "y", "a", "b"]}


def test_a_rejected_or_expired_job_fails_naming_party_and_rule(tmp_path: Path) -> None:
    party = Party(tmp_path, MANUAL.replace('min_intersection = 2', 'min_intersection = 2\napproval_expiry_s = 0.3'))
    assert party.admit(QUICK, run_id="run-r")["status"] == "pending"
    ledger = JobLedger(load_party_config(party.cfg))
    ledger.decide("run-r", approve=False, by="officer-kim", reason="no joint model with bank2 this quarter")
    with pytest.raises(PolicyRefused) as exc:
        party.admit(QUICK, run_id="run-r")
    msg = _refused(exc, "approval")
    assert "no joint model with bank2 this quarter" in msg and "officer-kim" not in msg
    assert party.admit(QUICK, run_id="run-e")["status"] == "pending"
    with pytest.raises(PolicyRefused) as exc:  # a waiting call ends at the expiry
        ledger.admit(PartyRuntime(party.cfg, party.meta(QUICK, "run-e")).review, QUICK, wait_s=30)
    assert "approval_expiry_s = 0.3" in _refused(exc, "approval_expiry")
    with pytest.raises(ConfigError, match="expired"):
        ledger.decide("run-e", approve=True, by="late-officer")
    assert [e.event for e in party.events() if e.session == "run-e"] == ["pending", "expired"]
    with pytest.raises(PolicyRefused) as exc:  # and the coordinator asking again is told so
        party.admit(QUICK, run_id="run-e")
    _refused(exc, "approval_expiry")


def test_an_officer_cannot_approve_what_the_policy_forbids(tmp_path: Path) -> None:
    party = Party(tmp_path, MANUAL)
    assert party.admit(QUICK)["status"] == "pending"
    party.cfg.write_text(party.cfg.read_text().replace('job_types = ["horizontal", "vertical-lr"]', 'job_types = []'))
    config = load_party_config(party.cfg)
    review = review_job(config, parse_job(QUICK), "run-1", {"bank2": cert_fingerprint(party.peer.cert_pem)})
    with pytest.raises(ConfigError, match="rule job_types fails"):
        JobLedger(config).decide("run-1", approve=True, by="officer", review=review)


# --------------------------------------------------------------------------- the data the job receives


def test_tables_carry_only_the_approved_columns_and_each_use_is_audited(tmp_path: Path) -> None:
    policy = ALLOW.replace('"id", "y", "a", "b"]\n[policy.datasets.test]', '"id", "a", "b", "secret"]\n'
                           '[policy.datasets.test]')
    party = Party(tmp_path, policy)
    party.admit(VJOB)  # bank1 is the passive party: no label; its features are every non-id, non-label column
    rt = PartyRuntime(party.cfg, party.meta(VJOB))
    with pytest.raises(PolicyRefused, match="rule admission"):
        rt.table("train")  # not through the gate
    rt.authorize(VERTICAL_RUN)
    t = rt.table("train")
    assert t.feature_names == ["a", "b", "secret"] and t.y is None
    with pytest.raises(PolicyRefused, match="rule datasets"):
        rt.table("test")  # configured, but not part of this job
    (use,) = [e for e in party.events() if e.event == "dataset_used"]
    assert use.datasets == {"train": ["id", "a", "b", "secret"]} and use.method == VERTICAL_RUN
    assert use.detail == "3 rows" and use.session == "run-1"
    # the sent-message reader still reads the same file: only the job.admit reply left the party
    assert [r.tag for r in read_audit_log(party.state / "audit.jsonl")] == [JOB_ADMIT + ".reply"]


# --------------------------------------------------------------------------- min_intersection at PSI


def test_each_partys_minimum_intersection_is_enforced_before_the_intersection_is_revealed() -> None:
    hub = InMemoryHub(default_timeout=30)
    sets = {"bank": [str(i) for i in range(100)], "fintech": [str(i) for i in range(90, 200)]}
    errs: dict[str, BaseException] = {}
    finals: list[bytes] = []
    hub.observers.append(lambda r: finals.append(r.payload) if r.tag.endswith("/final") else None)

    def go(p: str, min_size: int, rule: str) -> None:
        try:
            run_psi(hub.endpoint(p), sets[p], list(sets), leader="bank", min_size=min_size, min_rule=rule)
        except Exception as e:  # noqa: BLE001 - asserted below
            errs[p] = e

    threads = [threading.Thread(target=go, args=("bank", 1, "[model].psi_min_size")),
               threading.Thread(target=go, args=("fintech", 50, "party 'fintech': [policy].min_intersection"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(errs) == {"bank", "fintech"}
    for e in errs.values():
        assert isinstance(e, DataError) and "10 ids" in str(e) and "min_size 50" in str(e)
        assert "party 'fintech': [policy].min_intersection" in str(e)
    (final,) = finals
    assert final.partition(b"\n")[2] == b""  # the leader sent no intersection values


# --------------------------------------------------------------------------- the officer's CLI


def test_party_jobs_cli_shows_rules_and_rejects_with_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedcredit.cli import main

    party = Party(tmp_path, MANUAL)
    assert party.admit(QUICK)["status"] == "pending"
    cfg = ["--config", str(party.cfg)]
    assert main(["party", "jobs", "pending", *cfg]) == 0
    assert "run-1" in capsys.readouterr().out
    party.cfg.write_text(party.cfg.read_text().replace('partners = ["bank2"]', 'partners = []'))
    assert main(["party", "jobs", "show", "run-1", *cfg]) == 0
    out = capsys.readouterr().out
    digest = PartyRuntime(party.cfg, party.meta(QUICK)).review.digest
    assert f"digest: {digest}" in out and "[FAIL] partners" in out and "[pass] columns" in out
    assert "train (train): id 'id', label 'y', 2 features: a, b" in out and 'round_timeout_s = 0.3' in out
    assert main(["party", "jobs", "approve", "run-1", "--by", "kim", *cfg]) == 2  # a failing rule: not approvable
    assert "rule partners fails" in capsys.readouterr().err
    assert main(["party", "jobs", "reject", "run-1", "--by", "kim", "--reason", "not this quarter", *cfg]) == 0
    assert main(["party", "jobs", "show", "../../etc/passwd", *cfg]) == 2  # run ids are names, never paths
    assert "malformed run id" in capsys.readouterr().err
    assert main(["party", "jobs", "pending", "--all", "--json", *cfg]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["status"] == "rejected" and entry["decided_by"] == "kim"
    rejected = [e for e in party.events() if e.event == "rejected"]
    assert rejected and rejected[0].by == "kim" and rejected[0].detail == "not this quarter"
