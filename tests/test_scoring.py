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
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest

from crypto.certs import Identity, init_ca, issue
from fedcredit.artifacts import build_run_artifacts, sign_artifact
from fedcredit.data import load_dataset, load_table
from fedcredit.errors import ConfigError, DataError, SecurityError
from fedcredit.protocols import secureboost as sb
from fedcredit.protocols import vertical_lr as vlr
from fedcredit.protocols.secureboost.scoring import OnlineLabel, OnlinePassive
from fedcredit.protocols.vertical_common import Standardizer
from party.audit import read_audit_events
from party.models import ModelStore
from party.scoring import Application, PartyUnavailable, ScoringClient, ScoringService, serve
from party.scoring_guard import RateLimiter

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
    ids["coordinator"] = issue(ca, root / "coordinator", "coordinator", role="coordinator")
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
                 fallback: str | None = None, host_loader=None, rate: RateLimiter | None = None,
                 callers: tuple[str, ...] = ("client",)) -> None:
        self.host_audit = root / "host-audit.jsonl"
        self.host_service = ScoringService("host", stores["host"], identity=pki["host"],
                                           table_loader=host_loader or _host_loader, rate=rate,
                                           audit_log=self.host_audit)
        self.host = serve(self.host_service, pki["host"])
        self.guest_service = ScoringService("guest", stores["guest"], identity=pki["guest"],
                                            peers={"host": self.host.address}, deadline_s=deadline_s,
                                            fallback_version=fallback, decision_log=root / "guest-decisions.jsonl",
                                            callers=callers, audit_log=root / "guest-audit.jsonl")
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
        assert rec["caller"] == "client"  # the certificate name of who asked for the decision
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


def test_label_party_is_connected_to_its_passive_party_before_the_first_request(tmp_path: Path, pki, frames) -> None:
    """serve() opens the label party's channel to each passive party: the first decision does not pay the
    TCP + mutual-TLS handshake inside its deadline (docs/deployment.md, latency)."""
    from party.scoring import PEER_CHANNEL_OPTIONS, _server_loop

    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-pre", _lr_parts(lab, pas))
    fed = Fed(tmp_path, pki, stores)
    try:
        assert fed.guest_service.log is not None and fed.guest_service.log.path.read_text() == ""  # no decision yet
        channel = fed.guest_service._aio_channels["host"]  # opened by serve(); no request has been made

        async def ready() -> None:
            await asyncio.wait_for(channel.channel_ready(), 10)

        asyncio.run_coroutine_threadsafe(ready(), _server_loop()).result(15)
        assert channel.get_state() == grpc.ChannelConnectivity.READY
        apps, Xg, Xh = _apps(frames, slice(0, 1))
        assert fed.client.score(apps[0].id, apps[0].features).pd == pytest.approx(
            vlr.combine(lab, Xg, [vlr.passive_partial_scores(pas, Xh)])[0], abs=1e-12)
        assert fed.guest_service._aio_channels["host"] is channel  # the first decision used that channel
        assert dict(PEER_CHANNEL_OPTIONS)["grpc.client_idle_timeout_ms"] == 2**31 - 1  # never closed for idling
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


def test_unknown_id_gets_an_answer_and_a_flag_only_at_the_passive_party(tmp_path: Path, pki, frames) -> None:
    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-5", _lr_parts(lab, pas))
    fed = Fed(tmp_path, pki, stores)
    try:
        apps, _, _ = _apps(frames, slice(0, 2))
        bad = [apps[0], Application("no-such-customer", apps[1].features)]
        replies = fed.client.score_batch(bad)  # no error: an error would tell the label party who is not held
        assert len(replies) == 2 and all(0.0 < r.pd < 1.0 for r in replies) and not replies[1].fallback
        fed.host_service.audit.flush()
        (line,) = read_audit_events(fed.host_audit, "partial_answer")
        digest = fed.host_service.secret.id_digest
        assert line["caller"] == "guest" and line["count"] == 2
        assert line["ids"] == [digest(apps[0].id), digest("no-such-customer")]
        assert line["unknown"] == [digest("no-such-customer")]  # flagged here, and only here
        assert "no-such-customer" not in fed.host_audit.read_text()  # keyed digests, not the label party's ids
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



