"""ECDH PSI: correctness for 2 and 3 parties, common order, id normalization, errors, what crosses the wire."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from crypto.psi import hash_to_point, normalize_id
from fedcredit.data import normalize_ids
from fedcredit.errors import DataError, ProtocolError
from fedcredit.protocols.psi import PsiResult, load_intersection, run_psi, save_intersection
from fedcredit.transport import InMemoryHub, WireRecord


def _run(sets: dict[str, Sequence[Any]], leader: str, **kw: Any) -> tuple[dict[str, PsiResult], dict[str, BaseException], list[WireRecord]]:
    hub = InMemoryHub(default_timeout=30)
    wire: list[WireRecord] = []
    hub.observers.append(wire.append)
    parties = list(sets)
    res: dict[str, PsiResult] = {}
    errs: dict[str, BaseException] = {}

    def go(p: str) -> None:
        try:
            res[p] = run_psi(hub.endpoint(p), sets[p], parties, leader=leader, source=f"{p}.csv", **kw)
        except Exception as e:  # collected and asserted by the test
            errs[p] = e

    threads = [threading.Thread(target=go, args=(p,)) for p in parties]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return res, errs, wire


def _ids(rng: random.Random, lo: int, hi: int) -> list[str]:
    ids = [f"cust-{i:07d}" for i in range(lo, hi)]
    rng.shuffle(ids)
    return ids


def test_two_parties_same_order_and_exact_intersection() -> None:
    rng = random.Random(1)
    a, b = _ids(rng, 0, 3000), _ids(rng, 2000, 4500)
    res, errs, wire = _run({"bank": a, "fintech": b}, "bank", batch_size=512)
    assert not errs
    expected = set(a) & set(b)
    assert res["bank"].size == res["fintech"].size == len(expected) == 1000
    assert set(res["bank"].intersection_ids) == expected
    assert res["bank"].intersection_ids == res["fintech"].intersection_ids  # same order at both parties
    # indices point into each party's own input
    assert [a[i] for i in res["bank"].indices] == res["bank"].intersection_ids
    assert [b[i] for i in res["fintech"].indices] == res["fintech"].intersection_ids
    # the order is not the input order of either party nor sorted ids (it is pseudorandom)
    assert res["bank"].intersection_ids != sorted(expected)
    assert res["bank"].peer_sizes == {"fintech": 2500} and res["fintech"].peer_sizes == {"bank": 3000}


def test_three_parties_leader_in_the_middle() -> None:
    rng = random.Random(2)
    sets = {"a": _ids(rng, 0, 2000), "b": _ids(rng, 500, 2500), "c": _ids(rng, 1000, 3000)}
    res, errs, _ = _run(sets, "b", batch_size=700)
    assert not errs
    expected = set(sets["a"]) & set(sets["b"]) & set(sets["c"])
    assert len(expected) == 1000
    orders = [res[p].intersection_ids for p in sets]
    assert orders[0] == orders[1] == orders[2]
    assert set(orders[0]) == expected
    # what each non-leader learns beyond the result: only its pairwise intersection size with the leader
    assert res["a"].pairwise_sizes == {"b": 1500}
    assert res["c"].pairwise_sizes == {"b": 1500}
    assert res["b"].pairwise_sizes == {"a": 1500, "c": 1500}


def test_nothing_but_blinded_points_cross_and_coordinator_sees_nothing() -> None:
    rng = random.Random(3)
    a, b = _ids(rng, 0, 1500), _ids(rng, 1000, 2000)
    res, errs, wire = _run({"bank": a, "fintech": b}, "bank", batch_size=400)
    assert not errs
    assert {(r.sender, r.receiver) for r in wire} == {("bank", "fintech"), ("fintech", "bank")}
    everything = b"".join(r.payload for r in wire)
    assert b"cust-" not in everything  # no raw id
    for i in a[:200] + b[:200]:  # no unblinded hash point either (it would allow a dictionary attack)
        assert hash_to_point(normalize_id(i)) not in everything
    assert res["bank"].size == 500


def test_id_normalization_is_string_based_and_documented() -> None:
    # 00123 and 123 are different customers; whitespace is trimmed; integral floats are integers; ints are text.
    # The rule is applied once, where tables are loaded (fedcredit.data); PSI takes the result as it is.
    a = normalize_ids(["00123", " 200 ", 300, 400.0, "500", "0600"], party="p", source="p.csv")
    b = normalize_ids(["123", "200", "300", "400", "500.0", "600"], party="q", source="q.csv")
    res, errs, _ = _run({"p": a, "q": b}, "p")
    assert not errs
    assert sorted(res["p"].intersection_ids) == ["200", "300", "400"]
    assert sorted(res["q"].intersection_ids) == ["200", "300", "400"]


def test_duplicate_ids_fail_at_the_owner_and_stop_the_peer() -> None:
    a = [f"c{i}" for i in range(100)]
    b = [f"c{i}" for i in range(50, 150)] + ["c60"]
    res, errs, _ = _run({"bank": a, "fintech": b}, "bank")
    assert isinstance(errs["fintech"], DataError)
    assert "fintech" in str(errs["fintech"]) and "fintech.csv" in str(errs["fintech"]) and "'c60'" in str(errs["fintech"])
    assert isinstance(errs["bank"], ProtocolError) and "fintech" in str(errs["bank"])


def test_duplicates_after_normalization_are_duplicates() -> None:
    ids = normalize_ids([123, "123 ", "7"], party="bank", source="bank.csv")
    res, errs, _ = _run({"bank": ids, "fintech": ["7"]}, "bank")
    assert isinstance(errs["bank"], DataError) and "duplicate id '123'" in str(errs["bank"])


def test_ids_are_not_normalized_a_second_time() -> None:
    """PSI refuses an id that is not in normal form instead of applying the rule again (possibly differently)."""
    for raw in (" 7 ", 7, b"7"):
        res, errs, _ = _run({"bank": ["1", raw], "fintech": ["1"]}, "bank")
        assert isinstance(errs["bank"], DataError) and "#2" in str(errs["bank"]) and "not a normalized id" in str(errs["bank"])
        assert isinstance(errs["fintech"], ProtocolError)  # told at once, not left waiting


def test_missing_id_is_a_data_error() -> None:
    res, errs, _ = _run({"bank": ["1", float("nan")], "fintech": ["1"]}, "bank")
    assert isinstance(errs["bank"], DataError) and "bank.csv" in str(errs["bank"]) and "#2" in str(errs["bank"])


def test_empty_intersection_is_an_error_at_every_party() -> None:
    res, errs, _ = _run({"bank": ["1", "2"], "fintech": ["3", "4"], "shop": ["1", "3"]}, "shop")
    assert set(errs) == {"bank", "fintech", "shop"}
    for e in errs.values():
        assert isinstance(e, DataError) and "empty" in str(e)


def test_min_size_is_enforced_at_every_party() -> None:
    res, errs, _ = _run({"bank": [str(i) for i in range(100)], "fintech": [str(i) for i in range(90, 200)]}, "bank", min_size=50)
    assert set(errs) == {"bank", "fintech"}
    for e in errs.values():
        assert isinstance(e, DataError) and "10 ids" in str(e) and "min_size 50" in str(e)


def test_helper_processes_give_the_same_result() -> None:
    rng = random.Random(4)
    a, b = _ids(rng, 0, 6000), _ids(rng, 3000, 9000)
    res, errs, _ = _run({"bank": a, "fintech": b}, "bank", batch_size=1000, workers=2)
    assert not errs
    assert res["bank"].intersection_ids == res["fintech"].intersection_ids
    assert set(res["bank"].intersection_ids) == set(a) & set(b)


def test_progress_is_reported_per_batch() -> None:
    seen: list[tuple[str, int, int]] = []
    hub = InMemoryHub(default_timeout=30)
    out: dict[str, PsiResult] = {}

    def go(p: str, ids: list[str], cb: Any) -> None:
        out[p] = run_psi(hub.endpoint(p), ids, ["x", "y"], leader="x", batch_size=100, progress=cb)

    t = threading.Thread(target=go, args=("y", [str(i) for i in range(250, 600)], None))
    t.start()
    go("x", [str(i) for i in range(300)], lambda s, d, n: seen.append((s, d, n)))
    t.join()
    own = [d for s, d, n in seen if s == "hash+blind own ids"]
    assert own == [100, 200, 300]
    assert [d for s, d, n in seen if s == "blind ids of y"] == [100, 200, 300, 350]


def test_save_and_load_intersection(tmp_path: Path) -> None:
    res, errs, _ = _run({"p": ["a", "b", "c"], "q": ["c", "b"]}, "p")
    save_intersection(tmp_path / "ids.txt", res["p"])
    assert load_intersection(tmp_path / "ids.txt") == res["q"].intersection_ids
    assert (tmp_path / "ids.txt").stat().st_mode & 0o077 == 0


def test_bad_party_lists_are_refused() -> None:
    hub = InMemoryHub()
    with pytest.raises(ProtocolError, match="not among"):
        run_psi(hub.endpoint("z"), ["1"], ["a", "b"], leader="a")
    with pytest.raises(ProtocolError, match="leader"):
        run_psi(hub.endpoint("a"), ["1"], ["a", "b"], leader="c")


def test_lookup_confirms_full_values_and_survives_prefix_collisions() -> None:
    import numpy as np

    from fedcredit.protocols.psi import _Lookup

    same_prefix = [b"\x01" * 8 + bytes([i]) * 8 for i in range(1, 5)]  # equal 64-bit keys, distinct values
    vals = np.frombuffer(b"".join(same_prefix + [b"\x02" * 16]), dtype="S16")
    lk = _Lookup(vals, "p", "test values")
    assert not lk.by_key
    q = np.frombuffer(b"".join([same_prefix[2], b"\x03" * 16, b"\x02" * 16]), dtype="S16")
    assert lk.find(q).tolist() == [2, -1, 4]
    fast = _Lookup(np.frombuffer(b"".join(bytes([i]) * 16 for i in range(1, 9)), dtype="S16"), "p", "x")
    assert fast.by_key
    assert fast.find(np.frombuffer(b"\x05" * 16 + b"\x05" * 8 + b"\x06" * 8, dtype="S16")).tolist() == [4, -1]
    with pytest.raises(ProtocolError, match="repeated"):
        _Lookup(np.frombuffer(b"\x07" * 32, dtype="S16"), "p", "values from 'q'")


def test_psi_key_serializes_only_to_its_own_format() -> None:
    from crypto.psi import KEY_MAGIC, PsiKey
    from fedcredit.errors import SecurityError

    k = PsiKey.generate()
    raw = k.serialize()
    assert raw.startswith(KEY_MAGIC) and len(raw) == len(KEY_MAGIC) + 32
    k2 = PsiKey.load(raw)
    pt = hash_to_point(b"x")
    assert k2.blind([pt]) == k.blind([pt]) and k2.fingerprint() == k.fingerprint()
    assert PsiKey.generate().fingerprint() != k.fingerprint()
    assert k.fingerprint() not in repr(k) and raw[len(KEY_MAGIC):].hex() not in k.fingerprint()
    for bad in (raw[len(KEY_MAGIC):], raw + b"\0", b"other/v9\0" + raw[len(KEY_MAGIC):]):
        with pytest.raises(SecurityError, match="checkpoint x is not a serialized PSI key"):
            PsiKey.load(bad, what="checkpoint x")


def test_checkpointed_rounds_hold_only_what_the_party_received_or_computed(tmp_path: Path) -> None:
    """Per round: own ids doubly blinded (received) and the peer's doubly blinded (sent back); nothing else."""
    import numpy as np

    from crypto.psi import PsiKey
    from fedcredit.checkpoint import CheckpointStore
    from fedcredit.protocols.psi import MATCH_LEN

    hub = InMemoryHub(default_timeout=30)
    wire: list[WireRecord] = []
    hub.observers.append(wire.append)
    sets = {"bank": [f"c{i}" for i in range(250)], "fintech": [f"c{i}" for i in range(100, 400)]}
    stores = {p: CheckpointStore(tmp_path / p, "run-1", p) for p in sets}

    def go(p: str) -> None:
        run_psi(hub.endpoint(p), sets[p], list(sets), leader="bank", batch_size=100, checkpoint=stores[p])

    ts = [threading.Thread(target=go, args=(p,)) for p in sets]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    st = stores["fintech"]
    assert st.steps("psi_batch") == [1, 2, 3] and st.steps("psi_key") == [1]
    received = {r.tag: r.payload for r in wire if r.receiver == "fintech"}
    sent = {r.tag: r.payload for r in wire if r.sender == "fintech"}
    for step in (1, 2, 3):
        arrays = st.load("psi_batch", step).arrays
        i = step - 1
        assert set(arrays) == {"od.bank", "pd.bank"}  # 3 batches each: every round has both
        assert arrays["od.bank"].tobytes() == received[f"psi/d/{i}"]  # received from the peer
        assert arrays["pd.bank"].tobytes() == sent[f"psi/d/{i}"]  # what it sent the peer
    key = st.load("psi_key", 1)
    assert set(key.arrays) == {"key"} and set(key.meta) == {"v", "parties", "leader", "batch_size", "n", "ids",
                                                              "peers", "key_fp"}
    # the stored scalar is fintech's own: it re-blinds what bank sent it to what fintech sent back
    k = PsiKey.load(key.arrays["key"].astype(np.uint8).tobytes())
    pts = [received["psi/s/0"][o:o + 32] for o in range(0, 64, 32)]
    assert b"".join(p[:MATCH_LEN] for p in k.blind(pts)) == sent["psi/d/0"][:2 * MATCH_LEN]
