"""Federated binning: WOE/IV equal the pooled computation exactly; the passive party's transcript holds no label."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fed_data import RecordingTransport as Recording
from fed_data import messy_vertical_tables

from crypto import ckks
from fedcredit import binning as B
from fedcredit.codec import pack_blobs, unpack, unpack_blobs
from fedcredit.compute import WorkerPool
from fedcredit.data import Table
from fedcredit.errors import ConfigError, ProtocolError, SecurityError
from fedcredit.params import BinningParams
from fedcredit.protocols.binning import (
    PASSIVE_MIN_BIN_ROWS,
    Tags,
    min_rows_for,
    run_binning_label,
    run_binning_passive,
)
from fedcredit.transport import InMemoryHub, Transport
from simulations.inprocess import run_roles

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _shared(rows: int) -> tuple[Table, Table]:
    g = pd.read_csv(DATA / "default_credit_hetero_guest.csv", nrows=rows)
    h = pd.read_csv(DATA / "default_credit_hetero_host.csv", nrows=rows)
    ids = [str(i) for i in g["id"]]
    assert ids == [str(i) for i in h["id"]]
    gf = [c for c in g.columns if c not in ("id", "y")]
    hf = [c for c in h.columns if c != "id"]
    label = Table("bank", "guest.csv", ids, g[gf].to_numpy(np.float64), gf, g["y"].to_numpy(np.float64))
    passive = Table("fintech", "host.csv", ids, h[hf].to_numpy(np.float64), hf)
    return label, passive


def _run(label: Table, passive: Table, params: BinningParams, rec: list[Recording] | None = None,  # type: ignore[no-untyped-def]
         pool: WorkerPool | None = None):
    def passive_role(t: Transport):  # type: ignore[no-untyped-def]
        r = Recording(t)
        if rec is not None:
            rec.append(r)
        return run_binning_passive(r, passive, "bank", tag_prefix=params.tag_prefix, pool=pool)

    out = run_roles(InMemoryHub(default_timeout=120), {
        "bank": lambda t: run_binning_label(t, label, ["fintech"], params),
        "fintech": passive_role}, timeout_s=300)
    return out["bank"], out["fintech"]


def _pooled(passive: Table, y: np.ndarray, params: BinningParams) -> list[B.BinningTable]:
    m = min_rows_for(params, len(passive))
    return [B.fit_feature(f, passive.X[:, j], y, kind=passive.kinds[j], categories=passive.categories.get(f, ()),
                          method=params.method, n_bins=params.n_bins, n_prebins=params.n_prebins,
                          max_bins=params.max_bins, min_rows=m, monotonic=params.monotonic)[1]
            for j, f in enumerate(passive.feature_names)]


def _assert_equal(fed: list[B.BinningTable], pooled: list[B.BinningTable]) -> None:
    assert len(fed) == len(pooled)
    for a, b in zip(fed, pooled):
        assert a.counts == b.counts and a.events == b.events, a.feature
        assert a.woe == pytest.approx(b.woe, abs=1e-12)
        assert abs(a.iv_total - b.iv_total) <= 1e-9


@pytest.mark.parametrize(("method", "workers"), [("optimal", 1), ("equal_freq", 1), ("optimal", 2)])
def test_federated_iv_equals_pooled_on_shared_data(method: str, workers: int) -> None:
    """Also with the passive party's encrypted counts on 2 worker processes: the same exact counts."""
    label, passive = _shared(4000)
    params = BinningParams(method=method, monotonic="auto", min_bin_size=0.05, transform="indicators")  # type: ignore[arg-type]
    lres, pres = _run(label, passive, params, pool=WorkerPool(workers, "processes"))
    assert label.y is not None
    _assert_equal(lres.passive["fintech"], _pooled(passive, label.y, params))
    # the label party's own features: the same function as the pooled reference on its own columns
    own_pooled = B.fit_table(label, method=params.method, n_prebins=params.n_prebins, max_bins=params.max_bins,
                             min_bin_size=params.min_bin_size, monotonic=params.monotonic)
    assert min_rows_for(params, len(label)) == B.rows_of_size(params.min_bin_size, len(label))
    _assert_equal([t for _, t in lres.own], [t for _, t in own_pooled])
    # the passive's final bins of kept features are the pooled bins (same merge); its selection is the label party's
    for j, f in enumerate(passive.feature_names):
        pooled_bins = B.fit_feature(f, passive.X[:, j], label.y, method=params.method, n_bins=params.n_bins,
                                    n_prebins=params.n_prebins, max_bins=params.max_bins,
                                    min_rows=min_rows_for(params, len(passive)), monotonic=params.monotonic)[0]
        if pres.selected[j]:  # a dropped feature is told 1 bit, not its merge map
            assert pres.bins[j] == pooled_bins
    assert pres.selected == lres.selected_passive["fintech"]