def guest_toml(tmp_path: Path, pki: Any, host_address: str, *, deadline_ms: int = 5000, scoring: str = "",
               extra: str = "") -> str:
    """The label party's party.toml for CLI scoring tests: its identity, a dummy coordinator, the host's scoring peer.

    ``scoring`` adds lines to ``[scoring]``; ``extra`` appends whole sections."""
    return f"""
[party]
name = "guest"
identity_dir = "{pki['guest'].dir}"
state_dir = "{tmp_path / 'guest'}"
[coordinator]
flower_address = "127.0.0.1:1"
relay_address = "127.0.0.1:2"
[scoring]
peers = {{ host = "{host_address}" }}
deadline_ms = {deadline_ms}
{scoring}{extra}"""

def test_cli_batch_score_file_and_models_commands(tmp_path: Path, pki, frames, capsys) -> None:
    from fedcredit.cli import main

    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-11", _lr_parts(lab, pas))
    host = serve(ScoringService("host", stores["host"], identity=pki["host"], table_loader=_host_loader), pki["host"])
    try:
        cfg = tmp_path / "guest.toml"
        cfg.write_text(guest_toml(tmp_path, pki, host.address, deadline_ms=2000,
                                  extra="[decision.thresholds]\napprove = 560\ndecline = 500\n"))
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
        def partial(self, model_hash, ids, caller, role="party"):
            calls.append(len(ids))

            async def later():
                await asyncio.sleep(0.15)  # keep the first round trip in flight while the others queue
                return ScoringService.partial(self, model_hash, ids, caller, role)
            return later()

    host = serve(Counting("host", stores["host"], identity=pki["host"], table_loader=_host_loader), pki["host"])
    guest = serve(ScoringService("guest", stores["guest"], identity=pki["guest"], peers={"host": host.address},
                                 deadline_s=5.0, callers=["client"]), pki["guest"])
    client = ScoringClient(guest.address, pki["client"])
    try:
        apps, Xg, Xh = _apps(frames, slice(0, 12))
        apps[7] = Application(apps[7].id, {k: v for k, v in apps[7].features.items() if k != "x3"})

        def one(a: Application):
            try:
                return client.score(a.id, a.features).pd
            except grpc.RpcError as e:
                return e

        with ThreadPoolExecutor(12) as pool:
            out = list(pool.map(one, apps))
        assert isinstance(out[7], grpc.RpcError) and "lacks feature(s) ['x3']" in out[7].details()
        expected = vlr.combine(lab, Xg, [vlr.passive_partial_scores(pas, Xh)])
        for k, v in enumerate(out):
            if k != 7:
                assert v == pytest.approx(expected[k], abs=1e-12)
        assert max(calls) > 1  # requests were coalesced into shared partial round trips
    finally:
        client.close()
        guest.stop(0)
        host.stop(0)


# ----------------------------------------------------------------- authorisation and the scoring oracle (issue 8)


def _stub(address: str, ident: Identity):
    from crypto.tls import secure_channel
    from protos import scoring_pb2_grpc as pbg

    ch = secure_channel(address, ident)
    return ch, pbg.ScoringStub(ch)


