"""Encrypted horizontal FedAvg/FedProx: models, metrics, the protocol over LocalChannel, privacy, failures."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tenseal as ts

from crypto import ckks
from fedcredit import metrics
from fedcredit.channel import Handler, LocalChannel, MemoryState, StateStore
from fedcredit.errors import ConfigError, DataError, FedCreditError, ProtocolError, SecurityError
from fedcredit.models import load_model, make_model
from fedcredit.protocols.horizontal import (
    HorizontalJob,
    decode_exact,
    decode_message,
    encode_exact,
    encode_message,
    run_coordinator,
)
from fedcredit.transport import WireRecord
from simulations.generator import write_bank_files
from simulations.horizontal_sim import make_local_federation, run_inprocess

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BANKS = ["guest", "host_1", "host_2"]
needs_data = pytest.mark.usefixtures("shared_data")


def _homo(p: str) -> Path:
    return DATA / f"default_credit_homo_{p}.csv"


@pytest.fixture(scope="module")
def small_banks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three small synthetic banks + test file (fast protocol runs)."""
    return write_bank_files(tmp_path_factory.mktemp("gen"), n_banks=3, rows_per_bank=1200, test_rows=900, seed=11)


def _fed(banks: Mapping[str, Path], tmp: Path, tap=None, test: bool = True):
    train = {p: banks[p] for p in banks if p != "test"}
    tests = {p: (banks["test"] if test else None) for p in train}
    return make_local_federation(train, tests, tmp, tap=tap)


# --------------------------------------------------------------------------- models and metrics


@pytest.mark.parametrize("family", ["lr", "mlp"])
def test_model_init_is_seed_deterministic_and_flat_roundtrips(family: str) -> None:
    a, b, c = make_model(family, 5, seed=7), make_model(family, 5, seed=7), make_model(family, 5, seed=8)
    np.testing.assert_array_equal(a.get_flat(), b.get_flat())
    if family == "mlp":
        assert not np.array_equal(a.get_flat(), c.get_flat())
        assert a.n_params == 5 * 16 + 16 + 16 + 1
    v = np.random.default_rng(0).normal(size=a.n_params)
    a.set_flat(v)
    np.testing.assert_allclose(a.get_flat(), v, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="parameters"):
        a.set_flat(v[:-1])


