"""Vertical LR on the real credit data: quality vs pooled plaintext, and what each role receives (leakage table)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from crypto import ckks
from fedcredit.codec import unpack_arrays, unpack_blobs
from fedcredit.compute import WorkerPool
from fedcredit.data import Table, load_table, split_by_ids
from fedcredit.errors import ConfigError, DataError, PeerAborted, ProtocolError, SecurityError
from fedcredit.protocols.vertical_common import epoch_batches, validation_split
from fedcredit.protocols.vertical_lr import (
    LabelModel,
    PassiveModel,
    VerticalLRConfig,
    _from_fixed,
    combine,
    passive_partial_scores,
    request_scores,
    run_vertical_lr_passive,
    serve_scores,
)
from fedcredit.transport import InMemoryHub, WireRecord
from simulations.inprocess import run_vertical_lr_inprocess

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
N_SUBSET = 9000
#: the tests down to the "shared" section check the plaintext-weights protocol's wire and counters (an option since
#: passive_weights = "shared" became the default; the shared section below checks the default's)
PLAIN = {"passive_weights": "plaintext"}


@pytest.fixture(scope="module")
def tables() -> tuple[Table, Table, set[str]]:
    guest = load_table(DATA / "default_credit_hetero_guest.csv", party="guest", label_col="y")
    host = load_table(DATA / "default_credit_hetero_host.csv", party="host")
    test_ids = set(load_table(DATA / "default_credit_homo_test.csv", party="guest", feature_cols=[]).ids)
    rng = np.random.default_rng(7)
    keep = set(np.asarray(guest.ids)[rng.choice(len(guest), N_SUBSET, replace=False)].tolist())
    g = guest.take([i for i, x in enumerate(guest.ids) if x in keep])
    # the host holds a superset (PSI must drop the extra ids) in a different order
    extra = set(np.asarray(host.ids)[rng.choice(len(host), 500, replace=False)].tolist())
    h_rows = [i for i, x in enumerate(host.ids) if x in keep or x in extra]
    rng.shuffle(h_rows)
    h = host.take(h_rows)
    return g, h, test_ids & keep


@pytest.fixture(scope="module")
def one_passive(tables):  # type: ignore[no-untyped-def]
    g, h, test_ids = tables
    wire: list[WireRecord] = []
    res = run_vertical_lr_inprocess(g, {"host": h}, VerticalLRConfig(**PLAIN), test_ids=test_ids, observers=[wire.append])
    return res, wire


def _pooled_auc(g: Table, h: Table, test_ids: set[str], cfg: VerticalLRConfig) -> tuple[float, float]:
    h = h.align(g.ids)
    gtr, gte = split_by_ids(g, test_ids)
    htr, hte = split_by_ids(h, test_ids)
    mu = lambda X: (X.mean(0), X.std(0))  # noqa: E731
    (mg, sg), (mh, sh) = mu(gtr.X), mu(htr.X)
    Xtr = np.hstack([(gtr.X - mg) / sg, (htr.X - mh) / sh])
    Xte = np.hstack([(gte.X - mg) / sg, (hte.X - mh) / sh])
    C = 1.0 / (cfg.l2 * len(gtr))
    pooled = LogisticRegression(C=C, max_iter=2000).fit(Xtr, gtr.y)
    label_only = LogisticRegression(C=C, max_iter=2000).fit(Xtr[:, : g.n_features], gtr.y)
    return (
        roc_auc_score(gte.y, pooled.decision_function(Xte)),
        roc_auc_score(gte.y, label_only.decision_function(Xte[:, : g.n_features])),
    )


def test_reaches_pooled_quality_and_beats_label_party_alone(tables, one_passive) -> None:  # type: ignore[no-untyped-def]
    g, h, test_ids = tables
    res, _ = one_passive
    pooled, label_only = _pooled_auc(g, h, test_ids, VerticalLRConfig())
    fed = res.label.test_metrics["auc"]
    assert res.intersection_size == N_SUBSET
    assert res.label.test_metrics["n"] == len(test_ids)
    assert fed >= pooled - 0.006, (fed, pooled)
    assert fed >= label_only + 0.03, (fed, label_only)
    assert 0.3 < res.label.test_metrics["ks"] < 0.6
    assert res.label.counters["rotations"] == 0 and res.passives["host"].counters["rotations"] == 0
    # one plaintext multiplication per passive feature per ciphertext of residuals
    assert res.passives["host"].counters["plain_multiplications"] == h.n_features * res.label.counters["encryptions"]


def test_leakage_table_passive_receives_no_labels(tables, one_passive) -> None:  # type: ignore[no-untyped-def]
    g, h, test_ids = tables
    res, wire = one_passive
    to_passive = [r for r in wire if r.receiver == "host" and r.tag.startswith("vlr/")]
    ctx_payload = next(r.payload for r in to_passive if r.tag == "vlr/ctx")
    pub = ckks.load_public(ctx_payload)  # refuses a context carrying the secret key

    kinds: dict[str, int] = {}
    for r in to_passive:
        kind = r.tag.split("/")[1]
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "setup":
            meta = json.loads(r.payload)
            assert set(meta) == {"version", "config", "passives", "n_train", "n_test", "train_digest", "test_digest"}
        elif kind == "ctx":
            pass
        elif kind == "r":  # encrypted residuals: CKKS ciphertexts the passive cannot decrypt
            blobs, meta = unpack_blobs(r.payload)
            assert set(meta) == {"step", "rows", "chunk"}
            for b in blobs:
                v = ckks.ts.ckks_vector_from(pub.tenseal_context, b)
                with pytest.raises(Exception):  # noqa: B017 - TenSEAL raises its own types
                    v.decrypt()
        elif kind == "gs":  # decrypted gradient sums, still masked by the passive's own mask
            arrays, _ = unpack_arrays(r.payload)
            assert arrays["s"].shape == (h.n_features,)
            assert np.median(np.abs(arrays["s"])) > 1e6
        elif kind == "ctl":
            ctl = json.loads(r.payload)  # three bits per epoch, nothing else
            assert set(ctl) == {"improved", "stop", "full"} and all(isinstance(v, bool) for v in ctl.values())
        elif kind == "score":
            assert r.tag == "vlr/score/req"
            assert set(json.loads(r.payload)["ids"]) == test_ids
        else:
            pytest.fail(f"message kind {r.tag!r} to the passive party is not in the leakage table")
    assert set(kinds) == {"setup", "ctx", "r", "gs", "ctl", "score"}

    # the label vector in no encoding, neither in aligned order nor in any batch's order
    everything = b"".join(r.payload for r in wire if r.receiver == "host")
    y_aligned = g.align(res.label.train_ids).y
    ids = res.label.train_ids
    fit, _ = validation_split(len(y_aligned), 0.1, 0, ids)
    fit_ids = [ids[i] for i in fit]
    batch = VerticalLRConfig().effective_batch(len(fit))
    batches = epoch_batches(len(fit), batch, 0, 0, fit_ids)
    assert sum(1 for r in wire if r.tag.startswith("vlr/r/0/")) == len(batches)
    orders = [y_aligned, y_aligned[fit]] + [y_aligned[fit][b] for b in batches]
    for ys in orders:
        for dt in (np.int8, np.uint8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_):
            assert ys[:24].astype(dt).tobytes() not in everything, dt
    # the coordinator (or anyone else) is not on the vertical data path at all
    assert {r.receiver for r in wire} | {r.sender for r in wire} == {"guest", "host"}


def test_leakage_table_label_receives_no_passive_features(tables, one_passive) -> None:  # type: ignore[no-untyped-def]
    g, h, test_ids = tables
    res, wire = one_passive
    to_label = [r for r in wire if r.receiver == "guest" and r.tag.startswith("vlr/")]
    kinds = {r.tag.split("/")[1] for r in to_label}
    assert kinds == {"hello", "z", "g", "zv", "score"}
    everything = b"".join(r.payload for r in to_label)
    for c in range(h.n_features):
        for dt in (np.float64, np.float32):
            assert h.X[:8, c].astype(dt).tobytes() not in everything
            assert np.sort(h.X[:, c])[:8].astype(dt).tobytes() not in everything
    hello = json.loads(next(r.payload for r in to_label if r.tag == "vlr/hello"))
    assert hello == {"n_features": h.n_features}
    # each party's saved model holds only its own features
    assert res.label.model.feature_names == g.feature_names
    assert res.passives["host"].model.feature_names == h.feature_names
    assert "weights" in json.loads(res.passives["host"].model.to_json())
    assert len(res.passives["host"].model.weights) == h.n_features


def test_two_passives_label_learns_only_the_sum(tables) -> None:  # type: ignore[no-untyped-def]
    g, h, test_ids = tables
    rows = np.sort(np.random.default_rng(1).choice(len(g), 4000, replace=False))
    g2 = g.take(rows)
    h_al = h.align(g2.ids)
    ha = Table("bank_a", "a.csv", h_al.ids, h_al.X[:, :5], h_al.feature_names[:5])
    hb = Table("bank_b", "b.csv", h_al.ids, h_al.X[:, 5:], h_al.feature_names[5:])
    wire: list[WireRecord] = []
    res = run_vertical_lr_inprocess(
        g2, {"bank_a": ha, "bank_b": hb}, VerticalLRConfig(batch_size=2048, max_epochs=4, **PLAIN), test_ids=test_ids,
        observers=[wire.append],
    )
    assert res.label.test_metrics["auc"] > 0.70
    z = {r.sender: unpack_arrays(r.payload)[0]["q"] for r in wire if r.tag == "vlr/z/0/0"}
    assert set(z) == {"bank_a", "bank_b"}
    alone = _from_fixed(z["bank_a"])
    total = _from_fixed(z["bank_a"] + z["bank_b"])
    assert np.median(np.abs(alone)) > 1e6  # one passive's partial logits are masked...
    assert np.max(np.abs(total)) < 10  # ...only the sum of all passives is meaningful
    # passives exchanged a mask seed directly, nothing else
    between = [r for r in wire if {r.sender, r.receiver} == {"bank_a", "bank_b"}]
    assert [r.tag for r in between] == ["vlr/pairseed"]


def test_joint_scoring_round_trip_matches_local_combination(tables, one_passive) -> None:  # type: ignore[no-untyped-def]
    g, h, test_ids = tables
    res, _ = one_passive
    lm: LabelModel = LabelModel.from_json(res.label.model.to_json())
    pm: PassiveModel = PassiveModel.from_json(res.passives["host"].model.to_json())
    ids = sorted(test_ids)[:300]
    hub = InMemoryHub(default_timeout=20)
    t = threading.Thread(target=serve_scores, args=(hub.endpoint("host"), "guest", pm, h))
    t.start()
    z = request_scores(hub.endpoint("guest"), "host", ids)
    t.join()
    ga = g.align(ids)
    p_remote = combine(lm, ga.X, [z])
    p_local = combine(lm, ga.X, [passive_partial_scores(pm, h.align(ids).X)])
    np.testing.assert_allclose(p_remote, p_local, rtol=0, atol=1e-12)
    # an id the passive party does not have: a clear error on both sides
    errs: list[BaseException] = []

    def serve() -> None:
        try:
            serve_scores(hub.endpoint("host"), "guest", pm, h)
        except DataError as e:
            errs.append(e)

    t = threading.Thread(target=serve)
    t.start()
    with pytest.raises(DataError, match="host"):
        request_scores(hub.endpoint("guest"), "host", ["no-such-customer"])
    t.join()
    assert errs and "1 requested ids" in str(errs[0])


def test_models_are_saved_per_party_with_reports(tables, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    g, h, test_ids = tables
    rows = np.sort(np.random.default_rng(2).choice(len(g), 3000, replace=False))
    g2 = g.take(rows)
    res = run_vertical_lr_inprocess(
        g2, {"host": h.align(g2.ids)}, VerticalLRConfig(max_epochs=2, batch_size=1024, **PLAIN), test_ids=test_ids,
        psi=False, out_dir=tmp_path,
    )
    report = json.loads((tmp_path / "vertical_lr_report.json").read_text())
    assert report["auc"] == pytest.approx(res.label.test_metrics["auc"], abs=1e-6)
    assert (tmp_path / "vertical_lr_roc_ks.png").stat().st_size > 10_000
    label_file = json.loads((tmp_path / "vertical_lr_guest_model.json").read_text())
    host_file = json.loads((tmp_path / "vertical_lr_host_model.json").read_text())
    assert label_file["feature_names"] == g.feature_names and "intercept" in label_file
    assert host_file["feature_names"] == h.feature_names and "intercept" not in host_file
    assert (tmp_path / "vertical_lr_host_model.json").stat().st_mode & 0o077 == 0


def test_misaligned_rows_are_refused_by_both_parties(tables) -> None:  # type: ignore[no-untyped-def]
    g, h, _ = tables
    g2 = g.take(np.arange(2000))
    h2 = h.align(list(reversed(g2.ids)))
    with pytest.raises(ProtocolError, match="not aligned"):
        run_vertical_lr_inprocess(g2, {"host": h2}, VerticalLRConfig(max_epochs=1), psi=False, hub_timeout=20)


def test_passive_refuses_a_context_with_secret_key(tables) -> None:  # type: ignore[no-untyped-def]
    g, h, _ = tables
    h2 = h.take(np.arange(600))
    hub = InMemoryHub(default_timeout=20)
    lab = hub.endpoint("guest")
    from fedcredit.protocols.vertical_common import ids_digest

    setup = {"version": 1, "config": VerticalLRConfig().public(), "passives": ["host"], "n_train": len(h2),
             "n_test": 0, "train_digest": ids_digest(h2.ids), "test_digest": None}
    lab.send("host", "vlr/setup", json.dumps(setup).encode())
    lab.send("host", "vlr/ctx", ckks.secret_bytes(ckks.new_context()))
    with pytest.raises(ProtocolError, match="secret key"):
        run_vertical_lr_passive(hub.endpoint("host"), h2, "guest")
    with pytest.raises(PeerAborted, match="party 'host' aborted: .*secret key"):  # told at once, with the reason
        lab.recv("host", "vlr/hello", timeout=1)


def test_small_batches_are_refused() -> None:
    with pytest.raises(ConfigError, match="min_batch"):
        VerticalLRConfig.from_dict({"batch_size": 64})


@pytest.mark.parametrize(
    "text, message",
    [
        ("id,y,a\n1,0,1.0\n2,1,x\n", "row 2 (line 3): column 'a' has non-numeric value 'x'"),
        ("cid,y,a\n1,0,1\n", "missing column(s) ['id']"),
        ("id,y,a\n1,,1\n2,1,3\n", "row 1 (line 2): column 'y' has a missing/NaN value"),  # labels stay strict
        ("id,y,a\n001,0,1\n001,1,3\n", "duplicate id '001'"),
        ("id,y,a\n001,0,1\n1,2,3\n", "row 2 (line 3): label column 'y' has value 2; expected 0 or 1"),
        ("id,a\n1,1\n", "missing column(s) ['y']"),
    ],
)
def test_bad_tables_name_party_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bank.csv"
    f.write_text(text)
    with pytest.raises(DataError) as e:
        load_table(f, party="bank", label_col="y")
    assert message in str(e.value) and "party 'bank'" in str(e.value)


def test_ids_keep_leading_zeros(tmp_path: Path) -> None:
    f = tmp_path / "bank.csv"
    f.write_text("id,a\n00123,1\n123,2\n 7 ,3\n")
    t = load_table(f, party="bank")
    assert t.ids == ["00123", "123", "7"]


def test_splits_and_batches_follow_ids_not_row_order() -> None:
    ids = [f"c{i:03d}" for i in range(200)]
    perm = np.random.default_rng(3).permutation(200)
    shuffled = [ids[i] for i in perm]
    f1, v1 = validation_split(200, 0.2, 5, ids)
    f2, v2 = validation_split(200, 0.2, 5, shuffled)
    assert {ids[i] for i in v1} == {shuffled[i] for i in v2}
    b1 = epoch_batches(160, 50, 2, 5, [ids[i] for i in f1])
    b2 = epoch_batches(160, 50, 2, 5, [shuffled[i] for i in f2])
    assert [{ids[f1[i]] for i in b} for b in b1] == [{shuffled[f2[i]] for i in b} for b in b2]
    assert [len(b) for b in b1] == [40, 40, 40, 40]


class _RecordingPool(WorkerPool):
    """A real pool that also records which party opened which session (so a pool ignored would fail the test)."""

    def __init__(self, *a, **k) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*a, **k)
        self.opened: list[tuple[str | None, str]] = []

    def session(self, init, arg=None, *, what="HE work", party=None):  # type: ignore[no-untyped-def]
        self.opened.append((party, what))
        return super().session(init, arg, what=what, party=party)


def test_a_two_worker_pool_trains_the_same_model(tables) -> None:  # type: ignore[no-untyped-def]
    """Encryption (label) and gradient products (passive) on 2 worker processes: same ciphertext counts, same model
    up to CKKS noise and the flooding of returned sums (fresh randomness in every run)."""
    g, h, test_ids = tables
    cfg = VerticalLRConfig(max_epochs=2, full_batch_steps=2, **PLAIN)
    inline = run_vertical_lr_inprocess(g, {"host": h}, cfg, test_ids=test_ids)
    pool = _RecordingPool(2, "processes")
    pooled = run_vertical_lr_inprocess(g, {"host": h}, cfg, test_ids=test_ids, pool=pool)
    assert sorted(pool.opened) == [("guest", "vertical LR residual encryption"), ("host", "vertical LR gradient products")]
    a, b = inline.label, pooled.label
    assert (a.epochs_run, a.steps, a.counters) == (b.epochs_run, b.steps, b.counters)
    assert inline.passives["host"].counters == pooled.passives["host"].counters
    np.testing.assert_allclose(b.model.weights, a.model.weights, atol=2e-3)
    np.testing.assert_allclose(pooled.passives["host"].model.weights, inline.passives["host"].model.weights, atol=2e-3)
    assert abs(b.test_metrics["auc"] - a.test_metrics["auc"]) < 1e-3


# --------------------------------------------------------------------------- passive_weights = "shared"

_SHARED_CFG = dict(max_epochs=5, full_batch_steps=6)


@pytest.fixture(scope="module")
def shared_pair(tables):  # type: ignore[no-untyped-def]
    """The same 3000-row job in both modes (few epochs: the comparison, not the optimum, is under test)."""
    g, h, test_ids = tables
    g3 = g.take(np.sort(np.random.default_rng(3).choice(len(g), 3000, replace=False)).tolist())
    out = {}
    for mode in ("plaintext", "shared"):
        wire: list[WireRecord] = []
        res = run_vertical_lr_inprocess(g3, {"host": h}, VerticalLRConfig(**_SHARED_CFG, passive_weights=mode),
                                        test_ids=test_ids, observers=[wire.append])
        out[mode] = (res, wire)
    return g3, out


def test_shared_weights_train_the_plaintext_model(shared_pair) -> None:  # type: ignore[no-untyped-def]
    _, out = shared_pair
    plain, shared = out["plaintext"][0].label, out["shared"][0].label
    assert plain.test_metrics["n"] == shared.test_metrics["n"] > 300
    assert abs(plain.test_metrics["auc"] - shared.test_metrics["auc"]) <= 0.002, (plain.test_metrics,
                                                                                  shared.test_metrics)
    for a, b in zip(plain.history, shared.history, strict=True):  # the same trajectory, epoch by epoch
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=2e-3), (plain.history, shared.history)
    np.testing.assert_allclose(shared.model.weights, plain.model.weights, atol=0.05)  # its own block, same optimiser
    assert shared.epochs_run == plain.epochs_run


def test_shared_weights_passive_holds_no_plaintext_weight_or_gradient(shared_pair) -> None:  # type: ignore[no-untyped-def]
    """As the passive: everything it receives is the setup, the public context, control bits, a scoring request
    or CKKS ciphertexts -- no gradient sums (vlr/gs) -- and its saved part carries Enc(w) only."""
    _, out = shared_pair
    res, wire = out["shared"]
    to_passive = [r for r in wire if r.receiver == "host" and r.tag.startswith("vlr/")]
    pub = ckks.load_public(next(r.payload for r in to_passive if r.tag == "vlr/ctx"))
    kinds = {r.tag.split("/")[1] for r in to_passive}
    assert kinds == {"setup", "ctx", "wb", "r", "wbv", "ctl", "wfinal", "score"}, kinds
    n_ct = 0
    for r in to_passive:
        if r.tag.split("/")[1] in {"wb", "r", "wbv", "wfinal"}:
            blobs, _ = unpack_blobs(r.payload)
            for b in blobs:  # each one a ciphertext under the label party's key, nothing else
                ts_ct = ckks._load_all(pub, [b], r.tag)[0]
                assert r.tag.startswith("vlr/r/") or ts_ct.size() == ckks.slot_count(pub)  # weights: replicated
                n_ct += 1
    assert n_ct > 50
    pm = res.passives["host"].model
    assert pm.shared and np.all(np.isnan(pm.weights)) and len(pm.encrypted_weights or []) == len(pm.feature_names)
    doc = json.loads(pm.to_json())
    assert doc["weights"] is None and doc["passive_weights"] == "shared"
    back = PassiveModel.from_json(pm.to_json())
    assert back.shared and back.encrypted_weights == pm.encrypted_weights
    np.testing.assert_array_equal(back.basis, pm.basis)
    with pytest.raises(SecurityError):  # the passive cannot open its own part
        ckks.decrypt_chunks(ckks.load_public(back.public_context or b""), back.encrypted_weights or [], 1,  # type: ignore[arg-type]
                            what="the passive's own part")
    with pytest.raises(ConfigError, match="shared"):
        passive_partial_scores(back, np.zeros((1, len(back.feature_names))))


def test_shared_weights_online_scoring_equals_batch_scoring(tables, shared_pair) -> None:  # type: ignore[no-untyped-def]
    from fedcredit.protocols.vertical_lr import OnlineLabel, OnlinePassive

    g, h, _ = tables
    g3, out = shared_pair
    res = out["shared"][0]
    label = OnlineLabel(LabelModel.from_json(res.label.model.to_json()))
    passive = OnlinePassive(PassiveModel.from_json(res.passives["host"].model.to_json()))
    ids = res.label.test_ids[:200]
    answer = passive.answer(h.align(ids).X)
    assert isinstance(answer, bytes)
    pd, contribs = label.score(g.align(ids).X, {"host": answer})
    np.testing.assert_allclose(pd, res.label.test_scores[:200], rtol=0, atol=2e-3)
    assert set(contribs[0].parties) == {"host"}  # one number per passive party: no per-feature reasons there
    with pytest.raises(ProtocolError, match="plaintext"):
        label.score(g.align(ids).X, {"host": np.zeros(len(ids))})


def test_shared_weights_two_passives_label_learns_only_the_sum(tables) -> None:  # type: ignore[no-untyped-def]
    g, h, test_ids = tables
    g2 = g.take(np.sort(np.random.default_rng(4).choice(len(g), 2500, replace=False)).tolist())
    h_al = h.align(g2.ids)
    ha = Table("bank_a", "a.csv", h_al.ids, h_al.X[:, :5], h_al.feature_names[:5])
    hb = Table("bank_b", "b.csv", h_al.ids, h_al.X[:, 5:], h_al.feature_names[5:])
    wire: list[WireRecord] = []
    res = run_vertical_lr_inprocess(g2, {"bank_a": ha, "bank_b": hb},
                                    VerticalLRConfig(max_epochs=3, full_batch_steps=2, passive_weights="shared"),
                                    test_ids=test_ids, observers=[wire.append])
    assert res.label.test_metrics["auc"] > 0.70
    secret = ckks.load_secret(res.label.model.secret_context or b"")
    z = {r.sender: r.payload for r in wire if r.tag == "vlr/z/0/0"}
    n = unpack_blobs(z["bank_a"])[1]["rows"]
    alone = ckks.decrypt_chunks(secret, unpack_blobs(z["bank_a"])[0], n, what="a")
    total = alone + ckks.decrypt_chunks(secret, unpack_blobs(z["bank_b"])[0], n, what="b")
    assert np.median(np.abs(alone)) > 1e6  # one passive's encrypted partial logits are masked...
    assert np.max(np.abs(total)) < 10  # ...only the sum of all passives is meaningful


def test_the_default_is_shared_weights_at_pooled_quality(tables) -> None:  # type: ignore[no-untyped-def]
    """A job that names nothing trains with shared weights (issue 12: the passive's label inference <= 0.55 in the
    default configuration) and still reaches the pooled model on the benchmark subset."""
    from fedcredit.params import VerticalLRModel

    assert VerticalLRConfig().passive_weights == "shared"
    assert VerticalLRModel.from_dict({}).passive_weights == "shared"
    g, h, test_ids = tables
    res = run_vertical_lr_inprocess(g, {"host": h}, VerticalLRConfig(), test_ids=test_ids)
    pm = res.passives["host"].model
    assert pm.shared and np.all(np.isnan(pm.weights))
    pooled, label_only = _pooled_auc(g, h, test_ids, VerticalLRConfig())
    assert res.label.test_metrics["auc"] >= pooled - 0.006, (res.label.test_metrics, pooled)
    assert res.label.test_metrics["auc"] >= label_only + 0.03


def test_shared_weights_refuse_a_scorecard() -> None:
    from fedcredit.params import VerticalLRModel

    with pytest.raises((ConfigError, ValueError), match="shared"):
        VerticalLRModel.from_dict({"passive_weights": "shared", "binning": {}, "scorecard": {}})
    # a scorecard job that does not name the mode gets plaintext weights (its points per bin are those weights)
    assert VerticalLRModel.from_dict({"binning": {}, "scorecard": {}}).passive_weights == "plaintext"
    assert VerticalLRModel.from_dict({"binning": {}}).passive_weights == "shared"


def test_shared_weights_privacy_report_uses_its_own_leakage_rows() -> None:
    from fedcredit.privacy import privacy_section

    sent = [{"to": "guest", "tag": "vlr/z", "messages": 1, "bytes": 10}]
    sec = privacy_section(protocol="vertical-lr", role="passive", sent_by_tag=sent,
                          config=VerticalLRConfig(passive_weights="shared").public())
    assert sec["mode"] == "shared-weights" and sec["sent"][0]["form"] == "ciphertext"
    assert any(r["mode"] == "shared-weights" and r["role"] == "passive" for r in sec["leakage"])
    plain = privacy_section(protocol="vertical-lr", role="passive", sent_by_tag=sent,
                            config=VerticalLRConfig(passive_weights="plaintext").public())
    assert plain["mode"] == "plaintext-weights" and plain["sent"][0]["form"] == "masked"
    default = privacy_section(protocol="vertical-lr", role="passive", sent_by_tag=sent,
                              config=VerticalLRConfig().public())
    assert default["mode"] == "shared-weights"
    old_run = privacy_section(protocol="vertical-lr", role="passive", sent_by_tag=sent, config={"batch_size": 4096})
    assert old_run["mode"] == "plaintext-weights"  # a run recorded before the key existed