def test_only_configured_callers_get_decisions_never_the_coordinator(tmp_path: Path, pki, frames) -> None:
    from protos import scoring_pb2 as pb

    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-20", _lr_parts(lab, pas))
    fed = Fed(tmp_path, pki, stores, callers=("client", "coordinator"))  # even listed, the coordinator is refused
    try:
        apps, _, _ = _apps(frames, slice(0, 2))
        req = pb.ScoreRequest(id=apps[0].id, features=apps[0].features)
        for who, expect in (("other", "'other' is not one of the callers"),
                            ("coordinator", "the coordinator's certificate may never ask for decisions")):
            ch, stub = _stub(fed.guest.address, pki[who])
            for rpc, arg in ((stub.Score, req), (stub.ScoreBatch, pb.ScoreBatchRequest(requests=[req]))):
                with pytest.raises(grpc.RpcError) as exc:
                    rpc(arg, timeout=10)
                assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED and expect in exc.value.details()
                assert "client" not in exc.value.details()  # the list of allowed callers is not disclosed
            ch.close()
        assert fed.client.score(apps[0].id, apps[0].features).decision  # a configured caller is served
        fed.guest_service.log.flush()
        logged = [json.loads(x) for x in (tmp_path / "guest-decisions.jsonl").read_text().splitlines()]
        assert [r["caller"] for r in logged] == ["client"]  # refused calls decided nothing
        fed.guest_service.audit.flush()
        refused = read_audit_events(tmp_path / "guest-audit.jsonl", "score_refused")
        assert [(e["caller"], e["role"]) for e in refused] == [("other", "party")] * 2 + [("coordinator", "coordinator")] * 2
        # nothing reached the passive party for the refused calls
        assert read_audit_events(fed.host_audit, "partial_answer")[0]["caller"] == "guest"
        assert len(read_audit_events(fed.host_audit, "partial_answer")) == 1
    finally:
        fed.close()


def test_coordinator_certificate_gets_no_partial_scores(tmp_path: Path, pki, frames) -> None:
    from protos import scoring_pb2 as pb

    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-21", _lr_parts(lab, pas))
    fed = Fed(tmp_path, pki, stores)
    try:
        h = stores["host"].active().model_hash
        for who in ("coordinator", "other", "client"):
            ch, stub = _stub(fed.host.address, pki[who])
            with pytest.raises(grpc.RpcError) as exc:
                stub.PartialScore(pb.PartialRequest(model_hash=h, ids=["2346"]), timeout=5)
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED and f"'{who}'" in exc.value.details()
            ch.close()
        fed.host_service.audit.flush()
        assert [e["caller"] for e in read_audit_events(fed.host_audit, "partial_refused")] == ["coordinator", "other",
                                                                                               "client"]
        assert read_audit_events(fed.host_audit, "partial_answer") == []
    finally:
        fed.close()


def _held_subset_loader(tmp_path: Path, frames, held: int):
    """The passive party holds only its first ``held`` customers (written as its own CSV)."""
    path = tmp_path / "fintech-customers.csv"
    frames[1].iloc[:held].to_csv(path, index=False)
    tables: dict = {}

    def loader(names):
        key = tuple(names)
        if key not in tables:
            tables[key] = load_table(path, party="host", feature_cols=names)
        return tables[key]
    return loader


