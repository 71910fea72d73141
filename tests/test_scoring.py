"""Online scoring through real mutual-TLS gRPC servers on 127.0.0.1 (no Flower needed).

Models: vertical LR parts fit on the shared hetero data (plaintext fit: the scoring
path does not care how the weights were found) and SecureBoost parts from
``train_plaintext_reference`` (the federated protocol reproduces them, see
test_secureboost.py).  Artifacts are built, signed by a real federation key and
installed in real model stores; the servers score from the stores.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

from crypto.certs import Identity, init_ca, issue
from fedcredit.artifacts import build_run_artifacts, sign_artifact
from fedcredit.data import load_table
from fedcredit.errors import ConfigError, DataError, SecurityError
from fedcredit.protocols import secureboost as sb
from fedcredit.protocols import vertical_lr as vlr
from fedcredit.protocols.vertical_common import Standardizer
from party.models import ModelStore
from party.scoring import Application, PartyUnavailable, ScoringClient, ScoringService, serve

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GUEST_CSV = DATA / "default_credit_hetero_guest.csv"
HOST_CSV = DATA / "default_credit_hetero_host.csv"
N_FIT = 3000


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(GUEST_CSV), pd.read_csv(HOST_CSV)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    root = tmp_path_factory.mktemp("pki")
    ca = init_ca(root / "ca", "scoring-test")
    ids = {n: issue(ca, root / n, n) for n in ("guest", "host", "other", "client")}
    ids["ca"] = ca  # type: ignore[assignment]
    return ids


def _fit_lr(frames) -> tuple[vlr.LabelModel, vlr.PassiveModel]:
    from sklearn.linear_model import LogisticRegression

    g, h = frames
    gf, hf = [c for c in g.columns if c.startswith("x")], [c for c in h.columns if c.startswith("x")]
    Xg, Xh, y = g[gf].to_numpy()[:N_FIT], h[hf].to_numpy()[:N_FIT], g["y"].to_numpy()[:N_FIT]
    sg, sh = Standardizer.fit(Xg), Standardizer.fit(Xh)
    clf = LogisticRegression(max_iter=300).fit(np.hstack([sg.transform(Xg), sh.transform(Xh)]), y)
    w = clf.coef_.ravel()
    lab = vlr.LabelModel("guest", gf, sg, w[: len(gf)], float(clf.intercept_[0]), ["host"])
    pas = vlr.PassiveModel("host", hf, sh, w[len(gf):], "guest")
    return lab, pas


def _fit_sb(frames) -> tuple[sb.LabelModelPart, sb.PassiveModelPart]:
    g, h = frames
    gf, hf = [c for c in g.columns if c.startswith("x")], [c for c in h.columns if c.startswith("x")]
    cfg = sb.SecureBoostConfig(n_trees=5, max_depth=3, n_bins=16)
    lab, pas = sb.train_plaintext_reference(g[gf].to_numpy()[:N_FIT], g["y"].to_numpy()[:N_FIT],
                                            {"host": h[hf].to_numpy()[:N_FIT]}, cfg, label_party="guest",
                                            label_feature_names=gf, passive_feature_names={"host": hf})
    assert any(nd.get("owner") == "host" for t in lab.trees for nd in t if not nd.get("leaf"))
    return lab, pas["host"]


def _install(root: Path, pki, run_id: str, parts: dict, *, activate: bool = True) -> dict[str, ModelStore]:
    arts = build_run_artifacts(root / f"build-{run_id}", run_id=run_id, parts=parts, created="2026-01-01T00:00:00Z")
    stores = {}
    for p, path in arts.items():
        sign_artifact(path, pki["ca"] / "federation-signing.key")
        s = ModelStore(root / p / "models", party=p, federation_public_key=pki["ca"] / "federation-signing.pub")
        s.install(path, activate=activate)
        stores[p] = s
    return stores


def _lr_parts(lab, pas) -> dict:
    return {
        "guest": {"kind": "vertical-lr-label", "files": {"model.json": lab.to_json().encode()},
                  "schema": {"feature_names": lab.feature_names, "id_column": "id"}},
        "host": {"kind": "vertical-lr-passive", "files": {"model.json": pas.to_json().encode()},
                 "schema": {"feature_names": pas.feature_names, "id_column": "id"}},
    }


def _sb_parts(lab, pas) -> dict:
    return {
        "guest": {"kind": "secureboost-label", "files": {"model.json": lab.to_bytes()},
                  "schema": {"feature_names": lab.feature_names, "id_column": "id"}},
        "host": {"kind": "secureboost-passive", "files": {"model.json": pas.to_bytes()},
                 "schema": {"feature_names": pas.feature_names, "id_column": "id"}},
    }


_TABLES: dict = {}


def _host_loader(names):
    key = tuple(names)
    if key not in _TABLES:
        _TABLES[key] = load_table(HOST_CSV, party="host", feature_cols=names)
    return _TABLES[key]


class Fed:
    """A label-party server and a passive-party server over two model stores."""

    def __init__(self, root: Path, pki, stores: dict[str, ModelStore], *, deadline_s: float = 2.0,
                 fallback: str | None = None) -> None:
        self.host = serve(ScoringService("host", stores["host"], identity=pki["host"], table_loader=_host_loader),
                          pki["host"])
        self.guest_service = ScoringService("guest", stores["guest"], identity=pki["guest"],
                                            peers={"host": self.host.address}, deadline_s=deadline_s,
                                            fallback_version=fallback, decision_log=root / "guest-decisions.jsonl")
        self.guest = serve(self.guest_service, pki["guest"])
        self.client = ScoringClient(self.guest.address, pki["client"])

    def close(self) -> None:
        self.client.close()
        self.guest.stop(0)
        self.host.stop(0)


def _apps(frames, rows: slice) -> tuple[list[Application], np.ndarray, np.ndarray]:
    g, h = frames
    gf, hf = [c for c in g.columns if c.startswith("x")], [c for c in h.columns if c.startswith("x")]
    gs, hs = g.iloc[rows], h.iloc[rows]
    assert (gs["id"].to_numpy() == hs["id"].to_numpy()).all()
    apps = [Application(str(i), dict(zip(gf, map(float, r)))) for i, r in zip(gs["id"], gs[gf].to_numpy())]
    return apps, gs[gf].to_numpy(), hs[hf].to_numpy()


def test_vertical_lr_joint_scoring_equals_in_process_combine(tmp_path: Path, pki, frames) -> None:
    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-1", _lr_parts(lab, pas))
    fed = Fed(tmp_path, pki, stores)
    try:
        apps, Xg, Xh = _apps(frames, slice(N_FIT, N_FIT + 40))  # held-out rows
        expected = vlr.combine(lab, Xg, [vlr.passive_partial_scores(pas, Xh)])
        replies = fed.client.score_batch(apps)
        np.testing.assert_allclose([r.pd for r in replies], expected, rtol=0, atol=1e-12)
        single = fed.client.score(apps[0].id, apps[0].features)
        assert single.pd == pytest.approx(expected[0], abs=1e-12)
        assert single.model_version == "vlr-1-guest-1" and not single.fallback
        assert single.decision in ("approve", "refer", "decline")
        # reasons: own features by name, the passive party only as one aggregate = its partial logit
        partial = float(vlr.passive_partial_scores(pas, Xh[:1])[0])
        assert single.party_contributions["host"] == pytest.approx(partial, abs=1e-12)
        assert {r.source for r in single.reasons} == {"feature", "party"}
        assert not any(r.name in pas.feature_names and r.source == "feature" for r in single.reasons
                       if r.name not in lab.feature_names)
        # every decision is logged at the deciding party
        fed.guest_service.log.flush()
        lines = (tmp_path / "guest-decisions.jsonl").read_text().splitlines()
        assert len(lines) == 41
        rec = json.loads(lines[-1])
        assert rec["model_version"] == "vlr-1-guest-1" and rec["id"] == apps[0].id
        assert set(rec) >= {"score", "decision", "reasons", "party_contributions", "model_hash"}
    finally:
        fed.close()


def test_secureboost_joint_scoring_equals_in_process_label_predict(tmp_path: Path, pki, frames) -> None:
    lab, pas = _fit_sb(frames)
    stores = _install(tmp_path, pki, "sb-1", _sb_parts(lab, pas))
    fed = Fed(tmp_path, pki, stores)
    try:
        apps, Xg, Xh = _apps(frames, slice(N_FIT, N_FIT + 40))
        expected = sb.label_predict(lab, Xg, {"host": sb.passive_decisions(pas, Xh)})
        replies = fed.client.score_batch(apps)
        np.testing.assert_allclose([r.pd for r in replies], expected, rtol=0, atol=1e-12)
        # tree contributions sum to the margin (baseline + features + parties = logit)
        dec = sb.passive_decisions(pas, Xh[:1])
        online = fed.guest_service.model().model  # the service's cached OnlineLabel (fedcredit.kinds)
        _, (c,) = online.score(Xg[:1], {"host": dec})
        assert c.logit == pytest.approx(sb.label_margin(lab, Xg[:1], {"host": dec})[0], abs=1e-9)
        assert set(c.parties) == {"host"} and set(c.features) <= set(lab.feature_names)
        r = fed.guest_service.score(apps[:1])[0]
        assert r["party_contributions"]["host"] == pytest.approx(c.parties["host"], abs=1e-12)
    finally:
        fed.close()


def test_passive_party_down_fails_within_deadline_naming_it(tmp_path: Path, pki, frames) -> None:
    import time

    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-2", _lr_parts(lab, pas))
    fed = Fed(tmp_path, pki, stores, deadline_s=0.3)
    try:
        apps, _, _ = _apps(frames, slice(0, 2))
        fed.client.score_batch(apps)  # works while the passive party is up
        fed.host.stop(0)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as exc:
            fed.client.score_batch(apps)
        assert time.monotonic() - t0 < 2.0
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "passive party 'host'" in exc.value.details()
        with pytest.raises(PartyUnavailable, match="'host'"):
            fed.guest_service.score(apps)
    finally:
        fed.close()


def test_slow_passive_party_hits_the_deadline(tmp_path: Path, pki, frames) -> None:
    import threading

    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-3", _lr_parts(lab, pas))
    release = threading.Event()

    class Stuck(ScoringService):
        def partial(self, *a, **kw):
            async def late():
                await asyncio.sleep(5)  # the passive party hangs (e.g. a stalled disk) before answering
                return ScoringService.partial(self, *a, **kw)
            return late()

    host = serve(Stuck("host", stores["host"], identity=pki["host"], table_loader=_host_loader), pki["host"])
    guest = ScoringService("guest", stores["guest"], identity=pki["guest"], peers={"host": host.address},
                           deadline_s=0.2)
    try:
        apps, _, _ = _apps(frames, slice(0, 1))
        with pytest.raises(PartyUnavailable, match=r"'host' .* did not answer within the 200 ms"):
            guest.score(apps)
    finally:
        release.set()
        guest.close()
        host.stop(0)


def test_fallback_model_is_used_and_clearly_marked(tmp_path: Path, pki, frames) -> None:
    from fedcredit.artifacts import build_artifact, horizontal_parts
    from fedcredit.models import SavedModel, make_model

    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-4", _lr_parts(lab, pas))
    m = make_model("lr", len(lab.feature_names))
    m.set_flat(np.r_[lab.weights, lab.intercept])
    kind, files, schema = horizontal_parts(SavedModel(m, lab.standardizer.mean, lab.standardizer.scale,
                                                      lab.feature_names))
    p = build_artifact(tmp_path / "fallback", run_id="guest-only-1", party="guest", kind=kind, files=files,
                       schema=schema)
    sign_artifact(p, pki["ca"] / "federation-signing.key")
    fb = stores["guest"].install(p)
    fed = Fed(tmp_path, pki, stores, deadline_s=0.3, fallback=fb)
    try:
        apps, _, _ = _apps(frames, slice(0, 3))
        assert not fed.client.score_batch(apps)[0].fallback
        fed.host.stop(0)
        replies = fed.client.score_batch(apps)
        assert all(r.fallback and r.model_version == fb for r in replies)
        assert "passive party 'host'" in replies[0].fallback_reason
    finally:
        fed.close()


def test_unknown_id_at_passive_party_is_a_clear_error(tmp_path: Path, pki, frames) -> None:
    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-5", _lr_parts(lab, pas))
    fed = Fed(tmp_path, pki, stores)
    try:
        apps, _, _ = _apps(frames, slice(0, 2))
        bad = [apps[0], Application("no-such-customer", apps[1].features)]
        with pytest.raises(grpc.RpcError) as exc:
            fed.client.score_batch(bad)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
        assert "'host'" in exc.value.details() and "no-such-customer" in exc.value.details()
        missing = Application(apps[0].id, {k: v for k, v in apps[0].features.items() if k != "x3"})
        with pytest.raises(DataError, match=r"lacks feature\(s\) \['x3'\]"):
            fed.guest_service.score([missing])
    finally:
        fed.close()


def test_model_hash_mismatch_between_parties_is_refused(tmp_path: Path, pki, frames) -> None:
    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-6", _lr_parts(lab, pas))
    # the passive party activates a part from another run: same parties, different weights
    pas2 = vlr.PassiveModel("host", pas.feature_names, pas.standardizer, pas.weights * 0.5, "guest")
    arts = build_run_artifacts(tmp_path / "build-other", run_id="vlr-7", parts=_lr_parts(lab, pas2))
    sign_artifact(arts["host"], pki["ca"] / "federation-signing.key")
    stores["host"].install(arts["host"], activate=True)
    fed = Fed(tmp_path, pki, stores)
    try:
        apps, _, _ = _apps(frames, slice(0, 2))
        with pytest.raises(grpc.RpcError) as exc:
            fed.client.score_batch(apps)
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "model version mismatch" in exc.value.details() and "'host'" in exc.value.details()
        stores["host"].rollback()  # one command brings the parties back in line
        assert len(fed.client.score_batch(apps)) == 2
    finally:
        fed.close()


def test_partial_scores_only_for_the_label_party(tmp_path: Path, pki, frames) -> None:
    from crypto.tls import secure_channel
    from protos import scoring_pb2 as pb
    from protos import scoring_pb2_grpc as pbg

    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-8", _lr_parts(lab, pas))
    host = serve(ScoringService("host", stores["host"], identity=pki["host"], table_loader=_host_loader), pki["host"])
    try:
        ch = secure_channel(host.address, pki["other"])
        h = stores["host"].active().model_hash
        with pytest.raises(grpc.RpcError) as exc:
            pbg.ScoringStub(ch).PartialScore(pb.PartialRequest(model_hash=h, ids=["2346"]), timeout=5)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED and "'other'" in exc.value.details()
        ch.close()
    finally:
        host.stop(0)


def test_tampered_artifact_is_refused_at_install(tmp_path: Path, pki, frames) -> None:
    lab, pas = _fit_lr(frames)
    arts = build_run_artifacts(tmp_path / "b", run_id="vlr-9", parts=_lr_parts(lab, pas))
    for p in arts.values():
        sign_artifact(p, pki["ca"] / "federation-signing.key")
    doc = json.loads((arts["host"] / "model.json").read_text())
    doc["weights"][0] += 1.0
    (arts["host"] / "model.json").write_text(json.dumps(doc))
    store = ModelStore(tmp_path / "host-store", party="host", federation_public_key=pki["ca"] / "federation-signing.pub")
    with pytest.raises(SecurityError, match="model.json .*file altered"):
        store.install(arts["host"])
    assert store.list() == []


def test_score_on_passive_party_or_without_active_model_is_a_config_error(tmp_path: Path, pki, frames) -> None:
    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-10", _lr_parts(lab, pas))
    apps, _, _ = _apps(frames, slice(0, 1))
    with pytest.raises(ConfigError, match="passive part"):
        ScoringService("host", stores["host"], table_loader=_host_loader).score(apps)
    empty = ModelStore(tmp_path / "empty", party="guest")
    with pytest.raises(ConfigError, match="no active model"):
        ScoringService("guest", empty).score(apps)


def test_cli_batch_score_file_and_models_commands(tmp_path: Path, pki, frames, capsys) -> None:
    from fedcredit.cli import main

    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-11", _lr_parts(lab, pas))
    host = serve(ScoringService("host", stores["host"], identity=pki["host"], table_loader=_host_loader), pki["host"])
    try:
        cfg = tmp_path / "guest.toml"
        cfg.write_text(f"""
