"""Signed model artifacts (fedcredit/artifacts.py) and horizontal LR export (fedcredit/export.py)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from crypto import signing
from crypto.certs import init_ca
from fedcredit import artifacts as A
from fedcredit.decision import DecisionPolicy, ScoreScale, decide, score_from_pd
from fedcredit.errors import ConfigError, SecurityError
from fedcredit.export import LinearModel, export_artifact, pmml_bytes
from fedcredit.models import LogisticModel, MLPModel, SavedModel

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CREATED = "2025-03-01T12:00:00Z"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ca")
    fed = init_ca(root / "fed", "demo-fed")
    foreign = init_ca(root / "foreign", "evil-fed")
    return {
        "sk": signing.load_private(fed / "federation-signing.key"),
        "pk": signing.load_public(fed / "federation-signing.pub"),
        "pk_path": fed / "federation-signing.pub",
        "foreign_sk": signing.load_private(foreign / "federation-signing.key"),
        "foreign_pk": signing.load_public(foreign / "federation-signing.pub"),
    }


def _lr_saved(w=(0.5, -1.0, 0.2), b=-1.3, mean=(1.0, 2.0, 3.0), std=(2.0, 1.0, 4.0), names=("a", "b", "c")) -> SavedModel:
    m = LogisticModel(len(w))
    m.set_flat(np.array([*w, b]))
    return SavedModel(m, np.array(mean), np.array(std), list(names), meta={"rounds": 3})


def _build_lr(out: Path, **kw) -> Path:
    kind, files, schema = A.horizontal_parts(_lr_saved())
    args = dict(run_id="run-1", party="bank-a", kind=kind, files=files, schema=schema,
                metrics={"auc": 0.73, "ks": 0.38}, created=CREATED)
    args.update(kw)
    return A.build_artifact(out, **args)


def _signed_lr(tmp_path: Path, keys: dict, name: str = "art", **kw) -> Path:
    p = _build_lr(tmp_path / name, **kw)
    A.sign_artifact(p, keys["sk"])
    return p


def _vertical_parts() -> dict:
    """A vertical SecureBoost-shaped run: label party tree structure, passive split table (opaque ids)."""
    label_model = {
        "trees": [{"nodes": [{"id": 0, "owner": "fintech", "split": 7, "left": 1, "right": 2},
                             {"id": 1, "leaf": -0.21}, {"id": 2, "leaf": 0.34}]}],
        "learning_rate": 0.3, "base_score": -1.26,
    }
    passive_table = A.npz_bytes({"split_id": np.array([7, 9]), "feature": np.array([3, 1]),
                                 "threshold": np.array([0.25, -1.5])})
    return {
        "bank": {"kind": "secureboost-label", "files": {"model.json": A.json_bytes(label_model)},
                 "schema": {"feature_names": ["x0", "x1"], "id_column": "id"}, "metrics": {"auc": 0.78}},
        "fintech": {"kind": "secureboost-passive", "files": {"model.npz": passive_table},
                    "schema": {"feature_names": ["y0", "y1", "y2", "y3"], "id_column": "id",
                               "preprocessing": {"bins": 32}}},
    }


# ---------------------------------------------------------------- build / sign / verify


def test_roundtrip_manifest_fields_and_files(tmp_path: Path, keys: dict) -> None:
    p = _signed_lr(tmp_path, keys)
    assert sorted(os.listdir(p)) == ["manifest.json", "model.json", "schema.json"]
    art = A.read_artifact(p, keys["pk_path"])  # PEM path works as well as a key object
    m = art.manifest
    assert (m.run_id, m.party, m.kind, m.created) == ("run-1", "bank-a", "horizontal-lr", CREATED)
    assert m.metrics == {"auc": 0.73, "ks": 0.38}
    assert set(m.files) == {"model.json", "schema.json"} and m.peers == {}
    assert m.key_id == signing.key_id(keys["pk"])
    assert art.schema["feature_names"] == ["a", "b", "c"] and art.schema["id_column"] == "id"
    assert art.schema["preprocessing"]["standardize"]["std"] == [2.0, 1.0, 4.0]
    # the model inside predicts exactly like the model that went in
    saved = A.load_horizontal(art)
    X = np.array([[3.0, 1.0, 0.0], [-1.0, 5.0, 2.0]])
    np.testing.assert_array_equal(saved.predict_proba(X), _lr_saved().predict_proba(X))
    assert A.verify_artifact(p, keys["pk"]) == m


def test_build_is_deterministic_and_model_hash_is_predictable(tmp_path: Path, keys: dict) -> None:
    a, b = _signed_lr(tmp_path, keys, "a"), _signed_lr(tmp_path, keys, "b")
    for name in ("manifest.json", "model.json", "schema.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()  # Ed25519 is deterministic too
    kind, files, schema = A.horizontal_parts(_lr_saved())
    expected = A.model_part_hash(party="bank-a", kind=kind, files=files, schema=schema)
    assert A.verify_artifact(a, keys["pk"]).model_hash == expected
    # metrics are not part of the model hash; the model bytes are
    c = A.build_artifact(tmp_path / "c", run_id="run-1", party="bank-a", kind=kind, files=files, schema=schema,
                         metrics={"auc": 0.5}, created=CREATED)
    assert json.loads((c / "manifest.json").read_text())["model_hash"] == expected


def test_tampered_model_file_is_refused_naming_the_file(tmp_path: Path, keys: dict) -> None:
    p = _signed_lr(tmp_path, keys)
    raw = bytearray((p / "model.json").read_bytes())
    i = raw.index(b"0.5")
    raw[i + 2] = ord("6")  # weight 0.5 -> 0.6: same size, one byte changed
    (p / "model.json").write_bytes(bytes(raw))
    with pytest.raises(SecurityError, match=r"model\.json has sha256 .* signed manifest says .*altered"):
        A.verify_artifact(p, keys["pk"])


def test_truncated_file_reports_size_mismatch(tmp_path: Path, keys: dict) -> None:
    p = _signed_lr(tmp_path, keys)
    (p / "schema.json").write_bytes((p / "schema.json").read_bytes()[:-1])
    with pytest.raises(SecurityError, match=r"schema\.json is \d+ bytes, the signed manifest says"):
        A.verify_artifact(p, keys["pk"])


def test_tampered_manifest_fails_the_signature(tmp_path: Path, keys: dict) -> None:
    p = _signed_lr(tmp_path, keys)
    doc = json.loads((p / "manifest.json").read_text())
    doc["metrics"]["auc"] = 0.99
    (p / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(SecurityError, match="signature does not verify"):
        A.verify_artifact(p, keys["pk"])


def test_consistently_rewritten_manifest_and_file_still_fail(tmp_path: Path, keys: dict) -> None:
    """An attacker who edits a file *and* its hash in the manifest is stopped by the signature."""
    p = _signed_lr(tmp_path, keys)
    (p / "model.json").write_bytes((p / "model.json").read_bytes().replace(b"0.5", b"0.9"))
    doc = json.loads((p / "manifest.json").read_text())
    doc["files"]["model.json"]["sha256"] = A._sha256((p / "model.json").read_bytes())
    (p / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(SecurityError, match="signature does not verify"):
        A.verify_artifact(p, keys["pk"])


def test_foreign_signed_and_unsigned_artifacts_are_refused(tmp_path: Path, keys: dict) -> None:
    foreign = _build_lr(tmp_path / "foreign")
    A.sign_artifact(foreign, keys["foreign_sk"])
    with pytest.raises(SecurityError, match="not the federation key"):
        A.verify_artifact(foreign, keys["pk"])
    unsigned = _build_lr(tmp_path / "unsigned")
    with pytest.raises(SecurityError, match="not signed"):
        A.verify_artifact(unsigned, keys["pk"])


def test_extra_missing_and_non_regular_files_are_refused(tmp_path: Path, keys: dict) -> None:
    p = _signed_lr(tmp_path, keys, "extra")
    (p / "backdoor.py").write_text("print('hi')")
    with pytest.raises(SecurityError, match=r"unexpected file\(s\) \['backdoor.py'\]"):
        A.verify_artifact(p, keys["pk"])
    q = _signed_lr(tmp_path, keys, "missing")
    (q / "model.json").unlink()
    with pytest.raises(SecurityError, match=r"\['model.json'\] listed in the signed manifest are missing"):
        A.verify_artifact(q, keys["pk"])
    r = _signed_lr(tmp_path, keys, "link")
    target = tmp_path / "elsewhere.json"
    target.write_bytes((r / "model.json").read_bytes())
    (r / "model.json").unlink()
    (r / "model.json").symlink_to(target)
    with pytest.raises(SecurityError, match="'model.json' is not a regular file"):
        A.verify_artifact(r, keys["pk"])
    s = _signed_lr(tmp_path, keys, "subdir")
    (s / "nested").mkdir()
    with pytest.raises(SecurityError, match="'nested' is not a regular file"):
        A.verify_artifact(s, keys["pk"])


def test_artifact_for_another_party_is_refused(tmp_path: Path, keys: dict) -> None:
    p = _signed_lr(tmp_path, keys)
    with pytest.raises(SecurityError, match="party 'bank-a'.* not 'bank-b'"):
        A.read_artifact(p, keys["pk"], party="bank-b")


def test_build_refuses_bad_input_and_overwrite(tmp_path: Path) -> None:
    p = _build_lr(tmp_path / "x")
    before = (p / "manifest.json").read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        _build_lr(tmp_path / "x")
    assert (p / "manifest.json").read_bytes() == before
    with pytest.raises(ConfigError, match="run_id"):
        _build_lr(tmp_path / "y", run_id="../etc")
    with pytest.raises(ConfigError, match="unknown artifact kind"):
        _build_lr(tmp_path / "y", kind="vertical-magic")
    with pytest.raises(ConfigError, match="not allowed"):
        _build_lr(tmp_path / "y", files={"../model.json": b"{}"})
    with pytest.raises(ConfigError, match="reserved"):
        _build_lr(tmp_path / "y", files={"manifest.json": b"{}"})
    with pytest.raises(ConfigError, match=r"metrics\.auc is NaN"):
        _build_lr(tmp_path / "y", metrics={"auc": float("nan")})
    with pytest.raises(ConfigError, match="more than once"):
        _build_lr(tmp_path / "y", schema={"feature_names": ["a", "a"], "id_column": "id"})
    with pytest.raises(ConfigError, match="needs its peers"):
        _build_lr(tmp_path / "y", kind="vertical-lr-label")
    with pytest.raises(ConfigError, match="cannot pair"):
        _build_lr(tmp_path / "y", kind="vertical-lr-label",
                  peers={"fintech": {"model_hash": "0" * 64, "kind": "secureboost-passive"}})
    assert not (tmp_path / "y").exists()
    assert [e.name for e in tmp_path.iterdir()] == ["x"]  # no half-built temp directories left


def test_sign_refuses_directory_altered_after_build(tmp_path: Path, keys: dict) -> None:
    p = _build_lr(tmp_path / "x")
    (p / "model.json").write_bytes(b"{}")
    with pytest.raises(SecurityError, match="model.json is 2 bytes"):
        A.sign_artifact(p, keys["sk"])
    assert "signature" not in json.loads((p / "manifest.json").read_text())


def test_signing_a_shipped_manifest_without_model_bytes(tmp_path: Path, keys: dict) -> None:
    """The federation signer sees only the manifest (hashes), never a party's model part."""
    p = _build_lr(tmp_path / "party-side")
    signer_dir = tmp_path / "signer"
    signer_dir.mkdir()
    (signer_dir / "manifest.json").write_bytes((p / "manifest.json").read_bytes())
    A.sign_artifact(signer_dir, keys["sk"], check_files=False)
    with pytest.raises(ConfigError, match="already signed"):
        A.sign_artifact(signer_dir, keys["sk"], check_files=False)
    (p / "manifest.json").write_bytes((signer_dir / "manifest.json").read_bytes())
    assert A.verify_artifact(p, keys["pk"]).party == "bank-a"


