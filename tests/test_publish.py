"""Publishing after training over the in-process LocalChannel: build -> sign manifests -> install.

Real Ed25519 keys from crypto.certs.init_ca, real model stores; the only stand-in is
the channel (LocalChannel instead of Flower), which carries the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coordinator.publish import publish_run
from crypto.certs import init_ca
from fedcredit.channel import LocalChannel
from fedcredit.control_plane import ARTIFACT_BUILD as BUILD
from fedcredit.control_plane import ARTIFACT_INSTALL as INSTALL
from fedcredit.errors import SecurityError
from fedcredit.models import make_model, save_model
from fedcredit.protocols.vertical_common import Standardizer
from fedcredit.protocols.vertical_lr import LabelModel, PassiveModel
from party.models import ModelStore
from party.publish import party_build, party_install


@pytest.fixture()
def ca(tmp_path: Path) -> Path:
    return init_ca(tmp_path / "ca", "test-fed")


def _stores(tmp_path: Path, ca: Path, parties: list[str]) -> dict[str, ModelStore]:
    return {p: ModelStore(tmp_path / p / "models", party=p, federation_public_key=ca / "federation-signing.pub")
            for p in parties}


def _handlers(stores: dict[str, ModelStore], seen: list[tuple[str, str, bytes]] | None = None):
    def make(p: str):
        def handler(method: str, payload: bytes, state) -> bytes:
            if seen is not None:
                seen.append((p, method, payload))
            if method == BUILD:
                return party_build(stores[p].root, p, payload)
            return party_install(stores[p], stores[p].root, p, payload)
        return handler
    return {p: make(p) for p in stores}


def _save_horizontal(store: ModelStore, run_id: str) -> None:
    m = make_model("lr", 3, seed=1)
    m.set_flat(np.array([0.5, -0.2, 0.1, -1.0]))
    save_model(store.root / run_id / "global_model.json", m, mean=np.zeros(3), std=np.ones(3),
               feature_names=["a", "b", "c"])


def test_horizontal_publish_installs_and_activates_at_every_party(tmp_path: Path, ca: Path) -> None:
    stores = _stores(tmp_path, ca, ["bank1", "bank2"])
    for s in stores.values():
        _save_horizontal(s, "run-1")
    seen: list[tuple[str, str, bytes]] = []
    ch = LocalChannel(_handlers(stores, seen))
    events: list[dict] = []
    res = publish_run(ch, run_id="run-1", parties=["bank1", "bank2"], signing_key=ca / "federation-signing.key",
                      metrics={"auc": 0.75, "bad": [1]}, progress=events.append)
    assert res["published"] is True
    for p, s in stores.items():
        v = s.active()
        assert v.version == res["parties"][p]["version"] == f"run-1-{p}-1"
        assert v.kind == "horizontal-lr" and v.metrics == {"auc": 0.75}
        assert s.load().manifest.key_id == res["key_id"]
    # the coordinator never received model bytes: only manifests with hashes
    for _p, _method, payload in seen:
        assert b"params" not in payload
    assert [e.get("step") for e in events] == ["build", "install", "done"]


def test_vertical_publish_fills_peers_with_the_other_parts_hashes(tmp_path: Path, ca: Path) -> None:
    stores = _stores(tmp_path, ca, ["guest", "host"])
    st = Standardizer(mean=np.zeros(2), scale=np.ones(2))
    LabelModel("guest", ["x1", "x2"], st, np.array([0.3, -0.1]), -1.2, ["host"]).save(
        stores["guest"].root / "r7" / "vertical_lr_guest_model.json")
    PassiveModel("host", ["h1", "h2"], st, np.array([0.2, 0.4]), "guest").save(
        stores["host"].root / "r7" / "vertical_lr_host_model.json")
    res = publish_run(LocalChannel(_handlers(stores)), run_id="r7", parties=["guest", "host"],
                      signing_key=ca / "federation-signing.key")
    g, h = stores["guest"].load().manifest, stores["host"].load().manifest
    assert g.kind == "vertical-lr-label" and h.kind == "vertical-lr-passive"
    assert g.peers == {"host": {"kind": "vertical-lr-passive", "model_hash": h.model_hash}}
    assert h.peers == {"guest": {"kind": "vertical-lr-label", "model_hash": g.model_hash}}
    assert res["parties"]["guest"]["model_hash"] == g.model_hash


class TamperingChannel(LocalChannel):
    """A LocalChannel with an attacker in the middle rewriting install payloads."""

    def __init__(self, handlers, edit) -> None:
        super().__init__(handlers)
        self.edit = edit

    def _one(self, party: str, method: str, payload: bytes) -> bytes:
        if method == INSTALL:
            payload = self.edit(party, payload)
        return super()._one(party, method, payload)


def _edit_manifest(fn):
    def edit(party: str, payload: bytes) -> bytes:
        req = json.loads(payload)
        fn(party, req["manifest"])
        return json.dumps(req).encode()
    return edit


@pytest.mark.parametrize("what", ["metric", "model_hash", "swap_party", "unsigned"])
def test_tampered_manifest_in_transit_is_refused_and_store_unchanged(tmp_path: Path, ca: Path, what: str) -> None:
    stores = _stores(tmp_path, ca, ["bank1", "bank2"])
    for s in stores.values():
        _save_horizontal(s, "run-2")
    captured: dict[str, dict] = {}

    def tamper(party: str, man: dict) -> None:
        captured[party] = dict(man)
        if party != "bank2":
            return
        if what == "metric":
            man["metrics"] = {"auc": 0.99}
        elif what == "model_hash":
            man["files"]["model.json"]["sha256"] = "0" * 64
        elif what == "unsigned":
            man.pop("signature")
        elif what == "swap_party":
            man.clear()
            man.update(captured["bank1"])  # bank1's validly signed manifest replayed to bank2

    ch = TamperingChannel(_handlers(stores), _edit_manifest(tamper))
    ch._handlers = dict(ch._handlers)
    if what == "swap_party":  # make sure bank1 is served first so its manifest can be replayed
        import threading

        order = threading.Event()
        orig = ch._one

        def ordered(party, method, payload):
            if method == INSTALL and party == "bank2":
                order.wait(10)
            try:
                return orig(party, method, payload)
            finally:
                if method == INSTALL and party == "bank1":
                    order.set()
        ch._one = ordered  # type: ignore[method-assign]
    with pytest.raises(SecurityError) as exc:
        publish_run(ch, run_id="run-2", parties=["bank1", "bank2"], signing_key=ca / "federation-signing.key",
                    metrics={"auc": 0.7})
    msg = str(exc.value)
    expected = {"metric": "signature", "model_hash": "signature", "unsigned": "signature", "swap_party": "bank1"}[what]
    assert expected in msg, msg
    assert stores["bank2"].list() == []


def test_without_signing_key_nothing_is_published_with_a_clear_note(tmp_path: Path, ca: Path) -> None:
    stores = _stores(tmp_path, ca, ["bank1", "bank2"])
    seen: list = []
    res = publish_run(LocalChannel(_handlers(stores, seen)), run_id="r", parties=["bank1", "bank2"],
                      signing_key=None)
    assert res["published"] is False and "signing key" in res["note"]
    assert seen == []


def test_build_without_saved_model_names_party_and_path(tmp_path: Path, ca: Path) -> None:
    stores = _stores(tmp_path, ca, ["bank1", "bank2"])
    _save_horizontal(stores["bank1"], "r3")
    with pytest.raises(Exception) as exc:
        publish_run(LocalChannel(_handlers(stores)), run_id="r3", parties=["bank1", "bank2"],
                    signing_key=ca / "federation-signing.key")
    assert "bank2" in str(exc.value) and "r3" in str(exc.value)


@pytest.mark.e2e
def test_after_a_deployment_horizontal_job_every_bank_has_the_model_installed_and_active(tmp_path: Path) -> None:
    """Real coordinator + SuperNodes over TLS: the run ends with signed artifacts active at every bank."""
    import pandas as pd

    from party.models import FEDERATION_KEY_FILE
    from simulations.deployment import LocalFederation, PartySpec

    data_dir = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    banks = {"bank1": "default_credit_homo_guest.csv", "bank2": "default_credit_homo_host_1.csv"}
    (tmp_path / "data").mkdir()
    test = pd.read_csv(data_dir / "default_credit_homo_test.csv")
    parties = []
    for i, (bank, fname) in enumerate(banks.items()):
        pd.read_csv(data_dir / fname).iloc[:1500].to_csv(tmp_path / "data" / f"{bank}.csv", index=False)
        test.iloc[i::2].iloc[:500].to_csv(tmp_path / "data" / f"{bank}_test.csv", index=False)
        parties.append(PartySpec(bank, {"train": {"path": tmp_path / "data" / f"{bank}.csv", "label_column": "y"},
                                        "test": {"path": tmp_path / "data" / f"{bank}_test.csv", "label_column": "y"}}))
    fed = LocalFederation(tmp_path / "fed", parties).setup()
    fed.start()
    try:
        job = fed.write_job("pub", {"job": {"name": "pub", "type": "horizontal", "parties": list(banks),
                                            "round_timeout_s": 120.0},
                                    "model": {"family": "lr", "algorithm": "fedavg", "rounds": 1}})
        client = fed.client()
        run_id = client.submit(job)
        events = [json.loads(ev.data_json) for ev in client.watch(run_id) if not ev.HasField("run")]
        info = client.get(run_id)
        client.close()
        assert info.status == "finished", info.error
        result = json.loads(info.result_json)
        assert result["publish"]["published"] is True, result["publish"]
        assert [e.get("step") for e in events if e.get("event") == "publish"] == ["build", "install", "done"]
        from fedcredit.artifacts import load_horizontal

        hashes, flats = set(), []
        for bank in banks:
            store = ModelStore(fed.root / "state" / bank / "models", party=bank,
                               federation_public_key=fed.certs / bank / FEDERATION_KEY_FILE)
            v = store.active()
            assert v.run_id == run_id and v.kind == "horizontal-lr"
            assert v.version == result["publish"]["parties"][bank]["version"]
            assert v.metrics["auc"] == pytest.approx(result["global"]["auc"])
            hashes.add(store.load().manifest.model_hash)
            flats.append(load_horizontal(store.load()).model.get_flat())
        assert len(hashes) == 2  # each bank's own artifact (its own CKKS decryption of the same global model)
        assert np.allclose(flats[0], flats[1], atol=1e-6)
    finally:
        fed.stop()