def test_federated_woe_with_missing_and_categoricals_and_transcript() -> None:
    label, passive = messy_vertical_tables()
    assert label.y is not None
    params = BinningParams(method="optimal", monotonic="auto", transform="woe", min_iv=0.0)
    rec: list[Recording] = []
    lres, pres = _run(label, passive, params, rec)
    pooled = _pooled(passive, label.y, params)
    _assert_equal(lres.passive["fintech"], pooled)
    amount = lres.passive["fintech"][0]
    assert amount.counts[-1] == int(np.isnan(passive.X[:, 0]).sum()) > 0  # missing rows: their own bin
    assert lres.passive["fintech"][0].labels[0] == "bin 0"  # the label party sees bin indices, never boundaries

    # ---- the transcript: what the passive party received
    got = dict(rec[0].received)
    assert set(got) == {Tags().setup, Tags().ctx, Tags().y, Tags().result}
    setup = json.loads(got[Tags().setup])
    assert set(setup) == {"version", "n", "digest", "chunk", "config"} and set(setup["config"]) == {
        "method", "n_bins", "n_prebins", "min_rows", "transform"}
    pub = ckks.load_public(got[Tags().ctx])  # refuses a secret key: the passive cannot decrypt Enc(y)
    cts, ymeta = unpack_blobs(got[Tags().y])
    with pytest.raises(SecurityError):
        ckks.decrypt_counts(pub, cts, what="attacker")  # type: ignore[arg-type]
    assert set(ymeta) == {"chunk", "n"} and len(cts) == 1
    assert all(not _holds_labels(c, label.y) for c in cts)  # opaque ciphertexts, not the 0/1 labels in the clear
    result = json.loads(got[Tags().result])["features"]
    n_bins = [b.n_bins for b in pres.bins]
    for d, t, nb in zip(result, lres.passive["fintech"], n_bins):
        assert set(d) <= {"selected", "merge", "woe"}
        assert d["woe"] == t.woe and len(d["woe"]) == nb  # exactly the per-bin WOE, nothing per row
        assert len(d["merge"]) == nb - 1 + (0 if params.method == "equal_freq" else 0) or len(d["merge"]) < 300
    # no payload the passive received has a row-sized numeric content except the ciphertexts
    for tag, payload in rec[0].received:
        if tag == Tags().result:
            assert len(payload) < 100 * sum(n_bins) + 200
    # the transform it got: WOE per own bin; an unknown category at scoring goes to the missing bin
    new = passive.take(np.arange(5))
    new.categories["purpose"] = ["car", "edu", "home", "other", "repair", "spaceship"]
    new.X[0, 1] = 5.0  # "spaceship": never seen in training
    out, unknown = pres.transform.apply_table(new)
    assert unknown == {"purpose": 1}
    j = pres.transform.input_names.index("purpose")
    pb = pres.transform.features[j]
    assert out.X[0, j] == pres.transform.woe[j][pb.missing_bin]


def _holds_labels(blob: bytes, y: np.ndarray) -> bool:
    bits = np.packbits(y.astype(np.uint8)).tobytes()
    return bits[:16] in blob or y.astype(np.float64).tobytes()[:64] in blob


def test_indicator_mode_sends_no_woe_and_only_merge_maps() -> None:
    label, passive = messy_vertical_tables(2000)
    params = BinningParams(method="optimal", transform="indicators", min_iv=0.02)
    rec: list[Recording] = []
    lres, pres = _run(label, passive, params, rec)
    result = json.loads(dict(rec[0].received)[Tags().result])["features"]
    for d in result:
        assert "woe" not in d and set(d) <= {"selected", "merge"}
        assert ("merge" in d) == d["selected"]  # a dropped feature learns 1 bit and nothing else
    assert pres.woe is None and pres.transform.mode == "indicators"
    assert pres.selected == [t.iv_total >= 0.02 for t in lres.passive["fintech"]] or sum(pres.selected) == 1
    M = pres.transform.apply(passive.X[:, [passive.feature_names.index(f) for f in pres.transform.input_names]])
    assert set(np.unique(M)) <= {0.0, 1.0}