# ---------------------------------------------------------------- tar


def test_tar_roundtrip_and_tampered_tar(tmp_path: Path, keys: dict) -> None:
    p = _signed_lr(tmp_path, keys)
    t1 = A.pack_artifact(p, tmp_path / "a.tar.gz")
    t2 = A.pack_artifact(p, tmp_path / "b.tar.gz")
    assert t1.read_bytes() == t2.read_bytes()  # deterministic archive
    assert A.verify_artifact(t1, keys["pk"]) == A.verify_artifact(p, keys["pk"])
    plain = A.pack_artifact(p, tmp_path / "c.tar")
    raw = bytearray(plain.read_bytes())
    i = raw.index(b'"params"')
    raw[i + 20] ^= 0x01
    plain.write_bytes(bytes(raw))
    with pytest.raises(SecurityError, match="model.json"):
        A.verify_artifact(plain, keys["pk"])


def test_tar_with_path_traversal_or_links_is_refused(tmp_path: Path, keys: dict) -> None:
    p = _signed_lr(tmp_path, keys)
    for bad, kind in (("../model.json", tarfile.REGTYPE), ("model.json", tarfile.SYMTYPE)):
        out = tmp_path / f"bad-{kind!r}.tar"
        with tarfile.open(out, "w") as tf:
            for name in ("manifest.json", "schema.json"):
                data = (p / name).read_bytes()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(bad)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
                tf.addfile(info)
            else:
                data = (p / "model.json").read_bytes()
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        with pytest.raises(SecurityError, match="tar member"):
            A.verify_artifact(out, keys["pk"])