def test_mlp_init_and_training_are_reproducible_across_threads() -> None:
    """Parties build and train models concurrently in one process (simulation): no shared-RNG races."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(600, 6)), rng.integers(0, 2, 600)

    def one(_: int) -> np.ndarray:
        m = make_model("mlp", 6, seed=3)
        m.fit_local(X, y, epochs=2, lr=0.1, batch_size=32, seed=9)
        return m.get_flat()

    with ThreadPoolExecutor(3) as pool:
        inits = list(pool.map(lambda _: make_model("mlp", 23, seed=3).get_flat(), range(40)))
        flats = list(pool.map(one, range(4)))
    for f in inits[1:]:
        np.testing.assert_array_equal(f, inits[0])
    for f in flats[1:]:
        np.testing.assert_array_equal(f, flats[0])


@pytest.mark.parametrize("family", ["lr", "mlp"])
def test_fit_learns_and_fedprox_holds_model_near_global(family: str) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 4))
    y = (rng.random(2000) < 1 / (1 + np.exp(-(2 * X[:, 0] - X[:, 1])))).astype(int)
    m = make_model(family, 4, seed=0)
    g = m.get_flat()
    m.fit_local(X, y, epochs=5, lr=0.2, batch_size=64, seed=0)
    assert metrics.auc(y, m.predict_proba(X)) > 0.8
    free = np.linalg.norm(m.get_flat() - g)
    p = make_model(family, 4, seed=0)
    p.fit_local(X, y, epochs=5, lr=0.2, batch_size=64, prox_mu=3.0, global_flat=g, seed=0)
    assert np.linalg.norm(p.get_flat() - g) < 0.6 * free


def test_histogram_auc_ks_match_exact() -> None:
    rng = np.random.default_rng(2)
    for n, sep in [(6000, 1.2), (500, 0.3), (20000, 2.0)]:
        y = (rng.random(n) < 0.22).astype(int)
        p = 1 / (1 + np.exp(-(sep * y + rng.normal(size=n) - 1.3)))
        h = metrics.score_histogram(y, p, bins=1000)
        assert h.shape == (2, 1000) and h.sum() == n and h[1].sum() == y.sum()
        a, k = metrics.auc_ks_from_histogram(h)
        assert abs(a - metrics.auc(y, p)) < 0.002
        assert abs(k - metrics.ks(y, p)) < 0.01
        # summing per-party histograms equals the histogram of the union
        parts = np.array_split(np.arange(n), 3)
        hs = sum(metrics.score_histogram(y[i], p[i]) for i in parts)
        np.testing.assert_array_equal(hs, h)


def test_roc_ks_plot_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    out = metrics.roc_ks_plot(y, rng.random(300) * 0.5 + 0.5 * y, tmp_path / "sub" / "roc.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_exact_encrypted_sums_survive_huge_dynamic_range() -> None:
    """Bill amounts squared (1e16) and a row count in one ciphertext still sum exactly."""
    ctx = ckks.new_context()
    pub = ckks.load_public(ckks.public_bytes(ctx))
    vs = [np.array([3.3e16, 8000.0, 1.234567, -5e10, 1e-3, 0.0]), np.array([1e14, 7000.0, -0.5, 2.0, 2e-3, 1.0])]
    blob = ckks.add_encrypted(pub, [ckks.encrypt_vector(pub, encode_exact(v)) for v in vs])
    got = decode_exact(ckks.decrypt_vector(ctx, blob), 6)
    np.testing.assert_allclose(got, vs[0] + vs[1], rtol=1e-12, atol=1e-9)
    with pytest.raises(DataError, match="too large"):
        encode_exact(np.array([1e40]))


def test_message_framing_roundtrip_and_rejects_garbage() -> None:
    data = encode_message({"a": 1, "b": [1.5, "x"]}, {"one": b"\x00\x01", "two": b""})
    h, b = decode_message(data)
    assert h == {"a": 1, "b": [1.5, "x"]} and b == {"one": b"\x00\x01", "two": b""}
    for bad in [b"", b"nope", data[:-1], data + b"x"]:
        with pytest.raises(ProtocolError, match="malformed"):
            decode_message(bad)


def test_job_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"\[model\]\.rounds"):
        HorizontalJob.from_dict({"run_id": "r", "parties": ["a", "b"], "rounds": 0})
    with pytest.raises(ConfigError, match="key_holder"):
        HorizontalJob.from_dict({"run_id": "r", "parties": ["a", "b"], "key_holder": "c"})
    with pytest.raises(ConfigError, match=r"\[model\]\.roundz: unknown field"):
        HorizontalJob.from_dict({"run_id": "r", "parties": ["a"], "roundz": 3})
    j = HorizontalJob(run_id="r", parties=["a", "b"], family="mlp")
    assert (j.lr, j.batch_size) == (0.2, 128) and j.mu == 0.0
    assert HorizontalJob.from_dict(json.loads(json.dumps(j.to_dict()))) == j


# --------------------------------------------------------------------------- protocol on the real data


@needs_data
def test_encrypted_fedavg_on_real_banks_matches_pooled_quality(tmp_path: Path) -> None:
    train = {p: _homo(p) for p in BANKS}
    fed = make_local_federation(train, {p: _homo("test") for p in BANKS}, tmp_path)
    job = HorizontalJob(run_id="real-lr", parties=BANKS, rounds=5)
    events: list[dict[str, Any]] = []
    res = run_coordinator(fed.channel, job, events.append)
    assert res.parties == sorted(BANKS) and not res.dropped
    g = res.global_metrics
    assert g is not None and g["n_test"] == 3 * 6000  # every bank evaluated the shared test file
    assert g["auc"] >= 0.725 and 0.3 < g["ks"] < 0.5  # pooled plaintext LR: 0.730
    for p in BANKS:
        assert abs(res.party_metrics[p]["auc"] - g["auc"]) < 0.002  # same rows; global is from histograms
    # every bank holds the same global model, with the federated standardization
    models = [load_model(tmp_path / "parties" / p / "real-lr" / "global_model.json") for p in BANKS]
    for m in models[1:]:
        np.testing.assert_allclose(m.model.get_flat(), models[0].model.get_flat(), atol=1e-9)
    pooled = np.vstack([pd.read_csv(_homo(p)).iloc[:, 2:].to_numpy() for p in BANKS])
    np.testing.assert_allclose(models[0].mean, pooled.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(models[0].std, pooled.std(axis=0), rtol=1e-9)
    # progress: start, setup, keys, one event per round, done
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["start", "setup", "keys"] and kinds.count("round") == 5 + job.newton and kinds[-1] == "done"
    assert events[-2]["parties"]["guest"]["status"] == "ok"
    # hops: setup, install_key, (5 + Newton rounds) x fit, finalize, global_metrics
    assert sorted(res.traffic) == ["finalize", "fit", "global_metrics", "install_key", "setup"]


def _windows(v: np.ndarray) -> list[bytes]:
    """16-byte patterns of a plaintext vector: 2 consecutive float64 values, 4 consecutive float32 values."""
    out = []
    with np.errstate(over="ignore"):
        v64, v32 = v.astype("<f8"), v.astype("<f4")
    out += [v64[i : i + 2].tobytes() for i in range(len(v) - 1)]
    out += [v32[i : i + 4].tobytes() for i in range(len(v) - 3)]
    return [p for p in out if p[:8].strip(b"\0")]  # all-zero heads (empty histogram bins) carry nothing


def _find_any(hay: bytes, patterns: list[bytes]) -> bytes | None:
    """First 16-byte pattern occurring anywhere in ``hay`` (any alignment), vectorised with numpy."""
    heads = np.unique(np.frombuffer(b"".join(p[:8] for p in patterns), dtype="<u8"))
    tails: dict[int, set[bytes]] = {}
    for p in patterns:
        tails.setdefault(int(np.frombuffer(p[:8], dtype="<u8")[0]), set()).add(p[8:])
    for off in range(8):
        n = (len(hay) - off) // 8
        arr = np.frombuffer(hay, dtype="<u8", count=n, offset=off)
        for j in np.flatnonzero(np.isin(arr[:-1], heads)):
            tail = arr[j + 1 : j + 2].tobytes()
            if tail in tails[int(arr[j])]:
                return arr[j : j + 2].tobytes()
    return None


def _subsampled_banks(tmp_path: Path, rows: int = 1500) -> dict[str, Path]:
    """Each bank's benchmark training file cut to its first ``rows`` rows (speed), written under ``tmp_path``."""
    train = {}
    for p in BANKS:
        f = tmp_path / f"{p}.csv"
        pd.read_csv(_homo(p)).iloc[:rows].to_csv(f, index=False)
        train[p] = f
    return train