def _distinguishing_auc(features: np.ndarray, held: np.ndarray) -> float:
    """How well a simple classifier (logistic regression, 5-fold cross-validated) tells held from not held."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    p = cross_val_predict(LogisticRegression(max_iter=1000), features, held, cv=5, method="predict_proba")[:, 1]
    auc = float(roc_auc_score(held, p))
    return max(auc, 1.0 - auc)


@pytest.mark.parametrize("kind", ["vertical-lr", "secureboost"])
def test_label_party_cannot_tell_held_from_not_held_ids(tmp_path: Path, pki, frames, kind: str) -> None:
    """The attack from issue 8: the label bank asks the passive party about customers it may not hold.
    Before, an UnknownId error named each one (100 of 100) and the passive party's data file."""
    from protos import scoring_pb2 as pb

    if kind == "vertical-lr":
        lab, pas = _fit_lr(frames)
        parts = _lr_parts(lab, pas)
    else:
        lab, pas = _fit_sb(frames)
        parts = _sb_parts(lab, pas)
    stores = _install(tmp_path, pki, f"oracle-{kind}", parts)
    fed = Fed(tmp_path, pki, stores, host_loader=_held_subset_loader(tmp_path, frames, 15000))
    try:
        all_ids = [str(i) for i in frames[1]["id"]]
        rng = np.random.default_rng(8)
        held = [all_ids[k] for k in rng.choice(15000, 300, replace=False)]
        not_held = [all_ids[k] for k in 15000 + rng.choice(15000, 300, replace=False)]
        asked = held + not_held
        order = rng.permutation(len(asked))
        ids = [asked[k] for k in order]
        ch, stub = _stub(fed.host.address, pki["guest"])  # exactly what the label party's own certificate can do
        h = stores["host"].active().model_hash
        replies = []
        for k in range(0, len(ids), 100):
            replies.append(stub.PartialScore(pb.PartialRequest(model_hash=h, ids=ids[k:k + 100]), timeout=10))
        again = stub.PartialScore(pb.PartialRequest(model_hash=h, ids=ids[:100]), timeout=10)
        ch.close()
        if kind == "vertical-lr":
            answers = np.concatenate([np.asarray(r.partial_logits) for r in replies])
            feats = np.c_[answers, np.abs(answers), answers ** 2]
            assert list(again.partial_logits) == list(replies[0].partial_logits)  # asking again teaches nothing
        else:
            mats = []
            for r in replies:
                dec = sb.parse_decisions("host", r.decisions, 100)
                mats.append(np.stack([dec[sid] for sid in sorted(dec)], axis=1).astype(float))
            feats = np.concatenate(mats)
            assert again.decisions == replies[0].decisions
        assert len(feats) == len(ids) and all(r.kind == replies[0].kind for r in replies)
        is_held = np.isin(np.asarray(ids), held).astype(int)
        auc = _distinguishing_auc(feats, is_held)
        print(f"[{kind}] held vs not-held, distinguishing AUC {auc:.3f}")
        assert auc <= 0.6, f"held vs not-held answers are distinguishable: AUC {auc:.3f}"
        fed.host_service.audit.flush()
        lines = read_audit_events(fed.host_audit, "partial_answer")
        assert sum(e["count"] for e in lines) == 700 and {e["caller"] for e in lines} == {"guest"}
        digest = fed.host_service.secret.id_digest
        flagged = {d for e in lines for d in e["unknown"]}
        assert flagged == {digest(i) for i in not_held}  # every decoy is known, at the passive party only
    finally:
        fed.close()


def test_caller_over_its_rate_limit_is_refused(tmp_path: Path, pki, frames) -> None:
    from protos import scoring_pb2 as pb

    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-22", _lr_parts(lab, pas))
    fed = Fed(tmp_path, pki, stores, rate=RateLimiter("host", ids_per_second=0.01, burst=50, ids_per_day=10_000))
    try:
        apps, _, _ = _apps(frames, slice(0, 60))
        assert len(fed.client.score_batch(apps[:40])) == 40
        with pytest.raises(grpc.RpcError) as exc:
            fed.client.score_batch(apps[40:60])  # 20 more: only ~10 left in the bucket
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "'host'" in exc.value.details() and "over its rate of 0.01 ids/s" in exc.value.details()
        ch, stub = _stub(fed.host.address, pki["guest"])
        h = stores["host"].active().model_hash
        with pytest.raises(grpc.RpcError) as exc:  # asking the passive party directly: the same refusal
            stub.PartialScore(pb.PartialRequest(model_hash=h, ids=[a.id for a in apps[:51]]), timeout=5)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than the 50 ids" in exc.value.details()
        ch.close()
        fed.host_service.audit.flush()
        refused = read_audit_events(fed.host_audit, "partial_refused")
        assert [(e["caller"], e["count"]) for e in refused] == [("guest", 20), ("guest", 51)]
    finally:
        fed.close()


def test_rate_limiter_bucket_and_daily_quota() -> None:
    from fedcredit.errors import RateLimited

    now = [0.0]
    day = [86400.0 * 100]
    rl = RateLimiter("host", ids_per_second=10, burst=100, ids_per_day=250, clock=lambda: now[0], wall=lambda: day[0])
    rl.take("guest", 100)
    with pytest.raises(RateLimited, match="retry in 1.0 s"):
        rl.take("guest", 10)
    rl.take("other", 100)  # per caller
    now[0] += 10.0
    rl.take("guest", 100)
    now[0] += 10.0
    with pytest.raises(RateLimited, match="used 200 of its 250 ids for today"):
        rl.take("guest", 100)
    day[0] += 86400.0  # a new UTC day
    rl.take("guest", 100)


