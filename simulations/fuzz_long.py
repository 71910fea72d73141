"""Fuzz targets: every decoder of bytes that arrive from another institution, with valid seeds.

The targets are shared by ``tests/test_fuzz.py`` (bounded budget, every CI run) and this
script's long run (``python -m simulations.fuzz_long``, figures in docs/fuzzing.md).  A target is a
function of one ``bytes`` input and a list of valid encodings to mutate.  The property
(:func:`check`): the decoder returns, or raises one of the project's own error types
(``fedcredit.errors``); it never hangs (bounded time per input) and never allocates more
than the input warrants (peak traced memory, numpy included, against the input size).

The targets are built from real parts: real CKKS contexts and ciphertexts, real sealed
envelopes, real signed artifacts, real model files, a real scoring service over a real
model store.
"""

from __future__ import annotations

import atexit
import io
import json
import shutil
import tarfile
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcredit.errors import FedCreditError

#: Any single input must be decoded (or refused) within this many CPU seconds of the decoding thread
#: (a loop that does not end), and within WALL_LIMIT_S of wall time (a wait that does not end; generous,
#: because the machine is shared and wall time inflates under load).
TIME_LIMIT_S = 5.0
WALL_LIMIT_S = 60.0
#: Allowed peak traced allocation: a fixed floor (interpreter noise, small tables) plus this
#: many bytes per input byte (parsed JSON objects cost ~50-100 bytes per input byte).
ALLOC_FLOOR = 4 << 20
ALLOC_PER_BYTE = 128


@dataclass
class Target:
    name: str
    fn: Callable[[bytes], Any]
    seeds: list[bytes]
    max_size: int = 4096
    #: extra allowance for a target whose *valid* inputs legitimately build larger objects
    alloc_floor: int = ALLOC_FLOOR
    stats: dict[str, int] = field(default_factory=lambda: {"examples": 0, "accepted": 0, "refused": 0})


class Finding(AssertionError):
    """A decoder broke the property (a foreign exception, a hang, or an outsized allocation)."""


def check(t: Target, data: bytes) -> None:
    """Run ``t`` on ``data`` under the property; raise :class:`Finding` if it breaks."""
    started = tracemalloc.is_tracing()
    if not started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0, c0 = time.perf_counter(), time.thread_time()
    try:
        t.fn(data)
        t.stats["accepted"] += 1
    except FedCreditError:
        t.stats["refused"] += 1
    except Exception as e:  # noqa: BLE001 - that is the finding
        raise Finding(f"{t.name}: {type(e).__name__}: {e} on input {data[:80]!r}... ({len(data)} bytes)") from e
    finally:
        t.stats["examples"] += 1
        elapsed, cpu = time.perf_counter() - t0, time.thread_time() - c0
        peak = tracemalloc.get_traced_memory()[1] - base
        if not started:
            tracemalloc.stop()
    if cpu > TIME_LIMIT_S or elapsed > WALL_LIMIT_S:
        raise Finding(f"{t.name}: took {cpu:.1f} CPU s ({elapsed:.1f} s wall) on a {len(data)}-byte input {data[:80]!r}")
    budget = t.alloc_floor + ALLOC_PER_BYTE * len(data)
    if peak > budget:
        raise Finding(f"{t.name}: allocated {peak:,} bytes for a {len(data)}-byte input (budget {budget:,}): {data[:80]!r}")


# --------------------------------------------------------------------------- targets