@needs_data
def test_coordinator_receives_only_undecryptable_ciphertexts(tmp_path: Path) -> None:
    """Record every message; replies carry CKKS blobs (public context cannot decrypt) and no plaintext update."""
    plain: dict[str, list[tuple[str, np.ndarray]]] = {p: [] for p in BANKS}
    train = _subsampled_banks(tmp_path)
    test = tmp_path / "test.csv"
    pd.read_csv(_homo("test")).iloc[:1000].to_csv(test, index=False)
    fed = make_local_federation(train, {p: test for p in BANKS}, tmp_path,
                                tap=lambda party, what, v: plain[party].append((what, v)))
    records: list[WireRecord] = []
    fed.channel.observers.append(records.append)
    kept: dict[str, bytes] = {}  # host_2's secret context as it was installed (deleted from its state at the end)
    st = fed.states["host_2"]
    put = st.put
    st.put = lambda k, v: (kept.__setitem__(k, v), put(k, v))[1]  # type: ignore[method-assign]
    res = run_coordinator(fed.channel, HorizontalJob(run_id="priv", parties=BANKS, rounds=3, family="mlp"))
    assert st.get("hz-priv-ckks") is None  # the job's key left host_2's state when its part ended
    assert res.global_metrics is not None

    # what was encrypted: stats once, an update per round, a histogram at the end
    for p in BANKS:
        assert [w for w, _ in plain[p]] == ["stats", "update", "update", "update", "histogram"]
    public_ctx = None
    allowed_header = {"ok", "features", "fingerprint", "has_test", "round", "metrics", "model_path", "auc", "ks", "n_test"}
    replies = [r for r in records if r.receiver == "coordinator"]
    assert len(replies) == 3 + 3 + 3 * 3 + 3 + 1  # setup, install_key (all: secagg bundles), fit x3, finalize, metrics
    n_ckks = 0
    for r in replies:
        h, blobs = decode_message(r.payload)
        assert set(h) <= allowed_header, f"unexpected header fields from {r.sender}: {set(h) - allowed_header}"
        for name, blob in blobs.items():
            if name == "public_ctx":
                public_ctx = ckks.load_public(blob)  # refuses a context carrying the secret key
            elif name == "sa:pub":  # secure-aggregation mask public keys: 32 bytes per aggregation
                assert len(blob) == 32 * (1 + 3 + 1)
            elif name.startswith(("envelope:", "sa:to:")):
                assert not ckks.is_ckks_blob(blob) and b"FCKK" not in blob  # sealed, opaque
            else:
                assert ckks.is_ckks_blob(blob), f"{r.sender} {r.tag} blob '{name}' is not a CKKS blob"
                n_ckks += 1
    assert public_ctx is not None and n_ckks == 3 + 9 + 3
    # the coordinator's public context cannot decrypt any captured ciphertext (neither through
    # the wrapper nor with raw TenSEAL); a party's secret context can (so the parse is right)
    secret_ctx = ckks.load_secret(kept["hz-priv-ckks"])
    for r in replies:
        for blob in decode_message(r.payload)[1].values():
            if ckks.is_ckks_blob(blob):
                with pytest.raises(SecurityError):
                    ckks.decrypt_vector(public_ctx, blob)
                (ln,) = struct.unpack_from("<I", blob, 17)  # blob header: magic, version, n, chunks
                chunk = blob[21 : 21 + ln]
                with pytest.raises(ValueError, match="secret_key"):
                    ts.ckks_vector_from(public_ctx.tenseal_context, chunk).decrypt()
                assert len(ts.ckks_vector_from(secret_ctx.tenseal_context, chunk).decrypt()) > 0
    # no plaintext vector (update, stats limbs, histogram) appears in ANY message, either direction
    everything = b"".join(r.payload for r in records)
    patterns = [w for p in BANKS for _, v in plain[p] for w in _windows(v)]
    assert len(patterns) > 1000
    assert _find_any(everything, patterns) is None, "a plaintext vector was found on the wire"
    # the search does find a vector that is on the wire (guards against a broken search)
    big = max(records, key=lambda r: r.size).payload
    probe = np.frombuffer(big[100_003:100_403], dtype="<f8")  # odd offset: unaligned search works
    assert _find_any(everything, _windows(probe)) is not None
    # nor as decimal text in any JSON header
    headers = " ".join(json.dumps(decode_message(r.payload)[0]) for r in records)
    for p in BANKS:
        for what, v in plain[p]:
            for x in v[v != np.round(v)][:200]:
                assert json.dumps(float(x)) not in headers, f"plaintext {what} value of {p} in a header"
    # the updates were real (non-trivial) vectors pre-weighted by the sample count
    _, upd = plain["guest"][1]
    assert upd[-1] == 1500.0 and np.abs(upd[:-1]).max() > 1.0