# ---------------------------------------------------------------- vertical runs and peers


def test_run_artifacts_cross_fill_peers_and_detect_version_mismatch(tmp_path: Path, keys: dict) -> None:
    parts = _vertical_parts()
    paths = A.build_run_artifacts(tmp_path / "run-7", run_id="run-7", parts=parts, created=CREATED)
    for p in paths.values():
        A.sign_artifact(p, keys["sk"])
    bank = A.read_artifact(paths["bank"], keys["pk"], party="bank")
    fin = A.read_artifact(paths["fintech"], keys["pk"], party="fintech")
    assert bank.manifest.peers == {"fintech": {"model_hash": fin.manifest.model_hash, "kind": "secureboost-passive"}}
    assert fin.manifest.peers == {"bank": {"model_hash": bank.manifest.model_hash, "kind": "secureboost-label"}}
    # passive part: opaque split id -> (feature, threshold), readable without pickle
    table = A.load_npz(fin.files["model.npz"])
    assert table["threshold"].tolist() == [0.25, -1.5]
    A.check_peers(bank.manifest, {"fintech": fin.manifest.model_hash})
    A.check_peers(fin.manifest, {"bank": bank.manifest.model_hash})

    # the fintech retrains (run 8) but the bank still serves run 7: refused, naming the party
    parts8 = _vertical_parts()
    parts8["fintech"]["files"] = {"model.npz": A.npz_bytes({"split_id": np.array([7]), "feature": np.array([2]),
                                                            "threshold": np.array([0.5])})}
    run8 = A.build_run_artifacts(tmp_path / "run-8", run_id="run-8", parts=parts8, created=CREATED)
    fin8 = A.check_artifact_integrity(run8["fintech"]).manifest
    with pytest.raises(SecurityError, match=r"expects 'fintech'.*but 'fintech' serves"):
        A.check_peers(bank.manifest, {"fintech": fin8.model_hash})
    with pytest.raises(SecurityError, match="did not report"):
        A.check_peers(bank.manifest, {})
    with pytest.raises(SecurityError, match="not parties of that model"):
        A.check_peers(bank.manifest, {"fintech": fin.manifest.model_hash, "bank-z": "0" * 64})