def test_a_version_activated_while_serving_is_loaded_before_its_first_request(tmp_path: Path, pki, frames) -> None:
    """`fedcredit party models activate` on a running daemon: the passive party loads the new part, its dataset and
    the table in the part's codes within a second or so, not inside the label party's deadline of the first
    decision (the README walkthrough's first score after activation missed its 2 s deadline on a loaded box)."""
    lab, pas = _fit_sb(frames)
    stores = _install(tmp_path, pki, "sb-warm", _sb_parts(lab, pas), activate=False)
    stores["guest"].activate(stores["guest"].list()[0].version)
    fed = Fed(tmp_path, pki, stores)
    try:
        assert not fed.host_service._models  # nothing active at start-up: nothing loaded
        version = stores["host"].list()[0].version
        stores["host"].activate(version)
        deadline = time.monotonic() + 30
        while not any(k[:2] == ("encoded", version) for k in fed.host_service._tables):
            assert time.monotonic() < deadline, "the activated version was not loaded before any request"
            time.sleep(0.05)
        assert version in fed.host_service._models
        apps, _, _ = _apps(frames, slice(0, 5))
        assert [r.model_version for r in fed.client.score_batch(apps)] == [stores["guest"].active_version()] * 5
    finally:
        fed.close()


def test_passive_errors_name_no_file(tmp_path: Path, pki, frames) -> None:
    from protos import scoring_pb2 as pb

    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-23", _lr_parts(lab, pas), activate=False)
    stores["guest"].activate(stores["guest"].list()[0].version)
    broken = tmp_path / "secret-dir" / "fintech-customers.csv"
    broken.parent.mkdir()
    frames[1].drop(columns=[pas.feature_names[0]]).iloc[:100].to_csv(broken, index=False)  # a feature column is gone
    fed = Fed(tmp_path, pki, stores, host_loader=lambda names: load_table(broken, party="host", feature_cols=names))
    stores["host"].activate(stores["host"].list()[0].version)  # after start-up: the dataset is read on first use
    try:
        ch, stub = _stub(fed.host.address, pki["guest"])
        h = stores["host"].active().model_hash
        with pytest.raises(grpc.RpcError) as exc:
            stub.PartialScore(pb.PartialRequest(model_hash=h, ids=["1"]), timeout=10)
        ch.close()
        details = exc.value.details()
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # the type crosses, the text does not
        assert "/" not in details and "secret-dir" not in details and ".csv" not in details
        assert "'host'" in details and "reference" in details
        apps, _, _ = _apps(frames, slice(0, 1))
        with pytest.raises(grpc.RpcError) as exc:  # and what the label party's caller sees
            fed.client.score(apps[0].id, apps[0].features)
        assert "/" not in exc.value.details() and ".csv" not in exc.value.details()
        fed.host_service.audit.flush()
        errs = read_audit_events(fed.host_audit, "partial_error")
        assert errs and str(broken) in errs[0]["message"] and errs[0]["reference"] in details  # the detail stays home
    finally:
        fed.close()


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
            fh.write(f'\n[scoring]\npeers = {{ fintech = "{fin.address}" }}\ndeadline_ms = 1000\n'
                     'callers = ["operator"]\n')
        bcfg = load_party_config(fed.root / "bank.toml")
        bank_svc = service_from_config(bcfg)
        bank = serve(bank_svc, Identity.load(bcfg.party.identity_dir, "bank"))
        servers.append(bank)

        lab_bytes = bank_svc.model().artifact.files["model.json"]
        pas_bytes = fin.service.model().artifact.files["model.json"]
        rows = slice(300, 340)  # customers both parties hold
        apps, Xg, Xh = _apps(frames, rows)
        tol = 1e-12
        if jtype == "vertical-lr":
            lab, pas = LabelModel.from_json(lab_bytes.decode()), PassiveModel.from_json(pas_bytes.decode())
            # the default, shared weights: the fintech's installed part is Enc(w) and answers ciphertexts with
            # flooding noise (σ 2^-10 on each partial logit), which only the bank's installed part decrypts
            assert pas.shared and lab.secret_context
            expected, _ = vlr.OnlineLabel(lab).score(Xg, {"fintech": vlr.OnlinePassive(pas).answer(Xh)})
            tol = 2e-3
        else:
            lab, pas = sb.LabelModelPart.from_bytes(lab_bytes), sb.PassiveModelPart.from_bytes(pas_bytes)
            # the default, hidden splits: the fintech's installed part holds every candidate rule and an
            # encrypted selector per split, and answers ciphertexts only the bank's installed part decrypts
            assert pas.hidden and not pas.splits and lab.secret_context
            expected, _ = OnlineLabel(lab).score(Xg, {"fintech": OnlinePassive(pas).answer(Xh)})
        sc = ScoringClient(bank.address, Identity.load(fed.certs / "operator", "operator"))
        try:
            got = [r.pd for r in sc.score_batch(apps)]
            np.testing.assert_allclose(got, expected, rtol=0, atol=tol)
            one = sc.score(apps[0].id, apps[0].features)
            assert one.pd == pytest.approx(expected[0], abs=tol) and one.model_version == pub["parties"]["bank"]["version"]
            # a customer only the bank has: answered like any other (no membership oracle), flagged at the fintech
            only_bank = sc.score(str(ids[0]), dict(zip(lab.feature_names, Xg[0])))
            assert 0.0 < only_bank.pd < 1.0
            fin.service.audit.flush()
            flagged = [d for e in read_audit_events(fed.root / "state" / "fintech" / "audit.jsonl", "partial_answer")
                       for d in e["unknown"]]
            assert flagged == [fin.service.secret.id_digest(str(ids[0]))]
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


