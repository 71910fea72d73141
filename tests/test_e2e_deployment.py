"""End-to-end over the real path: coordinator + three banks as processes on 127.0.0.1.

Real ``flower-superlink`` / ``flower-supernode`` with TLS and SuperNode key
authentication, the mutual-TLS relay and Control service, real CKKS ciphertexts.
One federation is shared by the tests in this module (start-up is the slow part).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crypto import ckks
from crypto.certs import Identity, init_ca, issue
from fedcredit.errors import FedCreditError, SecurityError
from fedcredit.models import load_model
from fedcredit.protocols.horizontal import decode_message
from simulations.deployment import LocalFederation, PartySpec, free_port

pytestmark = pytest.mark.e2e

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BANKS = {"bank1": "default_credit_homo_guest.csv", "bank2": "default_credit_homo_host_1.csv",
         "bank3": "default_credit_homo_host_2.csv"}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("federation")
    data = root / "data"
    data.mkdir()
    test = pd.read_csv(DATA / "default_credit_homo_test.csv")
    parties = []
    for i, (bank, fname) in enumerate(BANKS.items()):
        df = pd.read_csv(DATA / fname).iloc[:3000]
        df.to_csv(data / f"{bank}.csv", index=False)
        test.iloc[i::3].iloc[:1000].to_csv(data / f"{bank}_test.csv", index=False)
        parties.append(PartySpec(bank, {"train": {"path": data / f"{bank}.csv", "label_column": "y"},
                                        "test": {"path": data / f"{bank}_test.csv", "label_column": "y"}}))
    capture = root / "coordinator-capture"
    federation = LocalFederation(root / "fed", parties).setup()
    federation.capture = capture  # type: ignore[attr-defined]
    federation.start(coordinator_env={"FEDCREDIT_CAPTURE_DIR": str(capture)})
    yield federation
    federation.stop()


def _run(fed: LocalFederation, name: str, model: dict, **job) -> tuple[str, object]:
    path = fed.write_job(name, {"job": {"name": name, "type": "horizontal", "parties": list(BANKS),
                                        "round_timeout_s": 120.0, **job}, "model": model})
    client = fed.client()
    run_id = client.submit(path)
    events = [json.loads(ev.data_json) for ev in client.watch(run_id) if not ev.HasField("run")]
    info = client.get(run_id)
    client.close()
    return run_id, (info, events)


def test_encrypted_fedavg_job_completes_and_coordinator_sees_no_plaintext(fed: LocalFederation) -> None:
    run_id, (info, events) = _run(fed, "e2e-fedavg", {"family": "lr", "algorithm": "fedavg", "rounds": 2,
                                                      "newton_rounds": 2})  # Newton's messages captured too
    assert info.status == "finished", info.error
    result = json.loads(info.result_json)
    # quality: the joint model is a real credit model on held-out rows of every bank
    assert result["global"]["auc"] > 0.70
    assert result["global"]["n_test"] == 3000
    assert set(result["parties"]) == set(BANKS)
    assert any(e.get("event") == "round" and e.get("round") == 2 for e in events)

    # every bank holds the same global model, saved locally
    flats = {}
    for bank in BANKS:
        path = fed.root / "state" / bank / "models" / run_id / "global_model.json"
        flats[bank] = load_model(path).model.get_flat()
    ref = flats["bank1"]
    assert all(np.allclose(v, ref, atol=1e-9) for v in flats.values())
    # ... and its own run report beside it (fedcredit/report.py); the coordinator learns only the path
    for bank in BANKS:
        assert result["parties"][bank]["report"] == f"models/{run_id}/report.html"
        doc = json.loads((fed.root / "state" / bank / "models" / run_id / "report.json").read_text())
        assert [e["model"] for e in doc["evaluation"]][:2] == ["federated", "local only"]
        assert (fed.root / "state" / bank / "models" / run_id / "report.html").stat().st_size > 10_000

    # privacy: everything the coordinator received during the run
    everything = sorted(fed.capture.glob("*.bin"))  # type: ignore[attr-defined]
    # model publishing replies are JSON manifests: hashes and public metrics only
    for p in everything:
        if "-artifact." in p.name:
            manifest_reply = json.loads(p.read_bytes())
            assert not any(n in p.read_bytes() for n in (b"\"weights\"", b"\"coef\""))
            assert isinstance(manifest_reply, dict)
    # admission replies (job.admit) are the party's verdict on the job: status, digest, party, how it was approved
    for p in everything:
        if "-job.admit." in p.name:
            assert set(json.loads(p.read_bytes())) <= {"status", "digest", "party", "approval"}
    captured = [p for p in everything if "-artifact." not in p.name and "-job.admit." not in p.name]
    assert len(captured) >= 3 * 4
    messages = [decode_message(p.read_bytes(), p.name) for p in captured]
    pub = None
    for _header, blobs in messages:
        if "public_ctx" in blobs:
            pub = ckks.load_public(blobs["public_ctx"])  # refuses a context carrying the secret key
    assert pub is not None
    needles = [ref.astype(np.float64).tobytes(), ref.astype(np.float32).tobytes()]
    needles += [ref[:4].astype(np.float64).tobytes(), ref[:4].astype(np.float32).tobytes()]
    n_ct = 0
    for (header, blobs), p in zip(messages, captured):
        raw = p.read_bytes()
        assert not any(n in raw for n in needles), f"{p.name} contains the model weights in clear"
        for name, blob in blobs.items():
            if name == "public_ctx":
                continue
            if name == "sa:pub":  # secure-aggregation mask public keys (32 bytes each): public by design
                assert len(blob) % 32 == 0 and not ckks.is_ckks_blob(blob)
                continue
            if name.startswith(("envelope:", "sa:to:")):  # sealed to another party (key / secagg shares)
                assert not ckks.is_ckks_blob(blob) and b"FCKK" not in blob
                continue  # the coordinator holds no envelope key
            assert ckks.is_ckks_blob(blob), f"{p.name}: blob '{name}' is not a CKKS ciphertext"
            with pytest.raises(SecurityError):
                ckks.decrypt_vector(pub, blob)
            n_ct += 1
        # the JSON header holds only public fields: no per-row or per-weight arrays
        text = json.dumps(header)
        assert "update" not in header and len(text) < 4000, f"{p.name}: unexpected header {text[:200]}"
    assert n_ct >= 3 * 3  # stats + 2 updates per bank at least

    # each bank's audit log recorded exactly what the coordinator received from it
    for bank in BANKS:
        log = [json.loads(line) for line in (fed.root / "state" / bank / "audit.jsonl").read_text().splitlines()]
        log = [r for r in log if r.get("kind") != "policy"]  # the party's job-policy lines share the file
        mine = {r["sha256"] for r in log if r["session"] == run_id and r["receiver"] == "coordinator"}
        got = {hashlib.sha256(p.read_bytes()).hexdigest() for p in captured if f"-{bank}-" in p.name}
        assert got and got <= mine


def test_runs_survive_coordinator_restart_and_cli_lists_them(fed: LocalFederation) -> None:
    client = fed.client()
    before = {r.run_id: r.status for r in client.list()}
    client.close()
    assert "finished" in before.values()
    fed.stop_process("coordinator")
    fed.start_coordinator(env={"FEDCREDIT_CAPTURE_DIR": str(fed.capture)})  # type: ignore[attr-defined]
    for b in BANKS:  # parties re-dial the restarted SuperLink on their own; make sure they are alive
        assert fed.procs[b].poll() is None
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, "-m", "fedcredit.cli", "runs", "--json", "--control", fed.control,
         "--identity-dir", str(fed.certs / "operator")],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    listed = {r["run_id"]: r for r in json.loads(out.stdout)}
    for run_id, status in before.items():
        assert listed[run_id]["status"] == status
        if status == "finished":
            assert listed[run_id]["result"]["global"]["auc"] > 0.7
    finished = next(r for r, s in before.items() if s == "finished")
    out = subprocess.run(
        [sys.executable, "-m", "fedcredit.cli", "status", finished, "--control", fed.control,
         "--identity-dir", str(fed.certs / "operator")],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert out.returncode == 0 and "finished" in out.stdout and "global test: auc" in out.stdout


def test_party_that_disconnects_mid_run_is_dropped_and_run_continues(fed: LocalFederation) -> None:
    path = fed.write_job("e2e-drop", {
        "job": {"name": "e2e-drop", "type": "horizontal", "parties": list(BANKS), "min_parties": 2,
                "round_timeout_s": 120.0},  # a per-call bound; the killed bank is seen dead by heartbeat, not this
        "model": {"family": "lr", "algorithm": "fedprox", "rounds": 3, "newton_rounds": 0},
    })
    client = fed.client()
    run_id = client.submit(path)
    killed = False
    for ev in client.watch(run_id):
        if ev.HasField("run"):
            break
        data = json.loads(ev.data_json)
        if data.get("event") == "round" and data.get("round") == 1 and not killed:
            fed.stop_process("bank3")
            killed = True
    info = client.get(run_id)
    client.close()
    assert killed
    assert info.status == "finished", info.error
    result = json.loads(info.result_json)
    assert "bank3" in result["dropped"]
    assert set(result["parties"]) == {"bank1", "bank2"}
    # secure aggregation carried on without bank3: the survivors' shares unmasked the round it missed
    # (bank3 dropped before sending its update) or the round whose unmasking it missed (after sending)
    sa = result["secagg"]
    assert sa["threshold"] == 2 and sa["max_dropouts"] == 1
    assert any(("bank3" in u["dropped"] or "bank3" not in u["revealed_by"]) and set(u["revealed_by"]) == {"bank1", "bank2"}
               for u in sa["unmasked"]), sa


def test_unregistered_supernode_key_is_refused(fed: LocalFederation, tmp_path: Path) -> None:
    """A SuperNode whose key the coordinator never registered cannot join the federation.

    Not through a bank's own mutual-TLS fleet link (the front door admits each party
    certificate only with that party's registered key), and not even from the
    coordinator's host, straight at the loopback SuperLink (Flower's own SuperNode
    authentication, kept as the second lock).
    """
    from fedcredit.processes import find_executable, flower_env, stop_process_group
    from party.fleet_link import FleetLink

    ca = tmp_path / "rogue-ca"
    init_ca(ca, "rogue")
    ident = issue(ca, tmp_path / "mallory", "mallory")
    bank1 = Identity.load(fed.certs / "bank1", "bank1")
    link = FleetLink(bank1, f"127.0.0.1:{fed.flower_port}", tmp_path / "link-tls").start()
    state = fed.root / "state" / "coordinator"
    loopback = json.loads((state / "coordinator.ready.json").read_text())["superlink"]
    routes = {
        "bank1's fleet link": (link.address, link.loopback_ca),
        "loopback SuperLink": (loopback, state / "loopback-tls" / "loopback-ca.crt"),
    }
    from coordinator.flower import FEDERATION_ALIAS, flwr_cli

    def nodes() -> set[str]:
        return {n["node-id"] for n in flwr_cli(state / "flwr-home", "supernode", "ls", FEDERATION_ALIAS)["nodes"]}

    before = nodes()
    rcs, logs = {}, {}
    try:
        for what, (address, root_ca) in routes.items():
            log = tmp_path / f"rogue-supernode-{what.split()[0]}.log"
            with open(log, "wb") as out:
                # Flower's SuperExec child inherits stdout: log to a file and wait for the SuperNode itself
                proc = subprocess.Popen(
                    [find_executable("flower-supernode"), "--superlink", address, "--root-certificates", str(root_ca),
                     "--auth-supernode-private-key", str(ident.flower_key_path), "--max-retries", "1",
                     "--max-wait-time", "20", "--port", str(free_port())],
                    stdout=out, stderr=subprocess.STDOUT, env=flower_env(), start_new_session=True,
                )
                try:
                    rcs[what] = proc.wait(120)  # it gives up by itself: it never joins
                finally:
                    stop_process_group(proc)
            logs[what] = log.read_text()
    finally:
        link.stop()
    assert nodes() == before
    # through the door: its activation never reached the SuperLink (a 401 makes Flower's SuperNode stop itself)
    assert ("POST /v1/fleet/activate-node: the request does not carry the SuperNode key registered for party 'bank1'"
            in (fed.root / "logs" / "coordinator.log").read_text())
    # at the SuperLink itself: Flower's SuperNode authentication refuses the unregistered key
    assert rcs["loopback SuperLink"] != 0 and "Failed to activate SuperNode" in logs["loopback SuperLink"]


def test_party_with_certificate_from_another_ca_is_refused_by_relay(fed: LocalFederation, tmp_path: Path) -> None:
    from party.dataplane import RelayTransport

    ca = tmp_path / "rogue-ca"
    init_ca(ca, "rogue")
    issue(ca, tmp_path / "bank1", "bank1")  # same name as a real bank, wrong CA
    ident = Identity.load(tmp_path / "bank1", "bank1")
    with pytest.raises((SecurityError, FedCreditError)):
        t = RelayTransport(ident, fed.control, "rogue-session", connect_timeout=10)
        t.close()


def test_party_start_rejects_bad_data_file_naming_file_and_column(fed: LocalFederation, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    df = pd.read_csv(DATA / "default_credit_homo_guest.csv").iloc[:50]
    df["x3"] = df["x3"].astype(object)
    df.loc[7, "x3"] = "n/a"
    df.to_csv(bad, index=False)
    cfg = (fed.root / "bank1.toml").read_text().replace(str(fed.root.parent / "data" / "bank1.csv"), str(bad))
    assert str(bad) in cfg
    bad_cfg = tmp_path / "bank1-bad.toml"
    bad_cfg.write_text(cfg)
    out = subprocess.run([sys.executable, "-m", "fedcredit.cli", "party", "start", "--config", str(bad_cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "bad.csv" in out.stderr and "x3" in out.stderr and "bank1" in out.stderr