@needs_data
def test_newton_rounds_encrypt_only_the_listed_sums(tmp_path: Path) -> None:
    """Leakage table, Newton rows: each bank encrypts exactly [Σg, Σ H (upper), Σ loss, n] of its own rows at the
    point every bank derived alike; none of it reaches the wire in plaintext; every bank ends with the same model."""
    from fedcredit.protocols.horizontal import NewtonState, newton_sums, newton_sums_length

    plain: dict[str, list[tuple[str, np.ndarray]]] = {p: [] for p in BANKS}
    train = _subsampled_banks(tmp_path)
    fed = make_local_federation(train, {p: None for p in BANKS}, tmp_path,
                                tap=lambda party, what, v: plain[party].append((what, v)))
    records: list[WireRecord] = []
    fed.channel.observers.append(records.append)
    job = HorizontalJob(run_id="newton", parties=BANKS, rounds=2, newton_rounds=3)
    res = run_coordinator(fed.channel, job)
    assert res.rounds == 5 and not res.dropped
    d = len(res.feature_names)
    for p in BANKS:
        assert [w for w, _ in plain[p]] == ["stats", "update", "update", "newton", "newton", "newton"]
        for _, v in plain[p][3:]:
            assert v.shape == (newton_sums_length(d + 1),) and v[-1] == 1500.0  # this bank's own row count
    # the sums are the bank's own at the shared point: recomputed from its rows and the saved standardization
    saved = [load_model(tmp_path / "parties" / p / "newton" / "global_model.json") for p in BANKS]
    for m in saved[1:]:
        np.testing.assert_allclose(m.model.get_flat(), saved[0].model.get_flat(), atol=1e-9)
    X = pd.read_csv(train["guest"]).iloc[:, 2:].to_numpy(float)
    y = pd.read_csv(train["guest"])["y"].to_numpy(float)
    Z = (X - saved[0].mean) / saved[0].std
    for r, (_, v) in zip((3, 4, 5), plain["guest"][3:]):  # round r's sums: at the point of its stored state
        raw = fed.states["guest"].get(f"hz-newton-newton-{r}")
        assert raw is not None
        trial = NewtonState.from_bytes(raw).trial
        np.testing.assert_allclose(v, newton_sums(trial, Z, y), rtol=1e-12, atol=1e-9)
        for q in BANKS[1:]:  # the same point at every bank
            np.testing.assert_array_equal(NewtonState.from_bytes(fed.states[q].get(f"hz-newton-newton-{r}")).trial,
                                          trial)
    everything = b"".join(r.payload for r in records)
    patterns = [w for p in BANKS for what, v in plain[p] if what == "newton" for w in _windows(v)]
    assert _find_any(everything, patterns) is None, "a plaintext Newton sum was found on the wire"