def _codec() -> list[Target]:
    from fedcredit import codec

    seeds = [
        codec.pack({"op": "hist", "seq": 3}, {"g": np.arange(6, dtype="<f8").reshape(2, 3), "b": np.array([1, 0], "u1")},
                   {"ct": b"\x00" * 40}),
        codec.pack_blobs([b"abc", b"", b"z" * 50], {"op": "split", "seq": 1}),
        codec.pack_arrays({"q": np.array([1, -2, 3], dtype="<i8")}, {"error": None}),
        # a header that claims a 2^40-element array in a tiny payload
        codec.MAGIC + (lambda h: len(h).to_bytes(4, "little") + h)(
            json.dumps({"meta": {}, "arrays": [["x", "<f8", [2**40], 8 * 2**40]], "blobs": []}).encode()),
        codec.MAGIC + (20000).to_bytes(4, "little") + b"[" * 20000,  # nesting deeper than json's recursion limit
        # a dtype string numpy's parser chokes on (found by the long run: np.dtype("<01") is a SyntaxError)
        codec.MAGIC + (lambda h: len(h).to_bytes(4, "little") + h)(
            b'{"meta":{},"arrays":[["x","<01",[0],0]],"blobs":[]}'),
    ]
    from fedcredit.protocols.secureboost import scoring as sbs
    from fedcredit.protocols.secureboost.trees import PassiveModelPart, SplitRule

    part = PassiveModelPart(party="host", label_party="guest", feature_names=["a", "b"],
                            splits={1: SplitRule(0, 0.5), 4: SplitRule(1, -1.0)})
    dec = sbs.passive_decisions(part, np.array([[0.1, 2.0], [0.9, -3.0], [0.4, 0.0]]))
    return [
        Target("codec.unpack (FCW1)", lambda b: codec.unpack(b, what="fuzz"), seeds),
        Target("secureboost.parse_decisions (scoring reply)", lambda b: sbs.parse_decisions("host", b, 3), [dec]),
    ]


def _envelope() -> list[Target]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from crypto import envelope
    from fedcredit.dataplane import frame_aad

    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    aad = frame_aad("run-1", "alice", "bob", "psi.hello", 1)
    seeds = [envelope.seal(m, b.public_key(), a, aad) for m in (b"", b"hello", bytes(range(256)) * 4)]
    return [Target("envelope.open_sealed", lambda x: envelope.open_sealed(x, b, a.public_key(), aad), seeds)]


def _ckks() -> list[Target]:
    from crypto import ckks

    sk = ckks.new_context(4096, (40, 20, 40), 20)  # small parameters: the parser is the same
    pk = sk.public()
    blob = ckks.encrypt_vector(pk, np.linspace(-1, 1, 5))
    two = ckks.encrypt_vector(pk, np.arange(2100.0) / 2100)  # 2 chunks at 2048 slots
    pub = pk.to_bytes()
    # 2,000 empty chunks (8 kB) announcing 2,000 x 2,048 values: a buffer of the header's n would be 32 MB
    liar = ckks._HEADER.pack(ckks.MAGIC, ckks.VERSION, 2000 * 2048, 2000) + b"\x00\x00\x00\x00" * 2000

    def add(b: bytes) -> None:
        ckks.add_encrypted(pk, [blob, b])

    return [
        Target("ckks.load_public (CKKS context)", lambda b: ckks.load_public(b, what="fuzz"), [pub], max_size=len(pub) + 64,
               alloc_floor=16 << 20),
        Target("ckks.decrypt_vector (FCKK blob)", lambda b: ckks.decrypt_vector(sk, b), [blob, two, liar],
               max_size=len(liar) + 64),
        Target("ckks.add_encrypted (FCKK blob)", add, [blob], max_size=len(blob) + 64),
        Target("ckks.scale_encrypted (FCKK blob)", lambda b: ckks.scale_encrypted(pk, b, 0.5), [blob, liar],
               max_size=len(two) + 64),
    ]