def test_npz_bytes_is_deterministic_and_refuses_objects() -> None:
    arrays = {"w": np.arange(5, dtype=np.float64), "ids": np.array([3, 1], dtype=np.int32)}
    assert A.npz_bytes(arrays) == A.npz_bytes(dict(reversed(arrays.items())))
    back = A.load_npz(A.npz_bytes(arrays))
    assert back["ids"].dtype == np.int32 and back["w"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="only numeric"):
        A.npz_bytes({"o": np.array([{"a": 1}], dtype=object)})


# ---------------------------------------------------------------- export


def _scorecard_score(csv_text: str, x: dict[str, float], binned: bool = False) -> float:
    """Score with the CSV alone (what a bank's decision engine would do)."""
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    score = float(next(r for r in rows if r["row_type"] == "base")["points"])
    binned_features = {r["feature"] for r in rows if r["row_type"] == "bin"} if binned else set()
    for r in rows:
        f = r["feature"]
        if r["row_type"] == "linear" and f not in binned_features:
            score += float(r["points_per_unit"]) * (x[f] - float(r["reference"]))
        elif r["row_type"] == "bin" and f in binned_features and float(r["lower"]) <= x[f] < float(r["upper"]):
            score += float(r["points"])
    return score


def _pmml_pd(pmml: bytes, x: dict[str, float]) -> float:
    ns = {"p": "http://www.dmg.org/PMML-4_4"}
    root = ET.fromstring(pmml)
    rm = root.find("p:RegressionModel", ns)
    assert rm.get("normalizationMethod") == "logit"
    t1 = next(t for t in rm.findall("p:RegressionTable", ns) if t.get("targetCategory") == "1")
    y = float(t1.get("intercept")) + sum(
        float(n.get("coefficient")) * x[n.get("name")] for n in t1.findall("p:NumericPredictor", ns)
    )
    return 1.0 / (1.0 + math.exp(-y))