def test_mlp_fedprox_on_generated_banks_learns(small_banks: dict[str, Path], tmp_path: Path) -> None:
    fed = _fed(small_banks, tmp_path)
    job = HorizontalJob(run_id="mlp-prox", parties=["bank1", "bank2", "bank3"], family="mlp",
                        algorithm="fedprox", rounds=3)
    res = run_coordinator(fed.channel, job)
    assert res.global_metrics is not None and res.global_metrics["auc"] > 0.65
    assert res.history[-1]["parties"]["bank2"]["auc"] > res.history[0]["parties"]["bank2"]["auc"] - 1e-9


# --------------------------------------------------------------------------- bad input and failures


def test_schema_mismatch_names_party_and_field(small_banks: dict[str, Path], tmp_path: Path) -> None:
    banks = dict(small_banks)
    bad = tmp_path / "bank3_renamed.csv"
    pd.read_csv(banks["bank3"]).rename(columns={"AGE": "AGE_YEARS"}).to_csv(bad, index=False)
    banks["bank3"] = bad
    fed = _fed(banks, tmp_path, test=False)
    with pytest.raises(DataError) as e:
        run_coordinator(fed.channel, HorizontalJob(run_id="schema", parties=["bank1", "bank2", "bank3"], rounds=1))
    msg = str(e.value)
    assert "party 'bank3'" in msg and "['AGE']" in msg and "['AGE_YEARS']" in msg


def test_bad_data_at_one_party_names_party_file_column(small_banks: dict[str, Path], tmp_path: Path) -> None:
    banks = dict(small_banks)
    df = pd.read_csv(banks["bank2"])
    df.loc[17, "BILL_AMT3"] = np.nan
    bad = tmp_path / "bank2_nan.csv"
    df.to_csv(bad, index=False)
    banks["bank2"] = bad
    fed = _fed(banks, tmp_path)
    with pytest.raises(DataError) as e:
        run_coordinator(fed.channel, HorizontalJob(run_id="nan", parties=["bank1", "bank2", "bank3"], rounds=1))
    msg = str(e.value)
    assert "party 'bank2'" in msg and str(bad) in msg and "BILL_AMT3" in msg and "row 18" in msg
    # with min_parties=2 the run carries on without bank2 and says so
    fed = _fed(banks, tmp_path / "again")
    res = run_coordinator(fed.channel, HorizontalJob(run_id="nan2", parties=["bank1", "bank2", "bank3"],
                                                     rounds=1, min_parties=2))
    assert res.parties == ["bank1", "bank3"] and "BILL_AMT3" in res.dropped["bank2"]


def _failing(h: Handler, method: str, round_idx: int | None = None) -> Handler:
    def handle(m: str, payload: bytes, state: StateStore) -> bytes:
        if m == method and (round_idx is None or decode_message(payload)[0].get("round") == round_idx):
            raise ConnectionError("simulated disconnect")
        return h(m, payload, state)

    return handle


class _ReportingChannel(LocalChannel):
    """Like Flower's channel: raises one error carrying per-party errors and the good replies."""

    def call_all(self, requests):  # type: ignore[override]
        out, errors = {}, {}
        for p, (m, pl) in requests.items():
            try:
                out.update(super().call_all({p: (m, pl)}))
            except Exception as e:  # noqa: BLE001
                errors[p] = str(e)
        if errors:
            err = ProtocolError("; ".join(errors.values()))
            err.errors, err.replies = errors, out  # type: ignore[attr-defined]
            raise err
        return out