def _ckks_hist() -> list[Target]:
    from crypto import ckks, ckks_hist

    keeper = ckks_hist.HistogramKeeper()
    rows = keeper.encrypt_rows(np.array([0.1 + 0.2j, -0.3 + 0.25j, 0.05 + 0.2j]))
    pub = ckks.load_public(keeper.public_bytes)
    ev = ckks_hist.HistogramEvaluator(pub, np.array([[0], [1], [1]]), np.array([0]), np.array([0]), pack=1,
                                      cache_mb=8)
    out = ev.histogram(rows)
    return [
        Target("ckks_hist.HistogramEvaluator.histogram (gradient ciphertext)", lambda b: ev.histogram([b]), rows,
               max_size=len(rows[0]) + 64, alloc_floor=32 << 20),
        Target("ckks_hist.HistogramKeeper.decrypt_candidates (histogram ciphertext)",
               lambda b: keeper.decrypt_candidates([b], 1, 1, "host"), out, max_size=len(out[0]) + 64,
               alloc_floor=32 << 20),
    ]


def _model_files() -> tuple[dict[str, bytes], Any]:
    """Real model files of every kind (what an artifact's model.json holds)."""
    from fedcredit.models import make_model, save_model
    from fedcredit.protocols import secureboost as sb
    from fedcredit.protocols import vertical_lr as vlr
    from fedcredit.protocols.vertical_common import Standardizer

    rng = np.random.default_rng(0)
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as d:
        for fam in ("lr", "mlp"):
            m = make_model(fam, 3, hidden=2)
            out[f"horizontal-{fam}"] = save_model(Path(d) / f"{fam}.json", m, mean=np.zeros(3), std=np.ones(3),
                                                  feature_names=["a", "b", "c"]).read_bytes()
    s2 = Standardizer(mean=np.zeros(2), scale=np.ones(2))
    out["vertical-lr-label"] = vlr.LabelModel("guest", ["a", "b"], s2, np.array([0.5, -1.0]), 0.1, ["host"]).to_json().encode()
    out["vertical-lr-passive"] = vlr.PassiveModel("host", ["c", "d"], s2, np.array([1.0, 2.0]), "guest").to_json().encode()
    Xg, Xh = rng.normal(size=(120, 2)), rng.normal(size=(120, 2))
    y = (Xg[:, 0] + Xh[:, 1] > 0).astype(np.float64)
    lab, pas = sb.train_plaintext_reference(Xg, y, {"host": Xh}, sb.SecureBoostConfig(n_trees=2, max_depth=2, n_bins=4),
                                            label_party="guest", label_feature_names=["a", "b"],
                                            passive_feature_names={"host": ["c", "d"]})
    out["secureboost-label"] = lab.to_bytes()
    out["secureboost-passive"] = pas["host"].to_bytes()
    return out, (Xg, Xh)


def _models() -> list[Target]:
    from fedcredit import kinds

    files, (Xg, Xh) = _model_files()
    targets = []
    for kind_name, raw in files.items():
        def load(b: bytes, kind_name: str = kind_name) -> None:
            m = kinds.load_part(kind_name, b, "fuzz")
            role = kinds.kind(kind_name).role
            if role == kinds.PASSIVE:  # a loaded part must also answer without a foreign exception
                m.answer(Xh[:4, : len(m.feature_names)] if len(m.feature_names) <= 2 else np.zeros((4, len(m.feature_names))))
        targets.append(Target(f"kinds.load_part {kind_name} (model.json)", load, [raw], max_size=len(raw) + 256))
    return targets