def test_export_hand_checked_numbers(tmp_path: Path, keys: dict) -> None:
    art = A.read_artifact(_signed_lr(tmp_path, keys), keys["pk"])
    model = LinearModel.from_artifact(art)
    # raw coefficients w/std = [0.25, -1, 0.05]; intercept -1.3 - (0.5*1/2 - 1*2/1 + 0.2*3/4) = 0.3
    np.testing.assert_allclose(model.raw_coefficients, [0.25, -1.0, 0.05])
    assert model.raw_intercept == pytest.approx(0.3)
    out = export_artifact(art, tmp_path / "export", ScoreScale(base_points=600, base_odds=50, pdo=20),
                          bins={"a": [0.0, 1.0, 2.0]})
    text = out["scorecard"].read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    factor = 20 / math.log(2)
    base = next(r for r in rows if r["row_type"] == "base")
    # base = offset - factor * b with offset = 600 - factor ln 50
    assert float(base["points"]) == pytest.approx(600 - factor * math.log(50) + factor * 1.3)
    a = next(r for r in rows if r["row_type"] == "linear" and r["feature"] == "a")
    assert float(a["points_per_unit"]) == pytest.approx(-factor * 0.25)
    assert [(r["lower"], r["upper"]) for r in rows if r["row_type"] == "bin"] == [
        ("-inf", "0.0"), ("0.0", "1.0"), ("1.0", "2.0"), ("2.0", "inf")]
    x = {"a": 3.0, "b": 1.0, "c": 0.0}
    pd_ = 1 / (1 + math.exp(-(0.3 + 0.25 * 3 - 1.0 * 1 + 0.0)))
    assert model.predict_proba(np.array([[3.0, 1.0, 0.0]]))[0] == pytest.approx(pd_)
    assert _scorecard_score(text, x) == pytest.approx(score_from_pd(pd_, ScoreScale()))
    # bin [2, inf) takes the points at x=2: exact there, an approximation elsewhere
    assert _scorecard_score(text, {"a": 2.0, "b": 1.0, "c": 0.0}, binned=True) == pytest.approx(
        _scorecard_score(text, {"a": 2.0, "b": 1.0, "c": 0.0}))
    doc = json.loads(out["linear_json"].read_text())
    y = doc["intercept"] + sum(c * x[f] for f, c in zip(doc["features"], doc["coefficients"]))
    assert 1 / (1 + math.exp(-y)) == pytest.approx(pd_)
    assert doc["source"]["model_hash"] == art.manifest.model_hash
    assert _pmml_pd(out["pmml"].read_bytes(), x) == pytest.approx(pd_)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        export_artifact(art, tmp_path / "export")