# ----------------------------------------------------------------- latency work (issue 11): same answers, less work


def test_online_secureboost_equals_the_reference_walk_bit_for_bit_with_missing_and_categorical(tmp_path: Path) -> None:
    """The online scorers (one walk per row for PD and reasons; passive splits compiled to arrays) give exactly
    ``label_predict``, ``decision_paths`` + ``tree_contributions`` and ``passive_decisions``: on German credit
    (categorical splits at both parties) with a tenth of the values missing, at depth 3 and 5."""
    from fedcredit.config import DatasetSection
    from fedcredit.decision import tree_contributions
    from fedcredit.protocols.secureboost.scoring import (
        OnlineLabel,
        OnlinePassive,
        parse_decisions,
        passive_decisions,
    )
    from simulations.german_credit import write_german_vertical

    specs = write_german_vertical(tmp_path / "data")
    bank = load_dataset(DatasetSection(**specs["bank"]["train"]), party="bank")  # type: ignore[arg-type]
    fintech = load_dataset(DatasetSection(**specs["fintech"]["train"]), party="fintech")  # type: ignore[arg-type]
    rng = np.random.default_rng(3)
    for depth in (3, 5):
        cfg = sb.SecureBoostConfig(n_trees=6, max_depth=depth, n_bins=8)
        lab, pas = sb.train_plaintext_reference_tables(bank, {"fintech": fintech}, cfg)
        part = pas["fintech"]
        kinds = {nd.get("categories") is not None for t in lab.trees for nd in t if not nd.get("leaf") and
                 nd["owner"] == "bank"}
        assert True in kinds and any(r.categories is not None for r in part.splits.values())
        Xl, _ = lab.encode(bank)
        Xp, _ = part.encode(fintech)
        Xl[rng.random(Xl.shape) < 0.1] = np.nan
        Xp[rng.random(Xp.shape) < 0.1] = np.nan
        online_l, online_p = OnlineLabel(lab), OnlinePassive(part)
        for rows in (slice(0, 1), slice(5, 21), slice(0, len(Xl))):
            answer = online_p.answer(Xp[rows])
            assert answer == passive_decisions(part, Xp[rows])
            pd_, contribs = online_l.score(Xl[rows], {"fintech": answer})
            assert np.array_equal(pd_, sb.label_predict(lab, Xl[rows], {"fintech": answer}))
            bits = parse_decisions("fintech", answer, len(pd_))
            for k in range(0, len(pd_), 37):
                paths = online_l.scorer.decision_paths(Xl[rows][k], {"fintech": {s: b[k] for s, b in bits.items()}})
                assert contribs[k] == tree_contributions(paths, passive_parties=["fintech"], base_score=lab.base_score)