def _scratch(prefix: str) -> Path:
    """A temporary directory the targets write their files to, removed when the process exits (the targets'
    closures use it for the whole run)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, tmp, True)
    return tmp


def _artifacts() -> list[Target]:
    from crypto.certs import init_ca
    from fedcredit import artifacts as A

    files, _ = _model_files()
    tmp = _scratch("fuzz-art-")
    ca = init_ca(tmp / "ca", "fuzz")
    arts = A.build_run_artifacts(tmp / "build", run_id="fuzz-1", created="2026-01-01T00:00:00Z", parts={
        "guest": {"kind": "vertical-lr-label", "files": {"model.json": files["vertical-lr-label"]},
                  "schema": {"feature_names": ["a", "b"], "id_column": "id"}},
        "host": {"kind": "vertical-lr-passive", "files": {"model.json": files["vertical-lr-passive"]},
                 "schema": {"feature_names": ["c", "d"], "id_column": "id"}},
    })
    A.sign_artifact(arts["host"], ca / "federation-signing.key")
    tar = A.pack_artifact(arts["host"], tmp / "host.tar")
    plain = tar.read_bytes()
    gz = io.BytesIO()
    import gzip
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
        g.write(plain)
    manifest = (arts["host"] / "manifest.json").read_bytes()
    pub = ca / "federation-signing.pub"
    path = tmp / "fuzz.tar"

    def read(b: bytes, verify: bool) -> None:
        path.write_bytes(b)
        if verify:
            A.read_artifact(path, pub, party="host")
        else:
            A.check_artifact_integrity(path)

    def manifest_only(b: bytes) -> None:  # the manifest inside an otherwise valid tar
        buf = io.BytesIO()
        with tarfile.open(fileobj=io.BytesIO(plain)) as src, tarfile.open(fileobj=buf, mode="w") as dst:
            for m in src.getmembers():
                data = b if m.name.endswith("manifest.json") else src.extractfile(m).read()  # type: ignore[union-attr]
                m.size = len(data)
                dst.addfile(m, io.BytesIO(data))
        read(buf.getvalue(), False)

    npz = A.npz_bytes({"split_id": np.array([7, 9]), "threshold": np.array([0.5, -1.0])})
    big = io.BytesIO()  # an .npy header claiming 2^40 float64 values in a 200-byte member
    np.lib.format.write_array_header_1_0(big, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)})
    import zipfile
    zb = io.BytesIO()
    with zipfile.ZipFile(zb, "w") as zf:
        zf.writestr("x.npy", big.getvalue() + b"\x00" * 8)
    return [
        Target("artifacts.read_artifact (signed tar)", lambda b: read(b, True), [plain, gz.getvalue()],
               max_size=len(plain) + 1024),
        Target("artifacts.check_artifact_integrity (tar)", lambda b: read(b, False), [plain, gz.getvalue()],
               max_size=len(plain) + 1024),
        Target("artifacts manifest.json (in a tar)", manifest_only, [manifest], max_size=len(manifest) + 512),
        Target("artifacts.load_npz", lambda b: A.load_npz(b), [npz, zb.getvalue()], max_size=len(npz) + 256),
    ]


def _control_plane() -> list[Target]:
    from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

    from fedcredit import control_plane as cp

    def decode(b: bytes) -> None:
        # the bytes become the fields Flower would hand us: a method, a meta string, a payload
        parts = b.split(b"\x00", 2) + [b"", b""]
        method, meta, payload = parts[0].decode("utf-8", "replace"), parts[1].decode("utf-8", "replace"), parts[2]
        rd = RecordDict({cp.META: ConfigRecord({"method": method, "meta": meta}),
                         cp.BODY: ArrayRecord({"payload": Array(dtype="bytes", shape=(len(payload),), stype="raw",
                                                                 data=payload)})})
        cp.unpack(rd)
        if b[:1] == b"\x01":  # records missing altogether
            cp.unpack(RecordDict({cp.META: ConfigRecord({"method": method})}))

    seed = b"job.admit\x00" + json.dumps({"run_id": "r1", "job": "[job]\n"}).encode() + b"\x00payload"
    return [Target("control_plane.unpack (Flower records)", decode, [seed, b"\x01" + seed])]


def _protocol_messages() -> list[Target]:
    from fedcredit.protocols import psi, vertical_jobs, vertical_lr

    hello = psi._hello(1000, 256, 10)
    final = json.dumps({"size": 2, "error": None}).encode() + b"\n" + b"a" * psi.MATCH_LEN * 2
    mask = json.dumps({"n": 10, "rule": "fraction", "fraction": 0.2}).encode() + b"\n" + b"\xff\x03"
    req = json.dumps({"ids": ["1", "2", "x"]}).encode()
    return [
        Target("psi hello", lambda b: psi._read_hello(b, "bank", "fintech"), [hello]),
        Target("psi final result", lambda b: psi.read_final(b, "bank", "fintech"), [final]),
        Target("vertical split mask", lambda b: vertical_jobs._unpack_mask(b, 10, "bank", "fintech"), [mask]),
        Target("vertical LR scoring request", lambda b: vertical_lr.read_score_request(b, "bank", "fintech"), [req]),
    ]


def _dataplane() -> list[Target]:
    from fedcredit.dataplane import frame_aad
    from protos.dataplane_pb2 import Frame

    def decode(b: bytes) -> None:
        try:
            f = Frame.FromString(b)
        except Exception:  # noqa: BLE001 - protobuf's own parser refuses it; gRPC answers for us
            return
        frame_aad(f.session, f.sender, f.receiver, f.tag, f.seq)

    seed = Frame(kind=Frame.DATA, session="run-1", sender="alice", receiver="bob", tag="sb.cmd", seq=2**64 - 1,
                 payload=b"x" * 60).SerializeToString()
    return [Target("dataplane Frame fields -> frame_aad", decode, [seed])]


def _scoring() -> list[Target]:
    """A real ScoringService over a real model store (a horizontal LR model), fed decoded requests."""
    import pandas as pd

    from crypto.certs import init_ca
    from fedcredit.artifacts import build_run_artifacts, horizontal_parts, sign_artifact
    from fedcredit.data import table_from_frame
    from fedcredit.models import SavedModel, make_model
    from fedcredit.protocols import vertical_lr as vlr
    from fedcredit.protocols.vertical_common import Standardizer
    from party.models import ModelStore
    from party.scoring import ScoringService, applications_from
    from party.scoring_guard import RateLimiter
    from protos import scoring_pb2 as pb

    tmp = _scratch("fuzz-score-")
    ca = init_ca(tmp / "ca", "fuzz")
    m = make_model("lr", 2)
    m.set_flat(np.array([0.5, -0.5, 0.1]))
    kind, files, schema = horizontal_parts(SavedModel(m, np.zeros(2), np.ones(2), ["a", "b"]))
    s2 = Standardizer(mean=np.zeros(2), scale=np.ones(2))
    arts = build_run_artifacts(tmp / "build", run_id="h1", parts={"bank": {"kind": kind, "files": files, "schema": schema}})
    varts = build_run_artifacts(tmp / "vbuild", run_id="v1", parts={
        "guest": {"kind": "vertical-lr-label", "files": {"model.json": vlr.LabelModel(
            "guest", ["a"], Standardizer(np.zeros(1), np.ones(1)), np.array([1.0]), 0.0, ["host"]).to_json().encode()},
            "schema": {"feature_names": ["a"], "id_column": "id"}},
        "host": {"kind": "vertical-lr-passive", "files": {"model.json": vlr.PassiveModel(
            "host", ["c", "d"], s2, np.array([1.0, 2.0]), "guest").to_json().encode()},
            "schema": {"feature_names": ["c", "d"], "id_column": "id"}}})
    stores = {}
    for p, path in [("bank", arts["bank"]), ("host", varts["host"])]:
        sign_artifact(path, ca / "federation-signing.key")
        stores[p] = ModelStore(tmp / p, party=p, federation_public_key=ca / "federation-signing.pub")
        stores[p].install(path, activate=True)
    local = ScoringService("bank", stores["bank"], decision_log=tmp / "decisions.jsonl")
    frame = pd.DataFrame({"id": [str(i) for i in range(50)], "c": np.linspace(0, 1, 50), "d": np.linspace(1, 2, 50)})
    table = table_from_frame(frame, party="host", source="host.csv", id_col="id")
    passive = ScoringService("host", stores["host"], table_loader=lambda names: table,
                             rate=RateLimiter("host", ids_per_second=1e9, burst=10_000, ids_per_day=10**12))
    host_hash = passive.model().manifest.model_hash

    def score(b: bytes) -> None:
        try:
            req = pb.ScoreBatchRequest.FromString(b)
        except Exception:  # noqa: BLE001 - protobuf refuses it before our code runs
            return
        local.score(applications_from("bank", req.requests), req.model_version or None, caller="client")

    def partial(b: bytes) -> None:
        try:
            req = pb.PartialRequest.FromString(b)
        except Exception:  # noqa: BLE001
            return
        passive.partial(req.model_hash if b[:1] != b"\x12" else host_hash, list(req.ids), "guest")

    one = pb.ScoreRequest(id="7", features={"a": 1.0, "b": -2.0}, exposure=1000.0)
    local.score(applications_from("bank", [one]), None, caller="client")  # warm: model and decision caches
    passive.partial(host_hash, ["1"], "guest")
    seeds_s = [pb.ScoreBatchRequest(requests=[one, pb.ScoreRequest(id="8", features={"a": 0.0, "b": 0.0})]).SerializeToString()]
    seeds_p = [pb.PartialRequest(model_hash=host_hash, ids=["1", "2", "99", ""]).SerializeToString(),
               pb.PartialRequest(ids=["3", "4"]).SerializeToString()]
    return [Target("scoring ScoreBatch request", score, seeds_s), Target("scoring PartialScore request", partial, seeds_p)]


def _ckks_select() -> list[Target]:
    """Hidden SecureBoost splits: the passive party's selection kernel (a selector from the label party) and the
    label party's decryption of a selection answer and of a hidden scoring reply."""
    from crypto import ckks, ckks_hist, ckks_select
    from fedcredit import codec
    from fedcredit.protocols.secureboost import scoring as sbs

    keeper = ckks_hist.HistogramKeeper(8, extra_steps=ckks_select.galois_steps())
    pub = ckks.load_public(keeper.public_bytes)
    sel = ckks_select.SelectionKeeper(keeper.ctx)
    T = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0]], dtype=bool)
    ev = ckks_select.SelectionEvaluator(pub, T, galois=keeper.galois_bytes, cache_mb=8)
    rep, placed = sel.selectors(1, 3, 0)
    out = ev.bits(rep)
    answer = ckks_select.PlacedSelectors(pub, {0: placed}, 3, what="fuzz").answer(np.array([1, 0, 1], dtype=bool))
    reply = codec.pack_blobs(answer, {"party": "host", "n": 1, "hidden": "placed", "per_row": 1})
    return [
        Target("ckks_select.SelectionEvaluator.bits (selector ciphertext)", lambda b: ev.bits(b), [rep],
               max_size=len(rep) + 64, alloc_floor=32 << 20),
        Target("ckks_select.SelectionKeeper.decrypt_bits (selection answer)",
               lambda b: sel.decrypt_bits([b], 3, "host"), out, max_size=len(out[0]) + 64, alloc_floor=32 << 20),
        Target("secureboost.read_decisions (hidden scoring reply)",
               lambda b: sbs.read_decisions("host", b, 1, keeper=sel, block=4, split_ids=[0]), [reply],
               max_size=len(reply) + 64, alloc_floor=32 << 20),
    ]


