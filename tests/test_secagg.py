"""Secure aggregation in horizontal runs, tested as the attacker: coordinator + one bank, dropouts, shares."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crypto import ckks, secagg
from fedcredit.channel import Handler, LocalChannel, StateStore
from fedcredit.errors import ConfigError, ProtocolError, SecurityError
from fedcredit.protocols.horizontal import (
    HorizontalJob,
    decode_exact,
    decode_message,
    run_coordinator,
    secagg_plan,
    value_spec,
)
from fedcredit.transport import WireRecord
from simulations.attack_horizontal import run_attack
from simulations.generator import write_bank_files
from simulations.horizontal_sim import make_local_federation

BANKS = ["bank1", "bank2", "bank3"]


@pytest.fixture(scope="module")
def banks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_bank_files(tmp_path_factory.mktemp("gen"), n_banks=3, rows_per_bank=1200, test_rows=900, seed=11)


def _train(banks: Mapping[str, Path]) -> dict[str, Path]:
    return {p: banks[p] for p in BANKS}


# --------------------------------------------------------------------------- (a) coordinator + one bank


@pytest.mark.parametrize("min_parties", [None, 2])  # no dropouts allowed (pairwise masks only) / one allowed
def test_coordinator_and_one_bank_cannot_recover_another_banks_update(
    banks: dict[str, Path], tmp_path: Path, min_parties: int | None
) -> None:
    """The colluders hold the coordinator's copy of every ciphertext, the shared CKKS key, the colluder's own
    mask keys, seeds and its shares.  Old scheme: exact recovery.  Secure aggregation: uncorrelated noise."""
    r = run_attack(_train(banks), tmp_path, rounds=2, min_parties=min_parties, colluder="bank2", target="bank1")
    assert not r["dropped"]
    for row in r["rounds"]:
        assert row["old_rel_error"] < 1e-4 and row["old_cosine"] > 0.999999  # main's scheme: the update, exactly
        # noise, far from the truth: |cosine| within 4 sigma of a random direction's (1/sqrt(d)), error huge
        assert abs(row["secagg_cosine"]) < 4 / np.sqrt(r["n_values"]) and row["secagg_rel_error"] > 1e3
        assert row["baseline_own_cosine"] > 0.9  # (what the colluder knows anyway is a better guess)


def test_one_share_of_a_self_mask_seed_says_nothing(banks: dict[str, Path], tmp_path: Path) -> None:
    """The colluder's single share (t = 2) interpolates to a value unrelated to the target's seed."""
    fed = make_local_federation(_train(banks), {p: None for p in BANKS}, tmp_path)
    kept: dict[str, dict[str, bytes]] = {p: {} for p in BANKS}
    for p in BANKS:
        st, put = fed.states[p], fed.states[p].put
        st.put = (lambda k, v, p=p, put=put: (kept[p].__setitem__(k, v), put(k, v))[1])  # type: ignore[method-assign]
    run_coordinator(fed.channel, HorizontalJob(run_id="share", parties=BANKS, rounds=1, newton_rounds=0,
                                               min_parties=2))
    _, own = decode_message(kept["bank1"]["hz-share-sa-own"])
    _, held = decode_message(kept["bank2"]["hz-share-sa-from-bank1"])
    w = secagg.SHARE_BYTES
    for i, tag in enumerate(["stats", "fit-1", "hist"]):
        share = held["b"][w * i : w * (i + 1)]
        assert secagg.combine_unchecked([share]) != own[f"b:{tag}"]
        with pytest.raises(SecurityError, match="1 share"):
            secagg.combine([share], 2, "one share")
    # nor any share on the wire in clear: every secagg bundle travels sealed
    assert all(k.startswith("hz-share-") for k in kept["bank2"])


# --------------------------------------------------------------------------- (d) shares


def test_t_minus_one_shares_do_not_reconstruct_and_t_do() -> None:
    secret = bytes(range(32))
    shares = secagg.share(secret, 3, 5)
    assert len(shares) == 5 and len({s[0] for s in shares}) == 5
    for k in (1, 2):
        with pytest.raises(SecurityError, match=f"{k} share"):
            secagg.combine(shares[:k], 3, "seed")
        assert secagg.combine_unchecked(shares[:k]) != secret
    # information-theoretically hidden: two shares are consistent with ANY secret (another sharing matches them)
    other = secagg.share(bytes(32), 3, 5)
    assert secagg.combine_unchecked([shares[0], shares[1], other[2]]) != secret
    for subset in ([0, 1, 2], [1, 3, 4], [4, 2, 0]):
        assert secagg.combine([shares[i] for i in subset], 3, "seed") == secret
    tampered = bytes([shares[0][0]]) + bytes(32)
    with pytest.raises(SecurityError, match="two different shares"):
        secagg.combine([shares[0], tampered, shares[1]], 3, "seed")


def test_masks_cancel_and_dropout_corrections_are_exact() -> None:
    p = secagg.plan(4, 38)
    keys = {u: secagg.new_tag_secrets() for u in "abcd"}
    pubs = {u: k.public for u, k in keys.items()}
    rng = np.random.default_rng(1)
    x = {u: rng.integers(-(2**23), 2**23, 50) for u in "abcd"}
    y = {u: secagg.mask(x[u], u, keys[u], pubs, p, b"ctx", self_mask=True) for u in "abcd"}
    for u in "abcd":  # alone, each masked vector is uniform mod M: no visible relation to x
        assert abs(np.corrcoef(y[u], x[u])[0, 1]) < 0.4
    corr = secagg.correction(50, p, b"ctx", self_seeds={u: keys[u].self_seed for u in "abc"},
                             dropped_keys={"d": keys["d"].mask_key}, publics={u: pubs[u] for u in "abc"})
    np.testing.assert_array_equal(secagg.unmask(y["a"] + y["b"] + y["c"] + corr, p, "sum"), x["a"] + x["b"] + x["c"])
    with pytest.raises(ConfigError, match="exact bits"):
        secagg.plan(200, 20)


def test_plan_keeps_the_sum_of_a_hundred_banks_inside_the_ckks_slot() -> None:
    job = HorizontalJob(run_id="r", parties=[f"b{i}" for i in range(100)])
    p = secagg_plan(job)
    assert p.limb_bits == 24 and (p.n_parties + 1) * p.modulus // 2 < 2**38
    assert 100 * 2**p.limb_bits <= p.modulus // 2
    assert job.threshold == 50
    with pytest.raises(ConfigError, match="below the secure-aggregation threshold"):
        HorizontalJob.from_dict({"run_id": "r", "parties": BANKS, "min_parties": 1})
    with pytest.raises(ConfigError, match="secagg_threshold"):
        HorizontalJob.from_dict({"run_id": "r", "parties": BANKS, "secagg_threshold": 4})


# --------------------------------------------------------------------------- (b), (c) dropouts


def _failing(h: Handler, method: str, round_idx: int | None = None, tag: str | None = None) -> Handler:
    def handle(m: str, payload: bytes, state: StateStore) -> bytes:
        head = decode_message(payload)[0]
        if m == method and (round_idx is None or head.get("round") == round_idx) and (tag is None or head.get("tag") == tag):
            raise ConnectionError(f"simulated disconnect at {m}")
        return h(m, payload, state)

    return handle


def _run_with(banks: Mapping[str, Path], tmp: Path, failures: Mapping[str, tuple[str, int | None, str | None]],
              run_id: str, min_parties: int = 2) -> tuple[Any, dict[str, list[tuple[str, np.ndarray]]], list[WireRecord],
                                                          dict[str, bytes]]:
    plain: dict[str, list[tuple[str, np.ndarray]]] = {p: [] for p in BANKS}
    fed = make_local_federation(_train(banks), {p: banks["test"] for p in BANKS}, tmp,
                                tap=lambda party, what, v: plain[party].append((what, v)))
    handlers = dict(fed.channel._handlers)
    for p, (m, r, tag) in failures.items():
        handlers[p] = _failing(handlers[p], m, r, tag)
    ch = LocalChannel(handlers, fed.states)
    records: list[WireRecord] = []
    ch.observers.append(records.append)
    kept: dict[str, bytes] = {}
    st, put = fed.states["bank1"], fed.states["bank1"].put
    st.put = lambda k, v: (kept.__setitem__(k, v), put(k, v))[1]  # type: ignore[method-assign]
    job = HorizontalJob(run_id=run_id, parties=BANKS, rounds=3, newton_rounds=0, min_parties=min_parties)
    return run_coordinator(ch, job), plain, records, kept


def _aggregate_sent_in_fit(job: HorizontalJob, records: list[WireRecord], r: int, kept: Mapping[str, bytes],
                           n: int) -> np.ndarray:
    """The unmasked aggregate the coordinator sent out in fit round ``r`` (decrypted with a bank's key)."""
    blob = next(decode_message(x.payload)[1]["model"] for x in records
                if x.sender == "coordinator" and x.receiver == "bank1" and x.tag.startswith("fit")
                and decode_message(x.payload)[0].get("round") == r)
    plan = secagg_plan(job)
    vals = ckks.decrypt_vector(ckks.load_secret(kept[f"hz-{job.run_id}-ckks"]), blob)
    return decode_exact(secagg.unmask(vals, plan, "agg").astype(float), n, value_spec(plan))


@pytest.mark.parametrize("when", ["before_sending", "after_sending"])
def test_bank_dropped_mid_round_the_round_completes_with_the_survivors_sum(
    banks: dict[str, Path], tmp_path: Path, when: str
) -> None:
    failure = ("fit", 2, None) if when == "before_sending" else ("unmask", None, "fit-2")
    res, plain, records, kept = _run_with(banks, tmp_path, {"bank3": failure}, f"drop-{when}")
    assert res.parties == ["bank1", "bank2"] and "simulated disconnect" in res.dropped["bank3"]
    assert res.global_metrics is not None and res.global_metrics["auc"] > 0.6
    job = HorizontalJob(run_id=f"drop-{when}", parties=BANKS, rounds=3, newton_rounds=0, min_parties=2)
    upd = {p: [v for w, v in plain[p] if w == "update"] for p in BANKS}
    n = upd["bank1"][0].shape[0]
    contributed = ["bank1", "bank2"] if when == "before_sending" else BANKS
    want = sum(upd[p][1] for p in contributed)  # round 2's updates of the banks whose masked update arrived
    got = _aggregate_sent_in_fit(job, records, 3, kept, n)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)  # exact: the limbs sum without error
    entry = next(u for u in res.secagg["unmasked"] if u["tag"] == "fit-2")
    if when == "before_sending":
        assert entry["dropped"] == ["bank3"] and entry["survivors"] == ["bank1", "bank2"]
    else:  # bank3's update is in the sum; its self-mask came back from the others' shares
        assert entry["survivors"] == BANKS and entry["revealed_by"] == ["bank1", "bank2"]
    assert len(upd["bank3"]) == (1 if when == "before_sending" else 2)  # and it took no part in round 3