def test_export_refuses_mlp_and_vertical_parts(tmp_path: Path, keys: dict) -> None:
    mlp = SavedModel(MLPModel(3, hidden=4), np.zeros(3), np.ones(3), ["a", "b", "c"])
    kind, files, schema = A.horizontal_parts(mlp)
    assert kind == "horizontal-mlp"
    p = A.build_artifact(tmp_path / "mlp", run_id="r", party="bank-a", kind=kind, files=files, schema=schema)
    A.sign_artifact(p, keys["sk"])
    with pytest.raises(ConfigError, match="neural network"):
        LinearModel.from_artifact(A.read_artifact(p, keys["pk"]))
    paths = A.build_run_artifacts(tmp_path / "v", run_id="v", parts=_vertical_parts())
    with pytest.raises(ConfigError, match="only one party's share"):
        LinearModel.from_artifact(A.check_artifact_integrity(paths["bank"]))


@pytest.mark.usefixtures("shared_data")
def test_export_on_real_credit_data_scores_like_the_model(tmp_path: Path, keys: dict) -> None:
    """Raw UCI columns -> LR -> artifact -> exported files reproduce the model's PD and score on 6,000 rows."""
    import pandas as pd

    df = pd.read_csv(DATA / "UCI_Credit_Card.csv")
    feats = ["LIMIT_BAL", "AGE", "PAY_0", "PAY_2", "BILL_AMT1", "PAY_AMT1", "PAY_AMT2"]
    X, y = df[feats].to_numpy(np.float64), df["default.payment.next.month"].to_numpy(np.float64)
    train, test = slice(0, 24000), slice(24000, None)
    mean, std = X[train].mean(0), X[train].std(0)
    lr = LogisticModel(len(feats))
    lr.fit_local((X[train] - mean) / std, y[train], epochs=3, lr=0.1, batch_size=256)
    kind, files, schema = A.horizontal_parts(SavedModel(lr, mean, std, feats), id_column="ID")
    p = A.build_artifact(tmp_path / "uci", run_id="uci-1", party="bank-a", kind=kind, files=files, schema=schema)
    A.sign_artifact(p, keys["sk"])
    art = A.read_artifact(p, keys["pk"])
    out = export_artifact(art, tmp_path / "out")
    model_pd = lr.predict_proba((X[test] - mean) / std)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y[test], model_pd) > 0.68  # a real model, not a degenerate one
    doc = json.loads(out["linear_json"].read_text())
    coef, b = np.array(doc["coefficients"]), doc["intercept"]
    np.testing.assert_allclose(1 / (1 + np.exp(-(X[test] @ coef + b))), model_pd, rtol=1e-9)
    text = out["scorecard"].read_text()
    policy = DecisionPolicy()
    for i in range(0, 6000, 600):
        x = dict(zip(feats, X[24000 + i]))
        assert _scorecard_score(text, x) == pytest.approx(score_from_pd(model_pd[i], policy.scale), abs=1e-6)
        assert _pmml_pd(pmml_bytes(LinearModel.from_artifact(art)), x) == pytest.approx(model_pd[i], rel=1e-9)
        d = decide(model_pd[i], LinearModel.from_artifact(art).contributions(x), x["LIMIT_BAL"], policy)
        assert d.score == pytest.approx(_scorecard_score(text, x), abs=1e-6)