def test_coalesced_requests_encode_each_application_once(tmp_path: Path, pki, frames, monkeypatch) -> None:
    """Concurrent requests share partial round trips, and each application's features are encoded once
    (the rows go into the shared batch as they are), not once to check and again to score."""
    from concurrent.futures import ThreadPoolExecutor

    from fedcredit.data import InputSchema

    encoded: list[int] = []
    original = InputSchema.encode_rows

    def counting(self, rows, *, who):  # type: ignore[no-untyped-def]
        encoded.append(len(rows))
        return original(self, rows, who=who)

    monkeypatch.setattr(InputSchema, "encode_rows", counting)
    lab, pas = _fit_lr(frames)
    stores = _install(tmp_path, pki, "vlr-once", _lr_parts(lab, pas))
    calls: list[int] = []

    class Slow(ScoringService):
        def partial(self, model_hash, ids, caller, role="party"):
            calls.append(len(ids))

            async def later():
                await asyncio.sleep(0.15)  # keep a round trip in flight while the others queue
                return ScoringService.partial(self, model_hash, ids, caller, role)
            return later()

    host = serve(Slow("host", stores["host"], identity=pki["host"], table_loader=_host_loader), pki["host"])
    guest = serve(ScoringService("guest", stores["guest"], identity=pki["guest"], peers={"host": host.address},
                                 deadline_s=5.0, callers=["client"]), pki["guest"])
    client = ScoringClient(guest.address, pki["client"])
    try:
        apps, Xg, Xh = _apps(frames, slice(0, 12))
        encoded.clear()
        with ThreadPoolExecutor(12) as pool:
            out = list(pool.map(lambda a: client.score(a.id, a.features).pd, apps))
        np.testing.assert_allclose(out, vlr.combine(lab, Xg, [vlr.passive_partial_scores(pas, Xh)]), rtol=0, atol=1e-12)
        assert max(calls) > 1  # coalesced
        assert encoded == [1] * len(apps)  # the label party encoded each application exactly once
    finally:
        client.close()
        guest.stop(0)
        host.stop(0)


def test_vertical_lr_shared_weights_scores_online_through_ciphertexts(tmp_path: Path, pki, frames) -> None:
    """passive_weights = "shared": the passive part holds only Enc(w_k); its PartialReply carries ciphertexts
    (encrypted_partials, no plaintext partial logit) and the label party decrypts them with its model's key."""
    from crypto import ckks

    lab, pas = _fit_lr(frames)
    sk = ckks.new_context()
    d = len(pas.feature_names)
    basis = np.eye(d)
    enc = ckks.shift_replicated(sk.public(), ckks.encrypt_replicated(sk, np.zeros(d)), pas.weights, what="test")
    lab_s = vlr.LabelModel(lab.party, lab.feature_names, lab.standardizer, lab.weights, lab.intercept,
                           lab.passive_parties, secret_context=ckks.secret_bytes(sk))
    pas_s = vlr.PassiveModel(pas.party, pas.feature_names, pas.standardizer, np.full(d, np.nan), "guest",
                             encrypted_weights=enc, public_context=ckks.public_bytes(sk), basis=basis)
    stores = _install(tmp_path, pki, "vlr-s", _lr_parts(lab_s, pas_s))
    fed = Fed(tmp_path, pki, stores)
    try:
        apps, Xg, Xh = _apps(frames, slice(N_FIT, N_FIT + 30))
        expected = vlr.combine(lab, Xg, [vlr.passive_partial_scores(pas, Xh)])
        replies = fed.client.score_batch(apps)
        np.testing.assert_allclose([r.pd for r in replies], expected, rtol=0, atol=2e-3)
        single = fed.client.score(apps[0].id, apps[0].features)
        assert set(single.party_contributions) == {"host"}  # one number per passive party, as in plaintext mode
    finally:
        fed.close()