BUILDERS: dict[str, Callable[[], list[Target]]] = {
    "codec": _codec, "envelope": _envelope, "ckks": _ckks, "ckks_hist": _ckks_hist, "ckks_select": _ckks_select,
    "models": _models,
    "artifacts": _artifacts, "control_plane": _control_plane, "protocols": _protocol_messages,
    "dataplane": _dataplane, "scoring": _scoring,
}


def all_targets() -> list[Target]:
    out: list[Target] = []
    for build in BUILDERS.values():
        out.extend(build())
    return out


# --------------------------------------------------------------------------- inputs


def mutations(st: Any, seeds: list[bytes], max_size: int) -> Any:
    """Hypothesis strategy: arbitrary bytes, or a valid seed with flips, truncation, extension and splices."""
    def mutate(draw: Any) -> bytes:
        b = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 4))):
            op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "splice", "delete"]))
            if op in ("flip", "set") and b:
                i = draw(st.integers(0, len(b) - 1))
                b[i] = b[i] ^ (1 << draw(st.integers(0, 7))) if op == "flip" else draw(st.integers(0, 255))
            elif op == "truncate":
                del b[draw(st.integers(0, len(b))):]
            elif op == "extend":
                b += draw(st.binary(max_size=64))
            elif op == "splice" and b:
                i = draw(st.integers(0, len(b)))
                b[i:i] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xff" * 8, b"{", b"[" * 64,
                                                b"1e999", b"-1", b"\x00"]))
            elif op == "delete" and b:
                i = draw(st.integers(0, len(b) - 1))
                del b[i : i + draw(st.integers(1, 16))]
        return bytes(b)

    return st.one_of(st.binary(max_size=min(max_size, 512)), st.composite(lambda draw: mutate(draw))())