@pytest.mark.parametrize("channel_cls", [LocalChannel, _ReportingChannel])
def test_party_disconnect_mid_round_respects_min_parties(
    small_banks: dict[str, Path], tmp_path: Path, channel_cls: type[LocalChannel]
) -> None:
    parties = ["bank1", "bank2", "bank3"]

    def run(min_parties: int | None, sub: str):
        fed = _fed(small_banks, tmp_path / sub)
        handlers = dict(fed.channel._handlers)
        handlers["bank2"] = _failing(handlers["bank2"], "fit", round_idx=2)
        ch = channel_cls(handlers, fed.states)
        events: list[dict[str, Any]] = []
        job = HorizontalJob(run_id=f"drop-{sub}", parties=parties, rounds=3, min_parties=min_parties)
        return run_coordinator(ch, job, events.append), events

    res, events = run(2, "ok")
    assert res.parties == ["bank1", "bank3"] and "simulated disconnect" in res.dropped["bank2"]
    assert res.history[1]["parties"]["bank2"]["status"] == "failed" and res.history[1]["contributors"] == ["bank1", "bank3"]
    assert any(e["event"] == "party_failed" and e["party"] == "bank2" for e in events)
    assert res.global_metrics is not None and res.global_metrics["auc"] > 0.65
    with pytest.raises(ProtocolError, match=r"party 'bank2'.*fit.*simulated disconnect"):
        run(None, "strict")


def test_coordinator_refuses_secret_context_from_key_holder(small_banks: dict[str, Path], tmp_path: Path) -> None:
    fed = _fed(small_banks, tmp_path)
    handlers = dict(fed.channel._handlers)
    honest = handlers["bank1"]

    def leaky(m: str, payload: bytes, state: StateStore) -> bytes:
        out = honest(m, payload, state)
        if m != "setup":
            return out
        h, b = decode_message(out)
        b["public_ctx"] = state.get("hz-leak-ckks")  # the secret context
        return encode_message(h, b)

    handlers["bank1"] = leaky
    with pytest.raises(SecurityError, match="secret key"):
        run_coordinator(LocalChannel(handlers, fed.states),
                        HorizontalJob(run_id="leak", parties=["bank1", "bank2", "bank3"], rounds=1))


def test_tampered_key_envelope_is_rejected_by_the_party(small_banks: dict[str, Path], tmp_path: Path) -> None:
    fed = _fed(small_banks, tmp_path)
    handlers = dict(fed.channel._handlers)
    honest = handlers["bank3"]

    def tampering_relay(m: str, payload: bytes, state: StateStore) -> bytes:
        if m == "install_key":
            h, b = decode_message(payload)
            env = bytearray(b["envelope"])
            env[60] ^= 1
            payload = encode_message(h, {"envelope": bytes(env)})
        return honest(m, payload, state)

    handlers["bank3"] = tampering_relay
    with pytest.raises(SecurityError, match=r"party 'bank3'.*envelope from 'bank1' failed to open"):
        run_coordinator(LocalChannel(handlers, fed.states),
                        HorizontalJob(run_id="tamper", parties=["bank1", "bank2", "bank3"], rounds=1))


def test_party_rejects_unknown_method_and_missing_setup(small_banks: dict[str, Path], tmp_path: Path) -> None:
    fed = _fed(small_banks, tmp_path)
    h = fed.channel._handlers["bank1"]
    st = MemoryState()
    hdr, _ = decode_message(h("steal_key", encode_message({}), st))
    assert hdr["ok"] is False and "unknown horizontal method" in hdr["error"]
    hdr, _ = decode_message(h("fit", encode_message({"run_id": "nope", "round": 1}), st))
    assert hdr["ok"] is False and "no 'setup' for run 'nope'" in hdr["error"]


def test_run_inprocess_generated_writes_report_and_plot(tmp_path: Path) -> None:
    rep = run_inprocess(None, None, {"rounds": 2, "run_id": "demo"}, tmp_path,
                        generate={"n_banks": 3, "rows_per_bank": 800, "test_rows": 600, "seed": 1})
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["result"]["run_id"] == "demo" and saved["harness_check"]["models_identical"] is True
    g = saved["result"]["global_metrics"]
    assert g["n_test"] == 600  # the test file split across banks: every row counted once
    assert abs(g["auc"] - saved["harness_check"]["full_test_auc"]) < 0.002
    assert (tmp_path / "roc_ks.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "messages.jsonl").read_text().splitlines()) == rep["messages"]["count"] == 2 * (3 + 3 + (2 + 8) * 3 + 3 + 1)  # 2 FedAvg + 8 Newton rounds
    assert isinstance(rep["bytes_per_round"]["bank1"]["from_party"], float)
    with pytest.raises(FedCreditError):
        run_inprocess(None, None, {"rounds": 0}, tmp_path / "bad")
