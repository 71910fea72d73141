"""The party model store (party/models.py): verified install, side-by-side versions, activate, rollback."""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from crypto import signing
from crypto.certs import init_ca
from fedcredit import artifacts as A
from fedcredit.errors import ConfigError, SecurityError
from fedcredit.models import LogisticModel, SavedModel
from party.models import ModelStore


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fed")
    ca = init_ca(root / "ca", "demo-fed")
    foreign = init_ca(root / "foreign", "evil-fed")
    return {
        "root": root,
        "sk": signing.load_private(ca / "federation-signing.key"),
        "pk_path": ca / "federation-signing.pub",
        "pk": signing.load_public(ca / "federation-signing.pub"),
        "foreign_sk": signing.load_private(foreign / "federation-signing.key"),
    }


def make_artifact(out: Path, sk, *, run_id: str = "run-1", party: str = "bank-a", w0: float = 0.5,
                  metrics: dict | None = None, created: str = "2025-03-01T12:00:00Z") -> Path:
    m = LogisticModel(2)
    m.set_flat(np.array([w0, -1.0, -1.2]))
    kind, files, schema = A.horizontal_parts(SavedModel(m, np.zeros(2), np.ones(2), ["x0", "x1"]))
    p = A.build_artifact(out, run_id=run_id, party=party, kind=kind, files=files, schema=schema,
                         metrics=metrics or {"auc": 0.7 + w0 / 100}, created=created)
    if sk is not None:
        A.sign_artifact(p, sk)
    return p


def snapshot(root: Path) -> dict[str, bytes | None] | None:
    """Every path under root with its bytes (None for directories); None if root does not exist."""
    if not root.exists():
        return None
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def test_install_list_activate_rollback_sequence(tmp_path: Path, fed: dict) -> None:
    store = ModelStore(tmp_path / "store", party="bank-a", federation_public_key=fed["pk_path"])
    assert store.list() == [] and store.active_version() is None
    with pytest.raises(ConfigError, match="no active model"):
        store.active()
    arts = [make_artifact(tmp_path / f"a{i}", fed["sk"], run_id=f"run-{i}", w0=i / 10) for i in (1, 2, 3)]
    versions = [store.install(a) for a in arts]
    assert versions == ["run-1-bank-a-1", "run-2-bank-a-1", "run-3-bank-a-1"]
    listed = store.list()
    assert [v.version for v in listed] == versions
    assert [v.run_id for v in listed] == ["run-1", "run-2", "run-3"]
    assert all(v.kind == "horizontal-lr" and not v.active for v in listed)
    assert listed[1].metrics == {"auc": pytest.approx(0.702)}
    assert listed[0].installed <= listed[1].installed <= listed[2].installed

    for v in versions:
        assert store.activate(v).active
    assert store.active().version == "run-3-bank-a-1"
    assert [v.active for v in store.list()] == [False, False, True]

    assert store.rollback().version == "run-2-bank-a-1"
    assert store.active().version == "run-2-bank-a-1"
    assert store.rollback().version == "run-1-bank-a-1"
    with pytest.raises(ConfigError, match="nothing to roll back to.*first version ever activated"):
        store.rollback()
    assert store.active().version == "run-1-bank-a-1"  # a refused rollback changes nothing

    # activating the current version is a no-op, not a new rollback step
    store.activate("run-3-bank-a-1")
    store.activate("run-3-bank-a-1")
    assert store.rollback().version == "run-1-bank-a-1"

    events = [(e["event"], e["version"]) for e in store.history()]
    assert events[:4] == [("install", v) for v in versions] + [("activate", "run-1-bank-a-1")]
    assert events[-2:] == [("activate", "run-3-bank-a-1"), ("rollback", "run-1-bank-a-1")]
    # nothing left half-written
    assert not list((tmp_path / "store").glob(".*.tmp")) and not list((tmp_path / "store" / ".staging").iterdir())


