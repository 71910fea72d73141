"""Online scoring of real-table applications: category text, missing values, categories the model never saw.

Real parts: a horizontal model trained in process by the encrypted protocol on the
German credit table (one-hot with the job's agreed categories + missing indicators),
a vertical LR whose parts carry an ``input_schema``; artifacts signed by a real
federation key, installed in real model stores, scored through real mutual-TLS
gRPC servers (``party/scoring.py``).  The expected PDs are computed on the
training-time path (the loader + the same encoding), so a scorer that encoded a
request differently from training would fail here.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

from crypto.certs import Identity, init_ca, issue
from fedcredit.artifacts import build_artifact, build_run_artifacts, horizontal_parts, sign_artifact
from fedcredit.config import DatasetSection
from fedcredit.data import InputSchema, OneHotEncoding, load_dataset, load_table
from fedcredit.errors import DataError
from fedcredit.models import load_model
from fedcredit.params import HorizontalJob
from fedcredit.protocols import vertical_lr as vlr
from fedcredit.protocols.horizontal import run_coordinator
from fedcredit.protocols.vertical_common import Standardizer
from party.audit import read_audit_events
from party.models import ModelStore
from party.scoring import Application, ScoringClient, ScoringService, serve
from simulations.german_credit import (
    GERMAN_CATEGORICAL,
    GERMAN_SENTINEL,
    german_credit_frame,
    write_german_banks,
    write_german_vertical,
)
from simulations.horizontal_sim import make_local_federation


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    root = tmp_path_factory.mktemp("pki")
    ca = init_ca(root / "ca", "scoring-inputs")
    ids = {n: issue(ca, root / n, n) for n in ("bank", "fintech", "client")}
    ids["ca"] = ca  # type: ignore[assignment]
    return ids


def _store(root: Path, pki, party: str, artifact: Path) -> ModelStore:
    sign_artifact(artifact, pki["ca"] / "federation-signing.key")
    s = ModelStore(root / party / "models", party=party, federation_public_key=pki["ca"] / "federation-signing.pub")
    s.install(artifact, activate=True)
    return s


def _application(row: pd.Series, features: list[str], categorical: set[str]) -> Application:
    """A raw CSV row as an approval system sends it: text for categories, None for blank / sentinel cells."""
    feats: dict[str, float | str | None] = {}
    for f in features:
        v = row[f]
        if f in categorical:
            feats[f] = None if pd.isna(v) else str(v)
        else:
            feats[f] = None if pd.isna(v) or float(v) == GERMAN_SENTINEL else float(v)
    return Application(str(row["id"]), feats)


@pytest.fixture(scope="module")
def horizontal(tmp_path_factory: pytest.TempPathFactory, pki):
    """A horizontal model trained on German credit with categorical and missing columns, served by bank1."""
    root = tmp_path_factory.mktemp("hz")
    specs = write_german_banks(root / "data", missing=True)
    df = german_credit_frame()
    cats = {c: sorted(df[c].unique().tolist()) for c in GERMAN_CATEGORICAL}
    fed = make_local_federation({b: s["train"]["path"] for b, s in specs.items()},  # type: ignore[misc]
                                {b: s["test"]["path"] for b, s in specs.items()}, root / "out",  # type: ignore[misc]
                                missing_values=[str(GERMAN_SENTINEL)])
    job = HorizontalJob(run_id="hz-cat", parties=list(specs), rounds=3, categories=cats,
                        missing_indicators=["credit_amount", "age_in_years"])
    res = run_coordinator(fed.channel, job)
    saved = load_model(root / "out" / "parties" / "bank1" / "hz-cat" / "global_model.json")
    kind, files, schema = horizontal_parts(saved)
    art = build_artifact(root / "art", run_id="hz-cat", party="bank1", kind=kind, files=files, schema=schema)
    store = _store(root, pki, "bank1", art)
    service = ScoringService("bank1", store, identity=pki["bank"], callers=("client",),
                             decision_log=root / "decisions.jsonl")
    server = serve(service, pki["bank"])
    client = ScoringClient(server.address, pki["client"])
    yield {"root": root, "res": res, "saved": saved, "service": service, "client": client,
           "test": specs["bank1"]["test"]["path"]}
    client.close()
    server.stop(0)


def test_horizontal_categorical_job_trains_and_every_bank_encodes_identically(horizontal) -> None:
    res, saved = horizontal["res"], horizontal["saved"]
    enc = OneHotEncoding.from_dict(saved.meta["encoding"], source="test")
    assert res.parties == ["bank1", "bank2"] and not res.dropped  # the coordinator compared the fingerprints
    assert res.feature_names == enc.columns == list(saved.feature_names)
    assert "purpose=car (new)" in enc.columns and "purpose=(missing)" in enc.columns
    assert "credit_amount:missing" in enc.columns
    assert res.global_metrics is not None and res.global_metrics["auc"] > 0.7


def test_scoring_text_and_missing_equals_the_training_encoding(horizontal) -> None:
    saved = horizontal["saved"]
    enc = OneHotEncoding.from_dict(saved.meta["encoding"], source="test")
    raw = pd.read_csv(horizontal["test"])
    table = load_table(horizontal["test"], party="bank1", label_col="y", missing_values=[str(GERMAN_SENTINEL)])
    encoded, unknown = enc.encode(table)
    assert not unknown
    rows = list(range(6)) + [int(np.flatnonzero(raw["credit_amount"].isna().to_numpy())[0]),
                             int(np.flatnonzero((raw["age_in_years"] == GERMAN_SENTINEL).to_numpy())[0])]
    apps = [_application(raw.iloc[r], list(enc.features), set(enc.categories)) for r in rows]
    assert any(a.features["credit_amount"] is None for a in apps) and any(a.features["age_in_years"] is None
                                                                          for a in apps)
    replies = horizontal["client"].score_batch(apps)
    expected = saved.predict_proba(encoded.X[rows])
    np.testing.assert_allclose([r.pd for r in replies], expected, rtol=0, atol=1e-12)
    assert not any(r.notes for r in replies)
    single = horizontal["client"].score(apps[-1].id, apps[-1].features)  # None travels in ScoreRequest.missing
    assert single.pd == pytest.approx(expected[-1], abs=1e-12)


def test_unknown_category_is_scored_as_missing_and_said_so(horizontal) -> None:
    saved = horizontal["saved"]
    enc = OneHotEncoding.from_dict(saved.meta["encoding"], source="test")
    raw = pd.read_csv(horizontal["test"])
    app = _application(raw.iloc[0], list(enc.features), set(enc.categories))
    strange = Application(app.id, {**app.features, "purpose": "spaceship"})
    blank = Application(app.id, {**app.features, "purpose": None})
    got, as_missing = horizontal["client"].score_batch([strange, blank])
    assert got.pd == pytest.approx(as_missing.pd, abs=1e-12)  # the documented treatment
    assert got.pd != pytest.approx(horizontal["client"].score(app.id, app.features).pd, abs=1e-9)
    assert any("1 categorical value(s) not seen in training" in n for n in got.notes) and not as_missing.notes
    horizontal["service"].log.flush()
    logged = [json.loads(x) for x in (horizontal["root"] / "decisions.jsonl").read_text().splitlines()]
    assert any("not seen in training" in " ".join(rec.get("notes", [])) for rec in logged)


@pytest.mark.parametrize("value, message", [
    (float("inf"), "feature 'credit_amount' is infinite"),
    ("lots", "feature 'credit_amount' is numeric; got 'lots'"),
])
def test_bad_numeric_inputs_are_errors_naming_application_and_feature(horizontal, value, message) -> None:
    enc = OneHotEncoding.from_dict(horizontal["saved"].meta["encoding"], source="test")
    raw = pd.read_csv(horizontal["test"])
    app = _application(raw.iloc[1], list(enc.features), set(enc.categories))
    bad = Application(app.id, {**app.features, "credit_amount": value})
    with pytest.raises(DataError, match=message):
        horizontal["service"].score([bad])
    with pytest.raises(grpc.RpcError) as e:
        horizontal["client"].score(bad.id, bad.features)
    assert message in e.value.details() and app.id in e.value.details()


def test_missing_without_an_indicator_is_refused_naming_the_feature(horizontal) -> None:
    enc = OneHotEncoding.from_dict(horizontal["saved"].meta["encoding"], source="test")
    raw = pd.read_csv(horizontal["test"])
    app = _application(raw.iloc[2], list(enc.features), set(enc.categories))
    with pytest.raises(DataError, match="feature 'duration_in_month' is missing, and the model was trained without"):
        horizontal["service"].score([Application(app.id, {**app.features, "duration_in_month": None})])


# --------------------------------------------------------------------------- vertical parts with an input schema


def _with_schema(model_json: str, schema: InputSchema) -> bytes:
    doc = json.loads(model_json)
    doc["input_schema"] = schema.to_dict()
    return json.dumps(doc).encode()


def test_vertical_parts_encode_through_their_schema_and_plain_lr_refuses_missing(tmp_path: Path, pki) -> None:
    """Label party: text in a request -> the part's codes; passive party: its own table re-coded to the part's
    vocabulary.  Plain LR cannot take a missing value: a clear error naming the feature, never a score."""
    from sklearn.linear_model import LogisticRegression

    specs = write_german_vertical(tmp_path / "data")  # complete table: categoricals only
    lab_feats = ["status_of_existing_checking_account", "credit_history", "age_in_years"]
    pas_feats = ["purpose", "duration_in_month", "savings_account_and_bonds"]
    bank = load_dataset(DatasetSection(**specs["bank"]["train"]), party="bank", feature_cols=lab_feats)  # type: ignore[arg-type]
    fintech = load_dataset(DatasetSection(**specs["fintech"]["train"]), party="fintech", feature_cols=pas_feats)  # type: ignore[arg-type]
    assert bank.y is not None
    sg, sh = Standardizer.fit(bank.X), Standardizer.fit(fintech.X)  # LR on codes: enough to check the plumbing
    clf = LogisticRegression(max_iter=500).fit(np.hstack([sg.transform(bank.X), sh.transform(fintech.X)]), bank.y)
    w = clf.coef_.ravel()
    lab = vlr.LabelModel("bank", lab_feats, sg, w[:3], float(clf.intercept_[0]), ["fintech"])
    pas = vlr.PassiveModel("fintech", pas_feats, sh, w[3:], "bank")
    # the passive party trained on a vocabulary ordered differently from its scoring file's: codes must be re-mapped
    pas_schema = InputSchema.of(fintech)
    shuffled = InputSchema(pas_schema.feature_names, pas_schema.kinds,
                           {f: tuple(reversed(v)) for f, v in pas_schema.categories.items()})
    parts = {
        "bank": {"kind": "vertical-lr-label", "files": {"model.json": _with_schema(lab.to_json(), InputSchema.of(bank))},
                 "schema": {"feature_names": lab_feats, "id_column": "id"}},
        "fintech": {"kind": "vertical-lr-passive", "files": {"model.json": _with_schema(pas.to_json(), shuffled)},
                    "schema": {"feature_names": pas_feats, "id_column": "id"}},
    }
    arts = build_run_artifacts(tmp_path / "build", run_id="vlr-cat", parts=parts, created="2026-01-01T00:00:00Z")
    stores = {p: _store(tmp_path, pki, p, a) for p, a in arts.items()}
    fin_ds = DatasetSection(**specs["fintech"]["train"])  # type: ignore[arg-type]
    host_service = ScoringService("fintech", stores["fintech"], identity=pki["fintech"],
                                  table_loader=lambda names: load_dataset(fin_ds, party="fintech", feature_cols=names,
                                                                          labels=False),
                                  audit_log=tmp_path / "fintech-audit.jsonl")
    host = serve(host_service, pki["fintech"])
    guest = ScoringService("bank", stores["bank"], identity=pki["bank"], peers={"fintech": host.address},
                           deadline_s=5.0, callers=("client",))
    try:
        raw = pd.read_csv(specs["bank"]["train"]["path"])  # type: ignore[arg-type]
        rows = [0, 1, 2, 3]
        apps = [_application(raw.iloc[r], lab_feats, set(bank.categories)) for r in rows]
        assert isinstance(apps[0].features["credit_history"], str)
        # expected on the training path: the fintech's codes mapped to the part's (reversed) vocabulary
        Xh, _ = shuffled.encode(fintech)
        expected = vlr.combine(lab, bank.X[rows], [vlr.passive_partial_scores(pas, Xh[rows])])
        got = guest.score(apps)
        np.testing.assert_allclose([d["pd"] for d in got], expected, rtol=0, atol=1e-12)
        # plain LR has no rule for a missing value: refused, naming the feature
        with pytest.raises(DataError, match=r"cannot take missing values, and feature 'age_in_years' is missing"):
            guest.score([Application(apps[0].id, {**apps[0].features, "age_in_years": None})])
        # ... and an unknown category is missing too: refused the same way (never a silent score)
        with pytest.raises(DataError, match=r"feature 'credit_history' is missing \(or a category it never saw\)"):
            guest.score([Application(apps[0].id, {**apps[0].features, "credit_history": "no idea"})])
    finally:
        guest.close()
        host.stop(0)
    assert not any(e.get("event") == "unknown_categories" for e in read_audit_events(tmp_path / "fintech-audit.jsonl"))


def test_batch_file_reads_text_blanks_and_numbers_like_the_online_path(horizontal, tmp_path: Path) -> None:
    """``fedcredit party score``'s reader: category text stays text, an empty cell is missing, the PDs are the
    online ones."""
    from fedcredit.cli_models import _read_applications

    m = horizontal["service"].model()
    raw = pd.read_csv(horizontal["test"]).iloc[:20]
    raw.loc[raw["age_in_years"] == GERMAN_SENTINEL, "age_in_years"] = np.nan  # a client file has blanks, not -999
    raw.to_csv(tmp_path / "in.csv", index=False)
    apps = _read_applications(tmp_path / "in.csv", "id", list(m.inputs.feature_names), None,
                              frozenset(m.encoding.categories))
    enc = m.encoding
    online = [_application(raw.iloc[k], list(enc.features), set(enc.categories)) for k in range(len(raw))]
    assert [a.features for a in apps] == [a.features for a in online]
    assert any(v is None for a in apps for v in a.features.values())
    got = horizontal["service"].score(apps)
    np.testing.assert_allclose([d["pd"] for d in got], [r.pd for r in horizontal["client"].score_batch(online)],
                               rtol=0, atol=1e-12)
    bad = tmp_path / "bad.csv"
    raw.assign(duration_in_month=["x"] * len(raw)).to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"line 2: column\(s\) \['duration_in_month'\] are not numbers"):
        _read_applications(bad, "id", list(m.inputs.feature_names), None, frozenset(m.encoding.categories))