def test_passive_refuses_bins_below_its_floor() -> None:
    label, passive = messy_vertical_tables(600)
    params = BinningParams(min_bin_size=1)  # the label party asks for 1-row bins ...
    assert min_rows_for(params, 600) == PASSIVE_MIN_BIN_ROWS  # ... and is raised to the floor itself
    # a label party that bypasses that: the passive refuses before it touches Enc(y)

    def rogue(t: Transport) -> None:
        t.send("fintech", Tags().setup, json.dumps({"version": 1, "n": len(label), "digest": _digest(label),
                                                    "chunk": 4096, "config": {"method": "optimal", "n_bins": 10,
                                                    "n_prebins": 20, "min_rows": 1, "transform": "woe"}}).encode())
        t.recv("fintech", "never", 30)

    with pytest.raises(ConfigError, match="min_rows=1"):
        run_roles(InMemoryHub(default_timeout=30), {
            "bank": rogue, "fintech": lambda t: run_binning_passive(t, passive, "bank")}, timeout_s=60)


def _digest(t: Table) -> str:
    from fedcredit.protocols.vertical_common import ids_digest

    return ids_digest(t.ids)


def test_label_party_refuses_a_tampered_count() -> None:
    label, passive = messy_vertical_tables(600)

    def liar(t: Transport) -> None:
        from fedcredit.codec import pack

        t.recv("bank", Tags().setup)
        pub = ckks.load_public(t.recv("bank", Tags().ctx))
        cts, meta = unpack_blobs(t.recv("bank", Tags().y))
        v = np.zeros(ckks.slot_count(pub))
        v[0] = 0.4  # slot sum 0.4: not an integer count
        bad = ckks.encrypt_chunks(pub, v, len(v))
        t.send("bank", Tags().counts, pack({"features": [{"n_bins": 2, "kind": "numeric"}]},
                                           {"counts": np.array([300, 300])}))
        t.send("bank", Tags().events(0), pack_blobs([bad[0], bad[0]]))
        t.recv("bank", "never", 30)

    with pytest.raises(ProtocolError, match="not an integer count"):
        run_roles(InMemoryHub(default_timeout=30), {
            "bank": lambda t: run_binning_label(t, label, ["fintech"], BinningParams()), "fintech": liar},
            timeout_s=60)
    _ = unpack  # imported for readers: payload layout of counts is codec.pack


def test_federated_iv_equals_pooled_on_german_credit_through_the_loader(tmp_path: Path) -> None:
    """The pinned real table (category text, raw amounts, ~9 % missing credit_amount), loaded as a party loads it."""
    from fedcredit.config import DatasetSection
    from fedcredit.data import load_dataset
    from simulations.german_credit import write_german_vertical

    specs = write_german_vertical(tmp_path, missing=True)
    tables = {p: load_dataset(DatasetSection.model_validate(specs[p]["train"]), party=p) for p in specs}
    label, passive = tables["bank"], tables["fintech"]
    assert np.isnan(passive.X[:, passive.feature_names.index("credit_amount")]).any()
    assert "categorical" in passive.kinds
    for method in ("optimal", "equal_freq"):
        params = BinningParams(method=method, min_bin_size=0.05, transform="woe", min_iv=0.02)  # type: ignore[arg-type]
        lres, pres = _run(label, passive, params)
        assert label.y is not None
        _assert_equal(lres.passive["fintech"], _pooled(passive, label.y, params))


def test_woe_mode_with_a_dropped_feature() -> None:
    label, passive = _shared(3000)
    params = BinningParams(transform="woe", min_iv=0.05)
    lres, pres = _run(label, passive, params)
    assert 0 < sum(pres.selected) < len(pres.selected)
    assert pres.woe is not None
    for j, (k, t) in enumerate(zip(pres.selected, lres.passive["fintech"])):
        assert pres.woe[j] == (t.woe if k else [])
        assert ("woe" in pres.tables("fintech")[j]) == k
    assert list(pres.transform.woe) == [tuple(t.woe) for t, k in zip(lres.passive["fintech"], pres.selected) if k]


def test_binning_vocabulary() -> None:
    t = Tags("bin")
    assert [t.setup, t.ctx, t.y, t.counts, t.events(3), t.result] == [
        "bin/setup", "bin/ctx", "bin/y", "bin/counts", "bin/events/3", "bin/result"]