def test_load_returns_the_verified_model(tmp_path: Path, fed: dict) -> None:
    store = ModelStore(tmp_path / "store", party="bank-a", federation_public_key=fed["pk"])
    src = make_artifact(tmp_path / "a", fed["sk"], w0=0.25)
    v = store.install(src, activate=True)
    manifest, files = store.load()  # default: the active version
    assert manifest.run_id == "run-1" and set(files) == {"model.json", "schema.json"}
    assert files["model.json"] == (src / "model.json").read_bytes()
    saved = A.load_horizontal(store.load(v))
    assert saved.model.get_flat().tolist() == [0.25, -1.0, -1.2]


def test_tampered_artifact_is_refused_and_store_unchanged(tmp_path: Path, fed: dict) -> None:
    root = tmp_path / "store"
    store = ModelStore(root, party="bank-a", federation_public_key=fed["pk"])
    bad = make_artifact(tmp_path / "bad", fed["sk"])
    raw = bytearray((bad / "model.json").read_bytes())
    raw[raw.index(b"-1.2") + 3] = ord("3")  # one byte: bias -1.2 -> -1.3
    (bad / "model.json").write_bytes(bytes(raw))

    with pytest.raises(SecurityError, match=r"model\.json has sha256"):
        store.install(bad)
    assert not root.exists()  # a fresh store is not even created

    good = store.install(make_artifact(tmp_path / "good", fed["sk"]), activate=True)
    before = snapshot(root)
    with pytest.raises(SecurityError, match=r"model\.json has sha256"):
        store.install(bad, activate=True)
    assert snapshot(root) == before
    assert store.active().version == good and [v.version for v in store.list()] == [good]


def test_foreign_key_and_wrong_party_are_refused_and_store_unchanged(tmp_path: Path, fed: dict) -> None:
    root = tmp_path / "store"
    store = ModelStore(root, party="bank-a", federation_public_key=fed["pk"])
    store.install(make_artifact(tmp_path / "ok", fed["sk"]), activate=True)
    before = snapshot(root)
    foreign = make_artifact(tmp_path / "foreign", fed["foreign_sk"], run_id="run-9")
    with pytest.raises(SecurityError, match="not the federation key"):
        store.install(foreign)
    other_party = make_artifact(tmp_path / "other", fed["sk"], party="bank-b")
    with pytest.raises(SecurityError, match="not 'bank-a'"):
        store.install(other_party)
    unsigned = make_artifact(tmp_path / "unsigned", None, run_id="run-8")
    with pytest.raises(SecurityError, match="not signed"):
        store.install(unsigned)
    assert snapshot(root) == before


def test_install_needs_a_key_and_unknown_versions_are_named(tmp_path: Path, fed: dict) -> None:
    store = ModelStore(tmp_path / "store")
    a = make_artifact(tmp_path / "a", fed["sk"])
    with pytest.raises(ConfigError, match="federation signing public key"):
        store.install(a)
    v = store.install(a, fed["pk"])
    with pytest.raises(ConfigError, match=rf"no model version 'nope' \(installed: {v}\)"):
        store.activate("nope")
    with pytest.raises(ConfigError, match="no model version '../x'"):
        store.load("../x")
    with pytest.raises(ConfigError, match="nothing to roll back to.*no version is active"):
        store.rollback()


def test_reinstall_is_idempotent_and_nothing_is_overwritten(tmp_path: Path, fed: dict) -> None:
    store = ModelStore(tmp_path / "store", federation_public_key=fed["pk"])
    a = make_artifact(tmp_path / "a", fed["sk"])
    v1 = store.install(a)
    first = snapshot(tmp_path / "store" / "versions" / v1)
    assert store.install(a) == v1
    assert store.install(A.pack_artifact(a, tmp_path / "a.tar.gz")) == v1  # same artifact shipped as a tar
    # the same run re-issued (different manifest: new created time) is a second version beside the first
    b = make_artifact(tmp_path / "b", fed["sk"], created="2025-03-02T00:00:00Z")
    v2 = store.install(b)
    assert v2 == "run-1-bank-a-2"
    assert snapshot(tmp_path / "store" / "versions" / v1) == first
    assert [v.version for v in store.list()] == [v1, v2]