def test_too_many_dropouts_fail_the_round_naming_the_banks(banks: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ProtocolError) as e:
        _run_with(banks, tmp_path, {"bank2": ("fit", 2, None), "bank3": ("fit", 2, None)}, "too-many")
    msg = str(e.value)
    assert "party 'bank2'" in msg and "party 'bank3'" in msg and "min_parties=2" in msg


def test_unmask_below_threshold_names_the_banks(banks: dict[str, Path], tmp_path: Path) -> None:
    """t = 3 of 3 with min_parties = 3 allows no dropout; t = 2 with one bank failing to reveal and one dropped
    leaves one share: the error names the threshold and the banks."""
    with pytest.raises(ProtocolError) as e:
        _run_with(banks, tmp_path, {"bank3": ("fit", 2, None), "bank2": ("unmask", None, "fit-2")}, "few-shares")
    msg = str(e.value)
    assert "bank2" in msg and "bank3" in msg


def test_a_bank_refuses_to_reveal_both_masks_of_one_bank(banks: dict[str, Path], tmp_path: Path) -> None:
    """A lying coordinator that got bank1's self-mask share for a round, then claims bank1 dropped in that round
    (to get its mask key too and strip every mask off bank1's ciphertext), is refused."""
    from fedcredit.protocols.horizontal import encode_message

    fed = make_local_federation(_train(banks), {p: None for p in BANKS}, tmp_path)
    handlers = dict(fed.channel._handlers)
    inner = handlers["bank2"]
    forged: list[dict[str, Any]] = []

    def bank2(m: str, payload: bytes, state: StateStore) -> bytes:
        out = inner(m, payload, state)
        head = decode_message(payload)[0]
        if m == "unmask" and head["tag"] == "fit-1":
            lie = {**head, "survivors": ["bank2", "bank3"], "dropped": ["bank1"]}
            forged.append(decode_message(inner(m, encode_message(lie), state))[0])
        return out

    handlers["bank2"] = bank2
    job = HorizontalJob(run_id="liar", parties=BANKS, rounds=1, newton_rounds=0, min_parties=2)
    run_coordinator(LocalChannel(handlers, fed.states), job)
    assert len(forged) == 1
    assert forged[0]["ok"] is False and "refusing to reveal both" in forged[0]["error"] and "bank1" in forged[0]["error"]