def run_target(t: Target, examples: int, seed_value: int | None = 20261201) -> None:
    """The seeds, then ``examples`` Hypothesis inputs through :func:`check` (raises the first Finding, shrunk)."""
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st

    for s in t.seeds:  # the valid encodings themselves pass the property
        check(t, s)

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=mutations(st, t.seeds, t.max_size))
    def prop(data: bytes) -> None:
        check(t, data)

    (seed(seed_value)(prop) if seed_value is not None else prop)()


def main(argv: list[str] | None = None) -> int:
    """The long run: every target with a large budget; prints examples, time and findings per decoder."""
    import argparse

    ap = argparse.ArgumentParser(description="fuzz every decoder of another institution's bytes (long run)")
    ap.add_argument("--examples", type=int, default=5000, help="Hypothesis examples per fast decoder")
    ap.add_argument("--slow-examples", type=int, default=500,
                    help="examples per CKKS / artifact / scoring decoder (10-100 ms each)")
    ap.add_argument("--groups", default=",".join(BUILDERS), help=f"comma-separated subset of {sorted(BUILDERS)}")
    ap.add_argument("--seed", type=int, default=1, help="Hypothesis seed (CI uses 20261201)")
    ap.add_argument("--out", help="write the per-decoder figures as JSON here")
    args = ap.parse_args(argv)
    slow = {"ckks", "ckks_hist", "artifacts", "scoring"}
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for group in args.groups.split(","):
        for t in BUILDERS[group]():
            n = args.slow_examples if group in slow else args.examples
            t0 = time.perf_counter()
            finding = ""
            try:
                run_target(t, n, args.seed)
            except Finding as e:
                finding = str(e).splitlines()[0][:300]
            except Exception as e:  # noqa: BLE001 - Hypothesis re-raises the shrunk failure
                inner = [f"{type(x).__name__}: {str(x)[:300]}" for x in getattr(e, "exceptions", ()) or ()]
                finding = f"{type(e).__name__} ({'; '.join(inner) or str(e)[:300]})"
            row = {"decoder": t.name, **t.stats, "seconds": round(time.perf_counter() - t0, 1), "finding": finding}
            rows.append(row)
            print(json.dumps(row), flush=True)
    total = time.perf_counter() - t_all
    print()
    print(f"{'decoder':<68} {'examples':>8} {'refused':>8} {'seconds':>8}  finding")
    for r in rows:
        print(f"{r['decoder']:<68} {r['examples']:>8} {r['refused']:>8} {r['seconds']:>8.1f}  {r['finding'] or '-'}")
    print(f"total: {sum(r['examples'] for r in rows)} examples over {len(rows)} decoders in {total:.0f} s; "
          f"findings: {sum(1 for r in rows if r['finding'])}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 1 if any(r["finding"] for r in rows) else 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
