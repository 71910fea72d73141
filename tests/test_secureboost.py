"""Vertical SecureBoost: federated == plaintext reference, leakage per role, model parts, errors.

One small federation (2,500 training rows of the real credit data, two passive parties,
3 trees) is trained once per module and inspected by several tests.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crypto import ckks, ckks_hist
from fedcredit.codec import pack_blobs, unpack_arrays, unpack_blobs
from fedcredit.config import parse_job_text
from fedcredit.data import table_from_frame
from fedcredit.errors import ConfigError, DataError, PeerAborted, ProtocolError, SecurityError
from fedcredit.metrics import auc_ks, sigmoid
from fedcredit.protocols import secureboost as sb
from fedcredit.protocols.secureboost.trees import PlainSource
from fedcredit.protocols.vertical_common import ids_digest
from fedcredit.transport import InMemoryHub, WireRecord
from simulations.inprocess import run_secureboost_inprocess

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GUEST_CSV = DATA / "default_credit_hetero_guest.csv"
HOST_CSV = DATA / "default_credit_hetero_host.csv"

pytestmark = pytest.mark.usefixtures("shared_data")

N_ROWS, N_TEST = 3000, 500
CFG = sb.SecureBoostConfig(n_trees=3, max_depth=3, n_bins=32, learning_rate=0.3, timeout_s=120)
H1 = [f"x{i}" for i in range(5)]
H2 = [f"x{i}" for i in range(5, 10)]


def _frames() -> tuple[pd.DataFrame, dict[str, pd.DataFrame], set[str]]:
    g = pd.read_csv(GUEST_CSV, dtype={"id": str}).iloc[:N_ROWS].reset_index(drop=True)
    h = pd.read_csv(HOST_CSV, dtype={"id": str}).set_index("id").loc[g["id"]].reset_index()
    # the hosts list their rows in a different order: alignment is by id
    hosts = {"bank": h[["id", *H1]].iloc[::-1].reset_index(drop=True), "telco": h[["id", *H2]]}
    test_ids = set(g["id"].iloc[-N_TEST:])
    return g, hosts, test_ids


@pytest.fixture(scope="module")
def fed():
    g, hosts, test_ids = _frames()
    records: list[WireRecord] = []
    res = run_secureboost_inprocess(g, hosts, CFG, test_ids=test_ids, observers=[records.append])
    train = ~g["id"].isin(test_ids)
    h_by_id = {p: df.set_index("id").loc[g["id"]] for p, df in hosts.items()}
    X_label = g.loc[train, [f"x{i}" for i in range(13)]].to_numpy()
    y = g.loc[train, "y"].to_numpy()
    passive_X = {p: h_by_id[p].loc[train.to_numpy()].to_numpy() for p in hosts}
    ref_label, ref_passive = sb.train_plaintext_reference(
        X_label,
        y,
        passive_X,
        CFG,
        label_party="guest",
        label_feature_names=[f"x{i}" for i in range(13)],
        passive_feature_names={"bank": H1, "telco": H2},
    )
    test = ~train
    return {
        "res": res,
        "records": records,
        "ref_label": ref_label,
        "ref_passive": ref_passive,
        "X_label": X_label,
        "y": y,
        "passive_X": passive_X,
        "X_label_test": g.loc[test, [f"x{i}" for i in range(13)]].to_numpy(),
        "passive_X_test": {p: h_by_id[p].loc[test.to_numpy()].to_numpy() for p in hosts},
        "y_test": g.loc[test, "y"].to_numpy(),
    }


def _margin(label: sb.LabelModelPart, passive: dict[str, sb.PassiveModelPart], X_label, passive_X) -> np.ndarray:
    dec = {p: sb.passive_decisions(passive[p], passive_X[p]) for p in label.passive_parties}
    return sb.label_margin(label, X_label, dec)


def _describe(nd: dict, passive: dict[str, sb.PassiveModelPart]) -> tuple:
    """Node identity; a passive threshold is compared through the partition it induces (see below)."""
    if nd.get("leaf"):
        return ("leaf",)
    if "split_id" in nd:
        f = passive[nd["owner"]].splits[nd["split_id"]].feature
        return (nd["owner"], f, nd["left"], nd["right"])
    return (nd["owner"], nd["feature"], nd["threshold"], nd["left"], nd["right"])


# --------------------------------------------------------------------------- correctness


def test_federated_trees_equal_plaintext_reference(fed):
    res, ref = fed["res"], fed["ref_label"]
    model = res.label.model
    assert len(model.trees) == len(ref.trees) == CFG.n_trees
    assert model.base_score == pytest.approx(ref.base_score, abs=1e-12)
    used = set()
    for t, (ft, rt) in enumerate(zip(model.trees, ref.trees)):
        assert len(ft) == len(rt), f"tree {t}: different number of nodes"
        for i, (a, b) in enumerate(zip(ft, rt)):
            assert _describe(a, res.passive_models) == _describe(b, fed["ref_passive"]), f"tree {t} node {i}"
            if a.get("leaf"):
                assert a["value"] == pytest.approx(b["value"], abs=1e-3), f"tree {t} leaf {i}"
            else:
                used.add(a["owner"])
        # Same partition of the training rows: compare single-tree margins.  A passive party's
        # threshold may differ from the reference's only between two thresholds that split the
        # node's training rows identically (an exact tie; its candidate order is shuffled).
        one_f = replace(model, trees=[ft], base_score=0.0)
        one_r = replace(ref, trees=[rt], base_score=0.0)
        mf = _margin(one_f, res.passive_models, fed["X_label"], fed["passive_X"])
        mr = _margin(one_r, fed["ref_passive"], fed["X_label"], fed["passive_X"])
        np.testing.assert_allclose(mf, mr, atol=1e-3)
    # the test is only meaningful if every party owns splits
    assert used == {"guest", "bank", "telco"}


def test_joint_inference_matches_reference_and_reports_metrics(fed):
    res = fed["res"]
    ref_scores = sigmoid(_margin(fed["ref_label"], fed["ref_passive"], fed["X_label_test"], fed["passive_X_test"]))
    # equal up to tie-equivalent thresholds (a test row may fall between two of them)
    assert np.mean(np.abs(res.label.test_scores - ref_scores) < 1e-3) > 0.98
    rep = res.label.report
    ref_auc = auc_ks(fed["y_test"], ref_scores)[0]
    assert rep["test_auc"] == pytest.approx(ref_auc, abs=0.005)
    assert rep["n_test"] == N_TEST and 0.6 < rep["test_auc"] <= 1.0 and 0.0 < rep["test_ks"] <= 1.0
    assert rep["train_auc"] >= rep["test_auc"] - 0.1


def test_histogram_subtraction_computes_one_child_per_pair(fed):
    rep = fed["res"].label.report
    # depth 3: root + one child at level 1 + one child per pair at level 2 = at most 4 per tree (not 7)
    assert rep["label_timings"]["histograms_computed"] <= 4 * CFG.n_trees
    for p in ("bank", "telco"):
        t = rep["passive"][p]["timings"]
        # every computed histogram costs the same rotations at the passive party; none is spent on slot sums
        assert t["rotations"] == rep["label_timings"]["histograms_computed"] * t["rotations_per_pass"]
        assert 0 < t["rotations_per_pass"] <= CFG.pack - 1  # one chunk here: at most K-1


def test_giant_steps_rotate_outputs_when_chunks_outnumber_groups():
    """Masks pre-shifted for the giant step give the same sums as rotating every input K-1 times."""
    rng = np.random.default_rng(5)
    n = 4 * ckks_hist.SLOTS + 100  # 5 chunks, 1 feature with 2 candidates -> 1 group: output rotation wins
    X = rng.integers(0, 3, (n, 1)).astype(float)
    b = sb.FeatureBinner.fit(X, ["a"], 8)
    src = PlainSource("p", b, b.transform(X), own=False, shuffle=True)
    lab = ckks_hist.HistogramKeeper()
    eng = ckks_hist.HistogramEvaluator(ckks.load_public(lab.public_bytes), src.Xb, src.cand_f, src.cand_left, 8, 64)
    assert eng.baby_step == 1 and eng.rotations_per_pass == 7  # 7 output rotations instead of 5*7 input rotations
    g, h = rng.uniform(-1, 1, n), rng.uniform(0, 0.25, n)
    rows = np.flatnonzero(rng.random(n) < 0.6)
    z = np.zeros(n, complex)
    z[rows] = g[rows] + 1j * h[rows]
    GL, HL = lab.decrypt_candidates(eng.histogram(lab.encrypt_rows(z), "guest"), src.n_candidates, 8, "p")
    eng.close()
    lab.close()
    rGL, rHL = src.histogram(rows, g, h)
    np.testing.assert_allclose(GL, rGL, atol=1e-4)
    np.testing.assert_allclose(HL, rHL, atol=1e-4)


def test_binning_thresholds_match_bins():
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.normal(size=500), rng.integers(0, 4, 500).astype(float), np.full(500, 2.0)])
    b = sb.FeatureBinner.fit(X, ["a", "b", "c"], 8)
    assert b.n_bins_of(0) <= 8 and b.n_bins_of(1) == 4 and b.n_bins_of(2) == 1
    Xb = b.transform(X)
    for f in range(2):
        for k, e in enumerate(b.edges[f]):
            np.testing.assert_array_equal(Xb[:, f] <= k, X[:, f] <= e)
        assert np.all(np.bincount(Xb[:, f], minlength=b.n_bins_of(f)) > 0), "no empty bin on training data"


# --------------------------------------------------------------------------- leakage (docs/secureboost.md table)


_PASSIVE_META = {"op", "seq", "version", "n_rows", "ids_digest", "pack", "n_bins", "min_category_count", "nodes", "candidates",
                 "ids", "status", "reason"}
_LABEL_META = {"op", "seq", "n_candidates", "split_ids", "model_sha256", "splits", "timings", "message"}


def _floats(obj, path=()):
    if isinstance(obj, float):
        yield path
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _floats(v, path + (k,))
    elif isinstance(obj, list):
        for v in obj:
            yield from _floats(v, path)


def test_passive_parties_receive_only_public_context_ciphertexts_and_ids(fed):
    recs = [r for r in fed["records"] if r.receiver in ("bank", "telco")]
    assert recs and all(r.sender == "guest" and r.tag == "sb.cmd" for r in recs)
    y = fed["y"].astype(np.float64)
    g0 = y.mean() - y  # first tree's gradients
    secrets_bytes = [y.tobytes()[:64], fed["y"].astype(np.int8).tobytes()[:64], g0.tobytes()[:64]]
    ctx = None
    n_ct = 0
    for r in recs:
        blobs, meta = unpack_blobs(r.payload)
        assert set(meta) <= _PASSIVE_META, f"unexpected fields {set(meta) - _PASSIVE_META}"
        assert not list(_floats(meta)), "no plaintext number besides counts/ids may reach a passive party"
        for s in secrets_bytes:
            assert s not in r.payload
        if meta["op"] == "setup":
            ctx = ckks.load_public(blobs[0])  # passive parties must get the public context only
        elif meta["op"] == "hist":
            for b in blobs:  # a real CKKS ciphertext under the label's key ...
                assert ckks_hist.describe_ciphertext(ctx, b, "gradient ciphertext").size == 2
                n_ct += 1
        elif meta["op"] == "predict":
            assert all(isinstance(i, str) for i in meta["ids"])
        else:
            assert not blobs
    assert n_ct > 0
    with pytest.raises(Exception):  # noqa: B017 - TenSEAL raises its own types; any failure means "no secret key"
        ctx.tenseal_context.secret_key()


def test_label_party_never_receives_passive_values_or_thresholds(fed):
    recs = [r for r in fed["records"] if r.receiver == "guest"]
    assert recs and all(r.tag == "sb.reply" for r in recs)
    secret = set()
    for p, part in fed["res"].passive_models.items():
        for rule in part.splits.values():
            secret.add(np.float64(rule.threshold).tobytes())
        secret.update(np.float64(v).tobytes() for v in np.unique(fed["passive_X"][p]))
    setup = next(r for r in fed["records"] if r.receiver == "bank" and unpack_blobs(r.payload)[1]["op"] == "setup")
    ctx = ckks.load_public(unpack_blobs(setup.payload)[0][0])
    n_hist = 0
    for r in recs:
        blobs, meta = unpack_blobs(r.payload)
        assert set(meta) <= _LABEL_META, f"unexpected fields {set(meta) - _LABEL_META}"
        assert all(path[:1] == ("timings",) for path in _floats(meta)), "only timing figures may be floats"
        if meta["op"] == "hist":  # only CKKS ciphertexts (masked histograms) at the last level
            for b in blobs:
                assert ckks_hist.describe_ciphertext(ctx, b, "histogram").chain_index == 0  # the last level
                n_hist += 1
            continue
        for s in secret:
            assert s not in r.payload
        if meta["op"] == "split":
            arrays, _ = unpack_arrays(blobs[0])
            assert set(arrays) == {"bits"} and arrays["bits"].dtype == np.uint8
        elif meta["op"] == "predict":
            arrays, m = unpack_arrays(blobs[0])
            assert set(arrays) == {"split_ids", "bits"} and arrays["bits"].dtype == np.uint8
            assert set(m) == {"party", "n"}
    assert n_hist > 0


def test_model_parts_hold_only_their_owners_information(fed, tmp_path):
    res = fed["res"]
    label_path = res.label.model.save(tmp_path / "guest.json")
    label_doc = json.loads(label_path.read_text())
    for tree in label_doc["trees"]:
        for nd in tree:
            if not nd.get("leaf") and nd["owner"] != "guest":
                assert set(nd) == {"owner", "split_id", "left", "right"}, "passive splits are opaque at the label party"
    for p, part in res.passive_models.items():
        doc = json.loads(part.save(tmp_path / f"{p}.json").read_text())
        assert set(doc) == {"format", "party", "label_party", "feature_names", "input_schema", "splits"}
        assert all(set(s) == {"id", "feature", "threshold", "missing_left"} for s in doc["splits"])
    # scoring from the saved parts reproduces the joint evaluation
    label = sb.LabelModelPart.load(label_path)
    parts = {p: sb.PassiveModelPart.load(tmp_path / f"{p}.json") for p in res.passive_models}
    dec = {p: sb.passive_decisions(parts[p], fed["passive_X_test"][p]) for p in parts}
    np.testing.assert_allclose(sb.label_predict(label, fed["X_label_test"], dec), res.label.test_scores, atol=1e-12)


# --------------------------------------------------------------------------- errors


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"\[model\]\.n_bins"):
        sb.SecureBoostConfig.from_dict({"n_bins": 1})
    with pytest.raises(ConfigError, match=r"\[model\]\.pack: .*power of two"):
        sb.SecureBoostConfig.from_dict({"pack": 3})
    with pytest.raises(ConfigError, match=r"\[model\]\.max_dept: unknown field"):
        sb.SecureBoostConfig.from_dict({"max_dept": 3})
    # the same schema validates a job file's [model], with the file named
    job = "[job]\ntype = 'secureboost'\nparties = ['bank', 'fintech']\nlabel_party = 'bank'\n[model]\n"
    assert parse_job_text(job + "n_trees = 5\n").model.n_trees == 5
    with pytest.raises(ConfigError, match=r"job.toml: \[model\]\.n_bins: .*greater than or equal to 2"):
        parse_job_text(job + "n_bins = 1\n")


def test_label_predict_needs_every_passive_party(fed):
    with pytest.raises(ProtocolError, match="telco"):
        sb.label_predict(fed["res"].label.model, fed["X_label_test"], {"bank": b""})


def test_passive_refuses_a_secret_context():
    g, hosts, _ = _frames()
    host = table_from_frame(hosts["telco"].iloc[:200], party="telco", source="telco.csv")
    secret = ckks.new_context(8192, (60, 40, 60), 40, galois_keys=True)
    hub = InMemoryHub(default_timeout=20)
    setup = {"op": "setup", "seq": 1, "version": 1, "n_rows": len(host), "ids_digest": ids_digest(host.ids),
             "pack": CFG.pack, "n_bins": CFG.n_bins}
    hub.endpoint("guest").send("telco", "sb.cmd", pack_blobs([secret.secret_bytes()], setup))
    with pytest.raises(SecurityError, match="party 'telco': the CKKS context from label party 'guest' contains a secret key"):
        sb.run_secureboost_passive(hub.endpoint("telco"), host, "guest", CFG)
    # the label party learns why at once: its wait for the reply ends with the passive party's reason
    with pytest.raises(PeerAborted, match="party 'telco' aborted: .*secret key"):
        hub.endpoint("guest").recv("telco", "sb.reply", timeout=1)
    # the evaluator itself, handed the secret context by mistake, refuses it too
    with pytest.raises(SecurityError, match="secret key"):
        ckks_hist.HistogramEvaluator(secret, np.zeros((4, 1), np.uint8), np.zeros(1, np.int64), np.zeros(1, np.int64), 8, 1)  # type: ignore[arg-type]


def test_misaligned_rows_fail_fast_with_party_name():
    g, hosts, _ = _frames()
    g, host = g.iloc[:300], hosts["telco"].iloc[:300]
    guest_t = table_from_frame(g, party="guest", source="guest.csv", label_col="y")
    host_t = table_from_frame(host.iloc[::-1], party="telco", source="telco.csv")  # not aligned to guest order
    hub = InMemoryHub(default_timeout=60)
    err: list[BaseException] = []

    def passive() -> None:
        try:
            sb.run_secureboost_passive(hub.endpoint("telco"), host_t, "guest", CFG)
        except BaseException as e:
            err.append(e)

    th = threading.Thread(target=passive)
    th.start()
    with pytest.raises(ProtocolError, match="telco.*not aligned"):
        sb.run_secureboost_label(hub.endpoint("guest"), guest_t, ["telco"], CFG)
    th.join(30)
    assert err and isinstance(err[0], ProtocolError)


def test_labels_must_have_both_classes():
    g, _, _ = _frames()
    g = g.iloc[:50].assign(y=0)
    t = table_from_frame(g, party="guest", source="guest.csv", label_col="y")
    with pytest.raises(DataError, match="both classes"):
        sb.run_secureboost_label(InMemoryHub().endpoint("guest"), t, [], CFG)


def test_passive_failure_reaches_label_party_with_its_reason():
    """A passive party that cannot serve a request answers with its error instead of leaving the label hanging."""
    g, hosts, _ = _frames()
    g, host = g.iloc[:400].reset_index(drop=True), hosts["telco"].set_index("id").loc[g["id"].iloc[:400]].reset_index()
    guest_t = table_from_frame(g, party="guest", source="guest.csv", label_col="y")
    host_t = table_from_frame(host, party="telco", source="telco.csv")
    train, test = guest_t.take(np.arange(300)), guest_t.take(np.arange(300, 400))
    hub = InMemoryHub(default_timeout=60)
    err: list[BaseException] = []
    cfg = CFG.model_copy(update={"n_trees": 1, "max_depth": 1})

    def passive() -> None:  # serves training, but has no test rows to look scoring ids up in
        try:
            sb.run_secureboost_passive(hub.endpoint("telco"), host_t.take(np.arange(300)), "guest", cfg)
        except BaseException as e:
            err.append(e)

    th = threading.Thread(target=passive)
    th.start()
    with pytest.raises(ProtocolError, match="passive party 'telco' failed: .*scoring id"):
        sb.run_secureboost_label(hub.endpoint("guest"), train, ["telco"], cfg, test_table=test)
    th.join(30)
    assert err and isinstance(err[0], DataError)