def test_corruption_at_rest_is_detected_on_load(tmp_path: Path, fed: dict) -> None:
    for key in (fed["pk"], None):  # with the key: signature + hashes; without: hashes
        root = tmp_path / f"store-{key is None}"
        ModelStore(root, federation_public_key=fed["pk"]).install(make_artifact(tmp_path / f"a{key is None}", fed["sk"]))
        store = ModelStore(root, federation_public_key=key)
        v = store.list()[0].version
        f = root / "versions" / v / "artifact" / "model.json"
        f.write_bytes(f.read_bytes().replace(b"-1.0", b"-2.0"))
        with pytest.raises(SecurityError, match=rf"version '{v}' failed its integrity check.*model\.json"):
            store.load(v)


def _install_in_child(args: tuple[str, str, str]) -> str:
    root, art, pub = args
    return ModelStore(Path(root), party="bank-a").install(Path(art), Path(pub))


def test_concurrent_installs_and_activations_do_not_corrupt(tmp_path: Path, fed: dict) -> None:
    root = tmp_path / "store"
    # 6 distinct artifacts of one run (distinct created times) + 2 copies of the first: 6 versions expected
    arts = [make_artifact(tmp_path / f"a{i}", fed["sk"], created=f"2025-03-0{i + 1}T00:00:00Z", w0=i / 10)
            for i in range(6)]
    jobs = [(str(root), str(a), str(fed["pk_path"])) for a in arts + arts[:2]]
    with ProcessPoolExecutor(max_workers=4, mp_context=mp.get_context("fork")) as ex:
        got = list(ex.map(_install_in_child, jobs))
    store = ModelStore(root, party="bank-a", federation_public_key=fed["pk"])
    versions = sorted(store.list(), key=lambda v: v.version)
    assert len(versions) == 6 and len(set(got)) == 6
    assert {v.version for v in versions} == {f"run-1-bank-a-{n}" for n in range(1, 7)}
    assert got[6] == got[0] and got[7] == got[1]  # duplicates resolved to the existing version
    by_created = {store.load(v.version).manifest.created: v.version for v in versions}
    for i, a in enumerate(arts):  # each version holds exactly the artifact it was installed from
        assert store.load(by_created[f"2025-03-0{i + 1}T00:00:00Z"]).files["model.json"] == (a / "model.json").read_bytes()

    # concurrent activations from threads: the pointer is always valid JSON naming a real version
    names = [v.version for v in versions]
    stop = threading.Event()
    seen: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            st = json.loads((root / "active.json").read_text()) if (root / "active.json").exists() else None
            if st:
                seen.append(st["version"])

    t = threading.Thread(target=reader)
    t.start()
    with ThreadPoolExecutor(max_workers=4) as ex:
        list(ex.map(lambda n: ModelStore(root).activate(n), names * 5))
    stop.set()
    t.join()
    assert set(seen) <= set(names)
    st = json.loads((root / "active.json").read_text())
    activations = sum(1 for e in store.history() if e["event"] == "activate")
    assert len(st["previous"]) == activations - 1  # every switch kept its rollback target
    assert store.rollback().version == st["previous"][-1]