[party]
name = "guest"
identity_dir = "{pki['guest'].dir}"
state_dir = "{tmp_path / 'guest'}"
[coordinator]
flower_address = "127.0.0.1:1"
relay_address = "127.0.0.1:2"
[scoring]
peers = {{ host = "{host.address}" }}
deadline_ms = 2000
[decision.thresholds]
approve = 560
decline = 500
""")
        g = frames[0].iloc[N_FIT:N_FIT + 30]
        g.drop(columns=["y"]).to_csv(tmp_path / "in.csv", index=False)
        assert main(["score", "--config", str(cfg), "--batch-size", "8", str(tmp_path / "in.csv"),
                     str(tmp_path / "out.csv")]) == 0
        out = pd.read_csv(tmp_path / "out.csv")
        Xh = frames[1].iloc[N_FIT:N_FIT + 30][pas.feature_names].to_numpy()
        expected = vlr.combine(lab, g[lab.feature_names].to_numpy(), [vlr.passive_partial_scores(pas, Xh)])
        np.testing.assert_allclose(out["pd"].to_numpy(), expected, rtol=1e-9)
        assert list(out["id"].astype(str)) == list(g["id"].astype(str))
        assert set(out["decision"]) <= {"approve", "refer", "decline"}
        assert (tmp_path / "guest" / "decisions.jsonl").read_text().count("\n") == 30
        capsys.readouterr()
        assert main(["party", "models", "list", "--config", str(cfg), "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [v["version"] for v in listed] == ["vlr-11-guest-1"] and listed[0]["active"]
        assert main(["party", "models", "rollback", "--config", str(cfg)]) == 2  # nothing to roll back to
        assert main(["score", "--config", str(cfg), "--model", "nope", str(tmp_path / "in.csv"),
                     str(tmp_path / "out2.csv")]) == 2
    finally:
        host.stop(0)


def test_concurrent_requests_share_a_round_trip_and_a_bad_id_fails_only_its_request(tmp_path: Path, pki,
                                                                                     frames) -> None:
    from concurrent.futures import ThreadPoolExecutor

    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-12", _lr_parts(lab, pas))
    calls: list[int] = []

    class Counting(ScoringService):
        def partial(self, model_hash, ids, caller):
            calls.append(len(ids))

            async def later():
                await asyncio.sleep(0.15)  # keep the first round trip in flight while the others queue
                return ScoringService.partial(self, model_hash, ids, caller)
            return later()

    host = serve(Counting("host", stores["host"], identity=pki["host"], table_loader=_host_loader), pki["host"])
    guest = serve(ScoringService("guest", stores["guest"], identity=pki["guest"], peers={"host": host.address},
                                 deadline_s=5.0), pki["guest"])
    client = ScoringClient(guest.address, pki["client"])
    try:
        apps, Xg, Xh = _apps(frames, slice(0, 12))
        apps[7] = Application("ghost-7", apps[7].features)

        def one(a: Application):
            try:
                return client.score(a.id, a.features).pd
            except grpc.RpcError as e:
                return e

        with ThreadPoolExecutor(12) as pool:
            out = list(pool.map(one, apps))
        assert isinstance(out[7], grpc.RpcError) and "ghost-7" in out[7].details()
        expected = vlr.combine(lab, Xg, [vlr.passive_partial_scores(pas, Xh)])
        for k, v in enumerate(out):
            if k != 7:
                assert v == pytest.approx(expected[k], abs=1e-12)
        assert max(calls) > 1  # requests were coalesced into shared partial round trips
    finally:
        client.close()
        guest.stop(0)
        host.stop(0)


@pytest.mark.e2e
@pytest.mark.parametrize("jtype,model", [("vertical-lr", {"max_epochs": 2}),
                                         ("secureboost", {"n_trees": 3, "max_depth": 2, "n_bins": 8})])
def test_e2e_vertical_train_publish_and_score_online(tmp_path: Path, frames, jtype: str, model: dict) -> None:
    """Real path: coordinator + 2 parties as processes (Flower, TLS, relay), a vertical LR job with PSI,
    publishing, then scoring servers built from the parties' configs: online scores equal the
    in-process combine of the installed parts; stopping the passive party gives the deadline error."""
    import time

    from fedcredit.config import load_party_config
    from fedcredit.protocols.vertical_lr import LabelModel, PassiveModel
    from party.scoring import service_from_config
    from simulations.deployment import LocalFederation, PartySpec

    g, h = frames
    ids = g["id"].to_numpy()[:3000]
    (tmp_path / "data").mkdir()
    g.iloc[:3000].to_csv(tmp_path / "data" / "bank.csv", index=False)
    h.iloc[200:3000].sample(frac=1.0, random_state=1).to_csv(tmp_path / "data" / "fintech.csv", index=False)
    parties = [PartySpec("bank", {"train": {"path": tmp_path / "data" / "bank.csv", "label_column": "y"}}),
               PartySpec("fintech", {"train": {"path": tmp_path / "data" / "fintech.csv"}}, role="fintech")]
    fed = LocalFederation(tmp_path / "fed", parties).setup()
    fed.start()
    servers = []
    try:
        job = fed.write_job("v", {"job": {"name": "v", "type": jtype, "parties": ["bank", "fintech"],
                                          "label_party": "bank", "round_timeout_s": 300.0},
                                  "model": {**model, "test_fraction": 0.2}})
        client = fed.client()
        run_id = client.submit(job)
        for ev in client.watch(run_id):
            if ev.HasField("run"):
                break
        info = client.get(run_id)
        client.close()
        assert info.status == "finished", info.error
        pub = json.loads(info.result_json)["publish"]
        assert pub["published"] is True, pub
        assert pub["parties"]["bank"]["active"] and pub["parties"]["fintech"]["active"]

        with open(fed.root / "fintech.toml", "a") as fh:
            fh.write('\n[scoring]\ndataset = "train"\n')
        fcfg = load_party_config(fed.root / "fintech.toml")
        fin = serve(service_from_config(fcfg), Identity.load(fcfg.party.identity_dir, "fintech"))
        servers.append(fin)
        with open(fed.root / "bank.toml", "a") as fh:
            fh.write(f'\n[scoring]\npeers = {{ fintech = "{fin.address}" }}\ndeadline_ms = 1000\n')
        bcfg = load_party_config(fed.root / "bank.toml")
        bank_svc = service_from_config(bcfg)
        bank = serve(bank_svc, Identity.load(bcfg.party.identity_dir, "bank"))
        servers.append(bank)

        lab_bytes = bank_svc.model().artifact.files["model.json"]
        pas_bytes = fin.service.model().artifact.files["model.json"]
        rows = slice(300, 340)  # customers both parties hold
        apps, Xg, Xh = _apps(frames, rows)
        if jtype == "vertical-lr":
            lab, pas = LabelModel.from_json(lab_bytes.decode()), PassiveModel.from_json(pas_bytes.decode())
            expected = vlr.combine(lab, Xg, [vlr.passive_partial_scores(pas, Xh)])
        else:
            lab, pas = sb.LabelModelPart.from_bytes(lab_bytes), sb.PassiveModelPart.from_bytes(pas_bytes)
            expected = sb.label_predict(lab, Xg, {"fintech": sb.passive_decisions(pas, Xh)})
        sc = ScoringClient(bank.address, Identity.load(fed.certs / "operator", "operator"))
        try:
            got = [r.pd for r in sc.score_batch(apps)]
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
            one = sc.score(apps[0].id, apps[0].features)
            assert one.pd == pytest.approx(expected[0], abs=1e-12) and one.model_version == pub["parties"]["bank"]["version"]
            # a customer only the bank has: clear error naming the passive party
            with pytest.raises(grpc.RpcError) as exc:
                sc.score(str(ids[0]), dict(zip(lab.feature_names, Xg[0])))
            assert exc.value.code() == grpc.StatusCode.NOT_FOUND and "'fintech'" in exc.value.details()
            fin.stop(0)
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as exc:
                sc.score(apps[0].id, apps[0].features)
            assert time.monotonic() - t0 < 3.0 and "passive party 'fintech'" in exc.value.details()
        finally:
            sc.close()
    finally:
        for s in servers:
            try:
                s.stop(0)
            except Exception:  # noqa: BLE001 - already stopped
                pass
        fed.stop()