def test_open_store_from_party_config(tmp_path: Path, fed: dict) -> None:
    from fedcredit.config import load_party_config
    from party.models import open_store

    ident = tmp_path / "ident"
    ident.mkdir()
    (ident / "federation-signing.pub").write_bytes(fed["pk_path"].read_bytes())
    cfg = tmp_path / "party.toml"
    cfg.write_text(
        "[party]\nname = 'bank-a'\nidentity_dir = 'ident'\nstate_dir = 'state'\n"
        "[coordinator]\nflower_address = '127.0.0.1:1'\nrelay_address = '127.0.0.1:2'\n"
    )
    store = open_store(load_party_config(cfg))
    assert store.root == (tmp_path / "state" / "models").resolve() and store.party == "bank-a"
    v = store.install(make_artifact(tmp_path / "a", fed["sk"]), activate=True)  # key found in identity_dir
    assert store.active().version == v
    with pytest.raises(SecurityError, match="not 'bank-a'"):
        store.install(make_artifact(tmp_path / "b", fed["sk"], party="bank-b"))


def test_vertical_lr_parts_deploy_to_each_party_and_score_jointly(tmp_path: Path, fed: dict) -> None:
    """Real vertical LR model parts -> one run's artifacts -> each party's own store -> a joint PD with reasons."""
    from fedcredit.decision import DecisionPolicy, decide, lr_contributions
    from fedcredit.metrics import sigmoid
    from fedcredit.protocols.vertical_common import Standardizer
    from fedcredit.protocols.vertical_lr import LabelModel, PassiveModel

    label = LabelModel(party="bank", feature_names=["PAY_0", "AGE"],
                       standardizer=Standardizer(mean=np.array([0.0, 35.0]), scale=np.array([1.0, 9.0])),
                       weights=np.array([0.7, -0.1]), intercept=-1.4, passive_parties=["fintech"])
    passive = PassiveModel(party="fintech", feature_names=["orders", "returns"],
                           standardizer=Standardizer(mean=np.array([10.0, 1.0]), scale=np.array([5.0, 1.0])),
                           weights=np.array([-0.3, 0.4]), label_party="bank")

    def spec(kind: str, m) -> dict:
        return {"kind": kind, "files": {"model.json": m.to_json().encode()},
                "schema": {"feature_names": m.feature_names, "id_column": "id",
                           "preprocessing": {"standardize": m.standardizer.to_dict()}}}

    paths = A.build_run_artifacts(tmp_path / "run-5", run_id="run-5",
                                  parts={"bank": spec("vertical-lr-label", label),
                                         "fintech": spec("vertical-lr-passive", passive)})
    for p in paths.values():
        A.sign_artifact(p, fed["sk"])
    stores = {}
    for party, p in paths.items():
        stores[party] = ModelStore(tmp_path / f"{party}-store", party=party, federation_public_key=fed["pk"])
        stores[party].install(p, activate=True)
        with pytest.raises(SecurityError, match=f"not '{party}'"):  # the other party's part is refused
            stores[party].install(paths["fintech" if party == "bank" else "bank"])

    bank_art, fin_art = stores["bank"].load(), stores["fintech"].load()
    lab = LabelModel.from_json(bank_art.files["model.json"].decode())
    pas = PassiveModel.from_json(fin_art.files["model.json"].decode())
    # the passive party computes its partial logit from its own features and reports its model hash
    partial = float(pas.standardizer.transform(np.array([[20.0, 3.0]]))[0] @ pas.weights)
    A.check_peers(bank_art.manifest, {"fintech": fin_art.manifest.model_hash})
    z = lab.standardizer.transform(np.array([[2.0, 26.0]]))[0]
    c = lr_contributions(lab.weights, z, lab.feature_names, intercept=lab.intercept, passive_partials={"fintech": partial})
    assert partial == pytest.approx(-0.3 * 2 + 0.4 * 2)
    assert c.logit == pytest.approx(-1.4 + 0.7 * 2 - 0.1 * (-1.0) + 0.2)
    d = decide(c.pd, c, None, DecisionPolicy())
    assert d.pd == pytest.approx(sigmoid(0.3))
    assert [(r.name, r.source) for r in d.reasons] == [("PAY_0", "feature"), ("AGE", "feature"), ("fintech", "party")]
